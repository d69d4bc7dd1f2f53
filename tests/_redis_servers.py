"""A real Redis Cluster and a real Sentinel set for the tests, on free ports.

::

    cluster = RedisCluster().start()      # three masters, three replicas, cluster_state:ok
    cluster.url                           # redis+cluster://127.0.0.1:P1,127.0.0.1:P2
    cluster.kill_master_of("some-key")    # SIGKILL; its replica takes over
    sentinels = SentinelSet().start()     # a master, a replica, three sentinels
    sentinels.url                         # redis+sentinel://127.0.0.1:S1,.../wsgi-test
    sentinels.kill_master()

The session fixtures ``redis_cluster`` and ``redis_sentinel`` start one of each for the
whole run (a cluster takes a few seconds to form); ``cluster_url`` and ``sentinel_url``
give a test an emptied one, restarting what an earlier test killed. Failover timings are
short on purpose: ``cluster-node-timeout`` 1 s, ``down-after-milliseconds`` 1 s, so that a
replica is promoted in about 1 to 3 s.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import REDIS_SERVER, free_port, wait_for_port

REDIS_CLI = shutil.which("redis-cli")
SERVICE = "wsgi-test"


def _cluster_port() -> int:
    """A free port whose cluster bus port (``port + 10000``) is free too, below the
    ephemeral range (so that neither is taken by a client socket meanwhile)."""
    for _ in range(200):
        port = random.randrange(20000, 30000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of ports for a cluster node")


def _client(port: int, **kwargs: Any) -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, **kwargs)


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # a node still starting, a failover in progress
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} after {timeout} s")


class _Node:
    """One redis-server process (a cluster node, a replica, a sentinel)."""

    def __init__(self, directory: str, port: int, args: list[str]) -> None:
        self.dir = directory
        self.port = port
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [REDIS_SERVER, *self.args],
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


def _server_args(directory: str, port: int, *extra: str) -> list[str]:
    return [
        "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", directory, "--logfile", os.path.join(directory, f"redis-{port}.log"),
        *extra,
    ]  # fmt: skip


class RedisCluster:
    """Six redis-server nodes in cluster mode: three masters, one replica each."""

    def __init__(self) -> None:
        if REDIS_SERVER is None or REDIS_CLI is None:
            raise RuntimeError("redis-server and redis-cli are needed for a cluster")
        self.dir = tempfile.mkdtemp(prefix="wsgi-channels-cluster-")
        self.nodes = {}
        for _ in range(6):
            port = _cluster_port()
            args = _server_args(
                self.dir, port, "--cluster-enabled", "yes",
                "--cluster-config-file", os.path.join(self.dir, f"nodes-{port}.conf"),
                "--cluster-node-timeout", "1000",
                # A replica promotes itself however long it was cut off from its master.
                "--cluster-replica-validity-factor", "0",
            )  # fmt: skip
            self.nodes[port] = _Node(self.dir, port, args)

    @property
    def url(self) -> str:
        """Two of the nodes as seeds (the others are discovered)."""
        ports = list(self.nodes)[:2]
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)

    def start(self) -> RedisCluster:
        for node in self.nodes.values():
            node.start()
        assert REDIS_CLI is not None
        subprocess.run(
            [REDIS_CLI, "--cluster", "create",
             *(f"127.0.0.1:{p}" for p in self.nodes), "--cluster-replicas", "1",
             "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok and serves all 16384 slots."""

        def ok() -> bool:
            for node in self.live():
                with _client(node.port) as client:
                    info = client.execute_command("CLUSTER INFO")  # parsed into a dict
                    if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != 16384:
                        return False
            return len(self.masters()) == 3

        _wait(ok, timeout, "the cluster is not ok")

    def live(self) -> list[_Node]:
        return [node for node in self.nodes.values() if node.alive()]

    def masters(self) -> list[int]:
        """Ports of the masters that serve slots, as a live node sees them."""
        with _client(self.live()[0].port) as client:
            slots = client.execute_command("CLUSTER SLOTS")
        return sorted({int(entry[2][1]) for entry in slots})

    def master_of(self, key: str) -> int:
        with _client(self.live()[0].port) as client:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
            for entry in client.execute_command("CLUSTER SLOTS"):
                if int(entry[0]) <= slot <= int(entry[1]):
                    return int(entry[2][1])
        raise LookupError(key)

    def kill(self, port: int) -> None:
        """SIGKILL one node (its replica, if it was a master, takes over)."""
        self.nodes[port].kill()

    def heal(self) -> None:
        """Restart every dead node (it rejoins as a replica) and wait until ok."""
        for node in self.nodes.values():
            if not node.alive():
                node.start()
        self.wait_ok()

        def replicated() -> bool:
            return all(self._role(node.port) for node in self.nodes.values())

        _wait(replicated, 30, "the restarted nodes did not rejoin")

    def _role(self, port: int) -> bool:
        with _client(port) as client:
            info = client.info("replication")
        return info["role"] == "master" or info.get("master_link_status") == "up"

    def flushall(self) -> None:
        for port in self.masters():
            with _client(port) as client:
                client.flushall()

    def dbsize(self) -> int:
        total = 0
        for port in self.masters():
            with _client(port) as client:
                total += int(client.dbsize())
        return total

    def cleanup(self) -> None:
        for node in self.nodes.values():
            node.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelSet:
    """A master, its replica and three sentinels watching service ``wsgi-test``."""

    def __init__(self) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is needed for Sentinel")
        self.dir = tempfile.mkdtemp(prefix="wsgi-channels-sentinel-")
        master, replica = free_port(), free_port()
        self.servers = {
            master: _Node(self.dir, master, _server_args(self.dir, master)),
            replica: _Node(
                self.dir, replica,
                _server_args(self.dir, replica, "--replicaof", "127.0.0.1", str(master)),
            ),
        }  # fmt: skip
        self.first_master = master
        self.sentinels: dict[int, _Node] = {}
        for _ in range(3):
            port = free_port()
            conf = os.path.join(self.dir, f"sentinel-{port}.conf")
            with open(conf, "w") as file:
                file.write(
                    f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                    f"logfile {os.path.join(self.dir, f'sentinel-{port}.log')}\n"
                    f"sentinel monitor {SERVICE} 127.0.0.1 {master} 2\n"
                    f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                    f"sentinel failover-timeout {SERVICE} 3000\n"
                    f"sentinel parallel-syncs {SERVICE} 1\n"
                )
            self.sentinels[port] = _Node(self.dir, port, [conf, "--sentinel"])

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> SentinelSet:
        for node in self.servers.values():
            node.start()
        for node in self.sentinels.values():
            node.start()
        self.wait_ready()
        return self

    def master(self) -> int:
        """The master's port, as the sentinels name it."""
        with _client(next(iter(self.sentinels))) as client:
            _host, port = client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the sentinels agree on a live master that has a linked replica and
        know each other (so that a failover can be voted)."""

        def ready() -> bool:
            port = self.master()
            if port not in self.servers or not self.servers[port].alive():
                return False
            with _client(port) as client:
                info = client.info("replication")
            if info["role"] != "master" or int(info.get("connected_slaves", 0)) < 1:
                return False
            for sentinel in self.sentinels:
                with _client(sentinel) as client:
                    state = client.execute_command("SENTINEL MASTER", SERVICE)  # a dict
                if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                    return False
            return True

        _wait(ready, timeout, "the Sentinel set is not ready")

    def kill_master(self) -> int:
        port = self.master()
        self.servers[port].kill()
        return port

    def heal(self) -> None:
        """Restart a killed server (it comes back as a replica) and wait until ready."""
        for node in self.servers.values():
            if not node.alive():
                node.start()
        self.wait_ready()

    def flushall(self) -> None:
        with _client(self.master()) as client:
            client.flushall()

    def dbsize(self) -> int:
        with _client(self.master()) as client:
            return int(client.dbsize())

    def cleanup(self) -> None:
        for node in [*self.sentinels.values(), *self.servers.values()]:
            node.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """One six-node Redis Cluster for the session."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("no redis-server/redis-cli on PATH (apt-get install redis-server)")
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelSet]:
    """One Sentinel set (master, replica, three sentinels) for the session."""
    if REDIS_SERVER is None:
        pytest.skip("no redis-server binary on PATH (apt-get install redis-server)")
    sentinels = SentinelSet()
    try:
        sentinels.start()
        yield sentinels
    finally:
        sentinels.cleanup()


