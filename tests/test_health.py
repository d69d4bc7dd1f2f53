"""The health endpoint of the interface server and ``wsgi-channels check``: healthy
when the layer answers and workers take requests; which failure, when not."""

from __future__ import annotations

import concurrent.futures
import subprocess
import time
from pathlib import Path

import requests
from conftest import free_port
from servers import InterfaceProcess, Stack, child_env, cli_command


def check(layer_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_command("check", "--layer", layer_url, *args),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_check_healthy_idle_layer(tmp_path: Path) -> None:
    result = check(f"sqlite:///{tmp_path / 'l.sqlite3'}")
    assert result.returncode == 0, result
    assert result.stdout.startswith("ok: the layer answers, no request waiting (sqlite:")


def test_check_unreachable_layer_exits_1() -> None:
    result = check(f"redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 1, result
    assert "cannot be reached" in result.stdout
    assert "Traceback" not in result.stderr


def test_endpoint_and_check_see_a_missing_worker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    interface = InterfaceProcess(url, "--health-path", "/healthz", "--http-timeout", "5").start()
    try:
        healthy = requests.get(interface.url + "/healthz", timeout=10)
        assert healthy.status_code == 200
        assert healthy.json()["status"] == "ok"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(requests.get, interface.url + "/page", timeout=20)
            time.sleep(2.0)
            result = check(url, "--max-wait", "1")
            assert result.returncode == 3, result
            assert "no worker" in result.stdout
            waiting.result()
    finally:
        interface.stop()


def test_endpoint_with_a_worker_is_healthy(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    with Stack(url, interface_args=("--health-path", "/healthz")) as stack:
        assert requests.get(stack.url + "/hello", timeout=10).status_code == 200
        response = requests.get(stack.url + "/healthz", timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json()["http_request_pending"] == 0
