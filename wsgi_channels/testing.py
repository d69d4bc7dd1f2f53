"""Test your WSGI app's HTTP and WebSocket handling through a real worker.

Everything here runs a real :class:`~wsgi_channels.Worker` on a memory layer, in a
background thread, and talks to it with the messages our interface server sends
(docs/protocol.md): what passes here passes in production, short of the sockets.

::

    from wsgi_channels.testing import WorkerTestApp

    def test_publish_reaches_the_socket():
        with WorkerTestApp(app) as client:             # a webtest.TestApp
            with client.websocket("/ws/liveblog") as ws:
                client.post("/posts", {"body": "Hello"})
                assert ws.receive_json()["body"] == "Hello"

:class:`WorkerHarness` is the worker and its layer; it is itself a WSGI app that forwards
each request through the worker, so any WSGI test client can drive it.
:class:`WorkerTestApp` is ``webtest.TestApp`` over a harness. :class:`WebSocketTestClient`
plays one WebSocket connection, one event at a time, and receives what the app, other
code or a group sends to it.

By default the harness makes its layer the process's default layer
(:func:`~wsgi_channels.layers.set_default_layer`) while it runs, so that
``Group(...).send()`` in code outside a request reaches the test's sockets; it forgets
it on close.
"""

from __future__ import annotations

import collections
import http
import json
import secrets
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from . import protocol
from .layers import set_default_layer
from .layers.base import ChannelFull, InvalidMessage, Message
from .layers.memory import MemoryChannelLayer
from .protocol import (
    BODY_CHANNEL_PATTERN,
    BODY_CHUNK_SIZE,
    CONTROL_KEY,
    DONE_KEY,
    INLINE_BODY_LIMIT,
)

try:
    with warnings.catch_warnings():
        # WebOb, under WebTest, imports the cgi module, deprecated since Python 3.11;
        # keep that from failing test suites that turn warnings into errors.
        warnings.filterwarnings("ignore", "'cgi' is deprecated", DeprecationWarning)
        import webtest
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "wsgi_channels.testing needs WebTest: pip install 'wsgi-channels[testing]'"
    ) from exc

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .sender import ChannelLayer

__all__ = [
    "WebSocketClosed",
    "WebSocketRejected",
    "WebSocketTestClient",
    "WorkerHarness",
    "WorkerTestApp",
]

TEST_PREFIX = "wsgi_channels.testing."
DEFAULT_HOST = "localhost:80"


class WebSocketRejected(AssertionError):
    """The app did not accept the WebSocket handshake (a non-2xx answer to
    ``connect``); a browser would have seen HTTP 403."""


