"""What only the Redis layer has: URLs, sharding, reconnection, key hygiene, round trips.

The rules every layer shares are proved by the contract suite; these tests run against
real redis-server processes from conftest (never the machine's own Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import socket
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

redis = pytest.importorskip("redis")

from conftest import RedisServer, needs_redis  # noqa: E402

from wsgi_channels.layers import (  # noqa: E402
    ChannelFull,
    ConfigurationError,
    LayerUnavailable,
    layer_from_url,
)
from wsgi_channels.layers import redis as redis_layer_module  # noqa: E402
from wsgi_channels.layers.redis import RedisChannelLayer, glob_to_lua  # noqa: E402

pytestmark = needs_redis


@pytest.fixture
def make_layer() -> Iterator[Callable[[str], RedisChannelLayer]]:
    """Layers from URLs, closed (and their keys flushed) after the test."""
    layers: list[RedisChannelLayer] = []

    def make(url: str) -> RedisChannelLayer:
        layer = RedisChannelLayer.from_url(url)
        layers.append(layer)
        return layer

    yield make
    for layer in layers:
        layer.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll *predicate* until it holds (never a fixed sleep for an outcome)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


# -- URLs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("redis://localhost", {"host": "localhost", "port": 6379}, id="defaults"),
        pytest.param(
            "redis://u:p%40ss@h:6380/3",
            {"host": "h", "port": 6380, "db": 3, "username": "u", "password": "p@ss"},
            id="credentials-percent-decoded",
        ),
        pytest.param("redis://h/0?db=2", None, id="db-twice"),
        pytest.param("redis://h?db=2", {"db": 2}, id="db-in-query"),
        pytest.param(
            "redis://h?socket_timeout=9&socket_connect_timeout=0.5&health_check_interval=30",
            {"socket_timeout": 9.0, "socket_connect_timeout": 0.5, "health_check_interval": 30},
            id="timeouts",
        ),
        pytest.param(
            "rediss://h?ssl_cert_reqs=none&ssl_check_hostname=false",
            {"ssl_cert_reqs": "none", "ssl_check_hostname": False},
            id="tls",
        ),
        pytest.param(
            "rediss://h?socket_keepalive=Y&ssl_check_hostname=off",
            {"socket_keepalive": True, "ssl_check_hostname": False},
            id="flags-spelt-as-the-command-line's",
        ),
        pytest.param("unix:///tmp/r.sock?db=1", {"path": "/tmp/r.sock", "db": 1}, id="unix"),
    ],
)
def test_connection_parameters(url: str, expected: dict[str, Any] | None) -> None:
    if expected is None:
        with pytest.raises(ConfigurationError, match="database twice"):
            RedisChannelLayer.from_url(url)
        return
    layer = RedisChannelLayer.from_url(url)
    try:
        kwargs = layer._shards[0].pool.connection_kwargs
        assert {key: kwargs.get(key) for key in expected} == expected
        # Reads must outlast the longest BLPOP.
        assert kwargs["socket_timeout"] > layer.receive_timeout
    finally:
        layer.close()


def test_layer_options_from_query() -> None:
    layer = layer_from_url(
        "redis://h/0?expiry=5&capacity=7&prefix=app1&receive_timeout=0.5"
        "&channel_capacity=http.*:50,redis://h2/0?expiry=5"
    )
    assert isinstance(layer, RedisChannelLayer)
    try:
        assert (layer.expiry, layer.capacity, layer.prefix) == (5.0, 7, "app1")
        assert layer.get_capacity("http.request") == 50
        assert layer.hosts == ["redis://h/0", "redis://h2/0"]
    finally:
        layer.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("redis://:s3cret@h/0?bogus=1", "unknown option 'bogus'", id="unknown"),
        pytest.param("redis://:s3cret@h/x", "bad database", id="bad-db"),
        pytest.param("redis://:s3cret@h:port/0", "bad Redis URL", id="bad-port"),
        pytest.param("redis://:s3cret@h/0?capacity=lots", "bad value", id="bad-value"),
        pytest.param("redis://:s3cret@h/0?prefix=a:b", "prefix", id="bad-prefix"),
        pytest.param("redis://:s3cret@h/0?socket_keepalive=sometimes", "bad value", id="bad-flag"),
        pytest.param("redis://:s3cret@h/0?ssl_ca_certs=/ca", "rediss://", id="ssl-plain"),
        pytest.param(
            "redis://:s3cret@a/0?expiry=1,redis://:s3cret@b/0?expiry=2",
            "different values",
            id="shards-disagree",
        ),
        pytest.param("redis://:s3cret@a/0,ftp://b", "accepted schemes", id="bad-scheme"),
    ],
)
def test_bad_urls_are_refused_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        RedisChannelLayer.from_url(url)
    assert "s3cret" not in str(info.value)


def test_unknown_option_names_what_is_accepted() -> None:
    with pytest.raises(ConfigurationError) as info:
        RedisChannelLayer.from_url("redis://h/0?sockettimeout=1")
    for accepted in ("socket_timeout", "expiry", "prefix", "ssl_cert_reqs"):
        assert accepted in str(info.value)


def test_repr_masks_the_password() -> None:
    layer = RedisChannelLayer.from_url("redis://user:s3cret@h/0?password=s3cret2")
    try:
        assert "s3cret" not in repr(layer)
        assert "user:***@h" in repr(layer)
    finally:
        layer.close()


def test_glob_to_lua_matches_like_fnmatch(redis_server: RedisServer) -> None:
    patterns = ["http.*", "*", "a?c", "[ab]x", "[!ab]x", "x[a-c]", "ws.*!", "a.b", "[x", "?*!"]
    names = ["http.request", "http", "abc", "a.c", "ax", "cx", "xb", "ws.reply!", "a.b", "[x"]
    with redis_server.client() as client:
        for pattern in patterns:
            lua = glob_to_lua(pattern)
            for name in names:
                found = client.eval("return string.find(ARGV[1], ARGV[2]) ~= nil", 0, name, lua)
                assert bool(found) == fnmatch.fnmatchcase(name, pattern), (pattern, name, lua)


# -- servers: unix socket, password -------------------------------------------------


def test_unix_socket(tmp_path: Any, make_layer: Callable[[str], RedisChannelLayer]) -> None:
    sock = f"/tmp/wsgi-channels-{os.getpid()}.sock"  # short: sun_path is ~100 bytes
    server = RedisServer("--unixsocket", sock, "--unixsocketperm", "700")
    server.start()
    try:
        wait_until(lambda: os.path.exists(sock))
        layer = make_layer(f"unix://{sock}?db=1")
        layer.send("over.unix", {"ok": True})
        assert layer.receive(["over.unix"]) == ("over.unix", {"ok": True})
    finally:
        server.cleanup()


def test_password(make_layer: Callable[[str], RedisChannelLayer]) -> None:
    server = RedisServer("--requirepass", "s3cret")
    server.start()
    try:
        layer = make_layer(f"redis://:s3cret@127.0.0.1:{server.port}/0")
        layer.send("guarded", {"n": 1})
        assert layer.receive(["guarded"]) == ("guarded", {"n": 1})

        wrong = make_layer(f"redis://:wr0ng-s3cret@127.0.0.1:{server.port}/0")
        with pytest.raises(ConfigurationError, match="credentials") as info:
            wrong.send("guarded", {"n": 2})
        assert "s3cret" not in str(info.value)
        assert ":***@127.0.0.1" in str(info.value)

        anonymous = make_layer(f"redis://127.0.0.1:{server.port}/0")
        with pytest.raises(ConfigurationError, match="credentials"):
            anonymous.receive(["guarded"])
    finally:
        server.cleanup()


# -- sharding -----------------------------------------------------------------------


def test_sharding(
    redis_shards: list[RedisServer], make_layer: Callable[[str], RedisChannelLayer]
) -> None:
    for server in redis_shards:
        server.flushall()
    layer = make_layer(",".join(server.url for server in redis_shards))
    # Named channels share one tag (so a worker waits on them in one pop); the
    # channels that spread are the single-reader and the process channels.
    channels = [f"chan.{i}?x" for i in range(12)]
    for channel in channels:
        layer.send(channel, {"to": channel})
    assert sum(1 for server in redis_shards if server.dbsize()) > 1
    received = {layer.receive([c])[0] for c in channels}
    assert received == set(channels)
    assert [server.dbsize() for server in redis_shards] == [0, 0, 0]

    # Members on normal channels and on local channels of several processes.
    prefixes = [f"proc{i}.reply!" for i in range(6)]
    members = channels + [layer.new_channel(p) for p in prefixes for _ in range(3)]
    for member in members:
        layer.group_add("everyone", member)
    assert sum(1 for server in redis_shards if server.dbsize()) > 1
    assert sorted(layer.group_channels("everyone")) == sorted(members)
    assert layer.overview()["groups"] == {"everyone": len(members)}

    layer.send_group("everyone", {"hello": 1})
    got = []
    for name in channels + prefixes:
        while True:
            channel, message = layer.receive([name])
            if channel is None:
                break
            assert message == {"hello": 1}
            got.append(channel)
    assert sorted(got) == sorted(members)

    # A receive spanning shards waits on each in turn and still gets the message.
    shard = layer._shard_of
    first = shard(layer._queue_key(channels[0]))
    on_other_shard = next(c for c in channels if shard(layer._queue_key(c)) is not first)
    timer = threading.Timer(0.2, layer.send, (on_other_shard, {"late": True}))
    timer.start()
    try:
        assert layer.receive([channels[0], on_other_shard], block=True) == (
            on_other_shard,
            {"late": True},
        )
    finally:
        timer.join()

    layer.flush()
    assert [server.dbsize() for server in redis_shards] == [0, 0, 0]


# -- outages ------------------------------------------------------------------------


def test_reconnects_after_restart(
    own_redis: RedisServer, make_layer: Callable[[str], RedisChannelLayer]
) -> None:
    own_redis.extra_args = ["--requirepass", "s3cret"]  # to see it masked in errors
    own_redis.restart()
    url = own_redis.url.replace("redis://", "redis://:s3cret@")
    layer = make_layer(url + "?socket_connect_timeout=0.5&receive_timeout=3")
    reply = layer.new_channel("reply!")
    layer.group_add("room", reply)
    layer.send("before", {"n": 1})
    assert layer.receive(["before"]) == ("before", {"n": 1})

    # A receive blocked in BLPOP when the server goes away fails promptly.
    errors: list[BaseException] = []

    def blocked_receive() -> None:
        try:
            layer.receive(["nothing.here"], block=True)
        except BaseException as exc:
            errors.append(exc)

    waiter = threading.Thread(target=blocked_receive)
    waiter.start()
    time.sleep(0.2)  # let it reach BLPOP
    started = time.monotonic()
    own_redis.stop()
    waiter.join(5)
    assert not waiter.is_alive()
    assert time.monotonic() - started < 2.5
    assert len(errors) == 1 and isinstance(errors[0], LayerUnavailable)

    calls: list[Callable[[], object]] = [
        lambda: layer.send("during", {"n": 2}),
        lambda: layer.receive(["during"]),
        lambda: layer.receive(["during"], block=True),
        lambda: layer.send_group("room", {"n": 2}),
        lambda: layer.group_add("room", reply),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(LayerUnavailable) as info:
            call()
        assert time.monotonic() - started < 2.0
        assert "s3cret" not in str(info.value)
        assert f"127.0.0.1:{own_redis.port}" in str(info.value)

    own_redis.start()  # same port; an empty server that knows none of our scripts
    layer.send("after", {"n": 3})
    assert layer.receive(["after"], block=True) == ("after", {"n": 3})
    layer.group_add("room", reply)
    layer.send_group("room", {"n": 4})
    assert layer.receive(["reply!"], block=True) == (reply, {"n": 4})


# -- key hygiene --------------------------------------------------------------------


@pytest.fixture
def redis_start(redis_url: str, redis_server: RedisServer) -> int:
    """DBSIZE at the start of a test, with one key of someone else's in the database."""
    with redis_server.client() as client:
        client.set("not.ours", "1")
    return redis_server.dbsize()


