"""The interface server in-process: :class:`InterfaceServer` driven by asgiref's
``ApplicationCommunicator`` on the memory layer, with the test playing the worker
through the layer's API. No socket, no uvicorn, no thread: what the end-to-end tests in
``test_interface.py`` show through real servers, shown here one rule at a time, fast.

The worker's side is written with what the worker itself uses (``protocol.py``'s keys
and ``adapter.websocket_replies``), so these tests cannot drift from production.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Sequence
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator

from wsgi_channels.adapter import websocket_replies
from wsgi_channels.interface import InterfaceConfig, InterfaceServer
from wsgi_channels.interface.protocols import SHUTDOWN_KEY
from wsgi_channels.interface.routing import STALL_TIMEOUT
from wsgi_channels.layers.base import ChannelFull
from wsgi_channels.layers.memory import MemoryChannelLayer
from wsgi_channels.protocol import (
    CONTROL_KEY,
    DEADLINE_KEY,
    DONE_KEY,
    EXT_KEY,
    HTTP_REQUEST,
    INTERFACE_PREFIX,
    SUBPROTOCOL_KEY,
    WORKER_PREFIX,
    disconnect_notice,
)

Message = dict[str, Any]

CONNECT = "websocket.connect"
RECEIVE = "websocket.receive"
DISCONNECT = "websocket.disconnect"

HOST = b"chat.example:8000"
CLIENT = ["10.0.0.7", 51000]
SERVER = ["chat.example", 8000]


def run(scenario: Awaitable[None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(scenario, 5)

    asyncio.run(bounded())


# -- the client's side: ASGI scopes and communicators -------------------------------------


def websocket_scope(
    path: str = "/ws/room",
    *,
    query_string: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = (),
    subprotocols: Sequence[str] = (),
    origin: bytes = b"http://chat.example:8000",
) -> Message:
    return {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query_string,
        "root_path": "",
        "headers": [(b"host", HOST), (b"origin", origin), *headers],
        "client": tuple(CLIENT),
        "server": tuple(SERVER),
        "subprotocols": list(subprotocols),
    }


def http_scope(
    method: str = "POST", path: str = "/orders", headers: Sequence[tuple[bytes, bytes]] = ()
) -> Message:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", HOST), *headers],
        "client": tuple(CLIENT),
        "server": tuple(SERVER),
    }


class SlowClient(ApplicationCommunicator):
    """A client that reads its socket slowly: the app's ``send`` waits while one
    message is unread (as uvicorn's does while the socket's buffer is full)."""

    @property
    def output_queue(self) -> asyncio.Queue[Message]:
        if self._output_queue is None:
            self._output_queue = asyncio.Queue(maxsize=1)
        return self._output_queue


def text(value: str) -> Message:
    return {"type": "websocket.send", "text": value}


# -- the worker's side: the layer's API ---------------------------------------------------


def finished(event: Message, replies: Iterable[Message]) -> list[Message]:
    """*replies* to *event* as our worker sends them: the last carries ``done``."""
    out = [dict(reply) for reply in replies]
    if out:
        out[-1][DONE_KEY] = event["order"]
    else:
        out.append({DONE_KEY: event["order"]})
    return out


def accepted(event: Message, subprotocol: str | None = None) -> list[Message]:
    """Our worker's answer when the app accepts *event* (a ``websocket.connect``),
    choosing *subprotocol* with a ``Sec-WebSocket-Protocol`` response header."""
    replies = websocket_replies("connect", 200, [], b"")
    if subprotocol is not None:
        replies[0][SUBPROTOCOL_KEY] = subprotocol
    return finished(event, replies)


class Harness:
    """One interface server on a fresh memory layer, and the worker's view of it."""

    def __init__(self, layer: MemoryChannelLayer, app: InterfaceServer) -> None:
        self.layer = layer
        self.app = app
        self.clients: list[ApplicationCommunicator] = []
        self.lifespan = ApplicationCommunicator(
            app, {"type": "lifespan", "asgi": {"version": "3.0"}}
        )
        self.stopped = False

    async def start(self) -> None:
        await self.lifespan.send_input({"type": "lifespan.startup"})
        assert await self.lifespan.receive_output() == {"type": "lifespan.startup.complete"}

    async def stop(self) -> None:
        """Lifespan shutdown, as uvicorn sends it on SIGTERM."""
        if self.stopped:
            return
        self.stopped = True
        await self.lifespan.send_input({"type": "lifespan.shutdown"})
        assert await self.lifespan.receive_output() == {"type": "lifespan.shutdown.complete"}
        await self.lifespan.wait()

    async def take(self, channel: str, timeout: float = 1.0) -> Message:
        """The next message on *channel*, as a worker would receive it."""
        deadline = time.monotonic() + timeout
        while True:
            name, message = self.layer.receive([channel], block=False)
            if name is not None:
                assert isinstance(message, dict)
                return message
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing reached {channel!r} in {timeout} s")
            await asyncio.sleep(0.001)

    async def nothing_on(self, *channels: str) -> bool:
        """Whether, after the server has had time to act, *channels* are still empty."""
        await asyncio.sleep(0.03)
        return all(self.layer.receive([c], block=False) == (None, None) for c in channels)

    def reply(self, channel: str, replies: Iterable[Message]) -> None:
        """Send *replies* as a worker of ``wsgi-channels run`` does: the layer hands them
        to this process's interface without a round trip."""
        for message in replies:
            self.layer.send(channel, message)

    def client(self, scope: Message, cls: type = ApplicationCommunicator) -> Any:
        communicator = cls(self.app, scope)
        self.clients.append(communicator)
        return communicator

    async def connect(
        self, scope: Message | None = None, cls: type = ApplicationCommunicator
    ) -> Any:
        """A client that has sent its handshake, and the ``websocket.connect`` it made."""
        ws = self.client(scope or websocket_scope(), cls)
        await ws.send_input({"type": "websocket.connect"})
        return ws, await self.take(CONNECT)

    async def open(self, scope: Message | None = None, cls: type = ApplicationCommunicator) -> Any:
        """A client whose socket the worker accepted, and its reply channel."""
        ws, event = await self.connect(scope, cls)
        self.reply(event["reply_channel"], accepted(event))
        assert await ws.receive_output() == {"type": "websocket.accept"}
        return ws, event["reply_channel"]


