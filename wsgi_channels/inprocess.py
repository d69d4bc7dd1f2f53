"""Serve a WSGI app object with the interface server and a worker in this process.

What ``wsgi-channels run`` does for an ``APP`` name, for callers that already hold the
app: ``manage.py runserver`` and ``flask channels run``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from wsgi_channels import cli

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["layer_description", "serve_app"]


def layer_description(layer_url: str | None) -> str:
    """The URL of the layer *layer_url* resolves to, password masked, for a start line."""
    from wsgi_channels.layers import DEFAULT_LAYER_URL, _django_setting, mask_url

    return mask_url(layer_url or _django_setting() or DEFAULT_LAYER_URL)


def serve_app(
    app: Callable[..., Any],
    host: str,
    port: int,
    *,
    threads: int = 8,
    layer_url: str | None = None,
    on_bind: Callable[[int], None] | None = None,
) -> None:
    """Serve *app* on ``host:port`` until SIGINT/SIGTERM (when called from the main
    thread) or the end of the process (an autoreloader runs this in a thread and
    ends the process to restart it).

    *layer_url* ``None`` means a Django project's ``WSGI_CHANNELS_LAYER`` setting, else
    the default. *on_bind* is called with the port once the socket listens. A port in
    use or an unreachable layer raises :class:`wsgi_channels.cli.UsageProblem` (one line)
    before anything is served.
    """
    import uvicorn

    from wsgi_channels.interface import InterfaceServer
    from wsgi_channels.layers import set_default_layer
    from wsgi_channels.worker import Worker

    cli._check_bind(host, port, None)
    layer = cli.open_layer(layer_url)
    cli._configure_logging()
    # The app's Group(...).send() must reach the layer served here (memory:// is per object).
    set_default_layer(layer)
    worker = Worker(app, layer, threads=threads)
    # A daemon thread: a reloader ends the process with sys.exit() to restart it.
    worker_thread = threading.Thread(target=worker.serve, name="wsgi-channels-worker", daemon=True)
    worker_thread.start()
    try:
        config = uvicorn.Config(
            InterfaceServer(layer), host=host, port=port, **cli._uvicorn_options("info")
        )
        sock = cli._bind(config)
        if on_bind is not None:
            on_bind(sock.getsockname()[1])
        cli._serve(uvicorn.Server(config), sock)
    finally:
        worker.stop()
        worker_thread.join(timeout=worker.graceful_timeout + 1)
        layer.close()
