"""The channel layer contract (SPEC.md §3 and §10), proved on every backend.

Each test runs on memory://, SQLite and Redis through the ``layer`` / ``make_layer``
fixtures of ``conftest.py``; the tests that need several processes run on the backends
that processes can share. A backend is correct when this file passes on it unchanged.
"""

from __future__ import annotations

import datetime
import math
import multiprocessing
import os
import threading
import time
from collections import Counter
from typing import Any

import msgpack
import pytest
from conftest import LAYER_BACKENDS

import wsgi_channels
from wsgi_channels.layers import (
    ChannelFull,
    ChannelsError,
    ConfigurationError,
    InvalidChannelName,
    InvalidMessage,
    MessageTooLarge,
    layer_from_url,
)

MiB = 1024 * 1024
#: Redis Cluster and Sentinel (tests/_redis_servers.py) join the backends of conftest.py.
CLUSTER_BACKENDS = ["redis-cluster", "redis-sentinel"]
SHARED_BACKENDS = ["sqlite", "redis", *CLUSTER_BACKENDS]


@pytest.fixture(params=[*LAYER_BACKENDS, *CLUSTER_BACKENDS])
def layer_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def layer_url(layer_backend: str, request: pytest.FixtureRequest) -> str:
    """conftest's ``layer_url``, plus an emptied cluster or Sentinel set."""
    if layer_backend in CLUSTER_BACKENDS:
        name = "cluster_url" if layer_backend == "redis-cluster" else "sentinel_url"
        return str(request.getfixturevalue(name))
    if layer_backend == "memory":
        return "memory://"
    return str(request.getfixturevalue(f"{layer_backend}_url"))


def drain(layer: Any, channels: list[str], limit: int = 10000) -> list[tuple[str, Any]]:
    """Every message waiting on *channels*, in the order receive() returns them."""
    out = []
    for _ in range(limit):
        channel, message = layer.receive(channels)
        if channel is None:
            return out
        out.append((channel, message))
    raise AssertionError(f"more than {limit} messages on {channels}")


def exact_size_message(size: int) -> dict[str, bytes]:
    """A message whose msgpack encoding is exactly *size* bytes."""
    for header in (2, 3, 5):  # bin8, bin16, bin32
        message = {"b": bytes(size - 3 - header)}
        if len(msgpack.packb(message, use_bin_type=True)) == size:
            return message
    raise AssertionError(f"no message encodes to {size} bytes")


# -- names --------------------------------------------------------------------------

VALID_CHANNELS = [
    pytest.param("http.request", id="dotted"),
    pytest.param("Websocket-connect_2.x", id="all-punctuation"),
    pytest.param("a", id="one-char"),
    pytest.param("x" * 99, id="99-chars"),
    pytest.param("reply?abc_DEF-1.2", id="single-reader"),
    pytest.param("reply!abc_DEF-1.2", id="process-local"),
]

INVALID_CHANNELS = [
    pytest.param("", id="empty"),
    pytest.param("x" * 100, id="100-chars"),
    pytest.param("x?" + "y" * 98, id="100-chars-with-local"),
    pytest.param("has space", id="space"),
    pytest.param("slash/name", id="slash"),
    pytest.param("colon:name", id="colon"),
    pytest.param("caf\u00e9", id="non-ascii"),
    pytest.param("!local", id="bang-first"),
    pytest.param("?local", id="question-first"),
    pytest.param("a!b!c", id="two-bangs"),
    pytest.param("a?b!c", id="question-then-bang"),
    pytest.param("a!b?c", id="bang-then-question"),
    pytest.param("line\nbreak", id="newline"),
    pytest.param("trailing\n", id="trailing-newline"),
    pytest.param(b"bytes", id="bytes"),
    pytest.param(None, id="none"),
    pytest.param(42, id="int"),
]

VALID_GROUPS = [
    pytest.param("liveblog", id="plain"),
    pytest.param("Chat.room-1_x", id="punctuation"),
    pytest.param("g" * 99, id="99-chars"),
]

INVALID_GROUPS = [
    pytest.param("", id="empty"),
    pytest.param("g" * 100, id="100-chars"),
    pytest.param("room!1", id="bang"),
    pytest.param("room?1", id="question"),
    pytest.param("room 1", id="space"),
    pytest.param("caf\u00e9", id="non-ascii"),
    pytest.param("trailing\n", id="trailing-newline"),
    pytest.param(None, id="none"),
]


@pytest.mark.parametrize("name", VALID_CHANNELS)
def test_valid_channel_name_round_trips(layer: Any, name: str) -> None:
    layer.send(name, {"n": name})
    reader = name if "!" not in name else name.split("!")[0] + "!"
    assert layer.receive([reader]) == (name, {"n": name})


@pytest.mark.parametrize("name", INVALID_CHANNELS)
def test_invalid_channel_name_is_refused_everywhere(layer: Any, name: Any) -> None:
    calls = [
        lambda: layer.send(name, {"x": 1}),
        lambda: layer.receive([name]),
        lambda: layer.receive(["ok", name]),
        lambda: layer.group_add("g", name),
        lambda: layer.group_discard("g", name),
        lambda: layer.channel_statistics(name),
    ]
    for call in calls:
        with pytest.raises(InvalidChannelName):
            call()
    assert layer.group_channels("g") == []
    assert layer.receive(["ok"]) == (None, None)


def test_invalid_channel_name_is_a_value_error_under_the_root() -> None:
    assert issubclass(InvalidChannelName, ValueError)
    assert issubclass(InvalidChannelName, ChannelsError)
    assert wsgi_channels.InvalidChannelName is InvalidChannelName
    for name in ("ChannelFull", "MessageTooLarge", "LayerUnavailable", "ConfigurationError"):
        assert issubclass(getattr(wsgi_channels, name), wsgi_channels.ChannelsError)


@pytest.mark.parametrize("group", VALID_GROUPS)
def test_valid_group_name(layer: Any, group: str) -> None:
    layer.group_add(group, "member")
    assert layer.group_channels(group) == ["member"]
    layer.send_group(group, {"g": group})
    assert layer.receive(["member"]) == ("member", {"g": group})
    layer.group_discard(group, "member")
    assert layer.group_channels(group) == []


@pytest.mark.parametrize("group", INVALID_GROUPS)
def test_invalid_group_name_is_refused_everywhere(layer: Any, group: Any) -> None:
    calls = [
        lambda: layer.group_add(group, "member"),
        lambda: layer.group_discard(group, "member"),
        lambda: layer.group_channels(group),
        lambda: layer.send_group(group, {"x": 1}),
    ]
    for call in calls:
        with pytest.raises(InvalidChannelName):
            call()
    assert layer.receive(["member"]) == (None, None)


