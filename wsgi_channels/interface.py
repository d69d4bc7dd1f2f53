"""The interface server: HTTP and WebSocket connections in, channel messages out.

:class:`InterfaceServer` is an ASGI 3 application, served by uvicorn, that plays the role
Daphne had in Channels 1.x: it turns each HTTP request into an ``http.request`` message
and each WebSocket event into a ``websocket.*`` message (SPEC.md §4, §8, and the
extension keys of docs/protocol.md), and writes whatever arrives on the reply channel
back to the socket. uvicorn parses HTTP and WebSocket; nothing here does.

Threads and tasks in one process::

    uvicorn's event loop: one task per request or connection ──layer.send()──▶ layer
          ▲
          │ loop.call_soon_threadsafe(_deliver, [(inbox, message, size), ...])
          │
    the receive thread: layer.receive_batch([prefix], block=True) ◀──────────── layer

Every reply channel of the process is ``layer.new_channel(prefix)`` under one
process-specific prefix ``wsgi_channels.interface.<128 random bits>!``, so a single
blocking receive serves them all. The thread takes messages in batches with the layer's
``receive_batch`` extension (plain ``receive`` on a layer without it, such as an ASGI 1.0
one), so that a group message for every connection of the process reaches the loop in
one hand-off. Each connection owns a bounded inbox; a message for a reply channel that
has no inbox (its connection is gone) is dropped silently.

:func:`create_app` builds the application from ``WSGI_CHANNELS_*`` environment
variables, for ``uvicorn --factory`` and for the worker processes of
``wsgi-channels interface --workers N``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import fnmatch
import logging
import os
import secrets
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol
from wsproto.events import CloseConnection

from .layers import DEFAULT_LAYER_URL, LAYER_ENV, layer_from_url
from .layers.base import (
    BaseChannelLayer,
    ChannelFull,
    ChannelsError,
    ConfigurationError,
    LayerUnavailable,
    MessageTooLarge,
)
from .protocol import (
    BODY_CHANNEL_PATTERN,
    BODY_CHUNK_SIZE,
    CONTROL_KEY,
    DEADLINE_KEY,
    DISCONNECT_TYPE,
    DONE_KEY,
    EXT_KEY,
    INLINE_BODY_LIMIT,
    INTERFACE_PREFIX,
    SUBPROTOCOL_KEY,
)

__all__ = [
    "DEFAULT_MAX_BODY",
    "MAX_HEADER_COUNT",
    "MAX_HEAD_SIZE",
    "BoundedHttpToolsProtocol",
    "GoingAwayWSProtocol",
    "InterfaceServer",
    "OriginRules",
    "create_app",
    "options_from_environ",
]

logger = logging.getLogger("wsgi_channels.interface")

Message = dict[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

DEFAULT_MAX_BODY = 100 * 1024 * 1024
# Threads that send to the layer when several requests are in flight (see _layer_send).
SEND_THREADS = 4
# Seconds after a LayerUnavailable during which no send is made from the event loop.
LAYER_DOWN_BACKOFF = 5.0


class _Event(enum.Enum):
    """What an inbox returns instead of a message."""

    TIMEOUT = "timeout"  # the deadline passed with nothing to return
    OVERFLOW = "overflow"  # a message was dropped: the inbox was full
    DISCONNECT = "disconnect"  # the HTTP client went away
    TOO_LARGE = "too large"  # the request body went over max_body
    WAKE = "wake"  # poked: the owner has something else to look at


def _payload_size(message: Message) -> int:
    for key in ("content", "text", "bytes"):
        value = message.get(key)
        if isinstance(value, (bytes, str)):
            return len(value) + 64
    return 64


class _Inbox:
    """The messages of one reply channel, waiting for their connection's task.

    The receive thread hands messages over with :meth:`handed_over` (on its thread)
    and then :meth:`put` (scheduled on the loop); the connection's task takes them with
    :meth:`get`. The backlog (handed over, not yet taken) is bounded by *max_items* and
    *max_bytes*. The layer protocol has no per-response flow control (the worker sends
    as fast as it can, docs/protocol.md), so at the bound the receive thread waits a
    moment (:data:`STALL_TIMEOUT`) for the task to catch up, which is all a briefly
    busy event loop needs; if the backlog is still over the bound the message is
    dropped and the next :meth:`get` returns ``_Event.OVERFLOW``, before any queued
    message, so that the owner cuts a connection whose client cannot keep up. An
    interrupt (:meth:`interrupt`) is returned the same way; :meth:`poke` wakes a
    waiting :meth:`get` with ``_Event.WAKE`` when there is no message.
    """

    __slots__ = (
        "_items",
        "_signal",
        "_waiter",
        "cut",
        "drained",
        "handed_bytes",
        "handed_items",
        "max_bytes",
        "max_items",
        "stalled",
        "taken_bytes",
        "taken_items",
    )

    def __init__(self, max_items: int, max_bytes: int, drained: threading.Event) -> None:
        self._items: collections.deque[tuple[Message, int]] = collections.deque()
        self._signal: _Event | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.max_items = max_items
        self.max_bytes = max_bytes
        # Written by the receive thread only / by the loop only, so no lock is needed.
        self.handed_items = self.handed_bytes = 0
        self.taken_items = self.taken_bytes = 0
        self.stalled = False
        # Set (on the loop) at the first overflow: the connection is being cut, so what
        # is queued will never be written and the receive thread drops what comes next
        # without waiting for room (one slow client must not stall the others).
        self.cut = False
        self.drained = drained

    def over_bound(self, size: int) -> bool:
        """Would one more message of *size* put the backlog over a bound? (Any thread.)"""
        items = self.handed_items - self.taken_items
        return items > 0 and (
            items >= self.max_items or self.handed_bytes - self.taken_bytes + size > self.max_bytes
        )

    def handed_over(self, size: int) -> None:
        self.handed_items += 1
        self.handed_bytes += size

    def put(self, message: Message, size: int) -> None:
        if self.cut:
            self._account(size)
        elif self._items and (
            len(self._items) >= self.max_items
            or self.handed_bytes - self.taken_bytes > self.max_bytes
        ):
            self._signal = _Event.OVERFLOW
            self.cut = True
            self._account(size)
            while self._items:
                self._account(self._items.popleft()[1])
        else:
            self._items.append((message, size))
        self._wake()

    def _account(self, size: int) -> None:
        self.taken_items += 1
        self.taken_bytes += size
        if self.stalled:
            self.stalled = False
            self.drained.set()

    def interrupt(self, event: _Event) -> None:
        if self._signal is None:
            self._signal = event
        self._wake()

    def poke(self) -> None:
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, deadline: float | None) -> Message | _Event:
        """The next message, or an ``_Event``; *deadline* is in ``loop.time()``."""
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
                    return _Event.TIMEOUT
                return _Event.WAKE
        signal = self._signal
        if signal is not None:
            self._signal = None
            return signal
        message, size = self._items.popleft()
        self._account(size)
        return message


STALL_TIMEOUT = 0.25
"""Seconds the receive thread waits for a connection's backlog to go under its bound
before dropping the message (and so cutting the connection)."""


RECEIVE_BATCH = 1024
"""Most messages the receive thread takes from the layer (and hands to the loop) at once."""


def _deliver(deliveries: list[tuple[_Inbox, Message, int]]) -> None:
    """On the loop: put each message of a batch in its inbox, in the batch's order."""
    for inbox, message, size in deliveries:
        inbox.put(message, size)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class OriginRules:
    """Which ``Origin`` a WebSocket handshake may come from.

    With no patterns, the Origin's host and port must equal the ``Host`` header's (the
    page was served by this site). Each pattern allows more: ``https://example.com``
    (that scheme, host and port), ``example.com:8000`` or ``*.example.com`` (any scheme;
    glob on the host name, port checked when given) and ``*`` (anything). A handshake
    without an ``Origin`` header comes from a non-browser client and is allowed; the
    literal ``null`` origin is allowed only by ``*``.
    """

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.allow_all = False
        self.rules: list[tuple[str | None, str, int | None]] = []
        for raw in patterns:
            pattern = raw.strip()
            if not pattern:
                continue
            if pattern == "*":
                self.allow_all = True
                continue
            scheme: str | None = None
            if "://" in pattern:
                scheme, _, pattern = pattern.partition("://")
                scheme = scheme.lower()
            host, port = _split_host_port(pattern.rstrip("/"))
            if not host:
                raise ConfigurationError(f"bad allowed origin {raw!r}")
            if scheme is not None and port is None:
                port = _DEFAULT_PORTS.get(scheme)
            self.rules.append((scheme, host.lower(), port))

    def allowed(self, headers: Iterable[tuple[bytes, bytes]], scheme: str) -> bool:
        origin = host_header = None
        for name, value in headers:
            if name == b"origin":
                origin = value.decode("latin-1").strip()
            elif name == b"host":
                host_header = value.decode("latin-1").strip()
        if origin is None or self.allow_all:
            return True
        parsed = urllib.parse.urlsplit(origin)
        origin_scheme = parsed.scheme.lower()
        try:
            origin_host, origin_port = parsed.hostname, parsed.port
        except ValueError:
            return False
        if not origin_host or origin_scheme not in _DEFAULT_PORTS:
            return False
        if origin_port is None:
            origin_port = _DEFAULT_PORTS[origin_scheme]
        if host_header is not None:
            host, port = _split_host_port(host_header)
            if port is None:
                port = 443 if scheme in ("wss", "https") else 80
            if host.lower() == origin_host and port == origin_port:
                return True
        for rule_scheme, rule_host, rule_port in self.rules:
            if rule_scheme is not None and rule_scheme != origin_scheme:
                continue
            if rule_port is not None and rule_port != origin_port:
                continue
            if fnmatch.fnmatchcase(origin_host, rule_host):
                return True
        return False


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _split_host_port(value: str) -> tuple[str, int | None]:
    if value.startswith("["):  # [v6]:port
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, ""
    if not port_text:
        return host, None
    try:
        return host, int(port_text)
    except ValueError:
        return host, -1


