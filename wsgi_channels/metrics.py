"""Prometheus metrics of the interface server and the worker.

::

    wsgi-channels interface --metrics 127.0.0.1:9100     # GET http://127.0.0.1:9100/metrics
    wsgi-channels worker APP --metrics 127.0.0.1:9101

The interface server and the worker call a *recorder* at the few places where something
worth counting happens: a response is sent, a socket opens, a batch of messages goes
to or comes from the layer. With metrics off the recorder is :data:`NULL_METRICS`, whose
methods do nothing, so the hot path pays one call to an empty method per event and
imports nothing. With metrics on it is a :class:`Metrics` of the process's role
(``interface`` or ``worker``; ``wsgi-channels run`` has one of each), which updates
prometheus-client metrics (the ``metrics`` extra). Everything that needs the layer
(queue depths) is read when Prometheus scrapes, never on the hot path.

Where several processes serve one endpoint (gunicorn's ``ChannelWorker``, ``interface
--workers N``), prometheus-client's multiprocess mode is used: each process writes its
values to files in ``PROMETHEUS_MULTIPROC_DIR`` and the process that serves the endpoint
adds them up (:func:`prepare_multiprocess`, :func:`serve`).

The metrics, their labels and what each one counts are listed in ``docs/metrics.md``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from .layers.base import ChannelFull, ConfigurationError, LayerUnavailable, MessageTooLarge
from .protocol import DEFAULT_CHANNELS, split_host_port

__all__ = [
    "METRICS_ENV",
    "MULTIPROC_ENV",
    "NULL_METRICS",
    "Metrics",
    "QueueCollector",
    "Recorder",
    "channel_kind",
    "parse_address",
    "prepare_multiprocess",
    "process_exit",
    "recorder_from_environ",
    "serve",
]

#: The environment variable of ``--metrics``.
METRICS_ENV = "WSGI_CHANNELS_METRICS"
#: prometheus-client's own: where each process of a multiprocess setup writes its values.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_MISSING = "--metrics needs prometheus-client: pip install 'wsgi-channels[metrics]'"

Send = Callable[[Any], Awaitable[None]]

# Seconds. A request through the layer takes a millisecond or so; the upper buckets
# reach the default http_timeout (60 s), where a 504 is given.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)
# A layer round trip: tens of microseconds in process, a few hundred over Redis.
LAYER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)


def channel_kind(channel: str) -> str:
    """The ``kind`` label of a channel: its own name for ``http.request`` and the three
    ``websocket.*`` queues, ``reply`` for process channels (``name!local``: replies to
    the interface, a worker's control channel), ``body`` for single-reader channels
    (``name?local``: request bodies, ASGI 1.0 reply channels), else ``other``.
    Group messages received are ``group`` (see :meth:`Metrics.delivered`)."""
    if channel in _NAMED_KINDS:
        return channel
    if "!" in channel:
        return "reply"
    if "?" in channel:
        return "body"
    return "other"


_NAMED_KINDS = frozenset(DEFAULT_CHANNELS)

# The ``error`` label of a layer error, by class name (a table, not an isinstance
# chain); names, so that an ASGI 1.0 layer's own ChannelFull counts as ours.
_ERROR_NAMES = {cls.__name__ for cls in (ChannelFull, LayerUnavailable, MessageTooLarge)}


def error_name(exc: BaseException | type[BaseException]) -> str:
    cls = exc if isinstance(exc, type) else type(exc)
    for base in cls.__mro__:
        if base.__name__ in _ERROR_NAMES:
            return base.__name__
    return "other"


class Recorder:
    """What the interface server and the worker call; every method does nothing.

    This is :data:`NULL_METRICS`, the recorder when metrics are off. The methods are
    called from the hot path, so they take what the caller has at hand and leave all
    work to :class:`Metrics`."""

    __slots__ = ()

    enabled = False

    def clock(self) -> float:
        """A start time for a later call (``0.0`` when off: nobody reads it)."""
        return 0.0

    # -- interface ------------------------------------------------------------------

    def http_send(self, send: Send) -> Send:
        """The ASGI *send* of one HTTP exchange, wrapped to count its response."""
        return send

    def websocket_opened(self) -> None:
        """A WebSocket was accepted."""

    def websocket_closed(self) -> None:
        """An accepted WebSocket has gone."""

    def frame_in(self) -> None:
        """A client sent a text or binary frame."""

    def frames_out(self, reply: Mapping[str, Any]) -> None:
        """A reply (``text`` and/or ``bytes``) is being written to a socket."""

    def frame_out(self) -> None:
        """A prepared frame was written to a socket (group fan-out)."""

    def flushed(
        self, batch: Sequence[tuple[tuple[str, Any, Any], Any]], outcomes: Sequence[Any],
        started: float,
    ) -> None:  # fmt: skip
        """One round trip of sends: ``((channel, data, expires), future)`` items and
        their outcomes (True sent, False full, or the ChannelsError), begun at
        *started*."""

    def delivered(self, entries: Iterable[tuple[list[str], Any]]) -> None:
        """A batch received on the process channel (replies and group messages)."""

    # -- worker ---------------------------------------------------------------------

    def taken(self, batch: Sequence[tuple[str, Any]]) -> None:
        """The worker took *batch* (``(channel, message)``); each now holds a thread."""

    def finished(self) -> None:
        """A pool thread has finished one message."""

    def sent(self, channel: str, started: float) -> None:
        """The worker sent a reply on *channel*; the send began at *started*."""

    def layer_error(self, exc: BaseException | type[BaseException]) -> None:
        """A layer call failed with *exc* (ChannelFull, LayerUnavailable, ...)."""

    def worker_threads(self, threads: int) -> None:
        """A worker with *threads* pool threads starts."""


#: The recorder when metrics are off.
NULL_METRICS = Recorder()


class _Families:
    """The prometheus-client metric objects, made once per registry."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        ns = "wsgi_channels"
        self.http_requests = Counter(
            "http_requests", "HTTP responses sent by the interface server, by status.",
            ["status"], namespace=ns, registry=registry,
        )  # fmt: skip
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Seconds from an HTTP request's arrival to the end of its response.",
            namespace=ns, registry=registry, buckets=HTTP_BUCKETS,
        )  # fmt: skip
        self.websockets_open = Gauge(
            "websockets_open", "WebSocket connections open now (accepted, not yet gone).",
            namespace=ns, registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.websockets = Counter(
            "websocket_connections", "WebSocket connections accepted.",
            namespace=ns, registry=registry,
        )  # fmt: skip
        self.frames = Counter(
            "websocket_frames", "WebSocket text and binary frames, by direction "
            "(in: from clients, out: to clients).",
            ["direction"], namespace=ns, registry=registry,
        )  # fmt: skip
        self.sent = Counter(
            "messages_sent", "Messages sent to the channel layer, by role and channel kind.",
            ["role", "kind"], namespace=ns, registry=registry,
        )  # fmt: skip
        self.received = Counter(
            "messages_received",
            "Messages received from the channel layer, by role and channel kind.",
            ["role", "kind"], namespace=ns, registry=registry,
        )  # fmt: skip
        self.errors = Counter(
            "layer_errors", "Layer calls that failed, by role and error "
            "(ChannelFull, LayerUnavailable, MessageTooLarge, other).",
            ["role", "error"], namespace=ns, registry=registry,
        )  # fmt: skip
        self.round_trip = Histogram(
            "layer_round_trip_seconds", "Seconds a send to the channel layer took: "
            "one round trip for a batch (interface) or one reply (worker).",
            ["role"], namespace=ns, registry=registry, buckets=LAYER_BUCKETS,
        )  # fmt: skip
        self.threads = Gauge(
            "worker_threads", "Threads of the workers' pools.",
            namespace=ns, registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.busy = Gauge(
            "worker_threads_busy", "Pool threads running a message now.",
            namespace=ns, registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip


_families: dict[int, _Families] = {}


def _families_of(registry: Any) -> _Families:
    found = _families.get(id(registry))
    if found is None:
        found = _families[id(registry)] = _Families(registry)
    return found


class Metrics(Recorder):
    """The recorder of one *role* (``"interface"`` or ``"worker"``) on *registry*
    (default: prometheus-client's global one, so that an app's own metrics are served
    beside ours). Label values are resolved once here, not per event."""

    __slots__ = (
        "_busy",
        "_errors",
        "_f",
        "_frames_in",
        "_frames_out",
        "_observe_http",
        "_received",
        "_round_trip",
        "_sent",
        "_statuses",
        "role",
    )

    enabled = True

    def __init__(self, role: str, *, registry: Any = None) -> None:
        prometheus_client = _prometheus()
        if registry is None:
            registry = prometheus_client.REGISTRY
        f = self._f = _families_of(registry)
        self.role = role
        self._statuses: dict[int, Any] = {}
        self._observe_http = f.http_duration.observe
        self._frames_in = f.frames.labels("in")
        self._frames_out = f.frames.labels("out")
        # Label children by label value, made on first use (a label set that never
        # occurs in this role is not exported as a row of zeros).
        self._sent: dict[str, Any] = {}
        self._received: dict[str, Any] = {}
        self._errors: dict[str, Any] = {}
        self._round_trip = f.round_trip.labels(role)
        self._busy = f.busy

    def _count(self, table: dict[str, Any], family: Any, value: str, amount: int = 1) -> None:
        child = table.get(value)
        if child is None:
            child = table[value] = family.labels(self.role, value)
        child.inc(amount)

    def clock(self) -> float:
        return time.perf_counter()

    # -- interface ------------------------------------------------------------------

    def http_send(self, send: Send) -> Send:
        started = time.perf_counter()
        status = 0

        # A plain function that returns send's own awaitable: no coroutine of ours
        # per message. The response counts when its last part is handed to uvicorn.
        def send_and_count(message: Any) -> Awaitable[None]:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif not message.get("more_body", False):
                self._http_done(status, time.perf_counter() - started)
            return send(message)

        return send_and_count

    def _http_done(self, status: int, seconds: float) -> None:
        counter = self._statuses.get(status)
        if counter is None:
            counter = self._statuses[status] = self._f.http_requests.labels(str(status))
        counter.inc()
        self._observe_http(seconds)

    def websocket_opened(self) -> None:
        self._f.websockets_open.inc()
        self._f.websockets.inc()

    def websocket_closed(self) -> None:
        self._f.websockets_open.dec()

    def frame_in(self) -> None:
        self._frames_in.inc()

    def frames_out(self, reply: Mapping[str, Any]) -> None:
        count = (reply.get("text") is not None) + (reply.get("bytes") is not None)
        if count:
            self._frames_out.inc(count)

    def frame_out(self) -> None:
        self._frames_out.inc()

    def flushed(
        self, batch: Sequence[tuple[tuple[str, Any, Any], Any]], outcomes: Sequence[Any],
        started: float,
    ) -> None:  # fmt: skip
        self._round_trip.observe(time.perf_counter() - started)
        if len(batch) == 1 and outcomes[0] is True:  # a quiet loop turn: one send
            self._count(self._sent, self._f.sent, channel_kind(batch[0][0][0]))
            return
        # One increment per kind and batch (a busy loop turn sends many of one kind).
        kinds: dict[str, int] = {}
        for ((channel, _data, _expires), _future), outcome in zip(batch, outcomes, strict=True):
            if outcome is True:
                kind = channel_kind(channel)
                kinds[kind] = kinds.get(kind, 0) + 1
            else:
                name = "ChannelFull" if outcome is False else error_name(outcome)
                self._count(self._errors, self._f.errors, name)
        for kind, count in kinds.items():
            self._count(self._sent, self._f.sent, kind, count)

    def delivered(self, entries: Iterable[tuple[list[str], Any]]) -> None:
        if not isinstance(entries, list):
            return  # an iterator is the receiver's to consume (the faces give lists)
        if len(entries) == 1:  # the common case: a reply for one connection
            kind = "reply" if len(entries[0][0]) == 1 else "group"
            self._count(self._received, self._f.received, kind)
            return
        groups = sum(1 for channels, _message in entries if len(channels) > 1)
        if groups:
            self._count(self._received, self._f.received, "group", groups)
        if len(entries) > groups:
            self._count(self._received, self._f.received, "reply", len(entries) - groups)

    # -- worker ---------------------------------------------------------------------

    def taken(self, batch: Sequence[tuple[str, Any]]) -> None:
        self._busy.inc(len(batch))
        if len(batch) == 1:
            self._count(self._received, self._f.received, channel_kind(batch[0][0]))
            return
        kinds: dict[str, int] = {}
        for channel, _message in batch:
            kind = channel_kind(channel)
            kinds[kind] = kinds.get(kind, 0) + 1
        for kind, count in kinds.items():
            self._count(self._received, self._f.received, kind, count)

    def finished(self) -> None:
        self._busy.dec()

    def sent(self, channel: str, started: float) -> None:
        self._round_trip.observe(time.perf_counter() - started)
        self._count(self._sent, self._f.sent, channel_kind(channel))

    def layer_error(self, exc: BaseException | type[BaseException]) -> None:
        self._count(self._errors, self._f.errors, error_name(exc))

    def worker_threads(self, threads: int) -> None:
        self._f.threads.inc(threads)


class QueueCollector:
    """Queue depths, read from the layer when Prometheus scrapes (a custom collector:
    nothing of it is on the hot path): ``wsgi_channels_queue_messages`` and
    ``wsgi_channels_queue_oldest_seconds`` per channel, and ``wsgi_channels_layer_up``
    (0 when the layer did not answer; the queue figures are then left out).

    *layer* is a layer object, or a callable that returns one (made on the first
    scrape: the process that serves a multiprocess endpoint records nothing itself)."""

    def __init__(self, layer: Any, channels: Iterable[str] = DEFAULT_CHANNELS) -> None:
        self._layer = layer
        self._made = not callable(layer) or hasattr(layer, "channel_statistics")
        self.channels = list(channels)

    def _families(self) -> tuple[Any, Any, Any]:
        from prometheus_client.core import GaugeMetricFamily

        return (
            GaugeMetricFamily(
                "wsgi_channels_queue_messages", "Messages waiting in a queue of the layer.",
                labels=["channel"],
            ),
            GaugeMetricFamily(
                "wsgi_channels_queue_oldest_seconds",
                "Seconds the oldest message of a queue has waited.", labels=["channel"],
            ),
            GaugeMetricFamily(
                "wsgi_channels_layer_up", "1 if the channel layer answered at this scrape."
            ),
        )  # fmt: skip

    def describe(self) -> Iterable[Any]:
        return self._families()

    def collect(self) -> Iterable[Any]:
        depth, age, up = self._families()
        try:
            if not self._made:
                self._layer, self._made = self._layer(), True
            for channel in self.channels:
                stats = self._layer.channel_statistics(channel)
                depth.add_metric([channel], float(stats["messages_pending"]))
                age.add_metric([channel], float(stats["messages_max_age"]))
        except Exception:
            up.add_metric([], 0.0)
            return [up]
        up.add_metric([], 1.0)
        return [depth, age, up]


def recorder_from_environ(environ: Mapping[str, str], role: str) -> Recorder:
    """The recorder of a process started by one that serves the endpoint for all
    (``interface --workers N``, gunicorn): a :class:`Metrics` when *environ* has both
    ``WSGI_CHANNELS_METRICS`` and ``PROMETHEUS_MULTIPROC_DIR``, else
    :data:`NULL_METRICS`."""
    if environ.get(METRICS_ENV) and environ.get(MULTIPROC_ENV):
        return Metrics(role)
    return NULL_METRICS


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``, ``:PORT``) of ``--metrics``; ConfigurationError
    names the option for anything else."""
    host, port = split_host_port(value.strip())
    if port is None or port < 0 or port > 65535:
        raise ConfigurationError(
            f"bad --metrics {value!r}: expected HOST:PORT, like 127.0.0.1:9100"
        )
    return host or "127.0.0.1", port


def require() -> None:
    """Raise ConfigurationError (one line: what to install) without prometheus-client.
    It is looked for, not imported: importing it chooses its multiprocess mode."""
    import importlib.util

    try:
        found = importlib.util.find_spec("prometheus_client")
    except ImportError:
        found = None
    if found is None:
        raise ConfigurationError(_MISSING)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigurationError(_MISSING) from None
    return prometheus_client


def prepare_multiprocess() -> str:
    """Make this process and the ones it starts from now on record in multiprocess
    mode; return the directory. Call it in the parent before anything imports
    prometheus-client (it chooses the mode at import). ``PROMETHEUS_MULTIPROC_DIR``
    set by the user is kept and emptied of a previous run's files, as prometheus-client
    asks; otherwise a fresh temporary directory is made."""
    import sys

    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.unlink(os.path.join(directory, name))
    else:
        if "prometheus_client" in sys.modules:
            raise ConfigurationError(
                f"prometheus-client was imported before {MULTIPROC_ENV} was set: "
                f"set {MULTIPROC_ENV} to an empty directory"
            )
        directory = tempfile.mkdtemp(prefix="wsgi-channels-metrics-")
        os.environ[MULTIPROC_ENV] = directory
        atexit.register(_remove_directory, directory, os.getpid())
    return directory


def _remove_directory(directory: str, owner: int) -> None:
    # Forked children inherit atexit handlers: only the process that made it removes it.
    if os.getpid() == owner:
        shutil.rmtree(directory, ignore_errors=True)


def serve(address: str, layer: Any = None, *, multiprocess: bool = False) -> tuple[str, int]:
    """Serve ``/metrics`` on *address* (``HOST:PORT``) from a daemon thread; return the
    address bound (port 0 picks a free one). With *layer*, queue depths are served
    too. With *multiprocess*, the values come from the files of every process in
    ``PROMETHEUS_MULTIPROC_DIR``. ConfigurationError when the port cannot be bound."""
    host, port = parse_address(address)
    prometheus_client = _prometheus()

    registry: Any
    if multiprocess:
        from prometheus_client import multiprocess as mp

        registry = prometheus_client.CollectorRegistry()
        mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = prometheus_client.REGISTRY
    if layer is not None:
        registry.register(QueueCollector(layer))
    # One collection now, in this thread: whatever the first scrape would import or
    # connect (the layer, the Redis client) is done before a process forks.
    prometheus_client.generate_latest(registry)
    try:
        server = _start_server(host, port, prometheus_client.make_wsgi_app(registry))
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve --metrics on {host}:{port}: {exc.strerror or exc}"
        ) from None
    bound = server.server_address
    return str(bound[0]), int(bound[1])


# Held while a scrape is answered and while this process forks, so that a child (a
# gunicorn worker forked by the master that serves the endpoint) never inherits a lock
# that a scrape held at that moment, which would hang it.
_SCRAPE_LOCK = threading.Lock()
SCRAPE_TRIES = 3
_fork_hooks = False


def _start_server(host: str, port: int, app: Callable[..., Any]) -> Any:
    """prometheus-client's WSGI app on a threaded wsgiref server, scrapes and forks
    kept apart by _SCRAPE_LOCK (prometheus-client's start_http_server is the same
    server without the lock)."""
    import socket
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    global _fork_hooks
    if not _fork_hooks and hasattr(os, "register_at_fork"):
        os.register_at_fork(
            before=_SCRAPE_LOCK.acquire,
            after_in_parent=_SCRAPE_LOCK.release,
            after_in_child=_SCRAPE_LOCK.release,
        )
        _fork_hooks = True

    def scrape(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        with _SCRAPE_LOCK:
            for attempt in range(SCRAPE_TRIES):
                try:
                    return list(app(environ, start_response))
                except Exception:
                    # In multiprocess mode a process that is starting may have made its
                    # file and not yet written its header: prometheus-client fails to
                    # read it. The response has not started; read the files again.
                    if attempt == SCRAPE_TRIES - 1:
                        raise
                    time.sleep(0.01)
            return []  # not reached

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True
        allow_reuse_address = True

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # no line per scrape on stderr

    server = make_server(host, port, scrape, Server, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="wsgi-channels-metrics")
    thread.daemon = True
    thread.start()
    return server


def process_exit() -> None:
    """In multiprocess mode, drop this process's live gauges (open WebSockets, busy
    threads) from the sums: call it when a recording process ends."""
    if not os.environ.get(MULTIPROC_ENV):
        return
    from prometheus_client import multiprocess as mp

    mp.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
