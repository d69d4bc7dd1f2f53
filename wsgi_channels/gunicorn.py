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

A layer that cannot be reached when gunicorn starts ends it as it ends ``wsgi-channels
worker``: one line, exit status 2, before any worker is forked (the master checks the
layer that ``WSGI_CHANNELS_LAYER`` or, with ``DJANGO_SETTINGS_MODULE`` in its
environment, as ``--preload`` of a Django WSGI module sets it, the Django setting
names). Workers never exit for an outage: one that starts or runs while the layer is
down waits for it with the worker's backoff and logs through gunicorn's error log, so
that gunicorn does not halt when it replaces a worker during an outage.

Metrics: ``WSGI_CHANNELS_METRICS=HOST:PORT`` (in the environment or gunicorn's ``-e``)
makes the master serve Prometheus text at ``http://HOST:PORT/metrics``, the sum of
every child's, in prometheus-client's multiprocess mode: each child writes its values
to files in ``PROMETHEUS_MULTIPROC_DIR`` (a fresh temporary directory unless it is
set; a set one is emptied at start). See docs/metrics.md.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from typing import Any

from gunicorn.workers.base import Worker as GunicornWorker

from . import metrics
from .layers import LAYER_ENV, get_default_layer
from .layers.base import ConfigurationError
from .process import freeze_startup_heap
from .worker import Worker

__all__ = ["ChannelWorker"]

#: gunicorn's bind when none is given; the port the interface server takes by default.
DEFAULT_GUNICORN_BIND = "127.0.0.1:8000"
#: The master's exit status when the layer is unreachable or misconfigured at start,
#: as for ``wsgi-channels worker``.
LAYER_ERROR_EXIT = 2


def _remove_in(pid: int, directory: str) -> None:
    """At the master's exit (workers inherit the hook and must not run it): remove the
    private socket directory, which gunicorn's unlink of the socket leaves behind."""
    if os.getpid() == pid:
        shutil.rmtree(directory, ignore_errors=True)


def _start_problem() -> str | None:
    """Why the layer named by the environment cannot serve, or None (also when nothing
    in the master's environment names one: a Django project that sets
    ``DJANGO_SETTINGS_MODULE`` only in its WSGI module is checked by no one at start,
    rather than the default SQLite file being made in its place)."""
    if not os.environ.get(LAYER_ENV) and not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return None
    from .cli import UsageProblem, open_layer

    try:
        open_layer(os.environ.get(LAYER_ENV) or None).close()
    except (UsageProblem, ConfigurationError) as exc:
        return str(exc)
    return None


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
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Called by gunicorn's master once, after it has bound and before it forks:
        stop with one line and exit status 2 if the layer cannot be reached (or the
        metrics endpoint cannot be served); then serve the metrics, if asked."""
        problem = _start_problem() or cls._serve_metrics(log)
        if problem is None:
            return
        log.error("wsgi-channels: error: %s", problem)
        # What gunicorn's halt() would clean (the socket directory goes at exit).
        if cfg.pidfile:
            with contextlib.suppress(OSError, ValueError), open(cfg.pidfile) as pidfile:
                if int(pidfile.read().strip() or 0) == os.getpid():
                    os.unlink(cfg.pidfile)
        sys.exit(LAYER_ERROR_EXIT)

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
                atexit.register(_remove_in, os.getpid(), directory)
                conf.set("bind", [f"unix:{os.path.join(directory, 'unused.sock')}"])
            return original(conf, log, fds)

        create_sockets.wsgi_channels = True  # type: ignore[attr-defined]
        gunicorn.sock.create_sockets = create_sockets

    @classmethod
    def _serve_metrics(cls, log: Any) -> str | None:
        """In the master, before the first fork: serve the children's metrics when
        ``WSGI_CHANNELS_METRICS`` is set; the problem in one line, or None."""
        address = os.environ.get(metrics.METRICS_ENV)
        if not address or getattr(cls, "_metrics_served", False):
            return None
        from .cli import layer_url_of
        from .layers import layer_from_url

        try:
            directory = metrics.prepare_multiprocess()
            host, port = metrics.serve(
                address, lambda: layer_from_url(layer_url_of(None)), multiprocess=True
            )
        except ConfigurationError as exc:
            return str(exc)
        cls._metrics_served = True
        log.info("Prometheus metrics at http://%s:%d/metrics (values in %s)", host, port, directory)
        return None

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
        # No reachability check here: the master made it at start, and a worker that
        # exited for an outage would make gunicorn halt (a boot error) when it replaces
        # one during an outage. The Worker waits for the layer instead.
        self._route_logs()
        self.layer = get_default_layer()
        recorder = metrics.recorder_from_environ(os.environ, "worker")
        options = self.worker_options()
        recorder.worker_threads(options["threads"])
        worker = Worker(self.wsgi, self.layer, metrics=recorder, **options)
        freeze_startup_heap()
        self.log.info("wsgi-channels worker (pid %s) taking messages", self.pid)
        try:
            worker.serve(should_stop=self._should_stop, on_tick=self.notify)
        finally:
            if recorder.enabled:
                metrics.process_exit()
