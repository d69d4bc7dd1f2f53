"""An in-process channel layer, for tests and single-process use.

Messages are encoded with msgpack on send and decoded on receive, exactly as on Redis,
so a message that would fail in production fails here too. Every rule of the contract
holds (capacity, expiry, groups, local channels); only the storage is a dict.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

from .aio import PollingFace
from .base import BaseChannelLayer, Record, non_local_name

__all__ = ["MemoryChannelLayer"]

# (expires, channel, data, group)
_Entry = tuple[float, str, bytes, "str | None"]


class MemoryChannelLayer(BaseChannelLayer):
    """A thread-safe layer that lives in this process's memory (URL ``memory://``)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._queues: dict[str, collections.deque[_Entry]] = {}
        self._groups: dict[str, dict[str, float]] = {}
        self._condition = threading.Condition()
        self._watchers: list[Callable[[], None]] = []

    def _after_fork(self) -> None:
        self._condition = threading.Condition()
        self._watchers = []

    def async_face(self) -> PollingFace:
        """The asyncio face: operations run on the loop; a send wakes the receive task."""
        return PollingFace(self)

    def _watch(self, wake: Callable[[], None]) -> Callable[[], None]:
        with self._condition:
            self._watchers.append(wake)

        def unwatch() -> None:
            with self._condition:
                if wake in self._watchers:
                    self._watchers.remove(wake)

        return unwatch

    def _notify(self) -> None:
        """With the condition held: wake blocked receivers and asyncio faces."""
        self._condition.notify_all()
        for wake in self._watchers:
            wake()

    def _live_queue(self, queue: str, now: float) -> collections.deque[_Entry]:
        entries = self._queues.setdefault(queue, collections.deque())
        while entries and entries[0][0] <= now:
            entries.popleft()
        return entries

    def _push(self, channel: str, data: bytes, expires: float) -> bool:
        queue = non_local_name(channel)
        with self._condition:
            entries = self._live_queue(queue, time.time())
            if len(entries) >= self.get_capacity(queue):
                return False
            entries.append((expires, channel, data, None))
            self._notify()
        return True

    def _withdraw(self, items: list[tuple[str, bytes, float]]) -> list[bool]:
        removed = []
        with self._condition:
            for channel, data, expires in items:
                entries = self._queues.get(non_local_name(channel))
                found = None
                if entries:
                    found = next(
                        (
                            e
                            for e in entries
                            if e[0] == expires and e[1] == channel and e[2] == data
                        ),
                        None,
                    )
                if entries is not None and found is not None:
                    entries.remove(found)
                removed.append(found is not None)
        return removed

    def _pop(self, names: list[str], block: bool, deadline: float) -> Record | None:
        with self._condition:
            while True:
                now = time.time()
                for name in names:
                    entries = self._queues.get(name)
                    if not entries:
                        continue
                    entries = self._live_queue(name, now)
                    if entries:
                        _expires, channel, data, group = entries.popleft()
                        if not entries:
                            del self._queues[name]
                        return Record(channel, data, group)
                    del self._queues[name]
                remaining = deadline - time.monotonic()
                if not block or remaining <= 0:
                    return None
                self._condition.wait(remaining)

    def _members(self, group: str) -> dict[str, float]:
        members = self._groups.get(group, {})
        now = time.time()
        for channel in [c for c, expires in members.items() if expires <= now]:
            del members[channel]
        return members

    def _push_group(self, group: str, data: bytes, expires: float) -> int:
        skipped = 0
        with self._condition:
            members = list(self._members(group))
            queues: dict[str, str | None] = {}
            for channel in members:
                queue = non_local_name(channel)
                queues[queue] = group if queue.endswith("!") else None
            now = time.time()
            for queue, member_group in queues.items():
                entries = self._live_queue(queue, now)
                if len(entries) >= self.get_capacity(queue):
                    skipped += 1
                    continue
                entries.append((expires, queue, data, member_group))
            self._notify()
        return skipped

    def _local_members(self, group: str, prefix: str) -> list[str]:
        with self._condition:
            return [c for c in self._members(group) if c.startswith(prefix) and c != prefix]

    def _group_add(self, group: str, channel: str, expires: float) -> None:
        with self._condition:
            self._groups.setdefault(group, {})[channel] = expires

    def _group_discard(self, group: str, channel: str) -> None:
        with self._condition:
            members = self._groups.get(group)
            if members is not None:
                members.pop(channel, None)
                if not members:
                    del self._groups[group]

    def _discard_channel(self, channel: str) -> None:
        with self._condition:
            for group in list(self._groups):
                members = self._groups[group]
                members.pop(channel, None)
                if not members:
                    del self._groups[group]

    def _group_channels(self, group: str) -> list[str]:
        with self._condition:
            return list(self._members(group))

    def _flush(self) -> None:
        with self._condition:
            self._queues.clear()
            self._groups.clear()

    def _queue_stats(self, queue: str) -> tuple[int, float]:
        with self._condition:
            now = time.time()
            entries = self._live_queue(queue, now)
            if not entries:
                return 0, 0.0
            # expires - expiry is the time it was sent
            return len(entries), max(0.0, now - (entries[0][0] - self.expiry))

    def _overview(self) -> dict[str, Any]:
        with self._condition:
            now = time.time()
            channels = {q: len(self._live_queue(q, now)) for q in list(self._queues)}
            groups = {g: len(self._members(g)) for g in list(self._groups)}
        return {
            "channels": {q: n for q, n in channels.items() if n},
            "groups": {g: n for g, n in groups.items() if n},
        }
