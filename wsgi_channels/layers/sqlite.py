"""A channel layer in one SQLite file, shared by the processes of one machine.

URL grammar::

    sqlite:///relative/path.sqlite3            relative to the current directory
    sqlite:////absolute/path.sqlite3           four slashes for an absolute path
    sqlite:///file.sqlite3?prefix=myapp&expiry=30&capacity=500

``prefix`` (default ``wsgi_channels``) is the namespace of the layer's tables, an SQL
identifier; the other query options are those of every layer (see ``layers/__init__``).

No server runs. Every process opens the file itself, one connection per thread, in WAL
mode, so readers never block writers. Each write is a single SQLite transaction: a
message is popped with ``DELETE ... RETURNING`` (or ``BEGIN IMMEDIATE`` + ``SELECT`` +
``DELETE`` where SQLite is older than 3.35.5), which makes delivery at-most-once across
processes. A process killed at any point leaves the file consistent and unlocked.

Waking a blocked reader in another process without polling the table: every thread that
blocks in ``receive`` binds a Unix datagram socket in a directory beside the database
(``<file>-wake/``), and every send, once committed, sends one byte to each socket found
there. A reader registers its socket *before* it looks at the table, so a send that
commits after the look always wakes it; a missed byte (full socket buffer, a racy
directory listing) costs at most one fallback interval, never a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import os
import re
import secrets
import select
import socket
import sqlite3
import stat
import tempfile
import threading
import time
import urllib.parse
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, ParamSpec, TypeVar

from .aio import PollingFace
from .base import (
    BaseChannelLayer,
    ChannelsError,
    ConfigurationError,
    LayerUnavailable,
    Record,
    non_local_name,
)

__all__ = ["SQLiteChannelLayer"]

DEFAULT_PREFIX = "wsgi_channels"

_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$", re.ASCII)
# sun_path is 108 bytes on Linux (104 on the BSDs), including the final NUL.
_MAX_SOCKET_PATH = 100
# Socket names are "<pid>-<12 hex digits>-<16 hex digits>" (see _Waiter): at most 37
# bytes with the separator before them.
_SOCKET_NAME_ROOM = 37
# DELETE ... RETURNING exists from 3.35.0; 3.35.5 fixed the last RETURNING bugs.
_HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 5)

# Connections inherited from a parent process. They must never be used in the child
# nor closed there: closing a descriptor drops every POSIX lock this process holds on
# the file, including those of the child's own connections. Keeping them referenced
# until the process exits is what SQLite's documentation asks for.
_INHERITED: list[sqlite3.Connection] = []

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _layer_errors(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """Report a database that cannot be opened, or stays locked past the busy timeout,
    as LayerUnavailable, the error callers already handle for a server that is away."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            raise LayerUnavailable(f"SQLite channel layer: {exc}") from exc

    return wrapper


@functools.lru_cache(maxsize=4096)
def _queue_bits(queue: str) -> int:
    """Two bits of a 64-bit filter for *queue*, from a hash that every process and
    Python version computes alike (``hash()`` is randomised per process)."""
    h = zlib.crc32(queue.encode())
    return (1 << (h & 63)) | (1 << ((h >> 6) & 63))


def _queues_mask(queues: Iterable[str]) -> int:
    mask = 0
    for queue in queues:
        mask |= _queue_bits(queue)
    return mask


def _socket_mask(name: str) -> int | None:
    """The filter of the queues a wake-up socket's reader waits on, from its file name
    ``PID-TOKEN-FILTER``; None (wake it for every commit) for ``PID-TOKEN``, the name
    an asyncio face's socket and earlier versions use."""
    parts = name.split("-")
    if len(parts) != 3 or len(parts[2]) != 16:
        return None
    try:
        return int(parts[2], 16)
    except ValueError:
        return None


