"""The channel layer contract shared by every backend: names, limits, errors, encoding.

A channel layer carries *messages* (dicts of msgpack-able values) on named FIFO
*channels* and broadcasts them to *groups* of channels. The API is the synchronous one
of the ASGI 1.0 channel layer specification, so that an ASGI 1.0 layer such as
``asgi_redis.RedisChannelLayer`` can be handed to our :class:`~wsgi_channels.Worker`
and our layers can be used where an ASGI 1.0 layer is expected::

    layer.send(channel, message)          # ChannelFull, MessageTooLarge, InvalidChannelName
    layer.receive(channels, block=False)  # -> (channel, message) or (None, None)
    layer.new_channel("pattern!")         # a fresh, unguessable name
    layer.group_add(group, channel); layer.group_discard(group, channel)
    layer.group_channels(group); layer.send_group(group, message)
    layer.flush(); layer.global_statistics(); layer.channel_statistics(channel)
    layer.close()

Errors, one root drawn as a tree::

    ChannelsError
     ├── ChannelFull              a send found the channel at its capacity; nothing was sent
     ├── MessageTooLarge          the encoded message is over ``max_message_size`` (1 MiB)
     ├── InvalidChannelName       (also ValueError) a name breaks the ASGI 1.0 rules
     ├── InvalidMessage           (also TypeError) a value msgpack cannot carry
     ├── LayerUnavailable         the layer's server is down; the layer reconnects by itself
     └── ConfigurationError       a bad URL, option, APP path or command-line value

*Process-specific* channels (``name!local``) share one queue per process, named by
their non-local part ``name!``: one blocking call reads every local channel of a
process, capacity counts against ``name!``, and a group send writes one message per
``name!`` queue that holds members, which the receiving process expands to its local
members (:meth:`BaseChannelLayer._expand_group`). That keeps the cost of a group send
independent of the number of members.

One extension beyond ASGI 1.0, for readers of many channels such as the interface
server: ``layer.receive_batch(channels, block=False, max_messages=100)`` returns a list
of ``(channel, message)`` pairs, among them every local member's message of a group send
at once (:meth:`BaseChannelLayer.receive_batch`). Callers must keep working with layers
that lack it (``getattr(layer, "receive_batch", None)``), falling back to ``receive``.
"""

from __future__ import annotations

import base64
import collections
import fnmatch
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, NamedTuple, Protocol

import msgpack

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_EXPIRY",
    "DEFAULT_GROUP_EXPIRY",
    "MAX_MESSAGE_SIZE",
    "MAX_NAME_LENGTH",
    "BaseChannelLayer",
    "ChannelFull",
    "ChannelsError",
    "ConfigurationError",
    "InvalidChannelName",
    "InvalidMessage",
    "Layer",
    "LayerUnavailable",
    "Message",
    "MessageTooLarge",
    "Record",
    "decode_message",
    "encode_message",
    "non_local_name",
    "validate_channel_name",
    "validate_group_name",
]

Message = dict[str, Any]


class Layer(Protocol):
    """What the worker and the interface server need of a layer they are handed: the
    ASGI 1.0 core, which ours and third-party ones (``asgi_redis``) have. Everything
    beyond it (``receive_batch``, ``async_face``, the ``groups``, ``flush`` and
    ``statistics`` extensions) is looked up with ``getattr`` by whoever uses it, so
    that a layer without it still works."""

    def send(self, channel: str, message: Message) -> None: ...
    def receive(self, channels: Any, block: bool = ...) -> tuple[Any, Any]: ...
    def new_channel(self, pattern: str) -> str: ...


DEFAULT_EXPIRY = 60.0
DEFAULT_GROUP_EXPIRY = 86400.0
DEFAULT_CAPACITY = 100
DEFAULT_RECEIVE_TIMEOUT = 1.0
MAX_MESSAGE_SIZE = 1024 * 1024
MAX_NAME_LENGTH = 100  # names must be *shorter* than this

# The ASGI 1.0 patterns, matched with fullmatch so that a trailing newline (which "$"
# would let through) is refused.
_CHANNEL_NAME = re.compile(r"[a-zA-Z\d\-_.]+((\?|\!)[\d\w\-_.]*)?", re.ASCII)
_GROUP_NAME = re.compile(r"[a-zA-Z\d\-_.]+", re.ASCII)