@contextlib.asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[Harness]:
    """An interface server started and stopped through its lifespan, as uvicorn does."""
    layer = MemoryChannelLayer()
    server = Harness(layer, InterfaceServer(layer, InterfaceConfig(**options)))
    await server.start()
    try:
        yield server
    finally:
        for client in server.clients:
            client.stop(exceptions=False)
        await asyncio.gather(*(c.future for c in server.clients), return_exceptions=True)
        await server.stop()
        layer.close()


@contextlib.contextmanager
def from_another_process(layer: MemoryChannelLayer) -> Iterator[None]:
    """Sends that go through the layer's queues, as a worker in another process makes
    them, instead of the in-process hand-over (which the memory layer keeps in
    ``_local_sinks``)."""
    sinks, layer._local_sinks = layer._local_sinks, {}
    try:
        yield
    finally:
        layer._local_sinks = sinks


async def outputs_until_done(client: ApplicationCommunicator) -> list[Message]:
    """Everything the app sends to *client* until the app returns."""
    out: list[Message] = []
    while True:
        get = asyncio.ensure_future(client.output_queue.get())
        await asyncio.wait([get, client.future], return_when=asyncio.FIRST_COMPLETED)
        if get.done():
            out.append(get.result())
            continue
        get.cancel()
        break
    while not client.output_queue.empty():
        out.append(client.output_queue.get_nowait())
    client.future.result()
    return out


# -- accept -------------------------------------------------------------------------------


