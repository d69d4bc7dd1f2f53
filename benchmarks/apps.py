"""The WSGI apps the benchmarks run, identical under gunicorn and under wsgi-channels.

``benchmarks.apps:hello``  Flask hello-world, the HTTP baseline (``GET /``).
``benchmarks.apps:ws``     Flask app for WebSocket scenarios: ``GET /`` answers "ok";
                           a WebSocket connect to ``/ws`` joins group "bench", a
                           disconnect leaves it (``/idle`` accepts without joining);
                           a frame received is echoed back.
"""

from __future__ import annotations

from flask import Flask, request

hello = Flask("hello")


@hello.route("/")
def hello_world() -> str:
    return "Hello, World!"


ws = Flask("ws")


@ws.route("/")
def ws_ready() -> str:
    return "ok"


@ws.route("/ws")
def ws_bench() -> tuple[bytes, int]:
    from wsgi_channels import Group

    event = request.environ.get("wsgi_channels.websocket")
    group = Group("bench", layer=request.environ["wsgi_channels.layer"])
    if event == "connect":
        group.add(request.environ["wsgi_channels.reply_channel"])
    elif event == "receive":
        return request.get_data(), 200
    elif event == "disconnect":
        group.discard(request.environ["wsgi_channels.reply_channel"])
    return b"", 200


@ws.route("/idle")
def ws_idle() -> tuple[bytes, int]:
    if request.environ.get("wsgi_channels.websocket") == "receive":
        return request.get_data(), 200
    return b"", 200
