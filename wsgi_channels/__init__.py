"""wsgi-channels: WebSockets and server push for existing WSGI applications.

::

    from wsgi_channels import Group, Worker
    Group("liveblog").send({"text": "hello"})      # from any synchronous code
    Worker(app, layer).run()                        # run a WSGI app on channel messages

Names are imported lazily so that ``import wsgi_channels`` stays cheap in a Flask view
or a cron job that only sends.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .layers.base import (
    ChannelFull,
    ChannelsError,
    ConfigurationError,
    InvalidChannelName,
    InvalidMessage,
    LayerUnavailable,
    MessageTooLarge,
)

if TYPE_CHECKING:
    from .layers import get_default_layer, layer_from_url
    from .sender import Channel, ChannelsMiddleware, Group
    from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "Channel",
    "ChannelFull",
    "ChannelsError",
    "ChannelsMiddleware",
    "ConfigurationError",
    "Group",
    "InvalidChannelName",
    "InvalidMessage",
    "LayerUnavailable",
    "MessageTooLarge",
    "Worker",
    "get_default_layer",
    "layer_from_url",
]

_LAZY = {
    "Channel": ".sender",
    "Group": ".sender",
    "ChannelsMiddleware": ".sender",
    "Worker": ".worker",
    "get_default_layer": ".layers",
    "layer_from_url": ".layers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wsgi_channels' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