def test_the_connect_event_carries_the_handshake() -> None:
    async def scenario() -> None:
        async with serving(websocket_connect_timeout=2.0) as server:
            scope = websocket_scope(
                "/ws/room",
                query_string=b"room=7",
                headers=[(b"cookie", b"session=abc")],
                subprotocols=["chat", "superchat"],
            )
            sent = time.time()
            _ws, event = await server.connect(scope)

        channel = event["reply_channel"]
        assert channel.startswith(server.app.prefix) and channel != server.app.prefix
        assert server.app.prefix.startswith(INTERFACE_PREFIX)
        # At least 96 random bits in the part the process prefix does not fix
        # (base64url: 6 bits a character).
        local = channel.removeprefix(server.app.prefix)
        assert re.fullmatch(r"[A-Za-z0-9_-]+", local) and len(local) * 6 >= 96
        assert event["order"] == 0
        assert event["path"] == "/ws/room"
        assert event["query_string"] == b"room=7"
        assert event["scheme"] == "ws"
        assert event["root_path"] == ""
        assert event["client"] == CLIENT and event["server"] == SERVER
        # wsproto takes the offer out of the headers; the app reads it from its environ.
        assert event["headers"] == [
            [b"host", HOST],
            [b"origin", b"http://chat.example:8000"],
            [b"cookie", b"session=abc"],
            [b"sec-websocket-protocol", b"chat, superchat"],
        ]
        assert event[EXT_KEY] == 1
        assert sent + 2.0 <= event[DEADLINE_KEY] <= time.time() + 2.0

    run(scenario())


@pytest.mark.parametrize(
    ("chosen", "accept"),
    [
        pytest.param(None, {"type": "websocket.accept"}, id="none"),
        pytest.param(
            "superchat", {"type": "websocket.accept", "subprotocol": "superchat"}, id="offered"
        ),
        # RFC 6455 4.2.2: only a subprotocol the client offered may be selected.
        pytest.param("other", {"type": "websocket.accept"}, id="not-offered"),
    ],
)
def test_the_workers_accept_opens_the_socket(chosen: str | None, accept: Message) -> None:
    async def scenario() -> None:
        async with serving() as server:
            ws, event = await server.connect(websocket_scope(subprotocols=["chat", "superchat"]))
            assert await ws.receive_nothing(0.03)  # nothing before the app decides
            server.reply(event["reply_channel"], accepted(event, chosen))
            assert await ws.receive_output() == accept
            await ws.send_input({"type": "websocket.receive", "text": "hi"})
            assert (await server.take(RECEIVE))["text"] == "hi"

    run(scenario())


@pytest.mark.parametrize(
    "rejection",
    [
        pytest.param(websocket_replies("connect", 403, [], b""), id="app-403"),
        pytest.param([{"close": 4003}], id="close-code"),
    ],
)
def test_the_workers_rejection_refuses_the_handshake(rejection: list[Message]) -> None:
    async def scenario() -> None:
        async with serving() as server:
            ws, event = await server.connect()
            server.reply(event["reply_channel"], finished(event, rejection))
            # A close before the accept: the ASGI server answers the handshake with 403.
            assert await ws.receive_output() == {"type": "websocket.close"}
            await ws.wait()
            assert await server.nothing_on(RECEIVE, DISCONNECT)

    run(scenario())


def test_no_decision_within_the_connect_timeout_refuses_the_handshake() -> None:
    async def scenario() -> None:
        async with serving(websocket_connect_timeout=0.1) as server:
            started = time.monotonic()
            ws, _event = await server.connect()
            assert await ws.receive_output(1.0) == {"type": "websocket.close"}
            waited = time.monotonic() - started
            assert 0.09 <= waited < 0.5, waited
            await ws.wait()

    run(scenario())