class _Waiter:
    """One thread's wake-up socket: a bound, non-blocking Unix datagram socket.

    With *mask* (the filter of the queues this thread receives from) the socket's
    name carries it, and a commit wakes it only when it wrote to one of those
    queues; a false positive of the filter costs one needless look, never a miss."""

    def __init__(self, directory: str, mask: int | None = None) -> None:
        self.thread = weakref.ref(threading.current_thread())
        self.mask = mask
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        if mask is not None:
            name += f"-{mask:016x}"
        self.path = os.path.join(directory, name)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.bind(self.path)
        except BaseException:
            self.sock.close()
            raise
        # poll() rather than select(): descriptors above FD_SETSIZE are common in servers.
        self.poller = select.poll()
        self.poller.register(self.sock.fileno(), select.POLLIN)

    def drain(self) -> None:
        """Discard pending wake-ups; the caller re-checks the table after this."""
        while True:
            try:
                self.sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # closed by close() from another thread
                return

    def wait(self, timeout: float) -> None:
        """Sleep until a wake-up arrives or *timeout* seconds pass."""
        with contextlib.suppress(OSError, ValueError):
            self.poller.poll(max(1, int(timeout * 1000)))

    def close(self, *, unlink: bool) -> None:
        self.sock.close()
        if unlink:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


