"""The batched bridge reference: the 70-line design issue 10 measured at 1.2 x gunicorn.

Not a baseline with a bar: the reference for what sharing round trips buys when
nothing else is done (no limits, no expiry, no capacity, no groups, no WebSocket, a
taken request waits behind the others of its batch). The interface is a uvicorn ASGI
app (``benchmarks.batched_bridge:app``, Redis URL in ``BATCHED_BRIDGE_REDIS``): every
request that arrives in one event-loop turn goes out in one RPUSH; replies come back on
one list per interface process, drained by one asyncio task with BLMPOP COUNT 256. The
worker (``python -m benchmarks.batched_bridge MODULE:APP``) pops up to ``BATCH`` (16)
requests with BLMPOP, runs them one after another and sends the replies grouped per
interface in one RPUSH each, all in one pipeline (each request run as the naive bridge
runs it).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import uuid
from typing import Any

import msgpack

from benchmarks.naive_bridge import load, run

QUEUE = "batched:requests"
BATCH = int(os.environ.get("BATCHED_BRIDGE_BATCH", "16"))
_state: dict[str, Any] = {}


def _start() -> dict[str, Any]:
    import redis.asyncio

    url = os.environ["BATCHED_BRIDGE_REDIS"]
    state = _state
    state.update(send=redis.asyncio.from_url(url), recv=redis.asyncio.from_url(url),
                 inbox=f"batched:reply:{uuid.uuid4().hex}", futures={}, pending=[],
                 ids=itertools.count())  # fmt: skip
    state["reader"] = asyncio.get_running_loop().create_task(_read_replies(state))
    return state


async def _read_replies(state: dict[str, Any]) -> None:
    futures = state["futures"]
    while True:
        command = ("BLMPOP", 1, 1, state["inbox"], "LEFT", "COUNT", 256)
        got = await state["recv"].execute_command(*command)
        for raw in got[1] if got else ():
            ident, *reply = msgpack.unpackb(raw)
            future = futures.pop(ident, None)
            if future is not None and not future.done():
                future.set_result(reply)


async def _flush(state: dict[str, Any]) -> None:
    batch, state["pending"] = state["pending"], []
    await state["send"].rpush(QUEUE, *batch)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    state = _state or _start()
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    ident = next(state["ids"])
    future = state["futures"][ident] = asyncio.get_running_loop().create_future()
    request = [scope["method"], scope["path"], scope["query_string"], scope["headers"], body]
    if not state["pending"]:  # the first of this turn: one RPUSH at its end carries all
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(_flush(state)))
    state["pending"].append(msgpack.packb([state["inbox"], ident, *request]))
    status, headers, content = await future
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def worker(app_path: str, url: str) -> None:
    import redis

    wsgi = load(app_path)
    r = redis.Redis.from_url(url)
    while True:
        got = r.execute_command("BLMPOP", 1, 1, QUEUE, "LEFT", "COUNT", BATCH)
        replies: dict[bytes, list[bytes]] = {}
        for raw in got[1] if got else ():
            inbox, ident, *request = msgpack.unpackb(raw)
            replies.setdefault(inbox, []).append(msgpack.packb([ident, *run(wsgi, *request)]))
        with r.pipeline(transaction=False) as pipe:
            for inbox, packed in replies.items():
                pipe.rpush(inbox, *packed)
            pipe.execute()


if __name__ == "__main__":
    worker(sys.argv[1], os.environ["BATCHED_BRIDGE_REDIS"])
