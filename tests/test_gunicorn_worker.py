"""wsgi_channels.gunicorn.ChannelWorker under a real gunicorn master, on Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _worker_helpers import env_with_pythonpath, http_message, read_reply, request

from wsgi_channels.layers import layer_from_url

gunicorn_config = pytest.importorskip("gunicorn.config")
# Recent gunicorns open a control socket under ~/.gunicorn unless told not to.
NO_CONTROL_SOCKET = (
    ["--no-control-socket"] if hasattr(gunicorn_config, "ControlSocketDisable") else []
)


#: Fewer objects than a process holds once our package and the app are loaded.
STARTUP_OBJECTS = 5000


class Gunicorn:
    def __init__(self, url: str, tmp: Path, *args: str) -> None:
        self.log = tmp / "gunicorn.log"
        self.layer = layer_from_url(url)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "gunicorn",
                    "-k", "wsgi_channels.gunicorn.ChannelWorker",
                    # gunicorn insists on a socket; the worker never accepts on it.
                    "--bind", f"unix:{tmp / 'unused.sock'}",
                    "--workers", "1", "--threads", "2",
                    "--timeout", "10", "--graceful-timeout", "10",
                    *NO_CONTROL_SOCKET,
                    *args,
                    "_worker_helpers:app",
                ],
                env=env_with_pythonpath(WSGI_CHANNELS_LAYER=url + "?receive_timeout=0.5"),
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def pid(self, timeout: float = 15.0) -> int:
        reply = request(self.layer, "GET", "/pid", reply_timeout=timeout, timeout=timeout)
        assert reply.status == 200
        return int(reply.body)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.layer.close()


@pytest.fixture
def gunicorn(redis_url: str, tmp_path: Path) -> Iterator[Any]:
    started: list[Gunicorn] = []

    def start(*args: str) -> Gunicorn:
        server = Gunicorn(redis_url, tmp_path, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def wait_for_new_pid(server: Gunicorn, old: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = server.pid(timeout=3)
        except TimeoutError:
            # At-most-once delivery: a message handed to a worker as it was SIGKILLed
            # is lost with it. Ask again.
            continue
        if pid != old:
            return pid
        time.sleep(0.05)
    raise TimeoutError(f"worker {old} was not replaced")


def test_serves_respawns_after_kill_and_reloads_on_hup(gunicorn: Any) -> None:
    server = gunicorn()
    first = server.pid()
    assert first != server.proc.pid  # a child serves, not the master
    assert request(server.layer, "GET", "/hello").body == b"hello"
    # The heap of the loaded app is frozen out of the garbage collections.
    assert int(request(server.layer, "GET", "/gc-frozen").body) > STARTUP_OBJECTS

    # HUP: the old worker finishes what it is running while a new one takes over.
    slow = http_message(server.layer, "GET", "/slow", query_string=b"t=1.5", timeout=20)
    server.layer.send("http.request", slow)
    time.sleep(0.4)  # let the old worker take it
    server.proc.send_signal(signal.SIGHUP)
    second = wait_for_new_pid(server, first)
    reply = read_reply(server.layer, slow["reply_channel"], timeout=20)
    assert (reply.status, reply.body) == (200, b"slept")

    # A worker killed outright is replaced by the master.
    os.kill(second, signal.SIGKILL)
    third = wait_for_new_pid(server, second)
    assert third not in (first, second)

    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(15) == 0


def test_max_requests_recycles_the_worker(gunicorn: Any) -> None:
    # One thread: with several, a thread already waiting in receive when the third
    # message is taken may take (and run) one more before it sees the stop.
    server = gunicorn("--max-requests", "3", "--max-requests-jitter", "0", "--threads", "1")
    pids = [server.pid() for _ in range(3)]
    assert len(set(pids)) == 1
    assert server.pid() != pids[0]  # the fourth waits in the layer for the new worker


def test_layer_down_at_start_is_one_line_and_exit_2(tmp_path: Path) -> None:
    from conftest import free_port

    # A Redis URL nobody listens on: as `wsgi-channels worker`, gunicorn says so once
    # and exits 2, before it forks (with several workers gunicorn 27's own halt would
    # otherwise end in a traceback and status 1).
    url = f"redis://127.0.0.1:{free_port()}/0"
    pidfile = tmp_path / "gunicorn.pid"
    server = Gunicorn(url, tmp_path, "--workers", "3", "--pid", str(pidfile))
    try:
        code = server.proc.wait(30)
    finally:
        server.stop()
    output = server.log.read_text()
    assert code == 2, output
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, output
    # The line `wsgi-channels worker` prints, in gunicorn's format.
    assert "[ERROR] wsgi-channels: error: " in errors[0]
    assert f"Redis at {url} is unavailable" in errors[0]
    assert "Booting worker" not in output and "taking messages" not in output
    assert "Traceback" not in output, output
    assert not pidfile.exists()


def test_django_setting_naming_a_layer_down_is_checked_at_start(tmp_path: Path) -> None:
    from conftest import free_port

    pytest.importorskip("django")
    url = f"redis://127.0.0.1:{free_port()}/0"
    (tmp_path / "down_settings.py").write_text(
        f"from django_project.settings import *\nWSGI_CHANNELS_LAYER = {url!r}\n"
    )
    env = env_with_pythonpath(DJANGO_SETTINGS_MODULE="down_settings")
    env.pop("WSGI_CHANNELS_LAYER", None)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-k", "wsgi_channels.gunicorn.ChannelWorker",
         "--bind", f"unix:{tmp_path / 'unused.sock'}", *NO_CONTROL_SOCKET,
         "django_project.wsgi:application"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"wsgi-channels: error: Redis at {url} is unavailable" in output
    assert "Booting worker" not in output and "Traceback" not in output


def _layer_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "channel layer" in line]


@pytest.mark.slow
def test_outage_while_running_backs_off_in_formatted_lines(own_redis: Any, tmp_path: Path) -> None:
    server = Gunicorn(own_redis.url, tmp_path)
    try:
        first = server.pid()
        own_redis.stop()
        time.sleep(1.0)
        # A worker replaced during the outage (killed, timed out, recycled) waits for
        # the layer: gunicorn does not halt as for a worker that failed to boot.
        os.kill(first, signal.SIGKILL)
        time.sleep(3.0)
        assert server.proc.poll() is None, server.log.read_text()
        own_redis.start()
        second = wait_for_new_pid(server, first, timeout=20)
        assert request(server.layer, "GET", "/hello").body == b"hello"
    finally:
        server.stop()
    output = server.log.read_text()
    assert server.proc.returncode == 0, output
    assert "Traceback" not in output, output
    lines = _layer_lines(output)
    # gunicorn's format, from the worker's process, backing off (one line when an
    # outage begins, one each time its length doubles, one when it ends), not two
    # bare lines a second from each thread.
    assert lines, output
    assert all(f"] [{first}] [" in line or f"] [{second}] [" in line for line in lines), lines
    assert all(line.startswith("[") and "[WARNING]" in line for line in lines), lines
    assert any("reachable again" in line for line in lines), lines
    assert len(lines) <= 8, lines


def test_needs_no_bind_and_leaves_port_8000_to_the_interface(
    redis_url: str, tmp_path: Path
) -> None:
    import socket

    # Something (the interface server) already listens on gunicorn's default bind.
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        holder.bind(("127.0.0.1", 8000))
    except OSError:
        holder.close()
        pytest.skip("port 8000 is in use on this machine")
    holder.listen()
    layer = layer_from_url(redis_url)
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn", "-k", "wsgi_channels.gunicorn.ChannelWorker",
                "--workers", "1", "--threads", "2", *NO_CONTROL_SOCKET, "_worker_helpers:app",
            ],
            env=env_with_pythonpath(WSGI_CHANNELS_LAYER=redis_url + "?receive_timeout=0.5"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        reply = request(layer, "GET", "/pid", reply_timeout=20, timeout=20)
        assert reply.status == 200
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        holder.close()
        layer.close()
    output = log.read_text()
    assert "Connection in use" not in output
    listening = next(line for line in output.splitlines() if "Listening at: unix:" in line)
    # The private socket's directory goes with the master.
    directory = Path(listening.split("unix:")[1].split()[0]).parent
    assert directory.name.startswith("wsgi-channels-gunicorn-")
    assert not directory.exists()
