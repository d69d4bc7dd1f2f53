"""What the Django commands share: the layer they open and serving in one process."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from django.core.management.base import CommandError

from wsgi_channels import cli
from wsgi_channels.layers import LAYER_ENV
from wsgi_channels.layers.base import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable

    from wsgi_channels.layers.base import BaseChannelLayer


def layer_url(given: str | None) -> str | None:
    """``--layer``, else the environment variable; ``None`` leaves the choice to the
    project's ``WSGI_CHANNELS_LAYER`` setting, then the default."""
    return given or os.environ.get(LAYER_ENV) or None


def open_layer(given: str | None) -> BaseChannelLayer:
    """The layer to serve, checked to be reachable; a problem is a CommandError."""
    try:
        return cli.open_layer(layer_url(given))
    except cli.UsageProblem as exc:
        raise CommandError(str(exc)) from None


def serve_in_process(
    app: Callable[..., Any],
    host: str,
    port: int,
    *,
    threads: int,
    given_layer: str | None = None,
    on_bind: Callable[[int], None] | None = None,
    metrics_address: str | None = None,
) -> None:
    """Serve *app* with the interface server and a worker in this process; a port in
    use, an unreachable layer or a bad metrics address is a CommandError."""
    from wsgi_channels.inprocess import serve_app

    try:
        serve_app(
            app, host, port, threads=threads, layer_url=layer_url(given_layer),
            on_bind=on_bind, metrics_address=metrics_address,
        )  # fmt: skip
    except (cli.UsageProblem, ConfigurationError) as exc:
        raise CommandError(str(exc)) from None
