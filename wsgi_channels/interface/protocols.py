"""The uvicorn protocol classes of the interface server, in one place.

uvicorn parses HTTP (httptools) and WebSocket (wsproto); these subclasses add what a
bridge exposed to the Internet needs and uvicorn leaves out: a bound on request heads,
a bound on pipelined requests, a close with 1001 at shutdown, a bound on unsent pongs,
and a way to write one prepared WebSocket frame to many sockets (fan-out).
"""

from __future__ import annotations

import functools
import logging
import os
from asyncio import TimerHandle
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol
from wsproto.events import CloseConnection, Ping

from .config import InterfaceConfig

__all__ = [
    "FRAMES_EXTENSION",
    "MAX_HEADER_COUNT",
    "MAX_HEAD_SIZE",
    "MAX_PIPELINE",
    "PONG_BACKLOG",
    "SHUTDOWN_KEY",
    "BoundedHttpToolsProtocol",
    "GoingAwayWSProtocol",
    "data_frame",
    "prepare_frame",
]

logger = logging.getLogger("wsgi_channels.interface")

#: Scope key: a callable the HTTP protocol calls when the server shuts down while the
#: request still waits for its response (the application answers 503 at once).
SHUTDOWN_KEY = "wsgi_channels.shutdown"
#: Scope extension of a WebSocket: the protocol object, for writing prepared frames.
FRAMES_EXTENSION = "wsgi_channels.frames"
#: Requests one connection may have parsed and waiting behind the one being answered;
#: past it the connection stops being read until the queue shrinks (the default of
#: ``WSGI_CHANNELS_MAX_PIPELINE``).
MAX_PIPELINE: int = InterfaceConfig.max_pipeline
#: Bytes waiting in a WebSocket's socket over which pings are no longer answered: a
#: client that pings and never reads cannot pile up pongs (the default of
#: ``WSGI_CHANNELS_PONG_BACKLOG``).
PONG_BACKLOG: int = InterfaceConfig.pong_backlog


def data_frame(data: str | bytes) -> bytes:
    """The frame of one reply's ``text`` (a text frame) or ``bytes`` (a binary one), as
    :func:`prepare_frame` makes it."""
    if isinstance(data, str):
        return prepare_frame(data.encode("utf-8", "surrogatepass"), text=True)
    return prepare_frame(data, text=False)


