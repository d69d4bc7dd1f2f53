"""Push onto channels and groups from ordinary synchronous code.

::

    from wsgi_channels import Channel, Group

    Group("liveblog").send({"text": json.dumps(post)})    # a Flask view, a cron job
    Group("liveblog").add(environ["wsgi_channels.reply_channel"])
    Channel(reply_channel).send({"close": True})

Which layer a send goes to, first match wins:

1. the ``layer=`` given to the :class:`Channel` or :class:`Group`;
2. inside a request wrapped by :class:`ChannelsMiddleware`, that request's layer (the
   middleware's ``layer=``, else the one our worker put in the environ, else the default);
3. :func:`~wsgi_channels.layers.get_default_layer`: ``WSGI_CHANNELS_LAYER``, Django's
   setting of that name, or ``sqlite:///.wsgi_channels.sqlite3``; made lazily once per
   process and made anew in a child after ``fork()``.

The layer is looked up at call time, never at construction, so a module-level
``LIVEBLOG = Group("liveblog")`` is safe under a pre-forking server such as gunicorn.

Every message sent is checked as a WebSocket reply first: one carrying ``accept``,
``text``, ``bytes`` or ``close`` of the wrong type (``{"text": {"a": 1}}``, a forgotten
``json.dumps``) raises :class:`~wsgi_channels.InvalidMessage` before anything is sent,
also inside :class:`ChannelsMiddleware`. Other errors are those of the layer:
:class:`~wsgi_channels.ChannelFull`,
:class:`~wsgi_channels.MessageTooLarge`, :class:`~wsgi_channels.InvalidChannelName`,
:class:`~wsgi_channels.InvalidMessage` and :class:`~wsgi_channels.LayerUnavailable`.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .layers import get_default_layer
from .layers.base import (
    MAX_MESSAGE_SIZE,
    InvalidChannelName,
    Message,
    decode_message,
    encode_message,
    validate_channel_name,
    validate_group_name,
)
from .protocol import validate_websocket_reply

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["Channel", "ChannelLayer", "ChannelsMiddleware", "Group"]

logger = logging.getLogger("wsgi_channels.sender")

LAYER_ENVIRON_KEY = "wsgi_channels.layer"


class ChannelLayer(Protocol):
    """What the sender needs of a layer: ours, or any ASGI 1.0 layer with ``groups``."""

    def send(self, channel: str, message: Message) -> None: ...

    def send_group(self, group: str, message: Message) -> None: ...

    def group_add(self, group: str, channel: str) -> None: ...

    def group_discard(self, group: str, channel: str) -> None: ...

    def group_channels(self, group: str) -> list[str]: ...


@dataclass
class _Outbox:
    """Sends held back until the request that made them has succeeded."""

    # (layer, "send" or "send_group", channel or group name, validated copy of message)
    pending: list[tuple[ChannelLayer, str, str, Message]] = field(default_factory=list)

    def flush(self) -> None:
        """Deliver every held message in the order it was sent. A failure (ChannelFull,
        LayerUnavailable) is logged and does not stop the messages after it: the
        response is over, there is nobody left to raise to."""
        pending, self.pending = self.pending, []
        outer = _scope.get()
        if outer is not None and outer.outbox is not None and outer.outbox is not self:
            # An enclosing ChannelsMiddleware decides for the whole request.
            outer.outbox.pending.extend(pending)
            return
        for layer, method, name, message in pending:
            try:
                getattr(layer, method)(name, message)
            except Exception:
                logger.exception("held-back %s to %r failed after the response", method, name)


@dataclass
class _RequestScope:
    """What :class:`ChannelsMiddleware` sets for the duration of one request."""

    layer: ChannelLayer
    outbox: _Outbox | None


_scope: contextvars.ContextVar[_RequestScope | None] = contextvars.ContextVar(
    "wsgi_channels.sender.scope", default=None
)


def _copy_validated(layer: ChannelLayer, message: Message) -> Message:
    """A private copy of *message*, after the checks the layer will make on send.

    Held-back messages are validated when they are sent, not when they are delivered,
    so that a programming error (a value msgpack cannot carry, a message over the size
    limit) raises in the view that made it; the copy keeps later mutation by the
    caller from changing what is delivered.
    """
    max_size = getattr(layer, "max_message_size", MAX_MESSAGE_SIZE)
    return decode_message(encode_message(message, max_size))


class _Target:
    """Common ground of :class:`Channel` and :class:`Group`: a name and a lazy layer."""

    __slots__ = ("_layer", "name")

    def __init__(self, name: str, layer: ChannelLayer | None) -> None:
        self.name = name
        self._layer = layer

    @property
    def layer(self) -> ChannelLayer:
        """The layer a call made now would use (see the module docstring)."""
        if self._layer is not None:
            return self._layer
        scope = _scope.get()
        if scope is not None:
            return scope.layer
        return get_default_layer()

    def _deliver(self, method: str, message: Message) -> None:
        # Any message may end up on a socket's reply channel, where a "text" that is not
        # a str would be dropped by the interface server far from the code that made
        # it; refuse it here instead. Messages without accept/text/bytes/close pass.
        validate_websocket_reply(message)
        layer = self.layer
        scope = _scope.get()
        if scope is not None and scope.outbox is not None:
            scope.outbox.pending.append((layer, method, self.name, _copy_validated(layer, message)))
        else:
            getattr(layer, method)(self.name, message)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Target) or type(other) is not type(self):
            return NotImplemented
        return self.name == other.name and self._layer is other._layer

    def __hash__(self) -> int:
        return hash((type(self), self.name))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Channel(_Target):
    """A channel to send messages to, by name.

    The name is checked here: InvalidChannelName for a name that breaks the ASGI 1.0
    rules, or a process-specific prefix (``"name!"``, ``"name?"``) that has no local
    part and so cannot be sent to.
    """

    __slots__ = ()

    def __init__(self, name: str, *, layer: ChannelLayer | None = None) -> None:
        validate_channel_name(name)
        if name.endswith(("!", "?")):
            raise InvalidChannelName(f"cannot send to {name!r}: it has no local part")
        super().__init__(name, layer)

    def send(self, message: Message) -> None:
        """Put *message* on this channel.

        InvalidMessage if it would be an invalid WebSocket reply (``text`` not a str,
        ``bytes`` not bytes, ``close`` neither a bool nor a close code, ``accept`` not
        a bool). Inside a :class:`ChannelsMiddleware` request (not ``immediate``), the
        message is checked now (InvalidMessage, MessageTooLarge) and delivered after the response
        has finished successfully; otherwise it is delivered now and ChannelFull or
        LayerUnavailable may be raised.
        """
        self._deliver("send", message)


class Group(_Target):
    """A named set of channels that a message is broadcast to.

    The name is checked here (InvalidChannelName: ASCII letters, digits, ``-``, ``_``
    and ``.``, shorter than 100 characters).
    """

    __slots__ = ()

    def __init__(self, name: str, *, layer: ChannelLayer | None = None) -> None:
        validate_group_name(name)
        super().__init__(name, layer)

    def send(self, message: Message) -> None:
        """Send *message* to every member of the group.

        Never raises ChannelFull: members that are full are skipped (and counted by the
        layer). Checked (InvalidMessage) and held back inside a
        :class:`ChannelsMiddleware` request like :meth:`Channel.send`.
        """
        self._deliver("send_group", message)

    def add(self, channel: str) -> None:
        """Add *channel* to the group, or refresh its membership (memberships expire
        after the layer's ``group_expiry``, one day by default). Done at once, also
        inside a request: it sends nothing."""
        self.layer.group_add(self.name, channel)

    def discard(self, channel: str) -> None:
        """Remove *channel* from the group; no error if it was not a member."""
        self.layer.group_discard(self.name, channel)

    def channels(self) -> list[str]:
        """The channels in the group now (memberships not expired)."""
        return list(self.layer.group_channels(self.name))


class ChannelsMiddleware:
    """WSGI middleware that makes a request's sends succeed or fail with it.

    For each request it puts the layer in ``environ["wsgi_channels.layer"]`` and makes
    it the layer of :class:`Channel` and :class:`Group` objects created without
    ``layer=``. The layer is *layer*, else the one already in the environ (our worker
    puts its own there), else :func:`~wsgi_channels.layers.get_default_layer`.

    Unless *immediate* is true, the messages sent during the request (by the app call,
    by iterating its response and by its ``close()``) are held back and delivered, in
    order, only when the response has finished and been closed, with a status below
    500 and no exception. Finished means iterated to the end, or as far as its
    ``Content-Length`` (servers may stop there), or any HEAD response. A request that
    raises, answers 5xx, or whose response is abandoned before its end (the client
    went away) sends nothing. Group membership changes (``add``, ``discard``) are
    never held back.

    Delivery happens inside the response's ``close()``; a delivery that fails then
    (ChannelFull, LayerUnavailable) is logged to ``wsgi_channels.sender`` and does not
    stop the messages after it.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        layer: ChannelLayer | None = None,
        immediate: bool = False,
    ) -> None:
        self.app = app
        self.layer = layer
        self.immediate = immediate

    def _request_layer(self, environ: WSGIEnvironment) -> ChannelLayer:
        if self.layer is not None:
            return self.layer
        existing = environ.get(LAYER_ENVIRON_KEY)
        if existing is not None:
            layer: ChannelLayer = existing
            return layer
        return get_default_layer()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        layer = self._request_layer(environ)
        environ[LAYER_ENVIRON_KEY] = layer
        scope = _RequestScope(layer, None if self.immediate else _Outbox())
        response = _HeldResponse(scope, head=environ.get("REQUEST_METHOD") == "HEAD")

        def tracking_start_response(
            status: str,
            headers: list[tuple[str, str]],
            exc_info: OptExcInfo | None = None,
        ) -> Callable[[bytes], object]:
            response.status = status
            response.content_length = _content_length(headers)
            return start_response(status, headers, exc_info)

        token = _scope.set(scope)
        try:
            response.iterable = self.app(environ, tracking_start_response)
        except BaseException:
            response.failed = True
            scope.outbox = None
            raise
        finally:
            _scope.reset(token)
        return response