class WebSocketClosed(AssertionError):
    """The connection is closed; ``code`` is the close code (1000 for a normal close)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the WebSocket is closed (code {code})")
        self.code = code


class WorkerHarness:
    """A real :class:`~wsgi_channels.Worker` running *app* on *layer* (a new memory
    layer by default) in a daemon thread.

    Started by :meth:`start` or on first use, stopped by :meth:`close` or at the end of
    a ``with`` block; a layer the harness made is closed with it. *timeout* bounds
    every wait for the worker (seconds). Calling the harness as a WSGI app sends the
    request through the worker as our interface server would (``http.request`` with
    the body inline up to 256 KiB, the rest on a body channel) and returns the
    worker's reply, streamed; a reply that does not start within *timeout* raises
    TimeoutError.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        layer: ChannelLayer | None = None,
        threads: int = 4,
        timeout: float = 10.0,
        default_layer: bool = True,
    ) -> None:
        self.app = app
        self._owns_layer = layer is None
        # A short blocking receive keeps timeouts precise and stopping quick.
        self.layer: Any = MemoryChannelLayer(receive_timeout=0.05) if layer is None else layer
        self.threads = threads
        self.timeout = timeout
        self.default_layer = default_layer
        self._worker: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> WorkerHarness:
        """Start the worker thread (once); return the harness."""
        from .worker import Worker

        with self._lock:
            if self._closed:
                raise RuntimeError("this WorkerHarness is closed")
            if self._thread is not None:
                return self
            if self.default_layer:
                set_default_layer(self.layer)
            self._worker = Worker(self.app, self.layer, threads=self.threads)
            self._thread = threading.Thread(
                target=self._worker.run, name="wsgi_channels.testing worker", daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the worker (it finishes what it is running) and wait for its thread;
        RuntimeError if it does not stop within *timeout*."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread, worker = self._thread, self._worker
        try:
            if thread is not None:
                worker.stop()
                thread.join(self.timeout)
                if thread.is_alive():
                    raise RuntimeError(f"the worker did not stop within {self.timeout} s")
        finally:
            if self.default_layer and thread is not None:
                set_default_layer(None)
            if self._owns_layer:
                self.layer.close()

    def __enter__(self) -> WorkerHarness:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing shared with WebSocketTestClient ----------------------------------

    def new_reply_channel(self) -> tuple[str, str]:
        """A fresh ``(prefix, reply_channel)``: the reply channel is process-local under
        a prefix of its own, so one blocking receive on the prefix sees exactly what
        is sent to this channel, group messages included."""
        prefix = f"{TEST_PREFIX}{secrets.token_hex(8)}!"
        return prefix, self.layer.new_channel(prefix)

    def send(self, channel: str, message: Message, deadline: float) -> None:
        """Send, retrying while the channel is full until *deadline* (Unix time)."""
        while True:
            try:
                self.layer.send(channel, message)
                return
            except ChannelFull:
                if time.time() >= deadline:
                    raise
                time.sleep(0.01)

    def receive(self, prefix: str, deadline: float) -> Message | None:
        """The next message for *prefix*, or None once *deadline* (Unix time) passed."""
        while True:
            channel, message = self.layer.receive([prefix], block=True)
            if channel is not None:
                received: Message = message
                return received
            if time.time() >= deadline:
                return None

    # -- HTTP -----------------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        self.start()
        prefix, reply_channel = self.new_reply_channel()
        deadline = time.time() + self.timeout
        body = _read_body(environ)
        body_channel = None
        if len(body) > INLINE_BODY_LIMIT:
            body_channel = self.layer.new_channel(BODY_CHANNEL_PATTERN)
        message = http_request_message(
            environ, reply_channel, body[:INLINE_BODY_LIMIT], body_channel, deadline
        )
        self.send("http.request", message, deadline)
        if body_channel is not None:
            rest = body[INLINE_BODY_LIMIT:]
            for start in range(0, len(rest), BODY_CHUNK_SIZE):
                more = start + BODY_CHUNK_SIZE < len(rest)
                chunk = protocol.body_chunk(rest[start : start + BODY_CHUNK_SIZE], more=more)
                self.send(body_channel, chunk, deadline)

        first = self.receive(prefix, deadline)
        if first is None:
            raise TimeoutError(
                f"the worker did not answer {environ.get('REQUEST_METHOD')} "
                f"{environ.get('PATH_INFO')} within {self.timeout} s"
            )
        status = int(first["status"])
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        headers = [
            (bytes(name).decode("latin-1"), bytes(value).decode("latin-1"))
            for name, value in first.get("headers", [])
        ]
        start_response(f"{status} {phrase}", headers)
        return _ReplyBody(self, prefix, first)


class _ReplyBody:
    """The body of an HTTP reply, read from the layer as it is iterated. Closing it
    before the end tells the worker the client went away, as our interface does."""

    def __init__(self, harness: WorkerHarness, prefix: str, first: Message) -> None:
        self.harness = harness
        self.prefix = prefix
        self.first = first
        self.finished = not first.get("more_content", False)

    def __iter__(self) -> Iterator[bytes]:
        content = self.first.get("content", b"")
        if content:
            yield content
        while not self.finished:
            chunk = self.harness.receive(self.prefix, time.time() + self.harness.timeout)
            if chunk is None:
                raise TimeoutError(f"the worker stopped streaming for {self.harness.timeout} s")
            self.finished = not chunk.get("more_content", False)
            if chunk.get("content"):
                yield chunk["content"]

    def close(self) -> None:
        control = self.first.get(CONTROL_KEY)
        if not self.finished and control:
            self.finished = True
            self.harness.send(
                control,
                protocol.disconnect_notice(str(self.first.get("reply_channel"))),
                time.time() + self.harness.timeout,
            )


def _read_body(environ: WSGIEnvironment) -> bytes:
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    try:
        length = protocol.parse_content_length(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        data: bytes = stream.read()
    else:
        data = stream.read(length)
    return data


def _wsgi_to_str(value: str) -> str:
    """A PEP 3333 "bytes as latin-1" string back to the text it encodes (UTF-8)."""
    return value.encode("latin-1").decode("utf-8", "replace")


def environ_headers(environ: Mapping[str, Any]) -> list[list[bytes]]:
    """The request headers of a WSGI environ as ASGI ``[name, value]`` byte pairs."""
    headers: list[list[bytes]] = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").lower()
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            name = key.replace("_", "-").lower()
        else:
            continue
        headers.append([name.encode("latin-1"), str(value).encode("latin-1")])
    return headers


def http_request_message(
    environ: Mapping[str, Any],
    reply_channel: str,
    body: bytes = b"",
    body_channel: str | None = None,
    deadline: float | None = None,
) -> Message:
    """The ``http.request`` message our interface server would send for the request
    described by a WSGI *environ* (as webtest or werkzeug's test client build them),
    built by the same function as the interface's."""
    remote = environ.get("REMOTE_ADDR")
    server_port = str(environ.get("SERVER_PORT") or "80")
    return protocol.http_request_message(
        reply_channel=reply_channel,
        http_version=str(environ.get("SERVER_PROTOCOL", "HTTP/1.1")).removeprefix("HTTP/"),
        method=str(environ.get("REQUEST_METHOD", "GET")).upper(),
        scheme=environ.get("wsgi.url_scheme", "http"),
        path=_wsgi_to_str(environ.get("PATH_INFO", "") or "/"),
        query_string=str(environ.get("QUERY_STRING", "")).encode("latin-1"),
        root_path=_wsgi_to_str(environ.get("SCRIPT_NAME", "")),
        headers=environ_headers(environ),
        body=body,
        body_channel=body_channel,
        client=[remote, int(environ.get("REMOTE_PORT") or 0)] if remote else None,
        server=[environ.get("SERVER_NAME", "localhost"), int(server_port)],
        deadline=time.time() + 60.0 if deadline is None else deadline,
    )


class WorkerTestApp(webtest.TestApp):  # type: ignore[misc]
    """``webtest.TestApp`` whose requests go through a real worker (a
    :class:`WorkerHarness` on a memory layer), plus :meth:`websocket` for WebSocket
    connections that carry this client's cookies. Close it (or use ``with``) to stop
    the worker. Options other than those of the harness go to ``TestApp``."""

    def __init__(
        self,
        app: WSGIApplication,
        *,
        layer: ChannelLayer | None = None,
        threads: int = 4,
        timeout: float = 10.0,
        default_layer: bool = True,
        **testapp_options: Any,
    ) -> None:
        self.harness = WorkerHarness(
            app, layer=layer, threads=threads, timeout=timeout, default_layer=default_layer
        )
        super().__init__(self.harness, **testapp_options)

    @property
    def layer(self) -> Any:
        """The harness's channel layer."""
        return self.harness.layer

    def websocket(
        self,
        path: str = "/",
        *,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        subprotocols: Iterable[str] = (),
    ) -> WebSocketTestClient:
        """A :class:`WebSocketTestClient` on this app, with this client's cookies and
        ``Host``; connect it with ``connect()`` or a ``with`` block."""
        host = str(self.extra_environ.get("HTTP_HOST", DEFAULT_HOST))
        return WebSocketTestClient(
            self.harness,
            path,
            headers=headers,
            cookies=dict(self.cookies),
            subprotocols=subprotocols,
            host=host,
        )

    def close(self) -> None:
        """Stop the worker."""
        self.harness.close()

    def __enter__(self) -> WorkerTestApp:
        self.harness.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class WebSocketTestClient:
    """One WebSocket connection to a WSGI app, played the way our interface server
    plays it: ``websocket.connect`` (order 0), then ``websocket.receive`` events, then
    ``websocket.disconnect``, each sent only after the worker reported the previous
    one done (docs/protocol.md). Each ``send_*`` and :meth:`close` returns once the app
    has handled that event, so its effects are visible to the next line of the test.

    *target* is a WSGI app (the client then runs its own :class:`WorkerHarness` and
    stops it on close) or a harness (or a :class:`WorkerTestApp`) to share. *path* may
    carry a query string. *headers*, *cookies* and *subprotocols* go into the handshake
    headers that every event carries, so the app sees the same cookies and session as
    on a normal request.

    The connection has a reply channel of its own (``reply_channel``), process-local
    under its own ``!`` prefix: frames the app sends in answer to an event, sends to
    that channel from anywhere, and group messages all arrive in the same buffer,
    read with the ``receive_*`` methods (which raise TimeoutError when nothing comes in
    time, and :class:`WebSocketClosed` once the server closed the socket and every
    frame before the close was read).
    """

    def __init__(
        self,
        target: WSGIApplication | WorkerHarness | WorkerTestApp,
        path: str = "/",
        *,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        cookies: Mapping[str, str] | None = None,
        subprotocols: Iterable[str] = (),
        host: str = DEFAULT_HOST,
        scheme: str = "ws",
        timeout: float | None = None,
    ) -> None:
        if isinstance(target, WorkerTestApp):
            target = target.harness
        if isinstance(target, WorkerHarness):
            self.harness = target
            self._owns_harness = False
        else:
            self.harness = WorkerHarness(target)
            self._owns_harness = True
        self.timeout = self.harness.timeout if timeout is None else timeout
        self.path, _, query = path.partition("?")
        self.query_string = query.encode("latin-1")
        self.scheme = scheme
        handshake: list[list[bytes]] = [
            [b"host", host.encode("latin-1")],
            [b"connection", b"Upgrade"],
            [b"upgrade", b"websocket"],
            [b"sec-websocket-version", b"13"],
            [b"sec-websocket-key", secrets.token_urlsafe(16).encode("ascii")],
        ]
        protocols = ", ".join(subprotocols)
        if protocols:
            handshake.append([b"sec-websocket-protocol", protocols.encode("latin-1")])
        if cookies:
            cookie = "; ".join(f"{name}={value}" for name, value in cookies.items())
            handshake.append([b"cookie", cookie.encode("latin-1")])
        items = headers.items() if isinstance(headers, Mapping) else (headers or ())
        for name, value in items:
            handshake.append([name.lower().encode("latin-1"), value.encode("latin-1")])
        self.headers = handshake
        self.host = host
        self.prefix = ""
        self.reply_channel = ""
        self.accepted = False
        self.close_code: int | None = None
        self.frames: collections.deque[str | bytes] = collections.deque()
        self._order = -1
        self._done = -1
        self._disconnected = False

    # -- the events -------------------------------------------------------------------

    def connect(self) -> WebSocketTestClient:
        """Send ``websocket.connect`` and wait until the app has answered it.

        Returns the client once accepted; raises :class:`WebSocketRejected` if the app
        answered with anything but 2xx. A non-empty body of the answer is the first
        frame, waiting in the buffer.
        """
        if self._order >= 0:
            raise RuntimeError("connect() was already called")
        self.harness.start()
        self.prefix, self.reply_channel = self.harness.new_reply_channel()
        self._event("websocket.connect", {})
        if not self.accepted:
            self._disconnected = True  # nothing to tell the app: it never opened
            self._release()
            raise WebSocketRejected(f"the app rejected the WebSocket connection to {self.path}")
        return self

    def send_text(self, text: str) -> None:
        """Send a text frame; return once the app has handled it."""
        self._send_frame({"text": text})

    def send_bytes(self, data: bytes) -> None:
        """Send a binary frame; return once the app has handled it."""
        self._send_frame({"bytes": data})

    def send_json(self, value: Any) -> None:
        """Send *value* as JSON in a text frame."""
        self.send_text(json.dumps(value))

    def close(self, code: int = 1000) -> None:
        """Close the connection from the client side: the app gets ``disconnect`` with
        *code* (or, if the server closed first, with the server's code). Idempotent;
        stops the harness if this client made it."""
        try:
            if self.accepted and not self._disconnected:
                self._disconnected = True
                sent_code = code if self.close_code is None else self.close_code
                self._event("websocket.disconnect", {"code": sent_code})
                if self.close_code is None:
                    self.close_code = code
        finally:
            self._release()

    def __enter__(self) -> WebSocketTestClient:
        return self.connect()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- what the app sends -----------------------------------------------------------

    def receive(self, timeout: float = 1.0) -> str | bytes:
        """The next frame, text or bytes; TimeoutError if none comes within *timeout*
        seconds, WebSocketClosed if the server closed the socket."""
        deadline = time.time() + timeout
        while not self.frames:
            if self.close_code is not None:
                raise WebSocketClosed(self.close_code)
            remaining = deadline - time.time()
            if remaining <= 0:
                raise TimeoutError(f"no frame on the WebSocket within {timeout} s")
            self._pump(remaining)
        return self.frames.popleft()

    def receive_text(self, timeout: float = 1.0) -> str:
        """The next frame, which must be text."""
        frame = self.receive(timeout)
        if not isinstance(frame, str):
            raise AssertionError(f"expected a text frame, got bytes {frame!r}")
        return frame

    def receive_bytes(self, timeout: float = 1.0) -> bytes:
        """The next frame, which must be binary."""
        frame = self.receive(timeout)
        if not isinstance(frame, bytes):
            raise AssertionError(f"expected a binary frame, got text {frame!r}")
        return frame

    def receive_json(self, timeout: float = 1.0) -> Any:
        """The next frame, text holding JSON, decoded."""
        return json.loads(self.receive_text(timeout))

    def receive_nothing(self, timeout: float = 0.1) -> bool:
        """True if no frame arrives within *timeout* seconds (frames that do arrive
        stay in the buffer)."""
        if self.frames:
            return False
        self._pump(timeout)
        return not self.frames

    # -- internals --------------------------------------------------------------------

    def _send_frame(self, frame: Message) -> None:
        if not self.accepted:
            raise RuntimeError("the WebSocket is not connected; call connect() first")
        if self.close_code is not None or self._disconnected:
            raise WebSocketClosed(self.close_code if self.close_code is not None else 1000)
        self._event("websocket.receive", frame)

    def _event(self, kind: str, keys: Message) -> None:
        """Send the next event and wait until the worker reports it done."""
        self._order += 1
        order = self._order
        deadline = time.time() + self.timeout
        name, port = protocol.split_host_port(self.host)
        base = protocol.websocket_base(
            reply_channel=self.reply_channel,
            path=self.path,
            query_string=self.query_string,
            root_path="",
            scheme=self.scheme,
            headers=self.headers,
            client=["127.0.0.1", 50000],
            server=[name, port if port is not None and port >= 0 else 80],
        )
        message = protocol.websocket_event(base, order, deadline, keys)
        self.harness.send(kind, message, deadline)
        while self._done < order:
            if time.time() >= deadline:
                raise TimeoutError(
                    f"the worker did not finish {kind} (order {order}) within {self.timeout} s"
                )
            self._pump(deadline - time.time())

    def _pump(self, timeout: float) -> bool:
        """Read one message for this connection, waiting at most *timeout* seconds;
        False if none came."""
        if not self.prefix:
            return False
        message = self.harness.receive(self.prefix, time.time() + timeout)
        if message is None:
            return False
        reason = protocol.check_websocket_reply(message)
        if reason is not None:
            # The interface server would drop this message (and log it): a test must
            # not pass on what production never delivers.
            raise InvalidMessage(
                f"the app sent a WebSocket reply the interface server would drop: {reason}"
            )
        if message.get("accept"):
            self.accepted = True
        if self.close_code is None:  # a closed socket drops what comes after the close
            if message.get("text") is not None:
                self.frames.append(message["text"])
            elif message.get("bytes") is not None:
                self.frames.append(message["bytes"])
        close = message.get("close")
        if close is not None and close is not False and self.close_code is None:
            self.close_code = 1000 if close is True else int(close)
        if DONE_KEY in message:
            self._done = max(self._done, int(message[DONE_KEY]))
        return True

    def _release(self) -> None:
        if self._owns_harness:
            self.harness.close()
