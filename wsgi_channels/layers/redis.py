"""A channel layer on one or more Redis servers, for production.

Keys, under a namespace ``prefix`` (default ``wsgi_channels``)::

    {prefix}:q:{queue}              list    the queue of a channel: a normal name, a full
                                            ``name?local`` name, or the ``name!`` prefix
                                            shared by every local channel of a process
    {prefix}:g:{group}              zset    the queues holding members of the group, scored
                                            by expiry (ms): normal members by name, local
                                            members by their ``name!`` prefix
    {prefix}:g:{group}:{name!}      zset    the local members of that process, by expiry

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

A send, a group send (per shard) and a non-blocking receive are one round trip each:
Lua scripts, loaded once and run with EVALSHA (re-loaded by redis-py after a server
restart forgot them). A blocking receive whose channels all live on one server is one
BLPOP. Channels are spread over several servers (*shards*) by a CRC-32 of their queue
name, so every ``name!`` channel of a process lives on one shard; group memberships
live on the shard of the member's queue, and a group send runs one script on each
shard.

Connections are pooled per shard and shared by threads; a forked child makes its own
pools. A server that goes away makes calls raise LayerUnavailable (with the password
masked); the pools reconnect on the next call once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import threading
import time
import urllib.parse
import weakref
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from . import mask_url, parse_options
from .aio import AsyncFace, Deliver, Entry, _Backoff
from .base import (
    BaseChannelLayer,
    ChannelsError,
    ConfigurationError,
    LayerUnavailable,
    Record,
    decode_message,
    non_local_name,
)

try:
    import redis
    import redis.asyncio
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.commands.core import Script
    from redis.retry import Retry
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ConfigurationError(
        "the Redis layer needs redis-py: pip install 'wsgi-channels[redis]'"
    ) from None

__all__ = ["DEFAULT_PREFIX", "DEFAULT_URL", "RedisChannelLayer"]

DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_PREFIX = "wsgi_channels"

#: How long one BLPOP waits on one shard when a receive spans several shards (there is
#: no blocking pop across servers, so the receive turns round the shards in slices).
SHARD_SLICE = 0.05
#: Seconds a thread's connection may sit unused before it is checked for a server
#: that went away meanwhile (see _Shard.connection).
IDLE_CHECK = 1.0

_DEFAULT_CONNECT_TIMEOUT = 2.0
# Reads must outlast the longest BLPOP; the margin covers a busy server's reply.
_SOCKET_TIMEOUT_MARGIN = 2.0
_MIN_SOCKET_TIMEOUT = 5.0

_PREFIX = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_SSL_OPTIONS = ("ssl_ca_certs", "ssl_cert_reqs", "ssl_certfile", "ssl_check_hostname",
                "ssl_keyfile", "ssl_ca_path")  # fmt: skip


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


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
    "socket_keepalive": _parse_bool,
    "health_check_interval": float,
    "client_name": str,
    "max_connections": int,
    "ssl_cert_reqs": _parse_cert_reqs,
    "ssl_ca_certs": str,
    "ssl_ca_path": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_check_hostname": _parse_bool,
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

# KEYS[1] queue; ARGV record, capacity, now, queue TTL (ms). Returns 1 if pushed, 0 if full.
_SEND = (
    _TRIM_HEAD
    + """
local key = KEYS[1]
if trim(key, ARGV[3]) >= tonumber(ARGV[2]) then return 0 end
redis.call('RPUSH', key, ARGV[1])
redis.call('PEXPIRE', key, ARGV[4])
return 1
"""
)

# KEYS one queue per message (repeats allowed); ARGV[1] now, ARGV[2] queue TTL (ms),
# then (record, capacity) per message. Returns 1 (pushed) or 0 (full) per message, in
# order: the messages of one burst, in one round trip.
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

# KEYS queues in the order to try; ARGV[1] now. Returns {key, record} or nil.
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

# KEYS[1] the group's zset of queues; ARGV queue key prefix, now, expiry stamp, queue
# TTL (ms), group, message, default capacity, then (Lua pattern, capacity) pairs taken
# from channel_capacity. Pushes one record per queue; returns how many were full.
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
  local key = ARGV[1] .. queue
  if trim(key, now) >= capacity then
    skipped = skipped + 1
  else
    local record
    if string.sub(queue, -1) == '!' then
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

_KEEP_TTL = """
local function keep(key, ttl)
  if redis.call('PTTL', key) < tonumber(ttl) then redis.call('PEXPIRE', key, ttl) end
