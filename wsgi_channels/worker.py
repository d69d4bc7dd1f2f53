"""The worker: run an unmodified WSGI app on ``http.request`` and ``websocket.*`` messages.

::

    Worker(app, layer, threads=8).run()   # until SIGTERM/SIGINT or worker.stop()

Lifecycle, in the words of gunicorn's workers: ``__init__`` only stores settings,
:meth:`Worker.serve` is the loop (shared by :meth:`Worker.run` and the gunicorn worker
class in :mod:`wsgi_channels.gunicorn`), and graceful stop means: take no new message,
let the ones in flight finish for up to ``graceful_timeout`` seconds, return.

Threads:

* ``threads`` pool threads run the app; the free thread that holds the take lock
  receives up to one message per free thread in one call (``receive_batch``; one
  ``receive`` per thread on layers without it) and hands the others to free threads,
  so a message is taken only when a thread is free to run it at once; messages not
  yet taken stay in the layer, where other workers can have them;
* the thread that calls ``serve`` waits for a stop and runs ``on_tick`` (gunicorn's
  heartbeat) meanwhile;
* one *control thread* blocks on the worker's process channel prefix
  (``wsgi_channels.worker.<128 random bits>!``) for ``http.disconnect`` notices from our
  interface server (docs/protocol.md).

With ``batch_scheduling`` (the default) the pool and control threads run under Linux's
``SCHED_BATCH`` policy (:func:`~wsgi_channels.process.batch_scheduling`): the same share
of the CPU, but a thread woken does not preempt the one running, which on a busy machine cuts the
context switches of threads handing the GIL to each other.

The layer is any object with the ASGI 1.0 layer methods
(:class:`~wsgi_channels.layers.base.Layer`): only ``send``, ``receive`` (or the older
``receive_many``), ``new_channel`` and, where present, ``receive_batch`` are used, so
third-party layers such as ``asgi_redis`` work (on layers whose ``new_channel`` takes
only ``?`` patterns the control channel is a ``?`` channel).
"""

from __future__ import annotations

import collections
import contextlib
import io
import itertools
import logging
import math
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import FrameType
from typing import Any, Literal

from .adapter import (
    InvalidResponse,
    MalformedMessage,
    ResponseTranslator,
    build_environ,
    error_reply,
    websocket_environ,
    websocket_frame,
    websocket_replies,
)
from .layers.base import (
    ChannelFull,
    ChannelsError,
    ConfigurationError,
    Layer,
    LayerUnavailable,
    MessageTooLarge,
)
from .metrics import NULL_METRICS, Recorder
from .process import BATCH_SCHEDULING_ENV, batch_scheduling, env_flag
from .protocol import (
    CONTROL_KEY,
    DEADLINE_KEY,
    DEFAULT_CHANNELS,
    DISCONNECT_TYPE,
    DONE_KEY,
    EXT_KEY,
    HTTP_REQUEST,
    MAX_FRAME_SIZE,
    SUBPROTOCOL_KEY,
    WEBSOCKET_EVENTS,
    WORKER_PREFIX,
    full_retry_pauses,
)

__all__ = ["BodyIncomplete", "BodyStream", "Worker"]

log = logging.getLogger("wsgi_channels.worker")
access_log = logging.getLogger("wsgi_channels.access")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# receive(channels, block) -> (channel, message) or (None, None)
Receive = Callable[..., tuple[Any, Any]]
# receive_batch(channels, block, max_messages=n, max_records=n) -> [(channel, message)]
ReceiveBatch = Callable[..., list[tuple[str, Any]]]
# send_then_receive([(channel, message)], channels, max_messages) -> (errors, batch)
SendThenReceive = Callable[..., tuple[list[Any], list[tuple[str, Any]]]]
# send_soon(channel, message, settled): settled(True | False | error), maybe later
SendSoon = Callable[[str, dict[str, Any], Callable[[Any], None]], None]

#: How long a reply may wait on a full reply channel once the response has started
#: (before that, the message's deadline rules: the interface stops waiting then).
STALL_TIMEOUT = 30.0
#: How long a send may meet a full reply channel without a single message getting
#: through before the reply is abandoned: our interface drains its reply channels
#: continuously while it lives, so a channel full this long belongs to a dead one.
FULL_STALL_TIMEOUT = 2.0
#: Deadline given to messages without ``wsgi_channels.deadline`` (ASGI 1.0 front
#: ends): the default message expiry of a layer, after which nobody waits any more.
DEFAULT_REPLY_TIMEOUT = 60.0
#: The receive loop runs its tick (gunicorn's heartbeat) at least this often.
TICK_INTERVAL = 0.5
#: How long a thread that took the only message of an idle worker keeps the duty to
#: take the next ones (with its reply for a WebSocket event, else with a blocking receive
#: of its own once it has replied) before
#: an idle thread takes the duty over. At concurrency 1 the next request comes only
#: after this reply, so an idle thread waiting in the layer meanwhile would only
#: compete with the app for the GIL; an app slower than this has one waiting as before.
TAKE_GRACE = 0.001
#: No grace for this long after a message came while another ran (concurrency above
#: 1): then idle threads must be ready in the layer, as the next message will not wait
#: for the end of the one running.
GRACE_QUIET = 0.1


