"""A channel layer on Redis: one server, several servers (shards), a Redis Cluster, or
a server behind Sentinel, for production.

Keys, under a namespace ``prefix`` (default ``wsgi_channels``); the part in braces is
the key's *hash tag*, which alone decides where the key lives (its Redis Cluster slot,
or its shard)::

    {prefix}:{n}:q:{channel}         list  the queue of a named channel (all named
                                           channels share one tag: see below)
    {prefix}:{{queue}}:q             list  the queue of a ``name?local`` channel, or of
                                           every ``name!`` channel of one process
    {prefix}:{{group}}:g             zset  the queues holding members of the group,
                                           scored by expiry (ms): named and ``?``
                                           members by name, local members by their
                                           ``name!`` prefix
    {prefix}:{{group}}:l:{name!}     zset  the local members of that process, by expiry
    {prefix}:{{name!}}:m:{channel}   set   the groups a local channel is in, so that a
                                           closed connection leaves every group

Every script touches keys of one tag only, so each runs in one slot of a cluster:
a send touches its queue, a membership change its group's two keys, a group send
first reads its group (one round trip to the group's node) and then writes one record
per member queue, in one round trip per node that holds member queues whatever the
group's size. A process's ``name!`` queue and its channels' membership sets share
its tag, so a process reads one slot. Named channels (``http.request``,
``websocket.receive``...) share the tag ``n``: one channel is one list on one server
anyway, and sharing a slot lets a worker wait on all of them in one blocking pop.

Each record in a queue is ``EEEEEEEEEEEEE<name>:<msgpack>``: thirteen ASCII digits of
the expiry in Unix milliseconds (fixed width, so Lua and Python compare them as
strings), then an optional name up to the first ``:`` (which no name contains) --
empty when the message is for the queue's own channel, the full channel name for a
``name!local`` channel, ``#group`` for a group message that the receiving process
expands to its local members -- then the encoded message.

Every key has a TTL, refreshed on each write: a queue lives ``expiry + 1`` s after its
last push, a group ``group_expiry + 1`` s after its last ``group_add``. Expired records
at the head of a queue are dropped by the next send (so they do not count against
capacity) and skipped by receivers; expired memberships are removed by the next
``group_add`` or group send. Nothing is left behind.

A send and a non-blocking receive are one round trip each: Lua scripts, loaded once
and run with EVALSHA (re-loaded after a server restart forgot them). On one server a
group send is one script too. A blocking receive whose channels share a slot is one
BLMPOP (BLPOP before Redis 7). Comma-joined URLs spread the tags over several servers
by a CRC-32 (every process must list them in the same order); a cluster places them
by slot, from the slot map it reads (``CLUSTER SLOTS``) and reads again when a node
redirects a command (MOVED, ASK) or fails.

Connections are pooled per server and shared by threads; a forked child makes its own
pools. A server that goes away makes calls raise LayerUnavailable (with the password
masked); the pools reconnect on the next call once it is back (behind Sentinel: to the
master the sentinels name then; on a cluster: to the node that took over the slot).

At-most-once, also across faults: a command whose connection the server closed
before it was written (``CLIENT KILL``, a restart, an idle timeout) is sent again once
on a new connection; one that may have run is sent again only where running it twice
delivers nothing twice (reads, membership changes, pops: a pop whose reply was lost
lost its messages with it), never a send. A send whose outcome is unknown raises
LayerUnavailable. A failover may lose what the old master had not yet replicated.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import select
import threading
import time
import urllib.parse
import weakref
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..process import parse_flag
from . import mask_url, parse_options
from .aio import AsyncFace
from .base import (
    BaseChannelLayer,
    ChannelsError,
    ConfigurationError,
    LayerUnavailable,
    Record,
    non_local_name,
)

try:
    import redis
    import redis.sentinel
    from redis.backoff import NoBackoff
    from redis.crc import key_slot
    from redis.retry import Retry
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ConfigurationError(
        "the Redis layer needs redis-py: pip install 'wsgi-channels[redis]'"
    ) from None

__all__ = ["DEFAULT_PREFIX", "DEFAULT_URL", "RedisChannelLayer"]

log = logging.getLogger("wsgi_channels.layers")

DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_PREFIX = "wsgi_channels"

#: How long one BLPOP waits on one server (or slot) when a receive spans several
#: (there is no blocking pop across them, so the receive turns round in slices).
SHARD_SLICE = 0.05
#: How many more round trips a thread that led one leads for sends queued meanwhile
#: whose threads did not wait for their outcome (``send_soon``), before sends wait
#: again so that one of them leads.
DETACHED_ROUNDS = 2
#: Most redirections (MOVED, ASK, TRYAGAIN) one command follows before giving up
#: (redis-py's cluster client allows 16 too); from the third on, each waits a little
#: longer, as a slot being handed over can bounce a command between two nodes.
MAX_REDIRECTS = 16
#: Least time between two reads of a cluster's slot map after failures.
SLOT_MAP_REFRESH = 0.1

_DEFAULT_CONNECT_TIMEOUT = 2.0
# Reads must outlast the longest BLPOP; the margin covers a busy server's reply.
_SOCKET_TIMEOUT_MARGIN = 2.0
_MIN_SOCKET_TIMEOUT = 5.0

_PREFIX = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_SERVICE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_SSL_OPTIONS = ("ssl_ca_certs", "ssl_cert_reqs", "ssl_certfile", "ssl_check_hostname",
                "ssl_keyfile", "ssl_ca_path")  # fmt: skip
_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SCHEMES = ("redis", "rediss", "unix", *_CLUSTER_SCHEMES, *_SENTINEL_SCHEMES)


def _parse_cert_reqs(value: str) -> str:
    if value not in ("none", "optional", "required"):
        raise ValueError("expected none, optional or required")
    return value


def _parse_prefix(value: str) -> str:
    if not _PREFIX.match(value):
        raise ValueError("a prefix is 1 to 64 ASCII letters, digits, '_', '.' or '-'")
    return value


#: redis-py connection parameters a host URL may carry in its query string.
CONNECTION_OPTIONS: dict[str, Callable[[str], Any]] = {
    "db": int,
    "username": str,
    "password": str,
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "socket_keepalive": parse_flag,
    "health_check_interval": float,
    "client_name": str,
    "max_connections": int,
    "ssl_cert_reqs": _parse_cert_reqs,
    "ssl_ca_certs": str,
    "ssl_ca_path": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_check_hostname": parse_flag,
}
#: Options of a ``redis+sentinel://`` URL for the sentinels themselves.
SENTINEL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "sentinel_username": str,
    "sentinel_password": str,
}

# -- Lua ----------------------------------------------------------------------------
# Expiry stamps are 13-digit strings, so `stamp > now` is a string comparison.

_TRIM_HEAD = """
local function trim(key, now)
  local n = redis.call('LLEN', key)
  while n > 0 do
    local head = redis.call('LINDEX', key, 0)
    if string.sub(head, 1, 13) > now then break end
    redis.call('LPOP', key)
    n = n - 1
  end
  return n
end
"""

# KEYS one queue per message (repeats allowed; one slot); ARGV[1] now, ARGV[2] queue
# TTL (ms), then (record, capacity) per message. Returns 1 (pushed) or 0 (full) per
# message, in order: the messages of one burst, in one round trip.
_SEND_MANY = (
    _TRIM_HEAD
    + """
local out = {}
local lengths = {}
for i, key in ipairs(KEYS) do
  local n = lengths[key]
  if n == nil then n = trim(key, ARGV[1]) end
  if n >= tonumber(ARGV[2 + 2 * i]) then
    out[i] = 0
  else
    redis.call('RPUSH', key, ARGV[1 + 2 * i])
    n = n + 1
    out[i] = 1
  end
  lengths[key] = n
end
for key, _ in pairs(lengths) do redis.call('PEXPIRE', key, ARGV[2]) end
return out
"""
)

# KEYS queues in the order to try (one slot); ARGV[1] now. Returns {key, record} or nil.
_POP = """
for _, key in ipairs(KEYS) do
  local record = redis.call('LPOP', key)
  while record do
    if string.sub(record, 1, 13) > ARGV[1] then return {key, record} end
    record = redis.call('LPOP', key)
  end
end
return false
"""

# One server only (it names queue keys in Lua, which a cluster forbids): the whole
# group send in one round trip. KEYS[1] the group's zset of queues; ARGV key prefix,
# now, expiry stamp, queue TTL (ms), group, message, default capacity, then (Lua
# pattern, capacity) pairs taken from channel_capacity. Pushes one record per queue;
# returns how many were full.
_GROUP_SEND = (
    _TRIM_HEAD
    + """
local now = ARGV[2]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local skipped = 0
local plain, grouped
for _, queue in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local capacity = tonumber(ARGV[7])
  for i = 8, #ARGV - 1, 2 do
    if string.find(queue, ARGV[i]) then
      capacity = tonumber(ARGV[i + 1])
      break
    end
  end
  local process = string.sub(queue, -1) == '!'
  local key
  if process or string.find(queue, '?', 1, true) then
    key = ARGV[1] .. ':{' .. queue .. '}:q'
  else
    key = ARGV[1] .. ':{n}:q:' .. queue
  end
  if trim(key, now) >= capacity then
    skipped = skipped + 1
  else
    local record
    if process then
      grouped = grouped or (ARGV[3] .. '#' .. ARGV[5] .. ':' .. ARGV[6])
      record = grouped
    else
      plain = plain or (ARGV[3] .. ':' .. ARGV[6])
      record = plain
    end
    redis.call('RPUSH', key, record)
    redis.call('PEXPIRE', key, ARGV[4])
  end
