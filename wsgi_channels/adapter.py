"""Pure translation between channel messages and WSGI (PEP 3333); no I/O, no threads.

Three pieces, each testable without a layer, a thread or a socket:

* :func:`build_environ` turns an ``http.request`` message (ASGI 1.0 "www") into a
  PEP 3333 ``environ``; :func:`websocket_environ` does the same for a ``websocket.*``
  event, presented to the app as a GET to the connection's path (docs/websockets.md).
* :class:`ResponseTranslator` implements ``start_response`` and the ``write()``
  callable, and turns what the app produces into reply messages
  (``{status, headers, content, more_content}`` then ``{content, more_content}``),
  handed to an ``emit`` callable that the caller (the worker) supplies.
* :func:`websocket_replies` maps the response to a WebSocket event onto
  ``accept`` / ``text`` / ``bytes`` / ``close`` replies.

The ``wsgi_channels.*`` keys and limits come from :mod:`wsgi_channels.protocol`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import IO, Any, Literal, Protocol, TypedDict

from .layers.base import ChannelsError
from .protocol import MAX_CHUNK_SIZE

#: environ keys set by the adapter, beside PEP 3333's.
ENV_REPLY_CHANNEL = "wsgi_channels.reply_channel"
ENV_LAYER = "wsgi_channels.layer"
ENV_WEBSOCKET = "wsgi_channels.websocket"
ENV_WEBSOCKET_CODE = "wsgi_channels.websocket.code"

#: Items of a list or tuple body (all available at once) are merged up to this size.
COALESCE_SIZE = 64 * 1024

__all__ = [
    "FileWrapper",
    "HTTPRequestMessage",
    "InvalidResponse",
    "MalformedMessage",
    "ResponseTranslator",
    "WebSocketMessage",
    "build_environ",
    "error_reply",
    "websocket_environ",
    "websocket_replies",
]

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
OptExcInfo = ExcInfo | tuple[None, None, None]
Emit = Callable[[dict[str, Any]], None]


class MalformedMessage(ChannelsError, ValueError):
    """A message lacks a key the ASGI 1.0 format requires or has a value of the wrong
    type. The worker logs it and answers 400 when the ``reply_channel`` is usable."""


class InvalidResponse(ChannelsError, ValueError):
    """The app broke PEP 3333: a bad status or header (CR, LF or NUL in a header
    included), ``write()`` before ``start_response``, ``start_response`` twice without
    ``exc_info``, or a body chunk that is not bytes. The worker answers 500."""


# -- message shapes (ASGI 1.0 "www") ---------------------------------------------------


class _HTTPRequestRequired(TypedDict):
    reply_channel: str
    #: Unicode path, percent escapes and UTF-8 decoded.
    path: str
    #: Upper-case method name.
    method: str


class HTTPRequestMessage(_HTTPRequestRequired, total=False):
    """``http.request``: the three keys above are required, the rest default."""

    http_version: str  # "1.0", "1.1" or "2"; default "1.1"
    scheme: str  # default "http"
    query_string: bytes  # raw, undecoded; default b""
    root_path: str  # what WSGI calls SCRIPT_NAME; default ""
    headers: list[list[bytes]]  # [name, value], lower-case names, order kept
    body: bytes  # default b""
    body_channel: str | None  # a "?" channel with {content, closed, more_content}
    client: list[Any] | None  # [host, port]
    server: list[Any] | None  # [host, port]


class _WebSocketRequired(TypedDict):
    reply_channel: str
    path: str


class WebSocketMessage(_WebSocketRequired, total=False):
    """``websocket.connect`` / ``receive`` / ``disconnect``. Our interface server adds
    the handshake's ``headers``, ``query_string``, ``client`` ... to every event."""

    order: int
    scheme: str
    query_string: bytes
    root_path: str
    headers: list[list[bytes]]
    client: list[Any] | None
    server: list[Any] | None
    text: str | None  # receive: exactly one of text and bytes
    bytes: bytes | None
    code: int  # disconnect


class HTTPResponseStart(TypedDict):
    status: int
    headers: list[list[bytes]]
    content: bytes
    more_content: bool


