"""wsgi_channels.adapter: every PEP 3333 corner, without a layer, a thread or a socket."""

from __future__ import annotations

import io
import sys
from typing import Any
from wsgiref.validate import validator

import pytest

from wsgi_channels.adapter import (
    MAX_CHUNK_SIZE,
    FileWrapper,
    InvalidResponse,
    MalformedMessage,
    ResponseTranslator,
    build_environ,
    websocket_environ,
    websocket_replies,
)
from wsgi_channels.protocol import CONTROL_KEY


def message(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "reply_channel": "test.reply!abc",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "query_string": b"",
        "root_path": "",
        "headers": [[b"host", b"example.com"]],
        "body": b"",
        "body_channel": None,
        "client": ["10.0.0.1", 1234],
        "server": ["example.com", 8080],
    }
    base.update(overrides)
    return base


def run_validated(msg: dict[str, Any], app_body: Any = None) -> tuple[dict[str, Any], list[Any]]:
    """Run a validating app on *msg*; return (environ seen, messages emitted)."""
    seen: dict[str, Any] = {}
    emitted: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        seen.update(environ)
        seen["_body"] = environ["wsgi.input"].read(1 << 20)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return app_body if app_body is not None else [b"ok"]

    body = msg.get("body") or b""
    environ = build_environ(msg, io.BytesIO(body), layer="the-layer")
    translator = ResponseTranslator(emitted.append, method=environ["REQUEST_METHOD"])
    result = validator(app)(environ, translator.start_response)
    try:
        for chunk in result:
            translator.feed(chunk)
        translator.finish()
    finally:
        result.close()  # type: ignore[attr-defined]
    return seen, emitted


# -- environ ------------------------------------------------------------------------------

BATTERY = [
    pytest.param(message(), id="get-root"),
    pytest.param(message(method="HEAD"), id="head"),
    pytest.param(message(method="OPTIONS"), id="options"),
    pytest.param(message(method="DELETE", path="/items/1"), id="delete"),
    pytest.param(
        message(
            method="POST",
            path="/form",
            headers=[
                [b"host", b"example.com"],
                [b"content-type", b"application/x-www-form-urlencoded"],
                [b"content-length", b"7"],
            ],
            body=b"a=1&b=2",
        ),
        id="post-form",
    ),
    pytest.param(message(method="PUT", body=b"\x00\xff\xfe binary"), id="put-binary-no-length"),
    pytest.param(message(path="/caf\u00e9/\u65e5\u672c"), id="unicode-path"),
    pytest.param(message(path="/100%/a b", query_string=b"q=%E2%9C%93&x=%20"), id="percent"),
    pytest.param(message(root_path="/app", path="/app/x/y"), id="root-path"),
    pytest.param(message(root_path="/app/", path="/app"), id="root-path-only"),
    pytest.param(
        message(
            headers=[
                [b"host", b"example.com"],
                [b"accept", b"text/html"],
                [b"accept", b"application/json"],
                [b"cookie", b"a=1"],
                [b"cookie", b"b=2"],
                [b"x_forwarded_for", b"evil"],
                [b"x-forwarded-for", b"good"],
            ]
        ),
        id="repeated-headers",
    ),
    pytest.param(
        {"reply_channel": "test.reply!abc", "path": "/min", "method": "GET"}, id="asgi10-minimal"
    ),
    pytest.param(message(http_version="1.0", scheme="https", server=None), id="https-no-server"),
    pytest.param(message(http_version="2", client=None), id="http2-no-client"),
]


@pytest.mark.parametrize("msg", BATTERY)
def test_environ_passes_wsgiref_validator(msg: dict[str, Any]) -> None:
    environ, emitted = run_validated(msg)
    assert environ["_body"] == (msg.get("body") or b"")
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.multithread"] is True
    assert environ["wsgi.multiprocess"] is True
    assert environ["wsgi.run_once"] is False
    assert environ["wsgi.file_wrapper"] is FileWrapper
    assert environ["wsgi_channels.reply_channel"] == "test.reply!abc"
    assert environ["wsgi_channels.layer"] == "the-layer"
    assert isinstance(environ["SERVER_PORT"], str)
    assert emitted[-1]["more_content"] is False
    if msg.get("method") == "HEAD":
        assert b"".join(m["content"] for m in emitted) == b""
    else:
        assert b"".join(m["content"] for m in emitted) == b"ok"


