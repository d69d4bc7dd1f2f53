"""The ASGI 1.0 peers' side of tests/test_asgi10_peers.py, run in their own virtual
environment (asgi_redis 1.4.3, Daphne 1.4.2, redis 2.10.6, msgpack 0.6.2), never in ours.

* ``daphne _asgi10_peer:channel_layer`` serves HTTP and WebSockets on asgi_redis;
* ``python -m _asgi10_peer`` runs our :class:`~wsgi_channels.Worker` with a Flask app,
  wrapped in :class:`~wsgi_channels.ChannelsMiddleware` as docs/deployment.md advises, on
  another asgi_redis layer object over the same redis-server.

The redis-server is named by ``PEER_REDIS_PORT``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from asgi_redis import RedisChannelLayer
from flask import Flask, Response, abort, request

from wsgi_channels import ChannelsMiddleware, Group, Worker

GROUP = "peers"


def make_layer() -> Any:
    # As docs/migrating-from-channels-1.md shows it.
    return RedisChannelLayer(hosts=[f"redis://127.0.0.1:{os.environ['PEER_REDIS_PORT']}"])


#: What Daphne imports (``module:attribute``).
channel_layer = make_layer()

app = Flask(__name__)


@app.get("/hello")
def hello() -> Any:
    """What the app saw of the request, and a header of its own."""
    body = {
        "path": request.path,
        "query": request.args.get("q"),
        "x_custom": request.headers.get("X-Custom"),
        "cookie": request.cookies.get("session"),
        "method": request.method,
        "server_port": request.environ["SERVER_PORT"],
    }
    return body, 200, {"X-Served-By": "wsgi-channels"}


@app.post("/echo")
def echo() -> Response:
    return Response(request.get_data(), content_type=request.content_type, status=201)


@app.get("/stream")
def stream() -> Response:
    """A response in many chunks (several ``more_content`` replies)."""
    return Response((f"{i:04d}\n".encode() for i in range(2000)), content_type="text/plain")


@app.get("/big")
def big() -> Response:
    """One body larger than an ASGI 1.0 message should be (1 MB): the worker splits it."""
    return Response(bytes(range(256)) * (3 * 4096), content_type="application/octet-stream")


@app.post("/broadcast")
def broadcast() -> str:
    """Push to every socket in the group from a plain HTTP view, as legacy code does."""
    layer = request.environ["wsgi_channels.layer"]
    Group(GROUP, layer=layer).send({"text": "news: " + request.get_data(as_text=True)})
    return "sent\n"


@app.route("/ws")
def socket() -> Any:
    event = request.environ.get("wsgi_channels.websocket")
    if event is None:
        return "a WebSocket endpoint\n", 400
    # No layer=: ChannelsMiddleware gives Group the worker's layer (the docs' other way).
    group = Group(GROUP)
    reply_channel = request.environ["wsgi_channels.reply_channel"]
    if event == "connect":
        if request.args.get("deny"):
            abort(403)
        group.add(reply_channel)
        return ""
    if event == "disconnect":
        group.discard(reply_channel)
        return ""
    text = request.get_data(as_text=True)
    if text == "unavailable":
        abort(503)
    if text.startswith("all:"):
        group.send({"text": text[len("all:") :]})
        return ""
    return "echo: " + text


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    Worker(ChannelsMiddleware(app), make_layer(), threads=4, graceful_timeout=5).run()