end
return skipped
"""
)

# KEYS[1] the group's zset of queues; ARGV[1] now (ms). Drops expired memberships and
# returns the queues: the first step of a group send across servers.
_GROUP_QUEUES = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

_KEEP_TTL = """
local function keep(key, ttl)
  if redis.call('PTTL', key) < tonumber(ttl) then redis.call('PEXPIRE', key, ttl) end
end
"""

# KEYS[1] group zset, KEYS[2] (local channels only) the process's member zset (both
# of the group's tag); ARGV queue, channel, expires (ms), now (ms), key TTL (ms). A
# queue's score is the latest expiry of its members, so it is only ever raised.
_GROUP_ADD = (
    _KEEP_TTL
    + """
local score = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not old or tonumber(old) < score then redis.call('ZADD', KEYS[1], score, ARGV[1]) end
keep(KEYS[1], ARGV[5])
if KEYS[2] then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
  redis.call('ZADD', KEYS[2], score, ARGV[2])
  keep(KEYS[2], ARGV[5])
end
return 1
"""
)

# KEYS[1] group zset, KEYS[2] (local channels only) the process's member zset; ARGV
# queue, channel, now. The queue leaves the group with its process's last member.
_GROUP_DISCARD = """
if KEYS[2] then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
  if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""

# KEYS[1] the set of groups a local channel is in (the process's tag); ARGV group,
# key TTL (ms).
_REMEMBER_GROUP = (
    _KEEP_TTL
    + """
redis.call('SADD', KEYS[1], ARGV[1])
keep(KEYS[1], ARGV[2])
return 1
"""
)

# KEYS[1] group zset; ARGV[1] now, ARGV[2] the name of its local member zsets up to
# the queue (the same tag, hence the same slot: the keys this script names itself
# live beside KEYS[1]). Returns the unexpired member channels.
_GROUP_MEMBERS = """
local now = '(' .. ARGV[1]
local members = {}
for _, queue in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
  if string.sub(queue, -1) == '!' then
    for _, channel in ipairs(redis.call('ZRANGEBYSCORE', ARGV[2] .. queue, now, '+inf')) do
      if channel ~= queue then members[#members + 1] = channel end
    end
  else
    members[#members + 1] = queue
  end
end
return members
"""

# KEYS[1] queue; ARGV[1] now. Drops expired head records; returns {length, head stamp}.
_QUEUE_STATS = (
    _TRIM_HEAD
    + """
local n = trim(KEYS[1], ARGV[1])
if n == 0 then return {0} end
return {n, string.sub(redis.call('LINDEX', KEYS[1], 0), 1, 13)}
"""
)


def glob_to_lua(pattern: str) -> str:
    """Translate an ``fnmatch`` glob (``*``, ``?``, ``[seq]``, ``[!seq]``) into an
    anchored Lua pattern, so that the group-send script applies ``channel_capacity``
    exactly as :meth:`BaseChannelLayer.get_capacity` does."""
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        i += 1
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: fnmatch takes "[" literally
                out.append("%[")
                continue
            body, i = pattern[i:j], j + 1
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            # '-' keeps its range meaning; every other punctuation is escaped with '%'.
            escaped = "".join(c if c.isalnum() or c == "-" else "%" + c for c in body)
            out.append("[" + ("^" if negate else "") + escaped + "]")
        else:
            out.append(char if char.isalnum() else "%" + char)
    out.append("$")
    return "".join(out)


_pack_command: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - hiredis comes with the redis extra
    _pack_command = None


def _packed(conn: Any, batch: list[tuple[Any, ...]]) -> bytes:
    """*batch* in the Redis protocol: packed by hiredis in C where installed (redis-py
    packs in Python, at about eight times the cost)."""
    if _pack_command is not None:
        return b"".join([_pack_command(args) for args in batch])
    return b"".join(conn.pack_commands(batch))


def _closed_by_server(conn: Any) -> bool:
    """Whether the server closed *conn* while it sat between commands: its socket is
    readable (an EOF, or bytes no command asked for), found with one ``poll`` that
    does not wait, so that a command is never written to a connection that cannot
    answer it."""
    sock = getattr(conn, "_sock", None)
    if sock is None:
        return False
    try:
        if getattr(sock, "pending", None) is not None and sock.pending():
            return True  # TLS: decrypted bytes already read from the socket
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class _Script:
    """A Lua script: its source and the SHA-1 that EVALSHA names it by."""

    __slots__ = ("script", "sha")

    def __init__(self, script: str) -> None:
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()


class _Shard:
    """One Redis server (standalone, a cluster master, or whichever master the
    sentinels name): its pool, a client on it, and its URL with the password masked.

    The hot paths do not borrow from the pool: each thread keeps a connection of its
    own (:meth:`connection`). Checking a connection out of redis-py's pool and back
    costs a lock, a health-check syscall and wrapper calls on every command; profiled
    under load that was 10-15 % of the interface's and the worker's time, and a
    request makes four commands on its critical path.
    """

    __slots__ = (
        "busy",
        "client",
        "combine",
        "detachable",
        "kwargs",
        "local",
        "masked",
        "opened",
        "pending",
        "pool",
        "sentinel",
    )

    def __init__(
        self,
        masked: str,
        pool_kwargs: Mapping[str, Any],
        sentinel: tuple[str, list[tuple[str, int]], dict[str, Any]] | None = None,
    ) -> None:
        self.masked = masked
        self.kwargs = dict(pool_kwargs)
        #: (service, sentinel addresses, sentinel connection kwargs) behind Sentinel.
        self.sentinel = sentinel
        # Sends waiting to share a round trip (see RedisChannelLayer._push).
        self.combine = threading.Lock()
        self.pending: list[_Send] = []
        self.busy = False
        #: May a send made now go without waiting for its outcome (``send_soon``)?
        #: True while the round trip in flight has rounds left (see ``_lead``).
        self.detachable = True
        self.pool: redis.ConnectionPool
        if sentinel is None:
            self.pool = redis.ConnectionPool(**pool_kwargs)
        else:
            service, addresses, sentinel_kwargs = sentinel
            manager = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
                addresses, sentinel_kwargs=sentinel_kwargs, **sentinel_kwargs
            )
            kwargs = {k: v for k, v in pool_kwargs.items() if k not in ("host", "port")}
            # Connections that ask the sentinels where the master is (a plain class
            # would connect to the default address instead).
            if kwargs.pop("connection_class", None) is redis.SSLConnection:
                kwargs["connection_class"] = redis.sentinel.SentinelManagedSSLConnection
            self.pool = redis.sentinel.SentinelConnectionPool(service, manager, **kwargs)  # type: ignore[no-untyped-call]
        self.client: redis.Redis = redis.Redis(connection_pool=self.pool)
        self.local = threading.local()
        # Every thread's connection, so that close() can reach them all.
        self.opened: weakref.WeakSet[Any] = weakref.WeakSet()

    def connection(self, *, check: bool = False) -> Any:
        """This thread's connection (made on first use; it reconnects by itself).

        With *check*, a connection the server closed meanwhile (a restart, ``CLIENT
        KILL``, a timeout) is dropped here, before a command is written to it: the
        command then goes out on a new one, where it runs exactly once. Sends ask for
        that (a send cut on the wire is not sent again); other commands are sent again
        when their reply is lost, so they skip the ``poll`` it costs."""
        local = self.local
        conn = getattr(local, "conn", None)
        if conn is None:
            pool = self.pool
            conn = pool.connection_class(**pool.connection_kwargs)
            local.conn = conn
            self.opened.add(conn)
        elif check and _closed_by_server(conn):
            conn.disconnect()
        return conn

    def disconnect(self) -> None:
        self.pool.disconnect()
        for conn in list(self.opened):
            conn.disconnect()


class _Send:
    """One message waiting in a shard's combined send."""

    __slots__ = ("capacity", "key", "lead", "outcome", "record", "settled", "waiter")

    def __init__(self, key: str, record: bytes, capacity: int) -> None:
        self.key = key
        self.record = record
        self.capacity = capacity
        self.outcome: bool | ChannelsError | None = None
        #: Held while the sending thread waits; released once, when the outcome is
        #: set or when the thread is handed the next round trip (then ``lead``).
        self.waiter: threading.Lock | None = None
        self.lead = False
        #: For a send whose thread did not wait (``send_soon``): called with the
        #: outcome by the thread that led its round trip.
        self.settled: Callable[[bool | ChannelsError], None] | None = None


def _settle(sent: list[_Send], reply: Any) -> None:
    """Set each entry's outcome from the reply of the send script that carried them
    (one 1/0 per entry), or from the error that refused them all."""
    pushed = [reply] * len(sent) if isinstance(reply, ChannelsError) else reply
    for entry, outcome in zip(sent, pushed, strict=True):
        entry.outcome = outcome if isinstance(outcome, ChannelsError) else bool(outcome)