def prepare_frame(payload: bytes, *, text: bool) -> bytes:
    """One unmasked, final WebSocket frame (RFC 6455 5.2) as a server sends it: the
    bytes are the same for every connection without compression, so a group message
    is encoded once for all of its local members."""
    opcode = 0x81 if text else 0x82
    length = len(payload)
    if length < 126:
        head = bytes((opcode, length))
    elif length < 65536:
        head = bytes((opcode, 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((opcode, 127)) + length.to_bytes(8, "big")
    return head + payload


#: Bytes handed to the HTTP parser at a time (see BoundedHttpToolsProtocol).
_FEED_SLICE = 16 * 1024

MAX_HEAD_SIZE = 64 * 1024
"""Largest request head (request line and headers) in bytes; over it the client gets
431. nginx allows 32 KiB by default, gunicorn about 800 KiB for 100 fields."""
MAX_HEADER_COUNT = 256
"""Most header fields in one request; over it the client gets 431."""


@functools.cache
def connection_limits() -> InterfaceConfig:
    """The timeouts of this process, from ``WSGI_CHANNELS_*`` variables: uvicorn builds
    the protocol objects, not us, so they read the environment once."""
    return InterfaceConfig.from_environ(os.environ)


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request head over the limits."""


#: Largest body whose bytes are copied to leave with the response head in one send.
_JOIN_LIMIT = 16 * 1024


class _HeadWithBody:
    """The connection's transport as one response cycle sees it: the response head is
    held until the body's first write, and the two leave in one send.

    uvicorn writes the head and the body of a response separately, so a response that
    a worker sends whole (the usual one) went out in two sends, two TCP segments on a
    TCP_NODELAY socket, and woke the client twice. A head with no body write in the
    same event-loop turn (a streaming response whose first chunk is not there yet)
    is written at the end of that turn, so it never waits for a chunk."""

    __slots__ = ("_head", "_loop", "_transport")

    def __init__(self, transport: Any, loop: Any) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = b""  # b"": nothing written yet; None: passing through

    def write(self, data: bytes) -> None:
        head = self._head
        if head is None:
            self._transport.write(data)
        elif not head:
            if data:  # the first write is the head: held until the end of this turn
                self._head = data
                self._loop.call_soon(self.flush)
        else:
            self._head = None
            if len(data) <= _JOIN_LIMIT:
                self._transport.write(head + data)
            else:
                self._transport.write(head)
                self._transport.write(data)

    def flush(self) -> None:
        head, self._head = self._head, None
        if head and not self._transport.is_closing():
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP protocol, with bounds on the request head.

    httptools (llhttp) puts no limit on the request line and headers, and uvicorn holds
    them in memory until the head is complete: one client sending an endless header
    grew an interface process by 300 MB. Here a head over :data:`MAX_HEAD_SIZE` bytes
    or :data:`MAX_HEADER_COUNT` fields is answered 431 and the connection closed; an
    unfinished head is refused as soon as the bytes received for it pass the limit
    (give or take one read), without reading the rest.

    Time is bounded too. uvicorn arms its keep-alive timer only after a response, so a
    connection that never sends a byte, or sends a header a byte a second, was held
    for ever. Here the keep-alive timeout also runs from the moment the connection is
    made, and a request head must be complete within ``header_timeout`` seconds of
    its first byte (then 408 and the connection is closed).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = connection_limits()
        self.timeout_keep_alive = limits.keep_alive_timeout  # type: ignore[assignment]
        self._keep_alive = limits.keep_alive_timeout
        self._header_timeout = limits.header_timeout
        self._max_pipeline = limits.max_pipeline
        self._head_timer: TimerHandle | None = None
        self._held = bytearray()  # received, not parsed: the pipeline was full
        self._running: Any = None  # the cycle whose request is being answered
        self._in_head = True
        self._head_bytes = 0  # received while a head was unfinished
        self._field_bytes = 0  # of the URL and the header fields parsed so far
        self._header_count = 0
        self._head_refused = False
        self._bad_host = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self._keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._unset_keepalive_if_required()
        self._held.clear()
        # uvicorn tells only the request parsed last that the client has gone; when
        # requests were pipelined, the one being answered is another, and its next
        # write to the closed transport raised "Exception in ASGI application".
        running = self._running
        if running is not None and running is not self.cycle and not running.response_complete:
            running.disconnected = True
            running.message_event.set()
        self.pipeline.clear()  # never to be started: the connection is gone
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        self._running = cycle
        cycle.transport = _HeadWithBody(self.transport, self.loop)
        super()._start_asgi_task(cycle, app)

    def data_received(self, data: bytes) -> None:
        # Parsed a slice at a time: one read of small pipelined requests is thousands
        # of them (each a few KB once parsed); past MAX_PIPELINE the rest waits here
        # as bytes, and reading pauses.
        if self._held:
            self._held += data
            self.flow.pause_reading()
            return
        for start in range(0, len(data), _FEED_SLICE):
            if len(self.pipeline) >= self._max_pipeline:
                self._held += data[start:]
                self.flow.pause_reading()
                return
            self._parse(data[start : start + _FEED_SLICE])
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return

    def _parse(self, data: bytes) -> None:
        if self._head_refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self._header_timeout, self._head_late)
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
        hosts = sum(1 for name, _value in self.headers if name == b"host")
        if hosts > 1 or (hosts == 0 and self.parser.get_http_version() == "1.1"):
            # RFC 9112 3.2: a server must answer 400 to an HTTP/1.1 request without
            # a Host header, and to any request with more than one.
            self._bad_host = True
            raise _HeadTooLarge
        self._in_head = False
        self._head_bytes = 0
        self._stop_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True

    def on_response_complete(self) -> None:
        # uvicorn resumes reading after every response, however many pipelined
        # requests are queued: one client pipelining for 10 s held a gigabyte. Past
        # the bound, reading stays paused until the queue is answered, so what one
        # connection holds is at most the bound plus one read's worth of requests.
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self._held and len(self.pipeline) < self._max_pipeline:
            held = bytes(self._held)
            self._held.clear()
            self.data_received(held)
        if len(self.pipeline) >= self._max_pipeline or self._held:
            self.flow.pause_reading()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport.is_closing() or not self._in_head:
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The next head is late while a response is still being written: finish
            # that response, read nothing more, and close.
            cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self._head_refused = True  # ignore whatever else arrives
        logger.info("request head not complete within %.0f s: 408", self._header_timeout)
        body = b"Request Timeout: the request head took too long\n"
        transport.write(
            b"HTTP/1.1 408 Request Timeout\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        transport.close()

    def shutdown(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            abort: Any = cycle.scope.get(SHUTDOWN_KEY)
            if abort is not None:
                abort()
        super().shutdown()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers a parser error (ours included) with this method.
        if self._bad_host:
            self._bad_host = False
            super().send_400_response("Bad Request: exactly one Host header is required")
            return
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

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        extensions: Any = self.scope["extensions"]
        extensions[FRAMES_EXTENSION] = self

    def handle_ping(self, event: Ping) -> None:
        if self.transport.get_write_buffer_size() > connection_limits().pong_backlog:
            return  # the client does not read: answering would only grow the buffer
        super().handle_ping(event)

    #: Whether permessage-deflate was negotiated, once the handshake is done.
    _compressed: bool | None = None

    @property
    def compressed(self) -> bool:
        """Whether permessage-deflate was negotiated (then data frames are wsproto's
        own, compressed, rather than the prepared bytes). Where it cannot tell (a
        wsproto whose insides differ), it says yes: wsproto then encodes each frame."""
        if self._compressed is not None:
            return self._compressed
        if not self.config.ws_per_message_deflate:
            self._compressed = False  # we offer no extension (our default)
            return False
        connection = self.conn.connection
        if connection is None:  # not accepted yet
            return True
        extensions = getattr(getattr(connection, "_proto", None), "extensions", None)
        self._compressed = extensions is None or any(ext.enabled() for ext in extensions)
        return self._compressed

    def takes_data_frame(self) -> bool:
        """Whether a data frame written now with :meth:`write_frame` is what uvicorn's
        ``send`` would write: the handshake done, no close sent, the client there, the
        transport not paused (uvicorn's ``send`` would wait) and no compression."""
        return (
            self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and self.writable.is_set()
            and not self.transport.is_closing()
            and not self.compressed
        )

    def write_frame(self, frame: bytes) -> int:
        """Write a frame made by :func:`prepare_frame` unless the socket is closing;
        returns the bytes then waiting in the socket's buffer."""
        transport = self.transport
        if self.close_sent or transport.is_closing():
            return 0
        transport.write(frame)
        return int(transport.get_write_buffer_size())

    def shutdown(self) -> None:
        if self.handshake_complete and not self.close_sent and not self.transport.is_closing():
            self.stop_keepalive()
            # uvicorn types its queue with event TypedDicts of its private _types.
            disconnect: Any = {"type": "websocket.disconnect", "code": 1001}
            self.queue.put_nowait(disconnect)
            self.transport.write(self.conn.send(CloseConnection(code=1001)))
            self.close_sent = True
            self.transport.close()
            return
        super().shutdown()