@pytest.mark.parametrize("name", ["reply!", "reply?", "a.b!", "a.b?"])
def test_send_needs_a_local_part_after_bang_or_question(layer: Any, name: str) -> None:
    with pytest.raises(InvalidChannelName):
        layer.send(name, {"x": 1})
    assert layer.channel_statistics(name)["messages_pending"] == 0


def test_receive_refuses_full_process_local_name(layer: Any) -> None:
    layer.send("proc!abc", {"x": 1})
    with pytest.raises(InvalidChannelName):
        layer.receive(["proc!abc"])
    with pytest.raises(InvalidChannelName):
        layer.receive(["proc!abc"], block=True)
    # The message is still there for the prefix reader.
    assert layer.receive(["proc!"]) == ("proc!abc", {"x": 1})


def test_receive_takes_a_list_not_a_str(layer: Any) -> None:
    layer.send("abc", {"x": 1})
    with pytest.raises(InvalidChannelName):
        layer.receive("abc")
    assert layer.receive([]) == (None, None)
    assert layer.receive(["abc", "abc"]) == ("abc", {"x": 1})


# -- messages -----------------------------------------------------------------------

ROUND_TRIP = [
    pytest.param(None, id="none"),
    pytest.param(True, id="true"),
    pytest.param(False, id="false"),
    pytest.param(0, id="zero"),
    pytest.param(-1, id="negative"),
    pytest.param(2**63 - 1, id="int64-max"),
    pytest.param(-(2**63), id="int64-min"),
    pytest.param(2**64 - 1, id="uint64-max"),
    pytest.param(1.5, id="float"),
    pytest.param(-1e300, id="float-large"),
    pytest.param(float("inf"), id="float-inf"),
    pytest.param("", id="str-empty"),
    pytest.param("h\u00e9llo \u2603 \U0001f600 \x00", id="str-unicode"),
    pytest.param(b"", id="bytes-empty"),
    pytest.param(bytes(range(256)), id="bytes-all"),
    pytest.param([], id="list-empty"),
    pytest.param([1, "two", b"3", None, [4.0, {"five": [True]}]], id="list-nested"),
    pytest.param({"a": {"b": {"c": [1, {"d": b"e"}]}}, "": 0}, id="dict-nested"),
    pytest.param("x" * 70000, id="str-long"),
]


@pytest.mark.parametrize("value", ROUND_TRIP)
def test_message_values_round_trip(layer: Any, value: Any) -> None:
    message = {"value": value, "type": "t"}
    layer.send("types", message)
    channel, received = layer.receive(["types"])
    assert channel == "types"
    assert received == message
    assert type(received["value"]) is type(value)


def test_message_float_nan_round_trips(layer: Any) -> None:
    layer.send("types", {"v": float("nan")})
    _, received = layer.receive(["types"])
    assert math.isnan(received["v"])


def test_tuple_is_carried_as_a_list(layer: Any) -> None:
    layer.send("types", {"v": (1, (2, "3"))})
    assert layer.receive(["types"]) == ("types", {"v": [1, [2, "3"]]})


class _Thing:
    pass


REFUSED_MESSAGES = [
    pytest.param({"v": {1, 2}}, id="set"),
    pytest.param({"v": frozenset()}, id="frozenset"),
    pytest.param({"v": _Thing()}, id="object"),
    pytest.param({"v": object}, id="class"),
    pytest.param({"v": 2**64}, id="int-too-large"),
    pytest.param({"v": -(2**63) - 1}, id="int-too-small"),
    pytest.param({"v": 1j}, id="complex"),
    pytest.param({"v": datetime.datetime(2020, 1, 1)}, id="datetime"),
    pytest.param({1: "int key"}, id="int-key"),
    pytest.param({b"k": "bytes key"}, id="bytes-key"),
    pytest.param({"v": {"inner": {None: 1}}}, id="nested-none-key"),
    pytest.param({"v": [{(1, 2): 1}]}, id="tuple-key-in-list"),
    pytest.param(["not", "a", "dict"], id="list-message"),
    pytest.param("text", id="str-message"),
    pytest.param(None, id="none-message"),
]


@pytest.mark.parametrize("message", REFUSED_MESSAGES)
def test_unencodable_message_is_refused_and_not_sent(layer: Any, message: Any) -> None:
    layer.group_add("g", "member")
    with pytest.raises(InvalidMessage):
        layer.send("types", message)
    with pytest.raises(InvalidMessage):
        layer.send_group("g", message)
    assert layer.receive(["types", "member"]) == (None, None)


def test_invalid_message_is_a_type_error_under_the_root() -> None:
    assert issubclass(InvalidMessage, TypeError)
    assert issubclass(InvalidMessage, ChannelsError)


def test_message_up_to_one_mebibyte_goes_through(layer: Any) -> None:
    message = exact_size_message(MiB)
    layer.send("big", message)
    channel, received = layer.receive(["big"])
    assert channel == "big"
    assert received == message


def test_message_over_one_mebibyte_is_refused(layer: Any) -> None:
    layer.group_add("g", "member")
    message = exact_size_message(MiB + 1)
    with pytest.raises(MessageTooLarge):
        layer.send("big", message)
    with pytest.raises(layer.MessageTooLarge):
        layer.send_group("g", message)
    assert layer.receive(["big", "member"]) == (None, None)
    assert issubclass(MessageTooLarge, ChannelsError)


def test_max_message_size_option(make_layer: Any) -> None:
    layer = make_layer(max_message_size=200)
    layer.send("small", exact_size_message(200))
    with pytest.raises(MessageTooLarge):
        layer.send("small", exact_size_message(201))
    assert drain(layer, ["small"]) == [("small", exact_size_message(200))]


def test_message_is_a_copy(layer: Any) -> None:
    message = {"list": [1, 2]}
    layer.send("copy", message)
    message["list"].append(3)
    assert layer.receive(["copy"]) == ("copy", {"list": [1, 2]})


# -- receive ------------------------------------------------------------------------


def test_receive_on_empty_channels_returns_none_at_once(layer: Any) -> None:
    started = time.monotonic()
    assert layer.receive(["empty", "empty?x", "empty!"]) == (None, None)
    assert layer.receive(["empty"], block=False) == (None, None)
    assert time.monotonic() - started < 0.5


