"""The sender (SPEC §7): Channel, Group and ChannelsMiddleware, on every layer."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RedisServer, needs_redis

from wsgi_channels import (
    Channel,
    ChannelFull,
    ChannelsMiddleware,
    Group,
    InvalidChannelName,
    InvalidMessage,
    LayerUnavailable,
    MessageTooLarge,
)
from wsgi_channels.layers import (
    LAYER_ENV,
    get_default_layer,
    layer_from_url,
    set_default_layer,
)
from wsgi_channels.layers.memory import MemoryChannelLayer

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_default_layer(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No WSGI_CHANNELS_LAYER and no default layer made yet; forgotten again after."""
    monkeypatch.delenv(LAYER_ENV, raising=False)
    set_default_layer(None)
    yield
    set_default_layer(None)


def drain(layer: Any, channels: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """Every message waiting on *channels* now."""
    got = []
    while True:
        channel, message = layer.receive(channels)
        if channel is None:
            return got
        got.append((channel, message))


# -- Channel and Group on every layer ----------------------------------------------


def test_channel_send(layer: Any) -> None:
    Channel("sender.test", layer=layer).send({"text": "hello", "n": 1})
    assert layer.receive(["sender.test"]) == ("sender.test", {"text": "hello", "n": 1})


def test_channel_send_to_process_local_channel(layer: Any) -> None:
    reply = layer.new_channel("sender.reply!")
    Channel(reply, layer=layer).send({"bytes": b"\x00\xff"})
    assert layer.receive(["sender.reply!"]) == (reply, {"bytes": b"\x00\xff"})


def test_channel_send_errors_are_the_named_ones(layer: Any) -> None:
    with pytest.raises(MessageTooLarge):
        Channel("sender.big", layer=layer).send({"bytes": b"x" * (2 * 1024 * 1024)})
    with pytest.raises(InvalidMessage):
        Channel("sender.bad", layer=layer).send({"value": {1, 2}})


def test_channel_full(make_layer: Callable[..., Any]) -> None:
    layer = make_layer(capacity=2)
    channel = Channel("sender.full", layer=layer)
    channel.send({"n": 1})
    channel.send({"n": 2})
    with pytest.raises(ChannelFull):
        channel.send({"n": 3})


def test_group_add_send_discard(layer: Any) -> None:
    group = Group("sender.group", layer=layer)
    first = layer.new_channel("sender.proc!")
    second = layer.new_channel("sender.proc!")
    group.add(first)
    group.add(second)
    group.add("sender.plain")
    assert sorted(group.channels()) == sorted([first, second, "sender.plain"])

    group.send({"text": "to all"})
    got = drain(layer, ["sender.proc!", "sender.plain"])
    assert sorted(channel for channel, _ in got) == sorted([first, second, "sender.plain"])
    assert all(message == {"text": "to all"} for _, message in got)

    group.discard(second)
    group.discard("never.a.member")
    assert sorted(group.channels()) == sorted([first, "sender.plain"])
    group.send({"text": "again"})
    got = drain(layer, ["sender.proc!", "sender.plain"])
    assert sorted(channel for channel, _ in got) == sorted([first, "sender.plain"])


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: Channel("has space"), id="channel-space"),
        pytest.param(lambda: Channel("x" * 100), id="channel-too-long"),
        pytest.param(lambda: Channel("prefix.only!"), id="channel-no-local-part"),
        pytest.param(lambda: Channel("prefix.only?"), id="channel-no-local-part-?"),
        pytest.param(lambda: Channel(42), id="channel-not-str"),  # type: ignore[arg-type]
        pytest.param(lambda: Group("a!b"), id="group-bang"),
        pytest.param(lambda: Group(""), id="group-empty"),
        pytest.param(lambda: Group("é"), id="group-non-ascii"),
        pytest.param(lambda: Group("g" * 100), id="group-too-long"),
    ],
)
def test_names_are_checked_at_construction(make: Callable[[], object]) -> None:
    with pytest.raises(InvalidChannelName) as info:
        make()
    assert isinstance(info.value, ValueError)