end
"""

# KEYS[1] group zset, KEYS[2] (local channels only) the process's member zset; ARGV
# queue, channel, expires (ms), now (ms), key TTL (ms). A queue's score is the latest
# expiry of its members, so it is only ever raised.
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
  redis.call('SADD', KEYS[3], ARGV[6])
  keep(KEYS[3], ARGV[5])
end
return 1
"""
)

# KEYS[1] group zset, KEYS[2] (local channels only) the process's member zset; ARGV
# queue, channel, now. The queue leaves the group with its process's last member.
_GROUP_DISCARD = """
if KEYS[2] then
  redis.call('SREM', KEYS[3], ARGV[4])
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
  if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""

# KEYS[1] the set of groups a local channel is in; ARGV group key prefix, the channel's
# queue, the channel, now (ms). Removes the channel from each of them (and its queue
# from the group with its process's last member); the set goes too.
_DISCARD_CHANNEL = """
for _, group in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local members = ARGV[1] .. group .. ':' .. ARGV[2]
  redis.call('ZREM', members, ARGV[3])
  redis.call('ZREMRANGEBYSCORE', members, '-inf', ARGV[4])
  if redis.call('EXISTS', members) == 0 then redis.call('ZREM', ARGV[1] .. group, ARGV[2]) end
end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS[1] group zset; ARGV[1] now. Returns the unexpired member channels on this shard.
_GROUP_MEMBERS = """
local now = '(' .. ARGV[1]
local members = {}
for _, queue in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
  if string.sub(queue, -1) == '!' then
    local key = KEYS[1] .. ':' .. queue
    for _, channel in ipairs(redis.call('ZRANGEBYSCORE', key, now, '+inf')) do
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


# -- the layer ----------------------------------------------------------------------


class _Shard:
    """One Redis server: its pool, a client on it, and its URL with the password masked.

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
        "kwargs",
        "local",
        "masked",
        "opened",
        "pending",
        "pool",
    )

    def __init__(self, masked: str, pool_kwargs: Mapping[str, Any]) -> None:
        self.masked = masked
        self.kwargs = dict(pool_kwargs)
        # Sends waiting to share a round trip (see RedisChannelLayer._push).
        self.combine = threading.Condition(threading.Lock())
        self.pending: list[_Send] = []
        self.busy = False
        self.pool: redis.ConnectionPool = redis.ConnectionPool(**pool_kwargs)
        self.client: redis.Redis = redis.Redis(connection_pool=self.pool)
        self.local = threading.local()
        # Every thread's connection, so that close() can reach them all.
        self.opened: weakref.WeakSet[Any] = weakref.WeakSet()

    def connection(self) -> Any:
        """This thread's connection (made on first use; it reconnects by itself)."""
        local = self.local
        conn = getattr(local, "conn", None)
        now = time.monotonic()
        if conn is None:
            pool = self.pool
            conn = pool.connection_class(**pool.connection_kwargs)
            local.conn = conn
            self.opened.add(conn)
        elif now - local.used > IDLE_CHECK:
            # After a quiet spell the server may have restarted: a socket that reads
            # as ready now holds an EOF or garbage, so start afresh rather than fail
            # the next command (redis-py's pool checks this on every checkout).
            try:
                if conn._sock is not None and conn.can_read():
                    conn.disconnect()
            except (redis.RedisError, OSError):
                conn.disconnect()
        local.used = now
        return conn

    def disconnect(self) -> None:
        self.pool.disconnect()
        for conn in list(self.opened):
            conn.disconnect()


class _Send:
    """One message waiting in a shard's combined send."""

    __slots__ = ("capacity", "key", "outcome", "record")

    def __init__(self, key: str, record: bytes, capacity: int) -> None:
        self.key = key
        self.record = record
        self.capacity = capacity
        self.outcome: bool | ChannelsError | None = None


# (shard, queue keys, queue name by key as Redis returns it)
_Plan = list[tuple[_Shard, list[str], dict[bytes, str]]]