class SQLiteChannelLayer(BaseChannelLayer):
    """A layer stored in one SQLite file (URL ``sqlite:///path``), safe across the
    threads and processes of one machine, and across ``fork()``.

    The constructor does no I/O beyond checking that the file's directory exists: the
    file, its tables and the wake-up directory are made on first use, in the process
    (and thread) that uses them. ``close()`` closes every connection the layer opened
    and removes this process's wake-up sockets; the layer must not be used afterwards.
    """

    #: Seconds a blocked reader sleeps without a wake-up before it looks at the table
    #: again: the bound on the delay a lost wake-up can cause.
    wake_fallback: ClassVar[float] = 0.25
    #: Seconds a statement waits for another process's write lock before it gives up.
    busy_timeout: ClassVar[float] = 5.0
    #: Writes by this process between two sweeps of expired messages and memberships.
    sweep_every: ClassVar[int] = 1000
    #: Seconds between two sweeps at most, while the layer is used (also when idle in
    #: a blocking receive), so that a quiet process cleans up too.
    sweep_interval: ClassVar[float] = 10.0

    def __init__(
        self, *, path: str | os.PathLike[str], prefix: str = DEFAULT_PREFIX, **options: Any
    ) -> None:
        super().__init__(**options)
        if not isinstance(prefix, str) or not _PREFIX.match(prefix):
            raise ConfigurationError(
                f"invalid SQLite table prefix {prefix!r}: it must be an SQL identifier "
                "(ASCII letters, digits and '_', not starting with a digit, at most 40)"
            )
        raw = os.fspath(path)
        if not raw or raw == ":memory:" or raw.startswith("file:"):
            raise ConfigurationError(
                f"the SQLite layer needs a file that several processes can open, not {raw!r}"
            )
        self.path = os.path.abspath(raw)
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise ConfigurationError(
                f"directory {directory!r} of the SQLite layer file does not exist"
            )
        self.prefix = prefix
        self._wake_dir = _wake_directory(self.path)
        self._sql = _Statements(prefix)
        self._use_returning = _HAS_RETURNING
        self._closed = False
        self._writes = 0
        self._last_sweep = time.time()
        self._init_process_state()

    @classmethod
    def from_url(cls, url: str) -> SQLiteChannelLayer:
        """Make a layer from ``sqlite:///relative`` or ``sqlite:////absolute`` with
        optional query options; ConfigurationError names what is accepted."""
        from . import parse_options

        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme.lower() != "sqlite":
            raise ConfigurationError(f"not an SQLite layer URL: {url!r}")
        if parsed.netloc:
            raise ConfigurationError(
                f"SQLite layer URL {url!r} has a host; use sqlite:///relative/path "
                "or sqlite:////absolute/path"
            )
        # urlsplit keeps the slash that separates the (empty) host from the path.
        path = urllib.parse.unquote(parsed.path[1:] if parsed.path.startswith("/") else "")
        if not path:
            raise ConfigurationError(
                f"SQLite layer URL {url!r} names no file; use sqlite:///relative/path "
                "or sqlite:////absolute/path"
            )
        options = parse_options(url, parsed.query, extra={"prefix": str})
        return cls(path=path, **options)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} path={self.path!r} prefix={self.prefix!r}>"

    # -- per-process state ---------------------------------------------------------

    def _init_process_state(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        # Held around every write of this process's threads, the loop's included: they
        # queue here for each other (a futex hand-off, microseconds) instead of in
        # SQLite's busy handler, which sleeps 1 ms, then 2, 5, ... between looks. The
        # busy handler still arbitrates between processes.
        self._writing = threading.RLock()  # a write may run inside _transaction
        # Every connection and socket this process opened, with the thread that owns
        # it, so that close() reaches those of every thread and dead threads' are freed.
        self._connections: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        self._waiters: list[_Waiter] = []
        self._sender: socket.socket | None = None
        # (directory mtime_ns, wall-clock ns when listed, (socket path, its filter))
        self._listing: tuple[int, int, tuple[tuple[str, int | None], ...]] = (-1, 0, ())

    def _after_fork(self) -> None:
        _INHERITED.extend(conn for _thread, conn in self._connections)
        # The parent's sockets stay the parent's: close our copies, never unlink.
        for waiter in self._waiters:
            waiter.close(unlink=False)
        if self._sender is not None:
            self._sender.close()
        self._init_process_state()

    def close(self) -> None:
        """Close every connection and wake-up socket this process opened for the layer.

        Call it when no other thread is using the layer; a thread blocked in
        ``receive`` returns ``(None, None)``. Calling it again does nothing.
        """
        self._check_fork()
        self._closed = True
        with self._lock:
            connections, self._connections = self._connections, []
            waiters, self._waiters = self._waiters, []
            sender, self._sender = self._sender, None
        for waiter in waiters:
            waiter.close(unlink=True)
        if sender is not None:
            sender.close()
        for _thread, conn in connections:
            conn.close()
        self._local = threading.local()

    # -- connections ---------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
        return conn

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise LayerUnavailable(f"{self!r} is closed")
        # isolation_level=None: no implicit BEGIN; each statement is its own
        # transaction unless we open one, and a write statement takes the write lock
        # before it reads, so it can wait on busy_timeout instead of failing.
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,  # close() may run in another thread
            cached_statements=256,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            self._set_wal(conn)
            # NORMAL in WAL mode: a commit survives a killed process; only a power cut
            # can lose the last transactions, never corrupt the file.
            conn.execute("PRAGMA synchronous = NORMAL")
            # Truncate the -wal file after checkpoints so that a burst does not leave
            # a large file behind.
            conn.execute("PRAGMA journal_size_limit = 4194304")
            conn.executescript(self._sql.schema)
        except BaseException:
            conn.close()
            raise
        current = threading.current_thread()
        with self._lock:
            dead = [entry for entry in self._connections if entry[0]() is None]
            self._connections = [entry for entry in self._connections if entry[0]() is not None]
            self._connections.append((weakref.ref(current), conn))
        for _thread, old in dead:
            old.close()
        self._local.conn = conn
        return conn

    def _set_wal(self, conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
            return
        # Switching needs a moment alone with the file and does not always honour
        # busy_timeout, so retry while other processes make the same switch.
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
                continue
            if str(mode).lower() != "wal":
                raise ConfigurationError(
                    f"SQLite file {self.path!r} cannot use WAL mode (journal mode {mode!r}); "
                    "it must be on a local file system"
                )
            return

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """Hold the write lock from the first statement: reads in the block see the
        state that the writes in it change."""
        with self._writing:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -- wake-ups ------------------------------------------------------------------

    def _waiter(self, names: list[str]) -> _Waiter | None:
        """This thread's wake-up socket, named for the queues *names*: a thread that
        later waits on a queue its socket's name does not cover gets a new socket
        for the union (its old one is closed)."""
        waiter: _Waiter | None = getattr(self._local, "waiter", None)
        wanted = _queues_mask(names)
        if waiter is not None and waiter.mask is not None and wanted & ~waiter.mask:
            wanted |= waiter.mask
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            waiter.close(unlink=True)
            waiter = self._local.waiter = None
        if waiter is not None or self._wake_dir is None:
            return waiter
        try:
            if os.path.dirname(self._wake_dir) == os.path.dirname(self.path):
                os.makedirs(self._wake_dir, exist_ok=True)
            else:
                # In the shared temporary directory: ours alone, and checked to be.
                os.makedirs(self._wake_dir, mode=0o700, exist_ok=True)
                _check_private_dir(self._wake_dir)
            waiter = _Waiter(self._wake_dir, wanted)
        except OSError:
            # Without a socket the reader still works, polling every wake_fallback.
            self._wake_dir = None
            return None
        with self._lock:
            dead = [w for w in self._waiters if w.thread() is None]
            self._waiters = [w for w in self._waiters if w.thread() is not None]
            self._waiters.append(waiter)
        for old in dead:
            old.close(unlink=True)
        self._local.waiter = waiter
        return waiter

    def _wake(self, queues: Iterable[str]) -> None:
        """Tell the blocked readers on this file that something was committed to
        *queues*: those whose socket's filter may hold one of them, and every socket
        without a filter."""
        directory = self._wake_dir
        if directory is None:
            return
        try:
            mtime = os.stat(directory).st_mtime_ns
        except OSError:
            return  # no reader ever blocked on this file
        listed_mtime, listed_at, paths = self._listing
        # A directory's mtime ticks coarsely (a few ms on ext4): a listing taken less
        # than a second after the mtime may miss a socket bound in the same tick.
        if mtime != listed_mtime or listed_at - mtime < 1_000_000_000:
            now = time.time_ns()
            try:
                paths = tuple(
                    (os.path.join(directory, name), _socket_mask(name))
                    for name in os.listdir(directory)
                )
            except OSError:
                return
            self._listing = (mtime, now, paths)
        sender = self._sender
        if sender is None:
            with self._lock:
                if self._sender is None:
                    self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sender.setblocking(False)
                sender = self._sender
        own: _Waiter | None = getattr(self._local, "waiter", None)
        own_path = own.path if own is not None else None
        bits = [_queue_bits(queue) for queue in set(queues)]
        for path, mask in paths:
            if path == own_path:
                continue  # this thread is sending, so it is not blocked
            if mask is not None and not any(mask & b == b for b in bits):
                continue  # it waits on none of these queues
            try:
                sender.sendto(b"\0", path)
            except BlockingIOError:
                pass  # its buffer is full of wake-ups already
            except (ConnectionRefusedError, FileNotFoundError):
                # The socket's process is gone (or its layer was closed).
                with contextlib.suppress(OSError):
                    os.unlink(path)
            except OSError:
                pass  # e.g. another user's socket: it falls back to polling

    # -- the asyncio face --------------------------------------------------------------

    def async_face(self) -> PollingFace:
        """The asyncio face: statements run on the loop (each is short and local), the
        sends of one loop turn in one transaction, and the receive task is woken by a
        wake-up socket of its own that the loop watches."""
        return PollingFace(self)

    @property
    def _watch_fallback(self) -> float:
        return self.wake_fallback

    def _watch(self, wake: Callable[[], None]) -> Callable[[], None]:
        loop = asyncio.get_running_loop()
        waiter: _Waiter | None = None
        if self._wake_dir is not None:
            try:
                os.makedirs(self._wake_dir, exist_ok=True)
                waiter = _Waiter(self._wake_dir)
            except OSError:
                waiter = None  # the receive task polls every wake_fallback instead
        if waiter is None:
            return lambda: None
        with self._lock:
            self._waiters.append(waiter)
        fd = waiter.sock.fileno()

        def readable() -> None:
            waiter.drain()
            wake()

        loop.add_reader(fd, readable)

        def unwatch() -> None:
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            waiter.close(unlink=True)

        return unwatch

    # -- storage hooks ---------------------------------------------------------------

    @_layer_errors
    def _push_many(self, items: list[tuple[str, bytes, float]]) -> list[bool | ChannelsError]:
        if len(items) == 1:
            # One statement is a transaction of its own: no BEGIN and COMMIT around it.
            return [self._push(*items[0])]
        conn = self._conn()
        now = time.time()
        results: list[bool | ChannelsError] = []
        # One transaction: one commit (and one wake-up round) for the whole burst.
        with self._transaction(conn):
            for channel, data, expires in items:
                queue = non_local_name(channel)
                cursor = conn.execute(
                    self._sql.push,
                    (queue, channel, expires, data, queue, now, self.get_capacity(queue)),
                )
                results.append(cursor.rowcount == 1)
        if any(results):
            self._wake(non_local_name(channel) for channel, _data, _expires in items)
            self._count_write(conn, now)
        return results

    @_layer_errors
    def _withdraw(self, items: list[tuple[str, bytes, float]]) -> list[bool]:
        conn = self._conn()
        removed = []
        with self._transaction(conn):
            for channel, data, expires in items:
                args = (non_local_name(channel), channel, expires, data)
                removed.append(conn.execute(self._sql.withdraw, args).rowcount == 1)
        return removed

    @_layer_errors
    def _push(self, channel: str, data: bytes, expires: float) -> bool:
        conn = self._conn()
        queue = non_local_name(channel)
        now = time.time()
        # One statement, so one transaction that checks capacity and appends atomically.
        args = (queue, channel, expires, data, queue, now, self.get_capacity(queue))
        if self._write(self._sql.push, args).rowcount != 1:
            return False
        self._wake((queue,))
        self._count_write(conn, now)
        return True

    @_layer_errors
    def _pop(self, names: list[str], block: bool, deadline: float) -> Record | None:
        record = self._pop_now(names, peek=not block)
        if record is not None or not block:
            return record
        waiter = self._waiter(names)
        while not self._closed:
            # Drain, then look: a send committed after the look wakes the socket.
            if waiter is not None:
                waiter.drain()
            record = self._pop_now(names, peek=True)
            if record is not None:
                return record
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # An idle reader is a good moment for housekeeping.
                self._maybe_sweep(self._conn(), time.time())
                return None
            timeout = min(remaining, self.wake_fallback)
            if waiter is not None:
                waiter.wait(timeout)
            else:
                time.sleep(timeout)
        return None

    def _pop_now(self, names: list[str], *, peek: bool = False) -> Record | None:
        """Delete and return the oldest unexpired message of *names*; expired ones
        met on the way are deleted too. With *peek*, look first with a read, which in
        WAL mode takes no lock: a reader woken by a commit to another queue (a
        socket without a filter is woken by every commit, one with a filter now and
        then by a false positive) then finds nothing without taking the write lock
        that the takes and the sends on this file wait for."""
        conn = self._conn()
        sql = self._sql.pop(len(names), returning=self._use_returning)
        if peek and conn.execute(self._sql.peek(len(names)), names).fetchone() is None:
            return None
        while True:
            now = time.time()
            if self._use_returning:
                with self._writing:
                    rows = conn.execute(sql, names).fetchall()
                if not rows:
                    return None
                channel, data, group, expires = rows[0]
            else:
                with self._transaction(conn):
                    row = conn.execute(sql, names).fetchone()
                    if row is None:
                        return None
                    row_id, channel, data, group, expires = row
                    conn.execute(self._sql.delete_id, (row_id,))
            if expires > now:
                return Record(channel, data, group)

    @_layer_errors
    def _push_group(self, group: str, data: bytes, expires: float) -> int:
        conn = self._conn()
        now = time.time()
        skipped = 0
        written: list[str] = []
        with self._transaction(conn):
            for queue, pending in conn.execute(self._sql.group_queues, (group, now)).fetchall():
                if pending >= self.get_capacity(queue):
                    skipped += 1
                    continue
                # A process queue gets the group's name and expands it to its local
                # members on receipt; any other member gets the message as its own.
                member_group = group if queue.endswith("!") else None
                conn.execute(self._sql.insert, (queue, queue, expires, data, member_group))
                written.append(queue)
        if written:
            self._wake(written)
            self._count_write(conn, now)
        return skipped

    @_layer_errors
    def _local_members(self, group: str, prefix: str) -> list[str]:
        rows = self._conn().execute(self._sql.local_members, (group, prefix, time.time()))
        return [channel for (channel,) in rows if channel != prefix]

    @_layer_errors
    def _group_add(self, group: str, channel: str, expires: float) -> None:
        self._write(self._sql.group_add, (group, channel, non_local_name(channel), expires))

    @_layer_errors
    def _group_discard(self, group: str, channel: str) -> None:
        self._write(self._sql.group_discard, (group, channel))

    @_layer_errors
    def _discard_channel(self, channel: str) -> None:
        self._write(self._sql.discard_channel, (channel,))

    def _write(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Cursor:
        """One statement that writes, in a transaction of its own."""
        conn = self._conn()
        with self._writing:
            return conn.execute(sql, args)

    @_layer_errors
    def _group_channels(self, group: str) -> list[str]:
        rows = self._conn().execute(self._sql.group_channels, (group, time.time()))
        return [channel for (channel,) in rows]

    @_layer_errors
    def _flush(self) -> None:
        conn = self._conn()
        with self._transaction(conn):
            conn.execute(self._sql.flush_messages)
            conn.execute(self._sql.flush_groups)

    @_layer_errors
    def _queue_stats(self, queue: str) -> tuple[int, float]:
        now = time.time()
        pending, first_expires = (
            self._conn().execute(self._sql.queue_stats, (queue, now, queue, now)).fetchone()
        )
        if not pending:
            return 0, 0.0
        # Sent at expires - expiry (exact when every process uses the same expiry).
        return int(pending), max(0.0, now - (float(first_expires) - self.expiry))

    @_layer_errors
    def _overview(self) -> dict[str, Any]:
        conn = self._conn()
        now = time.time()
        channels = dict(conn.execute(self._sql.overview_channels, (now,)).fetchall())
        groups = dict(conn.execute(self._sql.overview_groups, (now,)).fetchall())
        return {"channels": channels, "groups": groups}

    def _count_write(self, conn: sqlite3.Connection, now: float) -> None:
        """Delete expired rows every ``sweep_every`` writes, or ``sweep_interval``
        seconds: messages to channels nobody reads any more, and memberships nobody
        refreshed, would otherwise stay in the file for ever. (Receive deletes the
        expired messages it meets.)"""
        self._writes += 1
        if self._writes >= self.sweep_every:
            self._sweep(conn, now)
        else:
            self._maybe_sweep(conn, now)

    def _maybe_sweep(self, conn: sqlite3.Connection, now: float) -> None:
        if now - self._last_sweep >= self.sweep_interval:
            self._sweep(conn, now)

    def _sweep(self, conn: sqlite3.Connection, now: float) -> None:
        self._writes = 0
        self._last_sweep = now
        with self._transaction(conn):
            conn.execute(self._sql.sweep_messages, (now,))
            conn.execute(self._sql.sweep_groups, (now,))


class _Statements:
    """The SQL of one table prefix, built once so that sqlite3's statement cache
    (keyed by the text) prepares each statement once per connection."""

    def __init__(self, prefix: str) -> None:
        m = f"{prefix}_messages"
        g = f"{prefix}_groups"
        # ids are rowids: a new row's id is above every id still in the table, which
        # is all that FIFO needs, so AUTOINCREMENT's extra write per insert is saved.
        # (queue, id, expires) orders each queue and covers the capacity count.
        self.schema = f"""
            CREATE TABLE IF NOT EXISTS {m} (
                id INTEGER PRIMARY KEY,
                queue TEXT NOT NULL,
                channel TEXT NOT NULL,
                expires REAL NOT NULL,
                data BLOB NOT NULL,
                grp TEXT
            );
            CREATE INDEX IF NOT EXISTS {m}_queue ON {m} (queue, id, expires);
            CREATE TABLE IF NOT EXISTS {g} (
                grp TEXT NOT NULL,
                channel TEXT NOT NULL,
                queue TEXT NOT NULL,
                expires REAL NOT NULL,
                PRIMARY KEY (grp, channel)
            ) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS {g}_queue ON {g} (grp, queue, expires);
            CREATE INDEX IF NOT EXISTS {g}_channel ON {g} (channel);
        """
        self.push = (
            f"INSERT INTO {m} (queue, channel, expires, data, grp) SELECT ?, ?, ?, ?, NULL "
            f"WHERE (SELECT count(*) FROM {m} WHERE queue = ? AND expires > ?) < ?"
        )
        self.insert = f"INSERT INTO {m} (queue, channel, expires, data, grp) VALUES (?, ?, ?, ?, ?)"
        self.delete_id = f"DELETE FROM {m} WHERE id = ?"
        self.withdraw = (
            f"DELETE FROM {m} WHERE id = (SELECT id FROM {m} WHERE queue = ? AND channel = ? "
            f"AND expires = ? AND data = ? AND grp IS NULL LIMIT 1)"
        )
        # The distinct queues of a group's members, found by skipping through the
        # (grp, queue) index: one seek per queue, however many members each has.
        # Kept are the queues with an unexpired member, with their pending count.
        self.group_queues = f"""
            WITH RECURSIVE q(queue) AS (
                SELECT (SELECT min(queue) FROM {g} WHERE grp = ?1)
                UNION ALL
                SELECT (SELECT min(queue) FROM {g} WHERE grp = ?1 AND queue > q.queue)
                FROM q WHERE q.queue IS NOT NULL
            )
            SELECT queue, (SELECT count(*) FROM {m} WHERE {m}.queue = q.queue AND expires > ?2)
            FROM q
            WHERE queue IS NOT NULL AND (
                SELECT expires FROM {g} WHERE grp = ?1 AND {g}.queue = q.queue
                ORDER BY expires DESC LIMIT 1
            ) > ?2
        """
        self.local_members = f"SELECT channel FROM {g} WHERE grp = ? AND queue = ? AND expires > ?"
        self.group_add = (
            f"INSERT OR REPLACE INTO {g} (grp, channel, queue, expires) VALUES (?, ?, ?, ?)"
        )
        self.group_discard = f"DELETE FROM {g} WHERE grp = ? AND channel = ?"
        self.discard_channel = f"DELETE FROM {g} WHERE channel = ?"
        self.group_channels = f"SELECT channel FROM {g} WHERE grp = ? AND expires > ?"
        self.flush_messages = f"DELETE FROM {m}"
        self.flush_groups = f"DELETE FROM {g}"
        self.sweep_messages = f"DELETE FROM {m} WHERE expires <= ?"
        self.sweep_groups = f"DELETE FROM {g} WHERE expires <= ?"
        self.queue_stats = (
            f"SELECT (SELECT count(*) FROM {m} WHERE queue = ? AND expires > ?), "
            f"(SELECT min(expires) FROM {m} WHERE queue = ? AND expires > ?)"
        )
        self.overview_channels = (
            f"SELECT queue, count(*) FROM {m} WHERE expires > ? GROUP BY queue ORDER BY queue"
        )
        self.overview_groups = (
            f"SELECT grp, count(*) FROM {g} WHERE expires > ? GROUP BY grp ORDER BY grp"
        )
        self._m = m
        self._pops: dict[tuple[int, bool | None], str] = {}

    def pop(self, count: int, *, returning: bool) -> str:
        """The statement that takes the oldest message of *count* queues. With several
        queues, the head of each is found by its own index seek and the smallest id
        wins (an ``IN`` list would sort every row of those queues)."""
        sql = self._pops.get((count, returning))
        if sql is not None:
            return sql
        m = self._m
        head = f"SELECT id FROM {m} WHERE queue = ? ORDER BY id LIMIT 1"
        if count == 1:
            oldest = head
        else:
            heads = " UNION ALL ".join(f"SELECT ({head}) AS id" for _ in range(count))
            oldest = f"SELECT min(id) FROM ({heads})"
        if returning:
            sql = f"DELETE FROM {m} WHERE id = ({oldest}) RETURNING channel, data, grp, expires"
        else:
            sql = f"SELECT id, channel, data, grp, expires FROM {m} WHERE id = ({oldest})"
        return self._keep((count, returning), sql)

    def peek(self, count: int) -> str:
        """A statement that returns a row when one of *count* queues holds a message
        (expired or not), without writing."""
        sql = self._pops.get((count, None))
        if sql is not None:
            return sql
        head = f"SELECT 1 FROM {self._m} WHERE queue = ?"
        return self._keep((count, None), " UNION ALL ".join([head] * count) + " LIMIT 1")

    def _keep(self, key: tuple[int, bool | None], sql: str) -> str:
        """Cache *sql* under *key* (*returning*, or None for a peek), up to 64 of them."""
        if len(self._pops) < 64:
            self._pops[key] = sql
        return sql


def _wake_directory(path: str) -> str | None:
    """Where the readers of the file at *path* bind their wake-up sockets: beside it,
    or under the temporary directory when that path would be too long for AF_UNIX."""
    if not hasattr(socket, "AF_UNIX"):
        return None
    beside = path + "-wake"
    if len(os.fsencode(beside)) + _SOCKET_NAME_ROOM <= _MAX_SOCKET_PATH:
        return beside
    digest = hashlib.sha256(os.fsencode(os.path.realpath(path))).hexdigest()[:24]
    fallback = os.path.join(tempfile.gettempdir(), f"wsgi-channels-{digest}-wake")
    return fallback if len(os.fsencode(fallback)) + _SOCKET_NAME_ROOM <= _MAX_SOCKET_PATH else None


def _check_private_dir(directory: str) -> None:
    """Refuse a shared-temp-directory wake-up directory that another user made (or
    replaced by a symbolic link): its sockets would not be ours to trust."""
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise OSError(errno.EPERM, "wake-up directory is not ours", directory)