def test_blocking_receive_gives_up_after_receive_timeout(make_layer: Any) -> None:
    layer = make_layer(receive_timeout=0.3)
    started = time.monotonic()
    assert layer.receive(["empty", "empty!"], block=True) == (None, None)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 1.5


def test_blocking_receive_returns_a_waiting_message_at_once(make_layer: Any) -> None:
    layer = make_layer(receive_timeout=5)
    layer.send("ready", {"x": 1})
    started = time.monotonic()
    assert layer.receive(["ready"], block=True) == ("ready", {"x": 1})
    assert time.monotonic() - started < 0.5


WAKE_UPS = [
    pytest.param("plain", "plain", "plain", id="send"),
    pytest.param("proc!", "proc!a1", "proc!a1", id="send-local"),
    pytest.param("one?r1", "one?r1", "one?r1", id="send-single-reader"),
    pytest.param("plain", "group", "plain", id="send-group"),
    pytest.param("proc!", "group", "proc!a1", id="send-group-local"),
]


@pytest.mark.parametrize(("reader", "target", "member"), WAKE_UPS)
def test_blocking_receive_wakes_on_send_from_another_thread(
    make_layer: Any, layer_backend: str, reader: str, target: str, member: str
) -> None:
    receiver = make_layer(receive_timeout=10)
    # memory:// storage belongs to one layer object; the others get a second object.
    sender = receiver if layer_backend == "memory" else make_layer(receive_timeout=10)
    sender.group_add("wake", member)
    result: list[Any] = []

    def wait() -> None:
        started = time.monotonic()
        channel, message = receiver.receive([reader], block=True)
        result.append((channel, message, time.monotonic() - started))

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.3)
    sent_at = time.monotonic()
    if target == "group":
        sender.send_group("wake", {"w": 1})
    else:
        sender.send(target, {"w": 1})
    thread.join(10)
    woke_after = time.monotonic() - sent_at
    assert not thread.is_alive()
    channel, message, elapsed = result[0]
    assert (channel, message) == (member, {"w": 1})
    assert elapsed >= 0.25  # it really waited
    assert woke_after < 1.0  # and woke on the send, long before receive_timeout


def test_fifo_per_channel(layer: Any) -> None:
    for i in range(60):
        layer.send("fifo", {"i": i})
        layer.send("other", {"i": i})
        layer.send("proc!" + "ab"[i % 2], {"i": i})
    assert [m["i"] for _, m in drain(layer, ["fifo"])] == list(range(60))
    local = drain(layer, ["proc!"])
    assert [m["i"] for _, m in local] == list(range(60))
    assert [c for c, _ in local] == ["proc!" + "ab"[i % 2] for i in range(60)]
    assert [m["i"] for _, m in drain(layer, ["other"])] == list(range(60))


def test_receive_from_several_channels_names_the_channel(layer: Any) -> None:
    layer.send("left", {"side": "left"})
    layer.send("right?x", {"side": "right"})
    got = drain(layer, ["left", "right?x", "nothing"])
    assert sorted(got, key=lambda item: item[0]) == [
        ("left", {"side": "left"}),
        ("right?x", {"side": "right"}),
    ]


