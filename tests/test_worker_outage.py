"""A layer outage while the worker serves: a few formatted lines, not two a second,
and a line when the layer is back."""

from __future__ import annotations

import logging
import time

import pytest
from _worker_helpers import app, request, running_worker

from wsgi_channels.layers import layer_from_url

pytestmark = [pytest.mark.slow, pytest.mark.fault]


def test_outage_logs_little_and_recovers(own_redis, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="wsgi_channels.worker")
    layer = layer_from_url(own_redis.url + "?receive_timeout=0.5")
    client = layer_from_url(own_redis.url)
    with running_worker(app, layer, threads=4):
        assert request(client).status == 404  # the helper app: any reply will do
        own_redis.stop()
        time.sleep(6)
        own_redis.start()
        assert request(client, reply_timeout=20).status == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "wsgi_channels.worker"]
    outage = [line for line in lines if "unavailable" in line]
    # 6 s with 4 pool threads and the control thread: one line at the start and one
    # each time the outage doubled (1, 2, 4 s), where each thread used to log every 1 s.
    assert 1 <= len(outage) <= 4, lines
    # One sentence each, naming the server once: not "unavailable (... unavailable ...)".
    assert all(line.count("unavailable") == 1 for line in outage), outage
    assert outage[0].startswith(f"Redis at {own_redis.url}"), outage
    assert any("reachable again" in line for line in lines), lines
    layer.close()
    client.close()