def test_an_origin_not_allowed_is_refused_before_the_layer() -> None:
    async def scenario() -> None:
        async with serving() as server:
            ws = server.client(websocket_scope(origin=b"https://evil.example"))
            await ws.send_input({"type": "websocket.connect"})
            assert await ws.receive_output() == {"type": "websocket.close", "code": 1008}
            await ws.wait()
            assert await server.nothing_on(CONNECT)

    run(scenario())


@pytest.mark.parametrize(
    ("close", "code"),
    [pytest.param(True, 1000, id="true"), pytest.param(4001, 4001, id="code")],
)
def test_a_close_after_the_accept_closes_with_its_code(close: bool | int, code: int) -> None:
    async def scenario() -> None:
        async with serving() as server:
            ws, channel = await server.open()
            server.reply(channel, [{"text": "bye"}, {"close": close}])
            assert await ws.receive_output() == text("bye")
            assert await ws.receive_output() == {"type": "websocket.close", "code": code}

    run(scenario())


# -- early frames -------------------------------------------------------------------------


def test_replies_before_the_accept_are_written_after_it_in_order() -> None:
    async def scenario() -> None:
        async with serving() as server:
            ws, event = await server.connect()
            channel = event["reply_channel"]
            # A group message, or one released by ChannelsMiddleware, before the accept.
            server.reply(channel, [{"text": "one"}, {"bytes": b"two"}])
            assert await ws.receive_nothing(0.03)
            server.reply(channel, accepted(event))
            assert await ws.receive_output() == {"type": "websocket.accept"}
            assert await ws.receive_output() == text("one")
            assert await ws.receive_output() == {"type": "websocket.send", "bytes": b"two"}

    run(scenario())


def test_more_replies_before_the_accept_than_the_queue_holds_close_with_1013() -> None:
    # The socket's queue holds 3: of 5 replies before the accept, the first 3 are
    # written after it, in order, then the socket is closed as one that cannot keep
    # up, rather than losing the others silently.
    async def scenario() -> None:
        async with serving(websocket_queue=3) as server:
            ws, event = await server.connect()
            channel = event["reply_channel"]
            for n in range(5):  # each taken by the session before the next arrives
                server.reply(channel, [{"text": str(n)}])
                await asyncio.sleep(0.01)
            server.reply(channel, accepted(event))
            assert await ws.receive_output() == {"type": "websocket.accept"}
            for n in range(3):
                assert await ws.receive_output() == text(str(n))
            assert await ws.receive_output() == {"type": "websocket.close", "code": 1013}

    run(scenario())


def test_a_burst_before_the_accept_over_the_inbox_refuses_the_handshake_and_says_so() -> None:
    # Five replies at once into an inbox of three: what was dropped may hold the
    # app's decision, so the handshake is refused and the app gets a disconnect.
    async def scenario() -> None:
        async with serving(websocket_queue=3) as server:
            ws, event = await server.connect()
            channel = event["reply_channel"]
            server.reply(channel, [*({"text": str(n)} for n in range(4)), *accepted(event)])
            assert await ws.receive_output() == {"type": "websocket.close"}
            gone = await server.take(DISCONNECT)
            assert gone["code"] == 1013
            assert gone["reply_channel"] == channel

    run(scenario())


def test_replies_before_a_rejection_are_dropped() -> None:
    async def scenario() -> None:
        async with serving() as server:
            ws, event = await server.connect()
            channel = event["reply_channel"]
            server.reply(channel, [{"text": "secret"}])
            server.reply(channel, finished(event, websocket_replies("connect", 403, [], b"")))
            assert await ws.receive_output() == {"type": "websocket.close"}
            await ws.wait()
            assert ws.output_queue.empty()

    run(scenario())