def test_at_most_once_with_many_reader_threads(make_layer: Any) -> None:
    layer = make_layer(capacity=1000, receive_timeout=0.2)
    total = 300
    for i in range(total):
        layer.send("work", {"i": i})
    received: list[int] = []
    lock = threading.Lock()

    def read() -> None:
        while True:
            channel, message = layer.receive(["work"], block=True)
            if channel is None:
                return
            with lock:
                received.append(message["i"])

    threads = [threading.Thread(target=read) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(received) == list(range(total))


def test_concurrent_senders_and_receivers_in_threads(make_layer: Any) -> None:
    layer = make_layer(capacity=2000, receive_timeout=0.2)
    senders, per_sender = 4, 100
    expected = {f"{s}-{i}" for s in range(senders) for i in range(per_sender)}
    received: list[tuple[str, str]] = []
    misrouted: list[tuple[str, Any]] = []
    lock = threading.Lock()
    done_sending = threading.Event()

    def send(s: int) -> None:
        for i in range(per_sender):
            channel = ("plain", "proc!a", "proc!b", "single?x")[i % 4]
            layer.send(channel, {"id": f"{s}-{i}", "to": channel})

    def read() -> None:
        while True:
            channel, message = layer.receive(["plain", "proc!", "single?x"], block=True)
            if channel is None:
                if done_sending.is_set():
                    return
                continue
            with lock:
                received.append((channel, message["id"]))
                if channel != message["to"]:
                    misrouted.append((channel, message))

    readers = [threading.Thread(target=read) for _ in range(4)]
    writers = [threading.Thread(target=send, args=(s,)) for s in range(senders)]
    for thread in readers + writers:
        thread.start()
    for thread in writers:
        thread.join(30)
    done_sending.set()
    for thread in readers:
        thread.join(30)
    ids = [i for _, i in received]
    assert misrouted == []
    assert len(ids) == len(expected)
    assert set(ids) == expected


# -- process-specific and single-reader channels ------------------------------------


def test_local_channels_are_read_through_their_prefix(layer: Any) -> None:
    layer.send("daphne!one", {"to": "one"})
    layer.send("daphne!two", {"to": "two"})
    layer.send("daphne.x!one", {"to": "other prefix"})
    layer.send("daphne", {"to": "plain"})
    assert drain(layer, ["daphne!"]) == [
        ("daphne!one", {"to": "one"}),
        ("daphne!two", {"to": "two"}),
    ]
    assert drain(layer, ["daphne.x!"]) == [("daphne.x!one", {"to": "other prefix"})]
    assert drain(layer, ["daphne"]) == [("daphne", {"to": "plain"})]


def test_two_prefixes_are_kept_apart(layer: Any) -> None:
    layer.send("worker1!a", {"p": 1})
    layer.send("worker2!a", {"p": 2})
    layer.send("worker!a", {"p": 0})
    assert drain(layer, ["worker1!"]) == [("worker1!a", {"p": 1})]
    assert drain(layer, ["worker2!"]) == [("worker2!a", {"p": 2})]
    assert drain(layer, ["worker!"]) == [("worker!a", {"p": 0})]


def test_single_reader_channels_are_read_by_full_name(layer: Any) -> None:
    layer.send("reply?abc", {"to": "abc"})
    layer.send("reply?def", {"to": "def"})
    assert layer.receive(["reply?"]) == (None, None)
    assert layer.receive(["reply"]) == (None, None)
    assert layer.receive(["reply?def"]) == ("reply?def", {"to": "def"})
    assert layer.receive(["reply?def"]) == (None, None)
    assert layer.receive(["reply?abc"]) == ("reply?abc", {"to": "abc"})


def test_new_channel_names_are_fresh_and_unguessable(layer: Any) -> None:
    for pattern in ("http.response!", "reply?", "a!"):
        names = [layer.new_channel(pattern) for _ in range(300)]
        assert len(set(names)) == len(names)
        tails = [name[len(pattern) :] for name in names]
        assert all(name.startswith(pattern) for name in names)
        alphabet = set("".join(tails))
        bits = min(len(tail) for tail in tails) * math.log2(len(alphabet))
        assert bits >= 96, (pattern, tails[0], bits)
        for name in names[:5]:
            layer.send(name, {"name": name})
        reader = pattern if pattern.endswith("!") else None
        for name in names[:5]:
            assert layer.receive([reader or name]) == (name, {"name": name})


@pytest.mark.parametrize(
    "pattern", ["plain", "reply!x", "reply?x", "", "bad name!", "x" * 99 + "!", None]
)
def test_new_channel_pattern_must_end_in_bang_or_question(layer: Any, pattern: str) -> None:
    with pytest.raises(InvalidChannelName):
        layer.new_channel(pattern)


# -- capacity -----------------------------------------------------------------------


def test_default_capacity_is_100(layer: Any) -> None:
    for i in range(100):
        layer.send("cap", {"i": i})
    with pytest.raises(ChannelFull):
        layer.send("cap", {"i": 100})
    assert layer.channel_statistics("cap")["capacity"] == 100
    assert [m["i"] for _, m in drain(layer, ["cap"])] == list(range(100))


def test_full_channel_raises_channel_full_and_keeps_its_messages(make_layer: Any) -> None:
    layer = make_layer(capacity=3)
    for i in range(3):
        layer.send("cap", {"i": i})
    with pytest.raises(ChannelFull):
        layer.send("cap", {"i": 3})
    with pytest.raises(layer.ChannelFull):
        layer.send("cap", {"i": 4})
    layer.send("cap.other", {"i": 0})
    assert layer.receive(["cap"]) == ("cap", {"i": 0})
    layer.send("cap", {"i": 5})
    assert [m["i"] for _, m in drain(layer, ["cap"])] == [1, 2, 5]
    assert issubclass(ChannelFull, ChannelsError)
    assert layer.global_statistics()["channel_full_count"] == 2


def test_send_soon_tells_each_send_its_outcome(make_layer: Any) -> None:
    # send_soon is send for a caller that need not wait: with no round trip in flight
    # it sends now and reports before it returns; a full channel is False, and the
    # message's own errors are raised, with nothing reported and nothing sent.
    layer = make_layer(capacity=2)
    outcomes: list[Any] = []
    for i in range(3):
        layer.send_soon("soon", {"i": i}, outcomes.append)
    assert outcomes == [True, True, False]
    with pytest.raises(MessageTooLarge):
        layer.send_soon("soon.big", {"b": b"x" * MiB}, outcomes.append)
    with pytest.raises(InvalidChannelName):
        layer.send_soon("soon!", {}, outcomes.append)
    assert len(outcomes) == 3
    assert [m["i"] for _, m in drain(layer, ["soon", "soon.big"])] == [0, 1]
    stats = layer.global_statistics()
    assert stats["channel_full_count"] == 1


def test_channel_capacity_glob_overrides(make_layer: Any) -> None:
    layer = make_layer(capacity=2, channel_capacity={"big.*": 5, "tiny": 1, "proc*": 4})
    cases = {"big.one": 5, "big.two": 5, "tiny": 1, "tiny.not": 2, "other": 2, "proc!x": 4}
    for channel, capacity in cases.items():
        assert layer.channel_statistics(channel)["capacity"] == capacity
        for i in range(capacity):
            layer.send(channel, {"i": i})
        with pytest.raises(ChannelFull):
            layer.send(channel, {"i": capacity})
    for channel, capacity in cases.items():
        reader = "proc!" if channel == "proc!x" else channel
        assert len(drain(layer, [reader])) == capacity


def test_local_channels_count_against_their_prefix(make_layer: Any) -> None:
    layer = make_layer(capacity=3)
    layer.send("proc!a", {"i": 0})
    layer.send("proc!b", {"i": 1})
    layer.send("proc!c", {"i": 2})
    with pytest.raises(ChannelFull):
        layer.send("proc!d", {"i": 3})
    with pytest.raises(ChannelFull):
        layer.send("proc!a", {"i": 4})
    layer.send("other!a", {"i": 5})  # another process's queue is not full
    layer.send("proc?a", {"i": 6})  # single-reader channels have their own queue
    layer.send("proc?b", {"i": 6})
    for name in ("proc!a", "proc!zzz", "proc!"):
        stats = layer.channel_statistics(name)
        assert stats["messages_pending"] == 3
        assert stats["capacity"] == 3
    assert len(drain(layer, ["proc!"])) == 3


# -- groups -------------------------------------------------------------------------


def test_send_group_reaches_every_kind_of_member(layer: Any) -> None:
    members = ["plain", "single?r1", "proc!a", "proc!b", "other.proc!c"]
    for member in members:
        layer.group_add("room", member)
    layer.group_add("elsewhere", "outsider")
    layer.send_group("room", {"text": "hi"})
    got = drain(layer, ["plain", "single?r1", "proc!", "other.proc!", "outsider"])
    assert sorted(channel for channel, _ in got) == sorted(members)
    assert all(message == {"text": "hi"} for _, message in got)


def test_send_group_to_many_local_members_writes_once_per_process(layer: Any) -> None:
    members = [f"proc!m{i}" for i in range(300)]
    for member in members:
        layer.group_add("crowd", member)
    layer.group_add("crowd", "other!x")
    layer.send_group("crowd", {"text": "all"})
    # One queued message per process queue, whatever the number of members.
    assert layer.channel_statistics("proc!")["messages_pending"] == 1
    assert layer.channel_statistics("other!")["messages_pending"] == 1
    got = drain(layer, ["proc!"])
    assert Counter(channel for channel, _ in got) == Counter(members)
    assert all(message == {"text": "all"} for _, message in got)
    assert drain(layer, ["other!"]) == [("other!x", {"text": "all"})]


def test_send_group_to_local_members_interleaves_with_direct_sends(layer: Any) -> None:
    layer.group_add("g", "proc!a")
    layer.group_add("g", "proc!b")
    layer.send("proc!a", {"n": 1})
    layer.send_group("g", {"n": 2})
    layer.send("proc!b", {"n": 3})
    got = drain(layer, ["proc!"])
    assert got[0] == ("proc!a", {"n": 1})
    assert sorted(got[1:3]) == [("proc!a", {"n": 2}), ("proc!b", {"n": 2})]
    assert got[3] == ("proc!b", {"n": 3})


def drain_batches(layer: Any, channels: list[str], max_messages: int = 100, **kw: Any) -> list[Any]:
    """Every batch receive_batch() returns for *channels* until one comes back empty."""
    batches = []
    for _ in range(10000):
        batch = layer.receive_batch(channels, max_messages=max_messages, **kw)
        if not batch:
            return batches
        batches.append(batch)
    raise AssertionError("receive_batch never ran dry")


def test_receive_batch_returns_a_group_send_to_local_members_at_once(layer: Any) -> None:
    members = [f"proc!m{i}" for i in range(50)]
    for member in members:
        layer.group_add("crowd", member)
    layer.group_add("crowd", "other!x")
    layer.send_group("crowd", {"text": "all"})
    batch = layer.receive_batch(["proc!"], max_messages=100)
    assert Counter(channel for channel, _ in batch) == Counter(members)
    assert all(message == {"text": "all"} for _, message in batch)
    assert layer.receive_batch(["proc!"]) == []
    assert layer.receive(["proc!"]) == (None, None)
    assert layer.receive_batch(["other!"]) == [("other!x", {"text": "all"})]


def test_receive_batch_never_exceeds_max_messages(layer: Any) -> None:
    members = [f"proc!m{i}" for i in range(50)]
    for member in members:
        layer.group_add("crowd", member)
    layer.send_group("crowd", {"n": 1})
    layer.send_group("crowd", {"n": 2})
    layer.send("proc!m3", {"n": 3})
    batches = drain_batches(layer, ["proc!"], max_messages=7, max_records=10)
    assert all(1 <= len(batch) <= 7 for batch in batches)
    got = [item for batch in batches for item in batch]
    assert Counter((c, m["n"]) for c, m in got) == Counter(
        [(c, 1) for c in members] + [(c, 2) for c in members] + [("proc!m3", 3)]
    )


def test_receive_batch_keeps_each_channels_order(layer: Any) -> None:
    layer.group_add("g", "proc!a")
    layer.group_add("g", "proc!b")
    for i in range(6):
        layer.send("proc!a", {"i": i, "how": "direct"})
        layer.send_group("g", {"i": i, "how": "group"})
        layer.send("plain", {"i": i})
    for max_messages, max_records in [(1, 1), (3, 1), (3, 5), (100, 100)]:
        if max_messages != 1:  # the first pass leaves the queues empty: refill
            for i in range(6):
                layer.send("proc!a", {"i": i, "how": "direct"})
                layer.send_group("g", {"i": i, "how": "group"})
                layer.send("plain", {"i": i})
        batches = drain_batches(
            layer, ["proc!", "plain"], max_messages=max_messages, max_records=max_records
        )
        got = [item for batch in batches for item in batch]
        expected_a = [(i, how) for i in range(6) for how in ("direct", "group")]
        assert [(m["i"], m["how"]) for c, m in got if c == "proc!a"] == expected_a
        assert [m["i"] for c, m in got if c == "proc!b"] == list(range(6))
        assert [m["i"] for c, m in got if c == "plain"] == list(range(6))


def test_receive_batch_takes_at_most_max_records_from_the_queues(layer: Any) -> None:
    for i in range(5):
        layer.send("work", {"i": i})
    assert layer.receive_batch(["work"]) == [("work", {"i": 0})]  # one record by default
    batch = layer.receive_batch(["work"], max_records=3)
    assert [m["i"] for _, m in batch] == [1, 2, 3]
    assert layer.receive_batch(["work"], max_records=10) == [("work", {"i": 4})]
    with pytest.raises(ValueError):
        layer.receive_batch(["work"], max_messages=0)


def test_receive_batch_and_receive_share_the_members_once(layer: Any) -> None:
    members = [f"proc!m{i}" for i in range(30)]
    for member in members:
        layer.group_add("crowd", member)
    layer.send_group("crowd", {"text": "x"})
    first = layer.receive_batch(["proc!"], max_messages=10)
    rest = drain(layer, ["proc!"])
    assert len(first) == 10
    assert Counter(c for c, _ in first + rest) == Counter(members)


def test_receive_batch_gives_each_member_its_own_dict(layer: Any) -> None:
    for member in ("proc!a", "proc!b", "proc!c"):
        layer.group_add("g", member)
    layer.send_group("g", {"text": "hi", "n": 1})
    batch = layer.receive_batch(["proc!"])
    batch[0][1]["n"] = 2
    batch[0][1]["extra"] = True
    assert [message for _, message in batch[1:]] == [{"text": "hi", "n": 1}] * 2


def test_receive_batch_excludes_expired_messages(make_layer: Any) -> None:
    layer = make_layer(expiry=1)
    for member in ("proc!a", "proc!b", "proc!c"):
        layer.group_add("g", member)
    layer.send("plain", {"n": "old"})
    layer.send_group("g", {"n": "old-group"})
    assert len(layer.receive_batch(["proc!"], max_messages=1)) == 1  # two left, expanded
    layer.send_group("g", {"n": "old-group-2"})  # not expanded yet
    time.sleep(1.1)
    assert layer.receive_batch(["proc!", "plain"], max_records=10) == []
    layer.send_group("g", {"n": "new"})
    batch = layer.receive_batch(["proc!", "plain"])
    assert sorted(batch) == [(c, {"n": "new"}) for c in ("proc!a", "proc!b", "proc!c")]


def test_receive_batch_waits_then_gives_up_empty(make_layer: Any) -> None:
    layer = make_layer(receive_timeout=0.3)
    started = time.monotonic()
    assert layer.receive_batch(["empty", "empty!"], block=True) == []
    assert 0.25 <= time.monotonic() - started < 1.5
    layer.send("ready", {"x": 1})
    started = time.monotonic()
    assert layer.receive_batch(["ready"], block=True) == [("ready", {"x": 1})]
    assert time.monotonic() - started < 0.5


def test_receive_batch_wakes_on_a_group_send_from_another_thread(
    make_layer: Any, layer_backend: str
) -> None:
    receiver = make_layer(receive_timeout=10)
    sender = receiver if layer_backend == "memory" else make_layer(receive_timeout=10)
    members = [f"proc!m{i}" for i in range(20)]
    for member in members:
        sender.group_add("wake", member)
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(receiver.receive_batch(["proc!"], True)))
    thread.start()
    time.sleep(0.3)
    sent_at = time.monotonic()
    sender.send_group("wake", {"w": 1})
    thread.join(10)
    assert time.monotonic() - sent_at < 1.0
    assert sorted(result[0]) == [(member, {"w": 1}) for member in sorted(members)]


