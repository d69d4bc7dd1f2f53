"""The worker's access log: nothing a client sends can forge or garble a line, and
WebSocket events read as such."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from _worker_helpers import reply_prefix, request, running_worker, ws_event, ws_message

from wsgi_channels.layers.memory import MemoryChannelLayer


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    if environ.get("wsgi_channels.websocket") == "connect" and environ["PATH_INFO"] == "/no":
        start_response("403 Forbidden", [])
        return [b""]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.fixture
def access_lines(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.INFO, logger="wsgi_channels.access")

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "wsgi_channels.access"]

    return lines


def test_control_characters_in_a_request_are_escaped(access_lines: Any) -> None:
    layer = MemoryChannelLayer(receive_timeout=0.2)
    forged = '/a\n127.0.0.1 - "GET /admin HTTP/1.1" 200 2 0.1\x1b[2J\r"'
    with running_worker(_app, layer, threads=1):
        assert request(layer, path=forged).status == 200
    [line] = access_lines()
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "\\x0a127.0.0.1" in line and "\\x1b[2J" in line
    assert line.count('"') == 2  # the quotes around the request line only


def test_websocket_events_read_naturally(access_lines: Any) -> None:
    layer = MemoryChannelLayer(receive_timeout=0.2)
    with running_worker(_app, layer, threads=1):
        rc = layer.new_channel(reply_prefix())
        ws_event(layer, "connect", ws_message(rc, 0, "/ws/chat"))
        ws_event(layer, "receive", ws_message(rc, 1, "/ws/chat", text="hi"))
        refused = layer.new_channel(reply_prefix())
        ws_event(layer, "connect", ws_message(refused, 0, "/no"))
    lines = access_lines()
    assert " - WebSocket CONNECT /ws/chat 101 " in lines[0], lines
    assert " - WebSocket RECEIVE /ws/chat 200 " in lines[1], lines
    assert " - WebSocket CONNECT /no 403 " in lines[2], lines
