"""``flask --app APP channels run``: the ``flask.commands`` entry point serves HTTP and
WebSockets, with the reloader under ``--debug``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import websockets
from conftest import free_port, wait_for_port
from servers import GroupProcess, child_env, metrics_text

pytestmark = pytest.mark.slow

APP = """
from flask import Flask, request

app = Flask(__name__)
GREETING = "hello"


@app.route("/")
def index():
    return "debug" if app.debug else "plain"


@app.route("/ws")
def ws():
    event = request.environ.get("wsgi_channels.websocket")
    if event == "connect":
        return GREETING, 200, {"Content-Type": "text/plain"}
    if event == "receive":
        return "echo " + request.get_data(as_text=True), 200, {"Content-Type": "text/plain"}
    return ""
"""


class Flask(GroupProcess):
    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        layer = {"WSGI_CHANNELS_LAYER": f"sqlite:///{cwd / 'layer.sqlite3'}", **(env or {})}
        super().__init__([sys.executable, "-m", "flask", *args], cwd=cwd, env=child_env(layer))


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "liveapp.py").write_text(APP)
    return tmp_path


def talk(port: int) -> tuple[str, str]:
    async def session() -> tuple[str, str]:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
            first = str(await asyncio.wait_for(ws.recv(), 10))
            await ws.send("ping")
            return first, str(await asyncio.wait_for(ws.recv(), 10))

    return asyncio.run(session())


@pytest.fixture
def serve(app_dir: Path) -> Iterator[tuple[Flask, int]]:
    port = free_port()
    server = Flask(app_dir, "--app", "liveapp:app", "channels", "run", "--port", str(port))
    try:
        wait_for_port(port, timeout=30)
        yield server, port
    finally:
        print(server.output)
        server.stop()


def test_flask_channels_run_serves_http_and_a_websocket(serve: tuple[Flask, int]) -> None:
    server, port = serve
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).text == "plain"
    assert talk(port) == ("hello", "echo ping")
    assert f"Running on http://127.0.0.1:{port}" in server.output
    assert " * Channel layer: sqlite:///" in server.output


def test_flask_channels_run_names_a_relative_sqlite_layer_by_its_absolute_path(
    app_dir: Path,
) -> None:
    port = free_port()
    layer = "sqlite:///relative.sqlite3"
    server = Flask(
        app_dir, "--app", "liveapp:app", "channels", "run", "-p", str(port), "--layer", layer
    )
    try:
        wait_for_port(port, timeout=30)
        assert (
            f" * Channel layer: sqlite:///{app_dir.resolve()}/relative.sqlite3\n" in server.output
        )
    finally:
        print(server.output)
        server.stop()


def test_flask_debug_turns_on_debug_and_the_reloader(app_dir: Path) -> None:
    port = free_port()
    server = Flask(app_dir, "--app", "liveapp:app", "--debug", "channels", "run", "-p", str(port))
    try:
        wait_for_port(port, timeout=30)
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).text == "debug"
        assert talk(port)[0] == "hello"
        source = app_dir / "liveapp.py"
        time.sleep(1.1)  # a later mtime than the one the reloader saw first
        source.write_text(APP.replace('GREETING = "hello"', 'GREETING = "reloaded"'))
        deadline = time.monotonic() + 30
        seen = ""
        while time.monotonic() < deadline and seen != "reloaded":
            try:
                seen = talk(port)[0]
            except (OSError, websockets.WebSocketException):
                seen = ""
            time.sleep(0.3)
        assert seen == "reloaded", server.output
    finally:
        print(server.output)
        server.stop()


def test_flask_channels_run_port_in_use_is_one_line(app_dir: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "flask",
                "--app",
                "liveapp:app",
                "channels",
                "run",
                "--port",
                str(port),
            ],
            cwd=app_dir,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_flask_channels_run_serves_metrics(app_dir: Path) -> None:
    # --metrics as on `wsgi-channels run`: both halves' metrics, moving with traffic.
    port, metrics_port = free_port(), free_port()
    server = Flask(
        app_dir, "--app", "liveapp:app", "channels", "run", "-p", str(port),
        "--metrics", f"127.0.0.1:{metrics_port}",
    )  # fmt: skip
    try:
        wait_for_port(port, timeout=30)
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).text == "plain"
        assert talk(port) == ("hello", "echo ping")
        text = metrics_text(metrics_port, until='status="200"')
        assert 'wsgi_channels_http_requests_total{status="200"} 1.0' in text, text
        assert "wsgi_channels_worker_threads 8.0" in text, text
        assert "wsgi_channels_websocket_frames_total" in text, text
    finally:
        print(server.output)
        server.stop()


def test_flask_channels_run_bad_metrics_address_is_a_usage_error(app_dir: Path) -> None:
    argv = [sys.executable, "-m", "flask", "--app", "liveapp:app", "channels", "run",
            "--metrics", "nowhere"]  # fmt: skip
    result = subprocess.run(
        argv, cwd=app_dir, env=child_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result
    assert "metrics" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_flask_channels_run_reads_the_interface_settings_from_the_environment(
    app_dir: Path,
) -> None:
    # WSGI_CHANNELS_ALLOWED_ORIGINS, as `wsgi-channels interface` reads it: a page of
    # https://app.example may open a socket; by default only the same host could.
    port = free_port()
    env = {"WSGI_CHANNELS_ALLOWED_ORIGINS": "https://app.example"}
    server = Flask(app_dir, "--app", "liveapp:app", "channels", "run", "-p", str(port), env=env)

    async def greeting(origin: str) -> str:
        url = f"ws://127.0.0.1:{port}/ws"
        async with websockets.connect(url, origin=origin, open_timeout=10) as ws:  # type: ignore[arg-type]
            return str(await asyncio.wait_for(ws.recv(), 10))

    try:
        wait_for_port(port, timeout=30)
        assert asyncio.run(greeting("https://app.example")) == "hello"
        with pytest.raises(websockets.InvalidStatus) as refused:
            asyncio.run(greeting("https://elsewhere.example"))
        assert refused.value.response.status_code == 403
    finally:
        print(server.output)
        server.stop()