@pytest.fixture
def cluster_url(redis_cluster: RedisCluster) -> str:
    """The session cluster's URL, healed and emptied before the test."""
    if len(redis_cluster.live()) < 6:
        redis_cluster.heal()
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture
def sentinel_url(redis_sentinel: SentinelSet) -> str:
    """The session Sentinel set's URL, healed and emptied before the test."""
    if any(not node.alive() for node in redis_sentinel.servers.values()):
        redis_sentinel.heal()
    redis_sentinel.flushall()
    return redis_sentinel.url


# -- a failover under load ----------------------------------------------------------------


def failover_under_load(
    url: str,
    kill: Callable[[], int],
    promoted: Callable[[int], bool],
    *,
    settle: float = 6.0,
) -> dict[str, Any]:
    """:func:`fault_under_load` where the fault is a failover: *kill* (it returns the
    killed port), then ``promoted(port)`` polled until the replica took over; the
    load goes on *settle* seconds more. Adds when the replica was promoted and how
    long service took to come back after that."""

    def failover() -> dict[str, Any]:
        killed_at = time.monotonic()
        port = kill()
        _wait(lambda: promoted(port), 30, "no replica was promoted")
        return {"promoted_after_s": round(time.monotonic() - killed_at, 2)}

    figures = fault_under_load(url, failover, before=2.0, after=settle)
    figures["recovery_after_promotion_s"] = round(
        max(0.0, figures["outage_s"] - figures["promoted_after_s"]), 2
    )
    return figures


