"""The interface server: HTTP and WebSocket connections in, channel messages out.

``InterfaceServer(layer)`` is the ASGI 3 application; ``create_app()`` builds it from
the environment for ``uvicorn --factory``. See :mod:`.app` for how the pieces fit.
"""

from __future__ import annotations

from typing import Any

from .app import InterfaceServer, create_app
from .config import DEFAULT_MAX_BODY, InterfaceConfig, OriginRules, parse_size
from .protocols import (
    MAX_HEAD_SIZE,
    MAX_HEADER_COUNT,
    BoundedHttpToolsProtocol,
    GoingAwayWSProtocol,
)

__all__ = [
    "DEFAULT_MAX_BODY",
    "MAX_HEADER_COUNT",
    "MAX_HEAD_SIZE",
    "BoundedHttpToolsProtocol",
    "GoingAwayWSProtocol",
    "InterfaceConfig",
    "InterfaceServer",
    "OriginRules",
    "create_app",
    "options_from_environ",
    "parse_size",
]


def options_from_environ(environ: Any) -> dict[str, Any]:
    """The InterfaceConfig fields that ``WSGI_CHANNELS_*`` variables set (kept for
    callers of the first version; prefer :meth:`InterfaceConfig.from_environ`)."""
    import dataclasses

    config = InterfaceConfig.from_environ(environ)
    default = InterfaceConfig()
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(default, f.name)
    }