class _SlotMap:
    """Where a cluster's slots live: the master of each slot, read with ``CLUSTER
    SLOTS`` from any node that answers (the seeds, then every node seen before), and
    read again after a redirection or a failure (at most every
    :data:`SLOT_MAP_REFRESH` seconds). ``generation`` counts the reads that changed
    something, so that cached plans know when they are stale."""

    def __init__(
        self,
        seeds: list[tuple[str, int]],
        node_kwargs: Mapping[str, Any],
        masked: Callable[[str, int], str],
    ) -> None:
        self.seeds = list(seeds)
        self.node_kwargs = dict(node_kwargs)
        self.masked = masked
        self.lock = threading.Lock()
        self.nodes: dict[tuple[str, int], _Shard] = {}
        self.known: list[tuple[str, int]] = list(seeds)
        self.slots: list[_Shard | None] = []
        self.generation = 0
        self.stale = True
        self.read_at = 0.0

    def node(self, host: str, port: int) -> _Shard:
        address = (host, int(port))
        shard = self.nodes.get(address)
        if shard is None:
            with self.lock:
                shard = self.nodes.get(address)
                if shard is None:
                    kwargs = {**self.node_kwargs, "host": address[0], "port": address[1]}
                    shard = self.nodes[address] = _Shard(self.masked(*address), kwargs)
        return shard

    def shard(self, slot: int) -> _Shard:
        if self.stale:
            self.refresh()
        slots = self.slots
        shard = slots[slot] if slots else None
        if shard is None:
            raise LayerUnavailable(
                f"Redis Cluster at {self.masked(*self.seeds[0])}: slot {slot} has no master"
            )
        return shard

    def refresh(self, *, force: bool = False) -> None:
        """Read the slot map again (throttled unless *force*); LayerUnavailable when
        no node answers."""
        with self.lock:
            now = time.monotonic()
            if not force and self.slots and now - self.read_at < SLOT_MAP_REFRESH:
                return
            self.read_at = now
            errors = []
            for host, port in [*self.known, *self.seeds]:
                kwargs = {**self.node_kwargs, "host": host, "port": port}
                kwargs["socket_timeout"] = min(kwargs.get("socket_timeout", 2.0), 2.0)
                # Through a pool: redis.Redis() takes no connection class (TLS).
                client = redis.Redis(connection_pool=redis.ConnectionPool(**kwargs))
                try:
                    reply = client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
                except (redis.RedisError, OSError) as exc:
                    errors.append(exc)
                    continue
                finally:
                    client.close()
                self._apply(reply, host)
                return
        self.stale = True
        raise LayerUnavailable(
            f"no node of the Redis Cluster at {self.masked(*self.seeds[0])} answers: "
            f"{errors[-1] if errors else 'no address'}"
        )

    def _apply(self, reply: Any, asked: str) -> None:
        # Called with the lock held; node() would take it again.
        slots: list[_Shard | None] = [None] * 16384
        known: list[tuple[str, int]] = []
        for entry in reply:
            start, end = int(entry[0]), int(entry[1])
            addresses = []
            for node in entry[2:]:
                host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
                addresses.append((host or asked, int(node[1])))
            known += [a for a in addresses if a not in known]
            address = addresses[0]
            shard = self.nodes.get(address)
            if shard is None:
                kwargs = {**self.node_kwargs, "host": address[0], "port": address[1]}
                shard = self.nodes[address] = _Shard(self.masked(*address), kwargs)
            slots[start : end + 1] = [shard] * (end - start + 1)
        if slots != self.slots:
            self.generation += 1
        self.slots = slots
        self.known = known or self.known
        self.stale = False


# (shard, queue keys of one slot, queue name by key as Redis returns it)
_Plan = list[tuple[_Shard, list[str], dict[bytes, str]]]
# (shard, command arguments): one command, in a batch that goes one round trip per shard
_Command = tuple[_Shard, tuple[Any, ...]]