def test_valid_names_are_accepted() -> None:
    assert Channel("a-b_c.d?x").name == "a-b_c.d?x"
    assert Channel("websocket.reply!abc").name == "websocket.reply!abc"
    assert Group("g" * 99).name == "g" * 99


def test_targets_compare_by_name_and_layer() -> None:
    layer = MemoryChannelLayer()
    assert Group("a", layer=layer) == Group("a", layer=layer)
    assert Group("a") != Group("a", layer=layer)
    assert Group("a") != Channel("a")
    assert len({Group("a"), Group("a")}) == 1
    assert repr(Group("liveblog")) == "Group('liveblog')"


# -- the default layer ------------------------------------------------------------


@pytest.mark.parametrize("layer_backend", ["memory", "sqlite", "redis"])
def test_default_layer_from_environment(
    layer_url: str, monkeypatch: pytest.MonkeyPatch, no_default_layer: None
) -> None:
    # Made before the variable is set: the layer is looked up when sending.
    group = Group("sender.env")
    monkeypatch.setenv(LAYER_ENV, layer_url)
    default = get_default_layer()
    try:
        reply = default.new_channel("sender.env!")
        group.add(reply)
        group.send({"text": "via env"})
        Channel("sender.env.direct").send({"n": 1})
        reader = default if layer_url == "memory://" else layer_from_url(layer_url)
        try:
            assert reader.receive(["sender.env.direct"]) == ("sender.env.direct", {"n": 1})
            assert default.receive(["sender.env!"]) == (reply, {"text": "via env"})
        finally:
            if reader is not default:
                reader.close()
    finally:
        default.close()


def test_set_default_layer_is_used(no_default_layer: None) -> None:
    layer = MemoryChannelLayer()
    set_default_layer(layer)
    Channel("sender.explicit").send({"ok": True})
    assert layer.receive(["sender.explicit"]) == ("sender.explicit", {"ok": True})


def test_layer_argument_overrides_default(no_default_layer: None) -> None:
    default, own = MemoryChannelLayer(), MemoryChannelLayer()
    set_default_layer(default)
    Channel("sender.own", layer=own).send({"n": 1})
    assert default.receive(["sender.own"]) == (None, None)
    assert own.receive(["sender.own"]) == ("sender.own", {"n": 1})


@pytest.mark.parametrize("layer_backend", ["sqlite", "redis"])
def test_default_layer_is_made_anew_after_fork(
    layer_url: str, monkeypatch: pytest.MonkeyPatch, no_default_layer: None
) -> None:
    monkeypatch.setenv(LAYER_ENV, layer_url)
    parent_layer = get_default_layer()
    Channel("sender.fork").send({"from": "parent"})  # the parent has used its layer
    assert parent_layer.receive(["sender.fork"]) == ("sender.fork", {"from": "parent"})

    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads; this child only
        # sends one message and leaves with os._exit.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            child_layer = get_default_layer()
            Channel("sender.fork").send({"from": "child", "pid": os.getpid()})
            code = 0 if child_layer is not parent_layer else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    channel, message = parent_layer.receive(["sender.fork"], block=True)
    assert channel == "sender.fork"
    assert message == {"from": "child", "pid": pid}
    assert get_default_layer() is parent_layer
    parent_layer.close()


def test_django_setting_names_the_layer(sqlite_url: str) -> None:
    script = textwrap.dedent(
        f"""
        from django.conf import settings
        settings.configure(WSGI_CHANNELS_LAYER={sqlite_url!r})
        from wsgi_channels import Channel
        Channel("sender.django").send({{"from": "django"}})
        """
    )
    env = {k: v for k, v in os.environ.items() if k != LAYER_ENV}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=str(Path(sqlite_url.removeprefix("sqlite:///")).parent),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    with layer_from_url(sqlite_url) as layer:
        assert layer.receive(["sender.django"]) == ("sender.django", {"from": "django"})