class ChannelsError(Exception):
    """The root of every error raised by wsgi-channels."""


class ChannelFull(ChannelsError):
    """The channel holds as many messages as its capacity allows; nothing was sent."""


class MessageTooLarge(ChannelsError):
    """The message, once encoded, is larger than the layer accepts; nothing was sent."""


class InvalidChannelName(ChannelsError, ValueError):
    """A channel or group name does not match the ASGI 1.0 rules or is too long."""


class InvalidMessage(ChannelsError, TypeError):
    """A message is not a dict of msgpack-able values: None, bool, int, float, str,
    bytes, list, and dict with str keys."""


class LayerUnavailable(ChannelsError):
    """The layer's server cannot be reached. The layer reconnects by itself; calls
    made while it is away raise this error."""


class ConfigurationError(ChannelsError):
    """A layer URL, an option or a command-line value is wrong; the message says what
    is accepted."""


def validate_channel_name(name: object, *, receive: bool = False) -> str:
    """Return *name* if it is a valid channel name, else raise InvalidChannelName.

    With ``receive=True`` the name must be one a reader may wait on: a normal name, a
    full ``name?local`` name, or the ``name!`` prefix of process-specific channels (a
    full ``name!local`` is read through its prefix, by the process that owns it).
    """
    if not isinstance(name, str):
        raise InvalidChannelName(f"channel name must be a str, not {type(name).__name__}")
    if len(name) >= MAX_NAME_LENGTH:
        raise InvalidChannelName(
            f"channel name {name[:40]!r}... is {len(name)} characters; "
            f"names must be shorter than {MAX_NAME_LENGTH}"
        )
    if not _CHANNEL_NAME.fullmatch(name):
        raise InvalidChannelName(
            f"invalid channel name {name!r}: names are ASCII letters, digits, '-', '_' "
            "and '.', optionally followed by '!' or '?' and a local part"
        )
    if receive and "!" in name and not name.endswith("!"):
        raise InvalidChannelName(
            f"cannot receive on {name!r}: process-specific channels are received "
            f"through their prefix {non_local_name(name)!r}"
        )
    return name


def validate_group_name(name: object) -> str:
    """Return *name* if it is a valid group name, else raise InvalidChannelName."""
    if not isinstance(name, str):
        raise InvalidChannelName(f"group name must be a str, not {type(name).__name__}")
    if len(name) >= MAX_NAME_LENGTH:
        raise InvalidChannelName(
            f"group name {name[:40]!r}... is {len(name)} characters; "
            f"names must be shorter than {MAX_NAME_LENGTH}"
        )
    if not _GROUP_NAME.fullmatch(name):
        raise InvalidChannelName(
            f"invalid group name {name!r}: group names are ASCII letters, digits, '-', '_' and '.'"
        )
    return name


def non_local_name(channel: str) -> str:
    """The queue a channel's messages live in: ``"a.b!"`` for ``"a.b!xyz"``, else the
    name itself."""
    bang = channel.find("!")
    return channel if bang < 0 else channel[: bang + 1]