_BAD_REQUEST = error_reply(400, b"Bad Request\n")
_SERVER_ERROR = error_reply(500, b"Internal Server Error\n")


class BodyIncomplete(ChannelsError, OSError):
    """``wsgi.input`` could not deliver the whole body: the client went away during the
    upload, or the rest did not arrive before the request's deadline. Raised by
    ``read()``; an app that lets it escape gets a 400 (if nothing was sent yet)."""


class BodyStream:
    """``wsgi.input`` for a body that continues on a ``body_channel``.

    Serves ``body`` first, then the ``content`` of each ``{content, closed,
    more_content}`` chunk, taken from the layer only when a read needs it (so a large
    upload is never held in memory all at once, and the interface's sends pace
    themselves on ChannelFull). End of stream is the chunk with ``more_content`` false;
    after it every read returns ``b""``.

    A read that needs a chunk blocks on ``receive([body_channel], block=True)`` until
    the *deadline* (Unix time); past it, or on a chunk with ``closed`` true (the
    client disconnected), it raises BodyIncomplete. Bodies without a ``body_channel``
    use ``io.BytesIO`` instead of this class.
    """

    def __init__(self, body: bytes, receive: Receive, channel: str, deadline: float) -> None:
        self._buffer = bytearray(body)
        self._receive = receive
        self._channel = channel
        self._deadline = deadline
        self._eof = False

    def _more(self) -> bool:
        """Append the next chunk to the buffer; False at end of stream."""
        while not self._eof:
            if time.time() >= self._deadline:
                raise BodyIncomplete("the request body did not arrive before the deadline")
            channel, message = self._receive([self._channel], True)
            if channel is None:
                continue
            if message.get("closed"):
                self._eof = True
                raise BodyIncomplete("the client disconnected during the upload")
            content = message.get("content", b"")
            if not isinstance(content, bytes):
                self._eof = True
                raise BodyIncomplete("a body chunk's content is not bytes")
            self._eof = not message.get("more_content", False)
            if content:
                self._buffer += content
                return True
        return False

    def read(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0:
            while self._more():
                pass
            size = len(self._buffer)
        while len(self._buffer) < size and self._more():
            pass
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def readline(self, size: int | None = -1, /) -> bytes:
        limit = -1 if size is None else size
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end >= 0:
                end += 1
                break
            if 0 <= limit <= len(self._buffer):
                break
            start = len(self._buffer)
            if not self._more():
                end = len(self._buffer)
                break
        if 0 <= limit < end:
            end = limit
        return self.read(end)

    def readlines(self, hint: int | None = -1, /) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line


class _Abandon(Exception):
    """The reply cannot be delivered: deadline passed, or the client went away."""


class _Request:
    """Per-request state the control thread may change from outside."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False


# Statuses for exceptions escaping the app (a table, not an isinstance chain);
# anything else is a 500. The body is always generic.
_ERROR_STATUS: dict[type[BaseException], int] = {BodyIncomplete: 400}


def _error_status(exc: BaseException) -> int:
    for cls in type(exc).__mro__:
        status = _ERROR_STATUS.get(cls)
        if status is not None:
            return status
    return 500


def _run_app(
    app: WSGIApp,
    environ: dict[str, Any],
    translator: ResponseTranslator,
    request: _Request | None = None,
) -> None:
    """Call the app, feed what it returns to *translator* and finish it; the app's
    iterable is always closed. Shared by the HTTP and WebSocket handlers. Iteration
    stops once the response is complete (HEAD, Content-Length reached), and raises
    _Abandon when *request* was cancelled (the client went away)."""
    iterable: Iterable[bytes] | None = None
    try:
        iterable = app(environ, translator.start_response)
        if type(iterable) is list or type(iterable) is tuple:
            translator.feed_all(iterable)
        else:
            feed = translator.feed
            for chunk in iterable:
                feed(chunk)
                if translator.done:
                    break
                if request is not None and request.cancelled:
                    raise _Abandon("the client went away")
        translator.finish()
    finally:
        if iterable is not None:
            _close(iterable)


def _close(iterable: object) -> None:
    close = getattr(iterable, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.exception("error in the close() of the app's response")


class Worker:
    """Runs the WSGI *app* on messages received from *layer*.

    ``threads`` bounds how many messages run at once; ``graceful_timeout`` is how
    long a stop waits for those in flight; ``channels`` limits the message types
    taken (default: ``http.request`` and the three ``websocket.*``);
    ``max_requests`` (0: no limit) makes :meth:`serve` return after that many
    messages, for process recycling (gunicorn's ``--max-requests``); ``metrics`` is a
    :mod:`wsgi_channels.metrics` recorder (default: none, nothing recorded);
    ``batch_scheduling=False`` keeps the pool threads under the default scheduling
    policy (see :func:`~wsgi_channels.process.batch_scheduling`; default:
    ``WSGI_CHANNELS_BATCH_SCHEDULING`` from the environment, on unless it says ``0``,
    ``false``, ``no`` or ``off``).

    Nothing a message contains stops the worker: a malformed message is logged and
    answered 400 (WebSocket: closed) on its ``reply_channel`` when that is usable; an
    exception in the app gives a generic 500 and a logged traceback. The app's
    iterable is always closed.
    """

    def __init__(
        self,
        app: WSGIApp,
        layer: Layer,
        *,
        threads: int = 8,
        graceful_timeout: float = 30.0,
        channels: Iterable[str] | None = None,
        max_requests: int = 0,
        metrics: Recorder = NULL_METRICS,
        batch_scheduling: bool | None = None,
    ) -> None:
        if threads < 1:
            raise ConfigurationError("threads must be at least 1")
        if graceful_timeout < 0:
            raise ConfigurationError("graceful_timeout must not be negative")
        names = list(DEFAULT_CHANNELS if channels is None else channels)
        unknown = [name for name in names if name not in DEFAULT_CHANNELS]
        if not names or unknown:
            raise ConfigurationError(
                f"unknown channels {unknown!r}; accepted: " + ", ".join(DEFAULT_CHANNELS)
            )
        self.app = app
        self.layer = layer
        self.threads = int(threads)
        self.graceful_timeout = float(graceful_timeout)
        self.channels = names
        self.max_requests = int(max_requests)
        self.metrics = metrics  # wsgi_channels.metrics; a no-op recorder when off
        if batch_scheduling is None:
            batch_scheduling = env_flag(BATCH_SCHEDULING_ENV, default=True)
        self.batch_scheduling = bool(batch_scheduling)
        #: Messages taken from the layer so far.
        self.requests_taken = 0
        # ASGI 1.0 layers before 1.0 final called it receive_many.
        receive = getattr(layer, "receive", None) or getattr(layer, "receive_many", None)
        if receive is None:
            raise ConfigurationError("the layer has neither receive nor receive_many")
        self._receive: Receive = receive
        # ASGI 1.0 layers expose their exception classes as attributes.
        self._full: tuple[type[BaseException], ...] = (
            getattr(layer, "ChannelFull", ChannelFull),
            ChannelFull,
        )
        self._too_large: tuple[type[BaseException], ...] = (
            getattr(layer, "MessageTooLarge", MessageTooLarge),
            MessageTooLarge,
        )
        self._receive_batch: ReceiveBatch | None = getattr(layer, "receive_batch", None)
        self._send_then_receive: SendThenReceive | None = getattr(layer, "send_then_receive", None)
        self._hands_over: Callable[[str], bool] | None = getattr(layer, "hands_over", None)
        self._layer_send_soon: SendSoon | None = getattr(layer, "send_soon", None)
        self._local = threading.local()  # each pool thread's rotation of channel orders
        # The take duty (see _thread_loop): _taking while a thread holds it; _grace_of
        # the thread whose grace (until _grace_until) is running, None when none is.
        self._take_cond = threading.Condition(threading.Lock())
        self._taking = False
        self._grace_of: int | None = None
        self._grace_until = 0.0
        self._concurrent_at = -math.inf  # when a message last came while another ran
        self._watcher: int | None = None  # the thread that wakes when a grace ends
        self._handoff: collections.deque[tuple[str, Any]] = collections.deque()
        self._busy = 0
        self._outage_since: float | None = None
        self._outage_next_log = 0.0
        self._stopping = threading.Event()
        self._force = False
        self._count_lock = threading.Lock()
        self._active: dict[str, _Request] = {}
        self._prefix = ""
        self._control_channel: str | None = None

    # -- lifecycle --------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` / :meth:`serve` to stop taking messages and return once
        those in flight are done (or ``graceful_timeout`` passed). Any thread may
        call it; it returns at once."""
        self._stopping.set()

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (handled only when called from the main thread)
        or :meth:`stop`. A second signal stops waiting for requests in flight."""
        if threading.current_thread() is not threading.main_thread():
            self.serve()
            return

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self._stopping.is_set():
                self._force = True
            log.info("received %s, stopping", signal.Signals(signum).name)
            self._stopping.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.serve()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def serve(
        self,
        should_stop: Callable[[], bool] | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        """Serve until a stop; returns after a graceful stop.

        It stops taking messages when :meth:`stop` was called, *should_stop()*
        returns true, or ``max_requests`` were taken; then waits for those in flight
        up to ``graceful_timeout``. *on_tick()* is called from the calling thread at
        least every ``TICK_INTERVAL`` seconds throughout, while requests run and while
        stopping (gunicorn's heartbeat). A Worker serves once: after a stop, make a
        new one.
        """
        self._force = False
        self._prefix, self._control_channel = self._new_control_channel()
        control = threading.Thread(
            target=self._control_loop, name="wsgi-channels-control", daemon=True
        )
        control.start()
        pool = [
            threading.Thread(
                target=self._thread_loop, args=(i,), name=f"wsgi-channels-{i}", daemon=True
            )
            for i in range(self.threads)
        ]
        for thread in pool:
            thread.start()
        log.info("worker serving %s with %d threads", ", ".join(self.channels), self.threads)
        stopping = self._stopping
        try:
            while not stopping.is_set():
                if on_tick is not None:
                    on_tick()
                if should_stop is not None and should_stop():
                    break
                stopping.wait(TICK_INTERVAL)
        finally:
            stopping.set()
            self._drain(pool, on_tick)
            self._control_channel = None
            control.join(timeout=0.1)  # it notices on its next receive timeout
            taken = self.requests_taken
            log.info("worker stopped after %d message%s", taken, "" if taken == 1 else "s")

    def _new_control_channel(self) -> tuple[str, str]:
        """``(name to receive on, control channel)``: a process channel under our
        prefix, or on layers whose ``new_channel`` takes only ``?`` patterns (ASGI 1.0
        layers such as asgi_redis 1.4) a single-reader channel received by name."""
        token = secrets.token_hex(16)
        prefix = f"{WORKER_PREFIX}{token}!"
        try:
            return prefix, self.layer.new_channel(prefix)
        except Exception as exc:
            log.debug("the layer refused a process channel (%r); using a '?' channel", exc)
        channel = self.layer.new_channel(f"{WORKER_PREFIX}{token}?")
        return channel, channel

    def _thread_loop(self, index: int) -> None:
        """One pool thread: take messages, run one, repeat.

        Leader/follower: the one free thread holding the take duty takes, in one call
        to ``receive_batch``, as many messages as there are free threads (never more,
        so no message taken waits behind another), keeps the first and leaves the rest
        in ``_handoff``; each free thread looks there before it takes the duty to
        receive. A thread that took the only message of an idle worker keeps the duty
        for ``TAKE_GRACE`` while it runs it (idle threads wait), so that at
        concurrency 1 its reply and its next receive follow each other in one thread
        instead of a second thread's receive competing with the app; not for
        ``GRACE_QUIET`` after a message came while another ran. One idle thread, the
        watcher, waits out each grace and takes if the grace ends with its holder still
        busy; while graces follow each other it looks every ``TAKE_GRACE`` instead of
        being woken by each release, so that at concurrency 1 no idle thread wakes per
        request (each such wake-up wanted the GIL while the app ran). An HTTP reply goes
        alone (sends of threads replying at the same moment share a round trip in the
        layer); the last reply of a WebSocket event may take the next messages with
        it (:meth:`_send_last`). Messages not
        yet taken stay in the layer, where other workers can have them. Layers
        without ``receive_batch`` (ASGI 1.0) are read with one blocking ``receive``
        per thread, as they serve one message per call anyway.
        Each receive starts at the next place in the rotation of channel orders, so a
        busy ``http.request`` cannot starve the ``websocket.*`` channels on layers
        that read the first non-empty channel.
        """
        if self.batch_scheduling:
            batch_scheduling()
        names = self.channels
        orders = [names[i:] + names[:i] for i in range(len(names))]
        rotations = itertools.islice(itertools.cycle(orders), index % len(orders), None)
        self._local.rotations = rotations
        stopping = self._stopping
        handoff = self._handoff
        # Messages handed off are out of the layer: they are run even when a stop began
        # meanwhile, or they would be lost.
        while not stopping.is_set() or handoff:
            try:
                channel, message = handoff.popleft()
            except IndexError:
                if stopping.is_set():
                    break
                # A grace of this thread's lets it take at once (see _claim).
                batch = self._take(rotations)
                if not batch:
                    continue
                channel, message = batch[0]
                handoff.extend(batch[1:])
            else:
                self._end_grace()  # not taking next: no reason to hold idle threads back
            try:
                self._dispatch(channel, message)
            finally:
                self.metrics.finished()
                with self._count_lock:
                    self._busy -= 1

    def _take(self, rotations: Iterator[list[str]]) -> list[tuple[str, Any]]:
        """Receive up to one message per free thread (see :meth:`_thread_loop`);
        every message returned counts as busy until it is dispatched and done."""
        stopping = self._stopping
        batch: list[tuple[str, Any]]
        try:
            if self._receive_batch is None:
                channel, message = self._receive(next(rotations), True)
                batch = [] if channel is None else [(channel, message)]
            else:
                if not self._claim():
                    return []  # handed off meanwhile (take from there first) or stopping
                batch = []
                with self._count_lock:
                    busy = self._busy
                try:
                    free = self.threads - busy
                    # With every thread idle there is no backlog to share a round trip
                    # with (concurrency 1): one blocking pop, as receive() does.
                    records = free if busy else 1
                    batch = self._receive_batch(
                        next(rotations), True, max_messages=free, max_records=records
                    )
                    if batch and self._busy:
                        self._concurrent_at = time.monotonic()
                    self._recovered()
                    self._count(batch)
                    return batch
                finally:
                    self._release(grace=not busy and len(batch) == 1)
        except Exception as exc:
            stopping.wait(self._outage(exc))
            return []
        self._recovered()
        self._count(batch)
        return batch

    def _claim(self) -> bool:
        """Wait for the take duty (at once during this thread's own grace); False when
        messages were handed off meanwhile or a stop began, as the caller must look at
        those first."""
        cond = self._take_cond
        me = threading.get_ident()
        with cond:
            while True:
                if self._handoff or self._stopping.is_set():
                    if self._watcher == me:
                        self._watcher = None
                    cond.notify()  # the next waiter looks too, one after another
                    return False
                now = time.monotonic()
                if not self._taking:
                    grace_of = self._grace_of
                    wait = self._grace_until - now
                    if grace_of is None or grace_of == me or wait <= 0:
                        break
                    self._watcher = me  # waits out another's grace
                elif self._watcher in (None, me) and now - self._grace_until < GRACE_QUIET:
                    # Graces follow each other (concurrency 1): watch, looking once
                    # per grace, rather than being woken by every release.
                    self._watcher = me
                    wait = TAKE_GRACE
                else:
                    if self._watcher == me:
                        self._watcher = None
                    wait = TICK_INTERVAL
                cond.wait(wait)
            if self._watcher == me:
                self._watcher = None
            self._taking = True
            self._grace_of = None
            return True

    def _try_claim(self) -> bool:
        """Take the duty if nobody holds it and no message waits in the hand-off; a
        grace running (this thread's or another's) is ended, as its purpose is that a
        finishing thread takes. Never waits: when another thread is changing the
        duty just now, the reply goes alone."""
        cond = self._take_cond
        if self._taking or self._handoff or not cond.acquire(blocking=False):
            return False
        try:
            if self._taking or self._handoff or self._stopping.is_set():
                return False
            self._taking = True
            self._grace_of = None
            return True
        finally:
            cond.release()

    def _release(self, *, grace: bool = False) -> None:
        """Give the duty up; with *grace*, keep it for this thread for ``TAKE_GRACE``
        unless a message came while another ran in the last ``GRACE_QUIET``. Wakes
        one waiting thread, which passes the wake on while messages are handed off;
        not for a grace that a watcher already looks after."""
        cond = self._take_cond
        with cond:
            self._taking = False
            now = time.monotonic()
            if grace and now - self._concurrent_at > GRACE_QUIET:
                self._grace_of = threading.get_ident()
                self._grace_until = now + TAKE_GRACE
                if self._watcher is not None:
                    return  # it wakes at the end of the grace by itself
            cond.notify()

    def _end_grace(self) -> None:
        """End this thread's grace if it runs still (it runs a handed-off message
        instead of taking)."""
        if self._grace_of != threading.get_ident():
            return
        with self._take_cond:
            if self._grace_of == threading.get_ident():
                self._grace_of = None
                self._take_cond.notify()

    def _outage(self, exc: Exception) -> float:
        """Note a failed receive; return how long to wait before the next one.

        The whole worker logs one line when an outage begins, then one each time its
        length doubles, and waits longer between tries (up to 5 s per thread)."""
        self.metrics.layer_error(exc)
        now = time.monotonic()
        with self._count_lock:
            if self._outage_since is None:
                self._outage_since = now
                self._outage_next_log = now + 1.0
                log.warning("%s; retrying", _outage_text(exc))
            elif now >= self._outage_next_log:
                lasted = now - self._outage_since
                self._outage_next_log = now + lasted
                log.warning("%s (for %.0f s now)", _outage_text(exc), lasted)
            lasted = now - self._outage_since
        return min(5.0, 0.5 + lasted / 4)

    def _recovered(self) -> None:
        if self._outage_since is None:
            return
        with self._count_lock:
            since, self._outage_since = self._outage_since, None
        if since is not None:
            log.warning(
                "the channel layer is reachable again after %.1f s", time.monotonic() - since
            )

    def _count(self, batch: list[tuple[str, Any]]) -> None:
        if not batch:
            return
        self.metrics.taken(batch)
        max_requests = self.max_requests
        with self._count_lock:
            self._busy += len(batch)
            self.requests_taken += len(batch)
            if max_requests and self.requests_taken >= max_requests:
                log.info("max_requests (%d) reached, stopping", max_requests)
                self._stopping.set()

    def _dispatch(self, channel: str, message: Any) -> None:
        # A message taken is run even when a stop began meanwhile: it is no longer in
        # the layer, so dropping it would lose it.
        try:
            if channel == HTTP_REQUEST:
                self.handle_http(message)
            else:
                self.handle_websocket(WEBSOCKET_EVENTS[channel], message)
        except Exception:
            # Only a bug of ours gets here; the thread must survive it.
            log.exception("unexpected error handling a message")

    def _drain(self, pool: list[threading.Thread], on_tick: Callable[[], None] | None) -> None:
        """Wait until every pool thread has finished its message and returned, up to
        graceful_timeout (a thread waiting in receive returns within the layer's
        bounded wait)."""
        deadline = time.monotonic() + self.graceful_timeout
        for thread in pool:
            while thread.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._force:
                    busy = sum(t.is_alive() for t in pool)
                    log.warning("graceful timeout: %d threads still running", busy)
                    return
                thread.join(min(remaining, TICK_INTERVAL))
                if on_tick is not None:
                    on_tick()

    def _control_loop(self) -> None:
        """Mark requests cancelled on ``{"type": "http.disconnect", "reply_channel":
        rc}`` sent to our control channel by the interface when a client goes away
        during a streaming response (docs/protocol.md). The streaming thread sees the
        flag at its next chunk, stops iterating and calls ``close()``."""
        if self.batch_scheduling:
            batch_scheduling()
        prefix = self._prefix
        while self._control_channel is not None:
            try:
                channel, message = self._receive([prefix], True)
            except Exception as exc:
                if self._stopping.is_set():
                    return  # stopped: the layer may be closing under us
                self._stopping.wait(self._outage(exc))
                continue
            if channel is None or not isinstance(message, dict):
                continue
            reply_channel = message.get("reply_channel")
            if message.get("type") == DISCONNECT_TYPE and isinstance(reply_channel, str):
                request = self._active.get(reply_channel)
                if request is not None:
                    request.cancelled = True

    # -- sending ----------------------------------------------------------------------

    def _send(
        self, channel: str, message: dict[str, Any], deadline: float, request: _Request | None
    ) -> None:
        """Send, retrying with a short backoff while the channel is full, until
        *deadline*.

        Raises _Abandon past the deadline, when the request is cancelled, or when the
        layer refuses the send for another reason (bad reply channel, layer down);
        InvalidResponse when the reply is too large for the layer (huge headers), so
        that the caller can still answer 500.
        """
        pauses = full_retry_pauses()
        full_since: float | None = None
        while True:
            try:
                started = self.metrics.clock()
                self.layer.send(channel, message)
                self.metrics.sent(channel, started)
                return
            except self._full:
                self.metrics.layer_error(ChannelFull)
            except self._too_large as exc:
                raise InvalidResponse(f"the reply is too large for the layer: {exc}") from None
            except Exception as exc:
                self.metrics.layer_error(exc)
                raise _Abandon(f"the layer refused the reply: {exc!r}") from None
            if request is not None and request.cancelled:
                raise _Abandon("the client went away")
            now = time.time()
            if now >= deadline:
                raise _Abandon("the reply channel stayed full until the deadline")
            if full_since is None:
                full_since = now
            elif now - full_since >= FULL_STALL_TIMEOUT:
                # A live interface drains its reply channels continuously; one that
                # stays full this long has nobody reading it (the process died).
                raise _Abandon(
                    f"the reply channel stayed full for {FULL_STALL_TIMEOUT:g} s (nobody reads it)"
                )
            time.sleep(min(next(pauses), deadline - now))

    def _send_soon(
        self, channel: str, message: dict[str, Any], deadline: float, request: _Request | None
    ) -> None:
        """Send the last reply of an HTTP response without waiting for its outcome
        where the layer allows it (``send_soon``: a round trip in flight takes it
        along), so that the thread goes on to its next message instead of sleeping
        until the round trip is back. Nothing comes after it on its reply channel, so
        it cannot be overtaken. A full channel is then retried as :meth:`_send` does,
        by the thread that learns of it (the one that led the round trip: a reply
        channel stays full only while its interface cannot keep up, and the retries
        end within ``FULL_STALL_TIMEOUT``); a refusal is logged, as an abandoned
        response. Layers without ``send_soon``, and replies handed over in this
        process, go through :meth:`_send`."""
        send_soon = self._layer_send_soon
        if send_soon is None or (self._hands_over is not None and self._hands_over(channel)):
            self._send(channel, message, deadline, request)
            return
        started = self.metrics.clock()

        def settled(outcome: Any) -> None:
            if outcome is True:
                self.metrics.sent(channel, started)
                return
            self.metrics.layer_error(ChannelFull if outcome is False else outcome)
            try:
                if outcome is not False:
                    raise _Abandon(f"the layer refused the reply: {outcome!r}")
                self._send(channel, message, deadline, request)  # its retries, as any send
            except (_Abandon, InvalidResponse) as exc:
                log.info("abandoned the response on %s: %s", channel, exc)

        try:
            send_soon(channel, message, settled)
        except self._too_large as exc:
            raise InvalidResponse(f"the reply is too large for the layer: {exc}") from None
        except Exception as exc:
            self.metrics.layer_error(exc)
            raise _Abandon(f"the layer refused the reply: {exc!r}") from None

    def _send_last(
        self, channel: str, message: dict[str, Any], deadline: float, request: _Request | None
    ) -> None:
        """Send the last reply of a WebSocket event; when no other thread is taking,
        take this thread's next message in the same round trip (``send_then_receive``).
        Measured: HTTP replies sent so cost 12-31 ms of p99 at 32 connections and bought
        no throughput, so they go alone; WebSocket echo at 32 sockets lost about 10 %
        without it.

        A thread that finds the take duty free knows that no other thread waits for
        work, so it takes as many messages as there will be free threads once it is
        done: itself and any idle one. They wait in the hand-off queue, which this
        thread reads first when it has finished (closing the app's iterable, logging),
        and any thread that frees up before it may run them. Otherwise, and on layers
        without ``send_then_receive``, this is :meth:`_send`.
        """
        combined = self._send_then_receive
        rotations = getattr(self._local, "rotations", None)
        # A reply handed over in this process (``run``) has no round trip to share:
        # a receive after it would only hold this thread and compete for the GIL
        # with the loop writing the response. Messages already taken and waiting in
        # the hand-off: no more until they run.
        if (
            combined is None
            or rotations is None
            or (self._hands_over is not None and self._hands_over(channel))
            or not self._try_claim()
        ):
            self._send(channel, message, deadline, request)
            return
        try:
            with self._count_lock:
                free = self.threads - self._busy + 1  # this thread, once done
            started = self.metrics.clock()
            results, batch = combined([(channel, message)], next(rotations), free)
            if batch:  # they came while this one ran
                self._concurrent_at = time.monotonic()
            error = results[0]
            self._recovered()
            self._count(batch)
            self._handoff.extend(batch)
        except Exception as exc:
            self.metrics.layer_error(exc)
            raise _Abandon(f"the layer refused the reply: {exc!r}") from None
        finally:
            self._release()
        if error is None:
            self.metrics.sent(channel, started)
            return
        self.metrics.layer_error(error)
        if isinstance(error, self._full):
            self._send(channel, message, deadline, request)  # its retries, as any send
        elif isinstance(error, self._too_large):
            raise InvalidResponse(f"the reply is too large for the layer: {error}")
        else:
            raise _Abandon(f"the layer refused the reply: {error!r}")

    # -- HTTP -------------------------------------------------------------------------

    def handle_http(self, message: dict[str, Any]) -> None:
        """Run the app on one ``http.request`` message and send its reply."""
        started = time.perf_counter()
        now = time.time()
        try:
            deadline = _deadline(message, now)
        except MalformedMessage as exc:
            self._reject("http.request", message, exc)
            return
        if deadline < now:
            log.info("dropped an http.request whose deadline passed in the queue")
            return
        body = message.get("body", b"")
        body_channel = message.get("body_channel")
        stream: Any
        if body_channel is not None and isinstance(body_channel, str):
            stream = BodyStream(
                body if isinstance(body, bytes) else b"", self._receive, body_channel, deadline
            )
        else:
            stream = io.BytesIO(body if isinstance(body, bytes) else b"")
        try:
            environ = build_environ(message, stream, layer=self.layer)
        except MalformedMessage as exc:
            self._reject("http.request", message, exc)
            return
        reply_channel: str = message["reply_channel"]
        ext = bool(message.get(EXT_KEY))
        request: _Request | None = None
        extra: dict[str, Any] | None = None
        if ext and self._control_channel is not None:
            request = self._active[reply_channel] = _Request()
            extra = {CONTROL_KEY: self._control_channel}
        started_sending = False

        def emit(reply: dict[str, Any]) -> None:
            nonlocal started_sending
            # The last reply need not be waited for (_send_soon); the others must:
            # the next may not overtake one that meets a full channel.
            send = self._send if reply.get("more_content") else self._send_soon
            if started_sending:
                send(reply_channel, reply, time.time() + STALL_TIMEOUT, request)
            else:
                started_sending = True
                send(reply_channel, reply, deadline, request)

        translator = ResponseTranslator(emit, method=environ["REQUEST_METHOD"], extra_first=extra)
        status: int | None = None
        try:
            _run_app(self.app, environ, translator, request)
            status = translator.status
        except _Abandon as exc:
            log.info("abandoned the response to %s: %s", environ["PATH_INFO"], exc)
            status = translator.status
        except Exception as exc:
            status = _error_status(exc)
            if isinstance(exc, InvalidResponse):
                log.error("the app broke PEP 3333 on %s: %s", environ["PATH_INFO"], exc)
            else:
                log.exception("error in the app on %s", environ["PATH_INFO"])
            self._fail_http(reply_channel, translator, status, deadline, request)
        finally:
            if request is not None:
                self._active.pop(reply_channel, None)
        if access_log.isEnabledFor(logging.INFO):
            self._log_access(environ, status, translator.bytes_sent, started)

    def _fail_http(
        self,
        reply_channel: str,
        translator: ResponseTranslator,
        status: int,
        deadline: float,
        request: _Request | None,
    ) -> None:
        try:
            if not translator.headers_sent:
                reply = _BAD_REQUEST if status == 400 else _SERVER_ERROR
                translator.headers_sent = translator.done = True
                self._send(reply_channel, dict(reply), deadline, request)
            elif not translator.done:
                # The status is out; ending the body is all we can do. A declared
                # Content-Length then tells the client the body is short.
                translator.done = True
                self._send(
                    reply_channel,
                    {"content": b"", "more_content": False},
                    time.time() + STALL_TIMEOUT,
                    request,
                )
        except Exception as exc:
            log.info("could not send the error reply: %s", exc)

    def _log_access(
        self,
        environ: Mapping[str, Any],
        status: int | str | None,
        size: int,
        started: float,
        request_line: str | None = None,
    ) -> None:
        query = environ["QUERY_STRING"]
        target = _log_safe(
            environ["SCRIPT_NAME"] + environ["PATH_INFO"] + ("?" if query else "") + query
        )
        if request_line is None:
            method = _log_safe(environ["REQUEST_METHOD"])
            request_line = f'"{method} {target} {environ["SERVER_PROTOCOL"]}"'
        else:
            request_line = f"{request_line} {target}"
        access_log.info(
            "%s - %s %s %d %.6f",
            _log_safe(str(environ.get("REMOTE_ADDR", "-"))),
            request_line,
            status if status is not None else "-",
            size,
            time.perf_counter() - started,
        )

    # -- WebSocket --------------------------------------------------------------------

    def handle_websocket(
        self, event: Literal["connect", "receive", "disconnect"], message: dict[str, Any]
    ) -> None:
        """Run the app on one ``websocket.*`` event and send its replies (docs/websockets.md),
        the last one carrying ``wsgi_channels.done`` when the message asks for it."""
        started = time.perf_counter()
        channel = "websocket." + event
        now = time.time()
        try:
            deadline = _deadline(message, now)
            if deadline < now:
                if event != "disconnect":
                    log.info("dropped a %s whose deadline passed in the queue", channel)
                    return
                # Nobody waits for a disconnect's answer, but the app's clean-up (leaving
                # groups) must still run: give its replies a fresh deadline.
                deadline = now + DEFAULT_REPLY_TIMEOUT
            body = b""
            if event == "receive":
                body = websocket_frame(message)[0]
            environ = websocket_environ(message, event, io.BytesIO(body), layer=self.layer)
        except MalformedMessage as exc:
            self._reject(channel, message, exc)
            return
        reply_channel: str = message["reply_channel"]
        collected: list[dict[str, Any]] = []
        first_headers: list[list[bytes]] = []
        size = 0

        def collect(reply: dict[str, Any]) -> None:
            nonlocal size
            size += len(reply["content"])
            if size > MAX_FRAME_SIZE:
                raise InvalidResponse(f"a WebSocket response is over {MAX_FRAME_SIZE} bytes")
            collected.append(reply)

        translator = ResponseTranslator(collect, max_chunk=MAX_FRAME_SIZE + 1)
        status = 500
        try:
            _run_app(self.app, environ, translator)
            status = translator.status or 500
            first = collected[0]
            body = (
                first["content"]
                if len(collected) == 1
                else b"".join(reply["content"] for reply in collected)
            )
            first_headers = first["headers"]
            replies = websocket_replies(event, status, first_headers, body)
        except Exception:
            log.exception("error in the app on %s %s", channel, environ["PATH_INFO"])
            status = 500
            replies = websocket_replies(event, 500, [], b"")
        if message.get(EXT_KEY):
            if event == "connect" and replies and replies[0].get("accept"):
                # The app picks a subprotocol with a Sec-WebSocket-Protocol header in
                # its connect response; our interface server puts it in the accept.
                for name, value in first_headers:
                    if name == b"sec-websocket-protocol":
                        replies[0][SUBPROTOCOL_KEY] = value.decode("latin-1")
                        break
            order = message.get("order", 0)
            if replies:
                replies[-1][DONE_KEY] = order
            else:
                replies.append({DONE_KEY: order})
        else:
            replies = _asgi10_close(replies)
        try:
            for reply in replies[:-1]:
                self._send(reply_channel, reply, deadline, None)
            if replies:
                self._send_last(reply_channel, replies[-1], deadline, None)
        except _Abandon as exc:
            log.info("abandoned the replies to %s: %s", channel, exc)
        except InvalidResponse as exc:
            # A frame the layer refuses (over its max_message_size): close with 1011,
            # still reporting the event done so the connection is not left waiting.
            log.error("cannot send the reply to %s: %s", channel, exc)
            status = 500
            fallback = websocket_replies(event, 500, [], b"")
            if message.get(EXT_KEY):
                fallback = fallback or [{}]
                fallback[-1][DONE_KEY] = message.get("order", 0)
            else:
                fallback = _asgi10_close(fallback)
            with contextlib.suppress(_Abandon, InvalidResponse):
                for reply in fallback:
                    self._send(reply_channel, reply, deadline, None)
        if access_log.isEnabledFor(logging.INFO):
            self._log_access(
                environ,
                _websocket_status(event, replies, status),
                size,
                started,
                "WebSocket " + event.upper(),
            )

    # -- malformed messages -----------------------------------------------------------

    def _reject(self, channel: str, message: Mapping[str, Any], exc: MalformedMessage) -> None:
        log.warning("malformed %s message: %s", channel, exc)
        reply_channel = message.get("reply_channel")
        if not isinstance(reply_channel, str):
            return
        reply: dict[str, Any]
        if channel == "http.request":
            reply = dict(_BAD_REQUEST)
        else:
            reply = {"close": True}
            order = message.get("order")
            if message.get(EXT_KEY) and isinstance(order, int):
                reply[DONE_KEY] = order
        try:
            self.layer.send(reply_channel, reply)
        except Exception as send_exc:
            log.info("could not answer the malformed message: %s", send_exc)


def _asgi10_close(replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """*replies* for an ASGI 1.0 front end: Daphne 1.x closes only with 1000 or
    3000-4999 (autobahn's rule for endpoints), and leaves the socket open on a 1011."""
    return [{"close": True} if reply.get("close") == 1011 else reply for reply in replies]


def _deadline(message: Mapping[str, Any], now: float) -> float:
    value = message.get(DEADLINE_KEY)
    if value is None:
        return now + DEFAULT_REPLY_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MalformedMessage(f"{DEADLINE_KEY!r} must be a number")
    return float(value)


# Control characters (C0, DEL, C1) in what a client sent would forge or garble
# access-log lines: they are written as \xNN, and so are a backslash and a quote.
_LOG_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x22, 0x5C, *range(0x7F, 0xA0))}


def _outage_text(exc: BaseException) -> str:
    """One sentence for a failed receive: our layers' errors say what is unavailable
    (``Redis at redis://host:6379/0 is unavailable: Connection refused``); others get
    that said for them."""
    text = (
        str(exc)
        if isinstance(exc, LayerUnavailable)
        else f"the channel layer is unavailable: {exc!r}"
    )
    return text.rstrip(". ")


def _log_safe(text: str) -> str:
    return text.translate(_LOG_ESCAPES)


def _websocket_status(event: str, replies: list[dict[str, Any]], status: int) -> int | str:
    """What an access-log line shows for a WebSocket event: for a connect, 101 if the
    app accepted and 403 if it refused; otherwise the app's status."""
    if event != "connect":
        return status
    for reply in replies:
        if reply.get("accept"):
            return 101
        if reply.get("close") or reply.get("accept") is False:
            return 403
    return status
