"""Reply routing: from the layer's asyncio face to the connection each message is for.

One :class:`ReplyRouter` per interface process owns the process channel prefix
(``wsgi_channels.interface.<128 random bits>!``), under which every reply channel of
the process is named, and the one receive task that drains it (the layer's asyncio
face, many messages per round trip). Each connection owns a bounded :class:`Inbox`.

A group message for many local sockets comes once with the list of its members
(:meth:`ReplyRouter.deliver`): it is checked once, encoded into a WebSocket frame
once, and the same bytes are written straight to every member socket that is open,
idle (nothing queued in its inbox, so order holds) and uncompressed. The others get
it through their inbox. A socket whose buffer passes its bound is closed with 1013;
nobody waits on a slow socket.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

from ..layers.aio import AsyncFace, Entry, Receipt, async_face
from ..layers.base import ChannelFull, Layer
from ..metrics import NULL_METRICS, Recorder
from ..protocol import DONE_KEY, INTERFACE_PREFIX, check_websocket_reply, full_retry_pauses
from .protocols import data_frame

if TYPE_CHECKING:
    from .websocket import WebSocketSession

__all__ = ["Event", "Inbox", "ReplyRouter", "send_when_room"]

logger = logging.getLogger("wsgi_channels.interface")

Message = dict[str, Any]
# The ASGI callables, as the http and websocket modules and the app receive them.
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Event(enum.Enum):
    """What an inbox returns instead of a message."""

    TIMEOUT = "timeout"  # the deadline passed with nothing to return
    OVERFLOW = "overflow"  # a message was dropped: the inbox was full
    DISCONNECT = "disconnect"  # the HTTP client went away
    TOO_LARGE = "too large"  # the request body went over max_body
    SHUTDOWN = "shutdown"  # the server is stopping
    WAKE = "wake"  # poked: the owner has something else to look at


def payload_size(message: Message) -> int:
    for key in ("content", "text", "bytes"):
        value = message.get(key)
        if isinstance(value, (bytes, str)):
            return len(value) + 64
    return 64


class Inbox:
    """The messages of one reply channel, waiting for their connection's task.

    Bounded by *max_items* and *max_bytes*: a message that would go over is dropped,
    what is queued is dropped with it, and the next :meth:`get` returns
    ``Event.OVERFLOW`` so that the owner cuts a connection whose client cannot keep
    up (the layer protocol has no per-response flow control). :meth:`interrupt` is
    returned the same way, before any message; :meth:`poke` wakes a waiting get.
    Everything runs on the event loop.
    """

    __slots__ = (
        "_bytes",
        "_items",
        "_room",
        "_signal",
        "_waiter",
        "cut",
        "max_bytes",
        "max_items",
        "stalls",
    )

    def __init__(self, max_items: int, max_bytes: int, *, stalls: bool = False) -> None:
        self._items: collections.deque[tuple[Message, int]] = collections.deque()
        self._bytes = 0
        self._signal: Event | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self.max_items = max_items
        self.max_bytes = max_bytes
        # An HTTP response's inbox: over its bound it holds what comes and the
        # receive task pauses a moment for it (see ReplyRouter).
        self.stalls = stalls
        self.cut = False  # overflowed: nothing more is kept

    @property
    def nbytes(self) -> int:
        """Bytes waiting (read from any thread: a bound, not an exact figure)."""
        return self._bytes

    @property
    def over(self) -> bool:
        return self._bytes > self.max_bytes or len(self._items) > self.max_items

    def room(self) -> asyncio.Future[None]:
        """Done once the backlog is back under the bound."""
        future = self._room
        if future is None or future.done():
            future = self._room = asyncio.get_running_loop().create_future()
        if not self.over or self.cut:
            future.set_result(None)
        return future

    def overflow(self) -> None:
        """Drop the backlog and tell the owner to cut the connection."""
        self.cut = True
        self._items.clear()
        self._bytes = 0
        self._signal = Event.OVERFLOW
        self._wake()

    def __bool__(self) -> bool:
        return bool(self._items)

    def put(self, message: Message) -> None:
        if self.cut:
            return
        size = payload_size(message)
        # An HTTP response's inbox is never cut here: one batch of the receive task may
        # carry more than its bound of a fast worker's chunks, which ReplyRouter._stall
        # then waits for the client to take (the process queue's capacity bounds what
        # can come meanwhile).
        over = self._bytes + size > self.max_bytes or len(self._items) >= self.max_items
        if not self.stalls and self._items and over:
            self.overflow()
        else:
            self._items.append((message, size))
            self._bytes += size
        self._wake()

    def interrupt(self, event: Event) -> None:
        if self._signal is None:
            self._signal = event
        self._wake()

    def poke(self) -> None:
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, deadline: float | None) -> Message | Event:
        """The next message, or an ``Event``; *deadline* is in ``loop.time()``."""
        if self._signal is None and not self._items:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = None if deadline is None else loop.call_at(deadline, _expire, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if self._signal is None and not self._items:
                if deadline is not None and loop.time() >= deadline:
                    return Event.TIMEOUT
                return Event.WAKE
        signal = self._signal
        if signal is not None:
            self._signal = None
            return signal
        message, size = self._items.popleft()
        self._bytes -= size
        room = self._room
        if room is not None and not room.done() and not self.over:
            room.set_result(None)
        return message


STALL_TIMEOUT = 0.25
"""Seconds the receive task waits for a streaming HTTP client to take some of its
backlog before it cuts the connection."""


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class ReplyRouter:
    """The process prefix, its receive task, and the inbox of every reply channel."""

    def __init__(self, layer: Layer, metrics: Recorder = NULL_METRICS) -> None:
        self.layer = layer
        self.metrics = metrics
        self.prefix = ""
        self.face: AsyncFace | None = None
        self.inboxes: dict[str, Inbox] = {}
        self.sessions: dict[str, WebSocketSession] = {}
        # Bytes of replies handed over in the process, on their way to the loop.
        self._transit: dict[str, int] = {}
        self._transit_lock = threading.Lock()

    @property
    def started(self) -> bool:
        return self.face is not None

    def start(self) -> None:
        """Make the prefix and start draining it; on the loop, idempotent."""
        if self.face is not None:
            return
        self.prefix = INTERFACE_PREFIX + secrets.token_hex(16) + "!"
        self.face = async_face(self.layer)
        self.face.metrics = self.metrics
        self.face.listen([self.prefix], self.deliver, admit=self._admit)

    async def stop(self) -> None:
        face, self.face = self.face, None
        if face is not None:
            await face.aclose()

    def open(self, inbox: Inbox) -> str:
        """A new reply channel whose messages go to *inbox*."""
        self.start()
        channel: str = self.layer.new_channel(self.prefix)
        self.inboxes[channel] = inbox
        return channel

    def close(self, channel: str) -> None:
        self.inboxes.pop(channel, None)
        self.sessions.pop(channel, None)

    async def send(self, channel: str, message: Message) -> Receipt | None:
        """Send on the layer (batched with this loop turn's other sends); the receipt
        takes the message back with :meth:`withdraw` while no worker has it."""
        self.start()
        assert self.face is not None
        return await self.face.send(channel, message)

    async def withdraw(self, receipts: list[Receipt]) -> list[bool]:
        """Which of these sends were taken back before any worker received them."""
        if self.face is None:
            return [False] * len(receipts)
        return await self.face.withdraw(receipts)

    async def discard_channel(self, channel: str) -> None:
        """Take *channel* out of every group: its socket has gone."""
        if self.face is not None:
            await self.face.discard_channel(channel)

    # -- delivery -------------------------------------------------------------------

    def _admit(self, channel: str, message: Message) -> Callable[[], None] | None:
        """A reply handed over in the process (``wsgi-channels run``), in the sending
        thread: refused with ChannelFull when its HTTP response's backlog, counting
        what is still on its way to the loop, would go over the bound (a slow
        client), which brakes the worker as the layer's capacity does for replies
        that travel through it."""
        inbox = self.inboxes.get(channel)
        if inbox is None or not inbox.stalls or inbox.cut:
            return None
        size = payload_size(message)
        with self._transit_lock:
            transit = self._transit.get(channel, 0)
            if (transit or inbox) and transit + inbox.nbytes + size > inbox.max_bytes:
                raise ChannelFull(f"channel {channel!r} is full: its client is behind")
            self._transit[channel] = transit + size

        def arrived() -> None:
            with self._transit_lock:
                left = self._transit.pop(channel, 0) - size
                if left > 0:
                    self._transit[channel] = left

        return arrived

    def deliver(self, entries: Iterable[Entry]) -> Awaitable[None] | None:
        """Hand a batch to the inboxes; returns what the receive task must await
        before it takes more, when an HTTP response's backlog went over its bound."""
        self.metrics.delivered(entries)
        inboxes = self.inboxes
        full: list[Inbox] = []
        for channels, message in entries:
            if len(channels) == 1:
                inbox = inboxes.get(channels[0])
                if inbox is not None:
                    inbox.put(message)
                    if inbox.stalls and inbox.over and not inbox.cut:
                        full.append(inbox)
                continue
            self._fan_out(channels, message)
        return self._stall(full) if full else None

    async def _stall(self, full: list[Inbox]) -> None:
        """A worker streams a response faster than its client reads. The layer has
        no per-response flow control, so the process queue's capacity is the brake:
        the receive task waits a moment (STALL_TIMEOUT) for the client to take some,
        which makes the worker meet ChannelFull and slow down; a client that takes
        nothing meanwhile is cut. WebSocket inboxes never stall: they are cut at once."""
        waits = [inbox.room() for inbox in full]
        _done, pending = await asyncio.wait(waits, timeout=STALL_TIMEOUT)
        for inbox, future in zip(full, waits, strict=True):
            if future in pending:
                future.cancel()
                inbox.overflow()

    def _fan_out(self, channels: list[str], message: Message) -> None:
        """One group message to many local members: checked and encoded once."""
        reason = check_websocket_reply(message)
        if reason is not None:
            logger.warning("dropped a group message for %d sockets: %s", len(channels), reason)
            return
        frame: bytes | None = None
        direct = (
            "close" not in message
            and "accept" not in message
            and DONE_KEY not in message
            and (message.get("text") is None) != (message.get("bytes") is None)
        )
        sessions = self.sessions
        inboxes = self.inboxes
        for channel in channels:
            session = sessions.get(channel) if direct else None
            if session is not None and session.takes_frames():
                if frame is None:
                    text = message.get("text")
                    frame = data_frame(message["bytes"] if text is None else text)
                session.write_frame(frame)
                continue
            inbox = inboxes.get(channel)
            if inbox is not None:
                inbox.put(message)


async def send_when_room(
    router: ReplyRouter, channel: str, message: Message, deadline: float
) -> None:
    """Send, retrying on ChannelFull with growing pauses until *deadline*
    (``time.time()``); then the last ChannelFull is raised."""
    for pause in full_retry_pauses():
        try:
            await router.send(channel, message)
            return
        except ChannelFull:
            if time.time() + pause > deadline:
                raise
        await asyncio.sleep(pause)