def test_no_keys_left_after_receive(
    redis_url: str,
    redis_server: RedisServer,
    redis_start: int,
    make_layer: Callable[[str], RedisChannelLayer],
) -> None:
    layer = make_layer(redis_url)
    local = layer.new_channel("w!")
    for channel in ("plain", "q?abc", local):
        layer.send(channel, {"c": channel})
    assert redis_server.dbsize() == redis_start + 3
    for name in ("plain", "q?abc", "w!"):
        assert layer.receive([name])[0] is not None
    assert redis_server.dbsize() == redis_start


def test_expired_messages_leave_no_keys_and_free_capacity(
    redis_url: str,
    redis_server: RedisServer,
    redis_start: int,
    make_layer: Callable[[str], RedisChannelLayer],
) -> None:
    layer = make_layer(redis_url + "?expiry=1&capacity=2")
    layer.send("short", {"n": 1})
    layer.send("short", {"n": 2})
    with pytest.raises(ChannelFull):
        layer.send("short", {"n": 3})
    time.sleep(1.05)
    # The expired records at the head make room (and are dropped by this send).
    layer.send("short", {"n": 4})
    with redis_server.client() as client:
        assert client.llen("wsgi_channels:{n}:q:short") == 1
    layer.send("abandoned", {"n": 5})
    assert layer.receive(["short"]) == ("short", {"n": 4})
    # The abandoned queue's key expires expiry + 1 s after its last push.
    wait_until(lambda: redis_server.dbsize() == redis_start, timeout=4)


