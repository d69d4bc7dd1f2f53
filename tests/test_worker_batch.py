"""The worker's data path: one call takes up to one message per free thread, none
waits behind another, and http.request cannot starve the websocket.* channels."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any

import pytest
from _worker_helpers import http_message, read_reply, running_worker

from wsgi_channels.layers.aio import async_face
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


class CombiningLayer(MemoryChannelLayer):
    """A real memory layer that counts the replies sent with a receive in one call."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.combined = 0

    def send_then_receive(self, items: Any, channels: Any, max_messages: int = 1) -> Any:
        self.combined += 1
        return super().send_then_receive(items, channels, max_messages)


def _hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"hi"]


@pytest.mark.parametrize("in_process", [False, True], ids=["other-process", "in-process"])
def test_a_reply_handed_over_in_process_takes_no_receive_with_it(in_process: bool) -> None:
    # A worker answering an interface of another process sends its last reply and
    # takes its next message in one call (one round trip on Redis). When the reply's
    # prefix is listened on in this process (wsgi-channels run), it is handed over
    # without the layer, and a receive with it would only compete with the loop that
    # writes the response: the reply goes alone.
    layer = CombiningLayer(receive_timeout=0.2)
    prefix = "inproc!"
    got: queue.Queue[dict[str, Any]] = queue.Queue()
    loop = asyncio.new_event_loop()
    face: Any = None
    if in_process:

        async def listen() -> Any:
            f = async_face(layer)
            f.listen([prefix], lambda entries: [got.put(m) for _c, m in entries])
            return f

        runner = threading.Thread(target=loop.run_forever, daemon=True)
        runner.start()
        face = asyncio.run_coroutine_threadsafe(listen(), loop).result(5)
    try:
        with running_worker(_hello, layer, threads=2):
            for i in range(5):
                message = http_message(layer, path=f"/{i}", prefix=prefix)
                layer.send("http.request", message)
                if in_process:
                    assert got.get(timeout=5)["content"] == b"hi"
                else:
                    assert read_reply(layer, message["reply_channel"]).body == b"hi"
                time.sleep(0.01)  # concurrency 1: the next after the answer
        assert layer.hands_over(f"{prefix}x") is in_process
    finally:
        if face is not None:
            asyncio.run_coroutine_threadsafe(face.aclose(), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)
            runner.join(5)
        loop.close()
    assert (layer.combined == 0) is in_process, layer.combined
