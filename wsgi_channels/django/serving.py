"""What the Django commands share: the layer they open and serving in one process."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from django.core.management.base import CommandError

from wsgi_channels import cli
from wsgi_channels.layers import LAYER_ENV

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
) -> None:
    """Serve *app* with the interface server and a worker in this process, until
    SIGINT/SIGTERM (from the main thread) or the process ends (under the
    autoreloader, which runs this in a thread and exits the process to reload)."""
    import uvicorn

    from wsgi_channels.interface import InterfaceServer
    from wsgi_channels.layers import set_default_layer
    from wsgi_channels.worker import Worker

    try:
        cli._check_bind(host, port, None)
    except cli.UsageProblem as exc:
        raise CommandError(str(exc)) from None
    layer = open_layer(given_layer)
    cli._configure_logging()
    # The app's Group(...).send() must reach the layer served here.
    set_default_layer(layer)
    worker = Worker(app, layer, threads=threads)
    # A daemon: the autoreloader ends the process with sys.exit() to restart it.
    worker_thread = threading.Thread(target=worker.serve, name="wsgi-channels-worker", daemon=True)
    worker_thread.start()
    try:
        config = uvicorn.Config(
            InterfaceServer(layer), host=host, port=port, **cli._uvicorn_options()
        )
        try:
            sock = cli._bind(config)
        except cli.UsageProblem as exc:
            raise CommandError(str(exc)) from None
        if on_bind is not None:
            on_bind(sock.getsockname()[1])
        cli._serve(uvicorn.Server(config), sock)
    finally:
        worker.stop()
        worker_thread.join(timeout=worker.graceful_timeout + 1)
        layer.close()