def test_unicode_path_is_a_wsgi_latin1_string() -> None:
    environ, _ = run_validated(message(path="/caf\u00e9/\u65e5"))
    assert environ["PATH_INFO"] == "/caf\u00e9/\u65e5".encode().decode("latin-1")
    assert environ["PATH_INFO"].encode("latin-1").decode("utf-8") == "/caf\u00e9/\u65e5"


def test_percent_signs_in_the_decoded_path_are_kept() -> None:
    environ, _ = run_validated(message(path="/100%/a b", query_string=b"q=%E2%9C%93"))
    assert environ["PATH_INFO"] == "/100%/a b"
    assert environ["QUERY_STRING"] == "q=%E2%9C%93"


@pytest.mark.parametrize(
    ("root_path", "path", "script_name", "path_info"),
    [
        pytest.param("/app", "/app/x", "/app", "/x", id="prefix-stripped"),
        pytest.param("/app/", "/app", "/app", "", id="exact-root"),
        pytest.param("/app", "/application", "/app", "/application", id="not-a-segment"),
        pytest.param("/app", "/other", "/app", "/other", id="path-without-prefix"),
        pytest.param("", "/x", "", "/x", id="no-root"),
        pytest.param("/\u00e9", "/\u00e9/x", "/\u00c3\u00a9", "/x", id="unicode-root"),
    ],
)
def test_script_name_and_path_info(
    root_path: str, path: str, script_name: str, path_info: str
) -> None:
    environ = build_environ(message(root_path=root_path, path=path), io.BytesIO())
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == (script_name, path_info)


def test_headers_repeated_cookies_and_underscores() -> None:
    environ, _ = run_validated(BATTERY[10].values[0])
    assert environ["HTTP_ACCEPT"] == "text/html,application/json"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    # x_forwarded_for is dropped, so it cannot pose as X-Forwarded-For.
    assert environ["HTTP_X_FORWARDED_FOR"] == "good"


