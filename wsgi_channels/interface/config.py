"""The interface server's configuration: one object, built in one place.

:class:`InterfaceConfig` is what every interface process runs with. The command line
(``wsgi-channels interface`` / ``run``), the environment (``WSGI_CHANNELS_*``, read by
:meth:`InterfaceConfig.from_environ` for ``uvicorn --factory`` and each ``--workers``
process) and :func:`~wsgi_channels.interface.create_app` all produce it, so they
cannot parse a setting differently.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..layers.base import ConfigurationError
from ..protocol import split_host_port

__all__ = ["DEFAULT_MAX_BODY", "ENV_PREFIX", "InterfaceConfig", "OriginRules", "parse_size"]

DEFAULT_MAX_BODY = 100 * 1024 * 1024
ENV_PREFIX = "WSGI_CHANNELS_"

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def parse_size(value: str) -> int:
    """``"1048576"``, ``"512K"``, ``"10M"``, ``"1G"`` (powers of 1024) as bytes."""
    text = value.strip().upper().removesuffix("B")
    factor = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
    if factor != 1:
        text = text[:-1]
    number = int(text) * factor
    if number < 0:
        raise ValueError("a size cannot be negative")
    return number


def parse_origins(value: str) -> list[str]:
    """``WSGI_CHANNELS_ALLOWED_ORIGINS``: patterns separated by spaces or commas."""
    return value.replace(",", " ").split()


class OriginRules:
    """Which ``Origin`` a WebSocket handshake may come from.

    With no patterns, the Origin's host and port must equal the ``Host`` header's (the
    page was served by this site). Each pattern allows more: ``https://example.com``
    (that scheme, host and port), ``example.com:8000`` or ``*.example.com`` (any scheme;
    glob on the host name, port checked when given) and ``*`` (anything). A handshake
    without an ``Origin`` header comes from a non-browser client and is allowed; the
    literal ``null`` origin is allowed only by ``*``; two ``Origin`` headers are refused.
    """

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.allow_all = False
        self.rules: list[tuple[str | None, str, int | None]] = []
        for raw in patterns:
            pattern = raw.strip()
            if not pattern:
                continue
            if pattern == "*":
                self.allow_all = True
                continue
            scheme: str | None = None
            if "://" in pattern:
                scheme, _, pattern = pattern.partition("://")
                scheme = scheme.lower()
            host, port = split_host_port(pattern.rstrip("/"))
            if not host or port == -1:
                raise ConfigurationError(f"bad allowed origin {raw!r}")
            if scheme is not None and port is None:
                port = _DEFAULT_PORTS.get(scheme)
            self.rules.append((scheme, host.lower(), port))

    def allowed(self, headers: Iterable[tuple[bytes, bytes]], scheme: str) -> bool:
        origins: list[str] = []
        host_header = None
        for name, value in headers:
            if name == b"origin":
                origins.append(value.decode("latin-1").strip())
            elif name == b"host":
                host_header = value.decode("latin-1").strip()
        if not origins:
            return True
        if len(origins) > 1:
            return False  # which one would the browser have meant? Neither.
        if self.allow_all:
            return True
        parsed = urllib.parse.urlsplit(origins[0])
        origin_scheme = parsed.scheme.lower()
        try:
            origin_host, origin_port = parsed.hostname, parsed.port
        except ValueError:
            return False
        if not origin_host or origin_scheme not in _DEFAULT_PORTS:
            return False
        if origin_port is None:
            origin_port = _DEFAULT_PORTS[origin_scheme]
        if host_header is not None:
            host, port = split_host_port(host_header)
            if port is None:
                port = 443 if scheme in ("wss", "https") else 80
            if host.lower() == origin_host and port == origin_port:
                return True
        for rule_scheme, rule_host, rule_port in self.rules:
            if rule_scheme is not None and rule_scheme != origin_scheme:
                continue
            if rule_port is not None and rule_port != origin_port:
                continue
            if fnmatch.fnmatchcase(origin_host, rule_host):
                return True
        return False


@dataclasses.dataclass(frozen=True)
class InterfaceConfig:
    """Settings of an interface process (each has a ``WSGI_CHANNELS_*`` variable).

    * ``http_timeout``: seconds an HTTP request waits for its response to start (then
      504) and, once streaming, for each next chunk (then the connection is cut); also
      the time a WebSocket event may take before the socket is closed with 1011.
    * ``websocket_connect_timeout``: seconds a handshake waits for accept (then 403).
    * ``allowed_origins``: extra WebSocket origins, see :class:`OriginRules`.
    * ``max_body``: largest request body in bytes; larger gets 413.
    * ``root_path``: the ``root_path`` (WSGI ``SCRIPT_NAME``) put in every message.
    * ``response_buffer``: bytes of one HTTP response held while its client is slower
      than the worker; over it the connection is cut and the worker told.
    * ``websocket_queue``: messages waiting to be written to one WebSocket, and
      ``websocket_write_buffer`` bytes waiting in its socket; over either the socket
      is closed with 1013 (the client cannot keep up).
    * ``websocket_buffer``: frames from one client waiting for the app to finish the
      previous event; over it the socket is closed with 1013.
    * ``retry_after``: seconds put in ``Retry-After`` of a 503.
    * ``no_worker_warning``: seconds a request may wait for a worker before the
      process logs that nobody seems to take ``http.request``; also the wait after
      which the health endpoint says no worker takes requests.
    * ``health_path``: a path (``/healthz``, say) answered by the interface itself
      with the deployment's health (200 or 503, JSON), for load balancers; off when
      empty.
      process logs that nobody seems to take ``http.request``.
    * ``header_timeout``: seconds a client has to send a whole request head, from its
      first byte; then 408 and the connection is closed.
    * ``keep_alive_timeout``: seconds a connection may stay silent, from the moment it
      is opened and after each response; then it is closed.
    * ``body_timeout``: seconds a request body may take to arrive while it is held in
      the interface (then 408), and, once streamed to a worker, between two reads.
    * ``body_buffer``: bytes of a request body the interface holds until the body is
      complete before a worker sees the request; a larger body is streamed.
    * ``max_pipeline``: pipelined requests one connection may have waiting behind the
      one being answered; past it the connection is not read until they are answered.
    * ``pong_backlog``: bytes waiting in a WebSocket's socket over which its pings are
      no longer answered.
    """

    http_timeout: float = 60.0
    websocket_connect_timeout: float = 5.0
    allowed_origins: tuple[str, ...] = ()
    max_body: int = DEFAULT_MAX_BODY
    root_path: str = ""
    response_buffer: int = 16 * 1024 * 1024
    websocket_queue: int = 256
    websocket_write_buffer: int = 4 * 1024 * 1024
    websocket_buffer: int = 1024
    retry_after: int = 1
    no_worker_warning: float = 5.0
    health_path: str = ""
    header_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    body_timeout: float = 30.0
    body_buffer: int = 1024 * 1024
    max_pipeline: int = 16
    pong_backlog: int = 64 * 1024

    def __post_init__(self) -> None:
        timeouts = (
            self.http_timeout,
            self.websocket_connect_timeout,
            self.header_timeout,
            self.keep_alive_timeout,
            self.body_timeout,
        )
        if min(timeouts) <= 0:
            raise ConfigurationError("timeouts must be positive numbers of seconds")
        if min(self.max_body, self.body_buffer, self.pong_backlog) < 0 or self.max_pipeline < 1:
            raise ConfigurationError("max_body must be a number of bytes, 0 or more")
        object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))
        object.__setattr__(self, "root_path", self.root_path.rstrip("/"))
        OriginRules(self.allowed_origins)  # refuse a bad pattern now, not at a handshake

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], **overrides: Any) -> InterfaceConfig:
        """The configuration named by ``WSGI_CHANNELS_*`` variables in *environ*
        (``HTTP_TIMEOUT``, ``WEBSOCKET_CONNECT_TIMEOUT``, ``ALLOWED_ORIGINS`` (spaces
        or commas), ``MAX_BODY`` (bytes, or with K/M/G), ``ROOT_PATH``,
        ``NO_WORKER_WARNING``, ``HEADER_TIMEOUT``, ``KEEP_ALIVE_TIMEOUT``,
        ``BODY_TIMEOUT``, ``BODY_BUFFER``, ``MAX_PIPELINE``, ``PONG_BACKLOG``,
        ``RESPONSE_BUFFER``, ``WEBSOCKET_QUEUE``, ``WEBSOCKET_WRITE_BUFFER``,
        ``WEBSOCKET_BUFFER``; sizes in bytes or with K/M/G), then
        *overrides*. ConfigurationError names the variable of a bad value."""
        options: dict[str, Any] = {}
        for suffix, (option, parse) in _ENVIRONMENT.items():
            value = environ.get(ENV_PREFIX + suffix)
            if value is None or value == "":
                continue
            try:
                options[option] = parse(value)
            except ValueError as exc:
                raise ConfigurationError(f"bad {ENV_PREFIX}{suffix}={value!r}: {exc}") from None
        options.update(overrides)
        return cls(**options)

    def to_environ(self) -> dict[str, str]:
        """The variables that make :meth:`from_environ` rebuild this configuration
        (for the processes of ``--workers N``, which are spawned)."""
        return {
            ENV_PREFIX + "HTTP_TIMEOUT": repr(self.http_timeout),
            ENV_PREFIX + "WEBSOCKET_CONNECT_TIMEOUT": repr(self.websocket_connect_timeout),
            ENV_PREFIX + "ALLOWED_ORIGINS": " ".join(self.allowed_origins),
            ENV_PREFIX + "MAX_BODY": str(self.max_body),
            ENV_PREFIX + "ROOT_PATH": self.root_path,
            ENV_PREFIX + "HEALTH_PATH": self.health_path,
            ENV_PREFIX + "NO_WORKER_WARNING": repr(self.no_worker_warning),
            ENV_PREFIX + "HEADER_TIMEOUT": repr(self.header_timeout),
            ENV_PREFIX + "KEEP_ALIVE_TIMEOUT": repr(self.keep_alive_timeout),
            ENV_PREFIX + "BODY_TIMEOUT": repr(self.body_timeout),
            ENV_PREFIX + "BODY_BUFFER": str(self.body_buffer),
            ENV_PREFIX + "MAX_PIPELINE": str(self.max_pipeline),
            ENV_PREFIX + "PONG_BACKLOG": str(self.pong_backlog),
            ENV_PREFIX + "RESPONSE_BUFFER": str(self.response_buffer),
            ENV_PREFIX + "WEBSOCKET_QUEUE": str(self.websocket_queue),
            ENV_PREFIX + "WEBSOCKET_WRITE_BUFFER": str(self.websocket_write_buffer),
            ENV_PREFIX + "WEBSOCKET_BUFFER": str(self.websocket_buffer),
        }


_ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "HTTP_TIMEOUT": ("http_timeout", float),
    "WEBSOCKET_CONNECT_TIMEOUT": ("websocket_connect_timeout", float),
    "ALLOWED_ORIGINS": ("allowed_origins", lambda v: tuple(parse_origins(v))),
    "MAX_BODY": ("max_body", parse_size),
    "ROOT_PATH": ("root_path", str),
    "NO_WORKER_WARNING": ("no_worker_warning", float),
    "HEALTH_PATH": ("health_path", str),
    "HEADER_TIMEOUT": ("header_timeout", float),
    "KEEP_ALIVE_TIMEOUT": ("keep_alive_timeout", float),
    "BODY_TIMEOUT": ("body_timeout", float),
    "BODY_BUFFER": ("body_buffer", parse_size),
    "MAX_PIPELINE": ("max_pipeline", int),
    "PONG_BACKLOG": ("pong_backlog", parse_size),
    "RESPONSE_BUFFER": ("response_buffer", parse_size),
    "WEBSOCKET_QUEUE": ("websocket_queue", int),
    "WEBSOCKET_WRITE_BUFFER": ("websocket_write_buffer", parse_size),
    "WEBSOCKET_BUFFER": ("websocket_buffer", int),
}
