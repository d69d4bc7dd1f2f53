"""The Redis layer on a real six-node Redis Cluster (tests/_redis_servers.py): URLs,
what a group send costs per node, a resharding under load, the whole stack end to end,
and a master killed under load. The layer contract runs on the cluster too
(test_layer_contract.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

redis = pytest.importorskip("redis")

from _redis_servers import (  # noqa: E402
    REDIS_CLI,
    RedisCluster,
    _client,
    failover_under_load,
)
from conftest import REDIS_SERVER  # noqa: E402

from wsgi_channels.layers import ConfigurationError, layer_from_url  # noqa: E402
from wsgi_channels.layers.redis import RedisChannelLayer  # noqa: E402

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None or REDIS_CLI is None, reason="no redis-server/redis-cli on PATH"
)


@pytest.fixture
def make_layer(cluster_url: str) -> Iterator[Callable[..., RedisChannelLayer]]:
    layers: list[RedisChannelLayer] = []

    def make(query: str = "") -> RedisChannelLayer:
        layer = RedisChannelLayer.from_url(cluster_url + query)
        layers.append(layer)
        return layer

    yield make
    for layer in layers:
        layer.close()


# -- URLs ---------------------------------------------------------------------------


def test_cluster_url_names_seeds_and_options() -> None:
    layer = layer_from_url("redis+cluster://:s3cret@a:7000,b:7001/?expiry=5&socket_timeout=9")
    assert isinstance(layer, RedisChannelLayer)
    assert layer.cluster and layer.expiry == 5
    assert all(":***@" in host for host in layer.hosts)
    assert "s3cret" not in repr(layer)
    assert all(kw["socket_timeout"] == 9 for kw in layer._pool_kwargs)
    assert [kw["port"] for kw in layer._pool_kwargs] == [7000, 7001]
    assert all(kw["password"] == "s3cret" for kw in layer._pool_kwargs)
    tls = layer_from_url("rediss+cluster://a:7000?ssl_cert_reqs=none")
    assert isinstance(tls, RedisChannelLayer) and tls.cluster
    assert tls._pool_kwargs[0]["connection_class"] is redis.SSLConnection


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("redis+cluster://:s3cret@a:7000/3", "database 0 only", id="db"),
        pytest.param("redis+cluster://:s3cret@a:7000?db=2", "database 0 only", id="db-query"),
        pytest.param("redis+cluster://:s3cret@/", "names no host", id="no-host"),
        pytest.param("redis+cluster://:s3cret@a:7000,,b:1", "empty host", id="empty-host"),
        pytest.param("redis+cluster://:s3cret@a:7000?bogus=1", "unknown option", id="option"),
        pytest.param("redis+cluster://:s3cret@a:x", "bad Redis URL", id="bad-port"),
        pytest.param(
            "redis://:s3cret@a/0,redis+cluster://b:1", "accepted schemes", id="mixed-shards"
        ),
        pytest.param("redis+clustr://a:1", "accepted schemes", id="typo"),
    ],
)
def test_bad_cluster_urls_are_refused_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        layer_from_url(url)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("scheme", ["redis+cluster", "rediss+cluster"])
def test_a_cluster_nobody_answers_for_is_unavailable_naming_no_password(scheme: str) -> None:
    from conftest import free_port

    from wsgi_channels.layers import LayerUnavailable

    layer = layer_from_url(f"{scheme}://:s3cret@127.0.0.1:{free_port()}?ssl_cert_reqs=none"
                           if scheme.startswith("rediss") else
                           f"{scheme}://:s3cret@127.0.0.1:{free_port()}")  # fmt: skip
    with pytest.raises(LayerUnavailable, match="no node of the Redis Cluster") as info:
        layer.send("x", {})
    assert "s3cret" not in str(info.value)


# -- the key layout on a cluster ----------------------------------------------------


def _inboxes_on_every_master(layer: RedisChannelLayer, cluster: RedisCluster) -> list[str]:
    """One ``name!`` prefix whose queue lives on each master."""
    found: dict[int, str] = {}
    for i in range(200):
        prefix = f"proc{i}!"
        found.setdefault(cluster.master_of(layer._queue_key(prefix)), prefix)
        if len(found) == 3:
            return list(found.values())
    raise AssertionError("no spread over the masters")


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """The server (host, port) of every write the client makes: one per round trip."""
    seen: list[tuple[str, int]] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        seen.append((self.host, self.port))
        original(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return seen


def test_a_group_send_costs_one_round_trip_per_node_whatever_its_size(
    make_layer: Callable[..., RedisChannelLayer],
    redis_cluster: RedisCluster,
    writes: list[tuple[str, int]],
) -> None:
    layer = make_layer()
    prefixes = _inboxes_on_every_master(layer, redis_cluster)
    for size in (10, 1000):
        group = f"g{size}"
        members = [layer.new_channel(prefixes[i % 3]) for i in range(size)]
        for member in members:
            layer.group_add(group, member)
        layer.send_group(group, {"n": size})  # scripts loaded, slot map read
        group_node = redis_cluster.master_of(layer._group_key(group))
        masters = redis_cluster.masters()
        writes.clear()
        layer.send_group(group, {"n": size})
        # The group's node once, then each master holding member queues once.
        assert writes[0][1] == group_node
        assert sorted(port for _host, port in writes[1:]) == masters
        got = []
        for prefix in prefixes:
            got += layer.receive_batch([prefix], max_messages=size, max_records=2)
        assert sorted(c for c, _m in got) == sorted(members * 2)


def test_memberships_and_their_cleanup_span_slots(
    make_layer: Callable[..., RedisChannelLayer], redis_cluster: RedisCluster
) -> None:
    layer = make_layer()
    channel = layer.new_channel("proc!")
    groups = [f"room{i}" for i in range(30)]  # on every master
    assert len({redis_cluster.master_of(layer._group_key(g)) for g in groups}) == 3
    for group in groups:
        layer.group_add(group, channel)
    assert all(layer.group_channels(g) == [channel] for g in groups)
    layer.discard_channel(channel)
    assert all(layer.group_channels(g) == [] for g in groups)
    assert redis_cluster.dbsize() == 0


def test_a_workers_reply_and_next_take_share_a_round_trip_on_its_slot(
    make_layer: Callable[..., RedisChannelLayer],
    redis_cluster: RedisCluster,
    writes: list[tuple[str, int]],
) -> None:
    layer = make_layer()
    inbox = layer.new_channel("iface!")  # the interface's inbox: a slot of its own
    layer.send("work.in", {"i": 1})
    layer.send("work.in", {"i": 2})
    layer.send_then_receive([("work.out", {})], ["work.in"], 1)  # scripts loaded
    writes.clear()
    # Named channels share a slot: the send and the pop go in one write.
    results, batch = layer.send_then_receive([("work.out", {"o": 1})], ["work.in"], 1)
    assert (results, batch) == ([None], [("work.in", {"i": 2})])
    assert len(writes) == 1
    # A reply to another slot still goes out, with the take, correctly.
    results, batch = layer.send_then_receive([(inbox, {"r": 1})], ["work.in"], 1)
    assert (results, batch) == ([None], [])
    assert layer.receive([inbox.partition("!")[0] + "!"]) == (inbox, {"r": 1})
    assert [m for _c, m in layer.receive_batch(["work.out"], max_messages=5, max_records=5)] == [
        {},
        {"o": 1},
    ]


def _migrate(cluster: RedisCluster, key: str) -> int:
    """Move *key*'s slot to another master, as ``redis-cli --cluster reshard`` does:
    IMPORTING/MIGRATING, MIGRATE the keys in batches, then the slot's new owner."""
    source = cluster.master_of(key)
    target = next(port for port in cluster.masters() if port != source)
    with _client(source) as src, _client(target) as dst:
        slot = int(src.execute_command("CLUSTER KEYSLOT", key))
        source_id = src.execute_command("CLUSTER MYID")
        target_id = dst.execute_command("CLUSTER MYID")
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 10):
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
            time.sleep(0.05)  # commands arrive between batches: some get ASK
        # The new owner first, then the old one (so that they never send a command
        # back and forth), then the rest.
        dst.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        src.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        for port in cluster.masters():
            if port not in (source, target):
                with _client(port) as client:
                    client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
    return target