def test_content_type_and_length() -> None:
    environ, _ = run_validated(BATTERY[4].values[0])
    assert environ["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert environ["CONTENT_LENGTH"] == "7"
    assert "HTTP_CONTENT_TYPE" not in environ and "HTTP_CONTENT_LENGTH" not in environ
    environ = build_environ(message(body=b"abc"), io.BytesIO(b"abc"))
    assert environ["CONTENT_LENGTH"] == "3"  # whole body inline: its length
    environ = build_environ(message(body=b"abc", body_channel="b?x"), io.BytesIO(b"abc"))
    assert "CONTENT_LENGTH" not in environ  # the rest is still coming
    assert environ["wsgi.input_terminated"] is True


@pytest.mark.parametrize(
    ("server", "host", "name", "port"),
    [
        pytest.param(["10.1.1.1", 8000], b"ignored:1", "10.1.1.1", "8000", id="server"),
        pytest.param(["/tmp/sock", None], b"x", "/tmp/sock", "80", id="unix-server"),
        pytest.param(None, b"example.org:8443", "example.org", "8443", id="host-port"),
        pytest.param(None, b"example.org", "example.org", "80", id="host"),
        pytest.param(None, b"[::1]:9000", "[::1]", "9000", id="ipv6-port"),
        pytest.param(None, b"[::1]", "[::1]", "80", id="ipv6"),
        pytest.param(None, None, "localhost", "80", id="nothing"),
    ],
)
def test_server_name_and_port(server: Any, host: bytes | None, name: str, port: str) -> None:
    headers = [] if host is None else [[b"host", host]]
    environ = build_environ(message(server=server, headers=headers), io.BytesIO())
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == (name, port)


def test_client_and_protocol_defaults() -> None:
    environ = build_environ(
        {"reply_channel": "r!x", "path": "/", "method": "get"}, io.BytesIO(), errors=sys.stdout
    )
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["QUERY_STRING"] == ""
    assert environ["SCRIPT_NAME"] == ""
    assert environ["wsgi.errors"] is sys.stdout
    assert "REMOTE_ADDR" not in environ
    environ = build_environ(message(http_version="1.0", scheme="https"), io.BytesIO())
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert environ["wsgi.url_scheme"] == "https"
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("10.0.0.1", "1234")


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"path": "/", "method": "GET"}, id="no-reply-channel"),
        pytest.param({"reply_channel": "r!x", "method": "GET"}, id="no-path"),
        pytest.param({"reply_channel": "r!x", "path": "/"}, id="no-method"),
        pytest.param(message(reply_channel=5), id="reply-channel-int"),
        pytest.param(message(path=b"/"), id="path-bytes"),
        pytest.param(message(path="relative"), id="path-relative"),
        pytest.param(message(method="GE T"), id="method-space"),
        pytest.param(message(headers="host: x"), id="headers-str"),
        pytest.param(message(headers=[[b"host"]]), id="header-one-item"),
        pytest.param(message(headers=[[1, b"x"]]), id="header-name-int"),
        pytest.param(message(query_string=5), id="query-int"),
        pytest.param(message(query_string="\u00e9"), id="query-non-ascii-str"),
        pytest.param(message(body="text"), id="body-str"),
        pytest.param(message(body_channel=3), id="body-channel-int"),
        pytest.param(message(client="10.0.0.1"), id="client-str"),
        pytest.param(message(server=["h", "80"]), id="server-port-str"),
        pytest.param(message(scheme="ftp"), id="scheme-ftp"),
        pytest.param(message(http_version=1.1), id="version-float"),
        pytest.param(message(root_path=None, path=None), id="path-none"),
    ],
)
def test_malformed_messages_raise_malformed_message(bad: dict[str, Any]) -> None:
    with pytest.raises(MalformedMessage):
        build_environ(bad, io.BytesIO())


# -- WebSocket environ ------------------------------------------------------------------------


def ws(**overrides: Any) -> dict[str, Any]:
    base = message(
        path="/chat/room",
        scheme="wss",
        query_string=b"token=1",
        headers=[
            [b"host", b"example.com"],
            [b"cookie", b"sessionid=abc"],
            [b"content-length", b"9"],
            [b"connection", b"Upgrade"],
            [b"upgrade", b"websocket"],
            [b"sec-websocket-protocol", b"chat"],
        ],
        order=0,
    )
    for key in ("method", "body", "body_channel", "http_version"):
        del base[key]
    base.update(overrides)
    return base


@pytest.mark.parametrize("event", ["connect", "receive", "disconnect"])
def test_websocket_events_are_gets_to_the_connection_path(event: Any) -> None:
    msg = ws(text="hi \u00e9", order=1) if event == "receive" else ws(code=1001)
    body = "hi \u00e9".encode() if event == "receive" else b""
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        seen.update(environ, _body=environ["wsgi.input"].read(1 << 20))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return []

    environ = websocket_environ(msg, event, io.BytesIO(body))
    validator(app)(environ, ResponseTranslator(lambda m: None).start_response).close()
    assert seen["REQUEST_METHOD"] == "GET"
    assert seen["PATH_INFO"] == "/chat/room"
    assert seen["QUERY_STRING"] == "token=1"
    assert seen["HTTP_COOKIE"] == "sessionid=abc"
    assert seen["HTTP_SEC_WEBSOCKET_PROTOCOL"] == "chat"
    assert "HTTP_UPGRADE" not in seen and "HTTP_CONNECTION" not in seen  # a plain GET
    assert seen["wsgi.url_scheme"] == "https"
    assert seen["wsgi_channels.websocket"] == event
    assert seen["_body"] == body
    if event == "receive":
        assert seen["CONTENT_TYPE"] == "text/plain; charset=utf-8"
        assert seen["CONTENT_LENGTH"] == str(len(body))
    else:
        assert "CONTENT_LENGTH" not in seen  # the handshake's header does not leak
    if event == "disconnect":
        assert seen["wsgi_channels.websocket.code"] == 1001