# Answers to layer errors when sending http.request (STYLE.md 7: a table, not a chain).
_LAYER_ERROR_RESPONSES: dict[type, tuple[int, bytes]] = {
    ChannelFull: (503, b"Service Unavailable: the server is busy, try again shortly\n"),
    LayerUnavailable: (503, b"Service Unavailable: the channel layer is unreachable\n"),
    MessageTooLarge: (431, b"Request Header Fields Too Large\n"),
}


def _error_response(exc: ChannelsError) -> tuple[int, bytes]:
    for cls in type(exc).__mro__:
        found = _LAYER_ERROR_RESPONSES.get(cls)
        if found is not None:
            return found
    return 500, b"Internal Server Error\n"


class InterfaceServer:
    """The ASGI 3 application that bridges HTTP and WebSocket clients to a channel layer.

    *layer* is a channel layer object (SPEC.md §3). The process-specific prefix and the
    receive thread are made on first use inside the serving process (lifespan startup or
    the first connection), so an instance built before a fork is safe.

    Keyword-only options:

    * ``http_timeout``: seconds an HTTP request waits for the response to start (then
      504) and, once streaming, for each next chunk (then the connection is cut); also
      the time a WebSocket event may take before the socket is closed with 1011.
    * ``websocket_connect_timeout``: seconds a handshake waits for accept (then 403).
    * ``allowed_origins``: extra WebSocket origins, see :class:`OriginRules`.
    * ``max_body``: largest request body in bytes; larger gets 413 (from
      ``Content-Length`` before reading, or as soon as a chunked body goes over).
    * ``root_path``: the ``root_path`` (WSGI ``SCRIPT_NAME``) put in every message.
    * ``response_buffer``: bytes of one HTTP response the process holds while its client
      is slower than the worker; over it the connection is cut and the worker told.
    * ``websocket_queue``: messages waiting to be written to one WebSocket; over it the
      socket is closed with 1013 (the client cannot keep up).
    * ``websocket_buffer``: frames from one client waiting for the app to finish the
      previous event; over it the socket is closed with 1013.
    * ``send_in_thread``: always send to the layer from a thread (True), or only when
      other requests are in flight (False, the default); see :meth:`_layer_send`.
    * ``retry_after``: seconds put in ``Retry-After`` of a 503 for a full channel.
    """

    def __init__(
        self,
        layer: BaseChannelLayer,
        *,
        http_timeout: float = 60.0,
        websocket_connect_timeout: float = 5.0,
        allowed_origins: Iterable[str] = (),
        max_body: int = DEFAULT_MAX_BODY,
        root_path: str = "",
        response_buffer: int = 16 * 1024 * 1024,
        websocket_queue: int = 256,
        websocket_buffer: int = 1024,
        send_in_thread: bool = False,
        retry_after: int = 1,
    ) -> None:
        if http_timeout <= 0 or websocket_connect_timeout <= 0:
            raise ConfigurationError("timeouts must be positive numbers of seconds")
        if max_body < 0:
            raise ConfigurationError("max_body must be a number of bytes, 0 or more")
        self.layer = layer
        self.http_timeout = float(http_timeout)
        self.websocket_connect_timeout = float(websocket_connect_timeout)
        self.origins = OriginRules(allowed_origins)
        self.max_body = int(max_body)
        self.root_path = root_path.rstrip("/")
        self.response_buffer = int(response_buffer)
        self.websocket_queue = int(websocket_queue)
        self.websocket_buffer = int(websocket_buffer)
        self.send_in_thread = send_in_thread
        self.retry_after = int(retry_after)
        self.prefix = ""
        self._inboxes: dict[str, _Inbox] = {}
        self._sessions: set[_WebSocketSession] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._drained = threading.Event()
        self._executor: ThreadPoolExecutor | None = None
        # HTTP requests and WebSocket events this process is handling right now.
        self._active = 0
        # Sends go through the pool until then (monotonic time): the layer was down.
        self._direct_after = 0.0

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Make this process's prefix and start the receive thread. Called from the
        event loop (lifespan startup, or the first connection); idempotent."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self.prefix = INTERFACE_PREFIX + secrets.token_hex(16) + "!"
        self._stopping.clear()
        self._executor = ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="wsgi-channels-send")
        self._thread = threading.Thread(
            target=self._receive_loop, name="wsgi-channels-receive", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        """Stop the receive thread (it returns within the layer's receive timeout)."""
        thread, self._thread = self._thread, None
        self._stopping.set()
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 10.0)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def close_websockets(self, code: int = 1001) -> None:
        """Close every open WebSocket of this process with *code* (shutdown)."""
        for session in list(self._sessions):
            session.close_soon(code)

    def _receive_loop(self) -> None:
        loop = self._loop
        assert loop is not None  # set by start() before the thread starts
        channels = [self.prefix]
        inboxes = self._inboxes
        receive_batch = getattr(self.layer, "receive_batch", None)
        delay = 0.0
        while not self._stopping.is_set():
            try:
                if receive_batch is not None:
                    batch = receive_batch(channels, block=True, max_messages=RECEIVE_BATCH)
                else:  # an ASGI 1.0 layer: one message per call
                    channel, message = self.layer.receive(channels, block=True)
                    batch = [] if channel is None or message is None else [(channel, message)]
            except LayerUnavailable as exc:
                if not delay:
                    logger.warning("channel layer unavailable, retrying: %s", exc)
                delay = min(2.0, delay * 2 or 0.05)
                self._stopping.wait(delay)
                continue
            except Exception:
                logger.exception("receiving from the channel layer failed")
                self._stopping.wait(1.0)
                continue
            if delay:
                logger.warning("channel layer available again")
                delay = 0.0
            # The whole batch (say a group message for 1,000 local connections) goes
            # to the loop in one call_soon_threadsafe: one wake-up of the loop and one
            # GIL hand-off instead of one per message.
            deliveries: list[tuple[_Inbox, Message, int]] = []
            try:
                for channel, message in batch:
                    inbox = inboxes.get(channel)
                    if inbox is None or inbox.cut:
                        continue  # the connection is gone or being cut: drop the reply
                    size = _payload_size(message)
                    if inbox.over_bound(size):
                        # What is gathered must reach the loop first, or the wait
                        # could be for room that only those messages' delivery makes.
                        if deliveries:
                            loop.call_soon_threadsafe(_deliver, deliveries)
                            deliveries = []
                        self._wait_for_room(inbox, size)
                    inbox.handed_over(size)
                    deliveries.append((inbox, message, size))
                if deliveries:
                    loop.call_soon_threadsafe(_deliver, deliveries)
            except RuntimeError:  # the loop is closed: the server is gone
                return

    def _wait_for_room(self, inbox: _Inbox, size: int) -> None:
        # Head-of-line wait: nothing else is delivered meanwhile, hence the short bound.
        give_up = time.monotonic() + STALL_TIMEOUT
        while inbox.over_bound(size) and not inbox.cut and not self._stopping.is_set():
            left = give_up - time.monotonic()
            if left <= 0:
                return
            self._drained.clear()
            inbox.stalled = True
            if not inbox.over_bound(size):
                return
            self._drained.wait(left)

    def _new_reply_channel(self, inbox: _Inbox) -> str:
        if self._thread is None:
            self.start()
        channel = self.layer.new_channel(self.prefix)
        self._inboxes[channel] = inbox
        return channel

    async def _layer_send(self, channel: str, message: Message) -> None:
        """Send *message*; raises the layer's errors.

        A send is one round trip to the layer's server, during which a direct call
        holds the event loop. Measured here (uvloop, Redis on loopback, 2 CPUs): direct
        costs p50 76 us of loop time per send, a hop through a thread costs 55-100 us
        more latency. So the choice is made per send: when this is the only request in
        flight (nothing else wants the loop) the send is direct and the request pays no
        hop; under concurrency it goes to a small thread pool, so that the loop serves
        other connections while the round trips overlap. (Always direct, a profile at
        16 concurrent requests showed 68 % of the loop's time blocked in Redis sends,
        capping the process at one request per round trip.) ``send_in_thread=True``
        always uses the pool, for layers whose send can block for long; so does every
        send for a while after the layer was found unavailable, when a send may wait
        for a connect timeout rather than a round trip.
        """
        executor = self._executor
        direct = not self.send_in_thread and self._active <= 1
        try:
            if executor is None or (direct and time.monotonic() >= self._direct_after):
                self.layer.send(channel, message)
            else:
                await asyncio.get_running_loop().run_in_executor(
                    executor, self.layer.send, channel, message
                )
        except LayerUnavailable:
            self._direct_after = time.monotonic() + LAYER_DOWN_BACKOFF
            raise

    async def _send_when_room(self, channel: str, message: Message, deadline: float) -> None:
        """Send, retrying on ChannelFull with a growing pause until *deadline*
        (``time.time()``); then the last ChannelFull is raised."""
        pause = 0.002
        while True:
            try:
                await self._layer_send(channel, message)
                return
            except ChannelFull:
                if time.time() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)

    # -- ASGI ---------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            raise ValueError(f"unknown ASGI scope type {kind!r}")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close_websockets(1001)
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- HTTP ---------------------------------------------------------------------

    async def _respond(
        self,
        send: Send,
        status: int,
        body: bytes,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"%d" % len(body)),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._active += 1
        try:
            await self._http_request(scope, receive, send)
        finally:
            self._active -= 1

    async def _http_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope["headers"]
        length: int | None = None
        has_body = False
        for name, value in headers:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await self._respond(send, 400, b"Bad Request: invalid Content-Length\n")
                    return
                has_body = length > 0
            elif name == b"transfer-encoding":
                has_body = True
        if length is not None and length > self.max_body:
            await self._respond(send, 413, b"Payload Too Large\n", [(b"connection", b"close")])
            return

        body = b""
        rest = b""
        more = False
        received = 0
        if has_body:
            parts: list[bytes] = []
            more = True
            while more and received <= INLINE_BODY_LIMIT:
                event = await receive()
                if event["type"] != "http.request":
                    return  # the client went away before sending its body
                chunk = event.get("body", b"")
                received += len(chunk)
                more = event.get("more_body", False)
                if received > self.max_body:
                    await self._respond(
                        send, 413, b"Payload Too Large\n", [(b"connection", b"close")]
                    )
                    return
                parts.append(chunk)
            data = b"".join(parts)
            body, rest = data[:INLINE_BODY_LIMIT], data[INLINE_BODY_LIMIT:]
            more = more or bool(rest)

        loop = asyncio.get_running_loop()
        inbox = _Inbox(1 << 30, self.response_buffer, self._drained)
        reply_channel = self._new_reply_channel(inbox)
        reader: asyncio.Task[None] | None = None
        try:
            deadline = time.time() + self.http_timeout
            body_channel = self.layer.new_channel(BODY_CHANNEL_PATTERN) if more else None
            client = scope.get("client")
            server = scope.get("server")
            message = {
                "reply_channel": reply_channel,
                "http_version": scope["http_version"],
                "method": scope["method"],
                "scheme": scope.get("scheme", "http"),
                "path": scope["path"],
                "query_string": scope["query_string"],
                "root_path": scope.get("root_path") or self.root_path,
                "headers": headers,
                "body": body,
                "body_channel": body_channel,
                "client": client,
                "server": server,
                EXT_KEY: 1,
                DEADLINE_KEY: deadline,
            }
            try:
                await self._layer_send("http.request", message)
            except ChannelsError as exc:
                status, text = _error_response(exc)
                logger.warning("cannot pass %s %s on: %s", scope["method"], scope["path"], exc)
                extra = [(b"retry-after", b"%d" % self.retry_after)] if status == 503 else []
                await self._respond(send, status, text, extra)
                return
            if body_channel is not None:
                reader = loop.create_task(
                    self._upload(receive, inbox, body_channel, rest, more, received, deadline)
                )
            wait_until = loop.time() + self.http_timeout
            reply = await inbox.get(wait_until)
            while reply is _Event.WAKE:
                reply = await inbox.get(wait_until)
            if reply is _Event.TIMEOUT:
                await self._respond(send, 504, b"Gateway Timeout\n")
            elif reply is _Event.TOO_LARGE:
                await self._respond(send, 413, b"Payload Too Large\n", [(b"connection", b"close")])
            elif isinstance(reply, dict):
                reader = await self._stream_response(
                    send, receive, inbox, reply, reader, reply_channel
                )
        finally:
            del self._inboxes[reply_channel]
            if reader is not None:
                reader.cancel()

    async def _upload(
        self,
        receive: Receive,
        inbox: _Inbox,
        channel: str,
        pending: bytes,
        more: bool,
        received: int,
        deadline: float,
    ) -> None:
        """Send the rest of a request body on *channel* as the client uploads it, in
        chunks of at most BODY_CHUNK_SIZE, waiting while the channel is full (so the
        upload's pace follows the worker's); then watch for the client going away."""
        buffer = bytearray(pending)
        while True:
            while more and len(buffer) < BODY_CHUNK_SIZE:
                event = await receive()
                if event["type"] != "http.request":
                    await self._close_body(channel, deadline)
                    inbox.interrupt(_Event.DISCONNECT)
                    return
                chunk = event.get("body", b"")
                received += len(chunk)
                more = event.get("more_body", False)
                if received > self.max_body:
                    await self._close_body(channel, deadline)
                    inbox.interrupt(_Event.TOO_LARGE)
                    return
                buffer += chunk
            content = bytes(buffer[:BODY_CHUNK_SIZE])
            del buffer[:BODY_CHUNK_SIZE]
            last = not more and not buffer
            chunk_message = {"content": content, "closed": False, "more_content": not last}
            try:
                await self._send_when_room(channel, chunk_message, deadline)
            except ChannelsError as exc:
                logger.warning("request body not passed on: %s", exc)
                return
            if last:
                break
        await self._watch_disconnect(receive, inbox)

    async def _close_body(self, channel: str, deadline: float) -> None:
        # ASGI 1.0: ``closed`` tells the worker the client is gone and the body is cut.
        message = {"content": b"", "closed": True, "more_content": False}
        with contextlib.suppress(ChannelsError):
            await self._send_when_room(channel, message, min(deadline, time.time() + 1.0))

    async def _watch_disconnect(self, receive: Receive, inbox: _Inbox) -> None:
        # uvicorn's receive() returns http.disconnect when the client goes away (or the
        # response is complete, when nobody is listening any more).
        while (await receive())["type"] != "http.disconnect":
            pass
        inbox.interrupt(_Event.DISCONNECT)

    async def _stream_response(
        self,
        send: Send,
        receive: Receive,
        inbox: _Inbox,
        first: Message,
        reader: asyncio.Task[None] | None,
        reply_channel: str,
    ) -> asyncio.Task[None] | None:
        """Write the response whose first reply is *first*, chunk by chunk as the
        replies arrive; uvicorn's send waits while the client's socket is full."""
        await send(
            {
                "type": "http.response.start",
                "status": first["status"],
                "headers": first.get("headers") or [],
            }
        )
        more = bool(first.get("more_content", False))
        await send(
            {"type": "http.response.body", "body": first.get("content", b""), "more_body": more}
        )
        if not more:
            return reader
        control = first.get(CONTROL_KEY)
        if reader is None:
            reader = asyncio.get_running_loop().create_task(self._watch_disconnect(receive, inbox))
        loop = asyncio.get_running_loop()
        while more:
            reply = await inbox.get(loop.time() + self.http_timeout)
            if reply is _Event.WAKE:
                continue
            if not isinstance(reply, dict):
                if reply is _Event.OVERFLOW:
                    logger.warning(
                        "client too slow: more than %d bytes of response waiting; connection cut",
                        self.response_buffer,
                    )
                elif reply is _Event.TIMEOUT:
                    logger.warning(
                        "no response chunk for %.0f s; connection cut", self.http_timeout
                    )
                if isinstance(control, str):
                    await self._tell_worker(control, reply_channel)
                # Returning before the end of the response makes uvicorn close the
                # connection, so the client cannot take a cut body for a whole one.
                return reader
            more = bool(reply.get("more_content", False))
            await send(
                {"type": "http.response.body", "body": reply.get("content", b""), "more_body": more}
            )
        return reader

    async def _tell_worker(self, control: str, reply_channel: str) -> None:
        try:
            await self._layer_send(
                control, {"type": DISCONNECT_TYPE, "reply_channel": reply_channel}
            )
        except ChannelsError as exc:
            logger.warning("could not tell the worker the client left: %s", exc)

    # -- WebSocket ----------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        event = await receive()
        if event["type"] != "websocket.connect":
            return
        if not self.origins.allowed(scope["headers"], scope.get("scheme", "ws")):
            logger.info("WebSocket %s refused: origin not allowed", scope["path"])
            await send({"type": "websocket.close", "code": 1008})
            return
        inbox = _Inbox(self.websocket_queue, 4 * 1024 * 1024, self._drained)
        reply_channel = self._new_reply_channel(inbox)
        session = _WebSocketSession(self, scope, receive, send, reply_channel, inbox)
        self._sessions.add(session)
        try:
            await session.run()
        finally:
            self._sessions.discard(session)
            del self._inboxes[reply_channel]


