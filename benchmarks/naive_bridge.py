"""The naive bridge baseline: what a WSGI-over-Redis bridge costs when nothing is shared.

The interface is a uvicorn ASGI app (``benchmarks.naive_bridge:app``, Redis URL in
``NAIVE_BRIDGE_REDIS``) that LPUSHes each request (msgpack) onto one list and BLPOPs a
reply key of its own; the worker (``python -m benchmarks.naive_bridge MODULE:APP``) BLPOPs
one request at a time, runs the WSGI app and LPUSHes the reply. One round trip per
message, one message per round trip.
"""

from __future__ import annotations

import importlib
import io
import os
import sys
import uuid
from typing import Any

import msgpack

QUEUE = "naive:requests"
_redis: Any = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _redis
    if _redis is None:
        import redis.asyncio

        _redis = redis.asyncio.from_url(os.environ["NAIVE_BRIDGE_REDIS"])
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    reply = f"naive:reply:{uuid.uuid4().hex}"
    request = [scope["method"], scope["path"], scope["query_string"], scope["headers"], body]
    await _redis.lpush(QUEUE, msgpack.packb([reply, *request]))
    _, raw = await _redis.blpop([reply], timeout=30)
    status, headers, content = msgpack.unpackb(raw)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def run(wsgi: Any, method: str, path: str, query: bytes, headers: Any, body: bytes) -> list[Any]:
    """Run *wsgi* on one request; ``[status, headers, content]`` (also the batched
    bridge's worker)."""
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query.decode(),
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": True,
        "wsgi.run_once": False, "CONTENT_LENGTH": str(len(body)),
    }  # fmt: skip
    for key, value in headers:
        environ["HTTP_" + key.decode("latin-1").upper().replace("-", "_")] = value.decode()
    started: list[Any] = []
    chunks = wsgi(environ, lambda status, hdrs, exc=None: started.extend([status, hdrs]))
    content = b"".join(chunks)
    getattr(chunks, "close", lambda: None)()
    out = [[k.encode(), v.encode()] for k, v in started[1]]
    return [int(started[0].split()[0]), out, content]


def load(app_path: str) -> Any:
    module, _, name = app_path.partition(":")
    return getattr(importlib.import_module(module), name)


def worker(app_path: str, url: str) -> None:
    import redis

    wsgi = load(app_path)
    r = redis.Redis.from_url(url)
    while True:
        _, raw = r.blpop([QUEUE])
        reply, *request = msgpack.unpackb(raw)
        with r.pipeline(transaction=False) as pipe:
            pipe.lpush(reply, msgpack.packb(run(wsgi, *request)))
            pipe.expire(reply, 30)
            pipe.execute()


if __name__ == "__main__":
    worker(sys.argv[1], os.environ["NAIVE_BRIDGE_REDIS"])