def test_websocket_binary_frame() -> None:
    environ = websocket_environ(ws(bytes=b"\x00\x01"), "receive", io.BytesIO(b"\x00\x01"))
    assert environ["CONTENT_TYPE"] == "application/octet-stream"


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(ws(), id="receive-without-frame"),
        pytest.param(ws(text=b"bytes as text"), id="text-bytes"),
        pytest.param(ws(bytes="str as bytes"), id="bytes-str"),
        pytest.param(ws(text="x", order="1"), id="order-str"),
    ],
)
def test_malformed_websocket_receive(bad: dict[str, Any]) -> None:
    with pytest.raises(MalformedMessage):
        websocket_environ(bad, "receive", io.BytesIO())


def test_malformed_disconnect_code() -> None:
    with pytest.raises(MalformedMessage):
        websocket_environ(ws(code="going away"), "disconnect", io.BytesIO())


@pytest.mark.parametrize(
    ("event", "status", "content_type", "body", "expected"),
    [
        pytest.param("connect", 200, b"", b"", [{"accept": True}], id="connect-accept"),
        pytest.param(
            "connect",
            200,
            b"text/plain",
            b"hi",
            [{"accept": True}, {"text": "hi"}],
            id="connect-first-frame",
        ),
        pytest.param("connect", 403, b"", b"no", [{"close": True}], id="connect-reject"),
        pytest.param("connect", 302, b"", b"", [{"close": True}], id="connect-redirect"),
        pytest.param("receive", 200, b"application/json", b"{}", [{"text": "{}"}], id="json"),
        pytest.param(
            "receive", 200, b"application/ld+json", b"{}", [{"text": "{}"}], id="plus-json"
        ),
        pytest.param("receive", 200, b"image/png", b"\x89P", [{"bytes": b"\x89P"}], id="bytes"),
        pytest.param("receive", 200, b"text/plain", b"\xff", [{"bytes": b"\xff"}], id="not-utf8"),
        pytest.param("receive", 200, b"text/plain", b"", [], id="empty"),
        pytest.param("receive", 404, b"text/plain", b"x", [], id="4xx-ignored"),
        pytest.param("receive", 500, b"text/plain", b"x", [{"close": 1011}], id="5xx-close"),
        pytest.param("disconnect", 200, b"text/plain", b"x", [], id="disconnect-ignored"),
    ],
)
def test_websocket_replies(
    event: Any, status: int, content_type: bytes, body: bytes, expected: list[Any]
) -> None:
    headers = [[b"content-type", content_type]] if content_type else []
    assert websocket_replies(event, status, headers, body) == expected


# -- the response ------------------------------------------------------------------------------


def translator(**kwargs: Any) -> tuple[ResponseTranslator, list[dict[str, Any]]]:
    emitted: list[dict[str, Any]] = []
    return ResponseTranslator(emitted.append, **kwargs), emitted