def test_receive_batch_at_most_once_with_many_reader_threads(make_layer: Any) -> None:
    layer = make_layer(capacity=1000, receive_timeout=0.2)
    members = [f"proc!m{i}" for i in range(200)]
    for member in members:
        layer.group_add("crowd", member)
    for i in range(5):
        layer.send_group("crowd", {"i": i})
        layer.send("proc!m0", {"i": 100 + i})
    received: list[tuple[str, int]] = []
    lock = threading.Lock()

    def read() -> None:
        while True:
            batch = layer.receive_batch(["proc!"], block=True, max_messages=16, max_records=2)
            if not batch:
                return
            with lock:
                received.extend((channel, message["i"]) for channel, message in batch)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    expected = [(m, i) for m in members for i in range(5)] + [
        ("proc!m0", 100 + i) for i in range(5)
    ]
    assert Counter(received) == Counter(expected)


def test_receive_batch_validates_names(layer: Any) -> None:
    with pytest.raises(InvalidChannelName):
        layer.receive_batch("proc!")
    with pytest.raises(InvalidChannelName):
        layer.receive_batch(["proc!abc"])
    with pytest.raises(InvalidChannelName):
        layer.receive_batch(["bad name"])
    assert layer.receive_batch([]) == []


def test_send_group_never_raises_channel_full(make_layer: Any) -> None:
    layer = make_layer(capacity=1)
    for member in ("full", "free", "full.proc!a", "free.proc!a"):
        layer.group_add("g", member)
    layer.send("full", {"n": "old"})
    layer.send("full.proc!z", {"n": "old"})
    before = layer.global_statistics()
    layer.send_group("g", {"n": "new"})
    after = layer.global_statistics()
    assert drain(layer, ["full"]) == [("full", {"n": "old"})]
    assert drain(layer, ["full.proc!"]) == [("full.proc!z", {"n": "old"})]
    assert drain(layer, ["free"]) == [("free", {"n": "new"})]
    assert drain(layer, ["free.proc!"]) == [("free.proc!a", {"n": "new"})]
    assert after["group_full_count"] - before["group_full_count"] >= 2
    assert after["channel_full_count"] == before["channel_full_count"]
    # A full normal member is counted once per group send.
    layer.group_discard("g", "full.proc!a")
    layer.send("full", {"n": "old"})
    layer.send_group("g", {"n": "again"})
    assert layer.global_statistics()["group_full_count"] - after["group_full_count"] == 1


