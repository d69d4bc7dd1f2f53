"""wsgi_channels.worker: a real Worker on real layers (memory, SQLite, Redis)."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _worker_helpers import (
    PROBE,
    app,
    env_with_pythonpath,
    http_message,
    prefix_of,
    read_reply,
    reply_prefix,
    request,
    running_worker,
    ws_event,
    ws_message,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsgi_channels.layers import layer_from_url
from wsgi_channels.layers.memory import MemoryChannelLayer
from wsgi_channels.protocol import CONTROL_KEY, DEADLINE_KEY, DONE_KEY, EXT_KEY
from wsgi_channels.worker import Worker


@pytest.fixture(autouse=True)
def _reset_probe() -> None:
    PROBE.reset()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def layer(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh layer of each backend (short receive timeout keeps stops quick)."""
    if request.param == "memory":
        made: Any = MemoryChannelLayer(receive_timeout=0.5)
    else:
        url = request.getfixturevalue(f"{request.param}_url")
        made = layer_from_url(url + ("&" if "?" in url else "?") + "receive_timeout=0.5")
    yield made
    made.close()


@pytest.fixture
def memory() -> MemoryChannelLayer:
    return MemoryChannelLayer(receive_timeout=0.5)


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.005)


# -- HTTP ----------------------------------------------------------------------------------