def encode_message(message: Mapping[str, Any], max_size: int = MAX_MESSAGE_SIZE) -> bytes:
    """Encode *message* as msgpack, refusing what the wire format cannot carry.

    Raises InvalidMessage for a non-dict or a value that is not None, bool, int, float,
    str, bytes, list or dict with str keys, and MessageTooLarge when the encoding is
    over *max_size* bytes. Every layer, the memory one included, goes through here, so
    a message that would fail on Redis fails in tests too.
    """
    if not isinstance(message, dict):
        raise InvalidMessage(f"a message must be a dict, not {type(message).__name__}")
    try:
        _check_str_keys(message)
        # datetime is refused by default; no datetime= keyword, which msgpack 0.6 (the
        # pin of asgi_redis 1.4, beside which the Worker runs) does not take.
        data: bytes = msgpack.packb(message, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidMessage(f"message cannot be encoded with msgpack: {exc}") from None
    if len(data) > max_size:
        raise MessageTooLarge(
            f"message is {len(data)} bytes encoded; the limit is {max_size} bytes"
        )
    return data


def _check_str_keys(value: Any, depth: int = 0) -> None:
    """Refuse map keys that are not str, at any depth (msgpack itself would encode
    bytes or int keys). A walk in Python is cheaper than decoding again: messages are
    shallow, and only containers are visited."""
    if depth > 512:
        raise ValueError("message nests too deeply")
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ValueError(f"map keys must be str, not {type(key).__name__} ({key!r:.40})")
            if isinstance(item, _CONTAINERS):
                _check_str_keys(item, depth + 1)
    elif kind is list or kind is tuple:
        for item in value:
            inner = type(item)
            if inner is list or inner is tuple:
                # Pairs such as headers: look inside without a call per pair.
                for element in item:
                    if isinstance(element, _CONTAINERS):
                        _check_str_keys(element, depth + 2)
            elif isinstance(item, _CONTAINERS):
                _check_str_keys(item, depth + 1)
    elif isinstance(value, (dict, list, tuple)):  # subclasses: walk them the slow way
        items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
        for key, item in items:
            if isinstance(value, dict) and type(key) is not str:
                raise ValueError(f"map keys must be str, not {type(key).__name__} ({key!r:.40})")
            _check_str_keys(item, depth + 1)


_CONTAINERS = (dict, list, tuple)


def decode_message(data: bytes) -> Message:
    """Decode bytes made by :func:`encode_message`."""
    message: Message = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    return message


class _Forks:
    """How many times this process was forked from the one that imported us. A
    layer remembers the generation it was made in and resets its connections when it
    changes (:meth:`BaseChannelLayer._check_fork`): a counter read instead of a
    ``getpid()`` system call on every operation."""

    generation = 0


_forks = _Forks()


class _TokenSource:
    """128-bit random tokens for channel names, cut from ``os.urandom`` bytes read
    4 KiB at a time (one system call per 256 names instead of one per name). The
    buffer is dropped in a forked child, which must not repeat its parent's names."""

    SIZE = 16
    READ = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0

    def __call__(self) -> str:
        with self._lock:
            start = self._offset
            if start + self.SIZE > len(self._buffer):
                self._buffer, start = os.urandom(self.READ), 0
            self._offset = start + self.SIZE
            chunk = self._buffer[start : start + self.SIZE]
        return base64.urlsafe_b64encode(chunk).rstrip(b"=").decode("ascii")


_random_token = _TokenSource()


def _after_fork_in_child() -> None:
    _forks.generation += 1
    _random_token.reset()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Record(NamedTuple):
    """One entry popped from a backend queue.

    ``channel`` is the full channel name the message was sent to; for a group message
    to a process queue it is the ``name!`` prefix and ``group`` names the group, whose
    local members the receiving process looks up.
    """

    channel: str
    data: bytes
    group: str | None = None


class _Expansion:
    """One group message for this process, waiting to be handed to its local members
    (``members[taken:]`` have not had it yet)."""

    __slots__ = ("data", "expires", "members", "taken")

    def __init__(self, expires: float, data: bytes, members: list[str]) -> None:
        self.expires = expires
        self.data = data
        self.members = members
        self.taken = 0


class BaseChannelLayer:
    """Behaviour shared by the memory, SQLite and Redis layers.

    Subclasses implement the storage hooks (``_push``, ``_pop``, ``_push_group``,
    ``_local_members`` and the group and housekeeping methods); the validation,
    encoding, capacity rules, local-channel expansion and fork handling live here so
    that every backend behaves the same.
    """

    extensions: ClassVar[list[str]] = ["groups", "flush", "statistics"]

    # ASGI 1.0 layers expose their exceptions as attributes.
    ChannelFull = ChannelFull
    MessageTooLarge = MessageTooLarge

    def __init__(
        self,
        *,
        expiry: float = DEFAULT_EXPIRY,
        group_expiry: float = DEFAULT_GROUP_EXPIRY,
        capacity: int = DEFAULT_CAPACITY,
        channel_capacity: Mapping[str, int] | None = None,
        max_message_size: int = MAX_MESSAGE_SIZE,
        receive_timeout: float = DEFAULT_RECEIVE_TIMEOUT,
    ) -> None:
        if expiry <= 0 or group_expiry <= 0:
            raise ConfigurationError("expiry and group_expiry must be positive numbers of seconds")
        if capacity < 1:
            raise ConfigurationError("capacity must be at least 1")
        if receive_timeout <= 0:
            raise ConfigurationError("receive_timeout must be a positive number of seconds")
        self.expiry = float(expiry)
        self.group_expiry = float(group_expiry)
        self.capacity = int(capacity)
        self.channel_capacity = dict(channel_capacity or {})
        for pattern, value in self.channel_capacity.items():
            if int(value) < 1:
                raise ConfigurationError(f"capacity for {pattern!r} must be at least 1")
        self.max_message_size = int(max_message_size)
        self.receive_timeout = float(receive_timeout)
        self._capacity_cache: dict[str, int] = {}
        # Group messages already expanded to this process's local members, waiting to
        # be returned by receive(), in arrival order per process queue.
        self._expanded: dict[str, collections.deque[_Expansion]] = {}
        self._expanded_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._messages_count = 0
        self._channel_full_count = 0
        self._group_full_count = 0
        self._generation = _forks.generation
        # Process queues (``name!``) read by an asyncio face of this very process:
        # a send to one of their channels is handed over without the layer's round
        # trip (see AsyncFace.listen). Keyed by prefix, values take (channel, message).
        self._local_sinks: dict[str, Callable[[str, Message], None]] = {}

    # -- names and limits ---------------------------------------------------------

    def new_channel(self, pattern: str) -> str:
        """Return a new channel name that starts with *pattern* (which ends in ``!``
        or ``?``) followed by 128 random bits, so it cannot be guessed."""
        if not isinstance(pattern, str) or not pattern.endswith(("!", "?")):
            raise InvalidChannelName(f"new_channel pattern must end in '!' or '?', not {pattern!r}")
        name = pattern + _random_token()
        return validate_channel_name(name)

    def get_capacity(self, channel: str) -> int:
        """Capacity of the queue *channel* lives in: the first ``channel_capacity``
        glob pattern that matches its non-local part, else ``capacity``."""
        queue = non_local_name(channel)
        cached = self._capacity_cache.get(queue)
        if cached is not None:
            return cached
        value = self.capacity
        for pattern, pattern_capacity in self.channel_capacity.items():
            if fnmatch.fnmatchcase(queue, pattern):
                value = int(pattern_capacity)
                break
        if len(self._capacity_cache) < 10000:
            self._capacity_cache[queue] = value
        return value

    def _encode(self, message: Mapping[str, Any]) -> bytes:
        return encode_message(message, self.max_message_size)

    def _receive_names(self, channels: Iterable[str]) -> list[str]:
        if isinstance(channels, str):
            raise InvalidChannelName("receive() takes a list of channel names, not a str")
        names = [validate_channel_name(c, receive=True) for c in channels]
        return list(dict.fromkeys(names))

    # -- fork safety --------------------------------------------------------------

    def _check_fork(self) -> None:
        """Drop connections and buffers inherited from a parent process.

        Called at the start of every operation; a child after ``os.fork()`` gets fresh
        connections on its first call without any action from the user.
        """
        generation = _forks.generation
        if generation != self._generation:
            self._generation = generation
            self._expanded = {}
            self._expanded_lock = threading.Lock()
            self._stats_lock = threading.Lock()
            self._local_sinks = {}
            self._after_fork()

    def _after_fork(self) -> None:
        """Hook: reset connections and locks in a forked child."""

    # -- the API ------------------------------------------------------------------

    def send(self, channel: str, message: Message) -> None:
        """Put *message* on *channel*.

        Raises InvalidChannelName, InvalidMessage, MessageTooLarge, or ChannelFull when
        the channel's queue holds ``get_capacity(channel)`` messages already.
        """
        data = self._prepare_send(channel, message)
        if data is None:
            return
        if not self._push(channel, data, time.time() + self.expiry):
            with self._stats_lock:
                self._channel_full_count += 1
            raise ChannelFull(f"channel {channel!r} is full ({self.get_capacity(channel)})")
        with self._stats_lock:
            self._messages_count += 1

    def send_soon(
        self,
        channel: str,
        message: Message,
        settled: Callable[[bool | ChannelsError], None],
    ) -> None:
        """:meth:`send` for a caller that need not wait for the outcome: where a
        round trip already in flight on the channel's server can take the message
        along (Redis), this returns at once and the thread leading that round trip
        calls *settled* with the outcome after it; otherwise the send is made now and
        *settled* is called before this returns. The outcome is True (sent), False
        (the channel was full: nothing was sent) or the ChannelsError that refused
        it. The message's own errors (InvalidChannelName, InvalidMessage,
        MessageTooLarge) are raised here, before anything is sent. *settled* may run
        in another caller's thread, after that thread's round trip and before its own
        send returns: what it does there delays that caller."""
        data = self._prepare_send(channel, message)
        if data is None:
            settled(True)
            return

        def counted(outcome: bool | ChannelsError) -> None:
            if outcome is True or outcome is False:
                with self._stats_lock:
                    if outcome:
                        self._messages_count += 1
                    else:
                        self._channel_full_count += 1
            settled(outcome)

        self._push_soon(channel, data, time.time() + self.expiry, counted)

    def _prepare_send(self, channel: str, message: Message) -> bytes | None:
        """Check and encode a send (every face sends through here): the encoded
        message, or None when it went to a local sink instead (a prefix this process
        listens on: no round trip; decoding the encoding keeps the rule that a message
        arrives as the wire format carries it)."""
        self._check_fork()
        validate_channel_name(channel)
        if channel.endswith(("!", "?")):
            raise InvalidChannelName(f"cannot send to {channel!r}: it has no local part")
        data = self._encode(message)
        if self._local_sinks:
            sink = self._local_sinks.get(non_local_name(channel))
            if sink is not None:
                sink(channel, decode_message(data))
                with self._stats_lock:
                    self._messages_count += 1
                return None
        return data

    def hands_over(self, channel: str) -> bool:
        """Would a send to *channel* from this process skip the backend (a prefix that
        this process listens on, as ``wsgi-channels run``'s interface does)? Then it
        has no round trip to share with anything."""
        return bool(self._local_sinks) and non_local_name(channel) in self._local_sinks

    def send_many(self, items: Iterable[tuple[str, Message]]) -> list[ChannelsError | None]:
        """Send several messages, in one round trip per server where the backend can;
        returns, per message in order, None if it was sent or the error that refused
        it (ChannelFull, MessageTooLarge, ...). A message refused does not stop the
        others; a server that is down refuses all of its messages (LayerUnavailable).
        Messages to one channel keep their order."""
        results, slots, pushes = self._prepare_many(items)
        if pushes:
            self._settle(results, slots, pushes, self._push_many(pushes))
        return results

    def send_then_receive(
        self, items: Iterable[tuple[str, Message]], channels: Iterable[str], max_messages: int = 1
    ) -> tuple[list[ChannelsError | None], list[tuple[str, Message]]]:
        """:meth:`send_many` of *items*, then :meth:`receive_batch` of up to
        *max_messages* messages already waiting on *channels* (it never blocks), in
        one round trip where the backend can (Redis, when the sends and the channels
        live on one server). For a worker that answers one request and takes its next
        with the same trip. Returns ``(send results, received batch)``; every rule of
        both holds, and a send refused does not stop the receive."""
        self._check_fork()
        names = self._receive_names(channels)
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        results, slots, pushes = self._prepare_many(items)
        entries: list[tuple[list[str], Message]] = []
        room = max_messages
        if self._expanded and names:
            room = self._take_expanded(names, entries, room)
        if room > 0 and names:
            outcomes, popped = self._push_many_pop(pushes, names, room)
            self._gather(names, popped, entries, room)
        else:
            outcomes = self._push_many(pushes) if pushes else []
        if pushes:
            self._settle(results, slots, pushes, outcomes)
        batch: list[tuple[str, Message]] = []
        for members, message in entries:
            batch.append((members[0], message))
            batch.extend((member, message.copy()) for member in members[1:])
        return results, batch

    def _prepare_many(
        self, items: Iterable[tuple[str, Message]]
    ) -> tuple[list[ChannelsError | None], list[int], list[tuple[str, bytes, float]]]:
        """Check and encode sends: a result per message (the error of those refused
        already), and for those to push their places in it and ``(channel, data,
        expires)``, in order."""
        results: list[ChannelsError | None] = []
        slots: list[int] = []
        pushes: list[tuple[str, bytes, float]] = []
        expires = time.time() + self.expiry
        for channel, message in items:
            results.append(None)
            try:
                data = self._prepare_send(channel, message)
            except ChannelsError as exc:
                results[-1] = exc
                continue
            if data is not None:
                pushes.append((channel, data, expires))
                slots.append(len(results) - 1)
        return results, slots, pushes

    def _settle(
        self,
        results: list[ChannelsError | None],
        slots: list[int],
        pushes: list[tuple[str, bytes, float]],
        outcomes: list[bool | ChannelsError],
    ) -> None:
        """Fill *results* at *slots* from the backend's *outcomes* of *pushes*; count
        them."""
        sent = full = 0
        for index, (channel, _data, _expires), outcome in zip(slots, pushes, outcomes, strict=True):
            if outcome is True:
                sent += 1
            elif isinstance(outcome, ChannelsError):
                results[index] = outcome
            else:
                full += 1
                capacity = self.get_capacity(channel)
                results[index] = ChannelFull(f"channel {channel!r} is full ({capacity})")
        with self._stats_lock:
            self._messages_count += sent
            self._channel_full_count += full

    def receive(
        self, channels: Iterable[str], block: bool = False
    ) -> tuple[str, Message] | tuple[None, None]:
        """Take the next message from any of *channels*, as ``(channel, message)``.

        Returns ``(None, None)`` when there is none; with ``block=True`` it waits for
        one, at most ``receive_timeout`` seconds, so that callers can check for
        shutdown. Each message is delivered once, to one reader, in the order sent per
        channel; expired messages are never returned.
        """
        batch = self.receive_batch(channels, block, max_messages=1)
        return batch[0] if batch else (None, None)

    def receive_batch(
        self,
        channels: Iterable[str],
        block: bool = False,
        max_messages: int = 100,
        max_records: int = 1,
    ) -> list[tuple[str, Message]]:
        """Take up to *max_messages* messages from *channels* at once, as a list of
        ``(channel, message)`` pairs (an extension, not part of ASGI 1.0).

        The batch holds, in this order, the messages of group sends already expanded
        to this process's local members, then those of at most *max_records* records
        taken from the backend's queues: a record is one message, or one group send
        that becomes one message per local member. Only the first record may be
        waited for (``block=True``, at most ``receive_timeout`` seconds, then ``[]``);
        the others are taken only if they are there already. The generic
        implementation takes each record with its own non-blocking pop (a round trip
        on Redis, even when it finds nothing), so raise *max_records* only where a
        backlog is expected.

        Every rule of :meth:`receive` holds: each message is delivered once, to one
        reader, in the order sent per channel (a batch lists one channel's messages
        in that order; members of a group send not taken because the batch was full
        come first in the next call), and expired messages are never returned. The
        validation and fork check are done once per call, and a group message is
        decoded once: each member gets its own dict, but values inside it (lists,
        dicts, strings) are shared with the other members' copies in this batch, so
        treat them as read-only.
        """
        batch: list[tuple[str, Message]] = []
        for members, message in self.receive_entries(
            channels, block, max_messages=max_messages, max_records=max_records
        ):
            batch.append((members[0], message))
            batch.extend((member, message.copy()) for member in members[1:])
        return batch

    def receive_entries(
        self,
        channels: Iterable[str],
        block: bool = False,
        max_messages: int = 100,
        max_records: int = 1,
    ) -> list[tuple[list[str], Message]]:
        """:meth:`receive_batch`, with each group message once: a list of
        ``(channels, message)`` where *channels* are the local members it is for (one
        channel for a plain message). For readers that deliver one message to many
        members at once, such as the interface server's fan-out. *max_messages*
        counts members."""
        self._check_fork()
        names = self._receive_names(channels)
        if max_messages < 1 or max_records < 1:
            raise ValueError("max_messages and max_records must be at least 1")
        entries: list[tuple[list[str], Message]] = []
        if not names:
            return entries
        deadline = time.monotonic() + self.receive_timeout
        room = max_messages
        if self._expanded:
            room = self._take_expanded(names, entries, room)
        records = 0
        # A record is taken only while the batch has room for at least its first
        # message; what does not fit of a group send stays expanded for the next call,
        # and nothing is taken after it, so each channel's order holds.
        while room > 0 and records < max_records:
            want = min(max_records - records, room)
            popped = self._pop_many(names, block and not entries, deadline, want)
            if not popped:
                break
            room, taken = self._gather(names, popped, entries, room)
            records += taken
            if len(popped) < want:
                break
        return entries

    def _gather(
        self,
        names: list[str],
        popped: list[Record],
        entries: list[tuple[list[str], Message]],
        room: int,
    ) -> tuple[int, int]:
        """Add the messages of records *popped* from *names* to *entries*, at most
        *room* members (the rest is held, in order, for the next call); returns the
        room left and how many records were used."""
        records = 0
        for index, record in enumerate(popped):
            if room <= 0:
                # Taken from the backend but no room: they wait, in order, behind
                # what is left of the group send before them.
                self._hold(popped[index:])
                break
            records += 1
            if record.group is None:
                entries.append(([record.channel], decode_message(record.data)))
                room -= 1
            elif self._expand_group(record.group, record):
                room = self._take_expanded(names, entries, room)
        return room, records

    def _hold(self, records: list[Record]) -> None:
        """Keep records popped beyond a batch's room for the next call, in order."""
        for record in records:
            if record.group is not None:
                self._expand_group(record.group, record)
                continue
            expansion = _Expansion(time.time() + self.expiry, record.data, [record.channel])
            with self._expanded_lock:
                queue = self._expanded.setdefault(
                    non_local_name(record.channel), collections.deque()
                )
                queue.append(expansion)

    def _pop_many(self, names: list[str], block: bool, deadline: float, count: int) -> list[Record]:
        """Up to *count* records, the first waited for if *block*, the others taken
        only if they are there already. Backends that can take several in one round
        trip override this; the default pops them one by one."""
        records: list[Record] = []
        record = self._pop(names, block, deadline)
        while record is not None:
            records.append(record)
            if len(records) >= count:
                break
            record = self._pop(names, False, deadline)
        return records

    def _push_many_pop(
        self, pushes: list[tuple[str, bytes, float]], names: list[str], count: int
    ) -> tuple[list[bool | ChannelsError], list[Record]]:
        """:meth:`_push_many` then a non-blocking :meth:`_pop_many` of up to *count*;
        backends that can do both in one round trip override this."""
        outcomes = self._push_many(pushes) if pushes else []
        return outcomes, self._pop_many(names, False, time.monotonic(), count)

    def _withdraw(self, items: list[tuple[str, bytes, float]]) -> list[bool]:
        """Take back messages sent as *items* (``(channel, data, expires)``, as the
        asyncio face's :meth:`~wsgi_channels.layers.aio.AsyncFace.send` returns them)
        that no reader has taken yet: True for each one removed, so that nobody will
        ever receive it. A backend that cannot tell says False (it may be received)."""
        return [False] * len(items)

    def _expand_group(self, group: str, record: Record) -> bool:
        """Turn one group message for this process into one message per local member;
        False if there is no member."""
        members = self._local_members(group, record.channel)
        if not members:
            return False
        expansion = _Expansion(time.time() + self.expiry, record.data, members)
        with self._expanded_lock:
            self._expanded.setdefault(record.channel, collections.deque()).append(expansion)
        return True

    def _take_expanded(
        self, names: list[str], entries: list[tuple[list[str], Message]], room: int
    ) -> int:
        """Move expanded messages for *names* into *entries*, at most *room* members;
        returns the room left."""
        taken: list[tuple[bytes, list[str]]] = []
        now = time.time()
        with self._expanded_lock:
            for name in names:
                queue = self._expanded.get(name)
                while queue and room > 0:
                    expansion = queue[0]
                    if expansion.expires > now:
                        start = expansion.taken
                        members = expansion.members[start : start + room]
                        expansion.taken = start + len(members)
                        room -= len(members)
                        taken.append((expansion.data, members))
                        if expansion.taken < len(expansion.members):
                            break  # the batch is full
                    queue.popleft()
                if queue is not None and not queue:
                    del self._expanded[name]
                if room <= 0:
                    break
        # Decoding outside the lock, once per group message.
        for data, members in taken:
            entries.append((members, decode_message(data)))
        return room

    def send_group(self, group: str, message: Message) -> None:
        """Send *message* to every member of *group*.

        Never raises ChannelFull: members whose queue is full are skipped and counted
        (``global_statistics()["group_full_count"]``). Members on ``name!`` channels
        cost one write per process, not one per member.
        """
        self._check_fork()
        validate_group_name(group)
        data = self._encode(message)
        skipped = self._push_group(group, data, time.time() + self.expiry)
        with self._stats_lock:
            self._messages_count += 1
            self._group_full_count += skipped

    def group_add(self, group: str, channel: str) -> None:
        """Add *channel* to *group*, or refresh its membership, for ``group_expiry``."""
        self._check_fork()
        validate_group_name(group)
        validate_channel_name(channel)
        self._group_add(group, channel, time.time() + self.group_expiry)

    def group_discard(self, group: str, channel: str) -> None:
        """Remove *channel* from *group*; no error if it was not a member."""
        self._check_fork()
        validate_group_name(group)
        validate_channel_name(channel)
        self._group_discard(group, channel)

    def discard_channel(self, channel: str) -> None:
        """Remove *channel* from every group it is in (an extension, not ASGI 1.0):
        what the interface server does when a socket has gone, whatever the app did
        with its disconnect event. Kept exactly for process-specific channels
        (``name!local``); others are left to their membership expiry."""
        self._check_fork()
        validate_channel_name(channel)
        self._discard_channel(channel)

    def group_channels(self, group: str) -> list[str]:
        """The channels currently (and not expired) in *group*."""
        self._check_fork()
        validate_group_name(group)
        return self._group_channels(group)

    def flush(self) -> None:
        """Delete every message and group membership of this layer."""
        self._check_fork()
        with self._expanded_lock:
            self._expanded.clear()
        self._flush()

    def global_statistics(self) -> dict[str, int]:
        """Counts since this layer object was made: messages sent (a group send counts
        once), sends refused as full, and group members skipped because full."""
        with self._stats_lock:
            return {
                "messages_count": self._messages_count,
                "channel_full_count": self._channel_full_count,
                "group_full_count": self._group_full_count,
            }

    def channel_statistics(self, channel: str) -> dict[str, Any]:
        """``messages_pending`` (waiting now in the channel's queue), ``messages_max_age``
        (seconds the oldest has waited) and ``capacity``."""
        self._check_fork()
        validate_channel_name(channel)
        pending, max_age = self._queue_stats(non_local_name(channel))
        return {
            "messages_pending": pending,
            "messages_max_age": max_age,
            "capacity": self.get_capacity(channel),
        }

    def overview(self) -> dict[str, Any]:
        """What ``wsgi-channels stats`` shows: ``{"channels": {queue: pending},
        "groups": {group: member_count}}`` for every non-empty queue and group."""
        self._check_fork()
        return self._overview()

    def close(self) -> None:
        """Release connections; the layer must not be used afterwards."""

    def __enter__(self) -> BaseChannelLayer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- storage hooks ------------------------------------------------------------

    def _push(self, channel: str, data: bytes, expires: float) -> bool:
        """Append to the queue of *channel*; False if it is full."""
        raise NotImplementedError

    def _push_soon(
        self,
        channel: str,
        data: bytes,
        expires: float,
        settled: Callable[[bool | ChannelsError], None],
    ) -> None:
        """:meth:`_push` for :meth:`send_soon`; backends whose sends share round trips
        override it. This one sends now."""
        outcome: bool | ChannelsError
        try:
            outcome = self._push(channel, data, expires)
        except ChannelsError as exc:
            outcome = exc
        settled(outcome)

    def _push_many(self, items: list[tuple[str, bytes, float]]) -> list[bool | ChannelsError]:
        """Append each ``(channel, data, expires)``; per item True, False if full, or
        the error that refused it. Backends that can share a round trip override this."""
        results: list[bool | ChannelsError] = []
        for channel, data, expires in items:
            try:
                results.append(self._push(channel, data, expires))
            except ChannelsError as exc:
                results.append(exc)
        return results

    def _pop(self, names: list[str], block: bool, deadline: float) -> Record | None:
        """Remove and return the oldest unexpired record of any queue in *names*
        (normal names, ``?`` full names, ``name!`` prefixes); wait until the
        monotonic *deadline* if *block*."""
        raise NotImplementedError

    def _push_group(self, group: str, data: bytes, expires: float) -> int:
        """Write *data* once to each normal member and once per process queue with
        members; return how many were skipped because full."""
        raise NotImplementedError

    def _local_members(self, group: str, prefix: str) -> list[str]:
        """The unexpired members of *group* that are local channels of *prefix*."""
        raise NotImplementedError

    def _group_add(self, group: str, channel: str, expires: float) -> None:
        raise NotImplementedError

    def _group_discard(self, group: str, channel: str) -> None:
        raise NotImplementedError

    def _group_channels(self, group: str) -> list[str]:
        raise NotImplementedError

    def _discard_channel(self, channel: str) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        raise NotImplementedError

    def _queue_stats(self, queue: str) -> tuple[int, float]:
        raise NotImplementedError

    def _overview(self) -> dict[str, Any]:
        raise NotImplementedError
