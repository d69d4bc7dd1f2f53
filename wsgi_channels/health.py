"""Is this deployment able to serve? One rule, used by the interface server's health
endpoint (for load balancers) and by ``wsgi-channels check`` (for orchestrators).

Healthy means: the layer answers, and ``http.request`` is not backing up, that is its
oldest waiting message has waited less than *max_wait* seconds. An idle deployment is
healthy (nothing waits); one whose workers are all gone turns unhealthy as soon as a
request has waited *max_wait* seconds with nobody taking it.

Exit codes of ``wsgi-channels check`` (and the endpoint's status):

======  ======  ==========================================================
 exit    HTTP    meaning
======  ======  ==========================================================
 0       200     healthy
 1       503     the layer cannot be reached
 3       503     requests wait for a worker and none takes them
======  ======  ==========================================================
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .layers.base import ChannelsError
from .protocol import HTTP_REQUEST

__all__ = ["DEFAULT_MAX_WAIT", "Health", "check"]

#: Seconds the oldest ``http.request`` may have waited in a healthy deployment.
DEFAULT_MAX_WAIT = 5.0


@dataclasses.dataclass(frozen=True)
class Health:
    exit_code: int  # 0 healthy, 1 layer unreachable, 3 no worker takes requests
    reason: str
    pending: int | None = None
    oldest_wait: float | None = None

    @property
    def healthy(self) -> bool:
        return self.exit_code == 0

    @property
    def http_status(self) -> int:
        return 200 if self.healthy else 503

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.healthy else "unhealthy",
            "reason": self.reason,
            "http_request_pending": self.pending,
            "oldest_wait_s": None if self.oldest_wait is None else round(self.oldest_wait, 3),
        }


def check(layer: Any, max_wait: float = DEFAULT_MAX_WAIT) -> Health:
    """The health of the deployment on *layer* (a synchronous call: one round trip)."""
    try:
        stats = layer.channel_statistics(HTTP_REQUEST)
    except ChannelsError as exc:
        return Health(1, f"the channel layer cannot be reached: {exc}")
    except Exception as exc:  # a third-party layer's own error
        return Health(1, f"the channel layer cannot be reached: {exc!r}")
    pending = int(stats.get("messages_pending", 0))
    oldest = float(stats.get("messages_max_age", 0.0))
    if pending and oldest >= max_wait:
        return Health(
            3,
            f"{pending} request(s) waiting, the oldest for {oldest:.1f} s: "
            "no worker is taking http.request",
            pending,
            oldest,
        )
    waiting = f"{pending} request(s) waiting" if pending else "no request waiting"
    return Health(0, f"the layer answers, {waiting}", pending, oldest)
