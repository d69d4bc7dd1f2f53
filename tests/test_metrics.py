"""``--metrics HOST:PORT``: Prometheus text at /metrics, scraped over HTTP from real
``wsgi-channels`` processes (and a gunicorn master), parsed with prometheus-client's
own parser, its counters moving with real HTTP and WebSocket traffic."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from conftest import RedisServer, free_port, wait_for_port
from servers import REPO, CliProcess, InterfaceProcess, WorkerProcess

from wsgi_channels import metrics

parser = pytest.importorskip("prometheus_client.parser")
ws_client = pytest.importorskip("websockets.sync.client")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_text(port: int) -> str:
    response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def scrape(port: int) -> Samples:
    samples: Samples = {}
    for family in parser.text_string_to_metric_families(scrape_text(port)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def eventually(port: int, check: Callable[[Samples], bool], timeout: float = 10.0) -> Samples:
    """Scrape until *check* holds (a response reaches the client a moment before the
    interface counts it); the last scrape is returned either way, for the assert."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


REQUESTS = "wsgi_channels_http_requests_total"
DURATION = "wsgi_channels_http_request_duration_seconds_count"
SENT = "wsgi_channels_messages_sent_total"
RECEIVED = "wsgi_channels_messages_received_total"
OPEN = "wsgi_channels_websockets_open"
FRAMES = "wsgi_channels_websocket_frames_total"
ERRORS = "wsgi_channels_layer_errors_total"
QUEUE = "wsgi_channels_queue_messages"


def exit_code(process: CliProcess, timeout: float = 30.0) -> int:
    """Wait for a process that should end by itself; its exit status."""
    deadline = time.monotonic() + timeout
    while process.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    return process.stop()


@contextlib.contextmanager
def running(process: CliProcess, metrics_port: int) -> Iterator[CliProcess]:
    process.start()
    try:
        wait_for_port(metrics_port, timeout=15)
        yield process
    finally:
        assert process.stop() == 0, process.output
    assert "Traceback" not in process.output, process.output