def test_headers_wait_for_the_first_non_empty_chunk() -> None:
    t, emitted = translator()
    t.start_response("201 Created", [("X-A", "1"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    t.feed(b"")
    t.feed(b"")
    assert emitted == []
    t.feed(b"abc")
    assert emitted == [
        {
            "status": 201,
            "headers": [[b"x-a", b"1"], [b"set-cookie", b"a=1"], [b"set-cookie", b"b=2"]],
            "content": b"abc",
            "more_content": True,
        }
    ]
    t.feed(b"def")
    t.finish()
    assert emitted[1:] == [
        {"content": b"def", "more_content": True},
        {"content": b"", "more_content": False},
    ]


def test_empty_body_is_one_message() -> None:
    t, emitted = translator()
    t.start_response("204 No Content", [])
    t.finish()
    assert emitted == [{"status": 204, "headers": [], "content": b"", "more_content": False}]


def test_content_length_completed_by_the_first_chunk_is_one_message() -> None:
    t, emitted = translator(extra_first={CONTROL_KEY: "w!c"})
    t.start_response("200 OK", [("Content-Length", "5")])
    t.feed(b"hello")
    assert t.done
    t.finish()
    assert emitted == [
        {
            "status": 200,
            "headers": [[b"content-length", b"5"]],
            "content": b"hello",
            "more_content": False,
        }
    ]  # no control channel on a response that does not stream


def test_streaming_first_message_carries_extra_keys() -> None:
    t, emitted = translator(extra_first={CONTROL_KEY: "w!c"})
    t.start_response("200 OK", [])
    t.feed(b"a")
    t.feed(b"b")
    t.finish()
    assert emitted[0][CONTROL_KEY] == "w!c"
    assert all(CONTROL_KEY not in m for m in emitted[1:])


def test_write_callable_before_and_with_the_iterable() -> None:
    t, emitted = translator()
    write = t.start_response("200 OK", [])
    write(b"")
    assert emitted == []
    write(b"one")
    t.feed(b"two")
    t.finish()
    assert [m["content"] for m in emitted] == [b"one", b"two", b""]
    assert t.bytes_sent == 6


def test_write_before_start_response_is_refused() -> None:
    t, _ = translator()
    with pytest.raises(InvalidResponse):
        t.write(b"x")
    with pytest.raises(InvalidResponse):
        t.finish()


def test_large_chunks_are_split() -> None:
    t, emitted = translator()
    t.start_response("200 OK", [])
    t.feed(b"a" * (MAX_CHUNK_SIZE * 2 + 10))
    t.finish()
    sizes = [len(m["content"]) for m in emitted]
    assert sizes == [MAX_CHUNK_SIZE, MAX_CHUNK_SIZE, 10, 0]
    assert "status" in emitted[0]


def test_list_bodies_are_coalesced() -> None:
    t, emitted = translator()
    t.start_response("200 OK", [])
    t.feed_all([b"a"] * 1000 + [b""] + [b"b"] * 1000)
    t.finish()
    assert [m["content"] for m in emitted] == [b"a" * 1000 + b"b" * 1000, b""]


def test_generator_chunks_are_not_held_back() -> None:
    # Server push: each chunk is emitted the moment it is fed.
    t, emitted = translator()
    t.start_response("200 OK", [("Content-Type", "text/event-stream")])
    t.feed(b"data: 1\n\n")
    assert len(emitted) == 1
    t.feed(b"data: 2\n\n")
    assert len(emitted) == 2


def test_head_sends_headers_only() -> None:
    t, emitted = translator(method="HEAD")
    t.start_response("200 OK", [("Content-Length", "1000")])
    t.feed(b"x" * 1000)
    assert t.done
    t.finish()
    assert emitted == [
        {
            "status": 200,
            "headers": [[b"content-length", b"1000"]],
            "content": b"",
            "more_content": False,
        }
    ]


def _exc_info() -> Any:
    try:
        raise ValueError("app failed")
    except ValueError:
        return sys.exc_info()


def test_exc_info_replaces_headers_not_yet_sent() -> None:
    t, emitted = translator()
    t.start_response("200 OK", [("X-Partial", "1")])
    t.start_response("500 Internal Server Error", [("X-Error", "1")], _exc_info())
    t.feed(b"oops")
    t.finish()
    assert emitted[0]["status"] == 500
    assert emitted[0]["headers"] == [[b"x-error", b"1"]]


def test_exc_info_reraises_once_headers_are_sent() -> None:
    t, _ = translator()
    t.start_response("200 OK", [])
    t.feed(b"partial")
    with pytest.raises(ValueError, match="app failed"):
        t.start_response("500 Internal Server Error", [], _exc_info())


def test_start_response_twice_without_exc_info_is_refused() -> None:
    t, _ = translator()
    t.start_response("200 OK", [])
    with pytest.raises(InvalidResponse):
        t.start_response("200 OK", [])


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        pytest.param("200 OK\r\nX: y", [], id="status-crlf"),
        pytest.param("200 OK", [("X-A", "1\r\nSet-Cookie: x=1")], id="value-crlf"),
        pytest.param("200 OK", [("X-A", "1\nX: 2")], id="value-lf"),
        pytest.param("200 OK", [("X-A", "1\0")], id="value-nul"),
        pytest.param("200 OK", [("X-A\r\n", "1")], id="name-crlf"),
        pytest.param("200 OK", [("X A", "1")], id="name-space"),
        pytest.param("200 OK", [("X-A", "\u20ac")], id="value-not-latin1"),
        pytest.param("200 OK", [("X-A", 1)], id="value-int"),
        pytest.param("200 OK", [["X-A", "1"]], id="header-list"),
        pytest.param("200", [], id="status-no-reason"),
        pytest.param("OK", [], id="status-no-code"),
        pytest.param(200, [], id="status-int"),
        pytest.param("200 OK", (("X-A", "1"),), id="headers-tuple"),
    ],
)
def test_bad_status_and_headers_are_refused(status: Any, headers: Any) -> None:
    t, emitted = translator()
    with pytest.raises(InvalidResponse):
        t.start_response(status, headers)
    assert emitted == []


def test_non_bytes_chunks_are_refused() -> None:
    t, _ = translator()
    t.start_response("200 OK", [])
    with pytest.raises(InvalidResponse):
        t.feed("text")  # type: ignore[arg-type]
    with pytest.raises(InvalidResponse):
        t.feed_all(["text"])  # type: ignore[list-item]


def test_file_wrapper_reads_blocks_and_closes_the_file() -> None:
    data = io.BytesIO(b"0123456789")
    wrapper = FileWrapper(data, 4)
    assert list(wrapper) == [b"0123", b"4567", b"89"]
    wrapper.close()
    assert data.closed


def test_file_wrapper_through_validator() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"z" * (MAX_CHUNK_SIZE + 1)))

    environ = build_environ(message(), io.BytesIO())
    emitted: list[dict[str, Any]] = []
    t = ResponseTranslator(emitted.append)
    result = validator(app)(environ, t.start_response)
    for chunk in result:
        t.feed(chunk)
    t.finish()
    result.close()  # type: ignore[attr-defined]
    assert [len(m["content"]) for m in emitted] == [MAX_CHUNK_SIZE, 1, 0]


