"""What no producer, app or shutdown may do to the interface server: a bad message on
a socket's channel closes nothing; a socket that has gone leaves no membership; a
stopping server answers waiting requests at once; a missing worker is reported."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest
import requests
import test_interface
import websockets
from conftest import REDIS_SERVER, RedisServer
from servers import InterfaceProcess, Stack

from wsgi_channels.layers import layer_from_url

# The same fresh layer per module and backend as the interface tests use.
layer_url = test_interface.layer_url


def run(coro: Any) -> Any:
    return asyncio.run(coro)


BAD_MESSAGES = [
    pytest.param({"text": {"oops": 1}}, id="text-dict"),
    pytest.param({"text": 1}, id="text-int"),
    pytest.param({"bytes": 5}, id="bytes-int"),
    pytest.param({"bytes": "str"}, id="bytes-str"),
    pytest.param({"close": "x"}, id="close-str"),
    pytest.param({"close": 99999}, id="close-99999"),
    pytest.param({"close": -1}, id="close-negative"),
    pytest.param({"accept": "yes"}, id="accept-str"),
]


@pytest.mark.parametrize("bad", BAD_MESSAGES)
def test_a_bad_group_message_closes_no_socket(layer_url: str, bad: dict[str, Any]) -> None:
    layer = layer_from_url(layer_url)
    with Stack(layer_url, app="apps:websocket") as stack:

        async def talk() -> list[Any]:
            url = stack.ws_url + "/ws/group?g=badroom"
            async with websockets.connect(url) as one, websockets.connect(url) as two:
                layer.send_group("badroom", bad)
                layer.send_group("badroom", {"text": "after"})
                got = [await asyncio.wait_for(one.recv(), 5), await asyncio.wait_for(two.recv(), 5)]
                await one.send("still open")
                got.append(await asyncio.wait_for(one.recv(), 5))
                return got

        assert run(talk()) == ["after", "after", "still open"]
        stack.interface.stop()
        log = stack.interface.output
    assert log.count("dropped a group message") + log.count("dropped a message") >= 1
    assert "Traceback" not in log
    layer.close()


def test_a_bad_message_to_one_socket_is_dropped_alone(layer_url: str) -> None:
    layer = layer_from_url(layer_url)
    with Stack(layer_url, app="apps:websocket") as stack:

        async def talk() -> list[Any]:
            async with websockets.connect(stack.ws_url + "/ws/group?g=solo") as ws:
                (channel,) = layer.group_channels("solo")
                layer.send(channel, {"text": {"not": "a str"}})
                layer.send(channel, {"text": "fine"})
                return [await asyncio.wait_for(ws.recv(), 5)]

        assert run(talk()) == ["fine"]
    layer.close()


def test_a_socket_that_has_gone_leaves_no_membership(layer_url: str) -> None:
    layer = layer_from_url(layer_url)
    with Stack(layer_url, app="apps:stubborn_socket") as stack:

        async def visit() -> None:
            async with websockets.connect(stack.ws_url + "/ws/x") as ws:
                await ws.send("hi")
                assert await asyncio.wait_for(ws.recv(), 5) == "hi"
                assert len(layer.group_channels("stubborn")) == 1

        run(visit())
        deadline = time.monotonic() + 5
        while layer.group_channels("stubborn") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert layer.group_channels("stubborn") == []
    layer.close()


@pytest.mark.slow
def test_sigterm_answers_waiting_requests_with_503_at_once(layer_url: str) -> None:
    interface = InterfaceProcess(layer_url).start()  # no worker: requests wait
    try:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            waiting = pool.submit(requests.post, interface.url + "/order", data=b"x", timeout=20)
            time.sleep(1.0)
            layer = layer_from_url(layer_url)
            assert layer.channel_statistics("http.request")["messages_pending"] == 1
            started = time.monotonic()
            interface.signal(signal.SIGTERM)
            response = waiting.result()
            answered = time.monotonic() - started
        assert response.status_code == 503
        assert "Retry-After" in response.headers
        assert answered < 3, answered
        code = interface.stop()
        elapsed = time.monotonic() - started
    finally:
        if interface.alive:
            interface.stop()
    assert code == 0
    assert elapsed < 10, elapsed
    assert "Traceback" not in interface.output
    assert "CancelledError" not in interface.output
    # The 503 told the client that nothing ran: the request is gone from the layer, so
    # a worker started later cannot run it (and a retry runs it once).
    assert layer.channel_statistics("http.request")["messages_pending"] == 0
    assert layer.receive(["http.request"]) == (None, None)
    layer.close()


@pytest.mark.slow
def test_an_interface_without_worker_says_so(layer_url: str) -> None:
    interface = InterfaceProcess(
        layer_url, "--http-timeout", "3", env={"WSGI_CHANNELS_NO_WORKER_WARNING": "1"}
    ).start()
    try:
        response = requests.get(interface.url + "/anything", timeout=20)
        assert response.status_code == 504
        assert "no worker answered" in response.text
        interface.wait_for_output("waited more than")
    finally:
        interface.stop()
    assert "is a worker running" in interface.output


@pytest.mark.slow
@pytest.mark.fault
def test_a_redis_stall_does_not_freeze_the_event_loop() -> None:
    """DEBUG SLEEP holds Redis for 3 s: the interface's loop must go on answering
    pings (it waits on Redis only through asyncio, never in a blocking call)."""
    if REDIS_SERVER is None:
        pytest.skip("no redis-server binary on PATH")
    import threading

    server = RedisServer("--enable-debug-command", "yes")
    server.start()
    try:
        with Stack(server.url, app="apps:websocket") as stack:

            async def talk() -> float:
                async with websockets.connect(stack.ws_url + "/ws/group?g=stall") as ws:
                    await ws.send("warm")
                    assert await asyncio.wait_for(ws.recv(), 5) == "warm"
                    # Traffic in flight when Redis stalls: a request waits for it.
                    sleeper = threading.Thread(
                        target=lambda: server.client().execute_command("DEBUG", "SLEEP", 3)
                    )
                    sleeper.start()
                    await asyncio.sleep(0.3)
                    busy = threading.Thread(
                        target=lambda: requests.get(stack.url + "/hello", timeout=10)
                    )
                    busy.start()
                    await asyncio.sleep(0.2)
                    started = time.monotonic()
                    pong = await ws.ping()
                    await asyncio.wait_for(pong, 5)
                    latency = time.monotonic() - started
                    sleeper.join()
                    busy.join()
                    return latency

            latency = run(talk())
    finally:
        server.cleanup()
    assert latency < 0.5, latency


@pytest.mark.slow
@pytest.mark.fault
def test_redis_out_of_memory_is_named_and_logged_once_per_run() -> None:
    if REDIS_SERVER is None:
        pytest.skip("no redis-server binary on PATH")
    server = RedisServer("--maxmemory-policy", "noeviction")
    server.start()
    try:
        interface = InterfaceProcess(server.url).start()
        try:
            client = server.client()
            for filler in range(64):
                client.set(f"filler:{filler}", b"x" * 65536)
            # Now over its memory limit: Redis refuses every write.
            client.config_set("maxmemory", "1mb")
            statuses = [
                requests.get(interface.url + f"/r{i}", timeout=10).status_code for i in range(40)
            ]
        finally:
            interface.stop()
    finally:
        server.cleanup()
    assert set(statuses) == {503}
    log = interface.output
    assert "out of memory" in log
    assert log.count("cannot pass") <= 2, log