class HTTPResponseChunk(TypedDict):
    content: bytes
    more_content: bool


class InputStream(Protocol):
    """What ``wsgi.input`` must offer (PEP 3333)."""

    def read(self, size: int = -1, /) -> bytes: ...
    def readline(self, size: int = -1, /) -> bytes: ...
    def readlines(self, hint: int = -1, /) -> list[bytes]: ...
    def __iter__(self) -> Iterator[bytes]: ...


# -- message -> environ -----------------------------------------------------------------

_TOKEN = re.compile(r"^[A-Z0-9!#$%&'*+.^_`|~-]+$", re.ASCII)
_SCHEME_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}
_WS_SCHEMES = {"ws": "http", "wss": "https"}
_TEXT_PLAIN = "text/plain; charset=utf-8"
_OCTET_STREAM = "application/octet-stream"


def _bad(message: str) -> MalformedMessage:
    return MalformedMessage(message)


def _require_str(message: Mapping[str, Any], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str):
        if value is None:
            raise _bad(f"message has no {key!r}")
        raise _bad(f"{key!r} must be a str, not {type(value).__name__}")
    return value


def _optional_str(message: Mapping[str, Any], key: str, default: str) -> str:
    value = message.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _bad(f"{key!r} must be a str, not {type(value).__name__}")
    return value


def _optional_bytes(message: Mapping[str, Any], key: str, *, ascii_str: bool = False) -> bytes:
    value = message.get(key)
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    # Some ASGI 1.0 front ends sent the query string as a str; accept ASCII only.
    if ascii_str and isinstance(value, str) and value.isascii():
        return value.encode("ascii")
    raise _bad(f"{key!r} must be bytes, not {type(value).__name__}")


def _address(message: Mapping[str, Any], key: str) -> tuple[str, int | None] | None:
    value = message.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not isinstance(value[0], str)
        or not (value[1] is None or (isinstance(value[1], int) and not isinstance(value[1], bool)))
    ):
        raise _bad(f"{key!r} must be [host, port] or None")
    return value[0], value[1]


