"""The worker's data path: one call takes up to one message per free thread, none
waits behind another, and http.request cannot starve the websocket.* channels."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _worker_helpers import (
    app,
    http_message,
    read_reply,
    reply_prefix,
    request,
    running_worker,
    ws_event,
    ws_message,
)

from wsgi_channels import worker as worker_module
from wsgi_channels.layers.memory import MemoryChannelLayer


def _sleepy_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    time.sleep(0.4)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["PATH_INFO"].encode()]


class CountingLayer(MemoryChannelLayer):
    """A real memory layer that remembers how many messages each batch call returned."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batches: list[int] = []

    def receive_batch(self, channels: Any, block: bool = False, **kwargs: Any) -> Any:
        batch = super().receive_batch(channels, block, **kwargs)
        if batch and "http.request" in channels:
            self.batches.append(len(batch))
        return batch


def _burst(layer: Any, n: int) -> list[dict[str, Any]]:
    messages = [http_message(layer, path=f"/{i}") for i in range(n)]
    for message in messages:
        layer.send("http.request", message)
    return messages


def test_messages_taken_together_run_at_once() -> None:
    # Four slow requests queued before the worker starts, four threads: the worker
    # takes them in fewer calls than messages, and all four run in parallel (none
    # waits behind another), so the last answer comes after ~0.4 s, not 1.6 s.
    layer = CountingLayer(receive_timeout=0.2)
    messages = _burst(layer, 4)
    started = time.monotonic()
    with running_worker(_sleepy_app, layer, threads=4):
        replies = [read_reply(layer, m["reply_channel"]) for m in messages]
    elapsed = time.monotonic() - started
    assert [r.body for r in replies] == [b"/0", b"/1", b"/2", b"/3"]
    assert elapsed < 1.2, elapsed
    assert sum(layer.batches) == 4
    assert max(layer.batches) <= 4


def test_never_more_than_free_threads() -> None:
    # Two threads, six slow requests: no batch is larger than the free threads, so
    # every request answers ~0.4 s after it was taken, in three waves.
    layer = CountingLayer(receive_timeout=0.2)
    messages = _burst(layer, 6)
    done: list[float] = []
    started = time.monotonic()
    with running_worker(_sleepy_app, layer, threads=2):
        for m in messages:
            read_reply(layer, m["reply_channel"])
            done.append(time.monotonic() - started)
    assert max(layer.batches) <= 2
    assert done[-1] < 2.0, done


def test_websocket_events_not_starved_by_http() -> None:
    # 40 requests queued, then one websocket.connect: the connect is served among the
    # first requests, not after all 40.
    layer = MemoryChannelLayer(receive_timeout=0.2)
    messages = _burst(layer, 40)
    connect = http_message(layer, path="/ws")
    connect["order"] = 0
    layer.send("websocket.connect", connect)
    calls: list[str] = []

    def ws_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append("ws" if "wsgi_channels.websocket" in environ else "http")
        time.sleep(0.01)
        start_response("200 OK", [])
        return [b"x"]

    with running_worker(ws_app, layer, threads=2):
        for m in messages:
            read_reply(layer, m["reply_channel"])
    assert calls.count("ws") == 1
    assert calls.index("ws") < 8, calls


def test_grace_of_a_lone_message_does_not_hold_back_the_next() -> None:
    # An idle worker takes one slow request; its thread has a short grace in which
    # idle threads wait (at concurrency 1 it takes the next request itself). A second
    # request arriving while the first runs is still taken by an idle thread once the
    # grace is over: it answers ~0.4 s after it was sent, not after the first is done.
    layer = MemoryChannelLayer(receive_timeout=0.2)
    first, second = http_message(layer, path="/first"), http_message(layer, path="/second")
    with running_worker(_sleepy_app, layer, threads=2):
        layer.send("http.request", first)
        time.sleep(0.1)  # the first is running by now
        sent = time.monotonic()
        layer.send("http.request", second)
        reply = read_reply(layer, second["reply_channel"])
        waited = time.monotonic() - sent
        assert read_reply(layer, first["reply_channel"]).body == b"/first"
    assert reply.body == b"/second"
    assert waited < 0.6, waited