class RedisChannelLayer(BaseChannelLayer):
    """A layer on Redis (URLs ``redis://``, ``rediss://``, ``unix://``; see
    :meth:`from_url`).

    *hosts* are Redis URLs, one per shard; their query strings may carry redis-py
    connection parameters (:data:`CONNECTION_OPTIONS`), and connection parameters given
    as keyword *options* apply to every host. The other *options* are the layer
    options of :class:`BaseChannelLayer`. Every shard must be listed in the same order
    by every process: a channel's shard is chosen by its position.

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
        prefix: str = DEFAULT_PREFIX,
        **options: Any,
    ) -> None:
        connection = {k: options.pop(k) for k in list(options) if k in CONNECTION_OPTIONS}
        try:
            super().__init__(**options)
        except TypeError as exc:
            accepted = sorted([*_layer_option_names(), "hosts", "prefix", *CONNECTION_OPTIONS])
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
        #: The shard URLs, passwords masked (safe to log).
        self.hosts = [mask_url(h) for h in hosts]
        self._pool_kwargs = [self._pool_options(h, connection) for h in hosts]
        socket_timeout = min(kw["socket_timeout"] for kw in self._pool_kwargs)
        # BLPOP must return before the socket read times out.
        self._max_block = max(0.01, min(self.receive_timeout, socket_timeout - 1.0))
        self._queue_prefix = f"{self.prefix}:q:"
        self._group_prefix = f"{self.prefix}:g:"
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

        The username and password are percent-decoded. The database comes from the
        path or from ``db=`` (not both). Query parameters are either layer options,
        which may appear on any of the URLs but must agree::

            expiry, group_expiry, capacity, channel_capacity, max_message_size,
            receive_timeout, prefix (key namespace, default "wsgi_channels")

        or redis-py connection parameters for that server::

            db, username, password, socket_timeout, socket_connect_timeout,
            socket_keepalive, health_check_interval, client_name, max_connections,
            ssl_cert_reqs (none|optional|required), ssl_ca_certs, ssl_ca_path,
            ssl_certfile, ssl_keyfile, ssl_check_hostname (rediss:// only)

        Defaults: ``socket_connect_timeout=2``, ``socket_timeout`` the larger of 5 and
        ``receive_timeout + 2`` (it must outlast a blocking receive). Anything else
        raises ConfigurationError naming what is accepted; passwords never appear in
        its message.
        """
        options: dict[str, Any] = {}
        hosts = []
        for part in url.split(","):
            part = part.strip()
            parsed = urllib.parse.urlsplit(part)
            extra = {**CONNECTION_OPTIONS, "prefix": _parse_prefix}
            parsed_options = parse_options(part, parsed.query, extra)
            host_query = []
            for key, value in urllib.parse.parse_qsl(parsed.query, keep_blank_values=True):
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
            hosts.append(f"{base}?{urllib.parse.urlencode(host_query)}" if host_query else base)
        return cls(hosts=hosts, **options)

    def _pool_options(self, url: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
        """redis-py ConnectionPool arguments for one host URL, strictly checked."""
        masked = mask_url(url)
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("redis", "rediss", "unix"):
            raise ConfigurationError(
                f"unknown Redis URL {masked!r}; accepted schemes: redis://, rediss://, unix://"
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
        # No retries and no back-off: a call during an outage must fail promptly, and
        # a retried send whose first try did run would deliver twice. Sockets that
        # died with a restarted server are not a reason to retry: the pool checks
        # each connection it hands out and reconnects a dead one.
        kwargs["retry"] = Retry(NoBackoff(), 0)
        # RESP2: the replies we read are plain lists and strings, and its parser is
        # the cheaper one.
        kwargs["protocol"] = 2
        return kwargs

    def _connect(self) -> None:
        self._plans: dict[tuple[str, ...], _Plan] = {}  # plans name shards
        self._shards = [
            _Shard(masked, kwargs)
            for masked, kwargs in zip(self.hosts, self._pool_kwargs, strict=True)
        ]
        client = self._shards[0].client
        # Script objects hold only the source and its SHA-1; _run() sends them to
        # any shard, and loads them again where a restarted server forgot them.
        self._send_script: Script = client.register_script(_SEND)
        self._pop_script: Script = client.register_script(_POP)
        self._group_send_script: Script = client.register_script(_GROUP_SEND)
        self._group_add_script: Script = client.register_script(_GROUP_ADD)
        self._group_discard_script: Script = client.register_script(_GROUP_DISCARD)
        self._discard_channel_script: Script = client.register_script(_DISCARD_CHANNEL)
        self._group_members_script: Script = client.register_script(_GROUP_MEMBERS)
        self._queue_stats_script: Script = client.register_script(_QUEUE_STATS)
        self._send_many_script: Script = client.register_script(_SEND_MANY)
        self._has_lmpop: bool | None = None  # LMPOP/BLMPOP: Redis 7.0 and later

    def async_face(self) -> RedisFace:
        """The asyncio face, on redis.asyncio connections of its own."""
        return RedisFace(self)

    def _after_fork(self) -> None:
        # The parent's sockets stay open for the parent; redis-py closes (without
        # shutting down) any it finds in this child.
        self._connect()

    def close(self) -> None:
        """Disconnect every pool. Using the layer afterwards connects again."""
        for shard in self._shards:
            shard.disconnect()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} hosts={self.hosts!r} prefix={self.prefix!r}>"

    # -- helpers ------------------------------------------------------------------

    def _shard(self, queue: str) -> _Shard:
        shards = self._shards
        if len(shards) == 1:
            return shards[0]
        return shards[zlib.crc32(queue.encode("ascii")) % len(shards)]

    def _error(self, shard: _Shard, exc: redis.RedisError) -> Exception:
        """The ChannelsError to raise for a redis-py error (never showing a password)."""
        if isinstance(exc, redis.AuthenticationError | redis.exceptions.NoPermissionError):
            return ConfigurationError(f"Redis at {shard.masked} refused the credentials: {exc}")
        if isinstance(exc, redis.exceptions.OutOfMemoryError) or "maxmemory" in str(exc):
            return LayerUnavailable(
                f"Redis at {shard.masked} is out of memory (maxmemory reached; nothing is "
                f"sent until it has room): {exc}"
            )
        return LayerUnavailable(f"Redis at {shard.masked} is unavailable: {exc}")

    @staticmethod
    def _stamp(seconds: float) -> bytes:
        return b"%013d" % int(seconds * 1000)

    @staticmethod
    def _execute(shard: _Shard, *args: Any) -> Any:
        """Send one command on a pooled connection and return its raw reply.

        The hot paths use this rather than ``redis.Redis`` methods: it skips the
        client's retry and observability wrappers and the reply callbacks (the
        replies we read need none), about a third of the client-side cost of a call.
        """
        conn = shard.connection()
        try:
            conn.send_command(*args)
            return conn.read_response()
        except redis.ResponseError:
            raise  # an error reply (NOSCRIPT, ...): the connection is fine
        except BaseException:
            # Whatever the failure (a timeout mid-reply, an interrupt), the
            # connection's state is unknown: the next command starts afresh.
            conn.disconnect()
            raise

    def _run(self, shard: _Shard, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script on *shard* in one round trip (two more the first time
        after a restart emptied the server's script cache)."""
        try:
            try:
                return self._execute(shard, "EVALSHA", script.sha, len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:
                self._execute(shard, "SCRIPT", "LOAD", script.script)
                return self._execute(shard, "EVALSHA", script.sha, len(keys), *keys, *args)
        except redis.RedisError as exc:
            raise self._error(shard, exc) from exc

    # -- storage hooks ------------------------------------------------------------

    def _send_record(self, channel: str, data: bytes, expires: float) -> _Send:
        queue = non_local_name(channel)
        # A local channel's full name travels in the record; others are the queue's.
        name = channel.encode("ascii") if len(queue) != len(channel) else b""
        record = b"%013d%s:%s" % (int(expires * 1000), name, data)
        return _Send(self._queue_prefix + queue, record, self.get_capacity(queue))

    def _push(self, channel: str, data: bytes, expires: float) -> bool:
        """Sends made at the same moment by several threads share one round trip
        (group commit): a thread whose send finds no round trip in flight on the
        shard takes every send queued there and runs them in one script; a thread
        that finds one in flight queues its send and waits for it to be taken by the
        next. A lone thread pays exactly one round trip; nothing waits for a batch
        to fill."""
        entry = self._send_record(channel, data, expires)
        shard = self._shard(non_local_name(channel))
        with shard.combine:
            shard.pending.append(entry)
            while entry.outcome is None:
                if shard.busy:
                    shard.combine.wait()
                    continue
                shard.busy = True
                batch, shard.pending = shard.pending, []
                shard.combine.release()
                try:
                    self._send_batch(shard, batch)
                finally:
                    shard.combine.acquire()
                    shard.busy = False
                    shard.combine.notify_all()
        if isinstance(entry.outcome, ChannelsError):
            raise entry.outcome
        return entry.outcome

    def _send_batch(self, shard: _Shard, batch: list[_Send]) -> None:
        args: list[Any] = [self._stamp(time.time()), self._queue_ttl]
        for entry in batch:
            args += [entry.record, entry.capacity]
        try:
            replies = self._run(shard, self._send_many_script, [e.key for e in batch], args)
        except ChannelsError as exc:
            for entry in batch:
                entry.outcome = exc
            return
        except BaseException:
            for entry in batch:
                entry.outcome = LayerUnavailable(f"Redis at {shard.masked}: send interrupted")
            raise
        for entry, reply in zip(batch, replies, strict=True):
            entry.outcome = bool(reply)

    def _push_many(self, items: list[tuple[str, bytes, float]]) -> list[bool | ChannelsError]:
        by_shard: dict[int, tuple[_Shard, list[_Send]]] = {}
        entries = []
        for channel, data, expires in items:
            entry = self._send_record(channel, data, expires)
            entries.append(entry)
            shard = self._shard(non_local_name(channel))
            by_shard.setdefault(id(shard), (shard, []))[1].append(entry)
        for shard, batch in by_shard.values():
            self._send_batch(shard, batch)
        return [e.outcome if e.outcome is not None else False for e in entries]

    def _plan(self, names: list[str]) -> _Plan:
        """The queues to read for *names*, grouped by shard (cached per name list)."""
        key = tuple(names)
        plan = self._plans.get(key)
        if plan is None:
            by_shard: dict[int, tuple[_Shard, list[str], dict[bytes, str]]] = {}
            for name in names:
                shard = self._shard(name)
                entry = by_shard.setdefault(id(shard), (shard, [], {}))
                entry[1].append(self._queue_prefix + name)
                entry[2][(self._queue_prefix + name).encode("ascii")] = name
            plan = list(by_shard.values())
            if len(self._plans) >= 1024:  # bound the cache against ever-new names
                self._plans.clear()
            self._plans[key] = plan
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
        where the queues live on one shard and the server has them (Redis 7)."""
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
        if any(self._shard(non_local_name(c)) is not shard for c, _d, _e in pushes):
            return super()._push_many_pop(pushes, names, count)
        if len(keys) > 1:
            keys = random.sample(keys, len(keys))
        commands: list[tuple[Any, ...]] = []
        if entries:
            args: list[Any] = [self._stamp(time.time()), self._queue_ttl]
            for entry in entries:
                args += [entry.record, entry.capacity]
            sha = self._send_many_script.sha
            commands.append(("EVALSHA", sha, len(entries), *[e.key for e in entries], *args))
        commands.append(("LMPOP", len(keys), *keys, "LEFT", "COUNT", count))
        conn = shard.connection()
        replies: list[Any] = []
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            for _command in commands:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)  # the next reply is still to be read
        except redis.RedisError as exc:
            conn.disconnect()
            raise self._error(shard, exc) from exc
        except BaseException:
            conn.disconnect()
            raise
        outcomes: list[bool | ChannelsError] = []
        if entries:
            sent = replies.pop(0)
            if isinstance(sent, redis.exceptions.NoScriptError):
                self._send_batch(shard, entries)  # loads the script, sends again
                outcomes = [e.outcome if e.outcome is not None else False for e in entries]
            elif isinstance(sent, redis.ResponseError):
                error = self._error(shard, sent)
                refused = (
                    error if isinstance(error, ChannelsError) else LayerUnavailable(str(error))
                )
                outcomes = [refused] * len(entries)
            else:
                outcomes = [bool(reply) for reply in sent]
        popped = replies[0]
        if isinstance(popped, redis.ResponseError):
            if "unknown command" in str(popped).lower():
                self._has_lmpop = False
                return outcomes, super()._pop_many(names, False, time.monotonic(), count)
            raise self._error(shard, popped)
        self._has_lmpop = True
        if popped is None:
            return outcomes, []
        queue = by_key[popped[0]]
        now = self._stamp(time.time())
        return outcomes, [self._record(queue, raw) for raw in popped[1] if raw[:13] > now]

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
        """Receive across shards: a non-blocking pass over every shard in random
        order, then (if *block*) BLPOPs of :data:`SHARD_SLICE` seconds on each shard
        in turn until the deadline. A message on a shard other than the one being
        waited on may thus wait up to ``SHARD_SLICE * (shards - 1)`` seconds; keep the
        channels a process reads on one server where latency matters."""
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
        args: list[Any] = [
            self._queue_prefix,
            b"%013d" % (expires_ms - self._expiry_ms),
            b"%013d" % expires_ms,
            self._queue_ttl,
            group,
            data,
            self.capacity,
            *self._capacity_args,
        ]
        key = [self._group_prefix + group]
        skipped = 0
        for shard in self._shards:
            skipped += int(self._run(shard, self._group_send_script, key, args))
        return skipped

    def _local_members(self, group: str, prefix: str) -> list[str]:
        shard = self._shard(prefix)
        try:
            members = self._execute(
                shard,
                "ZRANGEBYSCORE",
                f"{self._group_prefix}{group}:{prefix}",
                f"({int(time.time() * 1000)}",
                "+inf",
            )
        except redis.RedisError as exc:
            raise self._error(shard, exc) from exc
        return [m.decode("ascii") for m in members if len(m) != len(prefix)]

    def _membership_keys(self, group: str, channel: str) -> tuple[_Shard, str, list[str]]:
        queue = non_local_name(channel)
        keys = [self._group_prefix + group]
        if queue.endswith("!"):
            keys.append(f"{self._group_prefix}{group}:{queue}")
            keys.append(self._channel_groups_key(channel))
        return self._shard(queue), queue, keys

    def _channel_groups_key(self, channel: str) -> str:
        return f"{self.prefix}:m:{channel}"

    def _discard_args(self, channel: str) -> tuple[_Shard, list[str], list[Any]]:
        queue = non_local_name(channel)
        args: list[Any] = [self._group_prefix, queue, channel, int(time.time() * 1000)]
        return self._shard(queue), [self._channel_groups_key(channel)], args

    def _discard_channel(self, channel: str) -> None:
        if not non_local_name(channel).endswith("!"):
            return  # normal members are left to their expiry
        shard, keys, args = self._discard_args(channel)
        self._run(shard, self._discard_channel_script, keys, args)

    def _group_add(self, group: str, channel: str, expires: float) -> None:
        shard, queue, keys = self._membership_keys(group, channel)
        args: list[Any] = [
            queue,
            channel,
            int(expires * 1000),
            int(time.time() * 1000),
            self._group_ttl,
            group,
        ]
        self._run(shard, self._group_add_script, keys, args)

    def _group_discard(self, group: str, channel: str) -> None:
        shard, queue, keys = self._membership_keys(group, channel)
        self._run(
            shard,
            self._group_discard_script,
            keys,
            [queue, channel, int(time.time() * 1000), group],
        )

    def _group_channels_on(self, shard: _Shard, group: str) -> list[str]:
        members = self._run(
            shard,
            self._group_members_script,
            [self._group_prefix + group],
            [int(time.time() * 1000)],
        )
        return [m.decode("ascii") for m in members]

    def _group_channels(self, group: str) -> list[str]:
        return [c for shard in self._shards for c in self._group_channels_on(shard, group)]

    def _scan(self, shard: _Shard, match: str) -> list[str]:
        try:
            return [k.decode("ascii") for k in shard.client.scan_iter(match=match, count=1000)]
        except redis.RedisError as exc:
            raise self._error(shard, exc) from exc

    def _flush(self) -> None:
        for shard in self._shards:
            keys = self._scan(shard, f"{self.prefix}:*")
            try:
                for start in range(0, len(keys), 1000):
                    shard.client.unlink(*keys[start : start + 1000])
            except redis.RedisError as exc:
                raise self._error(shard, exc) from exc

    def _queue_stats_on(self, shard: _Shard, queue: str) -> tuple[int, float]:
        now_ms = int(time.time() * 1000)
        reply = self._run(
            shard, self._queue_stats_script, [self._queue_prefix + queue], [b"%013d" % now_ms]
        )
        if not reply[0]:
            return 0, 0.0
        sent_ms = int(reply[1]) - self._expiry_ms
        return int(reply[0]), max(0.0, (now_ms - sent_ms) / 1000)

    def _queue_stats(self, queue: str) -> tuple[int, float]:
        return self._queue_stats_on(self._shard(queue), queue)

    def _overview(self) -> dict[str, Any]:
        channels: dict[str, int] = {}
        groups: dict[str, int] = {}
        for shard in self._shards:
            for key in self._scan(shard, f"{self.prefix}:*"):
                if key.startswith(self._queue_prefix):
                    queue = key[len(self._queue_prefix) :]
                    pending = self._queue_stats_on(shard, queue)[0]
                    if pending:
                        channels[queue] = channels.get(queue, 0) + pending
                elif key.startswith(self._group_prefix):
                    group = key[len(self._group_prefix) :]
                    if ":" in group:  # a process's local members, counted with its group
                        continue
                    size = len(self._group_channels_on(shard, group))
                    if size:
                        groups[group] = groups.get(group, 0) + size
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


# -- the asyncio face ---------------------------------------------------------------


_pack_command: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - hiredis comes with the redis extra
    _pack_command = None


#: Bytes waiting in a Redis socket's buffer over which a write waits for room.
_WRITE_HIGH = 256 * 1024


class _AsyncConnection:
    """One redis.asyncio connection to a shard, used by one task at a time (a lock
    orders the callers); reconnects by itself on the next call after a failure."""

    def __init__(self, layer: RedisChannelLayer, shard: _Shard) -> None:
        self.layer = layer
        self.shard = shard
        self.lock = asyncio.Lock()
        kwargs = dict(shard.kwargs)
        sync_class = kwargs.pop("connection_class", None)
        kwargs.pop("retry", None)
        kwargs.pop("max_connections", None)
        kwargs["retry"] = AsyncRetry(NoBackoff(), 0)
        connection_class: type[Any] = redis.asyncio.Connection
        if sync_class is redis.UnixDomainSocketConnection:
            connection_class = redis.asyncio.UnixDomainSocketConnection
        elif sync_class is redis.SSLConnection:
            connection_class = redis.asyncio.SSLConnection
        self.conn = connection_class(**kwargs)

    async def execute(self, *args: Any) -> Any:
        async with self.lock:
            try:
                await self._write(args)
                return await self.conn.read_response()
            except redis.ResponseError:
                raise
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.conn.disconnect(nowait=True)
                raise

    async def _write(self, args: tuple[Any, ...]) -> None:
        """Write one command. redis-py packs it in Python and writes it under
        ``asyncio.wait_for``, which wraps the write in a task of its own: together
        about as much CPU as the rest of a request's work on the loop. hiredis packs
        it in C, and the socket's buffer is waited on only when it is over
        ``_WRITE_HIGH`` bytes (a server that does not read), within the socket timeout."""
        conn = self.conn
        writer = getattr(conn, "_writer", None) if conn.is_connected else None
        if _pack_command is None or writer is None:
            await conn.send_command(*args)  # connects, with redis-py's own handling
            return
        writer.write(_pack_command(args))
        if writer.transport.get_write_buffer_size() > _WRITE_HIGH:
            await asyncio.wait_for(writer.drain(), conn.socket_timeout)

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, loading the script where the server forgot it; layer errors."""
        try:
            try:
                return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:
                await self.execute("SCRIPT", "LOAD", script.script)
                return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except redis.RedisError as exc:
            raise self.layer._error(self.shard, exc) from exc
        except OSError as exc:
            raise LayerUnavailable(f"Redis at {self.shard.masked} is unavailable: {exc}") from exc

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.conn.disconnect(nowait=True)

    def abort(self) -> None:
        """Cut the socket now, from outside any task (shutdown)."""
        writer = getattr(self.conn, "_writer", None)
        if writer is not None:
            writer.transport.abort()


class RedisFace(AsyncFace):
    """The Redis layer's asyncio face: redis.asyncio (with hiredis where installed).

    Sends of one loop turn go out as one script per shard (in parallel across
    shards); the receive task takes up to ``max_messages`` records per BLMPOP (Redis
    7; BLPOP and a pop script before) on a connection of its own, and looks up the
    local members of the group messages among them in one pipelined round trip."""

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

    async def _flush(self, items: list[tuple[str, bytes, float]]) -> list[bool | ChannelsError]:
        layer = self.layer
        by_shard: dict[int, tuple[_Shard, list[int], list[_Send]]] = {}
        for index, (channel, data, expires) in enumerate(items):
            entry = layer._send_record(channel, data, expires)
            shard = layer._shard(non_local_name(channel))
            part = by_shard.setdefault(id(shard), (shard, [], []))
            part[1].append(index)
            part[2].append(entry)
        outcomes: list[bool | ChannelsError] = [False] * len(items)

        async def one(shard: _Shard, indexes: list[int], batch: list[_Send]) -> None:
            args: list[Any] = [layer._stamp(time.time()), layer._queue_ttl]
            for entry in batch:
                args += [entry.record, entry.capacity]
            try:
                replies = await self._connection(shard).run(
                    layer._send_many_script, [e.key for e in batch], args
                )
            except ChannelsError as exc:
                for index in indexes:
                    outcomes[index] = exc
                return
            for index, reply in zip(indexes, replies, strict=True):
                outcomes[index] = bool(reply)

        parts = list(by_shard.values())
        if len(parts) == 1:
            await one(*parts[0])
        else:
            await asyncio.gather(*(one(*part) for part in parts))
        return outcomes

    async def _drain(self, names: list[str], deliver: Deliver, max_messages: int) -> None:
        layer = self.layer
        plan = layer._plan(names)
        backoff = _Backoff()
        # One connection per shard for the blocking pops, apart from the sends'.
        receivers = [(_AsyncConnection(layer, shard), keys, by_key) for shard, keys, by_key in plan]
        self._receivers = [conn for conn, _keys, _by_key in receivers]
        slice_ = layer._max_block if len(receivers) == 1 else SHARD_SLICE
        turn = 0
        try:
            while not self.closing:
                conn, keys, by_key = receivers[turn % len(receivers)]
                turn += 1
                try:
                    records = await self._pop(conn, keys, by_key, max_messages, slice_)
                    entries = await self._entries(conn, records) if records else []
                except LayerUnavailable as exc:
                    if self._closed():
                        return
                    await backoff.failed(exc)
                    continue
                backoff.succeeded()
                if entries:
                    pause = deliver(entries)
                    if pause is not None:
                        await pause
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
            if layer._has_lmpop is not False:
                try:
                    reply = await conn.execute(
                        "BLMPOP", round(timeout, 3), len(keys), *keys, "LEFT", "COUNT", count
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
                reply = await conn.execute("BLPOP", *keys, round(timeout, 3))
                if reply is None:
                    return []
                queue, raws = by_key[reply[0]], [reply[1]]
        except redis.RedisError as exc:
            raise layer._error(conn.shard, exc) from exc
        except OSError as exc:
            raise LayerUnavailable(f"Redis at {conn.shard.masked} is unavailable: {exc}") from exc
        now = layer._stamp(time.time())
        return [layer._record(queue, raw) for raw in raws if raw[:13] > now]

    async def _entries(self, conn: _AsyncConnection, records: list[Record]) -> list[Entry]:
        """Decode *records*; a group record becomes one entry with its local members,
        looked up for every group of the batch in one pipelined round trip."""
        layer = self.layer
        groups = {(r.group, r.channel) for r in records if r.group is not None}
        members: dict[tuple[str, str], list[str]] = {}
        if groups:
            now = f"({int(time.time() * 1000)}"
            wanted = list(groups)
            try:
                async with conn.lock:
                    for group, prefix in wanted:
                        key = f"{layer._group_prefix}{group}:{prefix}"
                        await conn.conn.send_command("ZRANGEBYSCORE", key, now, "+inf")
                    replies = [await conn.conn.read_response() for _ in wanted]
            except (redis.RedisError, OSError) as exc:
                with contextlib.suppress(Exception):
                    await conn.conn.disconnect(nowait=True)
                raise LayerUnavailable(
                    f"Redis at {conn.shard.masked} is unavailable: {exc}"
                ) from exc
            for (group, prefix), reply in zip(wanted, replies, strict=True):
                members[(group, prefix)] = [
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

    async def discard_channel(self, channel: str) -> None:
        layer = self.layer
        if not non_local_name(channel).endswith("!"):
            return
        shard, keys, args = layer._discard_args(channel)
        await self._connection(shard).run(layer._discard_channel_script, keys, args)

    async def aclose(self) -> None:
        await super().aclose()
        for conn in self._connections.values():
            await conn.close()
        self._connections = {}