def test_frames_queued_before_the_accept_reach_the_layer_in_order_one_at_a_time() -> None:
    async def scenario() -> None:
        async with serving() as server:
            ws, connect = await server.connect()
            channel = connect["reply_channel"]
            frames = [{"text": "a"}, {"bytes": b"b"}, {"text": "c"}]
            for frame in frames:
                await ws.send_input({"type": "websocket.receive", **frame})
            await ws.send_input({"type": "websocket.disconnect", "code": 1000})
            assert await server.nothing_on(RECEIVE, DISCONNECT)  # the app has not decided

            # The accept, then the connect event's "done" in a message of its own (the
            # app's body as a first frame would come between them).
            server.reply(channel, websocket_replies("connect", 200, [], b""))
            assert await ws.receive_output() == {"type": "websocket.accept"}
            assert await server.nothing_on(RECEIVE, DISCONNECT)  # connect still running
            server.reply(channel, finished(connect, []))
            for order, frame in enumerate(frames, start=1):
                event = await server.take(RECEIVE)
                key = next(iter(frame))
                assert (event["order"], event[key], event["reply_channel"]) == (
                    order,
                    frame[key],
                    channel,
                )
                assert event["path"] == connect["path"]
                assert event["headers"] == connect["headers"]
                # The next event waits until the worker has finished this one.
                assert await server.nothing_on(RECEIVE, DISCONNECT)
                server.reply(channel, finished(event, []))
            goodbye = await server.take(DISCONNECT)
            assert (goodbye["order"], goodbye["code"]) == (len(frames) + 1, 1000)
            await ws.wait()

    run(scenario())


def test_a_client_that_sends_faster_than_the_app_reads_is_closed_with_1013() -> None:
    async def scenario() -> None:
        async with serving(websocket_buffer=3) as server:
            ws, _channel = await server.open()
            await ws.send_input({"type": "websocket.receive", "text": "0"})
            assert (await server.take(RECEIVE))["text"] == "0"  # in the worker's hands
            for n in range(1, 4):  # wait for "0" to be finished: the buffer's 3 frames
                await ws.send_input({"type": "websocket.receive", "text": str(n)})
            assert await ws.receive_nothing(0.03)
            await ws.send_input({"type": "websocket.receive", "text": "4"})
            assert await ws.receive_output() == {"type": "websocket.close", "code": 1013}

    run(scenario())


# -- inbox overflow -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "size"),
    [
        pytest.param({"websocket_queue": 4}, 10, id="messages"),
        pytest.param({"websocket_write_buffer": 1000}, 200, id="bytes"),
    ],
)
def test_a_socket_that_cannot_keep_up_is_closed_with_1013_and_no_other(
    options: dict[str, Any], size: int
) -> None:
    async def scenario() -> None:
        async with serving(**options) as server:
            slow, slow_channel = await server.open(cls=SlowClient)
            fast, fast_channel = await server.open()
            sent = [f"{n:0{size}d}" for n in range(12)]
            for message in sent:
                server.reply(slow_channel, [{"text": message}])
                server.reply(fast_channel, [{"text": message}])
                assert await fast.receive_output() == text(message)
            got = []
            while (output := await slow.receive_output()) != {
                "type": "websocket.close",
                "code": 1013,
            }:
                got.append(output["text"])
            # What reached the slow client came in order, and not all of it did.
            assert got == sent[: len(got)] and len(got) < len(sent)
            # The other socket is still open and served.
            await fast.send_input({"type": "websocket.receive", "text": "still here?"})
            event = await server.take(RECEIVE)
            server.reply(fast_channel, finished(event, [{"text": "yes"}]))
            assert await fast.receive_output() == text("yes")

    run(scenario())


def test_a_burst_at_the_bound_is_not_an_overflow() -> None:
    async def scenario() -> None:
        async with serving(websocket_queue=4) as server:
            ws, channel = await server.open()
            # Handed to the inbox in one go, before the socket's task can write any.
            server.reply(channel, [{"text": str(n)} for n in range(4)])
            for n in range(4):
                assert await ws.receive_output() == text(str(n))
            assert await ws.receive_nothing(0.03)

    run(scenario())


