"""The asyncio face of every layer: the same rules as the synchronous API, with sends
of one loop turn batched, receives drained many at a time, and sends to a listened
prefix of this process handed over without the layer."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from test_layer_contract import drain

from wsgi_channels.layers.aio import Entry, async_face
from wsgi_channels.layers.base import ChannelFull, InvalidChannelName, MessageTooLarge


class Collector:
    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.changed = asyncio.Event()

    def __call__(self, entries: list[Entry]) -> None:
        self.entries.extend(entries)
        self.changed.set()

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Entry]:
        deadline = time.monotonic() + timeout
        while sum(len(c) for c, _ in self.entries) < count:
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                break
        return self.entries


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_face_send_reaches_a_synchronous_reader_in_order(layer: Any) -> None:
    async def main() -> None:
        face = async_face(layer)
        await asyncio.gather(*(face.send("faces.q", {"n": i}) for i in range(50)))
        await face.aclose()

    run(main())
    got = []
    while len(got) < 50:
        channel, message = layer.receive(["faces.q"], block=True)
        assert channel == "faces.q"
        got.append(message["n"])
    assert got == list(range(50))


@pytest.mark.parametrize("layer_backend", ["sqlite", "redis"])  # memory:// is one object
def test_face_listen_drains_a_process_queue_sent_from_another_layer_object(
    make_layer: Any, layer_backend: str
) -> None:
    reader, writer = make_layer(), make_layer()
    prefix = "faces.proc!"
    channels = [reader.new_channel(prefix) for _ in range(3)]

    async def main() -> list[Entry]:
        face = async_face(reader)
        got = Collector()
        face.listen([prefix], got)
        await asyncio.sleep(0.05)
        thread = threading.Thread(
            target=lambda: [writer.send(c, {"i": i}) for i in range(20) for c in channels]
        )
        thread.start()
        entries = await got.wait_for(60)
        thread.join()
        await face.aclose()
        return entries

    entries = run(main())
    per_channel: dict[str, list[int]] = {c: [] for c in channels}
    for members, message in entries:
        for member in members:
            per_channel[member].append(message["i"])
    assert all(values == list(range(20)) for values in per_channel.values())


def test_face_group_message_comes_once_with_its_local_members(
    make_layer: Any, layer_backend: str
) -> None:
    reader = make_layer()
    sender = reader if layer_backend == "memory" else make_layer()
    prefix = "faces.grp!"
    members = [reader.new_channel(prefix) for _ in range(100)]
    for member in members:
        sender.group_add("room", member)

    async def main() -> list[Entry]:
        face = async_face(reader)
        got = Collector()
        face.listen([prefix], got)
        await asyncio.sleep(0.05)
        await asyncio.get_running_loop().run_in_executor(
            None, sender.send_group, "room", {"text": "hi"}
        )
        entries = await got.wait_for(100)
        await face.aclose()
        return entries

    entries = run(main())
    assert len(entries) == 1
    assert sorted(entries[0][0]) == sorted(members)
    assert entries[0][1] == {"text": "hi"}


def test_face_send_to_a_listened_prefix_skips_the_layer(layer: Any) -> None:
    prefix = "faces.self!"
    channel = layer.new_channel(prefix)

    async def main() -> list[Entry]:
        face = async_face(layer)
        got = Collector()
        face.listen([prefix], got)
        await face.send(channel, {"x": 1})
        # A worker thread of the same process replying through the sync API.
        await asyncio.get_running_loop().run_in_executor(None, layer.send, channel, {"x": 2})
        entries = await got.wait_for(2)
        await face.aclose()
        return entries

    entries = run(main())
    assert [m for _c, m in entries] == [{"x": 1}, {"x": 2}]
    assert layer.channel_statistics(channel)["messages_pending"] == 0


def test_face_keeps_receiving_after_a_fault_it_did_not_expect(
    layer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Whatever ends a receive (here a deliver callback that raises once) is logged,
    # and the face receives again: replies and group messages after it still arrive.
    got = Collector()
    failed = []

    def deliver(entries: list[Entry]) -> None:
        if not failed:
            failed.append(entries)
            raise RuntimeError("a deliver bug")
        got(entries)

    async def main() -> list[Entry]:
        face = async_face(layer)
        face.listen(["faces.restart"], deliver)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, layer.send, "faces.restart", {"n": 1})
        while not failed:
            await asyncio.sleep(0.01)
        for n in (2, 3):
            await loop.run_in_executor(None, layer.send, "faces.restart", {"n": n})
        entries = await got.wait_for(2)
        await face.aclose()
        return entries

    with caplog.at_level("ERROR", logger="wsgi_channels.layers"):
        entries = run(main())
    assert [m for _c, m in entries] == [{"n": 2}, {"n": 3}]
    assert "receiving from the channel layer failed; starting again" in caplog.text
    assert "a deliver bug" in caplog.text


def test_face_send_errors_are_the_layers(make_layer: Any) -> None:
    layer = make_layer(capacity=2)

    async def main() -> None:
        face = async_face(layer)
        await face.send("faces.full", {})
        await face.send("faces.full", {})
        with pytest.raises(ChannelFull):
            await face.send("faces.full", {})
        with pytest.raises(InvalidChannelName):
            await face.send("bad name", {})
        with pytest.raises(MessageTooLarge):
            await face.send("faces.big", {"b": b"x" * (2 * 1024 * 1024)})
        # In one burst, each message gets its own answer.
        results = await asyncio.gather(
            *(face.send("faces.burst", {"i": i}) for i in range(4)), return_exceptions=True
        )
        assert [isinstance(r, ChannelFull) for r in results] == [False, False, True, True]
        await face.aclose()

    run(main())
    assert layer.global_statistics()["channel_full_count"] >= 3


def test_send_many_answers_each_message(make_layer: Any) -> None:
    layer = make_layer(capacity=1)
    results = layer.send_many([("a.one", {}), ("a.one", {}), ("bad name", {}), ("a.two", {})])
    assert results[0] is None and results[3] is None
    assert isinstance(results[1], ChannelFull)
    assert isinstance(results[2], InvalidChannelName)


def test_receive_batch_takes_many_records_in_order(layer: Any) -> None:
    for i in range(30):
        layer.send("batch.q", {"i": i})
    batch = layer.receive_batch(["batch.q"], block=True, max_messages=20, max_records=20)
    assert [m["i"] for _c, m in batch] == list(range(20))
    rest = layer.receive_batch(["batch.q"], block=False, max_messages=20, max_records=20)
    assert [m["i"] for _c, m in rest] == list(range(20, 30))


def test_concurrent_thread_sends_all_arrive(layer: Any) -> None:
    def burst(base: int) -> None:
        for i in range(50):
            layer.send("combine.q", {"i": base + i})

    threads = [threading.Thread(target=burst, args=(k * 1000,)) for k in range(8)]
    layer_capacity = layer.get_capacity("combine.q")
    if layer_capacity < 400:
        layer.capacity = 1000
        layer._capacity_cache.clear()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    got = [
        m["i"] for _c, m in layer.receive_batch(["combine.q"], max_messages=1000, max_records=1000)
    ]
    while len(got) < 400:
        more = layer.receive_batch(["combine.q"], max_messages=1000, max_records=1000)
        if not more:
            break
        got += [m["i"] for _c, m in more]
    assert sorted(got) == sorted(k * 1000 + i for k in range(8) for i in range(50))
    for k in range(8):  # each thread's sends keep their order
        mine = [v for v in got if v // 1000 == k]
        assert mine == sorted(mine)


def test_send_then_receive_sends_and_takes_what_is_waiting(make_layer: Any) -> None:
    layer = make_layer(capacity=2, expiry=1)
    for i in range(3):
        layer.send("str.in" if i < 2 else "str.other", {"i": i})
    layer.send("str.reply", {"r": 0})
    layer.send("str.reply", {"r": 1})
    results, batch = layer.send_then_receive(
        [("str.reply", {"r": 2}), ("bad name", {}), ("str.out", {"o": 1})],
        ["str.in", "str.other"],
        max_messages=2,
    )
    # A send refused (full, bad name) does not stop the others nor the receive.
    assert isinstance(results[0], ChannelFull)
    assert isinstance(results[1], InvalidChannelName)
    assert results[2] is None
    assert layer.receive(["str.out"]) == ("str.out", {"o": 1})
    # At most max_messages (Redis takes them from one channel per trip), in order per
    # channel; the rest stays for later.
    assert 1 <= len(batch) <= 2
    taken = [m["i"] for _c, m in batch]
    rest = [m["i"] for _c, m in drain(layer, ["str.in", "str.other"])]
    assert sorted(taken + rest) == [0, 1, 2]
    assert [i for i in taken + rest if i < 2] == [0, 1]
    # Nothing waiting: an empty batch at once, never a wait.
    started = time.monotonic()
    results, batch = layer.send_then_receive([("str.reply2", {"r": 3})], ["str.in"], 4)
    assert (results, batch) == ([None], [])
    assert time.monotonic() - started < 0.5
    assert layer.receive(["str.reply2"]) == ("str.reply2", {"r": 3})
    # Expired messages are never returned.
    layer.send("str.in", {"i": "old"})
    time.sleep(1.1)
    assert layer.send_then_receive([], ["str.in"], 4) == ([], [])


def test_send_then_receive_expands_group_messages_for_local_members(make_layer: Any) -> None:
    layer = make_layer()
    for member in ("str.proc!a", "str.proc!b", "str.proc!c"):
        layer.group_add("str.g", member)
    layer.send_group("str.g", {"g": 1})
    results, batch = layer.send_then_receive([("str.x", {})], ["str.proc!"], max_messages=2)
    assert results == [None]
    _results, more = layer.send_then_receive([], ["str.proc!"], max_messages=5)
    assert sorted(c for c, _m in batch + more) == ["str.proc!a", "str.proc!b", "str.proc!c"]
    assert all(m == {"g": 1} for _c, m in batch + more)


def test_withdraw_takes_back_what_nobody_received(make_layer: Any) -> None:
    layer = make_layer()

    async def main() -> None:
        face = async_face(layer)
        first = await face.send("wd.q", {"n": 1})
        second = await face.send("wd.q", {"n": 1})  # the same message twice
        third = await face.send("wd.q", {"n": 3})
        assert first is not None and second is not None and third is not None
        # The first is received: it cannot be taken back; the others can, once each.
        assert await asyncio.to_thread(layer.receive, ["wd.q"]) == ("wd.q", {"n": 1})
        assert await face.withdraw([third, second]) == [True, True]
        assert await face.withdraw([third]) == [False]
        await face.aclose()

    run(main())
    assert layer.receive(["wd.q"]) == (None, None)
