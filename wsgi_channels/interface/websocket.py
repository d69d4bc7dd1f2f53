"""One WebSocket connection: the handshake, then events out one at a time and replies
in (docs/protocol.md, WebSocket).

A :class:`WebSocketSession` gets what it needs in its constructor (the ASGI scope and
callables, the configuration, the router, its reply channel and inbox) and touches
nothing else of the server.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from ..layers.base import ChannelsError, MessageTooLarge
from ..protocol import (
    DONE_KEY,
    SUBPROTOCOL_KEY,
    check_websocket_reply,
    websocket_base,
    websocket_event,
)
from .config import InterfaceConfig
from .protocols import FRAMES_EXTENSION, data_frame
from .routing import Event, Inbox, Message, Receive, ReplyRouter, Send, send_when_room

__all__ = ["WebSocketSession"]

logger = logging.getLogger("wsgi_channels.interface")


class WebSocketSession:
    """The life of one socket, run by :meth:`run` in the connection's task."""

    def __init__(
        self,
        scope: MutableMapping[str, Any],
        receive: Receive,
        send: Send,
        *,
        config: InterfaceConfig,
        router: ReplyRouter,
        reply_channel: str,
        inbox: Inbox,
        on_busy: Callable[[int], None] = lambda delta: None,
    ) -> None:
        self.receive = receive
        self.send = send
        self.config = config
        self.router = router
        self.reply_channel = reply_channel
        self.inbox = inbox
        self.on_busy = on_busy
        # The uvicorn protocol, where it is ours: writes frames prepared for many.
        self.frames = (scope.get("extensions") or {}).get(FRAMES_EXTENSION)
        # Only a subprotocol the client offered may be accepted (RFC 6455 4.2.2).
        self.subprotocols: list[str] = list(scope.get("subprotocols") or ())
        headers = list(scope["headers"])
        if self.subprotocols and not any(name == b"sec-websocket-protocol" for name, _ in headers):
            # wsproto consumes this header (the offer is in scope["subprotocols"]); the
            # app reads the offer from its environ, so it goes back in the message.
            headers.append((b"sec-websocket-protocol", ", ".join(self.subprotocols).encode()))
        self.path: str = scope["path"]
        self.base = websocket_base(
            reply_channel=reply_channel,
            path=scope["path"],
            query_string=scope["query_string"],
            root_path=scope.get("root_path") or config.root_path,
            scheme=scope.get("scheme", "ws"),
            headers=headers,
            client=scope.get("client"),
            server=scope.get("server"),
        )
        # Client events waiting for the previous one's "done": {"text"|"bytes": ...}
        # for a frame, {"code": n} for the disconnect.
        self.events: collections.deque[Message] = collections.deque()
        self.event_bytes = 0
        self.order = 0
        self.in_flight: int | None = None
        self.in_flight_deadline = 0.0
        self.accepted = False
        self.closed = False  # a close frame went out, or the socket is gone
        self.close_code: int | None = None  # a close asked for from outside the task

    # -- called from outside the task ----------------------------------------------------

    def close_soon(self, code: int) -> None:
        self.close_code = code
        self.inbox.poke()

    def takes_frames(self) -> bool:
        """Can a prepared frame be written now, ahead of nothing? (fan-out)"""
        frames = self.frames
        return (
            self.accepted
            and not self.closed
            and self.close_code is None
            and frames is not None
            and not self.inbox
            and not frames.compressed
        )

    def write_frame(self, frame: bytes) -> None:
        """Write a prepared frame (only after :meth:`takes_frames` said yes)."""
        frames = self.frames
        if frames is None:
            return
        buffered = frames.write_frame(frame)
        self.router.metrics.frame_out()
        if buffered > self.config.websocket_write_buffer:
            self._too_slow()

    def _too_slow(self) -> None:
        if self.close_code is None:
            logger.warning("WebSocket %s: client reads too slowly; closing with 1013", self.path)
            self.close_soon(1013)

    # -- the task --------------------------------------------------------------------

    async def _socket_send(self, message: MutableMapping[str, Any]) -> None:
        if self.closed:
            return
        if message["type"] == "websocket.close":
            self.closed = True
        try:
            await self.send(message)
        except (OSError, RuntimeError):  # uvicorn's ClientDisconnected is an OSError
            self.closed = True

    async def _send_data(self, data: str | bytes) -> None:
        """One text (str) or binary (bytes) frame: written as prepared bytes where the
        socket takes them as uvicorn would (no compression, not paused), which spares
        wsproto's encoding of each reply; else through the ASGI ``send``."""
        frames = self.frames
        if frames is not None and not self.closed and frames.takes_data_frame():
            frames.write_frame(data_frame(data))
            return
        key = "text" if isinstance(data, str) else "bytes"
        await self._socket_send({"type": "websocket.send", key: data})

    async def _close(self, code: int) -> None:
        await self._socket_send({"type": "websocket.close", "code": code})

    async def _send_event(self, kind: str, fields: Message, timeout: float) -> bool:
        deadline = time.time() + timeout
        message = websocket_event(self.base, self.order, deadline, fields)
        self.on_busy(1)
        try:
            await send_when_room(self.router, kind, message, deadline)
        except MessageTooLarge:
            await self._close(1009)
            return False
        except ChannelsError as exc:
            logger.warning("WebSocket event not passed on, closing: %s", exc)
            await self._close(1011)
            return False
        finally:
            self.on_busy(-1)
        return True

    async def run(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        if not await self._send_event("websocket.connect", {}, config.websocket_connect_timeout):
            await self._socket_send({"type": "websocket.close"})
            return
        deadline = loop.time() + config.websocket_connect_timeout
        # Frames that arrive before the app decided (a group message sent while the
        # connect event runs, or released by ChannelsMiddleware before the worker's
        # accept) wait here: sent after the accept, dropped on a rejection. Under
        # ASGI 1.0 a frame before accept accepts; that is honoured only when no
        # decision came before the timeout (a worker that does not speak ours). More
        # than the socket's queue holds: the socket is closed with 1013 once accepted.
        early: collections.deque[Message] = collections.deque()
        behind = False
        while True:
            reply = await self.inbox.get(deadline)
            if self.close_code is not None or (reply is Event.TIMEOUT and not early):
                await self._socket_send({"type": "websocket.close"})  # 403
                return
            if isinstance(reply, dict) and not self._valid(reply):
                continue
            if reply is Event.TIMEOUT or (isinstance(reply, dict) and reply.get("accept")):
                accept: Message = {"type": "websocket.accept"}
                subprotocol = reply.get(SUBPROTOCOL_KEY) if isinstance(reply, dict) else None
                if isinstance(subprotocol, str) and subprotocol in self.subprotocols:
                    accept["subprotocol"] = subprotocol
                await self._socket_send(accept)
                self.accepted = True
                self.router.metrics.websocket_opened()
                self.in_flight = 0
                self.in_flight_deadline = loop.time() + config.http_timeout
                for frame in early:
                    await self._handle_reply(frame)
                if isinstance(reply, dict):
                    await self._handle_reply(reply)
                if behind:
                    self._too_slow()
                break
            if reply is Event.OVERFLOW:
                # More at once than the inbox holds, the decision perhaps among what
                # was dropped: the handshake is refused (403) and the app told.
                logger.warning(
                    "WebSocket %s: more replies before the accept than its queue holds;"
                    " refusing the handshake",
                    self.path,
                )
                await self._socket_send({"type": "websocket.close"})
                self.order += 1
                await self._send_event("websocket.disconnect", {"code": 1013}, config.http_timeout)
                return
            if not isinstance(reply, dict):
                continue
            if reply.get("close") or reply.get(DONE_KEY) == 0:
                await self._socket_send({"type": "websocket.close"})  # rejected: 403
                return
            if "text" in reply or "bytes" in reply:
                if len(early) < config.websocket_queue:
                    early.append(reply)
                else:
                    behind = True
        reader = loop.create_task(self._read())
        try:
            await self._write()
        finally:
            reader.cancel()
            self.router.metrics.websocket_closed()

    async def _read(self) -> None:
        """Move client frames into ``self.events``; the writer sends them on."""
        limit = self.config.websocket_buffer
        while True:
            event = await self.receive()
            kind = event["type"]
            if kind == "websocket.receive":
                text, data = event.get("text"), event.get("bytes")
                fields: Message = {"text": text} if text is not None else {"bytes": data}
                size = len(text if text is not None else data or b"")
                if self.closed:
                    continue
                if len(self.events) >= limit or self.event_bytes + size > 8 * 1024 * 1024:
                    logger.warning(
                        "WebSocket %s: client sends faster than the app reads; closing with 1013",
                        self.path,
                    )
                    await self._close(1013)
                    continue
                self.events.append(fields)
                self.event_bytes += size
                self.router.metrics.frame_in()
                self.inbox.poke()
            elif kind == "websocket.disconnect":
                self.closed = True
                self.events.append({"code": event.get("code", 1005)})
                self.inbox.poke()
                return

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.config.http_timeout
        while True:
            if self.close_code is not None and not self.closed:
                await self._close(self.close_code)
            if self.in_flight is None and self.events:
                fields = self.events.popleft()
                self.order += 1
                if "code" in fields:
                    await self._send_event("websocket.disconnect", fields, timeout)
                    return
                self.event_bytes -= len(fields.get("text") or fields.get("bytes") or b"")
                if await self._send_event("websocket.receive", fields, timeout):
                    self.in_flight = self.order
                    self.in_flight_deadline = loop.time() + timeout
                continue
            deadline = self.in_flight_deadline if self.in_flight is not None else None
            reply = await self.inbox.get(deadline)
            if isinstance(reply, dict):
                if self._valid(reply):
                    await self._handle_reply(reply)
            elif reply is Event.OVERFLOW:
                logger.warning(
                    "WebSocket %s: client reads too slowly; closing with 1013", self.path
                )
                await self._close(1013)
            elif reply is Event.TIMEOUT and self.in_flight is not None:
                logger.warning(
                    "WebSocket %s: event %d not finished in %.0f s; closing with 1011",
                    self.path,
                    self.in_flight,
                    timeout,
                )
                self.in_flight = None
                await self._close(1011)

    def _valid(self, reply: Message) -> bool:
        """Whatever a producer put on the channel, a bad reply is dropped with one log
        line and the socket stays as it was (its ``done`` still counts)."""
        reason = check_websocket_reply(reply)
        if reason is None:
            return True
        logger.warning("WebSocket %s: dropped a message: %s", self.path, reason)
        done = reply.get(DONE_KEY)
        if done is not None and done == self.in_flight:
            self.in_flight = None
        return False

    async def _handle_reply(self, reply: Message) -> None:
        self.router.metrics.frames_out(reply)
        text = reply.get("text")
        if text is not None:
            await self._send_data(text)
        data = reply.get("bytes")
        if data is not None:
            await self._send_data(data)
        close = reply.get("close")
        if close:
            await self._close(1000 if close is True else int(close))
        done = reply.get(DONE_KEY)
        if done is not None and done == self.in_flight:
            self.in_flight = None