def _thread_ident(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d" % threading.get_ident()]


@contextlib.contextmanager
def _worker_with_grace(
    monkeypatch: pytest.MonkeyPatch, app: Any, *, grace: float, threads: int
) -> Iterator[MemoryChannelLayer]:
    """A worker on a memory layer with its TAKE_GRACE made long, so that the rule
    under test, not the machine's speed, decides."""
    monkeypatch.setattr(worker_module, "TAKE_GRACE", grace)
    layer = MemoryChannelLayer(receive_timeout=0.2)
    with running_worker(app, layer, threads=threads):
        yield layer


def _get(layer: MemoryChannelLayer, path: str) -> bytes:
    message = http_message(layer, path=path)
    layer.send("http.request", message)
    return read_reply(layer, message["reply_channel"]).body


def test_at_concurrency_1_the_thread_that_answered_takes_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One request at a time: the thread that ran one takes the next itself (its grace
    # lets it claim the take duty at once, while idle threads wait), so the next
    # request finds that thread warm and no second receive competes with the app.
    threads: set[bytes] = set()
    with _worker_with_grace(monkeypatch, _thread_ident, grace=0.5, threads=4) as layer:
        for i in range(6):
            sent = time.monotonic()
            threads.add(_get(layer, f"/{i}"))
            assert time.monotonic() - sent < 0.3  # never held by its own grace
            time.sleep(0.01)
    assert len(threads) == 1, threads


def _voluntary_switches(native_id: int) -> int:
    with open(f"/proc/self/task/{native_id}/status") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux's /proc")
def test_at_concurrency_1_idle_threads_are_not_woken_by_each_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One request after another on 8 threads: one thread serves them all, and the
    # seven idle ones sleep through. A wake-up per request (to wait out the grace)
    # would want the GIL while the app runs, which at concurrency 1 costs more than
    # the app. The watcher of the (long) grace looks once per grace, not per request.
    served: set[int] = set()

    def native_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        served.add(threading.get_native_id())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    requests = 300
    with _worker_with_grace(monkeypatch, native_app, grace=0.05, threads=8) as layer:
        _get(layer, "/warm")
        deadline = time.monotonic() + 5
        while True:  # the pool threads, once all have started
            pool = [
                t.native_id
                for t in threading.enumerate()
                if t.name[len("wsgi-channels-") :].isdigit() and t.native_id is not None
            ]
            if len(pool) == 8 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert len(pool) == 8
        time.sleep(0.1)  # past the starting threads' first waits
        before = {n: _voluntary_switches(n) for n in pool}
        started = time.monotonic()
        for i in range(requests):
            assert _get(layer, f"/{i}") == b"ok"
        elapsed = time.monotonic() - started
        after = {n: _voluntary_switches(n) for n in pool}
    idle = sum(after[n] - before[n] for n in pool if n not in served)
    # The watcher's looks, one per TAKE_GRACE, and a few to settle who watches.
    allowed = 2 * elapsed / 0.05 + 10
    assert idle <= allowed, (idle, allowed, requests, elapsed)
    assert idle < requests / 4, (idle, requests)


class CombiningLayer(MemoryChannelLayer):
    """A real memory layer that counts the replies sent with a receive in one call."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.combined = 0

    def send_then_receive(self, items: Any, channels: Any, max_messages: int = 1) -> Any:
        self.combined += 1
        return super().send_then_receive(items, channels, max_messages)


def test_http_replies_go_alone_a_websocket_event_s_last_reply_takes_the_next() -> None:
    # An HTTP reply sent with a take of the next messages cost p99 and bought nothing;
    # a WebSocket event's last reply sent so serves echo faster (benchmarks/README.md).
    layer = CombiningLayer(receive_timeout=0.2)
    with running_worker(app, layer, threads=2):
        for _ in range(3):
            assert request(layer, path="/hello").body == b"hello"
        assert layer.combined == 0
        rc = layer.new_channel(reply_prefix())
        ws_event(layer, "connect", ws_message(rc, 0))
        replies = ws_event(layer, "receive", ws_message(rc, 1, text="hi"))
    assert replies[0]["text"] == "hi"
    assert layer.combined >= 1


def test_replies_that_meet_a_full_reply_channel_all_arrive(redis_url: str) -> None:
    # Eight requests answered at the same moment by eight threads, all to one
    # interface's reply prefix with room for one message, read slowly: a last reply
    # that a round trip in flight takes along (its thread does not wait for it) and
    # finds the channel full is retried like any reply, so every reply arrives,
    # whole and once.
    from wsgi_channels.layers.redis import RedisChannelLayer

    layer = RedisChannelLayer.from_url(redis_url + "?channel_capacity=test.full.*:1")
    try:
        prefix = "test.full.one!"
        messages = [http_message(layer, path=f"/{i}", prefix=prefix) for i in range(8)]
        for message in messages:
            layer.send("http.request", message)
        got: dict[str, list[dict[str, Any]]] = {}

        def complete() -> int:
            return sum(1 for replies in got.values() if not replies[-1].get("more_content"))

        deadline = time.monotonic() + 10
        with running_worker(_sleepy_app, layer, threads=8):
            while complete() < 8:
                assert time.monotonic() < deadline, got
                channel, reply = layer.receive([prefix], block=True)
                if channel is None:
                    continue
                got.setdefault(channel, []).append(reply)
                time.sleep(0.05)  # a slow reader: the channel stays full meanwhile
        for i, message in enumerate(messages):
            replies = got[message["reply_channel"]]
            assert [r.get("more_content", False) for r in replies][-1] is False
            assert sum(not r.get("more_content", False) for r in replies) == 1
            assert b"".join(r["content"] for r in replies) == f"/{i}".encode()
        assert len(got) == 8
    finally:
        layer.flush()
        layer.close()