@pytest.mark.parametrize("delivery", ["through-the-layer", "handed-over"])
def test_a_slow_http_client_is_cut_and_its_worker_told(delivery: str) -> None:
    chunk, chunks = b"x" * 400, 20  # 8,000 bytes for a client that takes none

    async def scenario() -> None:
        async with serving(response_buffer=1000, http_timeout=0.5) as server:
            client = server.client(http_scope("GET", "/export"), SlowClient)
            await client.send_input({"type": "http.request", "body": b""})
            request = await server.take(HTTP_REQUEST)
            worker_prefix = WORKER_PREFIX + "test!"
            control = server.layer.new_channel(worker_prefix)
            channel = request["reply_channel"]
            first = {
                "status": 200,
                "headers": [[b"content-type", b"text/csv"]],
                "content": b"",
                "more_content": True,
                CONTROL_KEY: control,
            }
            refused = 0
            with (
                from_another_process(server.layer)
                if delivery == "through-the-layer"
                else contextlib.nullcontext()
            ):
                server.reply(channel, [first])
                for _ in range(chunks):  # a fast worker
                    try:
                        server.reply(channel, [{"content": chunk, "more_content": True}])
                    except ChannelFull:  # a worker would pause and try again
                        refused += 1
                    await asyncio.sleep(0)
                # The client reads nothing for longer than the receive task waits for it.
                await asyncio.sleep(STALL_TIMEOUT + 0.1)
            # Handed over in the process, the replies over the response's bound are
            # refused, as a full channel refuses them: the worker is braked, and the
            # backlog stays bounded.
            assert (refused > 0) == (delivery == "handed-over"), refused
            out = await outputs_until_done(client)
            assert out[0]["type"] == "http.response.start" and out[0]["status"] == 200
            # Cut: the body ends without more_body false, so the client cannot take it
            # for a whole one; the backlog over response_buffer was dropped, not held.
            assert all(message["more_body"] for message in out[1:])
            held = sum(len(message["body"]) for message in out[1:])
            assert held < len(chunk) * chunks
            assert await server.take(worker_prefix) == disconnect_notice(channel)

    run(scenario())


# -- HTTP ---------------------------------------------------------------------------------


def test_an_http_request_reaches_the_layer_and_its_reply_the_client() -> None:
    async def scenario() -> None:
        async with serving(http_timeout=2.0) as server:
            client = server.client(
                http_scope(
                    "POST",
                    "/orders",
                    [(b"content-type", b"application/json"), (b"content-length", b"7")],
                )
            )
            await client.send_input({"type": "http.request", "body": b'{"n":', "more_body": True})
            await client.send_input({"type": "http.request", "body": b"1}"})
            request = await server.take(HTTP_REQUEST)
            assert request["method"] == "POST" and request["path"] == "/orders"
            assert request["body"] == b'{"n":1}' and request["body_channel"] is None
            assert request["headers"] == [
                [b"host", HOST],
                [b"content-type", b"application/json"],
                [b"content-length", b"7"],
            ]
            assert request["client"] == CLIENT and request[EXT_KEY] == 1
            server.reply(
                request["reply_channel"],
                [
                    {
                        "status": 201,
                        "headers": [[b"x-a", b"1"]],
                        "content": b"o",
                        "more_content": True,
                    },
                    {"content": b"k", "more_content": False},
                ],
            )
            assert await client.receive_output() == {
                "type": "http.response.start",
                "status": 201,
                "headers": [[b"x-a", b"1"]],
            }
            assert await client.receive_output() == {
                "type": "http.response.body",
                "body": b"o",
                "more_body": True,
            }
            assert await client.receive_output() == {
                "type": "http.response.body",
                "body": b"k",
                "more_body": False,
            }
            await client.wait()

    run(scenario())


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        pytest.param([(b"content-length", b"11")], [b"x" * 11], id="declared"),
        pytest.param([(b"transfer-encoding", b"chunked")], [b"x" * 6, b"x" * 5], id="chunked"),
    ],
)
def test_a_body_over_max_body_is_413_before_the_layer(
    headers: list[tuple[bytes, bytes]], body: list[bytes]
) -> None:
    async def scenario() -> None:
        async with serving(max_body=10) as server:
            client = server.client(http_scope("POST", "/upload", headers))
            for n, chunk in enumerate(body):
                more = n < len(body) - 1
                await client.send_input({"type": "http.request", "body": chunk, "more_body": more})
            start = await client.receive_output()
            assert start["status"] == 413
            await client.wait()
            assert await server.nothing_on(HTTP_REQUEST)

    run(scenario())


