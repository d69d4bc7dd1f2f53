"""What a process of ours sets up for itself, apart from any one component.

* :func:`parse_flag` and :func:`env_flag`: one spelling of yes and no, the one the
  command line's flags take, for environment variables and URL options alike;
* :func:`batch_scheduling`: the calling thread under Linux's ``SCHED_BATCH`` policy,
  unless ``WSGI_CHANNELS_BATCH_SCHEDULING`` is off;
* :func:`freeze_startup_heap`: the objects alive after startup left out of the
  garbage collections to come.

They are used by the worker, the interface server and the commands that start them.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Mapping

from .layers.base import ConfigurationError

log = logging.getLogger(__name__)

#: The environment variable that turns :func:`batch_scheduling` off (``0``).
BATCH_SCHEDULING_ENV = "WSGI_CHANNELS_BATCH_SCHEDULING"

_FLAG_WORDS = {
    **dict.fromkeys(("1", "true", "t", "yes", "y", "on"), True),
    **dict.fromkeys(("0", "false", "f", "no", "n", "off"), False),
}


def parse_flag(value: str) -> bool:
    """``1``, ``true``, ``t``, ``yes``, ``y`` or ``on`` (any case) is true; ``0``,
    ``false``, ``f``, ``no``, ``n`` or ``off`` is false; anything else is a ValueError."""
    try:
        return _FLAG_WORDS[value.strip().lower()]
    except KeyError:
        raise ValueError("expected on (1, true) or off (0, false)") from None


def env_flag(name: str, *, default: bool, environ: Mapping[str, str] | None = None) -> bool:
    """The yes/no environment variable ``name``; unset or empty gives ``default``, a
    word :func:`parse_flag` does not know a ConfigurationError naming the variable."""
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return default
    try:
        return parse_flag(raw)
    except ValueError:
        raise ConfigurationError(
            f"{name}={raw.lower()!r} is neither on (1, true) nor off (0, false)"
        ) from None


def batch_scheduling() -> None:
    """Put the calling thread under ``SCHED_BATCH`` (Linux): the CFS treats it as
    CPU-bound, so that when it is woken (its reply's round trip is back, the GIL is
    free) it waits for the running thread's slice instead of preempting it. Its share
    of the CPU and its nice level do not change. Threads it starts inherit the policy.
    Nothing happens where the platform has no such policy or refuses it."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None:
        return
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError as exc:
        log.debug("SCHED_BATCH refused: %s", exc)


def freeze_startup_heap() -> None:
    """Leave every object alive now (the app, its modules, the layer) out of the
    garbage collections to come: one collection, then :func:`gc.freeze`.

    A worker process holds tens of thousands of objects once the app is loaded (48,000
    for a Flask hello world), and each full collection walked them all with every
    thread stopped: 20-46 ms per collection here under load, several a minute. After
    the freeze the collector walks only what requests leave behind. Objects are still
    freed by reference counting; what the collector no longer finds is a reference
    cycle made at startup and dropped later. Called by the processes our commands own
    (``wsgi-channels worker`` and ``run``, the gunicorn worker class, ``manage.py
    runworker``) once the app is loaded, not by the worker, which may run inside a
    process of someone else's.
    """
    gc.collect()
    gc.freeze()