# -- repeated headers, as gunicorn joins them -------------------------------------------

_ECHO_APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("%s|%s" % (environ.get("HTTP_X_CUSTOM"), environ.get("HTTP_COOKIE"))).encode()]
"""


def test_repeated_headers_joined_as_gunicorn_joins_them(tmp_path: Any) -> None:
    import socket
    import subprocess
    import sys
    import time

    headers = [
        (b"x-custom", b"one"),
        (b"x-custom", b"two"),
        (b"cookie", b"a=1"),
        (b"cookie", b"b=2"),
    ]
    ours = build_environ(message(headers=[[b"host", b"x"], *map(list, headers)]), io.BytesIO())
    (tmp_path / "echo_app.py").write_text(_ECHO_APP)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "echo_app:app"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.1)
        raw = b"GET / HTTP/1.0\r\nHost: x\r\n"
        raw += b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"
        client.sendall(raw)
        response = b""
        while chunk := client.recv(65536):
            response += chunk
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)
    gunicorn_body = response.split(b"\r\n\r\n", 1)[1].decode()
    assert gunicorn_body.split("|")[0] == ours["HTTP_X_CUSTOM"] == "one,two"
    # Cookies are joined with "; " (RFC 6265 5.4; werkzeug, wsgiref and Channels 1.x
    # do so), since cookie parsers split on ";" only: this gunicorn gives "a=1,b=2".
    assert ours["HTTP_COOKIE"] == "a=1; b=2"