def test_resharding_under_load_loses_and_repeats_nothing(
    make_layer: Callable[..., RedisChannelLayer], redis_cluster: RedisCluster
) -> None:
    layer = make_layer("?capacity=100000")
    channel = layer.new_channel("moving!")
    prefix = channel.partition("!")[0] + "!"
    errors: list[BaseException] = []
    sent: list[int] = []
    stop = threading.Event()

    def send() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                layer.send(channel, {"n": n})
                sent.append(n)
            except Exception as exc:
                errors.append(exc)
            time.sleep(0.001)

    sender = threading.Thread(target=send)
    sender.start()
    got: list[int] = []
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            got += [m["n"] for _c, m in layer.receive_batch([prefix], True, max_records=50)]
        target = _migrate(redis_cluster, layer._queue_key(prefix))
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            got += [m["n"] for _c, m in layer.receive_batch([prefix], True, max_records=50)]
    finally:
        stop.set()
        sender.join()
    while batch := layer.receive_batch([prefix], max_records=50):
        got += [m["n"] for _c, m in batch]
    assert redis_cluster.master_of(layer._queue_key(prefix)) == target
    assert errors == []
    assert got == sent  # in order, nothing lost, nothing twice
    assert len(sent) > 200


def test_the_asyncio_face_follows_a_resharding_under_load(
    make_layer: Callable[..., RedisChannelLayer],
    redis_cluster: RedisCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The interface's side: sends of a loop turn and the receive task's BLMPOP on a
    slot that moves (ASK while it migrates, MOVED after)."""
    receiver, sender = make_layer("?capacity=100000"), make_layer("?capacity=100000")
    channel = receiver.new_channel("aio.moving!")
    prefix = channel.partition("!")[0] + "!"

    async def run() -> tuple[list[int], list[int], list[BaseException], int]:
        got: list[int] = []
        inbox = receiver.async_face()
        outbox = sender.async_face()
        inbox.listen([prefix], lambda entries: got.extend(m["n"] for _c, m in entries))
        sent: list[int] = []
        errors: list[BaseException] = []

        async def send_for(seconds: float, start: int) -> int:
            n = start
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                n += 1
                try:
                    await outbox.send(channel, {"n": n})
                    sent.append(n)
                except Exception as exc:
                    errors.append(exc)
                await asyncio.sleep(0.001)
            return n

        try:
            n = await send_for(0.3, 0)
            migration = asyncio.get_running_loop().run_in_executor(
                None, _migrate, redis_cluster, receiver._queue_key(prefix)
            )
            while not migration.done():
                n = await send_for(0.05, n)
            target = await migration
            await send_for(0.3, n)
            deadline = time.monotonic() + 5
            while len(got) < len(sent) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        finally:
            await inbox.aclose()
            await outbox.aclose()
        return got, sent, errors, target

    with caplog.at_level("WARNING", logger="wsgi_channels"):
        got, sent, errors, target = asyncio.run(run())
    assert redis_cluster.master_of(receiver._queue_key(prefix)) == target
    assert errors == []
    assert [r.getMessage() for r in caplog.records] == []  # not even a brief outage
    assert got == sent  # in order, nothing lost, nothing twice
    assert len(sent) > 100


# -- end to end ---------------------------------------------------------------------


@pytest.mark.slow
def test_interface_worker_http_websocket_and_groups_across_two_interfaces(
    cluster_url: str,
) -> None:
    import requests
    import websockets
    from servers import InterfaceProcess, WorkerProcess

    worker = WorkerProcess("apps:echo", cluster_url)
    interfaces = [InterfaceProcess(cluster_url), InterfaceProcess(cluster_url)]
    layer = layer_from_url(cluster_url)
    try:
        worker.start()
        for interface in interfaces:
            interface.start()
        for interface in interfaces:
            reply = requests.post(interface.url + "/echo?x=1", data=b"body", timeout=10)
            assert reply.status_code == 200
            assert reply.json()["body"] == "body" and reply.json()["query"] == "x=1"

        async def talk() -> list[object]:
            sockets = [
                await websockets.connect(i.ws_url + "/ws/group?name=lobby") for i in interfaces
            ]
            try:
                for n, ws in enumerate(sockets):
                    await ws.send(f"hello {n}")
                    assert await asyncio.wait_for(ws.recv(), 5) == f"hello {n}"
                deadline = time.monotonic() + 5
                while len(layer.group_channels("lobby")) < 2 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                layer.send_group("lobby", {"text": "to everyone"})
                return [await asyncio.wait_for(ws.recv(), 5) for ws in sockets]
            finally:
                for ws in sockets:
                    await ws.close()

        assert asyncio.run(talk()) == ["to everyone", "to everyone"]
        # Closed sockets leave their group.
        deadline = time.monotonic() + 5
        while layer.group_channels("lobby") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert layer.group_channels("lobby") == []
    finally:
        for interface in interfaces:
            interface.stop()
        worker.stop()
        layer.close()


@pytest.mark.slow
@pytest.mark.fault
def test_a_master_killed_under_load_fails_over_within_seconds(
    cluster_url: str, redis_cluster: RedisCluster
) -> None:
    probe = layer_from_url(cluster_url)
    assert isinstance(probe, RedisChannelLayer)
    # The master of the named channels: every request goes through it.
    key = probe._queue_key("http.request")
    probe.close()

    def kill() -> int:
        port = redis_cluster.master_of(key)
        redis_cluster.kill(port)
        return port

    def promoted(port: int) -> bool:
        return redis_cluster.master_of(key) != port

    figures = failover_under_load(cluster_url, kill, promoted)
    print(f"\n[cluster master killed] {figures}")
    assert figures["processes_alive"]
    assert figures["hung"] == 0
    assert figures["delivered_twice"] == 0
    assert figures["recovery_after_promotion_s"] <= 5.0
    assert figures["requests_after_recovery"] > 20
    assert figures["ws_echo_failures"].get("AssertionError", 0) == 0  # no echo twice
