"""The Redis layer's asyncio face (:meth:`RedisChannelLayer.async_face`), used by the
interface server: redis.asyncio connections of its own, commands packed by hiredis, the
sends of one event-loop turn in one round trip per server, each inbox drained many
messages at a time. Every rule of the layer (keys, scripts, capacity, expiry, cluster
redirections) is the synchronous layer's, which this face calls for them."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from .aio import AsyncFace, Deliver, Entry, Receipt, _Backoff
from .base import ChannelsError, LayerUnavailable, Record, decode_message, non_local_name
from .redis import MAX_REDIRECTS, SHARD_SLICE, RedisChannelLayer, _packed, _Send, _settle, _Shard

#: Bytes waiting in a Redis socket's buffer over which a write waits for room.
_WRITE_HIGH = 256 * 1024


def _async_kwargs(kwargs: Mapping[str, Any]) -> tuple[type[Any], dict[str, Any]]:
    """redis.asyncio connection class and arguments for the sync pool *kwargs*."""
    kwargs = dict(kwargs)
    sync_class = kwargs.pop("connection_class", None)
    kwargs.pop("max_connections", None)
    kwargs["retry"] = AsyncRetry(NoBackoff(), 0)
    connection_class: type[Any] = redis.asyncio.Connection
    if sync_class is redis.UnixDomainSocketConnection:
        connection_class = redis.asyncio.UnixDomainSocketConnection
    elif sync_class is redis.SSLConnection:
        connection_class = redis.asyncio.SSLConnection
    return connection_class, kwargs


def _gone(conn: Any) -> bool:
    """Did the server close or reset *conn* while nobody was reading it? A close
    leaves the reader at EOF; a reset (a server killed with data unread) leaves the
    error on the reader and, under uvloop, a closed transport, on which a write
    raises RuntimeError rather than the read after it failing. Either way the
    connection is replaced before a command is written to it (nothing awaits between
    this check and the write, so the transport cannot close in between)."""
    reader = getattr(conn, "_reader", None)
    if reader is None:
        return False
    if reader.at_eof() or reader.exception() is not None:
        return True
    writer = getattr(conn, "_writer", None)
    return writer is not None and writer.transport.is_closing()


class _AsyncConnection:
    """One redis.asyncio connection to a server, used by one task at a time (callers
    hold :attr:`lock`); reconnects by itself on the next call after a failure. Behind
    Sentinel it connects to whichever master the sentinels name."""

    def __init__(self, layer: RedisChannelLayer, shard: _Shard) -> None:
        self.layer = layer
        self.shard = shard
        self.lock = asyncio.Lock()
        connection_class, kwargs = _async_kwargs(shard.kwargs)
        if shard.sentinel is None:
            self.conn = connection_class(**kwargs)
            return
        service, addresses, sentinel_kwargs = shard.sentinel
        sentinel_kwargs = {**sentinel_kwargs, "retry": AsyncRetry(NoBackoff(), 0)}
        manager = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
            addresses, sentinel_kwargs=sentinel_kwargs, **sentinel_kwargs
        )
        for key in ("host", "port"):
            kwargs.pop(key, None)
        if connection_class is redis.asyncio.SSLConnection:
            kwargs["connection_class"] = redis.asyncio.sentinel.SentinelManagedSSLConnection
        pool = redis.asyncio.sentinel.SentinelConnectionPool(service, manager, **kwargs)  # type: ignore[no-untyped-call]
        self.pool = pool  # the connection holds only a weak reference to it
        self.sentinels: list[Any] = list(manager.sentinels)
        self.conn = pool.connection_class(**pool.connection_kwargs)

    async def execute(self, args: tuple[Any, ...], retry: bool = True) -> Any:
        """One command, with the caller holding :attr:`lock`; a connection the server
        closed is replaced before the command is written, and the command is sent
        again as :meth:`RedisChannelLayer._send_and_read` says."""
        return (await self.pipeline([args], retry, single=True))[0]

    async def pipeline(
        self, batch: list[tuple[Any, ...]], retry: bool, *, single: bool = False
    ) -> list[Any]:
        """Write *batch* at once and read every reply (error replies as their
        exceptions, or raised when *single*), with the caller holding :attr:`lock`."""
        conn = self.conn
        if _gone(conn):
            await conn.disconnect(nowait=True)
        for attempt in (0, 1):
            written = False
            try:
                if self.shard.sentinel is not None and not conn.is_connected:
                    await conn.connect()  # asks the sentinels (sending would not)
                await self._write(_packed(conn, batch))
                written = True
                if single:
                    return [await conn.read_response()]
                got: list[Any] = []
                for _ in batch:
                    try:
                        got.append(await conn.read_response())
                    except redis.ResponseError as exc:
                        got.append(exc)
                return got
            except redis.ResponseError:
                raise
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
                if attempt or not isinstance(exc, redis.ConnectionError) or (written and not retry):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _write(self, packed: bytes) -> None:
        """Write packed commands. redis-py writes under ``asyncio.wait_for``, which
        wraps the write in a task of its own (as much CPU as the rest of a request's
        work on the loop): here the socket's buffer is waited on only when it is over
        ``_WRITE_HIGH`` bytes (a server that does not read), within the socket timeout."""
        conn = self.conn
        writer = getattr(conn, "_writer", None) if conn.is_connected else None
        if writer is None:
            await conn.send_packed_command(packed, check_health=False)  # connects
            return
        writer.write(packed)  # never on a closed transport: pipeline() checked _gone()
        if writer.transport.get_write_buffer_size() > _WRITE_HIGH:
            await asyncio.wait_for(writer.drain(), conn.socket_timeout)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.conn.disconnect(nowait=True)
        for client in getattr(self, "sentinels", ()):
            with contextlib.suppress(Exception):
                await client.aclose()

    def abort(self) -> None:
        """Cut the socket now, from outside any task (shutdown)."""
        writer = getattr(self.conn, "_writer", None)
        if writer is not None:
            writer.transport.abort()


class RedisFace(AsyncFace):
    """The Redis layer's asyncio face: redis.asyncio (with hiredis where installed).

    Sends of one loop turn go out as one script per slot, written at once to each
    server (in parallel across servers); the receive task takes up to
    ``max_messages`` records per BLMPOP (Redis 7; BLPOP and a pop script before) on a
    connection of its own, and looks up the local members of the group messages among
    them in one pipelined round trip per server holding their groups."""

    layer: RedisChannelLayer

    def __init__(self, layer: RedisChannelLayer) -> None:
        super().__init__(layer)
        self._connections: dict[int, _AsyncConnection] = {}
        self._receivers: list[_AsyncConnection] = []

    def _abort(self) -> None:
        for conn in self._receivers:
            conn.abort()

    def _connection(self, shard: _Shard) -> _AsyncConnection:
        conn = self._connections.get(id(shard))
        if conn is None:
            conn = self._connections[id(shard)] = _AsyncConnection(self.layer, shard)
        return conn

    async def _ready(self) -> None:
        """Read a cluster's slot map where it is stale, off the loop."""
        slot_map = self.layer._slot_map
        if slot_map is not None and slot_map.stale:
            await asyncio.to_thread(slot_map.refresh)

    def _unavailable(self, shard: _Shard, exc: BaseException) -> Exception:
        if isinstance(exc, redis.RedisError | ChannelsError):
            return self.layer._error(shard, exc)
        return LayerUnavailable(f"Redis at {shard.masked} is unavailable: {exc}")

    async def _call(
        self, shard: _Shard, args: tuple[Any, ...], retry: bool = True, *, asking: bool = False
    ) -> Any:
        """One command, following a cluster's redirections (see
        :meth:`RedisChannelLayer._execute`) and loading a script the server lacks;
        raises ChannelsError. *asking*: *shard* is importing the keys' slot (ASK)."""
        layer = self.layer
        slot_map = layer._slot_map
        try:
            for attempt in range(MAX_REDIRECTS):
                conn = self._connection(shard)
                try:
                    async with conn.lock:
                        if asking:
                            await conn.execute(("ASKING",))
                        return await conn.execute(args, retry)
                except redis.exceptions.NoScriptError:
                    # A restarted server, or a node the command was redirected to.
                    async with conn.lock:
                        await conn.execute(("SCRIPT", "LOAD", layer._scripts[args[1]].script))
                    continue
                except redis.exceptions.MovedError as exc:
                    if slot_map is None:
                        raise
                    slot_map.stale = True
                    shard, asking = slot_map.node(exc.host, exc.port), False
                except redis.exceptions.AskError as exc:
                    if slot_map is None:
                        raise
                    shard, asking = slot_map.node(exc.host, exc.port), True
                except redis.exceptions.TryAgainError:
                    pass
                if attempt >= 1:
                    await asyncio.sleep(0.005 * attempt)
            raise redis.exceptions.ClusterError(f"more than {MAX_REDIRECTS} redirections")
        except (redis.RedisError, OSError) as exc:
            raise self._unavailable(shard, exc) from exc

    async def _batch(self, shard: _Shard, batch: list[tuple[Any, ...]], retry: bool) -> list[Any]:
        """*batch* in one round trip to *shard*: each reply, or the ChannelsError that
        refused it; replies that need more are followed up one by one."""
        if len(batch) == 1:
            try:
                return [await self._call(shard, batch[0], retry)]
            except ChannelsError as exc:
                return [exc]
        conn = self._connection(shard)
        try:
            async with conn.lock:
                got = await conn.pipeline(batch, retry)
        except (redis.RedisError, OSError) as exc:
            return [self._unavailable(shard, exc)] * len(batch)
        for index, reply in enumerate(got):
            if isinstance(reply, redis.exceptions.NoScriptError | redis.exceptions.AskError
                          | redis.exceptions.TryAgainError):  # fmt: skip
                try:
                    got[index] = await self._call(shard, batch[index], retry)
                except ChannelsError as exc:
                    got[index] = exc
            elif isinstance(reply, redis.ResponseError):
                got[index] = self._unavailable(shard, reply)
        return got

    async def _flush(self, items: list[tuple[str, bytes, float]]) -> list[bool | ChannelsError]:
        layer = self.layer
        outcomes: list[bool | ChannelsError] = [False] * len(items)
        try:
            await self._ready()
        except ChannelsError as exc:
            return [exc] * len(items)
        entries = [layer._send_record(channel, data, expires) for channel, data, expires in items]

        async def one(shard: _Shard, batch: list[_Send]) -> None:
            commands = layer._send_commands(shard, batch)
            replies = await self._batch(shard, [args for _e, args in commands], False)
            for (sent, _args), reply in zip(commands, replies, strict=True):
                _settle(sent, reply)

        parts = layer._by_shard(entries)
        if len(parts) == 1:
            await one(*parts[0])
        else:
            await asyncio.gather(*(one(*part) for part in parts))
        for index, entry in enumerate(entries):
            outcomes[index] = entry.outcome if entry.outcome is not None else False
        return outcomes

    async def _drain(self, names: list[str], deliver: Deliver, max_messages: int) -> None:
        layer = self.layer
        backoff = _Backoff()
        receivers: list[tuple[_AsyncConnection, list[str], dict[bytes, str]]] = []
        routing = -1
        try:
            while not self.closing:
                try:
                    await self._ready()
                    if routing != layer._routing() or not receivers:
                        # Keys moved (a failover, a resharding): read where they are now.
                        for conn, _keys, _by_key in receivers:
                            await conn.close()
                        routing = layer._routing()
                        receivers = [
                            (_AsyncConnection(layer, shard), keys, by_key)
                            for shard, keys, by_key in layer._plan(names)
                        ]
                        self._receivers = [conn for conn, _keys, _by_key in receivers]
                        turn = 0
                    slice_ = layer._max_block if len(receivers) == 1 else SHARD_SLICE
                    conn, keys, by_key = receivers[turn % len(receivers)]
                    turn += 1
                    records = await self._pop(conn, keys, by_key, max_messages, slice_)
                    entries = await self._entries(records) if records else []
                except LayerUnavailable as exc:
                    if self._closed():
                        return
                    await backoff.failed(exc)
                    continue
                backoff.succeeded()
                if entries:
                    pause = deliver(entries)
                    # The tasks just handed replies write their responses before the
                    # next pop is written: that write is then off their critical path.
                    await (asyncio.sleep(0) if pause is None else pause)
        finally:
            for conn, _keys, _by_key in receivers:
                await conn.close()

    async def _pop(
        self,
        conn: _AsyncConnection,
        keys: list[str],
        by_key: dict[bytes, str],
        count: int,
        timeout: float,
    ) -> list[Record]:
        layer = self.layer
        if len(keys) > 1:
            keys = random.sample(keys, len(keys))
        try:
            async with conn.lock:
                if layer._has_lmpop is not False:
                    try:
                        reply = await conn.execute(
                            ("BLMPOP", round(timeout, 3), len(keys), *keys, "LEFT", "COUNT", count)
                        )
                        layer._has_lmpop = True
                    except redis.ResponseError as exc:
                        if "unknown command" not in str(exc).lower():
                            raise
                        layer._has_lmpop = False
                        return []
                    if reply is None:
                        return []
                    queue, raws = by_key[reply[0]], reply[1]
                else:
                    reply = await conn.execute(("BLPOP", *keys, round(timeout, 3)))
                    if reply is None:
                        return []
                    queue, raws = by_key[reply[0]], [reply[1]]
        except redis.exceptions.MovedError:
            # The slot has moved (a resharding): the drain reads the new map first.
            if layer._slot_map is None:
                raise
            layer._slot_map.stale = True
            return []
        except redis.exceptions.AskError as exc:
            if layer._slot_map is None:
                raise
            target = layer._slot_map.node(exc.host, exc.port)
            queue, raws = await self._pop_migrating(target, keys, by_key, count)
        except (redis.RedisError, OSError) as exc:
            if layer._slot_map is not None:
                layer._slot_map.stale = True  # the node may have failed over
            raise self._unavailable(conn.shard, exc) from exc
        now = layer._stamp(time.time())
        return [layer._record(queue, raw) for raw in raws if raw[:13] > now]

    async def _pop_migrating(
        self,
        target: _Shard,
        keys: list[str],
        by_key: dict[bytes, str],
        count: int,
    ) -> tuple[str, list[bytes]]:
        """Pop from a slot in migration whose keys are already on *target*: without
        blocking (that would hold the connection the face's sends share), pausing
        :data:`SHARD_SLICE` when nothing is there, until the slot's move completes."""
        layer = self.layer
        if layer._has_lmpop:
            reply = await self._call(
                target, ("LMPOP", len(keys), *keys, "LEFT", "COUNT", count), asking=True
            )
            if reply is not None:
                return by_key[reply[0]], list(reply[1])
        else:
            script = layer._pop_script
            args = ("EVALSHA", script.sha, len(keys), *keys, layer._stamp(time.time()))
            reply = await self._call(target, args, asking=True)
            if reply is not None:
                return by_key[reply[0]], [reply[1]]
        await asyncio.sleep(SHARD_SLICE)
        return "", []

    async def _entries(self, records: list[Record]) -> list[Entry]:
        """Decode *records*; a group record becomes one entry with its local members,
        looked up for every group of the batch in one pipelined round trip per server
        holding those groups."""
        layer = self.layer
        wanted = list({(r.group, r.channel) for r in records if r.group is not None})
        members: dict[tuple[str, str], list[str]] = {}
        if wanted:
            now = f"({int(time.time() * 1000)}"
            by_shard: dict[int, tuple[_Shard, list[int]]] = {}
            for index, (group, prefix) in enumerate(wanted):
                shard = layer._shard_of(layer._local_key(group, prefix))
                by_shard.setdefault(id(shard), (shard, []))[1].append(index)
            for shard, indexes in by_shard.values():
                batch = []
                for index in indexes:
                    group, prefix = wanted[index]
                    batch.append(("ZRANGEBYSCORE", layer._local_key(group, prefix), now, "+inf"))
                replies = await self._batch(shard, batch, True)
                for index, reply in zip(indexes, replies, strict=True):
                    if isinstance(reply, ChannelsError):
                        raise reply
                    prefix = wanted[index][1]
                    members[wanted[index]] = [
                        m.decode("ascii") for m in reply if len(m) != len(prefix)
                    ]
        entries: list[Entry] = []
        for record in records:
            if record.group is None:
                entries.append(([record.channel], decode_message(record.data)))
                continue
            local = members.get((record.group, record.channel))
            if local:
                entries.append((local, decode_message(record.data)))
        return entries

    async def withdraw(self, receipts: Sequence[Receipt]) -> list[bool]:
        layer = self.layer
        await self._ready()
        removed = [False] * len(receipts)
        by_shard: dict[int, tuple[_Shard, list[tuple[Any, ...]], list[int]]] = {}
        for index, (channel, data, expires) in enumerate(receipts):
            entry = layer._send_record(channel, data, expires)
            shard = layer._shard_of(entry.key)
            part = by_shard.setdefault(id(shard), (shard, [], []))
            part[1].append(("LREM", entry.key, 1, entry.record))
            part[2].append(index)
        for shard, batch, indexes in by_shard.values():
            for index, reply in zip(indexes, await self._batch(shard, batch, False), strict=True):
                removed[index] = reply == 1
        return removed

    async def discard_channel(self, channel: str) -> None:
        layer = self.layer
        if not non_local_name(channel).endswith("!"):
            return
        await self._ready()
        remembered = layer._channel_groups_key(channel)
        shard = layer._shard_of(remembered)
        groups = await self._call(shard, ("SMEMBERS", remembered))
        commands = layer._discard_commands(channel, list(groups))
        commands.append((shard, ("DEL", remembered)))
        by_shard: dict[int, tuple[_Shard, list[tuple[Any, ...]]]] = {}
        for target, args in commands:
            by_shard.setdefault(id(target), (target, []))[1].append(args)
        for target, batch in by_shard.values():
            layer._raise_first(await self._batch(target, batch, True))

    async def aclose(self) -> None:
        await super().aclose()
        for conn in self._connections.values():
            await conn.close()
        self._connections = {}
