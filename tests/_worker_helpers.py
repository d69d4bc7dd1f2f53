"""Helpers for the worker tests: WSGI test apps, a worker running in a thread, and a
client that speaks the interface server's side of the protocol (docs/protocol.md).

Also importable from subprocesses (gunicorn, the RSS test) as ``_worker_helpers:app``
with ``tests/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from wsgi_channels.protocol import DEADLINE_KEY, DONE_KEY, EXT_KEY
from wsgi_channels.worker import Worker

# -- shared state the in-process apps report to -------------------------------------


class Probe:
    """What the test app saw: concurrency, closes, WebSocket events."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.closed: dict[str, float] = {}
        self.events: list[tuple[str, str]] = []
        self.finished: list[str] = []

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


PROBE = Probe()


class ClosingStream:
    """An iterable body that records when close() is called."""

    def __init__(self, name: str, chunks: Iterable[bytes], delay: float = 0.0) -> None:
        self.name = name
        self.chunks = chunks
        self.delay = delay

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            if self.delay:
                time.sleep(self.delay)
            yield chunk

    def close(self) -> None:
        with PROBE.lock:
            PROBE.closed[self.name] = time.monotonic()


def _query(environ: dict[str, Any]) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(environ.get("QUERY_STRING", "")))


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """A WSGI app with one behaviour per path."""
    path = environ["PATH_INFO"]
    query = _query(environ)
    ws = environ.get("wsgi_channels.websocket")
    if ws is not None:
        return _ws_app(environ, start_response, ws)
    if path == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"hello"]
    if path == "/pid":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
    if path == "/gc-frozen":  # how many objects the collector leaves alone
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(gc.get_freeze_count()).encode()]
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [body]
    if path == "/lines":
        lines = list(environ["wsgi.input"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(len(lines)).encode(), b" ", str(sum(map(len, lines))).encode()]
    if path == "/slow":
        with PROBE.lock:
            PROBE.running += 1
            PROBE.max_running = max(PROBE.max_running, PROBE.running)
        try:
            time.sleep(float(query.get("t", "0.3")))
        finally:
            with PROBE.lock:
                PROBE.running -= 1
                PROBE.finished.append(query.get("id", ""))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slept"]
    if path == "/stream":
        # n chunks of size bytes each, every delay seconds, closing reported as name
        n = int(query.get("n", "10"))
        size = int(query.get("size", "10"))
        delay = float(query.get("delay", "0"))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        chunk = b"x" * size
        return ClosingStream(query.get("name", "stream"), (chunk for _ in range(n)), delay)
    if path == "/boom":
        raise RuntimeError("secret detail that must not reach the client")
    if path == "/badheader":
        start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: pwned=1")])
        return [b"never"]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]


def _ws_app(environ: dict[str, Any], start_response: Any, event: str) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if event == "receive":
        data = environ["wsgi.input"].read()
        with PROBE.lock:
            PROBE.events.append((event, data.decode("utf-8", "replace")))
        if path == "/ws/slowecho":
            time.sleep(0.001 * (secrets.randbelow(5)))
        start_response("200 OK", [("Content-Type", environ["CONTENT_TYPE"])])
        return [data]
    with PROBE.lock:
        PROBE.events.append((event, path))
    if path == "/ws/reject":
        start_response("403 Forbidden", [])
        return []
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"welcome" if event == "connect" else b""]


# -- the worker in a thread -----------------------------------------------------------


@contextlib.contextmanager
def running_worker(wsgi_app: Any, layer: Any, **options: Any) -> Iterator[Worker]:
    """A real Worker serving in a background thread; stopped and joined on exit."""
    worker = Worker(wsgi_app, layer, **options)
    thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=worker.graceful_timeout + 10)
        assert not thread.is_alive(), "the worker did not stop"


# -- the interface side ---------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: list[list[bytes]]
    body: bytes
    messages: list[dict[str, Any]] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def headers_all(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


def reply_prefix() -> str:
    return f"test.reply.{secrets.token_hex(8)}!"


def http_message(
    layer: Any,
    method: str = "GET",
    path: str = "/",
    *,
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: bytes = b"",
    query_string: bytes = b"",
    ext: bool = True,
    prefix: str | None = None,
    timeout: float = 10.0,
    **extra: Any,
) -> dict[str, Any]:
    """An ``http.request`` message as our interface server makes it."""
    message: dict[str, Any] = {
        "reply_channel": layer.new_channel(prefix or reply_prefix()),
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "query_string": query_string,
        "root_path": "",
        "headers": [[b"host", b"testserver"], *([k, v] for k, v in headers)],
        "body": body,
        "body_channel": None,
        "client": ["127.0.0.1", 50000],
        "server": ["testserver", 80],
    }
    if ext:
        message[EXT_KEY] = 1
        message[DEADLINE_KEY] = time.time() + timeout
    message.update(extra)
    return message


def prefix_of(channel: str) -> str:
    return channel[: channel.index("!") + 1]


def read_reply(layer: Any, reply_channel: str, timeout: float = 10.0) -> Reply:
    """Collect a whole HTTP reply from *reply_channel*."""
    prefix = prefix_of(reply_channel)
    deadline = time.monotonic() + timeout
    messages: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        channel, message = layer.receive([prefix], block=True)
        if channel is None:
            continue
        assert channel == reply_channel
        messages.append(message)
        if not message.get("more_content", False):
            first = messages[0]
            body = b"".join(m.get("content", b"") for m in messages)
            return Reply(first["status"], first["headers"], body, messages)
    raise TimeoutError(f"no complete reply after {timeout} s: {messages[:3]!r}")


def request(layer: Any, method: str = "GET", path: str = "/", **kwargs: Any) -> Reply:
    timeout = kwargs.pop("reply_timeout", 10.0)
    message = http_message(layer, method, path, **kwargs)
    layer.send("http.request", message)
    return read_reply(layer, message["reply_channel"], timeout)


def ws_message(
    reply_channel: str,
    order: int,
    path: str = "/ws",
    *,
    ext: bool = True,
    headers: Iterable[tuple[bytes, bytes]] = (),
    **extra: Any,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "reply_channel": reply_channel,
        "path": path,
        "order": order,
        "scheme": "ws",
        "query_string": b"",
        "root_path": "",
        "headers": [[b"host", b"testserver"], *([k, v] for k, v in headers)],
        "client": ["127.0.0.1", 50001],
        "server": ["testserver", 80],
    }
    if ext:
        message[EXT_KEY] = 1
        message[DEADLINE_KEY] = time.time() + 10
    message.update(extra)
    return message


def ws_event(
    layer: Any, event: str, message: dict[str, Any], timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Send one WebSocket event and read replies up to the ``wsgi_channels.done``
    one, as our interface server does (one event at a time per connection)."""
    layer.send("websocket." + event, message)
    prefix = prefix_of(message["reply_channel"])
    deadline = time.monotonic() + timeout
    replies: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        channel, reply = layer.receive([prefix], block=True)
        if channel is None:
            continue
        replies.append(reply)
        if DONE_KEY in reply:
            assert reply[DONE_KEY] == message["order"]
            return replies
    raise TimeoutError(f"no {DONE_KEY} for order {message['order']}: {replies!r}")


def env_with_pythonpath(**extra: str) -> dict[str, str]:
    """The environment for a subprocess that imports wsgi_channels and the test apps."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, root, env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env
