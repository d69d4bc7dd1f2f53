"""A Flask app for tests/test_frameworks.py: a signed-cookie session login and a view
that handles WebSocket events through the worker (SPEC.md §6)."""

from __future__ import annotations

from flask import Flask, abort, request, session

from wsgi_channels.sender import Group

app = Flask(__name__)
app.secret_key = "test-only-not-secret"


@app.post("/login")
def login() -> str:
    session["user"] = request.form["user"]
    return "ok"


@app.get("/live")
def live() -> str:
    event = request.environ.get("wsgi_channels.websocket")
    user = session.get("user")
    if event is None:
        return "open this as a WebSocket"
    if user is None:
        abort(403)
    group = Group("readers", layer=request.environ["wsgi_channels.layer"])
    if event == "connect":
        group.add(request.environ["wsgi_channels.reply_channel"])
        return f"hello {user}"
    if event == "disconnect":
        group.discard(request.environ["wsgi_channels.reply_channel"])
    return ""