class _WebSocketSession:
    """One WebSocket connection: the handshake, then events out one at a time and
    replies in (docs/protocol.md, WebSocket)."""

    def __init__(
        self,
        server: InterfaceServer,
        scope: Scope,
        receive: Receive,
        send: Send,
        reply_channel: str,
        inbox: _Inbox,
    ) -> None:
        self.server = server
        self.receive = receive
        self.send = send
        self.inbox = inbox
        # Only a subprotocol the client offered may be accepted (RFC 6455 4.2.2).
        self.subprotocols: list[str] = list(scope.get("subprotocols") or ())
        headers = list(scope["headers"])
        if self.subprotocols and not any(name == b"sec-websocket-protocol" for name, _ in headers):
            # wsproto consumes this header (the offer is in scope["subprotocols"]); the
            # app reads the offer from its environ, so it goes back in the message.
            headers.append((b"sec-websocket-protocol", ", ".join(self.subprotocols).encode()))
        self.base: Message = {
            "reply_channel": reply_channel,
            "path": scope["path"],
            "query_string": scope["query_string"],
            "root_path": scope.get("root_path") or server.root_path,
            "scheme": scope.get("scheme", "ws"),
            "headers": headers,
            "client": scope.get("client"),
            "server": scope.get("server"),
            EXT_KEY: 1,
        }
        # Client events waiting for the previous one's "done": {"text"|"bytes": ...}
        # for a frame, {"code": n} for the disconnect.
        self.events: collections.deque[Message] = collections.deque()
        self.event_bytes = 0
        self.order = 0
        self.in_flight: int | None = None
        self.in_flight_deadline = 0.0
        self.closed = False  # a close frame went out, or the socket is gone
        self.finished = False  # websocket.disconnect was sent on the layer
        self.close_code: int | None = None  # a close asked for from outside the task

    def close_soon(self, code: int) -> None:
        self.close_code = code
        self.inbox.poke()

    async def _socket_send(self, message: MutableMapping[str, Any]) -> None:
        if self.closed:
            return
        if message["type"] == "websocket.close":
            self.closed = True
        try:
            await self.send(message)
        except (OSError, RuntimeError):  # uvicorn's ClientDisconnected is an OSError
            self.closed = True

    async def _close(self, code: int) -> None:
        await self._socket_send({"type": "websocket.close", "code": code})

    async def _send_event(self, kind: str, fields: Message, timeout: float) -> bool:
        deadline = time.time() + timeout
        message = dict(self.base)
        message.update(fields)
        message["order"] = self.order
        message[DEADLINE_KEY] = deadline
        self.server._active += 1
        try:
            await self.server._send_when_room(kind, message, deadline)
        except MessageTooLarge:
            await self._close(1009)
            return False
        except ChannelsError as exc:
            logger.warning("WebSocket event not passed on, closing: %s", exc)
            await self._close(1011)
            return False
        finally:
            self.server._active -= 1
        return True

    async def run(self) -> None:
        server = self.server
        loop = asyncio.get_running_loop()
        if not await self._send_event("websocket.connect", {}, server.websocket_connect_timeout):
            await self._socket_send({"type": "websocket.close"})
            return
        deadline = loop.time() + server.websocket_connect_timeout
        # Frames that arrive before the app decided (a group message sent while the
        # connect event runs, or released by ChannelsMiddleware before the worker's
        # accept) wait here: sent after the accept, dropped on a rejection. Under
        # ASGI 1.0 a frame before accept accepts; that is honoured only when no
        # decision came before the timeout (a worker that does not speak ours).
        early: collections.deque[Message] = collections.deque(maxlen=server.websocket_queue)
        while True:
            reply = await self.inbox.get(deadline)
            if self.close_code is not None or (reply is _Event.TIMEOUT and not early):
                await self._socket_send({"type": "websocket.close"})  # 403
                return
            if reply is _Event.TIMEOUT or (isinstance(reply, dict) and reply.get("accept")):
                accept: Message = {"type": "websocket.accept"}
                subprotocol = reply.get(SUBPROTOCOL_KEY) if isinstance(reply, dict) else None
                if isinstance(subprotocol, str) and subprotocol in self.subprotocols:
                    accept["subprotocol"] = subprotocol
                await self._socket_send(accept)
                self.in_flight = 0
                self.in_flight_deadline = loop.time() + server.http_timeout
                for frame in early:
                    await self._handle_reply(frame)
                if isinstance(reply, dict):
                    await self._handle_reply(reply)
                break
            if not isinstance(reply, dict):
                continue
            if reply.get("close") or reply.get(DONE_KEY) == 0:
                await self._socket_send({"type": "websocket.close"})  # rejected: 403
                return
            if "text" in reply or "bytes" in reply:
                early.append(reply)
        reader = loop.create_task(self._read())
        try:
            await self._write()
        finally:
            reader.cancel()

    async def _read(self) -> None:
        """Move client frames into ``self.events``; the writer sends them on."""
        limit = self.server.websocket_buffer
        while True:
            event = await self.receive()
            kind = event["type"]
            if kind == "websocket.receive":
                text, data = event.get("text"), event.get("bytes")
                fields: Message = {"text": text} if text is not None else {"bytes": data}
                size = len(text if text is not None else data or b"")
                if self.closed:
                    continue
                if len(self.events) >= limit or self.event_bytes + size > 8 * 1024 * 1024:
                    logger.warning(
                        "WebSocket %s: client sends faster than the app reads; closing with 1013",
                        self.base["path"],
                    )
                    await self._close(1013)
                    continue
                self.events.append(fields)
                self.event_bytes += size
                self.inbox.poke()
            elif kind == "websocket.disconnect":
                self.closed = True
                self.events.append({"code": event.get("code", 1005)})
                self.inbox.poke()
                return

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.server.http_timeout
        while True:
            if self.close_code is not None and not self.closed:
                await self._close(self.close_code)
            if self.in_flight is None and self.events:
                fields = self.events.popleft()
                self.order += 1
                if "code" in fields:
                    await self._send_event("websocket.disconnect", fields, timeout)
                    return
                self.event_bytes -= len(fields.get("text") or fields.get("bytes") or b"")
                if await self._send_event("websocket.receive", fields, timeout):
                    self.in_flight = self.order
                    self.in_flight_deadline = loop.time() + timeout
                continue
            deadline = self.in_flight_deadline if self.in_flight is not None else None
            reply = await self.inbox.get(deadline)
            if isinstance(reply, dict):
                await self._handle_reply(reply)
            elif reply is _Event.OVERFLOW:
                logger.warning(
                    "WebSocket %s: client reads too slowly; closing with 1013", self.base["path"]
                )
                await self._close(1013)
            elif reply is _Event.TIMEOUT and self.in_flight is not None:
                logger.warning(
                    "WebSocket %s: event %d not finished in %.0f s; closing with 1011",
                    self.base["path"],
                    self.in_flight,
                    timeout,
                )
                self.in_flight = None
                await self._close(1011)

    async def _handle_reply(self, reply: Message) -> None:
        text = reply.get("text")
        if text is not None:
            await self._socket_send({"type": "websocket.send", "text": text})
        data = reply.get("bytes")
        if data is not None:
            await self._socket_send({"type": "websocket.send", "bytes": data})
        close = reply.get("close")
        if close:
            code = 1000 if close is True else int(close)
            await self._close(code)
        done = reply.get(DONE_KEY)
        if done is not None and done == self.in_flight:
            self.in_flight = None