def test_group_memberships_leave_no_keys(
    redis_url: str,
    redis_server: RedisServer,
    redis_start: int,
    make_layer: Callable[[str], RedisChannelLayer],
) -> None:
    layer = make_layer(redis_url + "?group_expiry=1")
    members = ["plain", layer.new_channel("p!"), layer.new_channel("p!")]
    for member in members:
        layer.group_add("g", member)
    assert redis_server.dbsize() > redis_start
    for member in members:
        layer.group_discard("g", member)
    assert redis_server.dbsize() == redis_start
    assert layer.group_channels("g") == []

    for member in members:
        layer.group_add("g", member)
    wait_until(lambda: layer.group_channels("g") == [], timeout=3)
    layer.send_group("g", {"to": "nobody"})  # expired members get nothing
    wait_until(lambda: redis_server.dbsize() == redis_start, timeout=4)


# -- cost ---------------------------------------------------------------------------


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Every command the client sends, as its arguments."""
    sent: list[tuple[Any, ...]] = []
    original = redis.connection.AbstractConnection.send_command

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        sent.append(args)
        original(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_command", counting)
    return sent


def test_one_round_trip_per_operation(
    redis_url: str,
    redis_server: RedisServer,
    make_layer: Callable[[str], RedisChannelLayer],
    round_trips: list[tuple[Any, ...]],
) -> None:
    layer = make_layer(redis_url)
    layer.send("warm", {})  # connect and load the scripts first
    layer.receive(["warm"])
    with redis_server.client() as client:
        before = client.info("commandstats")
    local = layer.new_channel("rt!")
    layer.group_add("rt", local)
    round_trips.clear()

    for i in range(10):
        layer.send("rt.chan", {"i": i})
    layer.send_group("rt", {"all": True})
    assert len(round_trips) == 11
    assert [args[0] for args in round_trips] == ["EVALSHA"] * 11
    for i in range(0, 10, 2):
        assert layer.receive(["rt.chan"]) == ("rt.chan", {"i": i})
        assert layer.receive(["rt.chan", "other"], block=True) == ("rt.chan", {"i": i + 1})
    assert len(round_trips) == 21
    with redis_server.client() as client:
        after = client.info("commandstats")

    def calls(stats: dict[str, Any], command: str) -> int:
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    # Server side: the scripts ran once per call (their inner commands count apart);
    # group_add runs two (the group's and the channel's set of groups) in one write.
    assert calls(after, "evalsha") - calls(before, "evalsha") == 2 + 11 + 5
    assert calls(after, "blpop") - calls(before, "blpop") == 5


def test_sends_from_many_threads_share_round_trips_and_each_gets_its_outcome(
    redis_url: str,
    make_layer: Callable[[str], RedisChannelLayer],
    round_trips: list[tuple[Any, ...]],
) -> None:
    # 16 threads of 40 sends, all at once, to a channel with room for 600 of the 640:
    # the sends share round trips (group commit), each thread is told of its own
    # send's fate (40 of them ChannelFull), and every send that succeeded arrives.
    layer = make_layer(redis_url + "?channel_capacity=shared.q:600")
    layer.send("warm", {})
    round_trips.clear()
    start = threading.Barrier(16)
    accepted: list[int] = []
    refused: list[int] = []
    lock = threading.Lock()

    def burst(k: int) -> None:
        start.wait()
        for i in range(40):
            try:
                layer.send("shared.q", {"n": k * 100 + i})
            except ChannelFull:
                with lock:
                    refused.append(k * 100 + i)
            else:
                with lock:
                    accepted.append(k * 100 + i)

    threads = [threading.Thread(target=burst, args=(k,)) for k in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert len(accepted) == 600 and len(refused) == 40
    assert len(round_trips) < 640  # shared: fewer round trips than sends
    got = [m["n"] for _c, m in layer.receive_batch(["shared.q"], max_messages=1000)]
    while len(got) < 600:
        more = layer.receive_batch(["shared.q"], max_messages=1000)
        assert more, got
        got += [m["n"] for _c, m in more]
    assert sorted(got) == sorted(accepted)


@pytest.fixture
def stalling_redis() -> Iterator[tuple[RedisServer, Callable[[float], threading.Thread]]]:
    """A redis-server of our own that takes DEBUG SLEEP, and ``stall(seconds)``,
    which holds it that long from another connection (in a thread, returned)."""
    server = RedisServer("--enable-debug-command", "yes")
    server.start()

    def stall(seconds: float) -> threading.Thread:
        def sleep() -> None:
            with server.client() as client:
                client.execute_command("DEBUG", "SLEEP", seconds)

        thread = threading.Thread(target=sleep)
        thread.start()
        time.sleep(0.1)  # it has reached the server
        return thread

    try:
        yield server, stall
    finally:
        server.cleanup()


def _send_in_flight(layer: RedisChannelLayer, channel: str, message: dict[str, Any]) -> Any:
    """A thread whose send is held in flight by the stalled server."""
    thread = threading.Thread(target=layer.send, args=(channel, message))
    thread.start()
    time.sleep(0.1)
    assert thread.is_alive()
    return thread


def test_send_soon_joins_a_round_trip_in_flight_without_waiting(
    stalling_redis: tuple[RedisServer, Callable[[float], threading.Thread]],
    make_layer: Callable[[str], RedisChannelLayer],
) -> None:
    # A thread's send is in flight (the server stalls 0.6 s): send_soon from another
    # thread returns at once, its outcome (sent, then full: capacity 2) comes from
    # the leading thread once the round trip is back, and the channel holds the
    # messages in the order they were sent.
    server, stall = stalling_redis
    layer = make_layer(server.url + "?channel_capacity=soon.q:2")
    layer.send("warm", {})
    sleeper = stall(0.6)
    leader = _send_in_flight(layer, "soon.q", {"n": 0})
    outcomes: list[Any] = []
    started = time.monotonic()
    layer.send_soon("soon.q", {"n": 1}, outcomes.append)
    layer.send_soon("soon.q", {"n": 2}, outcomes.append)
    returned = time.monotonic() - started
    assert returned < 0.1, returned
    assert outcomes == [] and leader.is_alive()
    leader.join(5)
    sleeper.join(5)
    wait_until(lambda: len(outcomes) == 2)
    assert outcomes == [True, False]
    got = [layer.receive(["soon.q"]), layer.receive(["soon.q"]), layer.receive(["soon.q"])]
    assert got == [("soon.q", {"n": 0}), ("soon.q", {"n": 1}), (None, None)]


def test_send_soon_waits_once_the_leader_has_led_its_rounds(
    stalling_redis: tuple[RedisServer, Callable[[float], threading.Thread]],
    make_layer: Callable[[str], RedisChannelLayer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With no rounds left to the leading thread (DETACHED_ROUNDS = 0), a send_soon
    # made while its round trip is in flight waits, leads the next round trip itself
    # and reports before it returns: no thread leads others' sends without end.
    monkeypatch.setattr(redis_layer_module, "DETACHED_ROUNDS", 0)
    server, stall = stalling_redis
    layer = make_layer(server.url)
    layer.send("warm", {})
    sleeper = stall(0.5)
    leader = _send_in_flight(layer, "soon.q", {"n": 0})
    outcomes: list[Any] = []
    started = time.monotonic()
    layer.send_soon("soon.q", {"n": 1}, outcomes.append)
    waited = time.monotonic() - started
    assert outcomes == [True]
    assert waited > 0.2, waited
    leader.join(5)
    sleeper.join(5)
    got = [layer.receive(["soon.q"]), layer.receive(["soon.q"]), layer.receive(["soon.q"])]
    assert got == [("soon.q", {"n": 0}), ("soon.q", {"n": 1}), (None, None)]


def test_group_send_writes_one_record_per_process(
    redis_url: str, redis_server: RedisServer, make_layer: Callable[[str], RedisChannelLayer]
) -> None:
    layer = make_layer(redis_url)
    members = [layer.new_channel(p) for p in ("one!", "two!") for _ in range(50)]
    for member in [*members, "solo"]:
        layer.group_add("big", member)
    layer.send_group("big", {"text": "hi"})
    with redis_server.client() as client:
        assert [client.llen(layer._queue_key(q)) for q in ("one!", "two!", "solo")] == [
            1,
            1,
            1,
        ]
    got = {layer.receive(["one!", "two!"])[0] for _ in members}
    assert got == set(members)
    assert layer.receive(["one!", "two!"]) == (None, None)


def test_group_send_applies_capacity_patterns(
    redis_url: str, make_layer: Callable[[str], RedisChannelLayer]
) -> None:
    layer = make_layer(redis_url + "?channel_capacity=tiny.*:1")
    for member in ("tiny.a", "roomy.a"):
        layer.group_add("caps", member)
    layer.send_group("caps", {"n": 1})
    layer.send_group("caps", {"n": 2})
    assert layer.global_statistics()["group_full_count"] == 1
    assert layer.channel_statistics("tiny.a")["messages_pending"] == 1
    assert layer.channel_statistics("roomy.a")["messages_pending"] == 2


# -- processes ----------------------------------------------------------------------


def test_fork_safety(redis_url: str, make_layer: Callable[[str], RedisChannelLayer]) -> None:
    layer = make_layer(redis_url)
    layer.send("parent", {"n": 1})  # the parent holds a pooled connection
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            assert layer.receive(["parent"]) == ("parent", {"n": 1})
            layer.send("child", {"n": 2})
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connection survived the child.
    assert layer.receive(["child"], block=True) == ("child", {"n": 2})


# -- dropped connections ------------------------------------------------------------


def _kill_clients(server: RedisServer) -> int:
    """``CLIENT KILL TYPE normal`` from a connection of our own: every client but
    this one loses its connection (as with a proxy's idle timeout or a failover)."""
    with server.client() as client:
        client.client_setname("killer")
        return int(client.execute_command("CLIENT KILL TYPE normal SKIPME yes"))


def test_a_dropped_connection_is_replaced_before_the_next_command(
    redis_url: str, redis_server: RedisServer, make_layer: Callable[[str], RedisChannelLayer]
) -> None:
    layer = make_layer(redis_url + "?receive_timeout=3")
    member = layer.new_channel("kill!")
    layer.group_add("killed", member)
    layer.send("warm", {"n": 0})
    assert layer.receive(["warm"]) == ("warm", {"n": 0})
    assert _kill_clients(redis_server) >= 1
    # Each call finds its connection closed and makes a new one: no error, once each.
    layer.send("after", {"n": 1})
    layer.send_group("killed", {"n": 2})
    assert layer.receive(["after"]) == ("after", {"n": 1})
    assert layer.receive([member.partition("!")[0] + "!"]) == (member, {"n": 2})
    assert layer.receive(["after"]) == (None, None)

    # A blocking receive whose connection is killed while it waits tries again.
    timer = threading.Timer(0.3, _kill_clients, (redis_server,))
    late = threading.Timer(0.6, layer.send, ("late", {"n": 3}))
    timer.start()
    late.start()
    try:
        assert layer.receive(["late"], block=True) == ("late", {"n": 3})
    finally:
        timer.join()
        late.join()

    async def face_after_kill() -> object:
        face = layer.async_face()
        try:
            await face.send("face", {"n": 4})
            _kill_clients(redis_server)
            await face.send("face", {"n": 5})
        finally:
            await face.aclose()
        return [layer.receive(["face"])[1], layer.receive(["face"])[1]]

    assert asyncio.run(face_after_kill()) == [{"n": 4}, {"n": 5}]


LOAD_CONCURRENCY = 4


@pytest.mark.slow
@pytest.mark.fault
def test_client_kill_under_load_fails_nothing_and_delivers_nothing_twice(
    own_redis: RedisServer,
) -> None:
    from _redis_servers import fault_under_load

    figures = fault_under_load(
        own_redis.url,
        lambda: {"clients_killed": _kill_clients(own_redis)},
        before=1.5,
        after=1.5,
        concurrency=LOAD_CONCURRENCY,
        tick=0.01,
    )
    print(f"\n[CLIENT KILL under load] {figures}")
    assert figures["processes_alive"], figures
    assert figures["clients_killed"] >= 5  # the interface's, the workers' and our own
    # Only a command caught on the wire by the kill may fail: a send whose outcome is
    # unknown is not sent again (it could deliver twice: a 503, or refused to our
    # ticker), and a pop whose reply was cut lost what it took (at-most-once). The
    # kill is one instant, so only what was in flight then can fail: at most one
    # request per client thread of the load (a 503 for a send cut, a 504 for a reply
    # or a take cut with its messages), one group message, one WebSocket frame (its
    # socket closes and the client reconnects). Nothing is ever delivered twice.
    assert figures["failed"] <= LOAD_CONCURRENCY, figures
    assert figures["hung"] == 0, figures
    assert figures["group_send_refused"] + figures["group_lost"] <= 1, figures
    assert sum(figures["ws_echo_failures"].values()) <= 1, figures
    assert figures["delivered_twice"] == 0, figures
    assert figures["ws_connections"] == 1  # the socket stayed up


def make_plain_layer(url: str) -> RedisChannelLayer:
    return RedisChannelLayer.from_url(url)


class ResettingProxy:
    """A TCP proxy to a Redis server whose :meth:`reset` cuts every connection with a
    TCP reset (SO_LINGER 0), as a server killed with data unread does."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.clients: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.clients.append(client)
            back = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
            back.start()
            threading.Thread(target=self._forth, args=(client, upstream, back), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def _forth(
        self, client: socket.socket, upstream: socket.socket, back: threading.Thread
    ) -> None:
        # This thread alone closes the pair (a socket closed under a thread blocked
        # in recv on it would not wake that thread, and its number could be reused).
        self._pump(client, upstream)
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_RDWR)
        back.join()
        upstream.close()
        with contextlib.suppress(ValueError):
            self.clients.remove(client)
        client.close()  # a reset when reset() set SO_LINGER 0

    def reset(self) -> None:
        for client in list(self.clients):
            with contextlib.suppress(OSError):
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.shutdown(socket.SHUT_RD)  # wakes its thread; sends nothing

    def close(self) -> None:
        self.reset()
        self.listener.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_reset_while_nobody_reads_is_an_outage_the_receive_rides_out(
    redis_url: str, loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The interface runs on uvloop, which closes a connection's transport on a reset
    # that comes while no read is pending: the next write must see a lost connection
    # (and reconnect), not a closed handler (which once ended the receive task).
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = ResettingProxy(port)
    layer = RedisChannelLayer.from_url(f"redis://127.0.0.1:{proxy.port}/0")
    sender = RedisChannelLayer.from_url(redis_url)
    got: list[int] = []

    async def main() -> None:
        face = layer.async_face()

        async def reset_meanwhile() -> None:
            proxy.reset()  # while the receive task waits on this, reading nothing
            await asyncio.sleep(0.3)

        def deliver(entries: list[Any]) -> Any:
            got.extend(m["n"] for _c, m in entries)
            return reset_meanwhile() if got == [1] else None

        face.listen(["rst!"], deliver)
        await asyncio.sleep(0.2)
        sender.send("rst!a", {"n": 1})
        deadline = time.monotonic() + 5
        while got != [1] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        sender.send("rst!a", {"n": 2})
        while got != [1, 2] and time.monotonic() < deadline + 5:
            await asyncio.sleep(0.01)
        await face.aclose()

    run = pytest.importorskip("uvloop").run if loop == "uvloop" else asyncio.run
    try:
        with caplog.at_level("WARNING"):
            run(main())
    finally:
        layer.close()
        sender.close()
        proxy.close()
    assert got == [1, 2], caplog.text
    assert "starting again" not in caplog.text  # an outage retried, not a crash