def test_run_metrics_move_with_http_and_websocket_traffic(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    process = CliProcess(
        "run", "apps:echo", "--bind", f"127.0.0.1:{port}", "--threads", "3",
        "--layer", f"sqlite:///{tmp_path / 'run.sqlite3'}",
        "--metrics", f"127.0.0.1:{metrics_port}",
    )  # fmt: skip
    with running(process, metrics_port):
        wait_for_port(port)
        requests.get(f"http://127.0.0.1:{port}/warm-up", timeout=10)
        before = eventually(metrics_port, lambda s: value(s, REQUESTS, status="200") >= 1)
        for i in range(5):
            assert requests.get(f"http://127.0.0.1:{port}/{i}", timeout=10).status_code == 200
        after = eventually(
            metrics_port,
            lambda s: (
                value(s, REQUESTS, status="200") >= value(before, REQUESTS, status="200") + 5
                and value(s, SENT, role="worker", kind="reply")
                >= value(before, SENT, role="worker", kind="reply") + 5
                and value(s, "wsgi_channels_worker_threads_busy") == 0
            ),  # idle once replied
        )

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert moved(REQUESTS, status="200") == 5
        assert moved(DURATION) == 5
        assert moved(SENT, role="interface", kind="http.request") == 5
        assert moved(RECEIVED, role="worker", kind="http.request") == 5
        assert moved(SENT, role="worker", kind="reply") == 5
        assert moved(RECEIVED, role="interface", kind="reply") == 5
        assert value(after, "wsgi_channels_worker_threads") == 3
        assert value(after, "wsgi_channels_worker_threads_busy") == 0
        assert value(after, "wsgi_channels_layer_up") == 1
        assert value(after, QUEUE, channel="http.request") == 0
        assert value(after, "wsgi_channels_layer_round_trip_seconds_count", role="worker") >= 5

        with ws_client.connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
            opened = eventually(metrics_port, lambda s: value(s, OPEN) == 1)
            assert value(opened, OPEN) == 1
            for text in ("one", "two"):
                ws.send(text)
                assert ws.recv(timeout=10) == text
            frames = eventually(metrics_port, lambda s: value(s, FRAMES, direction="out") >= 2)
            assert value(frames, FRAMES, direction="in") == 2
            assert value(frames, FRAMES, direction="out") == 2
            assert value(frames, RECEIVED, role="worker", kind="websocket.receive") == 2
        # The socket closes before the worker has run its disconnect event.
        closed = eventually(
            metrics_port,
            lambda s: (
                value(s, OPEN) == 0
                and value(s, RECEIVED, role="worker", kind="websocket.disconnect") >= 1
            ),
        )
        assert value(closed, OPEN) == 0
        assert value(closed, "wsgi_channels_websocket_connections_total") == 1
        assert value(closed, RECEIVED, role="worker", kind="websocket.disconnect") == 1
        families = {
            f.name for f in parser.text_string_to_metric_families(scrape_text(metrics_port))
        }
    assert "Prometheus metrics at http://127.0.0.1:" in process.output
    # Every metric the Grafana dashboard plots is one that is served.
    dashboard = (REPO / "docs" / "grafana-dashboard.json").read_text()
    plotted = {
        re.sub(r"_(total|bucket|count|sum)$", "", name)
        for name in re.findall(r"wsgi_channels_\w+", dashboard)
    }
    assert plotted and plotted <= families, plotted - families


def test_interface_counts_504_503_channel_full_and_shows_the_queue(tmp_path: Path) -> None:
    # No worker, a queue of capacity 2: two requests wait their second and time out
    # (504) and stay queued; the third finds the queue full (503).
    metrics_port = free_port()
    layer = f"sqlite:///{tmp_path / 'layer.sqlite3'}?capacity=2"
    interface = InterfaceProcess(
        layer, "--http-timeout", "1", "--metrics", f"127.0.0.1:{metrics_port}"
    )
    with running(interface, metrics_port):
        statuses = [requests.get(interface.url + "/", timeout=10).status_code for _ in range(3)]
        assert statuses == [504, 504, 503]
        samples = eventually(metrics_port, lambda s: value(s, REQUESTS, status="503") == 1)
    assert value(samples, REQUESTS, status="504") == 2
    assert value(samples, REQUESTS, status="503") == 1
    assert value(samples, ERRORS, role="interface", error="ChannelFull") == 1
    assert value(samples, SENT, role="interface", kind="http.request") == 2
    assert value(samples, QUEUE, channel="http.request") == 2
    assert value(samples, "wsgi_channels_queue_oldest_seconds", channel="http.request") >= 1
    assert value(samples, QUEUE, channel="websocket.connect") == 0


def test_worker_serves_its_own_metrics(tmp_path: Path) -> None:
    layer = f"sqlite:///{tmp_path / 'layer.sqlite3'}"
    worker_port = free_port()
    worker = WorkerProcess("apps:echo", layer, "--metrics", f"127.0.0.1:{worker_port}")
    interface = InterfaceProcess(layer)
    with running(worker, worker_port):
        worker.wait_for_output("worker serving", timeout=15)
        interface.start()
        try:
            for _ in range(3):
                assert requests.get(interface.url + "/", timeout=10).status_code == 200
        finally:
            assert interface.stop() == 0
        samples = eventually(
            worker_port, lambda s: value(s, SENT, role="worker", kind="reply") >= 3
        )
    assert value(samples, RECEIVED, role="worker", kind="http.request") == 3
    assert value(samples, SENT, role="worker", kind="reply") == 3
    assert value(samples, "wsgi_channels_worker_threads") == 4
    # The worker's process serves no HTTP: the interface's families have no samples.
    assert value(samples, REQUESTS, status="200") == 0
    # prometheus-client's default collectors come along (the app's own metrics would too).
    assert value(samples, "process_cpu_seconds_total") > 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(("--metrics", "nowhere"), "bad --metrics 'nowhere'", id="bad-address"),
        pytest.param(("--metrics", "127.0.0.1:99999"), "bad --metrics", id="bad-port"),
    ],
)
@pytest.mark.parametrize("command", ["worker", "interface", "run"])
def test_a_bad_metrics_address_is_one_line_and_exit_2(
    command: str, args: tuple[str, ...], expected: str
) -> None:
    argv = [command] if command == "interface" else [command, "apps:echo"]
    process = CliProcess(*argv, "--layer", "memory://", *args).start()
    assert exit_code(process) == 2, process.output
    lines = process.output.strip().splitlines()
    assert lines == [lines[-1]] and expected in lines[-1], process.output


HIDE_PROMETHEUS = """
import sys


class HidePrometheus:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "prometheus_client":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, HidePrometheus())
"""


def test_without_prometheus_client_metrics_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # A Python that cannot find prometheus_client, as without the extra.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_PROMETHEUS)
    for argv in (["worker", "apps:echo"], ["interface"], ["run", "apps:echo"]):
        env = {"PYTHONPATH": str(hide), "WSGI_CHANNELS_METRICS": "127.0.0.1:1"}
        process = CliProcess(*argv, "--layer", "memory://", env=env).start()
        assert exit_code(process) == 2, process.output
        assert process.output.strip() == (
            "wsgi-channels: error: --metrics needs prometheus-client: "
            "pip install 'wsgi-channels[metrics]'"
        )


def test_a_metrics_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = CliProcess(
            "worker", "apps:echo", "--layer", f"sqlite:///{tmp_path / 'l.sqlite3'}",
            "--metrics", f"127.0.0.1:{port}",
        ).start()  # fmt: skip
        assert exit_code(process) == 2, process.output
    assert f"cannot serve --metrics on 127.0.0.1:{port}" in process.output
    assert "Traceback" not in process.output


