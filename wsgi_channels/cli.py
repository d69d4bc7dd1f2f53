"""The ``wsgi-channels`` command.

::

    wsgi-channels run APP [--bind 127.0.0.1:8000] [--layer URL] [--threads N] [--reload]
    wsgi-channels interface [--bind] [--layer] [--workers N] [--allowed-origin ...]
                            [--root-path] [--max-body] [--http-timeout]
    wsgi-channels worker APP [--layer] [--threads N]
    wsgi-channels send (--group G | --channel C) (--text T | --json J) [--layer]
    wsgi-channels stats [--layer]

``APP`` is ``module:attribute`` (``module`` alone means ``module:application``), found
from the current directory as gunicorn does. Every option also reads an environment
variable, named in ``--help`` (``WSGI_CHANNELS_LAYER``, ``WSGI_CHANNELS_BIND``, ...).

Errors in the command line, the layer URL, the app import, or a layer that cannot be
reached end the command with one line on stderr and exit status 2, never a traceback.
The environment is read here, when a command runs, never at import time.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import logging
import os
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, NoReturn

import click

from .layers import DEFAULT_LAYER_URL, LAYER_ENV, layer_from_url, mask_url
from .layers.base import ChannelsError, ConfigurationError, InvalidMessage, LayerUnavailable
from .protocol import validate_websocket_reply

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Sequence

    from .layers.base import BaseChannelLayer

__all__ = ["cli", "main"]

DEFAULT_BIND = "127.0.0.1:8000"
LOG_LEVELS_CHOICES = ("critical", "error", "warning", "info", "debug")


class UsageProblem(Exception):
    """A wrong value found after parsing (APP, layer URL, reachability): exit 2."""


def _fail(message: str) -> NoReturn:
    raise UsageProblem(message)


# -- shared option helpers ----------------------------------------------------------


def _env(name: str) -> str:
    return f"WSGI_CHANNELS_{name}"


layer_option = click.option(
    "--layer",
    "layer_url",
    envvar=LAYER_ENV,
    default=None,
    metavar="URL",
    help=f"Channel layer URL (default {DEFAULT_LAYER_URL}). [env: {LAYER_ENV}]",
)
bind_option = click.option(
    "--bind",
    "-b",
    envvar=_env("BIND"),
    default=DEFAULT_BIND,
    show_default=True,
    metavar="HOST:PORT",
    help="Address to listen on: HOST:PORT, [IPv6]:PORT or unix:PATH. [env: WSGI_CHANNELS_BIND]",
)
log_level_option = click.option(
    "--log-level",
    envvar=_env("LOG_LEVEL"),
    type=click.Choice(LOG_LEVELS_CHOICES, case_sensitive=False),
    default="info",
    show_default=True,
    help="Least severe log lines written. [env: WSGI_CHANNELS_LOG_LEVEL]",
)
access_log_option = click.option(
    "--access-log/--no-access-log",
    envvar=_env("ACCESS_LOG"),
    default=True,
    show_default=True,
    help="One line per request, written by the worker (of run and worker). "
    "[env: WSGI_CHANNELS_ACCESS_LOG]",
)
metrics_option = click.option(
    "--metrics",
    "metrics_address",
    envvar=_env("METRICS"),
    default=None,
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (needs the metrics extra: "
    "pip install 'wsgi-channels[metrics]'); off by default. [env: WSGI_CHANNELS_METRICS]",
)


def batch_scheduling_option(what: str, waits: str) -> Callable[[Callable[..., Any]], Any]:
    """``--batch-scheduling/--no-batch-scheduling`` for a command that runs *what*."""
    return click.option(
        "--batch-scheduling/--no-batch-scheduling",
        envvar=_env("BATCH_SCHEDULING"),
        default=True,
        show_default=True,
        help=f"Run {what} under Linux's SCHED_BATCH policy: the same CPU share, but "
        f"{waits} the running one's time slice instead of preempting it (fewer context "
        "switches under load). [env: WSGI_CHANNELS_BATCH_SCHEDULING]",
    )


threads_option = click.option(
    "--threads",
    envvar=_env("THREADS"),
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Threads running the app. [env: WSGI_CHANNELS_THREADS]",
)


class SizeType(click.ParamType):  # type: ignore[type-arg]
    """Bytes, or with a K/M/G suffix."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        from .interface import parse_size

        try:
            return parse_size(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a size in bytes (like 1048576, 512K, 10M)", param, ctx)


def parse_bind(value: str) -> tuple[str | None, int | None, str | None]:
    """``(host, port, uds)`` for ``HOST:PORT``, ``[v6]:PORT``, ``:PORT`` or
    ``unix:PATH``; raises UsageProblem for anything else."""
    if value.startswith("unix:"):
        path = value[5:]
        if not path:
            _fail(f"bad --bind {value!r}: unix: needs a socket path")
        return None, None, path
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
    else:
        host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        _fail(f"bad --bind {value!r}: expected HOST:PORT, [IPv6]:PORT or unix:PATH")
    return host or "127.0.0.1", int(port_text), None


def load_app(spec: str) -> Callable[..., Any]:
    """Import a WSGI app named ``module:attribute`` (dotted attributes allowed;
    ``module`` alone means ``module:application``), with the current directory on
    ``sys.path``. Raises UsageProblem with one line saying what went wrong."""
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "application"
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        _fail(f"bad APP {spec!r}: expected module:attribute, like myproject.wsgi:application")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            _fail(f"cannot import APP {spec!r}: no module named {exc.name!r}")
        _fail(f"cannot import APP {spec!r}: {_one_line(exc)}")
    except Exception as exc:
        _fail(f"cannot import APP {spec!r}: {_one_line(exc)}")
    obj: Any = module
    for name in attribute.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            _fail(f"cannot import APP {spec!r}: module {module_name!r} has no attribute {name!r}")
    if not callable(obj):
        _fail(f"bad APP {spec!r}: {attribute} is not callable")
    return obj  # type: ignore[no-any-return]


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Seconds an access-log line may wait in its buffer before it is written.
ACCESS_LOG_FLUSH = 0.5


class _BufferedAccessLog(logging.StreamHandler):  # type: ignore[type-arg]
    """The access log on stderr, written in blocks rather than a write() per line.

    One line per request is the busiest log there is; a write system call per line
    (stderr is line-buffered) showed in the worker's profile under load. Lines reach
    stderr at most ``ACCESS_LOG_FLUSH`` seconds late, whole, and at exit.
    """

    def __init__(self) -> None:
        stream = open(  # noqa: SIM115 - lives as long as the process
            sys.stderr.fileno(),
            "w",
            buffering=64 * 1024,
            closefd=False,
            encoding="utf-8",
            errors="backslashreplace",
        )
        super().__init__(stream)
        self._flusher = threading.Thread(
            target=self._flush_every, name="wsgi-channels-access-log", daemon=True
        )
        self._flusher.start()
        atexit.register(self.really_flush)

    def flush(self) -> None:
        """Called by emit() after each line: left to the flushing thread."""

    def really_flush(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            super().flush()

    def _flush_every(self) -> None:
        while True:
            time.sleep(ACCESS_LOG_FLUSH)
            self.really_flush()


class _NoUvicornBanner(logging.Filter):
    """Drops uvicorn's own "Uvicorn running on ..." lines: our start line says where
    we listen, and which layer. uvicorn's general logger, ``uvicorn.error``, is shown
    as ``uvicorn``: its lines are mostly not errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("uvicorn"):
            return True
        if str(record.msg).startswith("Uvicorn running on"):
            return False
        if record.name == "uvicorn.error":
            record.name = "uvicorn"
        return True


def log_config(level: str) -> dict[str, Any]:
    """The logging configuration of our commands, as uvicorn takes it (``log_config``):
    uvicorn's lines and ours in one format on stderr, at *level*. uvicorn applies it in
    each process it starts, so ``--workers`` children log the same way."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"format": LOG_FORMAT}},
        "filters": {"no_banner": {"()": _NoUvicornBanner}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["no_banner"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        # uvicorn's loggers reach the root handler, not handlers of their own.
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
        },
    }


def _configure_logging(level: str = "info", *, access_log: bool = True) -> None:
    """Our log format and *level* on stderr; the access log (the worker's one line per
    request) on or off, whatever the level."""
    import logging.config

    logging.config.dictConfig(log_config(level))
    access = logging.getLogger("wsgi_channels.access")
    access.setLevel(logging.INFO if access_log else logging.CRITICAL + 1)
    if not any(isinstance(h, _BufferedAccessLog) for h in access.handlers):
        handler = _BufferedAccessLog()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        access.addHandler(handler)
        access.propagate = False


def _one_line(exc: BaseException) -> str:
    """``Type: message (file:line)`` for the innermost frame of *exc*."""
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        where = f" ({frames[-1].filename}:{frames[-1].lineno})"
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" ({exc.filename}:{exc.lineno})"
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {message}{where}"


def layer_url_of(url: str | None) -> str:
    """*url* (``--layer`` or ``WSGI_CHANNELS_LAYER``), else a Django project's
    ``WSGI_CHANNELS_LAYER`` setting, else the default.

    The setting is read once APP has been loaded, or, for commands without an APP, from
    the settings module that ``DJANGO_SETTINGS_MODULE`` names (imported with the
    current directory on ``sys.path``, as ``manage.py`` would).
    """
    from .layers import _django_setting

    if url:
        return url
    if os.environ.get("DJANGO_SETTINGS_MODULE") and "django.conf" not in sys.modules:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        with contextlib.suppress(ImportError):
            import django.conf  # noqa: F401 - makes the settings readable
    return _django_setting() or DEFAULT_LAYER_URL


def open_layer(url: str | None) -> BaseChannelLayer:
    """The layer named by :func:`layer_url_of`, checked to be reachable."""
    url = layer_url_of(url)
    try:
        layer = layer_from_url(url)
        layer.channel_statistics("http.request")  # a cheap call that needs the server
    except LayerUnavailable as exc:
        # Our layers' messages already name the (masked) URL and the reason.
        reason = str(exc)
        _fail(reason if mask_url(url) in reason else f"channel layer {mask_url(url)}: {reason}")
    except ChannelsError as exc:
        _fail(str(exc))
    return layer


def _warn_if_private(url: str) -> None:
    """``memory://`` lives in one process: an interface or a worker on it can never
    meet its other half (every request would wait until its timeout)."""
    if url.partition(":")[0].lower() == "memory":
        click.echo(
            "wsgi-channels: warning: memory:// lives inside this process, so no other "
            "process (interface, worker, sender) can reach it; use sqlite:///FILE or "
            "redis://HOST (memory:// is for `wsgi-channels run` and tests)",
            err=True,
        )


def shown_layer_url(url: str) -> str:
    """*url* as the start line shows it: password masked, an SQLite file as an absolute
    path (a process started from another directory uses another file)."""
    import urllib.parse

    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme.lower() == "sqlite" and not parsed.netloc and parsed.path.startswith("/"):
        path = os.path.abspath(urllib.parse.unquote(parsed.path[1:]))
        return f"sqlite:///{path}" + (f"?{parsed.query}" if parsed.query else "")
    return mask_url(url)


def _serving_line(host: str | None, port: int | None, uds: str | None, layer_url: str) -> str:
    if uds is not None:
        where = f"unix:{uds}"
    else:
        shown = f"[{host}]" if host and ":" in host else host
        where = f"http://{shown}:{port}"
    return f" * Running on {where} with layer {shown_layer_url(layer_url)} (Press CTRL+C to quit)"


def _uvicorn_options(log_level: str) -> dict[str, Any]:
    """uvicorn settings shared by ``run`` and ``interface``.

    ``ws``: wsproto, measured (1,000 idle WebSockets through this interface server,
    RSS growth per connection): wsproto 23 KB, websockets-sansio 60 KB, websockets
    128 KB; only wsproto is under the 30 KB bar. Our subclass closes with 1001 at
    shutdown. ``ws_max_size``: one frame must fit in one layer message.
    The access log is the worker's (one line per request), so uvicorn's is
    off: it would double the lines and cost every request a logging call.
    """
    from .interface import BoundedHttpToolsProtocol, GoingAwayWSProtocol
    from .protocol import MAX_FRAME_SIZE

    options: dict[str, Any] = {
        "http": BoundedHttpToolsProtocol,
        "ws": GoingAwayWSProtocol,
        "ws_max_size": MAX_FRAME_SIZE,
        # Off, as in gorilla/websocket and Centrifugo by default: a compressed socket
        # costs a zlib context (~300 KB) and its own encoding of every group message.
        "ws_per_message_deflate": False,
        "lifespan": "on",
        "access_log": False,
        "log_level": log_level,
        "log_config": log_config(log_level),
        "server_header": False,
        "timeout_graceful_shutdown": 30,
    }
    try:
        import uvloop  # noqa: F401

        options["loop"] = "uvloop"
    except ImportError:
        options["loop"] = "asyncio"
    return options


def _check_interface_options(
    http_timeout: float, connect_timeout: float, origins: tuple[str, ...]
) -> None:
    from .interface import OriginRules

    if http_timeout <= 0 or connect_timeout <= 0:
        _fail("--http-timeout and --websocket-connect-timeout must be positive seconds")
    try:
        OriginRules(origins)
    except ConfigurationError as exc:
        _fail(str(exc))


def _check_metrics(address: str | None) -> None:
    """Fail now, with one line, on a bad ``--metrics`` address or without
    prometheus-client, before anything starts."""
    if address:
        from . import metrics

        metrics.parse_address(address)
        metrics.require()


def _start_metrics(address: str | None, layer: Any, *roles: str) -> list[Any]:
    """Serve ``/metrics`` on *address* (with the queue depths of *layer*) and return a
    recorder per role; without *address*, no-op recorders and nothing served."""
    from . import metrics

    if not address:
        return [metrics.NULL_METRICS for _ in roles]
    recorders = [metrics.Metrics(role) for role in roles]
    host, port = metrics.serve(address, layer)
    logging.getLogger("wsgi_channels.metrics").info(
        "Prometheus metrics at http://%s:%d/metrics", host, port
    )
    return recorders


# -- the commands -----------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="wsgi-channels", prog_name="wsgi-channels")
def cli() -> None:
    """WebSockets and server push for WSGI apps, over a channel layer."""
    _limit_malloc_arenas()


#: glibc malloc arenas per process for our long-running commands (see below).
MALLOC_ARENAS = 2


def _limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas for this process and the processes it starts.

    glibc gives threads that allocate at once arenas of their own, up to 8 per core;
    freed memory stays spread over them. In a 300 s soak over Redis (tests/test_faults.py,
    ``WSGI_CHANNELS_SOAK_SECONDS=300``, ~50,000 WebSocket sessions) the interface
    server's RSS grew 13.3 % and the worker's 9.9 % with no growth of the Python heap;
    with two arenas, 6.2 % and 2.3 % for more traffic. ``MALLOC_ARENA_MAX`` set by the
    user wins.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    os.environ["MALLOC_ARENA_MAX"] = str(MALLOC_ARENAS)  # for uvicorn's --workers children
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: nothing to do
    m_arena_max = -8  # from glibc's malloc.h
    libc.mallopt(m_arena_max, MALLOC_ARENAS)


@cli.command()
@click.argument("app", envvar=_env("APP"))
@bind_option
@layer_option
@threads_option
@log_level_option
@access_log_option
@metrics_option
@click.option(
    "--reload",
    is_flag=True,
    envvar=_env("RELOAD"),
    help="Restart when a Python file changes (development). [env: WSGI_CHANNELS_RELOAD]",
)
def run(
    app: str,
    bind: str,
    layer_url: str | None,
    threads: int,
    log_level: str,
    access_log: bool,
    metrics_address: str | None,
    reload: bool,
) -> None:
    """Serve APP for development: interface server and worker in one process."""
    host, port, uds = parse_bind(bind)
    if reload:
        # werkzeug's reloader (the one flask run uses); run_simple wraps it with its
        # own server, so we call it directly.
        from werkzeug._reloader import run_with_reloader
        from werkzeug.serving import is_running_from_reloader

        if not is_running_from_reloader():
            # Fail now, once, rather than in every restarted child (serve_app checks
            # the metrics address itself otherwise).
            _check_metrics(metrics_address)
            load_app(app)
            click.echo(_serving_line(host, port, uds, layer_url_of(layer_url)))

        def serve_until_changed() -> None:
            # Runs in a thread of werkzeug's reloader: an app that no longer imports (a
            # syntax error being fixed) is one line, and the reloader waits for the fix.
            try:
                _run(
                    app,
                    host,
                    port,
                    uds,
                    layer_url,
                    threads,
                    (log_level, access_log),
                    announce=False,
                    metrics_address=metrics_address,
                )
            except (UsageProblem, ConfigurationError) as exc:
                click.echo(f"wsgi-channels: error: {exc} (waiting for a change)", err=True)

        run_with_reloader(serve_until_changed)
        return
    _run(
        app, host, port, uds, layer_url, threads, (log_level, access_log), announce=True,
        metrics_address=metrics_address,
    )  # fmt: skip


def _run(
    app_spec: str,
    host: str | None,
    port: int | None,
    uds: str | None,
    layer_url: str | None,
    threads: int,
    logs: tuple[str, bool],
    *,
    announce: bool,
    metrics_address: str | None = None,
) -> None:
    from .inprocess import serve_app

    app = load_app(app_spec)
    log_level, access_log = logs

    def announce_bound(bound: int) -> None:
        click.echo(_serving_line(host, None if uds else bound, uds, layer_url_of(layer_url)))

    serve_app(
        app, host or "127.0.0.1", port or 0, uds=uds, threads=threads, layer_url=layer_url,
        on_bind=announce_bound if announce else None, log_level=log_level,
        access_log=access_log, metrics_address=metrics_address,
    )  # fmt: skip


def _serve(server: Any, sock: socket.socket, announce: Callable[[], None] | None = None) -> None:
    """Run a uvicorn server until SIGTERM/SIGINT, then return normally (exit 0).
    *announce()* (the "Running on" line) is called once a signal can no longer be
    lost, so that whoever waits for that line may stop the server at once.

    uvicorn handles the signals while it serves, then restores the handlers it found
    and raises the signal again so that the default action still happens: that would
    kill the process with SIGTERM after a clean shutdown. The handlers installed here
    are the ones restored: they ignore that second delivery. A signal that arrives
    before uvicorn has installed its own handlers (right at start) makes it stop as
    soon as it has started, instead of being lost.
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        # Under --reload, werkzeug's reloader owns the main thread (and the signals);
        # uvicorn then leaves signals alone too.
        if announce is not None:
            announce()
        server.run(sockets=[sock])
        return

    def stop(signum: int, frame: object) -> None:
        # Before uvicorn has put in its own handlers (a signal right at start) this
        # asks it to stop once started; after it has restored these, its second
        # delivery of the signal lands here and changes nothing.
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if announce is not None:
            announce()
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_bind(host: str | None, port: int | None, uds: str | None) -> None:
    """Fail with one line (and the reason) if HOST:PORT cannot be listened on, before
    anything else starts. uvicorn would log the OSError on lines of its own."""
    import socket

    if uds is not None:
        directory = os.path.dirname(os.path.abspath(uds))
        if not os.path.isdir(directory):
            _fail(f"cannot listen on unix:{uds}: directory {directory} does not exist")
        if not os.access(directory, os.W_OK | os.X_OK):
            _fail(f"cannot listen on unix:{uds}: directory {directory} is not writable")
        return
    if not port:
        return
    family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host or "127.0.0.1", port))
        except OSError as exc:
            _fail(f"cannot listen on {host or '127.0.0.1'}:{port}: {exc.strerror or exc}")


def _bind(config: Any) -> socket.socket:
    try:
        sock: socket.socket = config.bind_socket()
    except SystemExit:
        # uvicorn has logged the OSError (address in use, permission denied).
        _fail(f"cannot listen on {config.uds or f'{config.host}:{config.port}'}")
    return sock


@cli.command()
@bind_option
@layer_option
@click.option(
    "--workers",
    "-w",
    envvar=_env("WORKERS"),
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Interface server processes sharing the socket. [env: WSGI_CHANNELS_WORKERS]",
)
@click.option(
    "--allowed-origin",
    "allowed_origins",
    envvar=_env("ALLOWED_ORIGINS"),
    multiple=True,
    metavar="PATTERN",
    help="Extra WebSocket origin: https://example.com, *.example.com or * (repeatable). "
    "[env: WSGI_CHANNELS_ALLOWED_ORIGINS, space separated]",
)
@click.option(
    "--root-path",
    envvar=_env("ROOT_PATH"),
    default="",
    help="Path the site is mounted at (WSGI SCRIPT_NAME). [env: WSGI_CHANNELS_ROOT_PATH]",
)
@click.option(
    "--max-body",
    envvar=_env("MAX_BODY"),
    type=SizeType(),
    default="100M",
    show_default=True,
    help="Largest request body; larger gets 413. [env: WSGI_CHANNELS_MAX_BODY]",
)
@click.option(
    "--http-timeout",
    envvar=_env("HTTP_TIMEOUT"),
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds to wait for a response to start (then 504). [env: WSGI_CHANNELS_HTTP_TIMEOUT]",
)
@click.option(
    "--websocket-connect-timeout",
    envvar=_env("WEBSOCKET_CONNECT_TIMEOUT"),
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds a WebSocket handshake waits for the app to accept (then 403). "
    "[env: WSGI_CHANNELS_WEBSOCKET_CONNECT_TIMEOUT]",
)
@click.option(
    "--health-path",
    envvar=_env("HEALTH_PATH"),
    default="",
    metavar="PATH",
    help="Answer GET PATH (e.g. /healthz) with the deployment's health: 200 or 503 and "
    "JSON, for load balancers; off by default. [env: WSGI_CHANNELS_HEALTH_PATH]",
)
@log_level_option
@access_log_option
@metrics_option
@batch_scheduling_option(
    "each process's event loop", "woken by a client or the layer, it waits for"
)
def interface(
    bind: str,
    layer_url: str | None,
    workers: int,
    allowed_origins: tuple[str, ...],
    root_path: str,
    max_body: int,
    http_timeout: float,
    websocket_connect_timeout: float,
    health_path: str,
    log_level: str,
    access_log: bool,
    metrics_address: str | None,
    batch_scheduling: bool,
) -> None:
    """Serve HTTP and WebSocket clients, passing them on to workers over the layer."""
    import uvicorn

    from .interface import InterfaceConfig

    host, port, uds = parse_bind(bind)
    _check_metrics(metrics_address)
    _check_interface_options(http_timeout, websocket_connect_timeout, allowed_origins)
    try:
        # The one configuration object; every process rebuilds it from the environment.
        settings = InterfaceConfig.from_environ(
            os.environ,
            allowed_origins=allowed_origins,
            root_path=root_path,
            max_body=max_body,
            http_timeout=http_timeout,
            websocket_connect_timeout=websocket_connect_timeout,
            health_path=health_path,
        )
    except ConfigurationError as exc:
        _fail(str(exc))
    _check_bind(host, port, uds)
    url = layer_url_of(layer_url)
    open_layer(url).close()
    _warn_if_private(url)
    _configure_logging(log_level, access_log=access_log)
    # Each process builds its InterfaceServer with create_app() from these variables:
    # uvicorn's worker processes are spawned, and inherit the environment.
    os.environ.update({LAYER_ENV: url, **settings.to_environ()})
    os.environ[_env("BATCH_SCHEDULING")] = "1" if batch_scheduling else "0"
    options = _uvicorn_options(log_level)
    if workers > 1:
        if metrics_address:
            _serve_metrics_of_children(metrics_address, url, workers)
        # uvicorn's supervisor binds the socket and logs where it listens.
        click.echo(_serving_line(host, port, uds, url))
        uvicorn.run(
            "wsgi_channels.interface:create_app",
            factory=True,
            host=host or "127.0.0.1",
            port=port or 8000,
            uds=uds,
            workers=workers,
            **options,
        )
        return
    from .interface import create_app

    (recorder,) = _start_metrics(metrics_address, lambda: layer_from_url(url), "interface")
    app = create_app(metrics=recorder)
    config = uvicorn.Config(app, host=host or "127.0.0.1", port=port or 0, uds=uds, **options)
    sock = _bind(config)
    bound = sock.getsockname()[1] if uds is None else None
    _serve(uvicorn.Server(config), sock, lambda: click.echo(_serving_line(host, bound, uds, url)))


def _serve_metrics_of_children(address: str, url: str, processes: int) -> None:
    """``interface --workers N --metrics``: the spawned processes record in
    prometheus-client's multiprocess mode (they see ``WSGI_CHANNELS_METRICS`` and
    ``PROMETHEUS_MULTIPROC_DIR``); this supervisor serves their sum."""
    from . import metrics

    metrics.prepare_multiprocess()
    os.environ[metrics.METRICS_ENV] = address
    host, port = metrics.serve(address, lambda: layer_from_url(url), multiprocess=True)
    logging.getLogger("wsgi_channels.metrics").info(
        "Prometheus metrics of %d interface processes at http://%s:%d/metrics",
        processes, host, port,
    )  # fmt: skip


@cli.command()
@click.argument("app", envvar=_env("APP"))
@layer_option
@threads_option
@log_level_option
@access_log_option
@metrics_option
@batch_scheduling_option("the app's threads", "a thread woken waits for")
def worker(
    app: str,
    layer_url: str | None,
    threads: int,
    log_level: str,
    access_log: bool,
    metrics_address: str | None,
    batch_scheduling: bool,
) -> None:
    """Run APP on the messages of the layer until SIGTERM/SIGINT."""
    from .layers import set_default_layer
    from .process import freeze_startup_heap
    from .worker import Worker

    _check_metrics(metrics_address)
    wsgi_app = load_app(app)
    layer = open_layer(layer_url)
    _warn_if_private(layer_url_of(layer_url))
    # Channel() and Group() in the app, without layer=, use the layer served here.
    set_default_layer(layer)
    # Before the start line: once it is out, a supervisor may signal at any moment.
    freeze_startup_heap()
    _configure_logging(log_level, access_log=access_log)
    click.echo(f" * Running {app} with layer {shown_layer_url(layer_url_of(layer_url))}")
    try:
        (recorder,) = _start_metrics(metrics_address, layer, "worker")
        recorder.worker_threads(threads)
        Worker(
            wsgi_app, layer, threads=threads, metrics=recorder, batch_scheduling=batch_scheduling
        ).run()
    finally:
        layer.close()


@cli.command()
@layer_option
@click.option("--group", "-g", metavar="GROUP", help="Send to every channel of this group.")
@click.option("--channel", "-c", metavar="CHANNEL", help="Send to this channel.")
@click.option("--text", "-t", metavar="TEXT", help='Send {"text": TEXT}.')
@click.option("--json", "-j", "json_text", metavar="JSON", help="Send this JSON object.")
def send(
    layer_url: str | None,
    group: str | None,
    channel: str | None,
    text: str | None,
    json_text: str | None,
) -> None:
    """Send one message to a group or a channel."""
    if (group is None) == (channel is None):
        raise click.UsageError("give exactly one of --group and --channel")
    if (text is None) == (json_text is None):
        raise click.UsageError("give exactly one of --text and --json")
    message: dict[str, Any]
    if json_text is not None:
        try:
            message = json.loads(json_text)
        except ValueError as exc:
            raise click.UsageError(f"--json is not valid JSON: {exc}") from None
        if not isinstance(message, dict):
            raise click.UsageError('--json must be a JSON object, like \'{"text": "hi"}\'')
    else:
        message = {"text": text}
    try:
        validate_websocket_reply(message)
    except InvalidMessage as exc:
        raise click.UsageError(f"--json: {exc}") from None
    layer = open_layer(layer_url)
    try:
        if group is not None:
            layer.send_group(group, message)
            members = len(layer.group_channels(group))
            click.echo(f"sent to group {group!r} ({members} member{'s' * (members != 1)})")
        else:
            assert channel is not None
            layer.send(channel, message)
            click.echo(f"sent to channel {channel!r}")
    except ChannelsError as exc:
        _fail(str(exc))
    finally:
        layer.close()


@cli.command()
@layer_option
@click.option(
    "--max-wait",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds the oldest waiting request may have waited in a healthy deployment.",
)
def check(layer_url: str | None, max_wait: float) -> None:
    """Say whether the deployment can serve: the layer answers and workers take
    requests. Exit 0 healthy, 1 layer unreachable, 3 no worker takes requests."""
    from .health import check as check_health

    url = layer_url_of(layer_url)
    try:
        layer = layer_from_url(url)
    except ChannelsError as exc:
        _fail(str(exc))
    try:
        health = check_health(layer, max_wait)
    finally:
        layer.close()
    click.echo(f"{'ok' if health.healthy else 'unhealthy'}: {health.reason} ({mask_url(url)})")
    sys.exit(health.exit_code)


@cli.command()
@layer_option
@click.option(
    "--watch",
    is_flag=True,
    help="Refresh the table every second, like top, until Ctrl-C; adds each queue's "
    "change per second.",
)
def stats(layer_url: str | None, watch: bool) -> None:
    """Show the layer's queues (pending / capacity) and groups (members)."""
    url = layer_url_of(layer_url)
    layer = open_layer(url)
    try:
        if watch:
            _watch(layer, url)
            return
        try:
            queues, groups = _snapshot(layer)
        except ChannelsError as exc:
            _fail(str(exc))
    finally:
        layer.close()
    click.echo(f"layer: {mask_url(url)}")
    click.echo("")
    click.echo(_stats_tables(queues, groups, None))


#: Seconds between two tables of ``stats --watch``.
WATCH_INTERVAL = 1.0


def _snapshot(layer: BaseChannelLayer) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    """``({queue: (pending, capacity)}, {group: members})`` now."""
    overview = layer.overview()
    queues = {
        name: (pending, int(layer.channel_statistics(name)["capacity"]))
        for name, pending in overview["channels"].items()
    }
    return queues, dict(overview["groups"])


def _stats_tables(
    queues: dict[str, tuple[int, int]],
    groups: dict[str, int],
    rates: dict[str, float] | None,
) -> str:
    header: tuple[str, ...] = ("channel", "pending", "capacity")
    if rates is not None:
        header += ("change/s",)
    rows = []
    for name, (pending, capacity) in sorted(queues.items()):
        row: tuple[str, ...] = (name, str(pending), str(capacity))
        if rates is not None:
            row += (f"{rates.get(name, 0.0):+.1f}",)
        rows.append(row)
    group_rows = [(name, str(size)) for name, size in sorted(groups.items())]
    return "\n".join(
        [
            _table(header, rows, "(no messages waiting)"),
            "",
            _table(("group", "members"), group_rows, "(no groups)"),
        ]
    )


def _watch(layer: BaseChannelLayer, url: str) -> None:
    """Print the tables every WATCH_INTERVAL seconds (clearing a terminal first) until
    Ctrl-C, which ends the command with status 0. A layer that becomes unavailable is
    one line per refresh until it is back."""
    clear = "\033[H\033[2J" if sys.stdout.isatty() else ""
    previous: dict[str, int] | None = None
    previous_at = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            stamp = time.strftime("%H:%M:%S")
            try:
                queues, groups = _snapshot(layer)
            except LayerUnavailable as exc:
                click.echo(f"{clear}layer: {mask_url(url)}  {stamp}\n\n{exc}\n", nl=False)
                previous = None
            else:
                pending = {name: count for name, (count, _) in queues.items()}
                rates = None
                if previous is not None:
                    elapsed = max(now - previous_at, 1e-6)
                    rates = {
                        name: (pending.get(name, 0) - previous.get(name, 0)) / elapsed
                        for name in pending.keys() | previous.keys()
                    }
                    # A queue that emptied since the last table shows one more row.
                    for name in previous.keys() - pending.keys():
                        queues[name] = (0, int(layer.channel_statistics(name)["capacity"]))
                previous, previous_at = pending, now
                tables = _stats_tables(queues, groups, rates if rates is not None else {})
                click.echo(
                    f"{clear}layer: {mask_url(url)}  {stamp}  (every {WATCH_INTERVAL:g} s, "
                    f"Ctrl-C to quit)\n\n{tables}\n"
                )
            time.sleep(max(0.0, WATCH_INTERVAL - (time.monotonic() - now)))
    except KeyboardInterrupt:
        click.echo("")


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], empty: str) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(cells).rstrip()

    lines = [line(header), "  ".join("-" * w for w in widths)]
    lines += [line(row) for row in rows] or [empty]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> NoReturn:
    """The console entry point: run :func:`cli`, turning every usage problem into one
    line on stderr and exit status 2."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        # The commands, rather than click's one-line "Missing command".
        with click.Context(cli, info_name="wsgi-channels") as ctx:
            click.echo(cli.get_help(ctx))
        sys.exit(2)
    try:
        result = cli.main(args=args, prog_name="wsgi-channels", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        message = exc.format_message().splitlines()[0] if exc.format_message() else str(exc)
        click.echo(f"wsgi-channels: error: {message}", err=True)
        sys.exit(2)
    except (UsageProblem, ConfigurationError) as exc:
        click.echo(f"wsgi-channels: error: {exc}", err=True)
        sys.exit(2)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    # ``python -m wsgi_channels.cli``: run the imported module's main, so that the
    # modules importing ``wsgi_channels.cli`` (inprocess) raise the classes it catches.
    from wsgi_channels.cli import main as imported_main

    imported_main()