def test_no_reply_within_http_timeout_is_504() -> None:
    async def scenario() -> None:
        async with serving(http_timeout=0.1) as server:
            client = server.client(http_scope("GET", "/slow"))
            await client.send_input({"type": "http.request", "body": b""})
            await server.take(HTTP_REQUEST)
            assert (await client.receive_output(1.0))["status"] == 504

    run(scenario())


def test_a_reply_for_a_connection_that_has_gone_is_dropped() -> None:
    async def scenario() -> None:
        async with serving() as server:
            ws, channel = await server.open()
            await ws.send_input({"type": "websocket.disconnect", "code": 1001})
            await server.take(DISCONNECT)
            await ws.wait()
            # A late reply, and one to a name this process never made.
            server.reply(channel, [{"text": "too late"}])
            server.reply(server.app.prefix + "neverissued", [{"text": "?"}])
            # The server goes on serving.
            other, other_channel = await server.open()
            server.reply(other_channel, [{"text": "fine"}])
            assert await other.receive_output() == text("fine")

    run(scenario())


def test_a_bad_reply_is_dropped_and_the_socket_stays() -> None:
    async def scenario() -> None:
        async with serving() as server:
            ws, channel = await server.open()
            server.reply(channel, [{"text": b"not a str"}, {"close": 99999}, {"text": "fine"}])
            assert await ws.receive_output() == text("fine")
            assert await ws.receive_nothing(0.03)

    run(scenario())


def test_an_event_not_finished_within_http_timeout_closes_with_1011() -> None:
    async def scenario() -> None:
        async with serving(http_timeout=0.1) as server:
            ws, _channel = await server.open()
            await ws.send_input({"type": "websocket.receive", "text": "slow"})
            await server.take(RECEIVE)
            assert await ws.receive_output(1.0) == {"type": "websocket.close", "code": 1011}

    run(scenario())


# -- shutdown -----------------------------------------------------------------------------


def test_lifespan_shutdown_closes_websockets_with_1001() -> None:
    async def scenario() -> None:
        async with serving() as server:
            ws, _channel = await server.open()
            await server.stop()
            assert await ws.receive_output() == {"type": "websocket.close", "code": 1001}

    run(scenario())


def test_at_shutdown_a_request_no_worker_took_is_503_and_taken_back() -> None:
    async def scenario() -> None:
        async with serving() as server:
            taken = server.client(http_scope("GET", "/taken"))
            await taken.send_input({"type": "http.request", "body": b""})
            request = await server.take(HTTP_REQUEST)
            queued = server.client(http_scope("GET", "/queued"))
            await queued.send_input({"type": "http.request", "body": b""})
            while server.layer.channel_statistics(HTTP_REQUEST)["messages_pending"] == 0:
                await asyncio.sleep(0.001)

            queued.scope[SHUTDOWN_KEY]()  # what uvicorn's protocol calls on SIGTERM
            start = await queued.receive_output()
            assert start["status"] == 503
            assert (b"retry-after", b"1") in start["headers"]
            # No worker will run it later: it is no longer on the layer.
            assert await server.nothing_on(HTTP_REQUEST)
            # The one a worker has is waited for.
            assert await taken.receive_nothing(0.03)
            server.reply(
                request["reply_channel"],
                [{"status": 200, "headers": [], "content": b"done", "more_content": False}],
            )
            assert (await taken.receive_output())["status"] == 200

    run(scenario())
