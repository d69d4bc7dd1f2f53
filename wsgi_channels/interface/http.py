"""One HTTP exchange: the request out as ``http.request``, the reply back to the client.

An :class:`HttpExchange` is made per request with what it needs (the ASGI scope and
callables, the configuration, the router) and run by :meth:`HttpExchange.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

from ..layers.aio import Receipt
from ..layers.base import ChannelFull, ChannelsError, LayerUnavailable, MessageTooLarge
from ..protocol import (
    BODY_CHANNEL_PATTERN,
    BODY_CHUNK_SIZE,
    CONTROL_KEY,
    HTTP_REQUEST,
    INLINE_BODY_LIMIT,
    body_chunk,
    disconnect_notice,
    http_request_message,
    parse_content_length,
)
from .config import InterfaceConfig
from .protocols import SHUTDOWN_KEY
from .routing import Event, Inbox, Message, Receive, ReplyRouter, Send, send_when_room

__all__ = ["HttpExchange"]

logger = logging.getLogger("wsgi_channels.interface")


# Answers to layer errors when sending http.request (a table, not a chain).
_LAYER_ERROR_RESPONSES: dict[type, tuple[int, bytes]] = {
    ChannelFull: (503, b"Service Unavailable: the server is busy, try again shortly\n"),
    LayerUnavailable: (503, b"Service Unavailable: the channel layer is unreachable\n"),
    MessageTooLarge: (431, b"Request Header Fields Too Large\n"),
}
_SHUTTING_DOWN = b"Service Unavailable: the server is shutting down\n"
_TOO_LARGE = b"Payload Too Large\n"
_BODY_LATE = b"Request Timeout: the request body took too long\n"
_BAD_GATEWAY = b"Bad Gateway: the application's response was malformed\n"
_CLOSE = [(b"connection", b"close")]


_BAD_NAME = re.compile(rb"[\r\n\0:]").search
_BAD_VALUE = re.compile(rb"[\r\n\0]").search


def malformed_reply(reply: Message) -> str | None:
    """Why the first reply of a response cannot be written as HTTP/1.1, or None.

    A producer on the layer can send anything; what uvicorn would refuse with a
    traceback, or pass on and leave the client to guess at, is answered 502 instead."""
    status = reply.get("status")
    if type(status) is not int or not 200 <= status <= 599:
        return f"status {status!r}"  # 1xx too: an informational or a 101 ends nothing
    headers = reply.get("headers") or []
    lengths: set[bytes] = set()
    try:
        for name, value in headers:
            if not isinstance(name, bytes) or not isinstance(value, bytes):
                return "a header that is not bytes"
            if _BAD_NAME(name) or _BAD_VALUE(value):
                return "a header with a line break"
            if name.lower() == b"content-length":
                lengths.add(value.strip())
    except (TypeError, ValueError):
        return "headers that are not pairs"
    if len(lengths) > 1:
        return "two different content-length headers"
    for value in lengths:
        try:
            parse_content_length(value)
        except ValueError:
            return "an invalid content-length"
    return None


class _Throttled:
    """One warning for a run of the same refusal (a layer out of memory refuses every
    request): the first at once, then at most one every INTERVAL seconds, with how
    many were not logged meanwhile."""

    INTERVAL = 5.0

    def __init__(self) -> None:
        self.reason = ""
        self.last = 0.0
        self.quiet = 0

    def warn(self, reason: str, method: str, path: str) -> None:
        now = time.monotonic()
        if reason == self.reason and now - self.last < self.INTERVAL:
            self.quiet += 1
            return
        more = f" ({self.quiet} more since the last warning)" if self.quiet else ""
        logger.warning("cannot pass %s %s on: %s%s", method, path, reason, more)
        self.reason, self.last, self.quiet = reason, now, 0


_refusals = _Throttled()


def error_response(exc: ChannelsError) -> tuple[int, bytes]:
    for cls in type(exc).__mro__:
        found = _LAYER_ERROR_RESPONSES.get(cls)
        if found is not None:
            return found
    return 500, b"Internal Server Error\n"


class HttpExchange:
    """One request: body read (inline up to a limit, the rest on ``body_channel``),
    ``http.request`` sent, the reply streamed back to the client."""

    def __init__(
        self,
        scope: MutableMapping[str, Any],
        receive: Receive,
        send: Send,
        *,
        config: InterfaceConfig,
        router: ReplyRouter,
        waiting: dict[HttpExchange, float],
        on_shutdown: Callable[[], None] = lambda: None,
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.config = config
        self.router = router
        self.waiting = waiting
        #: The request's send, for taking it back from the layer at shutdown.
        self.receipt: Receipt | None = None
        self.on_shutdown = on_shutdown
        self.inbox = Inbox(1 << 30, config.response_buffer, stalls=True)
        self.body_late = False  # the client stopped sending its body (then 408)

    async def respond(
        self, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"%d" % len(body)),
                    *headers,
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _retry_later(self, body: bytes) -> None:
        await self.respond(503, body, [(b"retry-after", b"%d" % self.config.retry_after)])

    async def run(self) -> None:
        scope = self.scope
        config = self.config
        length: int | None = None
        has_body = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = parse_content_length(value)
                except ValueError:
                    await self.respond(400, b"Bad Request: invalid Content-Length\n", _CLOSE)
                    return
                has_body = length > 0
            elif name == b"transfer-encoding":
                has_body = True
        if length is not None and length > config.max_body:
            await self.respond(413, _TOO_LARGE, _CLOSE)
            return

        # The body is held here until it is complete (up to body_buffer bytes), so a
        # slow upload holds no worker thread; only a larger one is streamed.
        body = rest = b""
        more = False  # the client has more to send
        received = 0
        if has_body:
            parts: list[bytes] = []
            more = True
            hold = max(config.body_buffer, INLINE_BODY_LIMIT)
            loop = asyncio.get_running_loop()
            until = loop.time() + config.body_timeout
            while more and received <= hold:
                try:
                    event = await asyncio.wait_for(self.receive(), until - loop.time())
                except TimeoutError:
                    logger.info("request body not complete within %.0f s: 408", config.body_timeout)
                    await self.respond(408, _BODY_LATE, _CLOSE)
                    return
                if event["type"] != "http.request":
                    return  # the client went away before sending its body
                chunk = event.get("body", b"")
                received += len(chunk)
                more = event.get("more_body", False)
                if received > config.max_body:
                    await self.respond(413, _TOO_LARGE, _CLOSE)
                    return
                parts.append(chunk)
            data = b"".join(parts)
            body, rest = data[:INLINE_BODY_LIMIT], data[INLINE_BODY_LIMIT:]

        router = self.router
        reply_channel = router.open(self.inbox)
        reader: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        scope[SHUTDOWN_KEY] = self.on_shutdown
        try:
            deadline = time.time() + config.http_timeout
            streamed = more or bool(rest)
            body_channel = router.layer.new_channel(BODY_CHANNEL_PATTERN) if streamed else None
            message = http_request_message(
                reply_channel=reply_channel,
                http_version=scope["http_version"],
                method=scope["method"],
                scheme=scope.get("scheme", "http"),
                path=scope["path"],
                query_string=scope["query_string"],
                root_path=scope.get("root_path") or config.root_path,
                headers=scope["headers"],
                body=body,
                body_channel=body_channel,
                client=scope.get("client"),
                server=scope.get("server"),
                deadline=deadline,
            )
            try:
                self.receipt = await router.send(HTTP_REQUEST, message)
            except ChannelsError as exc:
                status, text = error_response(exc)
                _refusals.warn(str(exc), scope["method"], scope["path"])
                if status == 503:
                    await self._retry_later(text)
                else:
                    await self.respond(status, text)
                return
            if body_channel is not None:
                reader = loop.create_task(
                    self._upload(body_channel, rest, more, received, deadline)
                )
            self.waiting[self] = time.time()
            wait_until = loop.time() + config.http_timeout
            reply = await self.inbox.get(wait_until)
            while reply is Event.WAKE:
                reply = await self.inbox.get(wait_until)
            self.waiting.pop(self, None)
            if reply is Event.TIMEOUT and self.body_late:
                await self.respond(408, _BODY_LATE, _CLOSE)
            elif reply is Event.TIMEOUT:
                await self.respond(
                    504,
                    b"Gateway Timeout: no worker answered within %d s\n" % config.http_timeout,
                )
            elif reply is Event.SHUTDOWN:
                await self._retry_later(_SHUTTING_DOWN)
            elif reply is Event.TOO_LARGE:
                await self.respond(413, _TOO_LARGE, _CLOSE)
            elif isinstance(reply, dict):
                reader = await self._stream(reply, reader, reply_channel)
        finally:
            self.waiting.pop(self, None)
            scope.pop(SHUTDOWN_KEY, None)
            router.close(reply_channel)
            if reader is not None:
                reader.cancel()

    async def _upload(
        self, channel: str, pending: bytes, more: bool, received: int, deadline: float
    ) -> None:
        """Send the rest of a request body on *channel* as the client uploads it, in
        chunks of at most BODY_CHUNK_SIZE, waiting while the channel is full (so the
        upload's pace follows the worker's); then watch for the client going away."""
        buffer = bytearray(pending)
        while True:
            while more and len(buffer) < BODY_CHUNK_SIZE:
                try:
                    event = await asyncio.wait_for(self.receive(), self.config.body_timeout)
                except TimeoutError:
                    # The client stalled mid-body: the worker is told the body is cut,
                    # the client gets 408 unless the worker has answered already.
                    await self._close_body(channel, deadline)
                    self.body_late = True
                    self.inbox.interrupt(Event.TIMEOUT)
                    return
                if event["type"] != "http.request":
                    await self._close_body(channel, deadline)
                    self.inbox.interrupt(Event.DISCONNECT)
                    return
                chunk = event.get("body", b"")
                received += len(chunk)
                more = event.get("more_body", False)
                if received > self.config.max_body:
                    await self._close_body(channel, deadline)
                    self.inbox.interrupt(Event.TOO_LARGE)
                    return
                buffer += chunk
            content = bytes(buffer[:BODY_CHUNK_SIZE])
            del buffer[:BODY_CHUNK_SIZE]
            last = not more and not buffer
            try:
                await send_when_room(
                    self.router, channel, body_chunk(content, more=not last), deadline
                )
            except ChannelsError as exc:
                logger.warning("request body not passed on: %s", exc)
                return
            if last:
                break
        await self._watch_disconnect()

    async def _close_body(self, channel: str, deadline: float) -> None:
        # ASGI 1.0: ``closed`` tells the worker the client is gone and the body is cut.
        with contextlib.suppress(ChannelsError):
            await send_when_room(
                self.router, channel, body_chunk(b"", more=False, closed=True),
                min(deadline, time.time() + 1.0),
            )  # fmt: skip

    async def _watch_disconnect(self) -> None:
        # uvicorn's receive() returns http.disconnect when the client goes away (or the
        # response is complete, when nobody is listening any more).
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.inbox.interrupt(Event.DISCONNECT)

    async def _stream(
        self, first: Message, reader: asyncio.Task[None] | None, reply_channel: str
    ) -> asyncio.Task[None] | None:
        """Write the response whose first reply is *first*, chunk by chunk as the
        replies arrive; uvicorn's send waits while the client's socket is full."""
        send = self.send
        problem = malformed_reply(first)
        if problem is not None:
            logger.warning("malformed response from the application (%s): 502", problem)
            control = first.get(CONTROL_KEY)
            if first.get("more_content") and isinstance(control, str):
                await self._tell_worker(control, reply_channel)
            await self.respond(502, _BAD_GATEWAY, _CLOSE)
            return reader
        await send(
            {
                "type": "http.response.start",
                "status": first["status"],
                "headers": first.get("headers") or [],
            }
        )
        more = bool(first.get("more_content", False))
        await send(
            {"type": "http.response.body", "body": first.get("content", b""), "more_body": more}
        )
        if not more:
            return reader
        control = first.get(CONTROL_KEY)
        loop = asyncio.get_running_loop()
        if reader is None:
            reader = loop.create_task(self._watch_disconnect())
        timeout = self.config.http_timeout
        while more:
            reply = await self.inbox.get(loop.time() + timeout)
            if reply is Event.WAKE or reply is Event.SHUTDOWN:
                continue  # a response under way is finished, not cut, at shutdown
            if not isinstance(reply, dict):
                if reply is Event.OVERFLOW:
                    logger.warning(
                        "client too slow: more than %d bytes of response waiting; connection cut",
                        self.config.response_buffer,
                    )
                elif reply is Event.TIMEOUT:
                    logger.warning("no response chunk for %g s; connection cut", timeout)
                if isinstance(control, str):
                    await self._tell_worker(control, reply_channel)
                # Returning before the end of the response makes uvicorn close the
                # connection, so the client cannot take a cut body for a whole one.
                return reader
            more = bool(reply.get("more_content", False))
            await send(
                {"type": "http.response.body", "body": reply.get("content", b""), "more_body": more}
            )
        return reader

    async def _tell_worker(self, control: str, reply_channel: str) -> None:
        try:
            await self.router.send(control, disconnect_notice(reply_channel))
        except ChannelsError as exc:
            logger.warning("could not tell the worker the client left: %s", exc)
