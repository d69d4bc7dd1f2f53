"""Fault injection with real processes on a real Redis of the test's own: Redis restarts,
a worker killed, graceful stops, floods beyond capacity, slow readers, 1,000 sockets in
one group, and a soak for leaks. Each test prints its figures (``pytest -s`` shows them;
docs/reliability.md quotes them).

Every load goes to 127.0.0.1 and is bounded: a few threads, client timeouts a little
above the interface's ``--http-timeout``, a fixed duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from _faults import (
    HttpLoad,
    ReconnectingEcho,
    http_get,
    read_frames,
    rss_kb,
    summary,
    ws_handshake,
)
from conftest import RedisServer, needs_redis
from servers import TESTS, InterfaceProcess, WorkerProcess, child_env

from wsgi_channels.layers import layer_from_url

pytestmark = [pytest.mark.fault, needs_redis]

HTTP_TIMEOUT = 3.0
CLIENT_TIMEOUT = HTTP_TIMEOUT + 2.0


class Cluster:
    """Interface and worker processes started by one test, all stopped at teardown."""

    def __init__(self) -> None:
        self.processes: list[Any] = []

    def interface(self, url: str, *args: str) -> InterfaceProcess:
        process = InterfaceProcess(url, "--http-timeout", str(HTTP_TIMEOUT), *args)
        self.processes.append(process)
        return process.start()

    def worker(self, url: str, app: str = "apps:echo", threads: int = 4) -> WorkerProcess:
        process = WorkerProcess(app, url, threads=threads)
        self.processes.append(process)
        return process.start()

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.args[:2]} ---\n{p.output[-3000:]}" for p in self.processes)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    started = Cluster()
    yield started
    started.stop()
    print(started.logs()[-6000:])


def report(name: str, **figures: object) -> None:
    print(f"\n[{name}] " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def wait_until_served(port: int, path: str = "/ready", timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_get(port, path, 2.0).status == 200:
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not answer 200 on {path}")


# -- 1. Redis restarts under load ---------------------------------------------------------


def test_redis_restart_under_load(own_redis: RedisServer, cluster: Cluster) -> None:
    url = own_redis.url
    interface = cluster.interface(url)
    workers = [cluster.worker(url), cluster.worker(url)]
    wait_until_served(interface.port)

    with (
        HttpLoad(interface.port, "/load", concurrency=6, timeout=CLIENT_TIMEOUT) as load,
        ReconnectingEcho(interface.ws_url + "/ws/echo") as echo,
    ):
        time.sleep(2.0)
        down = time.monotonic()
        own_redis.restart(down_for=2)
        up = time.monotonic()
        time.sleep(7.0)
    results = load.results
    end = time.monotonic()

    assert interface.alive() and all(w.alive() for w in workers), cluster.logs()
    # Nothing hangs: every request got an HTTP answer within its timeout.
    assert [r for r in results if r.status is None] == []
    assert {r.status for r in results} <= {200, 503, 504}, summary(results)
    assert max(r.duration for r in results) < HTTP_TIMEOUT + 1.0
    before = [r for r in results if r.end < down]
    during = [r for r in results if r.start < up + 5.0 and r.end > down]
    after = [r for r in results if r.start >= up + 5.0]
    assert before and all(r.status == 200 for r in before), summary(before)
    assert any(r.status != 200 for r in during)  # the outage was seen
    assert len(after) > 20 and all(r.status == 200 for r in after), summary(after)
    recovered = min((r.start for r in results if r.start > up and r.status == 200), default=end)

    # WebSocket: the client lost its connection and came back on its own.
    assert echo.connections >= 2, echo.failures
    assert [t for t in echo.echoes if t > up + 5.0], echo.failures
    ws_recovered = min((t for t in echo.echoes if t > up), default=end)

    # A fresh socket joins a group and gets a group message: memberships work again.
    async def group_round_trip() -> object:
        layer = layer_from_url(url)
        try:
            async with websockets.connect(interface.ws_url + "/ws/group?name=after") as ws:
                deadline = time.monotonic() + 5
                while not layer.group_channels("after") and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                layer.send_group("after", {"text": "back"})
                return await asyncio.wait_for(ws.recv(), 5)
        finally:
            layer.close()

    assert asyncio.run(group_round_trip()) == "back"
    report(
        "redis restart",
        requests=summary(results),
        during_outage=summary(during),
        http_ok_again_after_s=round(recovered - up, 2),
        ws_echo_again_after_s=round(ws_recovered - up, 2),
        ws_connections=echo.connections,
        slowest_s=round(max(r.duration for r in results), 2),
    )


# -- 2. a worker killed with SIGKILL ------------------------------------------------------


def test_worker_killed_only_its_requests_fail(own_redis: RedisServer, cluster: Cluster) -> None:
    url = own_redis.url
    threads = 4
    interface = cluster.interface(url)
    victim = cluster.worker(url, threads=threads)
    survivor = cluster.worker(url, threads=threads)
    wait_until_served(interface.port)

    with HttpLoad(interface.port, "/slow?0.3", concurrency=6, timeout=CLIENT_TIMEOUT) as load:
        time.sleep(1.5)
        killed = time.monotonic()
        assert victim.process is not None
        victim.process.kill()
        time.sleep(HTTP_TIMEOUT + 1.5)
    results = load.results

    assert interface.alive() and survivor.alive(), cluster.logs()
    failed = [r for r in results if r.status != 200]
    # Only requests in flight at the kill fail: at most one per thread of the victim
    # (it takes a message only when a thread is free), each a 504 after http_timeout.
    assert len(failed) <= threads, summary(failed)
    for r in failed:
        assert r.status == 504, summary(failed)
        assert r.start < killed
        assert HTTP_TIMEOUT - 0.1 <= r.duration < HTTP_TIMEOUT + 1.0
    after = [r for r in results if r.start >= killed]
    assert len(after) > 10 and all(r.status == 200 for r in after), summary(after)
    report(
        "worker SIGKILL",
        requests=summary(results),
        failed=len(failed),
        failed_durations=[round(r.duration, 2) for r in failed],
    )


# -- 3. graceful stops ---------------------------------------------------------------------


def test_sigterm_to_a_worker_under_load_fails_nothing(
    own_redis: RedisServer, cluster: Cluster
) -> None:
    url = own_redis.url
    interface = cluster.interface(url)
    leaving = cluster.worker(url)
    staying = cluster.worker(url)
    wait_until_served(interface.port)

    with HttpLoad(interface.port, "/slow?0.3", concurrency=6, timeout=CLIENT_TIMEOUT) as load:
        time.sleep(1.5)
        leaving.signal(signal.SIGTERM)
        assert leaving.process is not None
        code = leaving.process.wait(10)
        time.sleep(1.0)
    results = load.results

    assert code == 0
    assert staying.alive()
    assert summary(results) == {"200": len(results)}
    assert "worker stopped after" in leaving.output
    report("worker SIGTERM", requests=summary(results), exit_code=code)


def test_sigterm_to_an_interface_finishes_requests_in_flight(
    own_redis: RedisServer, cluster: Cluster
) -> None:
    """What this shows: requests already in flight on the stopped interface complete
    (200); the stopped interface exits 0 and then refuses connections; a second
    interface on the same layer serves a steady load throughout with no failure. It
    does not show zero failures for clients that connect to the stopped interface after
    SIGTERM: they get connection refused, which a load balancer must route around."""
    url = own_redis.url
    stopping = cluster.interface(url)
    other = cluster.interface(url)
    cluster.worker(url, threads=8)
    wait_until_served(stopping.port)
    wait_until_served(other.port)

    with HttpLoad(other.port, "/slow?0.1", concurrency=4, timeout=CLIENT_TIMEOUT) as steady:
        in_flight = HttpLoad(stopping.port, "/slow?1.5", concurrency=6, timeout=CLIENT_TIMEOUT)
        with in_flight:
            time.sleep(0.7)  # each thread's first request is now running in the worker
            signalled = time.monotonic()
            stopping.signal(signal.SIGTERM)
            in_flight._stop.set()  # no new request on the stopping interface
        assert stopping.process is not None
        code = stopping.process.wait(15)
        refused = http_get(stopping.port, "/after", 2.0)
        time.sleep(1.0)
    started_before = [r for r in in_flight.results if r.start < signalled]

    assert code == 0
    assert len(started_before) == 6 and all(r.status == 200 for r in started_before), summary(
        in_flight.results
    )
    assert refused.error == "ConnectionRefusedError"
    assert summary(steady.results) == {"200": len(steady.results)}
    report(
        "interface SIGTERM",
        in_flight=summary(started_before),
        other_interface=summary(steady.results),
        after_stop=refused.error,
        exit_code=code,
    )


def test_gunicorn_hup_reload_under_load_fails_nothing(
    own_redis: RedisServer, cluster: Cluster, tmp_path: Path
) -> None:
    url = own_redis.url
    interface = cluster.interface(url)
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115 - closed below
    gunicorn = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn",
            "-k", "wsgi_channels.gunicorn.ChannelWorker",
            "--bind", f"unix:{tmp_path / 'unused.sock'}",
            "--workers", "2", "--threads", "4",
            "--timeout", "10", "--graceful-timeout", "10",
            "_worker_helpers:app",
        ],
        env=child_env({"WSGI_CHANNELS_LAYER": url}),
        cwd=TESTS,
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_until_served(interface.port, "/hello", timeout=20)
        old = _worker_pids(interface.port)
        with HttpLoad(interface.port, "/slow?t=0.2", concurrency=6, timeout=CLIENT_TIMEOUT) as load:
            time.sleep(1.0)
            gunicorn.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            new: set[int] = set()
            while time.monotonic() < deadline:
                new = _worker_pids(interface.port)
                if new and not new & old:
                    break
                time.sleep(0.2)
            time.sleep(1.0)
        results = load.results
        assert new and not new & old, (old, new)
        assert summary(results) == {"200": len(results)}
        assert gunicorn.poll() is None
        report("gunicorn HUP", requests=summary(results), old_pids=old, new_pids=new)
    finally:
        gunicorn.send_signal(signal.SIGTERM)
        try:
            gunicorn.wait(15)
        except subprocess.TimeoutExpired:
            gunicorn.kill()
            gunicorn.wait()
        log.close()


def _worker_pids(port: int) -> set[int]:
    pids = set()
    for _ in range(12):
        conn_result = _get_body(port, "/pid")
        if conn_result is not None:
            pids.add(int(conn_result))
    return pids


def _get_body(port: int, path: str) -> bytes | None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        return body if response.status == 200 else None
    except OSError:
        return None
    finally:
        conn.close()


# -- 4. backpressure ------------------------------------------------------------------------


def test_flood_beyond_capacity_gets_fast_503s(own_redis: RedisServer, cluster: Cluster) -> None:
    url = own_redis.url + "?channel_capacity=http.request:5"
    interface = cluster.interface(url)
    cluster.worker(url, threads=2)
    wait_until_served(interface.port)
    assert interface.process is not None
    pid = interface.process.pid
    with HttpLoad(interface.port, "/warm", concurrency=4, timeout=CLIENT_TIMEOUT) as warm:
        time.sleep(1.0)
    assert summary(warm.results) == {"200": len(warm.results)}
    rss_before = rss_kb(pid)

    peak = rss_before
    with HttpLoad(interface.port, "/slow?0.5", concurrency=64, timeout=CLIENT_TIMEOUT) as flood:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            peak = max(peak, rss_kb(pid))
            time.sleep(0.1)
    results = flood.results
    rejected = [r for r in results if r.status == 503]

    assert {r.status for r in results} <= {200, 503}, summary(results)
    assert len(rejected) > len(results) / 2
    assert all(r.headers.get("retry-after") == "1" for r in rejected)
    slowest_503 = max(r.duration for r in rejected)
    assert slowest_503 < 0.5
    assert peak - rss_before < 20 * 1024, (rss_before, peak)
    # The flood is over: service is normal at once.
    after = [http_get(interface.port, "/after", CLIENT_TIMEOUT) for _ in range(20)]
    assert summary(after) == {"200": 20}
    report(
        "flood",
        requests=summary(results),
        slowest_503_ms=round(slowest_503 * 1000, 1),
        median_503_ms=round(sorted(r.duration for r in rejected)[len(rejected) // 2] * 1000, 1),
        rss_before_mb=round(rss_before / 1024, 1),
        rss_peak_mb=round(peak / 1024, 1),
    )


def test_slow_websocket_reader_is_closed_with_1013(
    own_redis: RedisServer, cluster: Cluster
) -> None:
    url = own_redis.url
    interface = cluster.interface(url)
    cluster.worker(url)
    wait_until_served(interface.port)
    assert interface.process is not None
    pid = interface.process.pid
    layer = layer_from_url(url)
    sock, head = ws_handshake(interface.port, "/ws/group?name=slow", rcvbuf=4096)
    try:
        assert head.startswith(b"HTTP/1.1 101"), head
        deadline = time.monotonic() + 5
        while not layer.group_channels("slow") and time.monotonic() < deadline:
            time.sleep(0.02)
        rss_before = rss_kb(pid)
        payload = "x" * 32 * 1024
        sent = 0
        peak = rss_before
        with ReconnectingEcho(interface.ws_url + "/ws/echo") as bystander:
            # 64 MiB for a reader that reads nothing, at the pace of the layer.
            for _ in range(2048):
                layer.send_group("slow", {"text": payload})
                sent += 1
                if sent % 64 == 0:
                    peak = max(peak, rss_kb(pid))
            time.sleep(1.0)
            peak = max(peak, rss_kb(pid))
        frames, code = read_frames(sock, timeout=10)
    finally:
        sock.close()
        layer.close()
    assert code == 1013, (frames, code)
    assert frames < sent
    assert peak - rss_before < 30 * 1024, (rss_before, peak)
    assert interface.alive()
    assert bystander.echoes and not bystander.failures, bystander.failures
    report(
        "slow reader",
        group_messages=sent,
        frames_before_close=frames,
        close_code=code,
        rss_growth_mb=round((peak - rss_before) / 1024, 1),
        bystander_echoes=len(bystander.echoes),
    )


# -- 5. nothing lost, nothing duplicated ---------------------------------------------------

CLIENTS = 1000
GROUP_SENDS = 100


def test_thousand_sockets_get_every_group_message_once_in_order(
    own_redis: RedisServer, cluster: Cluster
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # children inherit it
    if wanted < 2 * CLIENTS + 100:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low for {CLIENTS} sockets")
    url = own_redis.url
    interface = cluster.interface(url, "--websocket-connect-timeout", "20")
    cluster.worker(url, threads=8)
    cluster.worker(url, threads=8)
    layer = layer_from_url(url)

    async def run() -> tuple[list[list[str]], float]:
        gate = asyncio.Semaphore(100)

        async def connect() -> Any:
            async with gate:
                return await websockets.connect(
                    interface.ws_url + "/ws/group?name=everyone",
                    open_timeout=30,
                    max_queue=None,
                )

        started = time.monotonic()
        sockets = await asyncio.gather(*(connect() for _ in range(CLIENTS)))
        connected = time.monotonic() - started
        try:
            deadline = time.monotonic() + 20
            while len(layer.group_channels("everyone")) < CLIENTS:
                assert time.monotonic() < deadline, len(layer.group_channels("everyone"))
                await asyncio.sleep(0.05)

            async def collect(ws: Any) -> list[str]:
                got = []
                while len(got) < GROUP_SENDS:
                    got.append(await asyncio.wait_for(ws.recv(), 20))
                # Anything more within a moment would be a duplicate.
                with contextlib.suppress(asyncio.TimeoutError):
                    got.append(await asyncio.wait_for(ws.recv(), 0.5))
                return got

            readers = [asyncio.ensure_future(collect(ws)) for ws in sockets]
            for i in range(GROUP_SENDS):
                layer.send_group("everyone", {"text": f"m{i:03d}"})
                await asyncio.sleep(0.01)
            received = await asyncio.gather(*readers)
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        return received, connected

    try:
        received, connected = asyncio.run(run())
        skipped = layer.global_statistics()["group_full_count"]
    finally:
        layer.close()
    expected = [f"m{i:03d}" for i in range(GROUP_SENDS)]
    wrong = [got for got in received if got != expected]
    assert skipped == 0
    assert len(received) == CLIENTS and wrong == [], wrong[:2]
    assert interface.alive()
    report(
        "1,000 sockets",
        clients=CLIENTS,
        group_sends=GROUP_SENDS,
        delivered=sum(map(len, received)),
        connect_all_s=round(connected, 2),
        skipped_full=skipped,
    )


# -- 6. no leaks -------------------------------------------------------------------------------

SOAK_SECONDS = float(os.environ.get("WSGI_CHANNELS_SOAK_SECONDS", "20"))
EXPIRY = 2
GROUP_EXPIRY = 4


def _sqlite_rows(path: Path) -> dict[str, int]:
    """Rows per table, and the rows not yet expired."""
    with sqlite3.connect(path) as db:
        now = time.time()
        return {
            "messages": db.execute("SELECT count(*) FROM wsgi_channels_messages").fetchone()[0],
            "groups": db.execute("SELECT count(*) FROM wsgi_channels_groups").fetchone()[0],
            "live": db.execute(
                "SELECT (SELECT count(*) FROM wsgi_channels_messages WHERE expires > ?)"
                " + (SELECT count(*) FROM wsgi_channels_groups WHERE expires > ?)",
                (now, now),
            ).fetchone()[0],
        }


class Churn:
    """WebSocket traffic for the soak: sockets that connect (half of them joining a
    group), exchange a few frames, and disconnect, over and over; plus a sender
    pushing to the groups."""

    def __init__(self, ws_url: str, layer_url: str) -> None:
        self.ws_url = ws_url
        self.layer_url = layer_url
        self.sessions = 0
        self.frames = 0
        self.group_messages = 0
        self.errors: list[str] = []
        self._stop = asyncio.Event()

    async def _session_loop(self, n: int) -> None:
        while not self._stop.is_set():
            path = f"/ws/group?name=soak{n % 3}" if n % 2 else "/ws/echo"
            try:
                async with websockets.connect(self.ws_url + path, open_timeout=10) as ws:
                    for i in range(5):
                        await ws.send(f"f{i}")
                        while await asyncio.wait_for(ws.recv(), 10) != f"f{i}":
                            pass  # a group message arrived first
                        self.frames += 1
                self.sessions += 1
            except Exception as exc:
                self.errors.append(type(exc).__name__)

    async def _group_sender(self) -> None:
        layer = layer_from_url(self.layer_url)
        try:
            while not self._stop.is_set():
                for g in range(3):
                    layer.send_group(f"soak{g}", {"text": "news"})
                    self.group_messages += 1
                await asyncio.sleep(0.05)
        finally:
            layer.close()

    async def run(self, seconds: float) -> None:
        tasks = [asyncio.ensure_future(self._session_loop(n)) for n in range(8)]
        tasks.append(asyncio.ensure_future(self._group_sender()))
        await asyncio.sleep(seconds)
        self._stop.set()
        await asyncio.gather(*tasks)


@pytest.mark.parametrize("backend", ["redis", "sqlite"])
def test_soak_leaves_no_keys_rows_or_memory_behind(
    backend: str, own_redis: RedisServer, cluster: Cluster, tmp_path: Path
) -> None:
    options = f"?expiry={EXPIRY}&group_expiry={GROUP_EXPIRY}"
    db = tmp_path / "layer.sqlite3"
    url = (own_redis.url if backend == "redis" else f"sqlite:///{db}") + options

    def storage() -> dict[str, int]:
        if backend == "redis":
            return {"dbsize": own_redis.dbsize()}
        return _sqlite_rows(db)

    interface = cluster.interface(url)
    worker = cluster.worker(url)
    wait_until_served(interface.port)
    assert interface.process is not None and worker.process is not None
    pids = {"interface": interface.process.pid, "worker": worker.process.pid}
    # Starting storage: processes up, no traffic yet, and the readiness request's
    # traces expired.
    time.sleep(EXPIRY + 1)
    start = storage()

    warmup = min(5.0, SOAK_SECONDS / 4)
    churn = Churn(interface.ws_url, url)
    rss: dict[str, dict[str, int]] = {}

    def measure_rss_after_warmup() -> None:
        time.sleep(warmup)
        rss["warm"] = {name: rss_kb(pid) for name, pid in pids.items()}

    sampler = threading.Thread(target=measure_rss_after_warmup)
    with HttpLoad(
        interface.port, "/soak", concurrency=3, timeout=CLIENT_TIMEOUT, pause=0.01
    ) as load:
        sampler.start()
        asyncio.run(churn.run(SOAK_SECONDS))
    sampler.join()
    rss["end"] = {name: rss_kb(pid) for name, pid in pids.items()}
    results = load.results

    # Everything expires: poll until the storage is back where it started.
    deadline = time.monotonic() + EXPIRY + GROUP_EXPIRY + 10
    leftover = storage()
    while time.monotonic() < deadline:
        leftover = storage()
        if backend == "redis" and leftover == start:
            break
        if backend == "sqlite" and leftover["live"] == start["live"]:
            break
        time.sleep(0.25)
    swept = leftover
    if backend == "sqlite":
        # SQLite deletes expired rows in a sweep every `sweep_every` writes of a
        # process, not on a timer: trigger one as the next traffic would.
        layer = layer_from_url(url)
        try:
            layer.sweep_every = 1  # type: ignore[attr-defined]
            layer.send("soak.sweep", {"n": 1})
            layer.receive(["soak.sweep"])
        finally:
            layer.close()
        swept = storage()

    growth = {name: (rss["end"][name] - rss["warm"][name]) / rss["warm"][name] for name in pids}
    report(
        f"soak {backend} {SOAK_SECONDS:.0f}s",
        http=summary(results),
        ws_sessions=churn.sessions,
        ws_frames=churn.frames,
        group_sends=churn.group_messages,
        ws_errors=len(churn.errors),
        storage_start=start,
        storage_after_expiry=leftover,
        storage_after_sweep=swept,
        rss_warm_kb=rss["warm"],
        rss_end_kb=rss["end"],
        rss_growth_pct={k: round(v * 100, 1) for k, v in growth.items()},
    )
    assert summary(results) == {"200": len(results)}
    assert churn.errors == [] and churn.sessions > 20
    assert interface.alive() and worker.alive()
    if backend == "redis":
        assert leftover == start
    else:
        assert leftover["live"] == start["live"]
        assert swept == start
    assert all(g < 0.10 for g in growth.values()), growth
