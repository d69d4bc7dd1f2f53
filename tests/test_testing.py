"""wsgi_channels.testing: HTTP and WebSocket tests of a user's app through a real worker."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, Response, request, session, stream_with_context

from wsgi_channels import Channel, ChannelsMiddleware, Group
from wsgi_channels.layers.base import InvalidMessage
from wsgi_channels.testing import (
    WebSocketClosed,
    WebSocketRejected,
    WebSocketTestClient,
    WorkerHarness,
    WorkerTestApp,
)


def make_app() -> tuple[Flask, list[tuple[str, Any]]]:
    """A small Flask app with HTTP views and a WebSocket endpoint, and the list of the
    WebSocket events it saw."""
    app = Flask(__name__)
    app.secret_key = "test"
    events: list[tuple[str, Any]] = []
    lock = threading.Lock()

    @app.get("/hello")
    def hello() -> str:
        return f"Hello, {request.args.get('name', 'world')}!"

    @app.post("/upload")
    def upload() -> dict[str, Any]:
        data = request.get_data()
        return {"size": len(data), "last": data[-1:].decode(), "type": request.content_type}

    @app.get("/login")
    def login() -> str:
        session["user"] = request.args["user"]
        return "ok"

    @app.get("/stream")
    def stream() -> Response:
        def generate() -> Iterator[str]:
            for i in range(3):
                yield f"chunk {i}\n"

        return Response(stream_with_context(generate()), mimetype="text/plain")

    @app.post("/announce")
    def announce() -> dict[str, bool]:
        Group("room").send({"text": request.form["text"]})
        return {"sent": True}

    @app.route("/ws")
    def ws() -> Any:
        event = request.environ.get("wsgi_channels.websocket")
        reply_channel = request.environ.get("wsgi_channels.reply_channel")
        with lock:
            if event == "disconnect":
                events.append((event, request.environ["wsgi_channels.websocket.code"]))
            else:
                events.append((event, request.get_data(as_text=True)))
        if event == "connect":
            if request.args.get("reject"):
                return "go away", 403
            Group("room").add(reply_channel)
            greeting = f"hello {session.get('user', 'anonymous')}"
            return greeting if request.args.get("greet") else ("", 204)
        if event == "receive":
            text = request.get_data(as_text=True)
            if request.content_type == "application/octet-stream":
                return Response(request.get_data()[::-1], mimetype="application/octet-stream")
            if text == "boom":
                raise RuntimeError("handler failed")
            if text == "shout":
                Group("room").send({"text": "everyone!"})
                return "", 204
            if text.startswith("{"):
                return {"echo": json.loads(text)}
            return text.upper()
        Group("room").discard(reply_channel)
        return "", 204

    app.wsgi_app = ChannelsMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app, events


@pytest.fixture
def events() -> list[tuple[str, Any]]:
    return []


@pytest.fixture
def client() -> Iterator[tuple[WorkerTestApp, list[tuple[str, Any]]]]:
    app, events = make_app()
    with WorkerTestApp(app) as test_app:
        yield test_app, events


# -- HTTP ---------------------------------------------------------------------------


def test_http_get(client: tuple[WorkerTestApp, Any]) -> None:
    app, _ = client
    response = app.get("/hello", {"name": "Ünïcode"})
    assert response.status_int == 200
    assert response.text == "Hello, Ünïcode!"
    assert response.content_type == "text/html"
    assert app.get("/missing", status=404).status_int == 404


def test_http_large_upload_goes_on_the_body_channel(client: tuple[WorkerTestApp, Any]) -> None:
    app, _ = client
    body = b"x" * (600 * 1024) + b"!"
    response = app.post("/upload", body, content_type="application/octet-stream")
    assert response.json == {"size": len(body), "last": "!", "type": "application/octet-stream"}


def test_http_streaming_response(client: tuple[WorkerTestApp, Any]) -> None:
    app, _ = client
    assert app.get("/stream").text == "chunk 0\nchunk 1\nchunk 2\n"


def test_harness_is_a_plain_wsgi_app() -> None:
    from werkzeug.test import Client

    app, _ = make_app()
    with WorkerHarness(app) as harness:
        response = Client(harness).get("/hello?name=werkzeug")
        assert response.status_code == 200
        assert response.text == "Hello, werkzeug!"


# -- WebSocket ----------------------------------------------------------------------


def test_websocket_round_trip(client: tuple[WorkerTestApp, list[tuple[str, Any]]]) -> None:
    app, events = client
    with app.websocket("/ws") as ws:
        ws.send_text("hi")
        assert ws.receive_text() == "HI"
        ws.send_json({"n": 1})
        assert ws.receive_json() == {"echo": {"n": 1}}
        ws.send_bytes(b"\x01\x02\x03")
        assert ws.receive_bytes() == b"\x03\x02\x01"
        assert ws.receive_nothing()
    assert events == [
        ("connect", ""),
        ("receive", "hi"),
        ("receive", '{"n": 1}'),
        ("receive", "\x01\x02\x03"),
        ("disconnect", 1000),
    ]


def test_websocket_first_frame_and_session_cookie(client: tuple[WorkerTestApp, Any]) -> None:
    app, _ = client
    app.get("/login", {"user": "ada"})
    with app.websocket("/ws?greet=1") as ws:
        assert ws.receive_text() == "hello ada"


def test_websocket_reject(client: tuple[WorkerTestApp, list[tuple[str, Any]]]) -> None:
    app, events = client
    ws = app.websocket("/ws?reject=1")
    with pytest.raises(WebSocketRejected):
        ws.connect()
    assert not ws.accepted
    ws.close()  # nothing to do: the app never opened it
    assert events == [("connect", "")]


def test_websocket_sees_group_messages(client: tuple[WorkerTestApp, Any]) -> None:
    app, _ = client
    with app.websocket("/ws") as first, app.websocket("/ws") as second:
        app.post("/announce", {"text": "from HTTP"})
        assert first.receive_text() == "from HTTP"
        assert second.receive_text() == "from HTTP"
        first.send_text("shout")
        assert first.receive_text() == "everyone!"
        assert second.receive_text() == "everyone!"
        # Outside any request: the harness's layer is the default one meanwhile.
        Group("room").send({"text": "from a cron job"})
        Channel(second.reply_channel).send({"text": "just you"})
        assert first.receive_text() == "from a cron job"
        assert second.receive_text() == "from a cron job"
        assert second.receive_text() == "just you"
        assert first.receive_nothing()
    assert Group("room", layer=app.layer).channels() == []


def test_websocket_error_closes_with_1011(
    client: tuple[WorkerTestApp, list[tuple[str, Any]]],
) -> None:
    app, events = client
    ws = app.websocket("/ws").connect()
    ws.send_text("boom")
    with pytest.raises(WebSocketClosed) as info:
        ws.receive_text()
    assert info.value.code == 1011
    with pytest.raises(WebSocketClosed):
        ws.send_text("more")
    ws.close()
    assert events[-1] == ("disconnect", 1011)


def test_websocket_close_code(client: tuple[WorkerTestApp, list[tuple[str, Any]]]) -> None:
    app, events = client
    ws = app.websocket("/ws").connect()
    ws.close(4001)
    ws.close()  # idempotent
    assert events[-1] == ("disconnect", 4001)
    assert ws.close_code == 4001


def test_receive_timeout(client: tuple[WorkerTestApp, Any]) -> None:
    app, _ = client
    with app.websocket("/ws") as ws, pytest.raises(TimeoutError):
        ws.receive_text(timeout=0.1)


def test_websocket_client_on_a_bare_app() -> None:
    app, events = make_app()
    with WebSocketTestClient(app, "/ws", cookies={"theme": "dark"}) as ws:
        ws.send_text("abc")
        assert ws.receive_text() == "ABC"
    assert ws.harness._closed
    assert [event for event, _ in events] == ["connect", "receive", "disconnect"]


def test_send_before_connect_is_an_error() -> None:
    app, _ = make_app()
    ws = WebSocketTestClient(app, "/ws")
    with pytest.raises(RuntimeError):
        ws.send_text("too early")
    ws.close()


@pytest.mark.parametrize(
    "reply",
    [{"text": {"oops": 1}}, {"text": 1}, {"bytes": "str"}, {"close": 99999}, {"close": "x"}],
    ids=["text-dict", "text-int", "bytes-str", "close-code", "close-str"],
)
def test_websocket_refuses_a_reply_the_interface_would_drop(
    client: tuple[WorkerTestApp, Any], reply: dict[str, Any]
) -> None:
    # A forgotten json.dumps: production drops the message, so the test must not pass.
    app, _ = client
    with app.websocket("/ws") as ws:
        app.layer.send(ws.reply_channel, reply)
        with pytest.raises(InvalidMessage, match="interface server would drop"):
            ws.receive()