def _content_length(headers: list[tuple[str, str]]) -> int | None:
    for name, value in headers:
        if name.lower() == "content-length":
            value = value.strip()
            return int(value) if value.isdigit() else None
    return None


class _HeldResponse:
    """The app's response iterable, run inside the request's scope; delivers or drops
    the held-back messages when closed."""

    def __init__(self, scope: _RequestScope, *, head: bool) -> None:
        self.scope = scope
        self.head = head
        self.iterable: Iterable[bytes] = ()
        self.iterator: Iterator[bytes] | None = None
        self.status: str | None = None
        self.failed = False
        self.content_length: int | None = None
        self.sent = 0
        self.exhausted = False
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        token = _scope.set(self.scope)
        try:
            if self.iterator is None:
                self.iterator = iter(self.iterable)
            chunk = next(self.iterator)
            self.sent += len(chunk)
            return chunk
        except StopIteration:
            self.exhausted = True
            raise
        except BaseException:
            self.failed = True
            raise
        finally:
            _scope.reset(token)

    def _succeeded(self) -> bool:
        if self.failed or self.status is None:
            return False
        # A server may stop iterating once it has sent Content-Length bytes, or send
        # nothing of a HEAD response; that is a finished response too.
        complete = (
            self.exhausted
            or self.head
            or (self.content_length is not None and self.sent >= self.content_length)
        )
        if not complete:
            return False
        try:
            return int(self.status.split(None, 1)[0]) < 500
        except ValueError:
            return False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        token = _scope.set(self.scope)
        try:
            close = getattr(self.iterable, "close", None)
            if close is not None:
                close()
        except BaseException:
            self.failed = True
            raise
        finally:
            _scope.reset(token)
            outbox = self.scope.outbox
            self.scope.outbox = None
            if outbox is not None and self._succeeded():
                outbox.flush()