@needs_redis
def test_redis_outage_gives_layer_unavailable_with_masked_url() -> None:
    server = RedisServer("--requirepass", "s3cret-pw")
    server.start()
    try:
        layer = layer_from_url(f"redis://:s3cret-pw@127.0.0.1:{server.port}/0")
        channel = Channel("sender.outage", layer=layer)
        channel.send({"n": 1})
        server.stop()
        with pytest.raises(LayerUnavailable) as info:
            channel.send({"n": 2})
        assert "s3cret-pw" not in str(info.value)
        assert f"127.0.0.1:{server.port}" in str(info.value)
        server.start()
        channel.send({"n": 3})  # reconnects by itself
        layer.close()
    finally:
        server.cleanup()


# -- ChannelsMiddleware -----------------------------------------------------------


class Call:
    """Runs a WSGI app the way a server does, step by step."""

    def __init__(self, app: Any, environ: dict[str, Any] | None = None) -> None:
        self.app = app
        self.environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/", **(environ or {})}
        self.status: str | None = None

    def start_response(self, status: str, headers: list[Any], exc_info: Any = None) -> Any:
        if exc_info is not None and self.status is not None:
            raise exc_info[1].with_traceback(exc_info[2])
        self.status = status
        return lambda data: None

    def start(self) -> Iterable[bytes]:
        return self.app(self.environ, self.start_response)  # type: ignore[no-any-return]

    def run(self) -> bytes:
        response = self.start()
        try:
            return b"".join(response)
        finally:
            close = getattr(response, "close", None)
            if close is not None:
                close()