def _header_pairs(message: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Headers as latin-1 ``(lower-case name, value)`` str pairs."""
    raw = message.get("headers")
    if raw is None:
        return []
    if not isinstance(raw, (list, tuple)):
        raise _bad(f"'headers' must be a list, not {type(raw).__name__}")
    pairs = []
    for item in raw:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise _bad("each header must be a [name, value] pair")
        name, value = item
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        elif not isinstance(name, str):
            raise _bad("header names must be bytes")
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        elif not isinstance(value, str):
            raise _bad("header values must be bytes")
        pairs.append((name.lower(), value))
    return pairs


def _add_headers(environ: dict[str, Any], pairs: list[tuple[str, str]]) -> None:
    """Repeated headers are joined with "," (cookies with "; "), as gunicorn,
    werkzeug, wsgiref and Channels 1.x join them."""
    for name, value in pairs:
        # "foo_bar" and "foo-bar" would both become HTTP_FOO_BAR: a proxy that filters
        # one spelling would let the other through (the nginx/Apache rule). Drop them.
        if "_" in name:
            continue
        if name == "content-type":
            key = "CONTENT_TYPE"
        elif name == "content-length":
            key = "CONTENT_LENGTH"
        else:
            key = "HTTP_" + name.upper().replace("-", "_")
        existing = environ.get(key)
        if existing is None:
            environ[key] = value
        elif key == "HTTP_COOKIE":
            environ[key] = existing + "; " + value
        else:
            environ[key] = existing + "," + value


def _wsgi_path(path: str, root_path: str) -> tuple[str, str]:
    """``(SCRIPT_NAME, PATH_INFO)`` as WSGI strings: UTF-8 bytes seen as latin-1."""
    script_name = root_path.rstrip("/")
    if script_name and (path == script_name or path.startswith(script_name + "/")):
        path = path[len(script_name) :]
    return (
        script_name.encode("utf-8", "surrogateescape").decode("latin-1"),
        path.encode("utf-8", "surrogateescape").decode("latin-1"),
    )


def _split_host(host: str, scheme: str) -> tuple[str, str]:
    """``(SERVER_NAME, SERVER_PORT)`` from a Host header: ``name``, ``name:port``,
    ``[v6]`` or ``[v6]:port``; the scheme's port when none is given."""
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and (not name.startswith("[") or name.endswith("]")):
        return name, port
    return host or "localhost", _SCHEME_PORTS[scheme]


class _ErrorStream(Protocol):
    def write(self, s: str, /) -> Any: ...
    def flush(self) -> Any: ...
    def writelines(self, lines: Iterable[str], /) -> Any: ...


def _base_environ(
    message: Mapping[str, Any],
    *,
    method: str,
    scheme_default: str,
    http_version: str,
    body_stream: InputStream,
    layer: object,
    errors: _ErrorStream | None,
) -> dict[str, Any]:
    reply_channel = _require_str(message, "reply_channel")
    path = _require_str(message, "path")
    if not path.startswith("/"):
        raise _bad(f"'path' must start with '/', not {path[:20]!r}")
    root_path = _optional_str(message, "root_path", "")
    scheme = _optional_str(message, "scheme", scheme_default).lower()
    scheme = _WS_SCHEMES.get(scheme, scheme)
    if scheme not in ("http", "https"):
        raise _bad(f"unknown scheme {scheme!r}")
    query_string = _optional_bytes(message, "query_string", ascii_str=True)
    pairs = _header_pairs(message)
    client = _address(message, "client")
    server = _address(message, "server")
    script_name, path_info = _wsgi_path(path, root_path)

    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path_info,
        "QUERY_STRING": query_string.decode("latin-1"),
        "SERVER_PROTOCOL": "HTTP/" + http_version,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": body_stream,
        # Our streams end at the end of the body: readers need no CONTENT_LENGTH.
        "wsgi.input_terminated": True,
        "wsgi.errors": errors if errors is not None else sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
        ENV_REPLY_CHANNEL: reply_channel,
        ENV_LAYER: layer,
    }
    _add_headers(environ, pairs)
    if server is not None:
        environ["SERVER_NAME"] = server[0]
        environ["SERVER_PORT"] = str(server[1]) if server[1] is not None else _SCHEME_PORTS[scheme]
    else:
        environ["SERVER_NAME"], environ["SERVER_PORT"] = _split_host(
            environ.get("HTTP_HOST", ""), scheme
        )
    if client is not None:
        environ["REMOTE_ADDR"] = client[0]
        if client[1] is not None:
            environ["REMOTE_PORT"] = str(client[1])
    return environ


def build_environ(
    message: Mapping[str, Any],
    body_stream: InputStream,
    *,
    layer: object = None,
    errors: _ErrorStream | None = None,
) -> dict[str, Any]:
    """The PEP 3333 environ for an ``http.request`` *message*.

    *body_stream* becomes ``wsgi.input``; it must yield the whole body (``body`` and
    then anything on ``body_channel``), which is the caller's business. Missing
    optional keys take their ASGI 1.0 defaults. ``CONTENT_LENGTH`` comes from the
    header, or from ``len(body)`` when the body is complete inline.

    Raises MalformedMessage when ``reply_channel``, ``path`` or ``method`` is missing
    or a value has the wrong type.
    """
    method = _require_str(message, "method").upper()
    if not _TOKEN.match(method):
        raise _bad(f"bad method {method[:20]!r}")
    http_version = _optional_str(message, "http_version", "1.1")
    if http_version not in ("1.0", "1.1", "2", "2.0", "3"):
        raise _bad(f"unknown http_version {http_version[:10]!r}")
    body = _optional_bytes(message, "body")
    body_channel = message.get("body_channel")
    if body_channel is not None and not isinstance(body_channel, str):
        raise _bad("'body_channel' must be a str or None")
    environ = _base_environ(
        message,
        method=method,
        scheme_default="http",
        http_version=http_version,
        body_stream=body_stream,
        layer=layer,
        errors=errors,
    )
    if "CONTENT_LENGTH" not in environ and body_channel is None and body:
        environ["CONTENT_LENGTH"] = str(len(body))
    return environ


