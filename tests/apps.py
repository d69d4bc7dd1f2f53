"""WSGI apps for end-to-end tests, run by real ``wsgi-channels worker`` processes.

Import them as ``apps:NAME`` (the helpers in servers.py put this directory on the
worker's ``PYTHONPATH``). Each is plain PEP 3333, nothing channel-specific except
where a WebSocket event asks for it (``environ["wsgi_channels.websocket"]``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from http.cookies import SimpleCookie
from typing import Any

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

DOWNLOAD_SIZE = 50 * 1024 * 1024
DOWNLOAD_CHUNK = 64 * 1024


def _pattern(size: int) -> Iterator[bytes]:
    """Deterministic bytes the test can hash without holding them."""
    block = bytes(range(256)) * (DOWNLOAD_CHUNK // 256)
    sent = 0
    while sent < size:
        piece = block[: min(DOWNLOAD_CHUNK, size - sent)]
        sent += len(piece)
        yield piece


def download_digest(size: int = DOWNLOAD_SIZE) -> str:
    digest = hashlib.sha256()
    for piece in _pattern(size):
        digest.update(piece)
    return digest.hexdigest()


def _json(start_response: StartResponse, data: Any, status: str = "200 OK") -> list[bytes]:
    body = json.dumps(data).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _drip(pause: float) -> Iterator[bytes]:
    yield b"first\n"
    time.sleep(pause)
    yield b"second\n"


def echo(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """HTTP: the request as JSON, a 50 MB download, upload hashing, redirects, cookies,
    a slow endpoint, a streaming one (/drip?SECONDS: a chunk, a pause, a chunk).
    WebSocket: echoes every frame; /ws/reject refuses the handshake;
    /ws/group?name=G joins group G on connect."""
    event = environ.get("wsgi_channels.websocket")
    if event is not None:
        return websocket(environ, start_response)
    path = environ["PATH_INFO"]
    method = environ["REQUEST_METHOD"]
    if path == "/download":
        size = int(environ.get("QUERY_STRING") or DOWNLOAD_SIZE)
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))],
        )
        return _pattern(size)
    if path == "/upload":
        digest = hashlib.sha256()
        total = 0
        stream = environ["wsgi.input"]
        while True:
            chunk = stream.read(65536)
            if not chunk:
                break
            total += len(chunk)
            digest.update(chunk)
        return _json(start_response, {"size": total, "sha256": digest.hexdigest()})
    if path == "/redirect":
        start_response("302 Found", [("Location", "/landed"), ("Content-Length", "0")])
        return [b""]
    if path == "/cookie/set":
        start_response(
            "200 OK",
            [
                ("Set-Cookie", "session=abc123; Path=/"),
                ("Set-Cookie", "theme=dark; Path=/"),
                ("Content-Length", "2"),
            ],
        )
        return [b"ok"]
    if path == "/cookie/get":
        cookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
        return _json(start_response, {k: v.value for k, v in cookie.items()})
    if path == "/drip":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _drip(float(environ.get("QUERY_STRING") or 0.5))
    if path == "/slow":
        time.sleep(float(environ.get("QUERY_STRING") or 2))
        start_response("200 OK", [("Content-Length", "4")])
        return [b"slow"]
    body = environ["wsgi.input"].read()
    return _json(
        start_response,
        {
            "method": method,
            "path": path,
            "script_name": environ.get("SCRIPT_NAME", ""),
            "query": environ.get("QUERY_STRING", ""),
            "body": body.decode("latin-1"),
            "content_type": environ.get("CONTENT_TYPE", ""),
            "host": environ.get("HTTP_HOST", ""),
        },
    )


def websocket(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    event = environ["wsgi_channels.websocket"]
    path = environ["PATH_INFO"]
    if event == "connect":
        if path == "/ws/reject":
            start_response("403 Forbidden", [("Content-Length", "0")])
            return [b""]
        if path == "/ws/group":
            from wsgi_channels import Group

            name = environ.get("QUERY_STRING", "").partition("=")[2] or "room"
            Group(name, layer=environ["wsgi_channels.layer"]).add(
                environ["wsgi_channels.reply_channel"]
            )
        headers = [("Content-Type", "text/plain")]
        offered = environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "")
        if path == "/ws/subprotocol" and "chat.v2" in offered.replace(" ", "").split(","):
            headers.append(("Sec-WebSocket-Protocol", "chat.v2"))
        start_response("200 OK", headers)
        return [b""]
    if event == "receive":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", environ.get("CONTENT_TYPE", "text/plain"))])
        return [body]
    start_response("200 OK", [])
    return [b""]


def hello(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The benchmark's hello world."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [b"Hello, world!"]


def broken(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    raise RuntimeError("boom")


def stubborn_socket(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """A socket view that joins a group on connect and, like a view behind
    ``login_required`` after the user logged out elsewhere, answers its disconnect
    event with a redirect, so it never leaves the group itself."""
    from wsgi_channels import Group

    event = environ["wsgi_channels.websocket"]
    if event == "connect":
        Group("stubborn", layer=environ["wsgi_channels.layer"]).add(
            environ["wsgi_channels.reply_channel"]
        )
        start_response("200 OK", [])
        return [b""]
    if event == "disconnect":
        start_response("302 Found", [("Location", "/login")])
        return [b""]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["wsgi.input"].read()]
