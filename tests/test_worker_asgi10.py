"""The Worker on ASGI 1.0 layers whose new_channel takes only ``?`` patterns (as
asgi_redis 1.4.3 does) and that have no receive_batch."""

from __future__ import annotations

import time
from typing import Any

from _worker_helpers import (
    PROBE,
    ClosingStream,
    http_message,
    prefix_of,
    read_reply,
    reply_prefix,
    running_worker,
    ws_event,
    ws_message,
)

from wsgi_channels.layers.memory import MemoryChannelLayer
from wsgi_channels.protocol import CONTROL_KEY, DISCONNECT_TYPE


class QuestionMarkOnlyLayer:
    """ASGI 1.0 surface only: send, receive, new_channel asserting a ``?`` pattern
    (asgi_redis 1.4.3's rule), over a real memory layer."""

    def __init__(self) -> None:
        self._inner = MemoryChannelLayer(receive_timeout=0.2)

    def send(self, channel: str, message: dict[str, Any]) -> None:
        self._inner.send(channel, message)

    def receive(self, channels: Any, block: bool = False) -> Any:
        return self._inner.receive(channels, block)

    def new_channel(self, pattern: str) -> str:
        assert pattern.endswith("?"), "pattern must end with ?"
        return self._inner.new_channel(pattern)


def test_worker_serves_and_cancels_on_a_question_mark_only_layer() -> None:
    layer = QuestionMarkOnlyLayer()

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["PATH_INFO"] == "/stream":
            return ClosingStream("asgi10-stream", (b"x" for _ in range(10_000)), delay=0.01)
        return [b"hello"]

    inner = layer._inner
    with running_worker(app, layer, threads=2):
        message = http_message(inner, path="/")
        layer.send("http.request", message)
        assert read_reply(inner, message["reply_channel"]).body == b"hello"
        stream = http_message(inner, path="/stream")
        layer.send("http.request", stream)
        prefix = stream["reply_channel"][: stream["reply_channel"].index("!") + 1]
        first = None
        while first is None:
            _channel, first = inner.receive([prefix], True)
        control = first[CONTROL_KEY]
        assert "?" in control
        layer.send(control, {"type": DISCONNECT_TYPE, "reply_channel": stream["reply_channel"]})
        # The streaming response (100 s long) stops and is closed soon after the notice.
        deadline = time.monotonic() + 5
        while "asgi10-stream" not in PROBE.closed and time.monotonic() < deadline:
            inner.receive([prefix], True)
    assert "asgi10-stream" in PROBE.closed


def _failing_socket_app(environ: dict[str, Any], start_response: Any) -> Any:
    if environ.get("wsgi_channels.websocket") == "receive":
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"down"]
    start_response("200 OK", [])
    return []


def test_a_5xx_closes_with_1000_for_an_asgi10_front_end_and_1011_for_ours() -> None:
    # Daphne 1.x (autobahn) sends close codes 1000 and 3000-4999 only and leaves the
    # socket open on a 1011 (tests/test_asgi10_peers.py meets it for real).
    layer = QuestionMarkOnlyLayer()
    inner = layer._inner
    with running_worker(_failing_socket_app, layer, threads=1):
        daphne = ws_message(inner.new_channel(reply_prefix()), 1, ext=False, text="x")
        layer.send("websocket.receive", daphne)
        _channel, reply = None, None
        while reply is None:
            _channel, reply = inner.receive([prefix_of(daphne["reply_channel"])], True)
        assert reply == {"close": True}

        ours = ws_message(inner.new_channel(reply_prefix()), 1, text="x")
        replies = ws_event(inner, "receive", ours)
        assert [r["close"] for r in replies] == [1011]