def make_app(behaviour: str) -> Any:
    """A WSGI app that sends to a group and a channel, then behaves as told."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        Group("mw.group").send({"text": "group"})
        Channel("mw.channel").send({"text": "channel"})
        if behaviour == "raise":
            raise RuntimeError("view failed")
        status = "500 Internal Server Error" if behaviour == "500" else "200 OK"
        if behaviour == "exc_info":
            try:
                raise RuntimeError("handled")
            except RuntimeError:
                start_response("500 Internal Server Error", [], sys.exc_info())
                return [b"error"]
        start_response(status, [("Content-Type", "text/plain")])
        if behaviour == "raise_in_iteration":
            return failing_body()
        return [b"body"]

    return app


def failing_body() -> Iterator[bytes]:
    yield b"start"
    raise RuntimeError("iteration failed")


@pytest.mark.parametrize(
    ("behaviour", "delivered"),
    [
        pytest.param("200", True, id="200-sends"),
        pytest.param("500", False, id="500-holds-back"),
        pytest.param("exc_info", False, id="error-response-holds-back"),
        pytest.param("raise", False, id="exception-holds-back"),
        pytest.param("raise_in_iteration", False, id="exception-in-body-holds-back"),
    ],
)
def test_middleware_delivers_only_after_success(
    layer: Any, behaviour: str, delivered: bool
) -> None:
    Group("mw.group", layer=layer).add("mw.member")
    call = Call(ChannelsMiddleware(make_app(behaviour), layer=layer))
    try:
        call.run()
    except RuntimeError:
        assert behaviour.startswith("raise")
    got = drain(layer, ["mw.channel", "mw.member"])
    expected = [("mw.member", {"text": "group"}), ("mw.channel", {"text": "channel"})]
    assert sorted(got) == (sorted(expected) if delivered else [])


def test_middleware_holds_until_close(layer: Any) -> None:
    call = Call(ChannelsMiddleware(make_app("200"), layer=layer))
    response = call.start()
    assert b"".join(response) == b"body"
    assert layer.receive(["mw.channel"]) == (None, None)
    response.close()  # type: ignore[attr-defined]
    assert layer.receive(["mw.channel"]) == ("mw.channel", {"text": "channel"})


def test_middleware_drops_an_abandoned_response() -> None:
    layer = MemoryChannelLayer()

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"one"
        Channel("mw.stream").send({"n": 2})
        yield b"two"

    response = Call(ChannelsMiddleware(app, layer=layer)).start()
    assert next(iter(response)) == b"one"
    response.close()  # type: ignore[attr-defined]  # the client went away
    assert layer.receive(["mw.stream"]) == (None, None)


@pytest.mark.parametrize(
    ("method", "content_length", "chunks_read", "delivered"),
    [
        pytest.param("GET", "6", 2, True, id="stopped-at-content-length"),
        pytest.param("GET", "6", 1, False, id="stopped-before-content-length"),
        pytest.param("GET", None, 2, False, id="no-length-not-exhausted"),
        pytest.param("HEAD", "6", 1, True, id="head-stopped-after-headers"),
    ],
)
def test_middleware_finished_response(
    method: str, content_length: str | None, chunks_read: int, delivered: bool
) -> None:
    layer = MemoryChannelLayer()

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        Channel("mw.finished").send({"n": 1})
        headers = [("Content-Length", content_length)] if content_length else []
        start_response("200 OK", headers)
        yield b"abc"
        yield b"def"
        yield b""  # never reached by a server that counts Content-Length

    response = Call(ChannelsMiddleware(app, layer=layer), {"REQUEST_METHOD": method}).start()
    iterator = iter(response)
    for _ in range(chunks_read):
        next(iterator)
    response.close()  # type: ignore[attr-defined]
    expected = ("mw.finished", {"n": 1}) if delivered else (None, None)
    assert layer.receive(["mw.finished"]) == expected


def test_middleware_keeps_the_order_and_sends_made_while_streaming() -> None:
    layer = MemoryChannelLayer()
    closed = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            Channel("mw.order").send({"n": 2})
            yield b"x"
            Channel("mw.order").send({"n": 3})

        def close(self) -> None:
            Channel("mw.order").send({"n": 4})
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        Channel("mw.order").send({"n": 1})
        start_response("201 Created", [])
        return Body()

    call = Call(ChannelsMiddleware(app, layer=layer))
    assert call.run() == b"x"
    assert closed == [True]
    assert [m["n"] for _, m in drain(layer, ["mw.order"])] == [1, 2, 3, 4]


def test_middleware_immediate_sends_at_once() -> None:
    layer = MemoryChannelLayer()
    seen_during_request = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        Channel("mw.now").send({"n": 1})
        seen_during_request.append(layer.receive(["mw.now"]))
        start_response("500 Internal Server Error", [])
        return [b""]

    Call(ChannelsMiddleware(app, layer=layer, immediate=True)).run()
    assert seen_during_request == [("mw.now", {"n": 1})]


def test_middleware_checks_messages_when_they_are_sent() -> None:
    layer = MemoryChannelLayer()
    errors = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        for message in ({"bad": object()}, {"bytes": b"x" * (2 * 1024 * 1024)}):
            try:
                Channel("mw.check").send(message)
            except (InvalidMessage, MessageTooLarge) as exc:
                errors.append(type(exc))
        message = {"list": [1]}
        Channel("mw.check").send(message)
        message["list"].append(2)  # later changes do not reach the held copy
        start_response("200 OK", [])
        return [b""]

    Call(ChannelsMiddleware(app, layer=layer)).run()
    assert errors == [InvalidMessage, MessageTooLarge]
    assert drain(layer, ["mw.check"]) == [("mw.check", {"list": [1]})]


def test_middleware_logs_a_delivery_that_fails_after_the_response(
    caplog: pytest.LogCaptureFixture,
) -> None:
    layer = MemoryChannelLayer(capacity=1)
    Channel("mw.full", layer=layer).send({"n": 0})

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        Channel("mw.full").send({"n": 1})
        Channel("mw.other").send({"n": 2})
        start_response("200 OK", [])
        return [b""]

    with caplog.at_level(logging.ERROR, logger="wsgi_channels.sender"):
        Call(ChannelsMiddleware(app, layer=layer)).run()
    assert "mw.full" in caplog.text
    assert layer.receive(["mw.other"]) == ("mw.other", {"n": 2})


def test_middleware_layer_choice(no_default_layer: None) -> None:
    default, from_worker, explicit = (MemoryChannelLayer() for _ in range(3))
    set_default_layer(default)
    seen = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["wsgi_channels.layer"])
        Channel("mw.where").send({"n": len(seen)})
        start_response("200 OK", [])
        return [b""]

    Call(ChannelsMiddleware(app)).run()
    Call(ChannelsMiddleware(app), {"wsgi_channels.layer": from_worker}).run()
    Call(ChannelsMiddleware(app, layer=explicit), {"wsgi_channels.layer": from_worker}).run()
    assert seen == [default, from_worker, explicit]
    assert default.receive(["mw.where"]) == ("mw.where", {"n": 1})
    assert from_worker.receive(["mw.where"]) == ("mw.where", {"n": 2})
    assert explicit.receive(["mw.where"]) == ("mw.where", {"n": 3})
    # Outside a request the default layer is used again.
    Channel("mw.where").send({"n": 4})
    assert default.receive(["mw.where"]) == ("mw.where", {"n": 4})


def test_nested_middleware_the_outer_one_decides() -> None:
    layer = MemoryChannelLayer()

    def inner_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        Channel("mw.nested").send({"n": 1})
        start_response("200 OK", [])
        return [b""]

    inner = ChannelsMiddleware(inner_app, layer=layer)

    def outer_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        def failing_start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
            return start_response("502 Bad Gateway", headers)

        return inner(environ, failing_start_response)

    Call(ChannelsMiddleware(outer_app, layer=layer)).run()
    assert layer.receive(["mw.nested"]) == (None, None)


def test_middleware_does_not_hold_back_group_membership() -> None:
    layer = MemoryChannelLayer()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        Group("mw.members").add("mw.someone")
        start_response("500 Internal Server Error", [])
        return [b""]

    Call(ChannelsMiddleware(app, layer=layer)).run()
    assert Group("mw.members", layer=layer).channels() == ["mw.someone"]


INVALID_REPLIES = [
    pytest.param({"text": {"oops": 1}}, id="text-dict"),
    pytest.param({"text": 1}, id="text-int"),
    pytest.param({"bytes": "not bytes"}, id="bytes-str"),
    pytest.param({"close": "soon"}, id="close-str"),
    pytest.param({"close": 1006}, id="close-reserved-code"),
    pytest.param({"accept": 1}, id="accept-int"),
]


@pytest.mark.parametrize("message", INVALID_REPLIES)
@pytest.mark.parametrize("target", ["channel", "group"])
def test_invalid_websocket_reply_is_refused(layer: Any, target: str, message: Any) -> None:
    Group("sockets", layer=layer).add("sockets.member")
    sender = (
        Channel("sockets.member", layer=layer)
        if target == "channel"
        else Group("sockets", layer=layer)
    )
    with pytest.raises(InvalidMessage, match="not a valid WebSocket message"):
        sender.send(message)
    assert drain(layer, ["sockets.member"]) == []


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({"text": "hi"}, id="text"),
        pytest.param({"bytes": b"\x00"}, id="bytes"),
        pytest.param({"close": True}, id="close-true"),
        pytest.param({"close": 4000}, id="close-app-code"),
        pytest.param({"accept": True}, id="accept"),
        pytest.param({"kind": "job", "payload": {"n": 1}}, id="not-a-reply"),
    ],
)
def test_valid_messages_are_sent(layer: Any, message: Any) -> None:
    Group("sockets", layer=layer).add("sockets.member")
    Group("sockets", layer=layer).send(message)
    Channel("sockets.member", layer=layer).send(message)
    assert drain(layer, ["sockets.member"]) == [("sockets.member", message)] * 2


def test_middleware_refuses_invalid_reply_in_the_view(layer: Any) -> None:
    Group("mw.group", layer=layer).add("mw.member")
    raised: list[BaseException] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        Group("mw.group").send({"text": "fine"})
        try:
            Group("mw.group").send({"text": {"oops": 1}})
        except InvalidMessage as exc:
            raised.append(exc)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    Call(ChannelsMiddleware(app, layer=layer)).run()
    assert len(raised) == 1
    assert drain(layer, ["mw.member"]) == [("mw.member", {"text": "fine"})]
