"""Serve a WSGI app object with the interface server and a worker in this process.

What ``wsgi-channels run`` does for an ``APP`` name, for callers that already hold the
app: ``manage.py runserver`` and ``flask channels run``.
"""

from __future__ import annotations

import os
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
    uds: str | None = None,
    threads: int = 8,
    layer_url: str | None = None,
    on_bind: Callable[[int], None] | None = None,
    log_level: str = "info",
    access_log: bool = True,
    metrics_address: str | None = None,
) -> None:
    """Serve *app* on ``host:port`` (or the Unix socket *uds*) until SIGINT/SIGTERM
    (when called from the main thread) or the end of the process (an autoreloader
    runs this in a thread and ends the process to restart it).

    *layer_url* ``None`` means a Django project's ``WSGI_CHANNELS_LAYER`` setting, else
    the default. *on_bind* is called with the port (0 on a Unix socket) once the socket
    listens. *metrics_address* ``HOST:PORT`` serves Prometheus metrics of both halves
    there. The interface reads its settings from the environment
    (``WSGI_CHANNELS_ALLOWED_ORIGINS`` and the others), as ``wsgi-channels
    interface`` does. A port in use or an unreachable layer raises
    :class:`wsgi_channels.cli.UsageProblem`, a bad *metrics_address* (or no
    prometheus-client) :class:`ConfigurationError`, each one line, before anything is
    served.
    """
    import uvicorn

    from wsgi_channels.interface import InterfaceConfig, InterfaceServer
    from wsgi_channels.layers import set_default_layer
    from wsgi_channels.layers.base import ConfigurationError
    from wsgi_channels.process import freeze_startup_heap
    from wsgi_channels.worker import Worker

    cli._check_metrics(metrics_address)
    cli._check_bind(host, port, uds)
    layer = cli.open_layer(layer_url)
    cli._configure_logging(log_level, access_log=access_log)
    # The app's Group(...).send() must reach the layer served here (memory:// is per object).
    set_default_layer(layer)
    try:
        interface_metrics, worker_metrics = cli._start_metrics(
            metrics_address, layer, "interface", "worker"
        )
    except ConfigurationError:
        layer.close()
        raise
    worker_metrics.worker_threads(threads)
    worker = Worker(app, layer, threads=threads, metrics=worker_metrics)
    freeze_startup_heap()
    # A daemon thread: a reloader ends the process with sys.exit() to restart it.
    worker_thread = threading.Thread(target=worker.serve, name="wsgi-channels-worker", daemon=True)
    worker_thread.start()
    try:
        interface = InterfaceServer(
            layer, InterfaceConfig.from_environ(os.environ), metrics=interface_metrics
        )
        config = uvicorn.Config(
            interface, host=host, port=port, uds=uds, **cli._uvicorn_options(log_level)
        )
        sock = cli._bind(config)
        bound = 0 if uds is not None else sock.getsockname()[1]
        announce = None if on_bind is None else lambda: on_bind(bound)
        cli._serve(uvicorn.Server(config), sock, announce)
    finally:
        worker.stop()
        worker_thread.join(timeout=worker.graceful_timeout + 1)
        layer.close()
