"""A gunicorn worker class that runs :class:`~wsgi_channels.worker.Worker`::

    WSGI_CHANNELS_LAYER=redis://localhost:6379/0 \\
        gunicorn -k wsgi_channels.gunicorn.ChannelWorker myapp:app

gunicorn brings its process model: a master that forks ``--workers`` children,
restarts one that dies or stops sending heartbeats (``--timeout``), recycles them after
``--max-requests``, replaces them on ``HUP`` and stops them gracefully on ``TERM``.
Each child takes messages from the channel layer (``WSGI_CHANNELS_LAYER``, else the
default SQLite file) instead of accepting connections.

gunicorn always opens a listening socket; this worker never accepts on it. Without
``--bind`` (gunicorn's default, 127.0.0.1:8000, which is where the interface server
listens) the socket goes to a private Unix socket in a temporary directory instead, so
no ``--bind`` is needed; an explicit other ``--bind`` is kept.

Settings used, mapped in :meth:`ChannelWorker.worker_options` only: ``--threads``
(pool size; gunicorn's default of 1 is kept), ``--graceful-timeout``,
``--max-requests`` (with ``--max-requests-jitter``).

Metrics: ``WSGI_CHANNELS_METRICS=HOST:PORT`` (in the environment or gunicorn's ``-e``)
makes the master serve Prometheus text at ``http://HOST:PORT/metrics``, the sum of
every child's, in prometheus-client's multiprocess mode: each child writes its values
to files in ``PROMETHEUS_MULTIPROC_DIR`` (a fresh temporary directory unless it is
set; a set one is emptied at start). See docs/metrics.md.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from typing import Any

from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker as GunicornWorker

from . import metrics
from .layers import get_default_layer
from .layers.base import ConfigurationError, LayerUnavailable
from .worker import Worker

__all__ = ["ChannelWorker"]

WORKER_BOOT_ERROR: int = Arbiter.WORKER_BOOT_ERROR
#: gunicorn's bind when none is given; the port the interface server takes by default.
DEFAULT_GUNICORN_BIND = "127.0.0.1:8000"


def _layer_name(layer: Any) -> str:
    from .layers import mask_url

    url = getattr(layer, "url", None)
    return mask_url(url) if isinstance(url, str) else type(layer).__name__


class ChannelWorker(GunicornWorker):  # type: ignore[misc]
    """gunicorn worker: the :class:`Worker` receive loop in a gunicorn child.

    gunicorn's ``init_process()`` (run in the child after the fork) loads the app,
    installs the signal handlers and calls :meth:`run`, which makes the layer and
    serves until ``self.alive`` turns false (gunicorn sets it on ``TERM``, which the
    master also sends on ``HUP`` to the old workers), the master goes away, or
    ``max_requests`` messages were taken; it then finishes the messages in flight (up
    to ``--graceful-timeout``) and returns, and gunicorn exits the child. The heartbeat
    (``notify()``) runs from the serving thread every half second, also while every
    pool thread is busy and while stopping.
    """

    layer: Any = None

    @classmethod
    def setup(cls) -> None:
        """Called by gunicorn when it loads the worker class, before the master binds:
        move gunicorn's default bind out of the interface server's way."""
        import gunicorn.sock

        original = gunicorn.sock.create_sockets
        if getattr(original, "wsgi_channels", False):
            return

        def create_sockets(conf: Any, log: Any, fds: Any = None) -> Any:
            if not fds and list(conf.bind) == [DEFAULT_GUNICORN_BIND]:
                directory = tempfile.mkdtemp(prefix="wsgi-channels-gunicorn-")
                conf.set("bind", [f"unix:{os.path.join(directory, 'unused.sock')}"])
            return original(conf, log, fds)

        create_sockets.wsgi_channels = True  # type: ignore[attr-defined]
        gunicorn.sock.create_sockets = create_sockets

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Called by gunicorn in the master once it listens, before the first fork:
        serve the children's metrics when ``WSGI_CHANNELS_METRICS`` is set."""
        address = os.environ.get(metrics.METRICS_ENV)
        if not address or getattr(cls, "_metrics_served", False):
            return
        from .cli import layer_url_of
        from .layers import layer_from_url

        try:
            directory = metrics.prepare_multiprocess()
            host, port = metrics.serve(
                address, lambda: layer_from_url(layer_url_of(None)), multiprocess=True
            )
        except ConfigurationError as exc:
            log.error("wsgi-channels: %s", exc)
            sys.exit(WORKER_BOOT_ERROR)
        cls._metrics_served = True
        log.info("Prometheus metrics at http://%s:%d/metrics (values in %s)", host, port, directory)

    def worker_options(self) -> dict[str, Any]:
        """The :class:`Worker` keyword arguments from gunicorn's settings."""
        max_requests = int(self.max_requests)
        return {
            "threads": max(1, int(self.cfg.threads)),
            "graceful_timeout": float(self.cfg.graceful_timeout),
            # gunicorn uses sys.maxsize for "no limit".
            "max_requests": max_requests if self.cfg.max_requests > 0 else 0,
        }

    def _route_logs(self) -> None:
        """Our loggers write through gunicorn's error log (its format and file), so
        that an outage reads as formatted lines, not bare messages on stderr."""
        ours = logging.getLogger("wsgi_channels")
        if not ours.handlers:
            for handler in self.log.error_log.handlers:
                ours.addHandler(handler)
            ours.setLevel(self.log.error_log.level)
            ours.propagate = False

    def _should_stop(self) -> bool:
        return not self.alive or self.ppid != os.getppid()

    def run(self) -> None:
        # In the child, after gunicorn loaded the app: the layer is resolved only now
        # so that a Django project's WSGI_CHANNELS_LAYER setting, readable once the app
        # has set Django up, names the same layer here as in the app's own Group()
        # calls (get_default_layer makes a fresh one after the fork).
        self._route_logs()
        self.layer = get_default_layer()
        try:
            # A cheap call that needs the server, as `wsgi-channels worker` makes.
            self.layer.channel_statistics("http.request")
        except LayerUnavailable as exc:
            self.log.error("channel layer %s is unreachable: %s", _layer_name(self.layer), exc)
            # gunicorn's master stops (rather than forking again) on a boot error.
            sys.exit(WORKER_BOOT_ERROR)
        recorder = metrics.recorder_from_environ(os.environ, "worker")
        options = self.worker_options()
        recorder.worker_threads(options["threads"])
        worker = Worker(self.wsgi, self.layer, metrics=recorder, **options)
        self.log.info("wsgi-channels worker (pid %s) taking messages", self.pid)
        try:
            worker.serve(should_stop=self._should_stop, on_tick=self.notify)
        finally:
            if recorder.enabled:
                metrics.process_exit()