class RedisChannelLayer(BaseChannelLayer):
    """A layer on Redis (URLs ``redis://``, ``rediss://``, ``unix://``,
    ``redis+cluster://``, ``redis+sentinel://`` and their TLS forms; see
    :meth:`from_url`).

    *hosts* are Redis URLs: one per shard; with ``cluster=True`` the seed nodes of one
    Redis Cluster (any nodes: the others are discovered); with ``sentinel="name"`` the
    sentinels that watch the master of that service (their URL paths are ignored; the
    database and credentials of the master come from *options*). Their query strings
    may carry redis-py connection parameters (:data:`CONNECTION_OPTIONS`), and
    connection parameters given as keyword *options* apply to every host. The other
    *options* are the layer options of :class:`BaseChannelLayer`. Every shard must be
    listed in the same order by every process: a key's shard is chosen by position.

    Raises ConfigurationError for a bad URL or option (the message names what is
    accepted and never shows a password); nothing connects until the first call.
    Afterwards, a server that cannot be reached, times out or refuses a command gives
    LayerUnavailable, and one that refuses the credentials gives ConfigurationError;
    both name the server by its masked URL.
    """

    def __init__(
        self,
        *,
        hosts: list[str] | str | None = None,
        cluster: bool = False,
        sentinel: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        **options: Any,
    ) -> None:
        connection = {k: options.pop(k) for k in list(options) if k in CONNECTION_OPTIONS}
        sentinel_options = {k: options.pop(k) for k in list(options) if k in SENTINEL_OPTIONS}
        try:
            super().__init__(**options)
        except TypeError as exc:
            accepted = sorted(
                [*_layer_option_names(), "hosts", "cluster", "sentinel", "prefix",
                 *CONNECTION_OPTIONS, *SENTINEL_OPTIONS]
            )  # fmt: skip
            raise ConfigurationError(
                f"{exc}; RedisChannelLayer accepts: {', '.join(accepted)}"
            ) from None
        if isinstance(hosts, str):
            hosts = [hosts]
        hosts = list(hosts or [DEFAULT_URL])
        try:
            self.prefix = _parse_prefix(prefix)
        except ValueError as exc:
            raise ConfigurationError(f"bad prefix {prefix!r}: {exc}") from None
        if cluster and sentinel:
            raise ConfigurationError("a Redis layer is either on a cluster or behind Sentinel")
        if sentinel is not None and not _SERVICE.match(sentinel):
            raise ConfigurationError(f"bad Sentinel service name {sentinel!r}")
        if sentinel_options and sentinel is None:
            raise ConfigurationError(
                f"{', '.join(sorted(sentinel_options))} need a redis+sentinel:// URL"
            )
        self.cluster = bool(cluster)
        #: The Sentinel service name, or None.
        self.sentinel = sentinel
        self._sentinel_options = sentinel_options
        #: The shard URLs (cluster seeds, sentinels), passwords masked (safe to log).
        self.hosts = [mask_url(h) for h in hosts]
        if cluster and "db" in connection and connection["db"] != 0:
            raise ConfigurationError("a Redis Cluster has database 0 only")
        self._pool_kwargs = [self._pool_options(h, connection) for h in hosts]
        if cluster:
            for url, kwargs in zip(self.hosts, self._pool_kwargs, strict=True):
                if kwargs.get("db", 0) != 0:
                    raise ConfigurationError(f"a Redis Cluster has database 0 only: {url!r}")
                if "path" in kwargs:
                    raise ConfigurationError(f"cluster nodes are reached over TCP, not {url!r}")
        socket_timeout = min(kw["socket_timeout"] for kw in self._pool_kwargs)
        # BLPOP must return before the socket read times out.
        self._max_block = max(0.01, min(self.receive_timeout, socket_timeout - 1.0))
        self._named_prefix = f"{self.prefix}:{{n}}:q:"
        self._queue_ttl = int((self.expiry + 1.0) * 1000)
        self._group_ttl = int((self.group_expiry + 1.0) * 1000)
        self._expiry_ms = int(self.expiry * 1000)
        self._capacity_args: list[str | int] = []
        for pattern, value in self.channel_capacity.items():
            self._capacity_args += [glob_to_lua(pattern), int(value)]
        self._connect()

    @classmethod
    def from_url(cls, url: str) -> RedisChannelLayer:
        """Make a layer from a URL, or several joined by ``,`` (one per shard)::

            redis://[[username]:password@]host[:port][/db][?option=value&...]
            rediss://[[username]:password@]host[:port][/db][?...]    TLS
            unix://[[username]:password@]/path/to/socket.sock[?db=0&...]
            redis+cluster://[[username]:password@]host:port[,host:port...][?...]
            rediss+cluster://...                                       TLS
            redis+sentinel://[[username]:password@]host:port[,host:port...]/service[/db][?...]
            rediss+sentinel://...                                      TLS

        A cluster URL names any of its nodes (the others are discovered); a Sentinel
        URL names the sentinels and the service whose master they watch (the
        credentials are the master's; ``sentinel_username`` and ``sentinel_password``
        are the sentinels' own, if they have any).

        The username and password are percent-decoded. The database comes from the
        path or from ``db=`` (not both; a cluster has only database 0). Query
        parameters are either layer options, which may appear on any of the URLs but
        must agree::

            expiry, group_expiry, capacity, channel_capacity, max_message_size,
            receive_timeout, prefix (key namespace, default "wsgi_channels")

        or redis-py connection parameters for that server::

            db, username, password, socket_timeout, socket_connect_timeout,
            socket_keepalive, health_check_interval, client_name, max_connections,
            ssl_cert_reqs (none|optional|required), ssl_ca_certs, ssl_ca_path,
            ssl_certfile, ssl_keyfile, ssl_check_hostname (rediss only)

        Defaults: ``socket_connect_timeout=2``, ``socket_timeout`` the larger of 5 and
        ``receive_timeout + 2`` (it must outlast a blocking receive). Anything else
        raises ConfigurationError naming what is accepted; passwords never appear in
        its message.
        """
        scheme = url.strip().partition("://")[0].lower()
        if scheme in _CLUSTER_SCHEMES or scheme in _SENTINEL_SCHEMES:
            return cls._from_multi_host_url(url.strip(), scheme)
        options: dict[str, Any] = {}
        hosts = []
        for part in url.split(","):
            part = part.strip()
            if part.partition("://")[0].lower() not in ("redis", "rediss", "unix"):
                raise ConfigurationError(
                    f"unknown Redis URL {mask_url(part)!r} in {mask_url(url)!r}; accepted"
                    " schemes of comma-joined URLs: redis://, rediss://, unix:// (a cluster"
                    " or Sentinel URL lists its hosts itself: redis+cluster://a:7000,b:7001)"
                )
            parsed = urllib.parse.urlsplit(part)
            hosts.append(cls._split_query(part, parsed.query, url, options))
        return cls(hosts=hosts, **options)

    @staticmethod
    def _split_query(part: str, query: str, url: str, options: dict[str, Any]) -> str:
        """*part* keeping only its connection parameters; the layer options of its
        query go into *options* (they must agree across parts)."""
        extra = {**CONNECTION_OPTIONS, **SENTINEL_OPTIONS, "prefix": _parse_prefix}
        parsed_options = parse_options(part, query, extra)
        host_query = []
        for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
            if key in CONNECTION_OPTIONS:
                host_query.append((key, value))
                continue
            typed = parsed_options[key]
            if key in options and options[key] != typed:
                raise ConfigurationError(
                    f"option {key!r} has different values in layer URL {mask_url(url)!r}"
                )
            options[key] = typed
        # Rebuilt by hand: urlunsplit() would turn "unix:///path" into "unix:/path".
        base = part.partition("?")[0]
        return f"{base}?{urllib.parse.urlencode(host_query)}" if host_query else base

    @classmethod
    def _from_multi_host_url(cls, url: str, scheme: str) -> RedisChannelLayer:
        base_scheme = "rediss" if scheme.startswith("rediss") else "redis"
        rest = url.partition("://")[2]
        rest, _, query = rest.partition("?")
        netloc, slash, path = rest.partition("/")
        userinfo, at, host_list = netloc.rpartition("@")
        if not host_list.strip():
            raise ConfigurationError(f"layer URL {mask_url(url)!r} names no host")
        options: dict[str, Any] = {}
        if scheme in _SENTINEL_SCHEMES:
            service, _, db = path.strip("/").partition("/")
            if not service:
                raise ConfigurationError(
                    f"layer URL {mask_url(url)!r} names no service: "
                    f"{scheme}://host:26379[,host:26379...]/service_name[/db]"
                )
            if not _SERVICE.match(service):
                raise ConfigurationError(
                    f"bad Sentinel service name {service!r} in {mask_url(url)!r}"
                )
            if db and not db.isdigit():
                raise ConfigurationError(
                    f"bad database {db!r} in layer URL {mask_url(url)!r}: expected a number"
                )
            path = db
            options["sentinel"] = service
        else:
            if path.strip("/") not in ("", "0"):
                raise ConfigurationError(
                    f"a Redis Cluster has database 0 only, not {path!r} in {mask_url(url)!r}"
                )
            path = ""
            options["cluster"] = True
        hosts = []
        for host in host_list.split(","):
            host = host.strip()
            if not host:
                raise ConfigurationError(f"empty host in layer URL {mask_url(url)!r}")
            if scheme in _SENTINEL_SCHEMES and not re.search(r":\d+$", host):
                host += ":26379"
            auth = userinfo + at
            part = f"{base_scheme}://{auth}{host}{slash}{path}"
            if query:
                part += "?" + query
            hosts.append(cls._split_query(part, query, url, options))
        sentinel_options = {k: options.pop(k) for k in list(options) if k in SENTINEL_OPTIONS}
        return cls(hosts=hosts, **options, **sentinel_options)

    def _pool_options(self, url: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
        """redis-py ConnectionPool arguments for one host URL, strictly checked."""
        masked = mask_url(url)
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("redis", "rediss", "unix"):
            raise ConfigurationError(
                f"unknown Redis URL {masked!r}; accepted schemes: "
                + ", ".join(f"{s}://" for s in SCHEMES)
            )
        query = parse_options(url, parsed.query, CONNECTION_OPTIONS)
        common = set(query) & set(_layer_option_names())
        if common:
            raise ConfigurationError(
                f"layer options ({', '.join(sorted(common))}) go in the keyword arguments, "
                f"not in the host URL {masked!r}; use RedisChannelLayer.from_url for URLs"
            )
        try:
            kwargs: dict[str, Any] = redis.connection.parse_url(  # type: ignore[no-untyped-call]
                url.partition("?")[0]
            )
            port = parsed.port  # parse_url ignores a bad port; urlsplit raises
        except ValueError as exc:
            raise ConfigurationError(f"bad Redis URL {masked!r}: {exc}") from None
        path_db = parsed.path.strip("/") if parsed.scheme != "unix" else ""
        if path_db and not path_db.isdigit():
            raise ConfigurationError(
                f"bad database {path_db!r} in Redis URL {masked!r}: expected a number"
            )
        if path_db and "db" in query:
            raise ConfigurationError(f"Redis URL {masked!r} gives the database twice")
        if parsed.scheme == "unix" and not kwargs.get("path"):
            raise ConfigurationError(f"Redis URL {masked!r} names no socket path")
        if parsed.scheme != "unix" and not parsed.hostname:
            raise ConfigurationError(f"Redis URL {masked!r} names no host")
        if parsed.scheme != "unix":
            kwargs["port"] = port or 6379
        options = {**defaults, **query}
        if parsed.scheme != "rediss":
            misplaced = sorted(set(options) & set(_SSL_OPTIONS))
            if misplaced:
                raise ConfigurationError(
                    f"{', '.join(misplaced)} need a rediss:// URL, not {masked!r}"
                )
        if parsed.scheme == "unix" and "socket_keepalive" in options:
            raise ConfigurationError(f"socket_keepalive is for TCP, not {masked!r}")
        kwargs.update(options)
        kwargs.setdefault(
            "socket_timeout",
            max(_MIN_SOCKET_TIMEOUT, self.receive_timeout + _SOCKET_TIMEOUT_MARGIN),
        )
        kwargs.setdefault("socket_connect_timeout", _DEFAULT_CONNECT_TIMEOUT)
        if kwargs["socket_timeout"] <= 0 or kwargs["socket_connect_timeout"] <= 0:
            raise ConfigurationError(f"socket timeouts must be positive in {masked!r}")
        # redis-py retries nothing: which commands may go out again after a dropped
        # connection is decided here (see _send_and_read), since a retried send whose
        # first try did run would deliver twice.
        kwargs["retry"] = Retry(NoBackoff(), 0)
        # RESP2: the replies we read are plain lists and strings, and its parser is
        # the cheaper one.
        kwargs["protocol"] = 2
        return kwargs

    def _connect(self) -> None:
        self._plans: dict[tuple[str, ...], tuple[int, _Plan]] = {}  # plans name shards
        self._slot_map: _SlotMap | None = None
        if self.cluster:
            seeds = [(kw["host"], int(kw["port"])) for kw in self._pool_kwargs]
            node_kwargs = {
                k: v for k, v in self._pool_kwargs[0].items() if k not in ("host", "port")
            }
            scheme = "rediss" if self.hosts[0].startswith("rediss") else "redis"
            self._slot_map = _SlotMap(
                seeds, node_kwargs, lambda host, port: f"{scheme}+cluster node {host}:{port}"
            )
            self._shards: list[_Shard] = []
        elif self.sentinel is not None:
            addresses = [(kw["host"], int(kw["port"])) for kw in self._pool_kwargs]
            first = self._pool_kwargs[0]
            sentinel_kwargs: dict[str, Any] = {
                "socket_timeout": min(first["socket_timeout"], 2.0),
                "socket_connect_timeout": first["socket_connect_timeout"],
                "retry": Retry(NoBackoff(), 0),
                "protocol": 2,
            }
            if self._sentinel_options.get("sentinel_username"):
                sentinel_kwargs["username"] = self._sentinel_options["sentinel_username"]
            if self._sentinel_options.get("sentinel_password"):
                sentinel_kwargs["password"] = self._sentinel_options["sentinel_password"]
            if first.get("connection_class") is redis.SSLConnection:
                # Sentinels over TLS too (redis.Redis takes ssl=, not a class).
                sentinel_kwargs["ssl"] = True
                for key in _SSL_OPTIONS:
                    if key in first:
                        sentinel_kwargs[key] = first[key]
            hosts = ",".join(f"{h}:{p}" for h, p in addresses)
            scheme = "rediss" if self.hosts[0].startswith("rediss") else "redis"
            masked = f"{scheme}+sentinel://{hosts}/{self.sentinel} (master)"
            self._shards = [
                _Shard(masked, first, sentinel=(self.sentinel, addresses, sentinel_kwargs))
            ]
        else:
            self._shards = [
                _Shard(masked, kwargs)
                for masked, kwargs in zip(self.hosts, self._pool_kwargs, strict=True)
            ]
        # One server holds every key: a group send is one script there.
        self._one_server = self._slot_map is None and len(self._shards) == 1
        # Script objects hold only the source and its SHA-1; _run() sends them to
        # any server, and loads them again where a restarted server forgot them.
        self._send_many_script = _Script(_SEND_MANY)
        self._pop_script = _Script(_POP)
        self._group_send_script = _Script(_GROUP_SEND)
        self._group_queues_script = _Script(_GROUP_QUEUES)
        self._group_add_script = _Script(_GROUP_ADD)
        self._group_discard_script = _Script(_GROUP_DISCARD)
        self._remember_script = _Script(_REMEMBER_GROUP)
        self._group_members_script = _Script(_GROUP_MEMBERS)
        self._queue_stats_script = _Script(_QUEUE_STATS)
        self._scripts = {
            s.sha: s
            for s in (
                self._send_many_script,
                self._pop_script,
                self._group_send_script,
                self._group_queues_script,
                self._group_add_script,
                self._group_discard_script,
                self._remember_script,
                self._group_members_script,
                self._queue_stats_script,
            )
        }
        self._has_lmpop: bool | None = None  # LMPOP/BLMPOP: Redis 7.0 and later

    def async_face(self) -> AsyncFace:
        """The asyncio face, on redis.asyncio connections of its own
        (:mod:`wsgi_channels.layers.redis_aio`)."""
        from .redis_aio import RedisFace

        return RedisFace(self)

    def _after_fork(self) -> None:
        # The parent's sockets stay open for the parent; redis-py closes (without
        # shutting down) any it finds in this child.
        self._connect()

    def close(self) -> None:
        """Disconnect every pool. Using the layer afterwards connects again."""
        for shard in self._all_shards():
            shard.disconnect()

    def __repr__(self) -> str:
        kind = (
            " cluster" if self.cluster else f" sentinel={self.sentinel!r}" if self.sentinel else ""
        )
        return f"<{type(self).__name__}{kind} hosts={self.hosts!r} prefix={self.prefix!r}>"

    # -- keys and where they live -------------------------------------------------

    def _queue_key(self, queue: str) -> str:
        if queue[-1] == "!" or "?" in queue:
            return f"{self.prefix}:{{{queue}}}:q"
        return self._named_prefix + queue

    def _group_key(self, group: str) -> str:
        return f"{self.prefix}:{{{group}}}:g"

    def _local_key(self, group: str, queue: str) -> str:
        return f"{self.prefix}:{{{group}}}:l:{queue}"

    def _channel_groups_key(self, channel: str) -> str:
        return f"{self.prefix}:{{{non_local_name(channel)}}}:m:{channel}"

    def _all_shards(self) -> list[_Shard]:
        """Every server: the shards, or the cluster's masters (read from the map)."""
        if self._slot_map is None:
            return self._shards
        slot_map = self._slot_map
        if slot_map.stale:
            slot_map.refresh()
        seen: dict[int, _Shard] = {}
        for shard in slot_map.slots:
            if shard is not None:
                seen.setdefault(id(shard), shard)
        return list(seen.values())

    def _shard_of(self, key: str) -> _Shard:
        """The server holding *key* (by its hash tag)."""
        if self._slot_map is not None:
            return self._slot_map.shard(key_slot(key.encode("ascii")))
        shards = self._shards
        if len(shards) == 1:
            return shards[0]
        tag = key[key.index("{") + 1 : key.index("}")]
        return shards[zlib.crc32(tag.encode("ascii")) % len(shards)]

    def _slot_of(self, key: str) -> int:
        """The key's cluster slot; 0 off a cluster, where every key of a server may
        share a script."""
        return key_slot(key.encode("ascii")) if self._slot_map is not None else 0

    def _routing(self) -> int:
        """Changes whenever keys may have moved to other servers."""
        return self._slot_map.generation if self._slot_map is not None else 0

    def _error(self, shard: _Shard, exc: BaseException) -> Exception:
        """The ChannelsError to raise for a redis-py error (never showing a password)."""
        if isinstance(exc, ChannelsError):
            return exc
        if isinstance(exc, redis.AuthenticationError | redis.exceptions.NoPermissionError):
            return ConfigurationError(f"Redis at {shard.masked} refused the credentials: {exc}")
        if isinstance(exc, redis.exceptions.OutOfMemoryError) or "maxmemory" in str(exc):
            return LayerUnavailable(
                f"Redis at {shard.masked} is out of memory (maxmemory reached; nothing is "
                f"sent until it has room): {exc}"
            )
        if self._slot_map is not None and isinstance(
            exc, redis.ConnectionError | redis.TimeoutError | redis.exceptions.ClusterDownError
        ):
            self._slot_map.stale = True  # the node may have failed over
        return LayerUnavailable(f"Redis at {shard.masked} is unavailable: {exc}")

    @staticmethod
    def _stamp(seconds: float) -> bytes:
        return b"%013d" % int(seconds * 1000)

    @staticmethod
    def _send_and_read(shard: _Shard, args: tuple[Any, ...], retry: bool) -> Any:
        """Send one command on this thread's connection and return its raw reply.

        The hot paths use this rather than ``redis.Redis`` methods: it skips the
        client's retry and observability wrappers and the reply callbacks (the
        replies we read need none), about a third of the client-side cost of a call.

        A command that could not be written (the connection was refused or broken)
        is sent once more on a new connection, since it did not run; one whose reply
        was lost with the connection only if *retry* says running it twice is
        harmless. Timeouts are never retried: the server may be stuck."""
        conn = shard.connection(check=not retry)
        for attempt in (0, 1):
            written = False
            try:
                if shard.sentinel is not None and conn._sock is None:
                    conn.connect()  # asks the sentinels (sending would not)
                conn.send_command(*args)
                written = True
                return conn.read_response()
            except redis.ResponseError:
                raise  # an error reply (NOSCRIPT, MOVED, ...): the connection is fine
            except BaseException as exc:
                # Whatever the failure (a timeout mid-reply, an interrupt), the
                # connection's state is unknown: the next command starts afresh.
                conn.disconnect()
                if attempt or not isinstance(exc, redis.ConnectionError) or (written and not retry):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _execute(self, shard: _Shard, *args: Any, retry: bool = True) -> Any:
        """One command on *shard*, following a cluster's redirections: MOVED (the
        slot lives elsewhere now: read the map again), ASK (a slot in migration:
        this key is already on the target) and TRYAGAIN (wait for the migration).
        Each redirection means the command did not run, so it is sent again."""
        asking = False
        for attempt in range(MAX_REDIRECTS):
            try:
                if asking:
                    self._send_and_read(shard, ("ASKING",), True)
                return self._send_and_read(shard, args, retry)
            except redis.exceptions.NoScriptError:
                # A restarted server, or a node the command was redirected to.
                self._send_and_read(shard, ("SCRIPT", "LOAD", self._scripts[args[1]].script), True)
                continue
            except redis.exceptions.MovedError as exc:
                if self._slot_map is None:
                    raise
                self._slot_map.stale = True
                shard = self._slot_map.node(exc.host, exc.port)
                asking = False
            except redis.exceptions.AskError as exc:
                if self._slot_map is None:
                    raise
                shard = self._slot_map.node(exc.host, exc.port)
                asking = True
            except redis.exceptions.TryAgainError:
                pass
            if attempt >= 1:
                time.sleep(0.005 * attempt)
        raise redis.exceptions.ClusterError(f"more than {MAX_REDIRECTS} redirections")

    def _run(
        self,
        shard: _Shard,
        script: _Script,
        keys: list[str],
        args: Sequence[Any],
        *,
        retry: bool = True,
    ) -> Any:
        """Run a Lua script on *shard* in one round trip (two more the first time
        after a restart emptied the server's script cache). *retry*: whether running
        it twice is harmless (see :meth:`_send_and_read`); sends say no."""
        try:
            return self._execute(shard, "EVALSHA", script.sha, len(keys), *keys, *args, retry=retry)
        except redis.RedisError as exc:
            raise self._error(shard, exc) from exc

    def _run_batch(self, commands: list[_Command], *, retry: bool = True) -> list[Any]:
        """Run *commands* (EVALSHA or plain) in one round trip, whatever the number of
        servers: each server's are written at once, to every server before any reply
        is read. Returns each reply, or the ChannelsError that refused it, in order.
        Replies that need more (NOSCRIPT, a redirection) are followed up one by one."""
        by_shard: dict[int, tuple[_Shard, list[int]]] = {}
        for index, (shard, _args) in enumerate(commands):
            by_shard.setdefault(id(shard), (shard, []))[1].append(index)
        replies: list[Any] = [None] * len(commands)
        sent: list[tuple[_Shard, list[int], list[tuple[Any, ...]], Any]] = []
        for shard, indexes in by_shard.values():
            batch = [commands[i][1] for i in indexes]
            try:
                sent.append((shard, indexes, batch, self._write(shard, batch, not retry)))
            except redis.RedisError as exc:
                error = self._error(shard, exc)
                for index in indexes:
                    replies[index] = error
        for shard, indexes, batch, conn in sent:
            try:
                try:
                    got = self._read(conn, len(batch))
                except redis.ConnectionError:
                    if not retry:
                        raise
                    got = self._read(self._write(shard, batch, False), len(batch))
            except redis.RedisError as exc:
                error = self._error(shard, exc)
                for index in indexes:
                    replies[index] = error
                continue
            for index, args, reply in zip(indexes, batch, got, strict=True):
                if isinstance(reply, redis.ResponseError):
                    reply = self._follow_up(shard, args, reply, retry)
                replies[index] = reply
        return replies

    @staticmethod
    def _write(shard: _Shard, batch: list[tuple[Any, ...]], check: bool) -> Any:
        """Write *batch* at once on this thread's connection to *shard* (once more on a
        new connection if it could not be written: then it did not run); returns the
        connection to read the replies from. *check*: see :meth:`_Shard.connection`."""
        conn = shard.connection(check=check)
        for attempt in (0, 1):
            try:
                if shard.sentinel is not None and conn._sock is None:
                    conn.connect()  # asks the sentinels (sending would not)
                conn.send_packed_command([_packed(conn, batch)])
                return conn
            except BaseException as exc:
                conn.disconnect()
                if attempt or not isinstance(exc, redis.ConnectionError):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _read(conn: Any, count: int) -> list[Any]:
        """*count* replies (an error reply as its exception); any other failure leaves
        the connection's state unknown, so it is dropped."""
        got: list[Any] = []
        try:
            for _ in range(count):
                try:
                    got.append(conn.read_response())
                except redis.ResponseError as exc:
                    got.append(exc)
        except BaseException:
            conn.disconnect()
            raise
        return got

    def _follow_up(
        self, shard: _Shard, args: tuple[Any, ...], error: redis.ResponseError, retry: bool
    ) -> Any:
        """The reply to *args* after *error*: run again where the error means it did
        not run (NOSCRIPT, a redirection), else the error as a ChannelsError."""
        try:
            if isinstance(error, redis.exceptions.NoScriptError):
                return self._execute(shard, *args, retry=retry)  # loads it first
            if self._slot_map is not None and isinstance(
                error, redis.exceptions.AskError | redis.exceptions.TryAgainError
            ):
                self._slot_map.stale = True
                key = args[3] if args[0] == "EVALSHA" else args[1]
                return self._execute(self._shard_of(key), *args, retry=retry)
            return self._error(shard, error)
        except ChannelsError as exc:
            return exc
        except redis.RedisError as exc:
            return self._error(shard, exc)

    # -- storage hooks ------------------------------------------------------------

    def _send_record(self, channel: str, data: bytes, expires: float) -> _Send:
        queue = non_local_name(channel)
        # A local channel's full name travels in the record; others are the queue's.
        name = channel.encode("ascii") if len(queue) != len(channel) else b""
        record = b"%013d%s:%s" % (int(expires * 1000), name, data)
        return _Send(self._queue_key(queue), record, self.get_capacity(queue))

    def _push(self, channel: str, data: bytes, expires: float) -> bool:
        """Sends made at the same moment by several threads share one round trip
        (group commit): a thread whose send finds no round trip in flight on the
        server takes every send queued there and runs them in one script per slot; a
        thread that finds one in flight queues its send and waits for it to be taken
        by the next. A lone thread pays exactly one round trip; nothing waits for a
        batch to fill. A waiting thread is woken once: when its send has its outcome,
        or when it is handed the next round trip."""
        outcome = self._combine(self._send_record(channel, data, expires), None)
        if isinstance(outcome, ChannelsError):
            raise outcome
        return bool(outcome)

    def _push_soon(
        self,
        channel: str,
        data: bytes,
        expires: float,
        settled: Callable[[bool | ChannelsError], None],
    ) -> None:
        """:meth:`_push` that does not wait when a round trip in flight can take the
        send along: the thread leading it calls *settled* with the outcome."""
        outcome = self._combine(self._send_record(channel, data, expires), settled)
        if outcome is not None:
            settled(outcome)

    def _combine(
        self, entry: _Send, settled: Callable[[bool | ChannelsError], None] | None
    ) -> bool | ChannelsError | None:
        """Queue *entry* on its shard and lead, wait or (with *settled*, while the
        round trip in flight has rounds left) leave it queued: its outcome, or None
        when it was left to the leader."""
        shard = self._shard_of(entry.key)
        with shard.combine:
            shard.pending.append(entry)
            if shard.busy:
                if settled is not None and shard.detachable:
                    entry.settled = settled
                    return None
                entry.waiter = threading.Lock()
                entry.waiter.acquire()
            else:
                shard.busy = True
        if entry.waiter is not None:
            try:
                entry.waiter.acquire()
            except BaseException:  # KeyboardInterrupt in the main thread
                self._withdraw_send(shard, entry)
                raise
        if entry.outcome is None:
            self._lead(shard)
        return entry.outcome

    def _withdraw_send(self, shard: _Shard, entry: _Send) -> None:
        """An interrupted wait: the send is dropped if no round trip took it yet, and
        a round trip handed to this thread goes to the next send waiting."""
        orphans: list[_Send] = []
        with shard.combine:
            if entry in shard.pending:
                shard.pending.remove(entry)
            if entry.lead and self._hand_on(shard):
                orphans = self._orphans(shard)
        self._settle_detached(orphans)

    @staticmethod
    def _hand_on(shard: _Shard) -> bool:
        """With ``shard.combine`` held: wake the first send waiting to lead the next
        round trip (it takes every send queued, those ahead of it too), or mark the
        shard idle. True when only sends that did not wait are queued: the caller
        leads them."""
        for entry in shard.pending:
            if entry.waiter is not None:
                entry.lead = True
                shard.detachable = True
                entry.waiter.release()
                return False
        if shard.pending:
            return True
        shard.busy = False
        shard.detachable = True
        return False

    @staticmethod
    def _orphans(shard: _Shard) -> list[_Send]:
        """With ``shard.combine`` held, when the thread that would lead them cannot:
        the queued sends that did not wait, failed, and the shard marked idle."""
        orphans, shard.pending = shard.pending, []
        for entry in orphans:
            entry.outcome = LayerUnavailable(f"Redis at {shard.masked}: send interrupted")
        shard.busy = False
        shard.detachable = True
        return orphans

    @staticmethod
    def _settle_detached(entries: list[_Send]) -> None:
        for entry in entries:
            assert entry.settled is not None and entry.outcome is not None
            try:
                entry.settled(entry.outcome)
            except Exception:  # the caller's callback: it must not break our thread
                log.exception("a send's outcome callback failed")

    def _lead(self, shard: _Shard) -> None:
        """Send every send queued on *shard* in one round trip (ours among them), wake
        the threads waiting for theirs, then hand the next round trip to the first
        send waiting since, or mark the shard idle. Sends queued meanwhile whose
        threads did not wait (``send_soon``) are led by this thread too, for at most
        ``DETACHED_ROUNDS`` more round trips; during the last one, sends wait, so that
        one of them leads the next and no thread is held long by others' sends. The
        outcomes of sends that did not wait are passed on once this thread has handed
        the shard on."""
        detached: list[_Send] = []
        rounds = 0
        try:
            again = True
            while again:
                with shard.combine:
                    batch, shard.pending = shard.pending, []
                    rounds += 1
                    if rounds > DETACHED_ROUNDS:
                        shard.detachable = False
                interrupted = True
                try:
                    self._send_batch(shard, batch)
                    interrupted = False
                finally:
                    for entry in batch:
                        if entry.outcome is None:  # an interrupt before the reply was read
                            entry.outcome = LayerUnavailable(
                                f"Redis at {shard.masked}: send interrupted"
                            )
                        if entry.waiter is not None:
                            entry.waiter.release()
                        elif entry.settled is not None:
                            detached.append(entry)
                    with shard.combine:
                        again = self._hand_on(shard)
                        if again and interrupted:
                            detached += self._orphans(shard)
        finally:
            self._settle_detached(detached)

    def _send_commands(self, shard: _Shard, batch: list[_Send]) -> list[tuple[list[_Send], Any]]:
        """The send scripts for *batch*: one per slot (a cluster runs a script in one
        slot), each with the entries it carries."""
        by_slot: dict[int, list[_Send]] = {}
        for entry in batch:
            by_slot.setdefault(self._slot_of(entry.key), []).append(entry)
        now = self._stamp(time.time())
        commands = []
        for entries in by_slot.values():
            args: list[Any] = [
                "EVALSHA",
                self._send_many_script.sha,
                len(entries),
                *(e.key for e in entries),
                now,
                self._queue_ttl,
            ]
            for entry in entries:
                args += [entry.record, entry.capacity]
            commands.append((entries, tuple(args)))
        return commands

    def _send_batch(self, shard: _Shard, batch: list[_Send]) -> None:
        self._send_on(shard, self._send_commands(shard, batch))

    def _send_on(self, shard: _Shard, commands: list[tuple[list[_Send], Any]]) -> None:
        try:
            if len(commands) == 1:
                entries, args = commands[0]
                keys = [e.key for e in entries]
                script_args = args[3 + len(keys) :]  # after EVALSHA, the SHA, numkeys, keys
                reply = self._run(shard, self._send_many_script, keys, script_args, retry=False)
                replies = [reply]
            else:
                replies = self._run_batch([(shard, args) for _e, args in commands], retry=False)
        except ChannelsError as exc:
            for entries, _args in commands:
                for entry in entries:
                    entry.outcome = exc
            return
        except BaseException:
            for entries, _args in commands:
                for entry in entries:
                    entry.outcome = LayerUnavailable(f"Redis at {shard.masked}: send interrupted")
            raise
        for (entries, _args), reply in zip(commands, replies, strict=True):
            if isinstance(reply, ChannelsError):
                for entry in entries:
                    entry.outcome = reply
                continue
            for entry, pushed in zip(entries, reply, strict=True):
                entry.outcome = bool(pushed)

    def _push_many(self, items: list[tuple[str, bytes, float]]) -> list[bool | ChannelsError]:
        entries = [self._send_record(c, d, e) for c, d, e in items]
        self._push_entries(entries)
        return [e.outcome if e.outcome is not None else False for e in entries]

    def _push_entries(self, entries: list[_Send]) -> None:
        """Send *entries* in one round trip: one script per slot, every server's
        written before any reply is read."""
        commands: list[_Command] = []
        carried: list[list[_Send]] = []
        for shard, batch in self._by_shard(entries):
            for sent, args in self._send_commands(shard, batch):
                commands.append((shard, args))
                carried.append(sent)
        try:
            replies = self._run_batch(commands, retry=False)
        except BaseException:
            for sent in carried:
                for entry in sent:
                    entry.outcome = LayerUnavailable("send interrupted")
            raise
        for sent, reply in zip(carried, replies, strict=True):
            _settle(sent, reply)

    def _by_shard(self, entries: list[_Send]) -> list[tuple[_Shard, list[_Send]]]:
        """*entries* grouped by the server of their key, in order; an entry whose key
        has no server now (a cluster slot without a master) gets that as its outcome."""
        by_shard: dict[int, tuple[_Shard, list[_Send]]] = {}
        for entry in entries:
            try:
                shard = self._shard_of(entry.key)
            except ChannelsError as exc:
                entry.outcome = exc
                continue
            by_shard.setdefault(id(shard), (shard, []))[1].append(entry)
        return list(by_shard.values())

    def _plan(self, names: list[str]) -> _Plan:
        """The queues to read for *names*, grouped by server and slot (cached per name
        list until a cluster's slots move)."""
        key = tuple(names)
        if self._slot_map is not None and self._slot_map.stale:
            self._slot_map.refresh()  # a node failed: its slots may have a new master
        routing = self._routing()
        cached = self._plans.get(key)
        if cached is not None and cached[0] == routing:
            return cached[1]
        by_slot: dict[tuple[int, int], tuple[_Shard, list[str], dict[bytes, str]]] = {}
        for name in names:
            queue_key = self._queue_key(name)
            shard = self._shard_of(queue_key)
            entry = by_slot.setdefault((id(shard), self._slot_of(queue_key)), (shard, [], {}))
            entry[1].append(queue_key)
            entry[2][queue_key.encode("ascii")] = name
        plan = list(by_slot.values())
        if len(self._plans) >= 1024:  # bound the cache against ever-new names
            self._plans.clear()
        self._plans[key] = (self._routing(), plan)
        return plan

    @staticmethod
    def _record(queue: str, raw: bytes) -> Record:
        if raw[13] == 58:  # ":" -- the message is for the queue's own channel
            return Record(queue, raw[14:])
        sep = raw.index(b":", 14)
        name = raw[13:sep].decode("ascii")
        if name[0] == "#":
            return Record(queue, raw[sep + 1 :], name[1:])
        return Record(name, raw[sep + 1 :])

    def _pop_many(self, names: list[str], block: bool, deadline: float, count: int) -> list[Record]:
        """Up to *count* records in one round trip (LMPOP, or BLMPOP when *block*),
        where the queues share a slot and the server has them (Redis 7)."""
        plan = self._plan(names)
        if count <= 1 or len(plan) != 1 or self._has_lmpop is False:
            return super()._pop_many(names, block, deadline, count)
        shard, keys, by_key = plan[0]
        if len(keys) > 1:
            keys = random.sample(keys, len(keys))
        while True:
            remaining = deadline - time.monotonic() if block else 0.0
            try:
                if remaining < 0.001:
                    reply = self._execute(shard, "LMPOP", len(keys), *keys, "LEFT", "COUNT", count)
                else:
                    timeout = round(min(remaining, self._max_block), 3)
                    reply = self._execute(
                        shard, "BLMPOP", timeout, len(keys), *keys, "LEFT", "COUNT", count
                    )
            except redis.ResponseError as exc:
                if self._has_lmpop is None and "unknown command" in str(exc).lower():
                    self._has_lmpop = False
                    return super()._pop_many(names, block, deadline, count)
                raise self._error(shard, exc) from exc
            except redis.RedisError as exc:
                raise self._error(shard, exc) from exc
            self._has_lmpop = True
            if reply is not None:
                queue = by_key[reply[0]]
                now = self._stamp(time.time())
                records = [self._record(queue, raw) for raw in reply[1] if raw[:13] > now]
                if records:
                    return records
            if remaining < 0.001:
                return []

    def _push_many_pop(
        self, pushes: list[tuple[str, bytes, float]], names: list[str], count: int
    ) -> tuple[list[bool | ChannelsError], list[Record]]:
        """The sends and a non-blocking LMPOP pipelined in one round trip, when they
        are all on one server: a worker's reply and its next request."""
        plan = self._plan(names)
        if len(plan) != 1 or self._has_lmpop is False:
            return super()._push_many_pop(pushes, names, count)
        shard, keys, by_key = plan[0]
        entries = [self._send_record(c, d, e) for c, d, e in pushes]
        if any(self._shard_of(e.key) is not shard for e in entries):
            return super()._push_many_pop(pushes, names, count)
        if len(keys) > 1:
            keys = random.sample(keys, len(keys))
        sends = self._send_commands(shard, entries) if entries else []
        commands = [args for _sent, args in sends]
        commands.append(("LMPOP", len(keys), *keys, "LEFT", "COUNT", count))
        try:
            # Polled for a close first (there are sends), and not sent again once
            # written: a send whose outcome is unknown must not run twice.
            replies = self._read(self._write(shard, commands, True), len(commands))
        except redis.RedisError as exc:
            raise self._error(shard, exc) from exc
        for (sent, args), reply in zip(sends, replies, strict=False):
            if isinstance(reply, redis.ResponseError):
                reply = self._follow_up(shard, args, reply, False)  # NOSCRIPT, ASK...
            _settle(sent, reply)
        outcomes = [e.outcome if e.outcome is not None else False for e in entries]
        popped = replies[-1]
        if isinstance(popped, redis.ResponseError):
            if "unknown command" in str(popped).lower():
                self._has_lmpop = False
                return outcomes, super()._pop_many(names, False, time.monotonic(), count)
            if self._slot_map is not None and isinstance(popped, redis.exceptions.AskError):
                self._slot_map.stale = True  # the slot is moving: the next receive follows
                return outcomes, []
            raise self._error(shard, popped)
        self._has_lmpop = True
        if popped is None:
            return outcomes, []
        queue = by_key[popped[0]]
        now = self._stamp(time.time())
        return outcomes, [self._record(queue, raw) for raw in popped[1] if raw[:13] > now]

    def _withdraw(self, items: list[tuple[str, bytes, float]]) -> list[bool]:
        removed = []
        for channel, data, expires in items:
            entry = self._send_record(channel, data, expires)
            shard = self._shard_of(entry.key)
            # Not sent again if the reply is lost: a second LREM would find nothing
            # and say "taken" of a message that is gone (the caller then waits).
            removed.append(
                self._execute(shard, "LREM", entry.key, 1, entry.record, retry=False) == 1
            )
        return removed

    def _pop(self, names: list[str], block: bool, deadline: float) -> Record | None:
        plan = self._plan(names)
        if len(plan) == 1:
            return self._pop_shard(*plan[0], block, deadline)
        return self._pop_sharded(plan, block, deadline)

    def _pop_now(self, shard: _Shard, keys: list[str], by_key: dict[bytes, str]) -> Record | None:
        """One non-blocking pass over *keys*, skipping expired records, in Lua."""
        if len(keys) > 1:
            keys = random.sample(keys, len(keys))  # fairness between channels
        reply = self._run(shard, self._pop_script, keys, [self._stamp(time.time())])
        return None if reply is None else self._record(by_key[reply[0]], reply[1])

    def _blpop(
        self, shard: _Shard, keys: list[str], by_key: dict[bytes, str], timeout: float
    ) -> Record | None:
        """One BLPOP of at most *timeout* seconds; None if it timed out or the record
        it got had expired (the caller loops)."""
        if len(keys) > 1:
            keys = random.sample(keys, len(keys))
        try:
            reply = self._execute(shard, "BLPOP", *keys, round(timeout, 3))
        except redis.RedisError as exc:
            raise self._error(shard, exc) from exc
        if reply is None or reply[1][:13] <= self._stamp(time.time()):
            return None
        return self._record(by_key[reply[0]], reply[1])

    def _pop_shard(
        self,
        shard: _Shard,
        keys: list[str],
        by_key: dict[bytes, str],
        block: bool,
        deadline: float,
    ) -> Record | None:
        while True:
            remaining = deadline - time.monotonic() if block else 0.0
            if remaining < 0.001:
                return self._pop_now(shard, keys, by_key)
            record = self._blpop(shard, keys, by_key, min(remaining, self._max_block))
            if record is not None:
                return record

    def _pop_sharded(self, plan: _Plan, block: bool, deadline: float) -> Record | None:
        """Receive across servers (or slots): a non-blocking pass over each in random
        order, then (if *block*) BLPOPs of :data:`SHARD_SLICE` seconds on each in turn
        until the deadline. A message elsewhere than where the receive waits may thus
        wait up to ``SHARD_SLICE * (parts - 1)`` seconds; keep the channels a process
        reads in one slot where latency matters (named channels share one)."""
        order = random.sample(plan, len(plan))
        for part in order:
            record = self._pop_now(*part)
            if record is not None:
                return record
        turn = 0
        while block:
            remaining = deadline - time.monotonic()
            if remaining < 0.001:
                break
            part = order[turn % len(order)]
            turn += 1
            record = self._blpop(*part, min(remaining, SHARD_SLICE, self._max_block))
            if record is not None:
                return record
        return None

    def _push_group(self, group: str, data: bytes, expires: float) -> int:
        expires_ms = int(expires * 1000)
        group_key = self._group_key(group)
        shard = self._shard_of(group_key)
        if self._one_server:
            args: list[Any] = [
                self.prefix,
                b"%013d" % (expires_ms - self._expiry_ms),
                b"%013d" % expires_ms,
                self._queue_ttl,
                group,
                data,
                self.capacity,
                *self._capacity_args,
            ]
            return int(self._run(shard, self._group_send_script, [group_key], args, retry=False))
        # Across servers: read the group's queues on its server, then write one record
        # per queue (one script per slot), to every server holding them at once.
        queues = self._run(
            shard, self._group_queues_script, [group_key], [expires_ms - self._expiry_ms]
        )
        stamp = b"%013d" % expires_ms
        plain = stamp + b":" + data
        grouped = b"%s#%s:%s" % (stamp, group.encode("ascii"), data)
        entries = []
        for raw in queues:
            queue = raw.decode("ascii")
            record = grouped if queue[-1] == "!" else plain
            entries.append(_Send(self._queue_key(queue), record, self.get_capacity(queue)))
        self._push_entries(entries)
        skipped = 0
        for entry in entries:
            if isinstance(entry.outcome, ChannelsError):
                raise entry.outcome
            skipped += not entry.outcome
        return skipped

    def _local_members(self, group: str, prefix: str) -> list[str]:
        key = self._local_key(group, prefix)
        shard = self._shard_of(key)
        try:
            members = self._execute(
                shard, "ZRANGEBYSCORE", key, f"({int(time.time() * 1000)}", "+inf"
            )
        except redis.RedisError as exc:
            raise self._error(shard, exc) from exc
        return [m.decode("ascii") for m in members if len(m) != len(prefix)]

    def _membership(
        self, group: str, channel: str
    ) -> tuple[_Shard, str, list[str], _Shard | None, str]:
        """(group's server, queue, the group's keys, and for a local channel the
        server and key of the set of its groups)."""
        queue = non_local_name(channel)
        group_key = self._group_key(group)
        keys = [group_key]
        if queue.endswith("!"):
            keys.append(self._local_key(group, queue))
            remembered = self._channel_groups_key(channel)
            return self._shard_of(group_key), queue, keys, self._shard_of(remembered), remembered
        return self._shard_of(group_key), queue, keys, None, ""

    @staticmethod
    def _script_args(script: _Script, keys: list[str], args: list[Any]) -> tuple[Any, ...]:
        return ("EVALSHA", script.sha, len(keys), *keys, *args)

    def _raise_first(self, replies: list[Any]) -> list[Any]:
        for reply in replies:
            if isinstance(reply, ChannelsError):
                raise reply
        return replies

    def _group_add(self, group: str, channel: str, expires: float) -> None:
        shard, queue, keys, set_shard, remembered = self._membership(group, channel)
        now = int(time.time() * 1000)
        add = self._script_args(
            self._group_add_script,
            keys,
            [queue, channel, int(expires * 1000), now, self._group_ttl],
        )
        commands: list[_Command] = []
        if set_shard is not None:
            # First: a channel the set names but no group holds costs nothing later.
            commands.append(
                (set_shard, self._script_args(
                    self._remember_script, [remembered], [group, self._group_ttl]))
            )  # fmt: skip
        commands.append((shard, add))
        self._raise_first(self._run_batch(commands))

    def _group_discard(self, group: str, channel: str) -> None:
        shard, queue, keys, set_shard, remembered = self._membership(group, channel)
        commands: list[_Command] = [
            (shard, self._script_args(
                self._group_discard_script, keys, [queue, channel, int(time.time() * 1000)]))
        ]  # fmt: skip
        if set_shard is not None:
            commands.append((set_shard, ("SREM", remembered, group)))
        self._raise_first(self._run_batch(commands))

    def _discard_commands(self, channel: str, groups: list[bytes]) -> list[_Command]:
        queue = non_local_name(channel)
        now = int(time.time() * 1000)
        commands: list[_Command] = []
        for raw in groups:
            group = raw.decode("ascii")
            keys = [self._group_key(group), self._local_key(group, queue)]
            commands.append(
                (self._shard_of(keys[0]),
                 self._script_args(self._group_discard_script, keys, [queue, channel, now]))
            )  # fmt: skip
        return commands

    def _discard_channel(self, channel: str) -> None:
        if not non_local_name(channel).endswith("!"):
            return  # normal members are left to their expiry
        remembered = self._channel_groups_key(channel)
        shard = self._shard_of(remembered)
        try:
            groups = self._execute(shard, "SMEMBERS", remembered)
        except redis.RedisError as exc:
            raise self._error(shard, exc) from exc
        commands = self._discard_commands(channel, list(groups))
        commands.append((shard, ("DEL", remembered)))
        self._raise_first(self._run_batch(commands))

    def _group_channels(self, group: str) -> list[str]:
        key = self._group_key(group)
        members = self._run(
            self._shard_of(key),
            self._group_members_script,
            [key],
            [int(time.time() * 1000), self._local_key(group, "")],
        )
        return [m.decode("ascii") for m in members]

    def _scan(self, shard: _Shard, match: str) -> list[str]:
        try:
            return [k.decode("ascii") for k in shard.client.scan_iter(match=match, count=1000)]
        except redis.RedisError as exc:
            raise self._error(shard, exc) from exc

    def _flush(self) -> None:
        for shard in self._all_shards():
            keys = self._scan(shard, f"{self.prefix}:*")
            try:
                # One key per UNLINK: a cluster refuses keys of several slots at once.
                for start in range(0, len(keys), 1000):
                    chunk = keys[start : start + 1000]
                    if self._slot_map is None:
                        shard.client.unlink(*chunk)
                    else:
                        self._run_batch([(shard, ("UNLINK", k)) for k in chunk])
            except redis.RedisError as exc:
                raise self._error(shard, exc) from exc

    def _queue_stats_on(self, shard: _Shard, queue: str) -> tuple[int, float]:
        now_ms = int(time.time() * 1000)
        reply = self._run(
            shard, self._queue_stats_script, [self._queue_key(queue)], [b"%013d" % now_ms]
        )
        if not reply[0]:
            return 0, 0.0
        sent_ms = int(reply[1]) - self._expiry_ms
        return int(reply[0]), max(0.0, (now_ms - sent_ms) / 1000)

    def _queue_stats(self, queue: str) -> tuple[int, float]:
        return self._queue_stats_on(self._shard_of(self._queue_key(queue)), queue)

    def _overview(self) -> dict[str, Any]:
        channels: dict[str, int] = {}
        groups: dict[str, int] = {}
        named = self._named_prefix
        tagged = f"{self.prefix}:{{"
        for shard in self._all_shards():
            for key in self._scan(shard, f"{self.prefix}:*"):
                if key.startswith(named):
                    queue = key[len(named) :]
                elif key.startswith(tagged) and key.endswith("}:q"):
                    queue = key[len(tagged) : -3]
                elif key.startswith(tagged) and key.endswith("}:g"):
                    group = key[len(tagged) : -3]
                    size = len(self._group_channels(group))
                    if size:
                        groups[group] = groups.get(group, 0) + size
                    continue
                else:  # local members and membership sets, counted with their group
                    continue
                pending = self._queue_stats_on(shard, queue)[0]
                if pending:
                    channels[queue] = channels.get(queue, 0) + pending
        return {"channels": channels, "groups": groups}


def _layer_option_names() -> list[str]:
    return [
        "expiry",
        "group_expiry",
        "capacity",
        "channel_capacity",
        "max_message_size",
        "receive_timeout",
    ]