def test_send_group_to_empty_group_is_a_no_op(layer: Any) -> None:
    layer.send_group("nobody", {"x": 1})
    assert layer.overview()["channels"] == {}


def test_group_add_is_idempotent(layer: Any) -> None:
    for _ in range(3):
        layer.group_add("g", "member")
        layer.group_add("g", "proc!a")
    assert sorted(layer.group_channels("g")) == ["member", "proc!a"]
    layer.send_group("g", {"x": 1})
    assert drain(layer, ["member", "proc!"]) in (
        [("member", {"x": 1}), ("proc!a", {"x": 1})],
        [("proc!a", {"x": 1}), ("member", {"x": 1})],
    )


def test_group_discard(layer: Any) -> None:
    for member in ("a", "b", "proc!c", "proc!d"):
        layer.group_add("g", member)
    layer.group_discard("g", "a")
    layer.group_discard("g", "proc!c")
    layer.group_discard("g", "never-a-member")
    layer.group_discard("no-such-group", "a")
    assert sorted(layer.group_channels("g")) == ["b", "proc!d"]
    layer.send_group("g", {"x": 1})
    assert sorted(drain(layer, ["a", "b", "proc!"])) == [("b", {"x": 1}), ("proc!d", {"x": 1})]
    layer.group_discard("g", "b")
    layer.group_discard("g", "proc!d")
    assert layer.group_channels("g") == []
    layer.send_group("g", {"x": 2})
    assert drain(layer, ["a", "b", "proc!"]) == []


def test_group_channels_lists_members_per_group(layer: Any) -> None:
    assert layer.group_channels("empty") == []
    members = {"one": ["a", "b?x", "c!y"], "two": ["a"]}
    for group, channels in members.items():
        for channel in channels:
            layer.group_add(group, channel)
    result = layer.group_channels("one")
    assert isinstance(result, list)
    assert sorted(result) == sorted(members["one"])
    assert layer.group_channels("two") == ["a"]


def test_expiry_of_messages_and_group_memberships(make_layer: Any) -> None:
    """One pass of about 1.3 s covering every expiry rule (keeps the suite fast)."""
    layer = make_layer(expiry=1, group_expiry=1, capacity=2)
    layer.send("exp", {"n": "old-1"})
    layer.send("exp", {"n": "old-2"})
    layer.send("proc!a", {"n": "old-local"})
    layer.send("single?x", {"n": "old-single"})
    for member in ("kept", "dropped", "proc!kept", "proc!dropped"):
        layer.group_add("g", member)
    layer.send_group("g", {"n": "old-group"})
    with pytest.raises(ChannelFull):
        layer.send("exp", {"n": "refused"})
    time.sleep(0.6)
    layer.group_add("g", "kept")  # refreshes the membership for another second
    layer.group_add("g", "proc!kept")
    layer.send("exp.late", {"n": "late"})
    time.sleep(0.65)
    # Expired messages no longer count against capacity and are never delivered.
    assert layer.channel_statistics("exp")["messages_pending"] == 0
    layer.send("exp", {"n": "new-1"})
    layer.send("exp", {"n": "new-2"})
    assert drain(layer, ["exp"]) == [("exp", {"n": "new-1"}), ("exp", {"n": "new-2"})]
    assert drain(layer, ["proc!", "single?x", "kept", "dropped"]) == []
    # A message sent 0.65 s ago is still there.
    assert drain(layer, ["exp.late"]) == [("exp.late", {"n": "late"})]
    # Refreshed memberships stay, the others expired.
    assert sorted(layer.group_channels("g")) == ["kept", "proc!kept"]
    layer.send_group("g", {"n": "new-group"})
    got = drain(layer, ["kept", "dropped", "proc!"])
    assert sorted(got) == [("kept", {"n": "new-group"}), ("proc!kept", {"n": "new-group"})]
    assert layer.overview()["groups"] == {"g": 2}


