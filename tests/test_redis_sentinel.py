"""The Redis layer behind a real Sentinel set (tests/_redis_servers.py): URLs, the
master found through the sentinels (never a default address), and the master killed
under load. The layer contract runs behind Sentinel too (test_layer_contract.py)."""

from __future__ import annotations

import asyncio

import pytest

redis = pytest.importorskip("redis")

from _redis_servers import SentinelSet, _client, failover_under_load  # noqa: E402
from conftest import needs_redis  # noqa: E402

from wsgi_channels.layers import ConfigurationError, layer_from_url  # noqa: E402
from wsgi_channels.layers.redis import RedisChannelLayer  # noqa: E402

pytestmark = needs_redis


def test_sentinel_url_names_sentinels_service_and_database() -> None:
    layer = layer_from_url(
        "redis+sentinel://:s3cret@a:26379,b/mymaster/2?sentinel_password=sp&expiry=5"
    )
    assert isinstance(layer, RedisChannelLayer)
    assert layer.sentinel == "mymaster" and layer.expiry == 5
    assert [(kw["host"], kw["port"]) for kw in layer._pool_kwargs] == [("a", 26379), ("b", 26379)]
    assert layer._pool_kwargs[0]["db"] == 2 and layer._pool_kwargs[0]["password"] == "s3cret"
    assert layer._sentinel_options == {"sentinel_password": "sp"}
    assert "s3cret" not in repr(layer) and "sp" not in "".join(layer.hosts)
    # Connections ask the sentinels for the master, over TLS too.
    managed = redis.sentinel.SentinelManagedConnection
    assert layer._shards[0].pool.connection_class is managed
    tls = layer_from_url("rediss+sentinel://a/mymaster?ssl_cert_reqs=none")
    assert isinstance(tls, RedisChannelLayer)
    assert tls._shards[0].pool.connection_class is redis.sentinel.SentinelManagedSSLConnection


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("redis+sentinel://:s3cret@a:26379", "names no service", id="no-service"),
        pytest.param("redis+sentinel://:s3cret@a:26379/", "names no service", id="empty"),
        pytest.param("redis+sentinel://:s3cret@a/svc/x", "bad database", id="bad-db"),
        pytest.param("redis+sentinel://:s3cret@a/s%20v", "service name", id="bad-service"),
        pytest.param("redis+sentinel://:s3cret@a/svc?nope=1", "unknown option", id="option"),
        pytest.param("redis://:s3cret@a/0?sentinel_password=x", r"redis\+sentinel", id="misplaced"),
    ],
)
def test_bad_sentinel_urls_are_refused_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        layer_from_url(url)
    assert "s3cret" not in str(info.value)


def test_the_layer_writes_to_the_master_the_sentinels_name(
    sentinel_url: str, redis_sentinel: SentinelSet
) -> None:
    layer = layer_from_url(sentinel_url)
    other = layer_from_url(sentinel_url)  # a send from here goes through the master
    try:
        layer.send("where", {"n": 1})
        with _client(redis_sentinel.master()) as master:
            assert master.exists("wsgi_channels:{n}:q:where") == 1

        async def face_round_trip() -> object:
            face = layer.async_face()  # type: ignore[attr-defined]
            got: asyncio.Queue[object] = asyncio.Queue()
            face.listen(["face!"], lambda entries: got.put_nowait(entries))
            try:
                await asyncio.sleep(0.1)
                other.send("face!x", {"n": 2})
                return await asyncio.wait_for(got.get(), 5)
            finally:
                await face.aclose()

        assert asyncio.run(face_round_trip()) == [(["face!x"], {"n": 2})]
        assert layer.receive(["where"]) == ("where", {"n": 1})
    finally:
        layer.close()
        other.close()


@pytest.mark.slow
@pytest.mark.fault
def test_the_master_killed_under_load_fails_over_within_seconds(
    sentinel_url: str, redis_sentinel: SentinelSet
) -> None:
    def promoted(port: int) -> bool:
        return redis_sentinel.master() != port

    figures = failover_under_load(sentinel_url, redis_sentinel.kill_master, promoted)
    print(f"\n[sentinel master killed] {figures}")
    assert figures["processes_alive"]
    assert figures["hung"] == 0
    assert figures["delivered_twice"] == 0
    assert figures["recovery_after_promotion_s"] <= 5.0
    assert figures["requests_after_recovery"] > 20
    assert figures["ws_echo_failures"].get("AssertionError", 0) == 0  # no echo twice