def test_http_round_trip(layer: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wsgi_channels.access")
    with running_worker(app, layer, threads=2):
        reply = request(layer, "GET", "/hello", query_string=b"a=1")
        assert (reply.status, reply.body) == (200, b"hello")
        assert reply.header(b"content-type") == b"text/plain"
        assert len(reply.messages) == 1  # Content-Length reached: one message
        reply = request(layer, "POST", "/echo", body=b"\x00binary\xff")
        assert (reply.status, reply.body) == (200, b"\x00binary\xff")
    access = [r.getMessage() for r in caplog.records if r.name == "wsgi_channels.access"]
    assert any('"GET /hello?a=1 HTTP/1.1" 200 5 ' in line for line in access), access
    assert access[0].startswith("127.0.0.1 - ")


def test_body_channel_streams_lazily(layer: Any) -> None:
    with running_worker(app, layer, threads=2):
        body_channel = layer.new_channel("http.request.body?")
        message = http_message(
            layer, "POST", "/lines", body=b"line1\nli", body_channel=body_channel
        )
        layer.send("http.request", message)
        # The worker is waiting for the rest: nothing has been answered yet.
        prefix = prefix_of(message["reply_channel"])
        assert layer.receive([prefix], block=False) == (None, None)
        for part in (b"ne2\nline3", b"\n" + b"z" * 300_000 + b"\n"):
            time.sleep(0.05)
            layer.send(body_channel, {"content": part, "closed": False, "more_content": True})
        layer.send(body_channel, {"content": b"end", "closed": False, "more_content": False})
        reply = read_reply(layer, message["reply_channel"])
        assert reply.status == 200
        assert (
            reply.body
            == b"5 " + str(len(b"line1\nline2\nline3\n" + b"z" * 300_000 + b"\nend")).encode()
        )


def test_upload_abandoned_by_the_client_is_a_400(memory: MemoryChannelLayer) -> None:
    with running_worker(app, memory):
        body_channel = memory.new_channel("http.request.body?")
        message = http_message(memory, "POST", "/echo", body=b"abc", body_channel=body_channel)
        memory.send("http.request", message)
        memory.send(body_channel, {"content": b"", "closed": True, "more_content": False})
        assert read_reply(memory, message["reply_channel"]).status == 400


def test_message_past_its_deadline_is_not_run(memory: MemoryChannelLayer) -> None:
    with running_worker(app, memory):
        late = http_message(memory, "GET", "/slow", query_string=b"t=0&id=late")
        late[DEADLINE_KEY] = time.time() - 1
        memory.send("http.request", late)
        assert request(memory, "GET", "/hello").status == 200
        assert memory.receive([prefix_of(late["reply_channel"])], block=False) == (None, None)
        assert PROBE.finished == []


def test_app_exception_is_a_generic_500(memory: MemoryChannelLayer, caplog: Any) -> None:
    with running_worker(app, memory):
        reply = request(memory, "GET", "/boom")
    assert reply.status == 500
    assert b"secret" not in reply.body and reply.body == b"Internal Server Error\n"
    errors = [r for r in caplog.records if r.name == "wsgi_channels.worker" and r.exc_info]
    assert any("secret detail" in str(r.exc_info[1]) for r in errors)


def test_header_injection_is_a_500_and_logged(memory: MemoryChannelLayer, caplog: Any) -> None:
    with running_worker(app, memory):
        reply = request(memory, "GET", "/badheader")
    assert reply.status == 500
    assert all(b"pwned" not in value for _, value in reply.headers)
    assert any("CR, LF or NUL" in r.getMessage() for r in caplog.records)


def failing_stream(environ: dict[str, Any], start_response: Any) -> Any:
    from _worker_helpers import ClosingStream

    def chunks() -> Iterator[bytes]:
        yield b"first"
        raise RuntimeError("mid-stream failure")

    start_response("200 OK", [("Content-Type", "text/plain")])
    return ClosingStream("failing", chunks())


def test_close_is_called_on_success_and_on_error(memory: MemoryChannelLayer) -> None:
    with running_worker(failing_stream, memory):
        reply = request(memory, "GET", "/")
    assert (reply.status, reply.body) == (200, b"first")  # the body ends where it failed
    assert reply.messages[-1]["more_content"] is False
    assert "failing" in PROBE.closed
    with running_worker(app, memory):
        reply = request(memory, "GET", "/stream", query_string=b"n=3&size=2&name=ok")
    assert reply.body == b"xxxxxx"
    assert "ok" in PROBE.closed


def test_malformed_message_is_a_400_and_the_worker_lives_on(
    memory: MemoryChannelLayer, caplog: Any
) -> None:
    with running_worker(app, memory):
        bad = http_message(memory, "GET", "/hello")
        del bad["method"]
        memory.send("http.request", bad)
        assert read_reply(memory, bad["reply_channel"]).status == 400
        memory.send("http.request", {"reply_channel": 42, "path": "/"})  # no usable reply
        memory.send("http.request", {"reply_channel": "bad name with spaces", "path": "/"})
        ws_bad = ws_message(memory.new_channel(reply_prefix()), 1, text=b"not text")
        assert ws_event(memory, "receive", ws_bad) == [{"close": True, DONE_KEY: 1}]
        assert request(memory, "GET", "/hello").status == 200
    assert any("malformed" in r.getMessage() for r in caplog.records)


_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
_KEYS = st.sampled_from(
    [
        "reply_channel", "path", "method", "headers", "body", "body_channel", "query_string",
        "root_path", "scheme", "http_version", "client", "server", "text", "bytes", "code",
        "order", EXT_KEY, DEADLINE_KEY,
    ]
)  # fmt: skip


def test_fuzz_arbitrary_messages_never_stop_the_worker(caplog: Any) -> None:
    layer = MemoryChannelLayer(receive_timeout=0.5, capacity=100_000)
    reply_channels = st.sampled_from(["fuzz.reply!a", "fuzz.reply!b", "fuzz.body?c"])
    good = {"reply_channel": "fuzz.reply!a", "path": "/hello", "method": "GET"}
    messages = st.fixed_dictionaries(
        {},
        optional={
            "reply_channel": reply_channels | _VALUES,
            "path": st.sampled_from(["/hello", "/echo", "/ws"]) | _VALUES,
            "method": st.sampled_from(["GET", "POST", "HEAD"]) | _VALUES,
        },
    ).flatmap(
        lambda base: st.dictionaries(_KEYS | st.text(max_size=10), _VALUES, max_size=6).map(
            lambda extra: {**good, **base, **extra}
        )
    )
    channels = st.sampled_from(
        ["http.request", "websocket.connect", "websocket.receive", "websocket.disconnect"]
    )
    with running_worker(app, layer, threads=4) as worker:

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(channel=channels, message=messages)
        def send_one(channel: str, message: dict[str, Any]) -> None:
            if message.get(DEADLINE_KEY) is not None:
                message[DEADLINE_KEY] = time.time() + 2  # never wait long on a full queue
            # Not encodable: the layer refuses it and nothing reaches the worker.
            with contextlib.suppress(Exception):
                layer.send(channel, message)

        send_one()
        wait_for(lambda: layer.channel_statistics("http.request")["messages_pending"] == 0, 20)
        reply = request(layer, "GET", "/hello")
        assert reply.status == 200
        assert worker.requests_taken > 100
    bugs = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert bugs == []


def test_client_disconnect_closes_the_iterable_within_a_second(layer: Any) -> None:
    with running_worker(app, layer, threads=2):
        message = http_message(
            layer, "GET", "/stream", query_string=b"n=100000&size=100&delay=0.01&name=dc"
        )
        layer.send("http.request", message)
        channel, first = None, None
        while channel is None:
            channel, first = layer.receive([prefix_of(message["reply_channel"])], block=True)
        assert first is not None and first["more_content"] is True
        control = first[CONTROL_KEY]
        assert control.startswith("wsgi_channels.worker.")
        sent = time.monotonic()
        layer.send(control, {"type": "http.disconnect", "reply_channel": message["reply_channel"]})
        wait_for(lambda: "dc" in PROBE.closed, timeout=3)
        assert PROBE.closed["dc"] - sent < 1.0


def test_threads_are_bounded(memory: MemoryChannelLayer) -> None:
    with running_worker(app, memory, threads=2):
        messages = [
            http_message(memory, "GET", "/slow", query_string=f"t=0.3&id={i}".encode())
            for i in range(4)
        ]
        for message in messages:
            memory.send("http.request", message)
        time.sleep(0.15)
        # Only two were taken: the other two still wait in the layer for any worker.
        assert memory.channel_statistics("http.request")["messages_pending"] == 2
        for message in messages:
            assert read_reply(memory, message["reply_channel"]).status == 200
    assert PROBE.max_running == 2


def test_graceful_stop_finishes_in_flight(memory: MemoryChannelLayer) -> None:
    worker = Worker(app, memory, threads=2, graceful_timeout=5)
    thread = threading.Thread(target=worker.run)
    thread.start()
    message = http_message(memory, "GET", "/slow", query_string=b"t=0.5&id=inflight")
    memory.send("http.request", message)
    wait_for(lambda: PROBE.running == 1)
    worker.stop()
    later = http_message(memory, "GET", "/hello")
    memory.send("http.request", later)
    thread.join(5)
    assert not thread.is_alive()
    assert read_reply(memory, message["reply_channel"]).status == 200
    assert PROBE.finished == ["inflight"]
    # Sent after the stop: either taken by the receive already under way (then answered)
    # or left in the layer for another worker; never lost.
    pending = memory.channel_statistics("http.request")["messages_pending"]
    answered = memory.receive([prefix_of(later["reply_channel"])], block=False)[0] is not None
    assert pending + answered == 1


def test_max_requests_returns_after_n(memory: MemoryChannelLayer) -> None:
    worker = Worker(app, memory, threads=2, max_requests=3)
    messages = [http_message(memory, "GET", "/hello") for _ in range(5)]
    for message in messages:
        memory.send("http.request", message)
    worker.serve()  # returns by itself
    assert worker.requests_taken == 3
    assert memory.channel_statistics("http.request")["messages_pending"] == 2


class OldStyleLayer:
    """A layer offering only the ASGI 1.0 names (and receive_many, the pre-1.0 one)."""

    def __init__(self, inner: MemoryChannelLayer) -> None:
        self.send = inner.send
        self.receive_many = inner.receive
        self.new_channel = inner.new_channel
        self.group_add = inner.group_add
        self.ChannelFull = type(inner).ChannelFull


def test_third_party_layer_with_receive_many(memory: MemoryChannelLayer) -> None:
    with running_worker(app, OldStyleLayer(memory)):
        assert request(memory, "GET", "/hello").body == b"hello"


def test_asgi10_messages_get_only_standard_keys(memory: MemoryChannelLayer) -> None:
    with running_worker(app, memory):
        reply = request(memory, "GET", "/stream", query_string=b"n=3&size=2", ext=False)
        assert reply.body == b"xxxxxx"
        reply_channel = memory.new_channel(reply_prefix())
        prefix = prefix_of(reply_channel)
        memory.send("websocket.connect", ws_message(reply_channel, 0, ext=False))
        replies = []
        while len(replies) < 2:
            channel, reply_message = memory.receive([prefix], block=True)
            if channel is not None:
                replies.append(reply_message)
    for message in [*reply.messages, *replies]:
        assert not [key for key in message if key.startswith("wsgi_channels.")], message
    assert replies == [{"accept": True}, {"text": "welcome"}]


def test_websocket_events(layer: Any) -> None:
    with running_worker(app, layer):
        rc = layer.new_channel(reply_prefix())
        assert ws_event(layer, "connect", ws_message(rc, 0)) == [
            {"accept": True},
            {"text": "welcome", DONE_KEY: 0},
        ]
        assert ws_event(layer, "receive", ws_message(rc, 1, text="hi")) == [
            {"text": "hi", DONE_KEY: 1}
        ]
        assert ws_event(layer, "receive", ws_message(rc, 2, bytes=b"\x00")) == [
            {"bytes": b"\x00", DONE_KEY: 2}
        ]
        assert ws_event(layer, "disconnect", ws_message(rc, 3, code=1001)) == [{DONE_KEY: 3}]
        rc2 = layer.new_channel(reply_prefix())
        assert ws_event(layer, "connect", ws_message(rc2, 0, path="/ws/reject")) == [
            {"close": True, DONE_KEY: 0}
        ]


# -- subprocesses: memory use, several workers ------------------------------------------------

RSS_SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    from wsgi_channels.layers import layer_from_url
    from wsgi_channels.worker import Worker
    import _worker_helpers as h

    def rss(field="VmRSS"):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024

    url, mode = sys.argv[1], sys.argv[2]
    layer = layer_from_url(url)
    worker = Worker(h.app, layer, threads=2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    # Warm up, then measure from here.
    message = h.http_message(layer, "GET", "/stream", query_string=b"n=4&size=65536")
    layer.send("http.request", message)
    h.read_reply(layer, message["reply_channel"])
    base = rss()
    print("ready", base, flush=True)
    if mode == "local":
        message = h.http_message(
            layer, "GET", "/stream", query_string=b"n=800&size=65536", timeout=60
        )
        layer.send("http.request", message)
        prefix = h.prefix_of(message["reply_channel"])
        total, peak = 0, 0
        while True:
            channel, reply = layer.receive([prefix], block=True)
            if channel is None:
                continue
            total += len(reply["content"])
            peak = max(peak, rss())
            if not reply["more_content"]:
                break
        print("done", total, peak - base, flush=True)
    else:
        sys.stdin.readline()  # the test reads the reply, then says it is done
        print("done", 0, rss("VmHWM") - base, flush=True)
    worker.stop()
    thread.join(10)
    """
)


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_50mb_streamed_response_keeps_rss_bounded(backend: str, request: Any) -> None:
    if backend == "memory":
        url, mode = "memory://", "local"
    else:
        url, mode = request.getfixturevalue("redis_url"), "remote"
    proc = subprocess.Popen(
        [sys.executable, "-c", RSS_SCRIPT, url, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env_with_pythonpath(),
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().startswith("ready")
        if mode == "remote":
            layer = layer_from_url(url)
            message = http_message(
                layer, "GET", "/stream", query_string=b"n=800&size=65536", timeout=60
            )
            layer.send("http.request", message)
            reply = read_reply(layer, message["reply_channel"], timeout=60)
            assert len(reply.body) == 800 * 65536
            del reply
            layer.close()
            proc.stdin.write("\n")
            proc.stdin.flush()
        _, total, growth = proc.stdout.readline().split()
        if mode == "local":
            assert int(total) == 800 * 65536
        print(f"{backend}: RSS growth {int(growth) / 2**20:.1f} MiB for a 50 MiB response")
        assert int(growth) < 64 * 2**20
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


ORDER_APP = textwrap.dedent(
    """
    import os, random, time
    from wsgi_channels.layers import layer_from_url
    from wsgi_channels.worker import Worker

    LOG = os.environ["ORDER_LOG"]

    def app(environ, start_response):
        event = environ["wsgi_channels.websocket"]
        data = environ["wsgi.input"].read() if event == "receive" else b""
        time.sleep(random.random() * 0.002)  # jitter: a faster worker may overtake
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{os.getpid()} {event} {data.decode()}\\n".encode())
        os.close(fd)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [data]

    layer = layer_from_url(os.environ["LAYER_URL"] + "?receive_timeout=0.5")
    print("ready", flush=True)
    Worker(app, layer, threads=4).run()
    """
)


def test_websocket_burst_in_order_across_worker_processes(redis_url: str, tmp_path: Any) -> None:
    log_path = tmp_path / "order.log"
    env = env_with_pythonpath(ORDER_LOG=str(log_path), LAYER_URL=redis_url)
    procs = [
        subprocess.Popen([sys.executable, "-c", ORDER_APP], env=env, stdout=subprocess.PIPE)
        for _ in range(3)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().startswith(b"ready")
        layer = layer_from_url(redis_url)
        rc = layer.new_channel(reply_prefix())
        assert ws_event(layer, "connect", ws_message(rc, 0))[0]["accept"] is True
        # A burst of 200 frames, fed as our interface does: n+1 only after done n.
        echoed = []
        for n in range(1, 201):
            for reply in ws_event(layer, "receive", ws_message(rc, n, text=str(n))):
                if "text" in reply:
                    echoed.append(int(reply["text"]))
        assert echoed == list(range(1, 201))
        lines = [line.split() for line in log_path.read_text().splitlines()]
        frames = [int(parts[2]) for parts in lines if parts[1] == "receive"]
        assert frames == list(range(1, 201))
        assert len({parts[0] for parts in lines}) > 1, "one process took every event"
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(10) == 0
            assert proc.stdout is not None
            proc.stdout.close()


# -- scheduling -----------------------------------------------------------------------


def _policy_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    import os

    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.sched_getscheduler(0)).encode()]


@pytest.mark.skipif(not hasattr(__import__("os"), "SCHED_BATCH"), reason="no SCHED_BATCH here")
@pytest.mark.parametrize(
    ("environment", "argument", "batch"),
    [
        pytest.param(None, None, True, id="default"),
        pytest.param("off", None, False, id="environment-off"),
        pytest.param("1", None, True, id="environment-on"),
        pytest.param("0", True, True, id="argument-wins"),
        pytest.param(None, False, False, id="argument-off"),
    ],
)
def test_the_app_runs_under_sched_batch_unless_told_not_to(
    memory: MemoryChannelLayer,
    monkeypatch: pytest.MonkeyPatch,
    environment: str | None,
    argument: bool | None,
    batch: bool,
) -> None:
    import os

    if environment is None:
        monkeypatch.delenv("WSGI_CHANNELS_BATCH_SCHEDULING", raising=False)
    else:
        monkeypatch.setenv("WSGI_CHANNELS_BATCH_SCHEDULING", environment)
    caller = os.sched_getscheduler(0)
    with running_worker(_policy_app, memory, batch_scheduling=argument) as worker:
        assert worker.batch_scheduling is batch
        reply = request(memory, "GET", "/")
    assert int(reply.body) == (os.SCHED_BATCH if batch else os.SCHED_OTHER)
    assert os.sched_getscheduler(0) == caller  # only the worker's own threads


def test_a_bad_batch_scheduling_variable_is_a_configuration_error(
    memory: MemoryChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsgi_channels.layers.base import ConfigurationError

    monkeypatch.setenv("WSGI_CHANNELS_BATCH_SCHEDULING", "sometimes")
    with pytest.raises(ConfigurationError, match="WSGI_CHANNELS_BATCH_SCHEDULING='sometimes'"):
        Worker(app, memory)