# -- housekeeping -------------------------------------------------------------------


def test_flush_deletes_messages_and_groups(make_layer: Any) -> None:
    layer = make_layer()
    other = make_layer()  # a second object on the same storage
    layer.send("plain", {"x": 1})
    layer.send("proc!a", {"x": 1})
    layer.send("single?a", {"x": 1})
    layer.group_add("g", "plain")
    layer.group_add("g", "proc!a")
    layer.send_group("g", {"x": 2})
    layer.flush()
    assert drain(layer, ["plain", "proc!", "single?a"]) == []
    assert drain(other, ["plain", "proc!", "single?a"]) == []
    assert layer.group_channels("g") == []
    assert layer.overview() == {"channels": {}, "groups": {}}
    # The layer keeps working after a flush.
    layer.send("plain", {"x": 3})
    assert layer.receive(["plain"]) == ("plain", {"x": 3})


def test_channel_statistics(layer: Any) -> None:
    empty = layer.channel_statistics("stats")
    assert empty["messages_pending"] == 0
    assert empty["capacity"] == 100
    for i in range(4):
        layer.send("stats", {"i": i})
    layer.send("stats.proc!a", {"i": 0})
    layer.send("stats.proc!b", {"i": 1})
    time.sleep(0.2)
    stats = layer.channel_statistics("stats")
    assert stats["messages_pending"] == 4
    assert 0.15 <= stats["messages_max_age"] < 5
    assert layer.channel_statistics("stats.proc!")["messages_pending"] == 2
    layer.receive(["stats"])
    assert layer.channel_statistics("stats")["messages_pending"] == 3
    assert layer.channel_statistics("stats.other")["messages_pending"] == 0


def test_global_statistics_counts_this_layers_sends(make_layer: Any) -> None:
    layer = make_layer(capacity=1)
    start = layer.global_statistics()
    assert set(start) >= {"messages_count", "channel_full_count", "group_full_count"}
    assert all(isinstance(value, int) for value in start.values())
    layer.send("a", {"x": 1})
    with pytest.raises(ChannelFull):
        layer.send("a", {"x": 2})
    layer.group_add("g", "a")
    layer.group_add("g", "b")
    layer.group_add("g", "c")
    layer.send_group("g", {"x": 3})
    stats = layer.global_statistics()
    assert stats["messages_count"] - start["messages_count"] == 2
    assert stats["channel_full_count"] - start["channel_full_count"] == 1
    assert stats["group_full_count"] - start["group_full_count"] == 1


def test_overview_lists_non_empty_queues_and_groups(layer: Any) -> None:
    assert layer.overview() == {"channels": {}, "groups": {}}
    layer.send("plain", {"x": 1})
    layer.send("plain", {"x": 2})
    layer.send("proc!a", {"x": 1})
    layer.send("proc!b", {"x": 1})
    layer.send("single?a", {"x": 1})
    layer.send("gone", {"x": 1})
    layer.receive(["gone"])
    layer.group_add("g", "a")
    layer.group_add("g", "proc!b")
    layer.group_add("h", "a")
    layer.group_add("empty", "a")
    layer.group_discard("empty", "a")
    assert layer.overview() == {
        "channels": {"plain": 2, "proc!": 2, "single?a": 1},
        "groups": {"g": 2, "h": 1},
    }


def test_extensions(layer: Any) -> None:
    assert set(layer.extensions) >= {"groups", "flush", "statistics"}


def test_exceptions_are_layer_attributes_as_in_asgi_1(layer: Any) -> None:
    assert layer.ChannelFull is ChannelFull
    assert layer.MessageTooLarge is MessageTooLarge


def test_data_outlives_the_layer_object(make_layer: Any, layer_backend: str) -> None:
    first = make_layer()
    first.send("durable", {"x": 1})
    first.send("durable.proc!a", {"x": 2})
    first.group_add("g", "durable")
    first.close()
    second = make_layer()
    if layer_backend == "memory":
        # memory:// lives in its layer object: a new one starts empty.
        assert drain(second, ["durable", "durable.proc!"]) == []
        assert second.group_channels("g") == []
        return
    assert second.receive(["durable"]) == ("durable", {"x": 1})
    assert second.receive(["durable.proc!"]) == ("durable.proc!a", {"x": 2})
    assert second.group_channels("g") == ["durable"]


@pytest.mark.parametrize("layer_backend", SHARED_BACKENDS)
def test_two_layer_objects_share_storage(make_layer: Any) -> None:
    sender, receiver = make_layer(), make_layer()
    sender.group_add("g", "proc!a")
    receiver.send_group("g", {"x": 1})
    sender.send("direct", {"x": 2})
    assert receiver.receive(["proc!"]) == ("proc!a", {"x": 1})
    assert receiver.receive(["direct"]) == ("direct", {"x": 2})
    assert sender.receive(["direct", "proc!"]) == (None, None)


@pytest.mark.parametrize("layer_backend", SHARED_BACKENDS)
def test_prefix_option_keeps_layers_apart(make_layer: Any) -> None:
    blue, green = make_layer(prefix="blue"), make_layer(prefix="green")
    blue.send("shared", {"colour": "blue"})
    blue.group_add("g", "member")
    green.send("shared", {"colour": "green"})
    assert green.group_channels("g") == []
    green.send_group("g", {"colour": "green"})
    assert drain(blue, ["shared", "member"]) == [("shared", {"colour": "blue"})]
    blue.send("shared", {"colour": "blue"})
    blue.flush()  # clears blue only
    assert drain(green, ["shared"]) == [("shared", {"colour": "green"})]
    assert blue.overview() == {"channels": {}, "groups": {}}


# -- configuration ------------------------------------------------------------------