def test_the_null_recorder_has_every_hook_of_the_real_one() -> None:
    hooks = {name for name in dir(metrics.Metrics) if not name.startswith("_")}
    assert hooks - {"enabled", "role"} <= set(dir(metrics.Recorder))
    assert metrics.NULL_METRICS.enabled is False


@pytest.mark.slow
def test_gunicorn_master_serves_the_sum_of_its_workers(redis_url: str, tmp_path: Path) -> None:
    pytest.importorskip("gunicorn")
    from _worker_helpers import request
    from test_gunicorn_worker import Gunicorn

    metrics_port = free_port()
    server = Gunicorn(
        redis_url,
        tmp_path,
        "--workers",
        "2",
        "-e",
        f"WSGI_CHANNELS_METRICS=127.0.0.1:{metrics_port}",
    )
    try:
        wait_for_port(metrics_port, timeout=15)
        # Both children record into PROMETHEUS_MULTIPROC_DIR; the master adds them up.
        samples = eventually(metrics_port, lambda s: value(s, "wsgi_channels_worker_threads") == 4)
        assert value(samples, "wsgi_channels_worker_threads") == 4  # 2 workers x 2 threads
        for _ in range(6):
            assert request(server.layer, "GET", "/pid", reply_timeout=10, timeout=10).status == 200
        # A thread counts itself idle just after its last reply has gone.
        samples = eventually(
            metrics_port,
            lambda s: (
                value(s, SENT, role="worker", kind="reply") >= 12
                and value(s, "wsgi_channels_worker_threads_busy") == 0
            ),
        )
        assert value(samples, RECEIVED, role="worker", kind="http.request") == 6
        # /pid has no Content-Length: two reply messages each (the body, then its end).
        assert value(samples, SENT, role="worker", kind="reply") == 12
        assert value(samples, "wsgi_channels_worker_threads_busy") == 0
        assert value(samples, "wsgi_channels_layer_up") == 1
    finally:
        server.stop()
    log = server.log.read_text()
    assert f"Prometheus metrics at http://127.0.0.1:{metrics_port}/metrics" in log
    assert "Traceback" not in log


@pytest.mark.slow
def test_interface_processes_are_summed_on_one_endpoint(tmp_path: Path) -> None:
    layer = f"sqlite:///{tmp_path / 'layer.sqlite3'}"
    metrics_port = free_port()
    interface = InterfaceProcess(layer, "--workers", "2", "--metrics", f"127.0.0.1:{metrics_port}")
    worker = WorkerProcess("apps:echo", layer).start()
    try:
        with running(interface, metrics_port):
            for i in range(6):
                assert requests.get(f"{interface.url}/{i}", timeout=10).status_code == 200
            samples = eventually(metrics_port, lambda s: value(s, REQUESTS, status="200") == 6)
        assert value(samples, REQUESTS, status="200") == 6
        assert value(samples, SENT, role="interface", kind="http.request") == 6
        assert value(samples, "wsgi_channels_layer_up") == 1
        assert "Prometheus metrics of 2 interface processes" in interface.output
    finally:
        assert worker.stop() == 0


def test_a_layer_that_goes_away_shows_as_down_and_counts_layer_unavailable(
    own_redis: RedisServer,
) -> None:
    metrics_port = free_port()
    worker = WorkerProcess(
        "apps:echo", own_redis.url + "?socket_timeout=1", "--metrics", f"127.0.0.1:{metrics_port}"
    )
    with running(worker, metrics_port):
        assert value(scrape(metrics_port), "wsgi_channels_layer_up") == 1
        own_redis.stop()
        samples = eventually(
            metrics_port,
            lambda s: value(s, ERRORS, role="worker", error="LayerUnavailable") >= 1,
        )
        assert value(samples, ERRORS, role="worker", error="LayerUnavailable") >= 1
        assert value(samples, "wsgi_channels_layer_up") == 0
        assert (QUEUE, frozenset({("channel", "http.request")})) not in samples


def test_metrics_off_imports_no_prometheus_client() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import wsgi_channels.cli, wsgi_channels.worker, wsgi_channels.interface\n"
        "import wsgi_channels.gunicorn, wsgi_channels.metrics\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_gunicorn_with_a_metrics_port_in_use_stops_with_one_line(
    redis_url: str, tmp_path: Path
) -> None:
    import socket

    pytest.importorskip("gunicorn")
    from test_gunicorn_worker import Gunicorn

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = Gunicorn(redis_url, tmp_path, "-e", f"WSGI_CHANNELS_METRICS=127.0.0.1:{port}")
        try:
            assert server.proc.wait(30) == 2
        finally:
            server.stop()
    log = server.log.read_text()
    assert f"wsgi-channels: error: cannot serve --metrics on 127.0.0.1:{port}" in log, log
    assert "Traceback" not in log
    assert "Booting worker" not in log
