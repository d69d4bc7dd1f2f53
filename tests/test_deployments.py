"""The liveblog example deployed the three documented ways, with real processes:
publish over HTTP, see the post over a real WebSocket.

(a) ``wsgi-channels run`` on the default SQLite layer, in an empty directory;
(b) gunicorn for HTTP, ``wsgi-channels interface`` + ``wsgi-channels worker`` for
    WebSockets, over Redis;
(c) ``wsgi-channels interface`` in front of ``gunicorn -k wsgi_channels.gunicorn.ChannelWorker``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import websockets
from conftest import free_port, wait_for_port

REPO_ROOT = Path(__file__).resolve().parent.parent
APP = "examples.flask_app:app"

pytestmark = pytest.mark.slow


def wsgi_channels_command() -> list[str]:
    """The ``wsgi-channels`` command: the installed script, else the module."""
    script = shutil.which("wsgi-channels")
    return [script] if script else [sys.executable, "-m", "wsgi_channels.cli"]


def gunicorn_command() -> list[str]:
    return [sys.executable, "-m", "gunicorn"]


def process_env(**extra: str) -> dict[str, str]:
    """The environment of the processes under test: the repository importable, no
    layer chosen unless *extra* says so."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSGI_CHANNELS_", "LIVEBLOG"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Processes:
    """Starts commands in a directory, logs each to a file, and stops them all."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, command: Sequence[str], env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        log = open(self.cwd / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            list(command), cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.running.append((name, process))
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return int(process.returncode)

    def logs(self) -> str:
        parts = []
        for name, _ in self.running:
            path = self.cwd / f"{name}.log"
            if path.exists():
                parts.append(f"--- {name} ---\n" + path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def stop_all(self) -> None:
        for _, process in reversed(self.running):
            self.stop(process)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Processes started in an empty directory; their logs are printed at teardown
    (pytest shows them when the test failed)."""
    workdir = tmp_path / "site"
    workdir.mkdir()
    procs = Processes(workdir)
    yield procs
    procs.stop_all()
    print(procs.logs())


def http(url: str, data: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, Any]:
    """GET (or POST the form *data*) asking for JSON; returns (status, decoded body)."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until_ok(url: str, timeout: float = 20.0) -> None:
    """Poll *url* until it answers 200 (a worker is taking requests)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, last = http(url, timeout=2.0)
            if status == 200:
                return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s: {last!r}")


def publish_and_watch(
    ws_base: str, http_base: str, text: str, origin: str | None = None
) -> dict[str, Any]:
    """Open a WebSocket on the liveblog (as a page from *origin* would, by default the
    socket's own server), publish *text* over HTTP, return what the socket receives."""

    async def run() -> dict[str, Any]:
        nonlocal origin
        origin = origin or ws_base.replace("ws://", "http://", 1)
        async with websockets.connect(f"{ws_base}/ws/liveblog", origin=origin) as ws:  # type: ignore[arg-type]
            loop = asyncio.get_running_loop()
            status, post = await loop.run_in_executor(
                None, lambda: http(f"{http_base}/posts", {"author": "ops", "body": text})
            )
            assert status == 201, post
            received = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert received == post
            return received  # type: ignore[no-any-return]

    return asyncio.run(run())


def test_run_on_the_default_sqlite_layer(processes: Processes) -> None:
    port = free_port()
    processes.start(
        "run",
        [*wsgi_channels_command(), "run", APP, "--bind", f"127.0.0.1:{port}"],
        process_env(),
    )
    wait_for_port(port, timeout=20)
    base = f"127.0.0.1:{port}"
    wait_until_ok(f"http://{base}/posts.json")

    post = publish_and_watch(f"ws://{base}", f"http://{base}", "Deployed with run")
    assert post["body"] == "Deployed with run"
    assert http(f"http://{base}/posts.json")[1]["posts"] == [post]
    # Everything lives in the working directory: the default layer and the posts.
    assert (processes.cwd / ".wsgi_channels.sqlite3").exists()
    assert (processes.cwd / "liveblog.sqlite3").exists()


def test_gunicorn_for_http_interface_and_worker_for_websockets(
    processes: Processes, redis_url: str
) -> None:
    # As the README's way 2: the pages from gunicorn open their WebSocket on the
    # interface server (LIVEBLOG_SOCKET_URL), which allows the pages' origin.
    http_port, ws_port = free_port(), free_port()
    page_origin = f"http://127.0.0.1:{http_port}"
    env = process_env(
        WSGI_CHANNELS_LAYER=redis_url,
        LIVEBLOG_DB=str(processes.cwd / "liveblog.sqlite3"),
        LIVEBLOG_SOCKET_URL=f"ws://127.0.0.1:{ws_port}/ws/liveblog",
    )
    processes.start(
        "gunicorn",
        [*gunicorn_command(), "--bind", f"127.0.0.1:{http_port}", "--workers", "2", APP],
        env,
    )
    processes.start(
        "interface",
        [
            *wsgi_channels_command(),
            "interface",
            "--bind",
            f"127.0.0.1:{ws_port}",
            "--allowed-origin",
            page_origin,
        ],
        env,
    )
    processes.start("worker", [*wsgi_channels_command(), "worker", APP], env)
    wait_for_port(http_port, timeout=20)
    wait_for_port(ws_port, timeout=20)
    wait_until_ok(f"http://127.0.0.1:{ws_port}/posts.json")  # the worker is up

    with urllib.request.urlopen(page_origin + "/", timeout=10) as response:
        page = response.read().decode()
    assert f'data-socket="ws://127.0.0.1:{ws_port}/ws/liveblog"' in page

    post = publish_and_watch(
        f"ws://127.0.0.1:{ws_port}", page_origin, "From gunicorn", origin=page_origin
    )
    assert post["body"] == "From gunicorn"
    # Both sides read the same database.
    assert http(f"http://127.0.0.1:{ws_port}/posts.json")[1]["posts"] == [post]


def test_gunicorn_channel_worker_behind_the_interface(processes: Processes) -> None:
    port = free_port()
    layer = f"sqlite:///{processes.cwd / 'layer.sqlite3'}"
    env = process_env(WSGI_CHANNELS_LAYER=layer)
    processes.start(
        "interface", [*wsgi_channels_command(), "interface", "--bind", f"127.0.0.1:{port}"], env
    )
    processes.start(
        "gunicorn",
        [
            *gunicorn_command(),
            "-k",
            "wsgi_channels.gunicorn.ChannelWorker",
            "--workers",
            "2",
            "--threads",
            "4",
            "--bind",
            f"unix:{processes.cwd / 'unused.sock'}",
            APP,
        ],
        env,
    )
    wait_for_port(port, timeout=20)
    wait_until_ok(f"http://127.0.0.1:{port}/posts.json")

    base = f"127.0.0.1:{port}"
    post = publish_and_watch(f"ws://{base}", f"http://{base}", "Through ChannelWorker")
    assert post["body"] == "Through ChannelWorker"
