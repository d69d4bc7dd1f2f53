"""The wire protocol between our interface server and our worker, written once.

The messages are the ASGI 1.0 "www" formats; on top of them our two sides use a few
``wsgi_channels.*`` keys (docs/protocol.md). Everything both sides must agree on lives
here: the keys, the channel names and prefixes, the size limits, the builders of the
``http.request`` and ``websocket.*`` messages, the check of a WebSocket reply, and the
parsers of the few HTTP facts both sides read (``Content-Length``, ``host:port``).
The interface server, the worker and :mod:`wsgi_channels.testing` all use this module,
so that a test helper cannot drift from what production sends.

No I/O happens here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, Literal

from .layers.base import MAX_MESSAGE_SIZE, InvalidMessage

__all__ = [
    "BODY_CHANNEL_PATTERN",
    "BODY_CHUNK_SIZE",
    "CONTROL_KEY",
    "DEADLINE_KEY",
    "DEFAULT_CHANNELS",
    "DISCONNECT_TYPE",
    "DONE_KEY",
    "EXT_KEY",
    "HTTP_REQUEST",
    "INLINE_BODY_LIMIT",
    "INTERFACE_PREFIX",
    "MAX_CHUNK_SIZE",
    "MAX_FRAME_SIZE",
    "SUBPROTOCOL_KEY",
    "WEBSOCKET_EVENTS",
    "WORKER_PREFIX",
    "body_chunk",
    "check_websocket_reply",
    "disconnect_notice",
    "full_retry_pauses",
    "http_request_message",
    "parse_content_length",
    "split_host_port",
    "validate_websocket_reply",
    "websocket_base",
    "websocket_event",
]

Message = dict[str, Any]

# -- keys -------------------------------------------------------------------------------

#: On every message the interface sends: "I speak the extensions; reply with them".
EXT_KEY: Final = "wsgi_channels.ext"
#: Unix time after which the interface no longer waits for the message's answer.
DEADLINE_KEY: Final = "wsgi_channels.deadline"
#: On the first reply of a streaming response: the worker's control channel.
CONTROL_KEY: Final = "wsgi_channels.control"
#: On the last reply to a ``websocket.*`` event: that event's ``order``.
DONE_KEY: Final = "wsgi_channels.done"
#: On the accept reply: the subprotocol the app chose.
SUBPROTOCOL_KEY: Final = "wsgi_channels.subprotocol"
#: ``type`` of the notice sent to a worker's control channel when a client went away.
DISCONNECT_TYPE: Final = "http.disconnect"

# -- channels ---------------------------------------------------------------------------

HTTP_REQUEST: Final = "http.request"
WEBSOCKET_EVENTS: Final[dict[str, Literal["connect", "receive", "disconnect"]]] = {
    "websocket.connect": "connect",
    "websocket.receive": "receive",
    "websocket.disconnect": "disconnect",
}
#: What a worker takes by default.
DEFAULT_CHANNELS: Final = (HTTP_REQUEST, *WEBSOCKET_EVENTS)
#: Process channel prefixes (each process adds 128 random bits and ``!``).
INTERFACE_PREFIX: Final = "wsgi_channels.interface."
WORKER_PREFIX: Final = "wsgi_channels.worker."
#: Pattern of the ``body_channel`` of a large request body (one reader: ``?``).
BODY_CHANNEL_PATTERN: Final = "http.request.body?"

# -- limits -----------------------------------------------------------------------------

#: Body bytes sent inside ``http.request``; the rest follows on ``body_channel``.
INLINE_BODY_LIMIT: Final = 256 * 1024
#: Largest ``content`` of one ``body_channel`` chunk.
BODY_CHUNK_SIZE: Final = 256 * 1024
#: Largest ``content`` of one HTTP reply message. Layers refuse messages over 1 MiB
#: encoded; 256 KiB leaves room for the headers and keeps per-message latency low.
MAX_CHUNK_SIZE: Final = 256 * 1024
#: Largest WebSocket frame, either way: one frame travels in one layer message together
#: with the handshake's headers, so it keeps 64 KiB of the message limit for them. A
#: client frame over it closes the socket with 1009; a larger reply from the app 1011.
MAX_FRAME_SIZE: Final = MAX_MESSAGE_SIZE - 64 * 1024


# -- message builders ---------------------------------------------------------------------


def http_request_message(
    *,
    reply_channel: str,
    http_version: str,
    method: str,
    scheme: str,
    path: str,
    query_string: bytes,
    root_path: str,
    headers: Sequence[Sequence[bytes]],
    body: bytes,
    body_channel: str | None,
    client: Sequence[Any] | None,
    server: Sequence[Any] | None,
    deadline: float,
) -> Message:
    """The ``http.request`` message our interface server sends (ASGI 1.0 keys plus
    ``wsgi_channels.ext`` and ``wsgi_channels.deadline``)."""
    return {
        "reply_channel": reply_channel,
        "http_version": http_version,
        "method": method,
        "scheme": scheme,
        "path": path,
        "query_string": query_string,
        "root_path": root_path,
        "headers": headers,
        "body": body,
        "body_channel": body_channel,
        "client": client,
        "server": server,
        EXT_KEY: 1,
        DEADLINE_KEY: deadline,
    }


def body_chunk(content: bytes, *, more: bool, closed: bool = False) -> Message:
    """One ``body_channel`` chunk; ``closed`` means the client went away mid-upload."""
    return {"content": content, "closed": closed, "more_content": more}


def websocket_base(
    *,
    reply_channel: str,
    path: str,
    query_string: bytes,
    root_path: str,
    scheme: str,
    headers: Sequence[Sequence[bytes]],
    client: Sequence[Any] | None,
    server: Sequence[Any] | None,
) -> Message:
    """The keys every ``websocket.*`` message of one connection carries: the
    handshake's, so the worker can present each event with the connection's cookies."""
    return {
        "reply_channel": reply_channel,
        "path": path,
        "query_string": query_string,
        "root_path": root_path,
        "scheme": scheme,
        "headers": headers,
        "client": client,
        "server": server,
        EXT_KEY: 1,
    }


def websocket_event(
    base: Mapping[str, Any], order: int, deadline: float, fields: Mapping[str, Any] = {}
) -> Message:
    """A ``websocket.connect`` (order 0), ``websocket.receive`` (``fields`` holds
    ``text`` or ``bytes``) or ``websocket.disconnect`` (``fields`` holds ``code``)."""
    message = dict(base)
    message.update(fields)
    message["order"] = order
    message[DEADLINE_KEY] = deadline
    return message


def disconnect_notice(reply_channel: str) -> Message:
    """What the interface sends to a worker's control channel when the client of a
    streaming response went away."""
    return {"type": DISCONNECT_TYPE, "reply_channel": reply_channel}


# -- WebSocket replies --------------------------------------------------------------------

_CLOSE_CODES_RESERVED = frozenset({1004, 1005, 1006, 1015})


def _close_code_ok(value: object) -> bool:
    if value is True or value is False:
        return True
    if type(value) is not int:
        return False
    # RFC 6455 7.4: 1000-2999 are defined or reserved for extensions, 3000-4999 for
    # libraries and applications; 1004-1006 and 1015 must never go in a close frame.
    return (1000 <= value <= 1014 and value not in _CLOSE_CODES_RESERVED) or (3000 <= value <= 4999)


def check_websocket_reply(message: Mapping[str, Any]) -> str | None:
    """Why *message* cannot be a reply to a WebSocket, or None if it can.

    A reply may carry ``accept`` (a bool), ``text`` (a str), ``bytes`` (bytes) and
    ``close`` (a bool or a close code a server may send: 1000-1003, 1007-1014,
    3000-4999); other keys are ignored. The interface server drops a message for
    which this returns a reason (logging it once) and leaves the socket as it was.
    """
    if "accept" in message and type(message["accept"]) is not bool:
        return "'accept' must be True or False"
    text = message.get("text")
    if text is not None and not isinstance(text, str):
        return f"'text' must be a str, not {type(text).__name__}"
    data = message.get("bytes")
    if data is not None and not isinstance(data, bytes):
        return f"'bytes' must be bytes, not {type(data).__name__}"
    close = message.get("close")
    if close is not None and not _close_code_ok(close):
        return f"'close' must be True, False or a close code, not {close!r:.40}"
    return None


def validate_websocket_reply(message: Mapping[str, Any]) -> None:
    """Raise InvalidMessage if *message* would be an invalid WebSocket reply (see
    :func:`check_websocket_reply`); the sender calls it before anything is sent."""
    reason = check_websocket_reply(message)
    if reason is not None:
        raise InvalidMessage(f"not a valid WebSocket message: {reason}")


# -- HTTP facts both sides parse ----------------------------------------------------------


def parse_content_length(value: bytes | str) -> int:
    """A ``Content-Length`` value as an int; ValueError unless it is 1*DIGIT (RFC 9110
    8.6: no sign, no spaces inside, no list)."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip(" \t")
    if not text or not text.isascii() or not text.isdigit():
        raise ValueError(f"invalid Content-Length {text!r:.40}")
    return int(text)


def split_host_port(value: str) -> tuple[str, int | None]:
    """``(host, port)`` from ``name``, ``name:port``, ``[v6]`` or ``[v6]:port``; a
    missing port is None, a port that is not a number -1. A bare IPv6 address without
    brackets is taken as a host."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, ""
    if not port_text:
        return host, None
    if not port_text.isascii() or not port_text.isdigit():
        return host, -1
    return host, int(port_text)


# -- retries ------------------------------------------------------------------------------


def full_retry_pauses(first: float = 0.002, most: float = 0.1) -> Iterator[float]:
    """Pauses between tries of a send that met ``ChannelFull``: doubling from *first*
    up to *most*. The caller stops at its own deadline."""
    pause = first
    while True:
        yield pause
        pause = min(pause * 2, most)


def header_values(headers: Iterable[Sequence[bytes]], name: bytes) -> list[bytes]:
    """Every value of header *name* (lower case) in ASGI ``[name, value]`` pairs."""
    return [pair[1] for pair in headers if pair[0] == name]
