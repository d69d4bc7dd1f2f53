"""The asyncio face of a channel layer, for the interface server's event loop.

``face = layer.async_face()`` (called on the running loop) returns an object with::

    await face.send(channel, message)     # the same errors as layer.send()
    face.listen(names, deliver)           # drain queues; deliver(entries) on the loop
    await face.aclose()

No call blocks the loop on a server, and no thread stands between the loop and the
layer. Two costs are paid once per burst, not once per message:

* **sends**: every ``send`` issued in one turn of the loop is queued, and the queue
  goes to the layer in one round trip per server when the loop comes round
  (``call_soon``), never later: nothing waits for a batch to fill. While a round trip
  is in flight, what is sent meanwhile gathers for the next one.
* **receives**: :meth:`AsyncFace.listen` runs one task that takes up to
  ``max_messages`` messages per round trip and hands them to *deliver* as a list of
  ``(channels, message)`` entries: a group message comes once, with the list of local
  members it is for, so that the caller can encode it once for all of them.

A send to a channel under a prefix that this face listens on skips the layer
altogether: the message is handed straight to *deliver* (after the same encoding check
as any send). That is how ``wsgi-channels run``'s worker replies to its own interface.

Backends choose their face: Redis talks to the server with redis.asyncio
(:mod:`wsgi_channels.layers.redis`); the memory and SQLite layers, whose operations are
local and short, run them on the loop and are woken by the backend
(:class:`PollingFace`); any other layer (an ASGI 1.0 one) gets :class:`ThreadedFace`,
which keeps a thread for the blocking receive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..metrics import NULL_METRICS, Recorder
from .base import (
    ChannelFull,
    ChannelsError,
    Layer,
    LayerUnavailable,
    Message,
    validate_channel_name,
)

if TYPE_CHECKING:
    from .base import BaseChannelLayer

__all__ = [
    "Admit",
    "AsyncFace",
    "Deliver",
    "Entry",
    "PollingFace",
    "Receipt",
    "ThreadedFace",
    "async_face",
]

log = logging.getLogger("wsgi_channels.layers")

#: ``(channels, message)``: one message for each of *channels* (several for a group
#: message expanded to local members; treat the message as read-only).
Entry = tuple[list[str], Message]
#: Called on the loop with each batch; may return an awaitable that the receive task
#: awaits before it takes more (the caller's back-pressure).
Deliver = Callable[[list[Entry]], "Awaitable[None] | None"]
# (channel, data, expires) -> True sent, False full, or the error that refused it
_Item = tuple[str, bytes, float]
#: What :meth:`AsyncFace.send` returns: enough to take the message back with
#: :meth:`AsyncFace.withdraw` while nobody has received it.
Receipt = _Item
_Outcome = bool | ChannelsError

#: Called in the sending thread for a send handed over in the process: may raise
#: ChannelFull; may return what to call on the loop once the message is delivered.
Admit = Callable[[str, Message], "Callable[[], None] | None"]

#: Most messages one receive round trip takes.
MAX_BATCH = 1024


def async_face(layer: Layer) -> AsyncFace:
    """The asyncio face of *layer* on the running loop: the layer's own when it has
    one (``layer.async_face()``), else a :class:`ThreadedFace`."""
    make = getattr(layer, "async_face", None)
    if make is not None:
        face: AsyncFace = make()
        return face
    return ThreadedFace(layer)


class AsyncFace:
    """What every face shares: validation, the local hand-over and send batching.

    Subclasses implement :meth:`_flush` (one round trip per server for a list of
    encoded messages) and :meth:`_drain` (the receive loop)."""

    metrics: Recorder = NULL_METRICS  # set by the owner (wsgi_channels.metrics)

    def __init__(self, layer: BaseChannelLayer) -> None:
        self.layer = layer
        self.loop = asyncio.get_running_loop()
        self._pending: list[tuple[_Item, asyncio.Future[_Outcome]]] = []
        self._scheduled = False
        self._flushing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._prefixes: list[str] = []
        self._deliver: Deliver | None = None
        self._admit: Admit | None = None
        self._thread_id = threading.get_ident()
        self.closing = False

    # -- sending ----------------------------------------------------------------------

    async def send(self, channel: str, message: Message) -> Receipt | None:
        """Send *message* on *channel*; raises what ``layer.send`` raises. Returns a
        receipt for :meth:`withdraw` (None when the message was handed over within
        the process)."""
        layer = self.layer
        data = layer._prepare_send(channel, message)
        if data is None:
            return None
        future: asyncio.Future[_Outcome] = self.loop.create_future()
        item = (channel, data, time.time() + layer.expiry)
        self._pending.append((item, future))
        if not self._scheduled and not self._flushing:
            self._scheduled = True
            self.loop.call_soon(self._start_flush)
        outcome = await future
        if outcome is True:
            with layer._stats_lock:
                layer._messages_count += 1
            return item
        if outcome is False:
            with layer._stats_lock:
                layer._channel_full_count += 1
            raise ChannelFull(f"channel {channel!r} is full ({layer.get_capacity(channel)})")
        raise outcome

    async def withdraw(self, receipts: Sequence[Receipt]) -> list[bool]:
        """Take back sent messages that nobody has received yet: True for each one
        removed (it will never be received), False for one already taken (or where
        the layer cannot tell). For an interface that answers a request itself at
        shutdown and must be sure that no worker runs it later."""
        return self.layer._withdraw(list(receipts))

    def _start_flush(self) -> None:
        self._scheduled = False
        if self._flushing or not self._pending:
            return
        self._flushing = True
        task = self.loop.create_task(self._flush_all())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush_all(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                started = self.metrics.clock()
                try:
                    outcomes: Sequence[_Outcome] = await self._flush([item for item, _ in batch])
                except ChannelsError as exc:
                    outcomes = [exc] * len(batch)
                except Exception as exc:  # a bug: fail the sends rather than hang them
                    log.exception("sending to the channel layer failed")
                    outcomes = [LayerUnavailable(f"send failed: {exc!r}")] * len(batch)
                self.metrics.flushed(batch, outcomes, started)
                for (_item, future), outcome in zip(batch, outcomes, strict=True):
                    if not future.done():
                        future.set_result(outcome)
        finally:
            self._flushing = False

    async def _flush(self, items: list[_Item]) -> Sequence[_Outcome]:
        raise NotImplementedError

    # -- receiving --------------------------------------------------------------------

    def listen(
        self,
        names: list[str],
        deliver: Deliver,
        *,
        max_messages: int = MAX_BATCH,
        admit: Admit | None = None,
    ) -> None:
        """Drain *names* (``name!`` prefixes of this process, or other channels) until
        :meth:`aclose`, calling *deliver* on the loop with each batch. Sends from this
        process to channels under a listened prefix are delivered without the layer:
        what *deliver* returns to await is then run as a task, and each send is first
        put to ``admit(channel, message)``, in the sending thread, which may refuse
        it with ChannelFull (as the layer refuses a send to a full channel: the
        caller's backlog for that channel is over its bound) and may return a
        function to call on the loop once the message has been delivered."""
        self._deliver = deliver
        self._admit = admit
        for name in names:
            validate_channel_name(name, receive=True)
            if name.endswith("!"):
                self._prefixes.append(name)
                self.layer._local_sinks[name] = self._local_sink
        task = self.loop.create_task(self._receive(list(names), deliver, max_messages))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _receive(self, names: list[str], deliver: Deliver, max_messages: int) -> None:
        """Run :meth:`_drain` until :meth:`aclose`. The drain retries a layer that is
        away by itself; anything else that ends it (a bug, a client library in a state
        it did not expect) is logged and the drain starts again on fresh connections,
        for a face that stops receiving loses every reply and group message after it."""
        backoff = _Backoff()
        while not self.closing:
            started = time.monotonic()
            try:
                await self._drain(names, deliver, max_messages)
            except Exception:
                if self._closed():
                    return
                log.exception("receiving from the channel layer failed; starting again")
                if time.monotonic() - started > 10.0:
                    backoff.delay = 0.0  # a fault long after the last one: retry at once
                await backoff.pause()

    def _local_sink(self, channel: str, message: Message) -> None:
        if self._deliver is None:
            return
        arrived = None
        if self._admit is not None:
            try:
                arrived = self._admit(channel, message)
            except ChannelFull:
                with self.layer._stats_lock:
                    self.layer._channel_full_count += 1
                raise
        entries = [([channel], message)]
        if threading.get_ident() == self._thread_id:
            self._deliver_here(entries, arrived)
            return
        try:
            self.loop.call_soon_threadsafe(self._deliver_here, entries, arrived)
        except RuntimeError:  # a closed loop: the server is gone, and its inboxes with it
            if arrived is not None:
                arrived()

    def _deliver_here(self, entries: list[Entry], arrived: Callable[[], None] | None) -> None:
        """Deliver on the loop what was handed over; what the caller asks to await
        (a pause for a slow reader, which may end in cutting it) runs as a task."""
        deliver = self._deliver
        try:
            pause = None if deliver is None else deliver(entries)
        finally:
            if arrived is not None:
                arrived()
        if pause is not None:
            task = asyncio.ensure_future(pause)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain(self, names: list[str], deliver: Deliver, max_messages: int) -> None:
        raise NotImplementedError

    async def discard_channel(self, channel: str) -> None:
        """Remove *channel* from every group (see ``layer.discard_channel``)."""
        self.layer.discard_channel(channel)

    def _closed(self) -> bool:
        # A method, so that type checkers do not take the flag for a constant.
        return self.closing

    def _abort(self) -> None:
        """Hook: cut connections that a cancelled receive may still be reading."""

    async def aclose(self) -> None:
        """Stop listening; sends still pending fail with LayerUnavailable."""
        self.closing = True
        for prefix in self._prefixes:
            if self.layer._local_sinks.get(prefix) == self._local_sink:
                del self.layer._local_sinks[prefix]
        self._prefixes = []
        self._deliver = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        self._abort()
        if tasks:
            # Bounded: a client library that holds on to a cancelled read must not
            # hold the server's shutdown with it.
            await asyncio.wait(tasks, timeout=2.0)
        for _item, future in self._pending:
            if not future.done():
                future.set_result(LayerUnavailable("the layer's face is closed"))
        self._pending = []


class _Backoff:
    """Log once when the layer goes away and once when it is back; growing pauses."""

    def __init__(self) -> None:
        self.delay = 0.0

    async def failed(self, exc: BaseException) -> None:
        if not self.delay:
            log.warning("channel layer unavailable, retrying: %s", exc)
        await self.pause()

    async def pause(self) -> None:
        """Sleep the next pause of the series (0.05 s, doubling, at most 2 s)."""
        self.delay = min(2.0, self.delay * 2 or 0.05)
        await asyncio.sleep(self.delay)

    def succeeded(self) -> None:
        if self.delay:
            log.warning("channel layer available again")
            self.delay = 0.0


class PollingFace(AsyncFace):
    """The face of a layer whose operations are local and short (memory, SQLite):
    they run on the loop itself, sends of one turn in one call (one SQLite
    transaction), and the receive task sleeps until the backend wakes it.

    The backend provides ``_watch(wake) -> unwatch``: *wake* is called (on any thread
    of this process, or from the loop for a readable wake-up socket) when a message
    may have arrived; ``_watch_fallback`` bounds the sleep when a wake-up is lost."""

    async def _flush(self, items: list[_Item]) -> Sequence[_Outcome]:
        return self.layer._push_many(items)

    async def _drain(self, names: list[str], deliver: Deliver, max_messages: int) -> None:
        layer = self.layer
        wake = asyncio.Event()
        loop = self.loop
        thread_id = self._thread_id

        def wake_up() -> None:
            if threading.get_ident() == thread_id:
                wake.set()
            else:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(wake.set)

        unwatch: Callable[[], None] = layer._watch(wake_up)  # type: ignore[attr-defined]
        fallback = float(getattr(layer, "_watch_fallback", layer.receive_timeout))
        backoff = _Backoff()
        try:
            while not self.closing:
                wake.clear()
                try:
                    entries = layer.receive_entries(
                        names, False, max_messages=max_messages, max_records=max_messages
                    )
                except LayerUnavailable as exc:
                    await backoff.failed(exc)
                    continue
                backoff.succeeded()
                if entries:
                    pause = deliver(entries)
                    if pause is not None:
                        await pause
                    await asyncio.sleep(0)  # let the connections write before the next batch
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), fallback)
        finally:
            unwatch()


class ThreadedFace(AsyncFace):
    """The face of a layer that has none of its own (an ASGI 1.0 layer): sends go to
    a thread, and one thread blocks in ``receive`` and hands each message to the loop."""

    def __init__(self, layer: Any) -> None:
        super().__init__(layer)
        self._stopping = threading.Event()

    async def send(self, channel: str, message: Message) -> Receipt | None:
        await self.loop.run_in_executor(None, self.layer.send, channel, message)
        return None

    async def withdraw(self, receipts: Sequence[Receipt]) -> list[bool]:
        return [False] * len(receipts)  # ASGI 1.0 layers cannot take a message back

    def listen(
        self,
        names: list[str],
        deliver: Deliver,
        *,
        max_messages: int = MAX_BATCH,
        admit: Admit | None = None,
    ) -> None:
        # *admit* is for sends handed over in the process, which a layer of its own
        # (ASGI 1.0) never makes.
        self._deliver = deliver
        thread = threading.Thread(
            target=self._receive_loop, args=(names, deliver), name="wsgi-channels-receive",
            daemon=True,
        )  # fmt: skip
        thread.start()

    def _receive_loop(self, names: list[str], deliver: Deliver) -> None:
        delay = 0.0
        while not self._stopping.is_set():
            try:
                channel, message = self.layer.receive(names, block=True)
            except Exception as exc:
                if not delay:
                    log.warning("receiving from the channel layer failed, retrying: %s", exc)
                delay = min(2.0, delay * 2 or 0.05)
                self._stopping.wait(delay)
                continue
            delay = 0.0
            if channel is None or not isinstance(message, dict):
                continue
            try:
                self.loop.call_soon_threadsafe(deliver, [([channel], message)])
            except RuntimeError:
                return  # the loop is closed

    async def discard_channel(self, channel: str) -> None:
        discard = getattr(self.layer, "discard_channel", None)
        if discard is not None:
            await self.loop.run_in_executor(None, discard, channel)

    async def aclose(self) -> None:
        self._stopping.set()
        await super().aclose()
