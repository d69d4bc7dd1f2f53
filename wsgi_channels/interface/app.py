"""The ASGI 3 application of the interface server, and its lifespan.

:class:`InterfaceServer` plays the role Daphne had in Channels 1.x: it turns each HTTP
request into an ``http.request`` message and each WebSocket event into a
``websocket.*`` message, and writes what arrives on the reply channel back to the
socket. uvicorn parses HTTP and WebSocket; nothing here does. Everything runs on the
event loop: the layer is reached through its asyncio face
(:mod:`wsgi_channels.layers.aio`), no thread stands between the loop and the layer.

The pieces, one concern each: :mod:`.config` (settings), :mod:`.routing` (the process
prefix, its receive task and the inboxes; fan-out), :mod:`.http` (one HTTP exchange),
:mod:`.websocket` (one WebSocket session), :mod:`.protocols` (uvicorn's protocol
classes with our bounds).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from ..layers import DEFAULT_LAYER_URL, LAYER_ENV, layer_from_url
from ..layers.base import ChannelsError, Layer
from ..metrics import NULL_METRICS, Recorder, recorder_from_environ
from ..process import BATCH_SCHEDULING_ENV, batch_scheduling, env_flag
from .config import InterfaceConfig, OriginRules
from .http import HttpExchange
from .routing import Event, Inbox, Receive, ReplyRouter, Scope, Send
from .websocket import WebSocketSession

__all__ = ["InterfaceServer", "create_app"]

logger = logging.getLogger("wsgi_channels.interface")


class InterfaceServer:
    """The ASGI 3 application that bridges HTTP and WebSocket clients to a channel layer.

    *layer* is a channel layer object; *config* an :class:`InterfaceConfig` (or its
    fields as keyword arguments); *metrics* a :mod:`wsgi_channels.metrics` recorder.
    The process prefix and the receive task are made on first use inside the serving
    process (lifespan startup or the first connection), so an instance built before a
    fork is safe.
    """

    def __init__(
        self, layer: Layer, config: InterfaceConfig | None = None, *,
        metrics: Recorder = NULL_METRICS, **options: Any,
    ) -> None:  # fmt: skip
        if config is None:
            config = InterfaceConfig(**options)
        elif options:
            raise TypeError("give either a config or keyword options, not both")
        self.layer = layer
        self.config = config
        self.origins = OriginRules(config.allowed_origins)
        self.metrics = metrics  # wsgi_channels.metrics; a no-op recorder when off
        self.router = ReplyRouter(layer, metrics)
        self.sessions: set[WebSocketSession] = set()
        # HTTP requests waiting for their first reply, with when they were sent (Unix).
        self.waiting: dict[HttpExchange, float] = {}
        self._busy = 0  # WebSocket events being passed on (for the no-worker warning)
        self._monitor: asyncio.Task[None] | None = None
        self._shutdown: asyncio.Task[None] | None = None

    @property
    def prefix(self) -> str:
        return self.router.prefix

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Start the receive task (idempotent; on the loop)."""
        self.router.start()
        if self._monitor is None:
            self._monitor = asyncio.get_running_loop().create_task(self._watch_workers())

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            self._monitor = None
        await self.router.stop()

    def close_websockets(self, code: int = 1001) -> None:
        """Close every open WebSocket of this process with *code* (shutdown)."""
        for session in list(self.sessions):
            session.close_soon(code)

    def _shutting_down(self) -> None:
        """uvicorn began a graceful shutdown with requests waiting for a reply."""
        if self._shutdown is None:
            self._shutdown = asyncio.get_running_loop().create_task(self._answer_queued())

    async def _answer_queued(self) -> None:
        """Answer 503 at once to the requests that no worker has taken yet, and let
        those that a worker runs finish within the graceful timeout.

        Each waiting request is taken back from the layer first (``withdraw``): one
        that comes back was never received, so the 503 tells its client the truth (no
        worker will run it later, and a retry runs it once); one that a worker has
        already taken is waited for."""
        waiting = [exchange for exchange in self.waiting if exchange.receipt is not None]
        if not waiting:
            return
        receipts = [exchange.receipt for exchange in waiting if exchange.receipt is not None]
        try:
            removed = await self.router.withdraw(receipts)
        except Exception as exc:  # the layer is down: no worker can take them now
            logger.warning("could not take queued requests back at shutdown: %s", exc)
            removed = [True] * len(waiting)
        for exchange, gone in zip(waiting, removed, strict=True):
            if gone:
                exchange.inbox.interrupt(Event.SHUTDOWN)

    async def _watch_workers(self) -> None:
        """Say so in the log when requests wait for a worker and none takes them: an
        interface with no worker running is otherwise silent until the 504s."""
        threshold = self.config.no_worker_warning
        warned_at = 0.0
        while True:
            await asyncio.sleep(max(0.5, threshold / 2))
            now = time.time()
            stuck = sum(1 for since in self.waiting.values() if now - since >= threshold)
            if stuck and now - warned_at >= threshold:
                warned_at = now
                logger.warning(
                    "%d request%s waited more than %.0f s for a worker: is a worker "
                    "running on this layer (%s)?",
                    stuck,
                    "" if stuck == 1 else "s",
                    threshold,
                    _describe(self.layer),
                )

    # -- ASGI ---------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            self.start()
            if self.config.health_path and scope["path"] == self.config.health_path:
                await self._health(send)
                return
            send = self.metrics.http_send(send)
            await HttpExchange(
                scope, receive, send, config=self.config, router=self.router,
                waiting=self.waiting, on_shutdown=self._shutting_down,
            ).run()  # fmt: skip
        elif kind == "websocket":
            self.start()
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            raise ValueError(f"unknown ASGI scope type {kind!r}")

    async def _health(self, send: Send) -> None:
        """The health endpoint (see :mod:`wsgi_channels.health`). The check is one
        synchronous layer call, run in a thread: it is off the hot path, and the
        loop must not wait on a layer that may be down."""
        from ..health import check

        loop = asyncio.get_running_loop()
        health = await loop.run_in_executor(None, check, self.layer, self.config.no_worker_warning)
        body = json.dumps(health.as_dict()).encode() + b"\n"
        await send(
            {
                "type": "http.response.start",
                "status": health.http_status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close_websockets(1001)
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        event = await receive()
        if event["type"] != "websocket.connect":
            return
        if not self.origins.allowed(scope["headers"], scope.get("scheme", "ws")):
            logger.info("WebSocket %s refused: origin not allowed", scope["path"])
            await send({"type": "websocket.close", "code": 1008})
            return
        config = self.config
        inbox = Inbox(config.websocket_queue, config.websocket_write_buffer)
        router = self.router
        reply_channel = router.open(inbox)
        session = WebSocketSession(
            scope, receive, send, config=config, router=router,
            reply_channel=reply_channel, inbox=inbox,
        )  # fmt: skip
        router.sessions[reply_channel] = session
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            router.close(reply_channel)
            # A socket that has gone leaves no membership, whatever the app did with
            # its disconnect event (a view behind login_required answers it with a
            # redirect and never discards).
            try:
                await router.discard_channel(reply_channel)
            except ChannelsError as exc:
                logger.warning("could not remove a closed socket from its groups: %s", exc)


def _describe(layer: Layer) -> str:
    return repr(layer)


def create_app(
    environ: Mapping[str, str] | None = None, *, metrics: Recorder | None = None
) -> InterfaceServer:
    """An :class:`InterfaceServer` configured by the environment (or *environ*): the
    layer from ``WSGI_CHANNELS_LAYER`` (default ``sqlite:///.wsgi_channels.sqlite3``),
    the rest from :meth:`InterfaceConfig.from_environ`. For ``uvicorn --factory
    wsgi_channels.interface:create_app`` and each ``--workers`` process. *metrics* (a
    :mod:`wsgi_channels.metrics` recorder) defaults to ``recorder_from_environ``.

    The calling thread, which runs the event loop under uvicorn, is put under Linux's
    ``SCHED_BATCH`` policy as the worker's threads are, unless
    ``WSGI_CHANNELS_BATCH_SCHEDULING`` is off: woken by a client or by Redis, the loop
    no longer preempts the process running (paired A/B, docs/scaling.md)."""
    env = os.environ if environ is None else environ
    if env_flag(BATCH_SCHEDULING_ENV, default=True, environ=env):
        batch_scheduling()
    layer = layer_from_url(env.get(LAYER_ENV) or DEFAULT_LAYER_URL)
    if metrics is None:
        metrics = recorder_from_environ(env, "interface")
    return InterfaceServer(layer, InterfaceConfig.from_environ(env), metrics=metrics)