def websocket_frame(message: Mapping[str, Any]) -> tuple[bytes, str]:
    """The ``(body, CONTENT_TYPE)`` of a ``websocket.receive`` message."""
    text = message.get("text")
    data = message.get("bytes")
    if text is not None:
        if not isinstance(text, str):
            raise _bad("'text' must be a str")
        return text.encode("utf-8", "surrogatepass"), _TEXT_PLAIN
    if data is not None:
        if not isinstance(data, bytes):
            raise _bad("'bytes' must be bytes")
        return data, _OCTET_STREAM
    raise _bad("websocket.receive has neither 'text' nor 'bytes'")


def websocket_environ(
    message: Mapping[str, Any],
    event: Literal["connect", "receive", "disconnect"],
    body_stream: InputStream,
    *,
    layer: object = None,
    errors: _ErrorStream | None = None,
) -> dict[str, Any]:
    """The environ presenting a WebSocket *event* to a WSGI app (docs/websockets.md).

    A GET to the connection's ``path`` with the handshake's query string and headers
    (so cookies and sessions work) except ``Upgrade`` and ``Connection``,
    ``environ["wsgi_channels.websocket"]`` set to
    *event*; for ``disconnect`` also ``"wsgi_channels.websocket.code"`` (default
    1000). For ``receive`` *body_stream* must yield the frame (see
    :func:`websocket_frame`), whose ``CONTENT_TYPE`` and ``CONTENT_LENGTH`` are set
    here; for the other events it must be empty.
    """
    environ = _base_environ(
        message,
        method="GET",
        scheme_default="ws",
        http_version="1.1",
        body_stream=body_stream,
        layer=layer,
        errors=errors,
    )
    # The handshake's body headers (if any) say nothing about this event's body.
    environ.pop("CONTENT_TYPE", None)
    environ.pop("CONTENT_LENGTH", None)
    # Each event is a plain GET, not an upgrade request: with "Upgrade: websocket" and
    # "Connection: Upgrade" left in, werkzeug's router treats it as a WebSocket route
    # match and Flask answers 400 for its ordinary routes. They are hop-by-hop headers
    # of the handshake; the Sec-WebSocket-* ones (subprotocols, ...) are kept.
    environ.pop("HTTP_UPGRADE", None)
    environ.pop("HTTP_CONNECTION", None)
    environ[ENV_WEBSOCKET] = event
    order = message.get("order", 0)
    if not isinstance(order, int) or isinstance(order, bool):
        raise _bad("'order' must be an int")
    if event == "receive":
        body, content_type = websocket_frame(message)
        environ["CONTENT_TYPE"] = content_type
        environ["CONTENT_LENGTH"] = str(len(body))
    elif event == "disconnect":
        code = message.get("code", 1000)
        if not isinstance(code, int) or isinstance(code, bool):
            raise _bad("'code' must be an int")
        environ[ENV_WEBSOCKET_CODE] = code
    return environ


# -- response -> messages ---------------------------------------------------------------


class FileWrapper:
    """``wsgi.file_wrapper``: iterate a file-like object in blocks of *blksize* bytes.

    ``close()`` closes the file if it has a ``close`` method (PEP 3333), so the server
    calling the iterable's ``close()`` releases the file.
    """

    def __init__(self, filelike: IO[bytes], blksize: int = MAX_CHUNK_SIZE) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        blksize = self.blksize
        while True:
            data = read(blksize)
            if not data:
                return
            yield data


