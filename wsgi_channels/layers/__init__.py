"""Channel layer backends, chosen by URL.

::

    memory://                                  in-process, for tests
    sqlite:///relative/file.sqlite3            one SQLite file shared by processes
    sqlite:////absolute/file.sqlite3           (four slashes for an absolute path)
    redis://[[user]:password@]host[:port][/db]  Redis
    rediss://...                               Redis over TLS
    unix:///run/redis.sock?db=0                Redis over a Unix socket
    redis://a:6379/0,redis://b:6379/0          several Redis servers, sharded
    redis+cluster://[[user]:password@]host:7000[,host:7001...]
                                               a Redis Cluster (any nodes as seeds)
    rediss+cluster://...                       a Redis Cluster over TLS
    redis+sentinel://[[user]:password@]host:26379[,host:26379...]/service[/db]
                                               the master of a Sentinel service
    rediss+sentinel://...                      the same over TLS

Query parameters set layer options, for every backend::

    expiry=60              seconds a message waits before it is dropped
    group_expiry=86400     seconds a group membership lasts unless refreshed
    capacity=100           messages a channel holds before send raises ChannelFull
    channel_capacity=http.request:500;websocket.*:200   capacity by glob pattern
    max_message_size=1048576
    receive_timeout=1      seconds a blocking receive waits before it returns (None, None)
    prefix=wsgi_channels   (SQLite, Redis) namespace of the layer's keys or tables

Redis URLs also take redis-py's connection parameters (``db``, ``socket_timeout``,
``ssl_cert_reqs``, ``ssl_ca_certs``, ...). Anything else is refused with a
ConfigurationError that names what is accepted. Backends are imported lazily: redis-py
is imported only for a Redis URL.
"""

from __future__ import annotations

import os
import re
import threading
import urllib.parse
from typing import TYPE_CHECKING, Any

from .base import (
    BaseChannelLayer,
    ChannelFull,
    ChannelsError,
    ConfigurationError,
    InvalidChannelName,
    InvalidMessage,
    LayerUnavailable,
    MessageTooLarge,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DEFAULT_LAYER_URL",
    "LAYER_ENV",
    "BaseChannelLayer",
    "ChannelFull",
    "ChannelsError",
    "ConfigurationError",
    "InvalidChannelName",
    "InvalidMessage",
    "LayerUnavailable",
    "MessageTooLarge",
    "get_default_layer",
    "layer_from_url",
    "mask_url",
    "set_default_layer",
]

LAYER_ENV = "WSGI_CHANNELS_LAYER"
DEFAULT_LAYER_URL = "sqlite:///.wsgi_channels.sqlite3"

SCHEMES = (
    "memory",
    "sqlite",
    "redis",
    "rediss",
    "unix",
    "redis+cluster",
    "rediss+cluster",
    "redis+sentinel",
    "rediss+sentinel",
)

_COMMON_OPTIONS: dict[str, Callable[[str], Any]] = {
    "expiry": float,
    "group_expiry": float,
    "capacity": int,
    "channel_capacity": lambda value: _parse_channel_capacity(value),
    "max_message_size": int,
    "receive_timeout": float,
}


def _parse_channel_capacity(value: str) -> dict[str, int]:
    result: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in value.replace(",", ";").split(";"))):
        pattern, sep, number = item.rpartition(":")
        if not sep or not pattern:
            raise ValueError(f"expected pattern:capacity, got {item!r}")
        result[pattern] = int(number)
    return result


def mask_url(url: str) -> str:
    """*url* with any password replaced by ``***``, safe for logs and errors."""
    parts = []
    for one in url.split(","):
        one = one.strip()
        scheme, sep, rest = one.partition("://")
        if sep:
            netloc, slash, tail = rest.partition("/")
            userinfo, at, host = netloc.rpartition("@")
            if at and ":" in userinfo:
                netloc = userinfo.partition(":")[0] + ":***@" + host
            rest = netloc + slash + tail
        one = _QUERY_PASSWORD.sub(r"\1***", scheme + sep + rest)
        parts.append(one)
    return ",".join(parts)


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*")


def parse_options(
    url: str, query: str, extra: dict[str, Callable[[str], Any]] | None = None
) -> dict[str, Any]:
    """Parse a URL's query string into typed layer options, strictly."""
    accepted = dict(_COMMON_OPTIONS)
    accepted.update(extra or {})
    options: dict[str, Any] = {}
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in accepted:
            raise ConfigurationError(
                f"unknown option {key!r} in layer URL {mask_url(url)!r}; accepted: "
                + ", ".join(sorted(accepted))
            )
        try:
            options[key] = accepted[key](value)
        except ValueError as exc:
            raise ConfigurationError(
                f"bad value {value!r} for option {key!r} in layer URL {mask_url(url)!r}: {exc}"
            ) from None
    return options


def layer_from_url(url: str) -> BaseChannelLayer:
    """Make the channel layer named by *url* (see the module docstring for the grammar).

    Raises ConfigurationError for an unknown scheme or option, naming those accepted.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError("empty layer URL; accepted schemes: " + ", ".join(SCHEMES))
    url = url.strip()
    scheme = url.partition(":")[0].lower()
    if "://" not in url or scheme not in SCHEMES:
        raise ConfigurationError(
            f"unknown layer URL {mask_url(url)!r}; accepted schemes: "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    if scheme == "memory":
        from .memory import MemoryChannelLayer

        parsed = urllib.parse.urlsplit(url)
        if parsed.netloc or parsed.path not in ("", "/"):
            raise ConfigurationError(f"memory:// takes no host or path, got {url!r}")
        return MemoryChannelLayer(**parse_options(url, parsed.query))
    if scheme == "sqlite":
        from .sqlite import SQLiteChannelLayer

        return SQLiteChannelLayer.from_url(url)
    from .redis import RedisChannelLayer

    return RedisChannelLayer.from_url(url)


_EXPLICIT = "<set_default_layer>"
_default_lock = threading.Lock()
_default: tuple[int, str, BaseChannelLayer] | None = None


def get_default_layer(url: str | None = None) -> BaseChannelLayer:
    """The process's shared layer: made once, lazily, from *url*, else the
    ``WSGI_CHANNELS_LAYER`` environment variable (read now, not at import), else
    Django's ``WSGI_CHANNELS_LAYER`` setting when Django is configured, else
    ``sqlite:///.wsgi_channels.sqlite3``. Made anew in a child after ``fork()``."""
    global _default
    pid = os.getpid()
    current = _default
    if url is None and current is not None and current[0] == pid and current[1] == _EXPLICIT:
        return current[2]
    wanted = url or os.environ.get(LAYER_ENV) or _django_setting() or DEFAULT_LAYER_URL
    if current is not None and current[0] == pid and current[1] == wanted:
        return current[2]
    with _default_lock:
        current = _default
        if current is not None and current[0] == pid and current[1] == wanted:
            return current[2]
        layer = layer_from_url(wanted)
        _default = (pid, wanted, layer)
        return layer


def set_default_layer(layer: BaseChannelLayer | None) -> None:
    """Make *layer* this process's default until a fork (``None`` forgets it). For
    tests and for commands that built their layer from ``--layer``."""
    global _default
    with _default_lock:
        _default = None if layer is None else (os.getpid(), _EXPLICIT, layer)


def _django_setting() -> str | None:
    import sys

    if "django.conf" not in sys.modules:
        return None
    from django.conf import settings

    try:
        value = getattr(settings, LAYER_ENV, None)
    except Exception:  # ImproperlyConfigured: Django imported but not set up
        return None
    return value if isinstance(value, str) and value else None
