"""What only the SQLite layer has to prove: many real processes on one file, wake-ups
across processes, crash safety, cleanup of expired rows, one row per process queue for
a group send, fork safety. The rules every layer shares are in test_layer_contract.py.

Timings are printed (run with ``-s`` to see them) and asserted with generous bounds so
that a loaded CI machine does not make the suite flaky.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sqlite3
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wsgi_channels.layers import ConfigurationError, LayerUnavailable, layer_from_url
from wsgi_channels.layers.sqlite import SQLiteChannelLayer


@pytest.fixture
def layer(sqlite_url: str) -> Iterator[SQLiteChannelLayer]:
    made = layer_from_url(sqlite_url + "?capacity=100000")
    assert isinstance(made, SQLiteChannelLayer)
    yield made
    made.close()


def db_path(url: str) -> str:
    return url.partition("?")[0][len("sqlite:///") :]


def query(path: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run *sql* on a connection of our own, closed at once."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# -- children (module level, so that the spawn context can import them) --------------


def produce(url: str, producer: int, count: int) -> None:
    with layer_from_url(url) as child:
        for i in range(count):
            child.send("work", {"producer": producer, "i": i})


def consume(url: str, results: Any) -> None:
    got = []
    with layer_from_url(url) as child:
        while True:
            _channel, message = child.receive(["work"], block=True)
            if message is None:
                continue
            if message.get("stop"):
                break
            got.append((message["producer"], message["i"]))
    results.put(got)


def echo_latency(url: str) -> None:
    """Report, per ping, how long after its send it came out of a blocking receive."""
    latencies = []
    with layer_from_url(url) as child:
        child.send("ready", {})
        while True:
            _channel, message = child.receive(["ping"], block=True)
            if message is None:
                continue
            if message.get("stop"):
                break
            latencies.append(time.monotonic() - message["t"])
        child.send("latencies", {"values": latencies})


def idle_receiver(url: str, seconds: float) -> None:
    with layer_from_url(url) as child:
        child.receive(["idle"])  # open the connection before measuring
        cpu, wall = time.process_time(), time.monotonic()
        while time.monotonic() - wall < seconds:
            child.receive(["idle"], block=True)
        child.send("cpu", {"cpu": time.process_time() - cpu, "wall": time.monotonic() - wall})


def flood(url: str) -> None:
    payload = {"blob": os.urandom(4096), "text": "x" * 1000}
    layer = layer_from_url(url)
    reply = layer.new_channel("flood!")
    while True:
        layer.send("flood", payload)
        layer.group_add("crowd", reply)
        layer.send_group("crowd", {"n": 1})
        layer.receive(["flood!"])


# -- the URL ------------------------------------------------------------------------


def test_relative_url_is_relative_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with SQLiteChannelLayer.from_url("sqlite:///sub/../rel.sqlite3") as made:
        pass
    assert made.path == str(tmp_path / "rel.sqlite3")


def test_absolute_url_takes_four_slashes_and_options(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/abs.sqlite3?prefix=app_1&expiry=5&capacity=7"
    with SQLiteChannelLayer.from_url(url) as made:
        made.send("a", {})
        assert (made.path, made.prefix, made.expiry, made.capacity) == (
            str(tmp_path / "abs.sqlite3"),
            "app_1",
            5.0,
            7,
        )
    tables = query(str(tmp_path / "abs.sqlite3"), "SELECT name FROM sqlite_master")
    assert ("app_1_messages",) in tables


@pytest.mark.parametrize(
    ("url", "words"),
    [
        pytest.param("sqlite:///{tmp}/a.sqlite3?prefix=1bad", "identifier", id="prefix-digit"),
        pytest.param("sqlite:///{tmp}/a.sqlite3?prefix=a;drop", "identifier", id="prefix-sql"),
        pytest.param("sqlite:///{tmp}/a.sqlite3?colour=red", "prefix", id="unknown-option"),
        pytest.param("sqlite://host/{tmp}/a.sqlite3", "host", id="host"),
        pytest.param("sqlite://", "no file", id="no-path"),
        pytest.param("sqlite:///:memory:", "several processes", id="memory"),
        pytest.param("sqlite:///{tmp}/missing/a.sqlite3", "does not exist", id="no-dir"),
    ],
)
def test_bad_urls_are_refused_by_name(tmp_path: Path, url: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        layer_from_url(url.format(tmp=tmp_path))


def test_prefixes_keep_layers_apart(sqlite_url: str) -> None:
    with (
        layer_from_url(sqlite_url + "?prefix=one") as one,
        layer_from_url(sqlite_url + "?prefix=two") as two,
    ):
        one.send("same", {"from": "one"})
        assert two.receive(["same"]) == (None, None)
        assert one.receive(["same"]) == ("same", {"from": "one"})


# -- the file -----------------------------------------------------------------------


def test_file_is_in_wal_mode_with_normal_sync(layer: SQLiteChannelLayer) -> None:
    layer.send("a", {})
    assert query(layer.path, "PRAGMA journal_mode") == [("wal",)]
    conn = layer._conn()
    assert conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000


def test_closed_layer_refuses_work_and_close_is_idempotent(layer: SQLiteChannelLayer) -> None:
    layer.send("a", {})
    layer.close()
    layer.close()
    with pytest.raises(LayerUnavailable, match="closed"):
        layer.send("a", {})


@pytest.mark.parametrize("returning", [True, False], ids=["returning", "select-delete"])
def test_pop_without_returning_behaves_the_same(layer: SQLiteChannelLayer, returning: bool) -> None:
    """Python 3.10 may come with an SQLite older than 3.35.5, without RETURNING."""
    layer._use_returning = returning
    layer.send("b", {"n": 0})
    layer.send("a", {"n": 1})
    layer.send("a", {"n": 2})
    reply = layer.new_channel("r!")
    layer.group_add("g", reply)
    layer.send_group("g", {"n": 3})
    assert [layer.receive(["a", "b", "r!"]) for _ in range(5)] == [
        ("b", {"n": 0}),
        ("a", {"n": 1}),
        ("a", {"n": 2}),
        (reply, {"n": 3}),
        (None, None),
    ]


def test_looking_at_an_empty_channel_does_not_wait_for_a_writer(
    layer: SQLiteChannelLayer,
) -> None:
    """A receive that finds nothing (a poll, or a blocked receiver woken by a send to
    another channel of the file) only reads, so a long write transaction of another
    process does not hold it up; a message is still taken as soon as the write ends."""
    layer.send("other", {"n": 0})
    writer = sqlite3.connect(layer.path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # the write lock, for as long as we like
        started = time.monotonic()
        assert layer.receive(["empty"], block=False) == (None, None)
        assert time.monotonic() - started < 0.5  # busy_timeout is 5 s
    finally:
        writer.execute("COMMIT")
        writer.close()
    assert layer.receive(["empty", "other"], block=False) == ("other", {"n": 0})


# -- many processes -----------------------------------------------------------------


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_every_message_is_delivered_exactly_once_across_processes(
    sqlite_url: str, context: str
) -> None:
    ctx = multiprocessing.get_context(context)
    url = sqlite_url + "?capacity=100000&receive_timeout=0.5"
    producers, consumers, count = 3, 3, 300
    results = ctx.Queue()
    procs = [ctx.Process(target=consume, args=(url, results)) for _ in range(consumers)]
    procs += [ctx.Process(target=produce, args=(url, p, count)) for p in range(producers)]
    for proc in procs:
        proc.start()
    for proc in procs[consumers:]:
        proc.join(20)
        assert proc.exitcode == 0
    with layer_from_url(url) as parent:
        for _ in range(consumers):  # FIFO: each stop comes after every work message
            parent.send("work", {"stop": True})
    per_consumer = [results.get(timeout=20) for _ in range(consumers)]
    for proc in procs[:consumers]:
        proc.join(20)
        assert proc.exitcode == 0
    results.close()
    got = [item for items in per_consumer for item in items]
    assert sorted(got) == [(p, i) for p in range(producers) for i in range(count)]
    for items in per_consumer:  # FIFO: each consumer sees each producer in order
        for p in range(producers):
            mine = [i for q, i in items if q == p]
            assert mine == sorted(mine)


def test_blocked_receiver_in_another_process_wakes_within_milliseconds(
    sqlite_url: str,
) -> None:
    url = sqlite_url + "?receive_timeout=5"
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=echo_latency, args=(url,))
    child.start()
    with layer_from_url(url) as parent:
        assert parent.receive(["ready"], block=True)[0] == "ready"
        for _ in range(40):
            time.sleep(0.01)  # let the child go back to sleep in poll()
            parent.send("ping", {"t": time.monotonic()})
        parent.send("ping", {"stop": True})
        _channel, message = parent.receive(["latencies"], block=True)
    child.join(10)
    assert message is not None and child.exitcode == 0
    values = sorted(message["values"])
    p50, p99 = values[len(values) // 2] * 1000, values[-1] * 1000
    print(f"\ncross-process wake-up latency: p50 {p50:.2f} ms, max {p99:.2f} ms")
    # The fallback poll is 250 ms: a p50 far below it proves the socket woke us.
    assert len(values) == 40
    assert p50 < 20


def test_blocked_receiver_is_idle(sqlite_url: str) -> None:
    url = sqlite_url + "?receive_timeout=1"
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=idle_receiver, args=(url, 2.0))
    child.start()
    with layer_from_url(url + "&receive_timeout=10") as parent:
        _channel, message = parent.receive(["cpu"], block=True)
    child.join(10)
    assert message is not None and child.exitcode == 0
    share = message["cpu"] / message["wall"]
    print(
        f"\nidle blocked receiver: {message['cpu'] * 1000:.1f} ms CPU in "
        f"{message['wall']:.2f} s = {share:.2%} of a core"
    )
    assert share < 0.05


def test_process_killed_mid_send_leaves_the_file_usable(sqlite_url: str) -> None:
    url = sqlite_url + "?capacity=1000000"
    path = db_path(url)
    ctx = multiprocessing.get_context("fork")
    with layer_from_url(url) as parent:
        for round_ in range(3):
            child = ctx.Process(target=flood, args=(url,))
            child.start()
            deadline = time.monotonic() + 10
            while parent.channel_statistics("flood")["messages_pending"] < 20 * (round_ + 1):
                assert time.monotonic() < deadline, "the child never sent"
                time.sleep(0.005)
            os.kill(child.pid or 0, signal.SIGKILL)
            child.join(5)
            assert child.exitcode == -signal.SIGKILL
        assert query(path, "PRAGMA integrity_check") == [("ok",)]
        # No lock left behind: writes and reads go through at once.
        start = time.monotonic()
        parent.send("after", {"ok": True})
        assert parent.receive(["after"]) == ("after", {"ok": True})
        assert time.monotonic() - start < 1
        drained = 0
        while parent.receive(["flood"])[0] is not None:
            drained += 1
        assert drained >= 60


# -- rows in the file ---------------------------------------------------------------


def test_expired_rows_are_deleted_not_kept(sqlite_url: str) -> None:
    with layer_from_url(sqlite_url + "?expiry=0.2") as made:
        assert isinstance(made, SQLiteChannelLayer)
        for n in range(10):
            made.send(f"nobody.reads.{n}", {"n": n})
        made.send("read", {"n": 1})
        made.send("read", {"n": 2})
        made.group_add("g", "member")
        made.group_expiry = 0.01
        made.group_add("g", "gone")
        time.sleep(0.25)
        # receive never returns an expired message, and deletes those it meets
        assert made.receive(["read"]) == (None, None)
        rows = query(made.path, "SELECT queue FROM wsgi_channels_messages")
        assert ("read",) not in rows and len(rows) == 10
        made.sweep_every = 1  # type: ignore[misc]
        made.send("fresh", {})  # a write that sweeps: nobody's and gone's rows go
        assert query(made.path, "SELECT queue FROM wsgi_channels_messages") == [("fresh",)]
        assert query(made.path, "SELECT channel FROM wsgi_channels_groups") == [("member",)]


def test_group_send_writes_one_row_per_process_queue(layer: SQLiteChannelLayer) -> None:
    layer.channel_capacity = {"full": 1}
    locals_ = {
        prefix: [layer.new_channel(prefix) for _ in range(1000)] for prefix in ("p1!", "p2!")
    }
    for members in locals_.values():
        for member in members:
            layer.group_add("crowd", member)
    for member in ("plain", "full", "one?reader"):
        layer.group_add("crowd", member)
    layer.send("full", {"n": 0})
    layer.send_group("crowd", {"n": 1})

    rows = query(
        layer.path,
        "SELECT queue, channel, grp FROM wsgi_channels_messages WHERE queue != 'full' "
        "ORDER BY queue",
    )
    assert rows == [
        ("one?reader", "one?reader", None),
        ("p1!", "p1!", "crowd"),
        ("p2!", "p2!", "crowd"),
        ("plain", "plain", None),
    ]
    assert layer.global_statistics()["group_full_count"] == 1
    for prefix, members in locals_.items():
        received = [layer.receive([prefix])[0] for _ in range(len(members))]
        assert sorted(received) == sorted(members)  # type: ignore[type-var]
        assert layer.receive([prefix]) == (None, None)


def test_group_send_cost_does_not_grow_with_members(layer: SQLiteChannelLayer) -> None:
    def median_ms(group: str) -> float:
        times = []
        for _ in range(60):
            start = time.perf_counter()
            layer.send_group(group, {"text": "hello"})
            times.append(time.perf_counter() - start)
            layer._conn().execute("DELETE FROM wsgi_channels_messages")
        return statistics.median(times) * 1000

    for i in range(10):
        layer.group_add("small", f"proc{i % 2}!{i}")
    conn = layer._conn()
    with layer._transaction(conn):  # 10,000 group_add calls, in one transaction for speed
        for i in range(10000):
            layer.group_add("big", f"proc{i % 2}!member{i}")
    small, big = median_ms("small"), median_ms("big")
    print(
        f"\ngroup send over 2 process queues: 10 members {small:.3f} ms, "
        f"10,000 members {big:.3f} ms"
    )
    assert big < 2.0
    assert big < max(3 * small, 0.5)


def test_send_receive_throughput(layer: SQLiteChannelLayer) -> None:
    message = {"text": "hello world" * 5}
    count = 2000
    start = time.perf_counter()
    for _ in range(count):
        layer.send("bench", message)
        layer.receive(["bench"])
    rate = count / (time.perf_counter() - start)
    print(f"\nsend+receive in one process: {rate:,.0f} messages/s")
    assert rate > 500


# -- wake-up sockets ----------------------------------------------------------------


def test_dead_wake_sockets_are_removed_and_close_removes_ours(
    layer: SQLiteChannelLayer,
) -> None:
    layer.receive_timeout = 0.01
    assert layer.receive(["x"], block=True) == (None, None)  # binds our socket
    wake_dir = layer._wake_dir
    assert wake_dir is not None
    ours = os.listdir(wake_dir)
    assert len(ours) == 1
    dead = os.path.join(wake_dir, "999999-deadbeef0000")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(dead)
    layer._listing = (-1, 0, ())
    layer.send("x", {})
    assert os.listdir(wake_dir) == ours
    layer.close()
    assert os.listdir(wake_dir) == []


def test_long_paths_put_wake_sockets_in_the_temp_directory(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    made = SQLiteChannelLayer(path=deep / "layer.sqlite3", receive_timeout=5)
    wake_dir = made._wake_dir
    assert wake_dir is not None and not wake_dir.startswith(str(deep))
    try:
        timer = threading.Timer(0.1, made.send, args=("late", {"n": 1}))
        timer.start()
        start = time.monotonic()
        assert made.receive(["late"], block=True) == ("late", {"n": 1})
        assert time.monotonic() - start < 0.2
        timer.join()
    finally:
        made.close()
        os.rmdir(wake_dir)


def test_wake_up_between_threads(layer: SQLiteChannelLayer) -> None:
    layer.receive_timeout = 5
    timer = threading.Timer(0.1, layer.send, args=("t", {"n": 1}))
    timer.start()
    start = time.monotonic()
    assert layer.receive(["t"], block=True) == ("t", {"n": 1})
    elapsed = time.monotonic() - start
    timer.join()
    assert elapsed < 0.2  # well before the 0.25 s fallback poll after 0.1 s


def test_a_commit_wakes_only_the_readers_of_its_queues(
    layer: SQLiteChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Count the looks at the table of a thread blocked on "mine" while other queues
    # (a plain one, a process one, a group of other readers) get a hundred commits.
    layer.receive_timeout = 3
    layer.wake_fallback = 5.0  # no polling look within the test: only wake-ups count
    looks: list[list[str]] = []
    pop_now = layer._pop_now

    def counting(names: list[str], *, peek: bool = False) -> Any:
        if threading.current_thread().name == "reader":
            looks.append(names)
        return pop_now(names, peek=peek)

    monkeypatch.setattr(layer, "_pop_now", counting)
    layer.group_add("others", "other.reader")
    got: list[Any] = []
    reader = threading.Thread(
        target=lambda: got.append(layer.receive(["mine"], block=True)), name="reader"
    )
    reader.start()
    deadline = time.monotonic() + 2
    while not looks and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    before = len(looks)
    for n in range(100):
        layer.send("theirs", {"n": n})
        layer.send("proc.x!y", {"n": n})
        layer.send_group("others", {"n": n})
    time.sleep(0.2)
    needless = len(looks) - before
    started = time.monotonic()
    layer.send("mine", {"n": "yes"})
    reader.join(2)
    assert got == [("mine", {"n": "yes"})]
    assert time.monotonic() - started < 0.5  # woken, not polled (fallback 5 s)
    assert needless <= 5  # a filter's false positive costs a look; 300 commits did not


def test_a_thread_that_waits_on_a_new_queue_is_woken_for_it(layer: SQLiteChannelLayer) -> None:
    # Its socket was named for "first"; waiting on "second" too must rename it.
    layer.receive_timeout = 0.05
    layer.wake_fallback = 5.0
    assert layer.receive(["first"], block=True) == (None, None)
    layer.receive_timeout = 3
    timer = threading.Timer(0.1, layer.send, args=("second", {"n": 2}))
    timer.start()
    start = time.monotonic()
    assert layer.receive(["first", "second"], block=True) == ("second", {"n": 2})
    timer.join()
    assert time.monotonic() - start < 1.0  # a wake-up, not the 5 s fallback
    assert len(os.listdir(layer._wake_dir or "")) == 1  # the old socket is gone


# -- fork ---------------------------------------------------------------------------


def test_layer_used_before_fork_works_in_parent_and_child(layer: SQLiteChannelLayer) -> None:
    layer.send("to.child", {"n": 1})
    assert layer.receive(["warm"], block=False) == (None, None)
    layer.receive_timeout = 0.05
    layer.receive(["warm"], block=True)  # the parent now has a wake-up socket too
    wake_dir = layer._wake_dir
    assert wake_dir is not None
    parent_sockets = os.listdir(wake_dir)

    pid = os.fork()
    if pid == 0:  # the child: report through the exit status, never return to pytest
        status = 1
        try:
            layer.receive_timeout = 5
            if layer.receive(["to.child"], block=True) == ("to.child", {"n": 1}):
                layer.group_add("family", "to.parent")
                layer.send_group("family", {"from": "child"})
                layer.close()
                status = 0
        finally:
            os._exit(status)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert layer.receive(["to.parent"]) == ("to.parent", {"from": "child"})
    # The child's close() removed its own socket, not the parent's.
    assert set(parent_sockets) <= set(os.listdir(wake_dir))
    layer.receive_timeout = 5
    timer = threading.Timer(0.05, layer.send, args=("again", {}))
    timer.start()
    assert layer.receive(["again"], block=True) == ("again", {})
    timer.join()