def _check_header_text(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise InvalidResponse(f"{what} must be a str, not {type(text).__name__}")
    # Response splitting: a CR or LF would let the app's data start a new header.
    if "\r" in text or "\n" in text or "\0" in text:
        raise InvalidResponse(f"{what} {text[:40]!r} contains CR, LF or NUL")
    return text


def _status_code(status: object) -> int:
    status = _check_header_text(status, "status")
    code = status[:3]
    if len(status) < 4 or not code.isdigit() or status[3] != " " or not 100 <= int(code) <= 999:
        raise InvalidResponse(f"status {status[:40]!r} is not '<3 digits> <reason>'")
    return int(code)


def _encode_headers(headers: object) -> tuple[list[list[bytes]], int | None]:
    if not isinstance(headers, list):
        raise InvalidResponse(f"headers must be a list, not {type(headers).__name__}")
    encoded = []
    content_length = None
    for item in headers:
        if not isinstance(item, tuple) or len(item) != 2:
            raise InvalidResponse(f"each header must be a (name, value) tuple, not {item!r}")
        name = _check_header_text(item[0], "header name").lower()
        value = _check_header_text(item[1], "header value")
        if not name or ":" in name or " " in name:
            raise InvalidResponse(f"bad header name {name[:40]!r}")
        try:
            pair = [name.encode("latin-1"), value.encode("latin-1")]
        except UnicodeEncodeError:
            raise InvalidResponse(f"header {name[:40]!r} is not latin-1") from None
        if name == "content-length" and value.strip().isdigit():
            content_length = int(value)
        encoded.append(pair)
    return encoded, content_length


class ResponseTranslator:
    """The server side of one WSGI response: ``start_response``, ``write()``, and the
    reply messages for ``http.request`` (ASGI 1.0).

    Messages go to *emit* as soon as they are known, in order: the first is
    ``{status, headers, content, more_content}``, the others ``{content,
    more_content}``; :meth:`finish` emits the last one (``more_content: False``).

    Contract, after PEP 3333:

    * Headers are held until the first non-empty body chunk (or :meth:`finish`), so
      an app may still call ``start_response(..., exc_info)`` to replace them until
      then. With ``exc_info`` once they are sent, the exception is re-raised.
    * Each chunk is emitted when it arrives, so pushed data (server-sent events, a
      long poll) is never held back waiting for the next one; a chunk larger than
      *max_chunk* is split. Merging happens only where it costs no latency: items of
      a list/tuple body (:meth:`feed_all`), and the first chunk of a response whose
      ``Content-Length`` it completes, which is sent as the only message.
    * For ``HEAD`` no body is emitted; :attr:`done` turns true once the headers are
      final, so the caller can stop iterating.
    * Bad status/headers (CR, LF or NUL included) raise InvalidResponse from
      ``start_response``; so do ``write()`` before it and non-bytes chunks.

    *extra_first* is merged into the first message if the response streams
    (``more_content: True``), e.g. ``{"wsgi_channels.control": channel}``.
    """

    __slots__ = (
        "_content_length",
        "_emit",
        "_head",
        "_headers",
        "_max_chunk",
        "_status",
        "bytes_sent",
        "done",
        "extra_first",
        "headers_sent",
        "status",
    )

    def __init__(
        self,
        emit: Emit,
        *,
        method: str = "GET",
        max_chunk: int = MAX_CHUNK_SIZE,
        extra_first: Mapping[str, Any] | None = None,
    ) -> None:
        self._emit = emit
        self._head = method == "HEAD"
        self._max_chunk = max_chunk
        self._status: int | None = None
        self._headers: list[list[bytes]] = []
        self._content_length: int | None = None
        self.extra_first = extra_first
        #: The status code given to start_response (None before), for the access log.
        self.status: int | None = None
        self.headers_sent = False
        #: True once the last message was emitted: nothing more will be sent.
        self.done = False
        self.bytes_sent = 0

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        """PEP 3333 ``start_response``; returns :meth:`write`."""
        if exc_info is not None and exc_info[0] is not None:
            try:
                if self.headers_sent:
                    # Too late to change the status: PEP 3333 says re-raise.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # break the frame <-> traceback cycle
        elif self._status is not None:
            raise InvalidResponse("start_response called twice without exc_info")
        code = _status_code(status)
        encoded, content_length = _encode_headers(headers)
        self._status = self.status = code
        self._headers = encoded
        self._content_length = content_length
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333 ``write()``: emit *data* now (split if large)."""
        if self._status is None:
            raise InvalidResponse("write() called before start_response()")
        if not isinstance(data, bytes):
            raise InvalidResponse(f"the app wrote {type(data).__name__}, not bytes")
        if data and not self.done:
            self._send(data)

    def feed(self, data: bytes) -> None:
        """One item of the app's iterable (same contract as :meth:`write`)."""
        self.write(data)

    def feed_all(self, items: list[bytes] | tuple[bytes, ...]) -> None:
        """All items of a list or tuple body, merged into chunks of up to
        ``COALESCE_SIZE`` (they are all available now, so merging costs no latency)."""
        if self._status is None:
            raise InvalidResponse("the app returned a body before calling start_response()")
        pending: list[bytes] = []
        size = 0
        for data in items:
            if not isinstance(data, bytes):
                raise InvalidResponse(f"the app yielded {type(data).__name__}, not bytes")
            pending.append(data)
            size += len(data)
            if size >= COALESCE_SIZE:
                self.write(b"".join(pending))
                pending.clear()
                size = 0
        if size:
            self.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def _send(self, data: bytes) -> None:
        if not self.headers_sent:
            self.headers_sent = True
            if self._head:
                self._last_first(b"")
                return
            first = data[: self._max_chunk]
            data = data[self._max_chunk :]
            length = self._content_length
            if not data and length is not None and len(first) >= length:
                self._last_first(first[:length])
                return
            message: dict[str, Any] = {
                "status": self._status,
                "headers": self._headers,
                "content": first,
                "more_content": True,
            }
            if self.extra_first:
                message.update(self.extra_first)
            self.bytes_sent += len(first)
            self._emit(message)
            if not data:
                return
        step = self._max_chunk
        self.bytes_sent += len(data)
        if len(data) <= step:
            self._emit({"content": data, "more_content": True})
            return
        for start in range(0, len(data), step):
            self._emit({"content": data[start : start + step], "more_content": True})

    def _last_first(self, content: bytes) -> None:
        self.done = True
        self.bytes_sent += len(content)
        self._emit(
            {
                "status": self._status,
                "headers": self._headers,
                "content": content,
                "more_content": False,
            }
        )

    def finish(self) -> None:
        """Emit the last message: the whole response if nothing was sent yet."""
        if self.done:
            return
        if self._status is None:
            raise InvalidResponse("the app returned without calling start_response()")
        if not self.headers_sent:
            self.headers_sent = True
            self._last_first(b"")
            return
        self.done = True
        self._emit({"content": b"", "more_content": False})


def error_reply(status: int, body: bytes) -> dict[str, Any]:
    """A complete plain-text HTTP reply, for the 400 and 500 the worker makes itself."""
    return {
        "status": status,
        "headers": [
            [b"content-type", b"text/plain; charset=utf-8"],
            [b"content-length", str(len(body)).encode("ascii")],
        ],
        "content": body,
        "more_content": False,
    }


def _is_text(headers: list[list[bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            mime = value.split(b";", 1)[0].strip().lower()
            return (
                mime.startswith(b"text/") or mime == b"application/json" or mime.endswith(b"+json")
            )
    return False


def websocket_replies(
    event: Literal["connect", "receive", "disconnect"],
    status: int,
    headers: list[list[bytes]],
    body: bytes,
) -> list[dict[str, Any]]:
    """The WebSocket replies for the app's response to *event* (docs/websockets.md).

    ============ ======================================= ==============================
    event        response                                replies
    ============ ======================================= ==============================
    connect      2xx                                     accept, then body as a frame
    connect      anything else                           ``{"close": True}`` (403)
    receive      2xx with a body                         the body as a frame
    receive      5xx                                     ``{"close": 1011}``
    disconnect   anything                                none
    ============ ======================================= ==============================

    A frame is text for ``text/*`` and JSON content types (when the body is UTF-8),
    else bytes.
    """
    ok = 200 <= status < 300
    replies: list[dict[str, Any]] = []
    if event == "connect":
        if not ok:
            return [{"close": True}]
        replies.append({"accept": True})
    elif event == "receive":
        if status >= 500:
            return [{"close": 1011}]
        if not ok:
            return replies
    else:
        return replies
    if body:
        if _is_text(headers):
            try:
                replies.append({"text": body.decode("utf-8")})
                return replies
            except UnicodeDecodeError:
                pass
        replies.append({"bytes": body})
    return replies