MAX_HEAD_SIZE = 64 * 1024
"""Largest request head (request line and headers) in bytes; over it the client gets
431. nginx allows 32 KiB by default, gunicorn about 800 KiB for 100 fields."""
MAX_HEADER_COUNT = 256
"""Most header fields in one request; over it the client gets 431."""


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request head over the limits."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP protocol, with a bound on the request head.

    httptools (llhttp) puts no limit on the request line and headers, and uvicorn holds
    them in memory until the head is complete: one client sending an endless header
    grew an interface process by 300 MB. Here a head over :data:`MAX_HEAD_SIZE` bytes
    or :data:`MAX_HEADER_COUNT` fields is answered 431 and the connection closed; an
    unfinished head is refused as soon as the bytes received for it pass the limit
    (give or take one read), without reading the rest.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0  # received while a head was unfinished
        self._field_bytes = 0  # of the URL and the header fields parsed so far
        self._header_count = 0
        self._head_refused = False

    def data_received(self, data: bytes) -> None:
        if self._head_refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEAD_SIZE and not self._head_refused:
            self._refuse_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._field_bytes = self._header_count = 0

    def on_url(self, url: bytes) -> None:
        self._field_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._field_bytes += len(name) + len(value) + 4
        if self._header_count > MAX_HEADER_COUNT or self._field_bytes > MAX_HEAD_SIZE:
            self._head_refused = True
            raise _HeadTooLarge  # httptools wraps it in HttpParserError: see below
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._field_bytes > MAX_HEAD_SIZE:  # a long URL
            self._head_refused = True
            raise _HeadTooLarge
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers a parser error (ours included) with this method.
        if self._head_refused:
            self._refuse_head()
        else:
            super().send_400_response(msg)

    def _refuse_head(self) -> None:
        self._head_refused = True
        logger.warning(
            "request head over %d bytes or %d fields: 431", MAX_HEAD_SIZE, MAX_HEADER_COUNT
        )
        body = b"Request Header Fields Too Large\n"
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()