def test_options_are_read_from_the_url_query(make_layer: Any) -> None:
    layer = make_layer(
        expiry=7,
        group_expiry=9,
        capacity=11,
        channel_capacity={"http.*": 13},
        max_message_size=5000,
        receive_timeout=0.5,
    )
    assert layer.expiry == 7
    assert layer.group_expiry == 9
    assert layer.capacity == 11
    assert layer.max_message_size == 5000
    assert layer.receive_timeout == 0.5
    assert layer.channel_statistics("http.request")["capacity"] == 13
    assert layer.channel_statistics("other")["capacity"] == 11


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("colour=blue", id="unknown"),
        pytest.param("capacity=3&Expiry=1", id="wrong-case"),
        pytest.param("capacity=lots", id="not-a-number"),
        pytest.param("capacity=0", id="zero-capacity"),
        pytest.param("expiry=-1", id="negative-expiry"),
        pytest.param("channel_capacity=nocolon", id="bad-channel-capacity"),
    ],
)
def test_bad_option_is_refused(layer_url: str, query: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        layer_from_url(f"{layer_url}?{query}")
    if "colour" in query:
        for accepted in ("expiry", "capacity", "group_expiry", "channel_capacity"):
            assert accepted in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("", id="empty"),
        pytest.param("postgres://localhost/db", id="postgres"),
        pytest.param("amqp://localhost", id="amqp"),
        pytest.param("memory", id="no-scheme-separator"),
        pytest.param("/tmp/file.sqlite3", id="path"),
    ],
)
def test_unknown_scheme_is_refused_naming_the_accepted_ones(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        layer_from_url(url)
    for scheme in ("memory", "sqlite", "redis"):
        assert scheme in str(info.value)


# -- processes ----------------------------------------------------------------------


def _process_sender(url: str, name: str, count: int, channels: list[str]) -> None:
    layer = layer_from_url(url)
    for i in range(count):
        layer.send(channels[i % len(channels)], {"id": f"{name}-{i}"})
    layer.close()


def _process_receiver(url: str, channels: list[str], results: Any) -> None:
    layer = layer_from_url(url)
    got = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        channel, message = layer.receive(channels, block=True)
        if channel is None:
            continue
        if message.get("stop"):
            break
        got.append((channel, message["id"]))
    layer.close()
    results.put(got)


@pytest.mark.parametrize("layer_backend", SHARED_BACKENDS)
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_several_processes_send_and_receive_exactly_once(layer_url: str, start_method: str) -> None:
    ctx = multiprocessing.get_context(start_method)
    url = f"{layer_url}?capacity=5000&receive_timeout=0.5"
    channels = ["work", "work.proc!a", "work.proc!b"]
    readers = ["work", "work.proc!"]
    senders, per_sender, receivers = 3, 150, 3
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_process_receiver, args=(url, readers, results))
        for _ in range(receivers)
    ]
    procs += [
        ctx.Process(target=_process_sender, args=(url, f"s{s}", per_sender, channels))
        for s in range(senders)
    ]
    control = layer_from_url(url)
    try:
        for proc in procs:
            proc.start()
        for proc in procs[receivers:]:
            proc.join(30)
            assert proc.exitcode == 0
        # Every message is sent; wait until the receivers have taken them all, then
        # stop each receiver (one stop each: a stopped receiver reads no more).
        deadline = time.monotonic() + 30
        while control.overview()["channels"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert control.overview()["channels"] == {}
        for _ in range(receivers):
            control.send("work", {"stop": True})
        got = [results.get(timeout=30) for _ in range(receivers)]
        for proc in procs[:receivers]:
            proc.join(30)
            assert proc.exitcode == 0
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
        control.close()
    ids = [message_id for chunk in got for _, message_id in chunk]
    expected = {f"s{s}-{i}" for s in range(senders) for i in range(per_sender)}
    assert len(ids) == len(expected), Counter(ids).most_common(3)
    assert set(ids) == expected


def _fork_child(layer: Any, conn: Any) -> None:
    try:
        channel, message = layer.receive(["to-child"], block=True)
        layer.send("from-child", {"pid": os.getpid(), "got": message})
        layer.group_add("g", "child.proc!x")
        layer.send_group("g", {"to": "group"})
        local = drain(layer, ["child.proc!"])
        conn.send(("ok", channel, message, local))
    except BaseException as exc:  # report anything to the parent
        conn.send(("error", repr(exc), None, None))


@pytest.mark.parametrize("how", ["os.fork", "multiprocessing"])
def test_layer_keeps_working_after_fork(make_layer: Any, layer_backend: str, how: str) -> None:
    layer = make_layer(receive_timeout=2)
    # Use the layer in the parent first, so connections and locks exist before the fork.
    layer.send("warm", {"x": 1})
    assert layer.receive(["warm"], block=True) == ("warm", {"x": 1})
    layer.group_add("g", "parent")
    layer.send("to-child", {"hello": "child"})
    parent_end, child_end = multiprocessing.Pipe()
    if how == "os.fork":
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                _fork_child(layer, child_end)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    else:
        proc = multiprocessing.get_context("fork").Process(
            target=_fork_child, args=(layer, child_end)
        )
        proc.start()
        proc.join(30)
        assert proc.exitcode == 0
    assert parent_end.poll(5)
    status_, channel, message, local = parent_end.recv()
    assert status_ == "ok", channel
    assert (channel, message) == ("to-child", {"hello": "child"})
    assert local == [("child.proc!x", {"to": "group"})]
    # The parent's layer still works after the child used and dropped its copy.
    layer.send("after", {"x": 2})
    assert layer.receive(["after"], block=True) == ("after", {"x": 2})
    if layer_backend == "memory":
        # The child worked on its own copy of the memory; the parent's is untouched.
        assert layer.receive(["from-child", "parent"]) == (None, None)
        assert layer.receive(["to-child"]) == ("to-child", {"hello": "child"})
        return
    channel, message = layer.receive(["from-child"], block=True)
    assert channel == "from-child"
    assert message["got"] == {"hello": "child"}
    assert message["pid"] != os.getpid()
    assert layer.receive(["parent"]) == ("parent", {"to": "group"})
    assert layer.receive(["to-child"]) == (None, None)


def test_discard_channel_leaves_every_group(layer: Any) -> None:
    mine = layer.new_channel("contract.proc!")
    other = layer.new_channel("contract.proc!")
    for group in ("g1", "g2", "g3"):
        layer.group_add(group, mine)
    layer.group_add("g1", other)
    layer.discard_channel(mine)
    assert layer.group_channels("g1") == [other]
    assert layer.group_channels("g2") == []
    assert layer.group_channels("g3") == []
    layer.send_group("g1", {"n": 1})
    batch = layer.receive_batch(["contract.proc!"], max_messages=10)
    assert [c for c, _m in batch] == [other]


def test_forked_child_makes_names_its_parent_does_not(make_layer: Any) -> None:
    layer = make_layer()
    layer.new_channel("warm!")  # the parent has random bytes buffered before the fork
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write_end, "\n".join(layer.new_channel("n!") for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = set(pipe.read().decode().split("\n"))
    os.waitpid(pid, 0)
    parent = {layer.new_channel("n!") for _ in range(50)}
    assert len(child) == 50
    assert not child & parent