def fault_under_load(
    url: str,
    fault: Callable[[], dict[str, Any]],
    *,
    before: float,
    after: float,
    concurrency: int = 4,
    tick: float = 0.02,
) -> dict[str, Any]:
    """Serve HTTP (*concurrency* client threads), WebSocket echoes and a stream of
    group messages (one every *tick* seconds, to a socket of the group) through an
    interface and two workers on *url*; call *fault()* *before* seconds into the
    load, keep the load on *after* seconds once it returns; return the figures
    (requests answered and failed, group messages sent, lost and delivered twice,
    when service was back) with those *fault* returns."""
    import asyncio

    import websockets
    from _faults import HttpLoad, ReconnectingEcho, http_get, summary
    from servers import InterfaceProcess, WorkerProcess

    from wsgi_channels.layers import ChannelsError, layer_from_url

    interface = InterfaceProcess(url, "--http-timeout", "3")
    workers = [WorkerProcess("apps:echo", url), WorkerProcess("apps:echo", url)]
    processes: list[Any] = [*workers, interface]
    layer = layer_from_url(url)
    received: list[str] = []
    sent: list[int] = []
    send_errors: list[str] = []
    stop = threading.Event()

    async def listen() -> None:
        async with websockets.connect(f"{interface.ws_url}/ws/group?name=ticks") as ws:
            while not stop.is_set():
                try:
                    received.append(str(await asyncio.wait_for(ws.recv(), 0.5)))
                except TimeoutError:
                    continue

    def send_ticks() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                layer.send_group("ticks", {"text": str(n)})
                sent.append(n)
            except ChannelsError as exc:
                send_errors.append(type(exc).__name__)
            stop.wait(tick)

    try:
        for process in processes:
            process.start()
        _wait(lambda: http_get(interface.port, "/ready", 2.0).status == 200, 20, "no answer")
        listener = threading.Thread(target=asyncio.run, args=(listen(),), daemon=True)
        listener.start()
        _wait(lambda: bool(layer.group_channels("ticks")), 10, "the socket joined no group")
        ticker = threading.Thread(target=send_ticks, daemon=True)
        with (
            HttpLoad(interface.port, "/load", concurrency=concurrency, timeout=5.0) as load,
            ReconnectingEcho(interface.ws_url + "/ws/echo") as echo,
        ):
            ticker.start()
            time.sleep(before)
            fault_at = time.monotonic()
            extra = fault()
            time.sleep(after)
            stop.set()
            ticker.join(5)
        listener.join(5)
        results = load.results
        alive = all(p.alive() for p in processes)
    finally:
        stop.set()
        for process in reversed(processes):
            process.stop()
        layer.close()
    failed = [r for r in results if r.status != 200]
    back_at = max((r.end for r in failed), default=fault_at)
    counts: dict[str, int] = {}
    for text in received:
        counts[text] = counts.get(text, 0) + 1
    return {
        "processes_alive": alive,
        "requests": summary(results),
        "answered": len(results) - len(failed),
        "failed": len(failed),
        "requests_after_recovery": sum(1 for r in results if r.start > back_at),
        "hung": sum(1 for r in results if r.status is None),
        "outage_s": round(max(0.0, back_at - fault_at), 2),
        "group_sent": len(sent),
        "group_send_refused": len(send_errors),
        "group_lost": len(set(map(str, sent)) - set(counts)),
        "delivered_twice": sum(1 for c in counts.values() if c > 1),
        "ws_echoes": len(echo.echoes),
        "ws_echo_failures": summary_of(echo.failures),
        "ws_connections": echo.connections,
        **extra,
        "log": {p.args[0]: complaints(p.output) for p in (interface, workers[0])},
    }


def complaints(output: str, most: int = 12) -> list[str]:
    """The distinct warnings and errors in a process's *output* (timestamps cut,
    repeats counted): what a failed fault test prints to say what the servers saw."""
    counts: dict[str, int] = {}
    in_traceback = False
    for line in output.splitlines():
        if line.startswith("Traceback"):
            in_traceback = True
            continue
        if in_traceback and line.startswith(" "):
            continue
        if in_traceback or " WARNING " in line or " ERROR " in line:
            text = line.split(" ", 2)[-1] if line[:2] == "20" else line  # cut the stamp
            counts[text[:200]] = counts.get(text[:200], 0) + 1
        in_traceback = False
    return [f"{n}x {text}" for text, n in list(counts.items())[:most]]


def summary_of(failures: list[tuple[float, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _when, name in failures:
        counts[name] = counts.get(name, 0) + 1
    return counts