class GoingAwayWSProtocol(WSProtocol):
    """uvicorn's wsproto WebSocket protocol, closing with 1001 at server shutdown.

    uvicorn closes open WebSockets with 1012 (Service Restart) when it shuts down, and
    an ASGI application hears of the shutdown only after the sockets are closed. Daphne
    closed with 1001 (Going Away), which browsers and our contract expect; this is the
    same close, with that code. The application still gets ``websocket.disconnect``
    and passes it on to the worker.
    """

    def shutdown(self) -> None:
        if self.handshake_complete and not self.close_sent and not self.transport.is_closing():
            self.stop_keepalive()
            self.queue.put_nowait({"type": "websocket.disconnect", "code": 1001})
            self.transport.write(self.conn.send(CloseConnection(code=1001)))
            self.close_sent = True
            self.transport.close()
            return
        super().shutdown()


# -- building from the environment ----------------------------------------------------

ENV_PREFIX = "WSGI_CHANNELS_"


def options_from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """InterfaceServer options from ``WSGI_CHANNELS_*`` variables: ``HTTP_TIMEOUT``,
    ``WEBSOCKET_CONNECT_TIMEOUT``, ``ALLOWED_ORIGINS`` (space or comma separated),
    ``MAX_BODY`` (bytes, or with a K/M/G suffix), ``ROOT_PATH``. Raises
    ConfigurationError naming the variable for a bad value."""
    options: dict[str, Any] = {}
    parsers: dict[str, tuple[str, Callable[[str], Any]]] = {
        "HTTP_TIMEOUT": ("http_timeout", float),
        "WEBSOCKET_CONNECT_TIMEOUT": ("websocket_connect_timeout", float),
        "ALLOWED_ORIGINS": ("allowed_origins", lambda v: v.replace(",", " ").split()),
        "MAX_BODY": ("max_body", parse_size),
        "ROOT_PATH": ("root_path", str),
    }
    for suffix, (option, parse) in parsers.items():
        value = environ.get(ENV_PREFIX + suffix)
        if value is None or value == "":
            continue
        try:
            options[option] = parse(value)
        except ValueError as exc:
            raise ConfigurationError(f"bad {ENV_PREFIX}{suffix}={value!r}: {exc}") from None
    return options


def parse_size(value: str) -> int:
    """``"1048576"``, ``"512K"``, ``"10M"``, ``"1G"`` (powers of 1024) as bytes."""
    text = value.strip().upper().removesuffix("B")
    factor = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
    if factor != 1:
        text = text[:-1]
    number = int(text) * factor
    if number < 0:
        raise ValueError("a size cannot be negative")
    return number


def create_app(environ: Mapping[str, str] | None = None) -> InterfaceServer:
    """An :class:`InterfaceServer` configured by the environment (or *environ*): the
    layer from ``WSGI_CHANNELS_LAYER`` (default ``sqlite:///.wsgi_channels.sqlite3``),
    the options from :func:`options_from_environ`. For ``uvicorn --factory
    wsgi_channels.interface:create_app`` and each ``--workers`` process."""
    env = os.environ if environ is None else environ
    layer = layer_from_url(env.get(LAYER_ENV) or DEFAULT_LAYER_URL)
    return InterfaceServer(layer, **options_from_environ(env))
