"""The ``wsgi-channels`` command, run as a real process."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import free_port, wait_for_port
from servers import TESTS, CliProcess, child_env, cli_command


def wsgi_channels(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_command(*args),
        capture_output=True,
        text=True,
        env=child_env(env),
        cwd=TESTS,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(("worker", "no_such_module:app"), "no module named", id="missing-module"),
        pytest.param(("worker", "apps:nothing"), "has no attribute 'nothing'", id="missing-attr"),
        pytest.param(("worker", "not a path"), "bad APP", id="malformed-app"),
        pytest.param(("worker", "apps:echo", "--layer", "ftp://x"), "accepted schemes", id="url"),
        pytest.param(("worker", "apps:echo", "--threads", "0"), "--threads", id="bad-value"),
        pytest.param(("interface", "--bogus"), "--bogus", id="unknown-option"),
        pytest.param(("interface", "--bind", "nowhere"), "bad --bind", id="bad-bind"),
        pytest.param(("send", "--group", "g"), "--text and --json", id="send-no-body"),
        pytest.param(
            ("stats", "--layer", "redis://127.0.0.1:1/0?socket_connect_timeout=1"),
            "Redis at redis://127.0.0.1:1/0?socket_connect_timeout=1 is unavailable: ",
            id="layer-down",
        ),
        pytest.param(
            ("interface", "--bind", "unix:/nonexistent-dir/app.sock", "--layer", "memory://"),
            "cannot listen on unix:/nonexistent-dir/app.sock: directory /nonexistent-dir does "
            "not exist",
            id="interface-unix-socket-missing-dir",
        ),
        pytest.param(
            ("run", "apps:echo", "--bind", "unix:/nonexistent-dir/app.sock"),
            "directory /nonexistent-dir does not exist",
            id="run-unix-socket-missing-dir",
        ),
    ],
)
def test_errors_are_one_line_and_exit_2(args: tuple[str, ...], expected: str) -> None:
    result = wsgi_channels(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr
    assert "unreachable" not in result.stderr  # one sentence, not two stacked ones


def test_no_command_lists_the_commands() -> None:
    result = wsgi_channels()
    assert result.returncode == 2
    listed = result.stdout.split("Commands:", 1)[1].split()
    for command in ("interface", "run", "send", "stats", "worker"):
        assert command in listed


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("run", "apps:echo", "--layer", "memory://"), id="run"),
        pytest.param(("interface", "--layer", "memory://"), id="interface"),
    ],
)
def test_a_port_in_use_is_one_line_with_the_reason(command: tuple[str, ...]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = wsgi_channels(*command, "--bind", f"127.0.0.1:{port}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"wsgi-channels: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def test_environment_variables_are_options(sqlite_url: str) -> None:
    result = wsgi_channels("worker", "apps:echo", env={"WSGI_CHANNELS_THREADS": "0"})
    assert result.returncode == 2
    assert "--threads" in result.stderr
    result = wsgi_channels("stats", env={"WSGI_CHANNELS_LAYER": sqlite_url})
    assert result.returncode == 0
    assert sqlite_url in result.stdout


def test_send_and_stats(sqlite_url: str) -> None:
    from wsgi_channels.layers import layer_from_url

    layer = layer_from_url(sqlite_url)
    try:
        layer.group_add("fans", "some.member")
        layer.group_add("fans", "other.member")
        sent = wsgi_channels("send", "--layer", sqlite_url, "--group", "fans", "--text", "hi")
        assert sent.returncode == 0, sent.stderr
        assert "2 members" in sent.stdout
        sent = wsgi_channels(
            "send", "--layer", sqlite_url, "--channel", "some.member", "--json", '{"text": "x"}'
        )
        assert sent.returncode == 0, sent.stderr
        stats = wsgi_channels("stats", "--layer", sqlite_url)
        assert stats.returncode == 0, stats.stderr
        rows = {line.split()[0]: line.split()[1:] for line in stats.stdout.splitlines() if line}
        assert rows["some.member"] == ["2", "100"]  # group message + direct one
        assert rows["other.member"] == ["1", "100"]
        assert rows["fans"] == ["2"]
        assert layer.receive(["some.member"])[1] == {"text": "hi"}
        assert layer.receive(["some.member"])[1] == {"text": "x"}
    finally:
        layer.close()


def test_stats_masks_the_password() -> None:
    result = wsgi_channels("stats", "--layer", "redis://:secret@127.0.0.1:1/0")
    assert result.returncode == 2
    assert "secret" not in result.stderr


def test_run_prints_its_url_and_serves(tmp_path: Path) -> None:
    port = free_port()
    url = f"sqlite:///{tmp_path / 'run.sqlite3'}"
    process = CliProcess("run", "apps:echo", "--bind", f"127.0.0.1:{port}", "--layer", url)
    process.start()
    try:
        process.wait_for_output(
            f" * Running on http://127.0.0.1:{port} with layer {url} (Press CTRL+C to quit)"
        )
        wait_for_port(port)
        response = requests.get(f"http://127.0.0.1:{port}/hi", timeout=10)
        assert response.status_code == 200
        assert response.json()["path"] == "/hi"
    finally:
        assert process.stop() == 0, process.output
    assert "Traceback" not in process.output


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_run_holds_no_more_of_a_slow_download_than_its_response_buffer(tmp_path: Path) -> None:
    # Under `run` the worker's replies are handed over in the process, not sent
    # through the layer, whose capacity would brake the worker. A 24 MB download
    # to a client that reads about 10 MB/s, with a response buffer of 1 MiB: the
    # client gets every byte, and the process does not hold the body meanwhile
    # (before the fix it took the whole body at once, and its memory grew with it).
    port = free_port()
    size = 24 * 1024 * 1024
    url = f"sqlite:///{tmp_path / 'run.sqlite3'}"
    process = CliProcess(
        "run", "apps:echo", "--bind", f"127.0.0.1:{port}", "--layer", url,
        env={"WSGI_CHANNELS_RESPONSE_BUFFER": "1M"},
    )  # fmt: skip
    process.start()
    try:
        wait_for_port(port)
        assert requests.get(f"http://127.0.0.1:{port}/hi", timeout=10).status_code == 200
        assert process.process is not None
        pid = process.process.pid
        before = peak = _rss(pid)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            client.sendall(f"GET /download?{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            received = b""
            while b"\r\n\r\n" not in received:
                received += client.recv(65536)
            head, _, body = received.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            got = len(body)
            while got < size:
                chunk = client.recv(65536)
                assert chunk, got
                got += len(chunk)
                time.sleep(0.006)
                peak = max(peak, _rss(pid))
        assert got == size
        assert peak - before < 12 * 1024 * 1024, (before, peak)
    finally:
        assert process.stop() == 0, process.output
    assert "Traceback" not in process.output


DJANGO_SETTINGS = """
SECRET_KEY = "test"
ROOT_URLCONF = "djurls"
ALLOWED_HOSTS = ["*"]
USE_TZ = True
WSGI_CHANNELS_LAYER = {layer!r}
"""
DJANGO_URLS = """
from django.http import HttpResponse
from django.urls import path

urlpatterns = [path("", lambda request: HttpResponse(b"from django"))]
"""
DJANGO_WSGI = """
from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
"""


def test_worker_serves_the_layer_of_a_django_setting(tmp_path: Path) -> None:
    from _worker_helpers import request

    from wsgi_channels.layers import layer_from_url

    url = f"sqlite:///{tmp_path / 'from-settings.sqlite3'}"
    (tmp_path / "djsettings.py").write_text(DJANGO_SETTINGS.format(layer=url))
    (tmp_path / "djurls.py").write_text(DJANGO_URLS)
    (tmp_path / "djwsgi.py").write_text(DJANGO_WSGI)
    env = child_env({"DJANGO_SETTINGS_MODULE": "djsettings"})
    worker = subprocess.Popen(
        cli_command("worker", "djwsgi:application"),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with layer_from_url(url) as layer:
            reply = request(layer, "GET", "/", reply_timeout=20)
        assert (reply.status, reply.body) == (200, b"from django")
        # Nothing went to the default layer in the working directory.
        assert not (tmp_path / ".wsgi_channels.sqlite3").exists()
    finally:
        worker.terminate()
        assert worker.wait(15) == 0


POLICY_APP = """
import os

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.sched_getscheduler(0)).encode()]
"""


#: (command-line arguments, environment, whether SCHED_BATCH is expected)
POLICY_CASES = [
    pytest.param((), {}, True, id="default"),
    pytest.param(("--no-batch-scheduling",), {}, False, id="option"),
    pytest.param((), {"WSGI_CHANNELS_BATCH_SCHEDULING": "0"}, False, id="environment"),
]


@contextlib.contextmanager
def worker_answering(
    tmp_path: Path, app: str, path: str, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], Any]]:
    """``wsgi-channels worker APP`` on a SQLite layer in *tmp_path* (its working
    directory); yields the process and its reply to a GET of *path*, then stops it and
    checks that it exited 0."""
    from _worker_helpers import request

    from wsgi_channels.layers import layer_from_url

    url = f"sqlite:///{tmp_path / 'layer.sqlite3'}"
    worker = subprocess.Popen(
        cli_command("worker", app, "--layer", url, *args),
        cwd=tmp_path,
        env=child_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with layer_from_url(url) as layer:
            reply = request(layer, "GET", path, reply_timeout=20)
        assert reply.status == 200
        yield worker, reply
    finally:
        worker.terminate()
        assert worker.wait(15) == 0


@pytest.mark.skipif(not hasattr(__import__("os"), "SCHED_BATCH"), reason="no SCHED_BATCH here")
@pytest.mark.parametrize(
    ("args", "env", "batch"),
    POLICY_CASES,
)
def test_worker_runs_the_app_under_sched_batch_unless_told_not_to(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], batch: bool
) -> None:
    import os

    (tmp_path / "policyapp.py").write_text(POLICY_APP)
    with worker_answering(tmp_path, "policyapp:app", "/", *args, env=env) as (worker, reply):
        expected = os.SCHED_BATCH if batch else os.SCHED_OTHER
        assert int(reply.body) == expected
        # The process's main thread (signals, shutdown) keeps the default policy.
        assert os.sched_getscheduler(worker.pid) == os.SCHED_OTHER


#: Fewer objects than a process holds once our package and the app are loaded.
STARTUP_OBJECTS = 5000


def test_worker_freezes_the_heap_of_the_loaded_app_out_of_garbage_collections(
    tmp_path: Path,
) -> None:
    with worker_answering(tmp_path, "_worker_helpers:app", "/gc-frozen") as (_, reply):
        assert int(reply.body) > STARTUP_OBJECTS


def test_run_freezes_the_heap_of_the_loaded_app_out_of_garbage_collections(
    tmp_path: Path,
) -> None:
    port = free_port()
    url = f"sqlite:///{tmp_path / 'run.sqlite3'}"
    process = CliProcess(
        "run", "_worker_helpers:app", "--bind", f"127.0.0.1:{port}", "--layer", url
    )
    process.start()
    try:
        wait_for_port(port)
        response = requests.get(f"http://127.0.0.1:{port}/gc-frozen", timeout=10)
        assert response.status_code == 200
        assert int(response.text) > STARTUP_OBJECTS
    finally:
        assert process.stop() == 0, process.output


@pytest.mark.skipif(not hasattr(__import__("os"), "SCHED_BATCH"), reason="no SCHED_BATCH here")
@pytest.mark.parametrize(
    ("args", "env", "batch"),
    [*POLICY_CASES, pytest.param(("--workers", "2"), {}, True, id="each-of-workers")],
)
def test_interface_runs_its_event_loop_under_sched_batch_unless_told_not_to(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], batch: bool
) -> None:
    import os

    port = free_port()
    url = f"sqlite:///{tmp_path / 'layer.sqlite3'}"
    server = subprocess.Popen(
        cli_command("interface", "--layer", url, "--bind", f"127.0.0.1:{port}", *args),
        cwd=tmp_path,
        env=child_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=30)
        if "--workers" in args:  # the serving processes are the supervisor's children
            deadline = time.monotonic() + 20
            while True:
                children = Path(f"/proc/{server.pid}/task/{server.pid}/children")
                pids = [int(p) for p in children.read_text().split()]
                serving = [p for p in pids if _is_interface_child(p)]
                if len(serving) == 2 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert len(serving) == 2, pids
        else:
            serving = [server.pid]
        expected = os.SCHED_BATCH if batch else os.SCHED_OTHER
        deadline = time.monotonic() + 20  # a spawned process sets it as it builds its app
        while {os.sched_getscheduler(p) for p in serving} != {expected}:
            assert time.monotonic() < deadline, [os.sched_getscheduler(p) for p in serving]
            time.sleep(0.1)
    finally:
        server.terminate()
        assert server.wait(20) == 0


def _is_interface_child(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


RELOAD_APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [{body!r}]
"""


def _reloaded_to(source: Path, port: int, body: bytes) -> bool:
    """Rewrite the app of *source* to answer *body* and poll until the reloaded server
    answers it (up to 20 s)."""
    time.sleep(1.1)  # the stat reloader compares modification times
    source.write_text(RELOAD_APP.format(body=body))
    deadline = time.monotonic() + 20
    got = b""
    while time.monotonic() < deadline and got != body:
        with contextlib.suppress(requests.ConnectionError):  # while it restarts
            got = requests.get(f"http://127.0.0.1:{port}/", timeout=2).content
        time.sleep(0.2)
    return got == body


def test_run_reload_restarts_when_the_app_changes(tmp_path: Path) -> None:
    source = tmp_path / "reloading.py"
    source.write_text(RELOAD_APP.format(body=b"first"))
    port = free_port()
    env = child_env({"PYTHONPATH": str(tmp_path)})
    server = subprocess.Popen(
        cli_command(
            "run",
            "reloading:app",
            "--reload",
            "--layer",
            "memory://",
            "--bind",
            f"127.0.0.1:{port}",
        ),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=20)
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).content == b"first"
        assert _reloaded_to(source, port, b"second")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("--group", "chatroom", "--json", '{"text": 1}'), id="group-text-int"),
        pytest.param(("--channel", "some.member", "--json", '{"close": "x"}'), id="channel-close"),
    ],
)
def test_send_refuses_invalid_websocket_reply(sqlite_url: str, args: tuple[str, ...]) -> None:
    from wsgi_channels.layers import layer_from_url

    layer = layer_from_url(sqlite_url)
    try:
        layer.group_add("chatroom", "some.member")
        sent = wsgi_channels("send", "--layer", sqlite_url, *args)
        assert sent.returncode == 2
        lines = sent.stderr.strip().splitlines()
        assert len(lines) == 1, sent.stderr
        assert "not a valid WebSocket message" in lines[0]
        assert layer.receive(["some.member"]) == (None, None)
    finally:
        layer.close()


def test_commands_without_app_read_the_django_setting(tmp_path: Path) -> None:
    """stats, send and interface use a Django project's WSGI_CHANNELS_LAYER setting when
    neither --layer nor the environment names a layer, like worker and run."""
    pytest.importorskip("django")
    from wsgi_channels.layers import layer_from_url

    layer_file = tmp_path / "from-settings.sqlite3"
    (tmp_path / "mysettings.py").write_text(
        f"SECRET_KEY = 'x'\nWSGI_CHANNELS_LAYER = {f'sqlite:///{layer_file}'!r}\n"
    )
    env = {"DJANGO_SETTINGS_MODULE": "mysettings"}
    layer = layer_from_url(f"sqlite:///{layer_file}")
    try:
        layer.group_add("fans", "some.member")

        def command(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                cli_command(*args),
                capture_output=True,
                text=True,
                env=child_env(env),
                cwd=tmp_path,
                timeout=30,
            )

        sent = command("send", "--group", "fans", "--text", "hi")
        assert sent.returncode == 0, sent.stderr
        assert "1 member" in sent.stdout
        assert layer.receive(["some.member"])[1] == {"text": "hi"}
        stats = command("stats")
        assert stats.returncode == 0, stats.stderr
        assert f"layer: sqlite:///{layer_file}" in stats.stdout
        assert "fans" in stats.stdout
        assert not (tmp_path / ".wsgi_channels.sqlite3").exists()
        port = free_port()
        server = CliProcess("interface", "--bind", f"127.0.0.1:{port}", env=env, cwd=tmp_path)
        server.start()
        try:
            server.wait_for_output("Running on", timeout=15)
            wait_for_port(port, timeout=15)
            assert f"with layer sqlite:///{layer_file}" in server.output
        finally:
            assert server.stop() == 0
    finally:
        layer.close()


def test_start_line_names_bind_and_layer(tmp_path: Path) -> None:
    """One line at start: where it listens and which layer, an SQLite file as an
    absolute path (a relative URL is relative to the directory it was started in)."""
    port = free_port()
    server = CliProcess(
        "run",
        "apps:echo",
        "--bind",
        f"127.0.0.1:{port}",
        "--layer",
        "sqlite:///relative.sqlite3",
        cwd=tmp_path,
    )
    server.start()
    try:
        server.wait_for_output("Running on", timeout=15)
        wait_for_port(port, timeout=15)
        lines = [line for line in server.output.splitlines() if "Running on" in line]
        assert lines == [
            f" * Running on http://127.0.0.1:{port} with layer "
            f"sqlite:///{tmp_path / 'relative.sqlite3'} (Press CTRL+C to quit)"
        ]
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("command", [("interface",), ("worker", "apps:echo"), ("run", "apps:echo")])
def test_a_memory_layer_in_a_process_of_its_own_is_warned_of(command: tuple[str, ...]) -> None:
    """An interface or a worker on memory:// could never meet its other half."""
    port = free_port()
    bind = ("--bind", f"127.0.0.1:{port}") if command[0] != "worker" else ()
    server = CliProcess(*command, *bind, "--layer", "memory://").start()
    try:
        server.wait_for_output("layer memory://", timeout=15)
    finally:
        assert server.stop() == 0
    warned = "memory:// lives inside this process" in server.output
    assert warned == (command[0] != "run"), server.output


@pytest.mark.slow
def test_run_reload_after_a_syntax_error_is_one_line_then_recovers(tmp_path: Path) -> None:
    source = tmp_path / "reloading.py"
    source.write_text(RELOAD_APP.format(body=b"first"))
    port = free_port()
    server = CliProcess(
        "run",
        "reloading:app",
        "--reload",
        "--layer",
        "memory://",
        "--bind",
        f"127.0.0.1:{port}",
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path)},
    )
    server.start()
    try:
        wait_for_port(port, timeout=20)
        time.sleep(1.1)  # the stat reloader compares modification times
        source.write_text("def app(:\n")
        server.wait_for_output("(waiting for a change)", timeout=20)
        time.sleep(0.5)
        errors = [line for line in server.output.splitlines() if "error" in line.lower()]
        assert len(errors) == 1, server.output
        assert "SyntaxError" in errors[0]
        assert "reloading.py" in errors[0]
        assert "Traceback" not in server.output
        assert "Exception in thread" not in server.output
        assert _reloaded_to(source, port, b"fixed")
    finally:
        server.signal(signal.SIGINT)
        server.stop()


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")


def test_run_logs_one_format_and_no_uvicorn_banner(tmp_path: Path) -> None:
    port = free_port()
    server = CliProcess("run", "apps:echo", "--bind", f"127.0.0.1:{port}", "--layer", "memory://")
    server.start()
    try:
        wait_for_port(port, timeout=15)
        assert requests.get(f"http://127.0.0.1:{port}/logged", timeout=10).status_code == 200
        server.wait_for_output('"GET /logged HTTP/1.1" 200', timeout=5)
    finally:
        assert server.stop() == 0
    lines = [line for line in server.output.splitlines() if line.strip()]
    start = [line for line in lines if "Running on" in line]
    assert start == [
        f" * Running on http://127.0.0.1:{port} with layer memory:// (Press CTRL+C to quit)"
    ]
    assert "Uvicorn running on" not in server.output
    others = [line for line in lines if line not in start]
    assert any(" uvicorn: " in line for line in others)  # uvicorn's lines, in our format
    assert all(LOG_LINE.match(line) for line in others), server.output


@pytest.mark.parametrize(
    ("args", "env"),
    [
        pytest.param(("--log-level", "warning", "--no-access-log"), {}, id="options"),
        pytest.param(
            (),
            {"WSGI_CHANNELS_LOG_LEVEL": "warning", "WSGI_CHANNELS_ACCESS_LOG": "0"},
            id="environment",
        ),
    ],
)
def test_log_level_and_access_log_on_every_long_running_command(
    sqlite_url: str, args: tuple[str, ...], env: dict[str, str]
) -> None:
    port = free_port()
    bind = ("--bind", f"127.0.0.1:{port}")
    interface = CliProcess("interface", *bind, "--layer", sqlite_url, *args, env=env).start()
    worker = CliProcess("worker", "apps:echo", "--layer", sqlite_url, *args, env=env).start()
    run_port = free_port()
    run = CliProcess(
        "run",
        "apps:echo",
        "--bind",
        f"127.0.0.1:{run_port}",
        "--layer",
        "memory://",
        *args,
        env=env,
    ).start()
    try:
        wait_for_port(port, timeout=15)
        wait_for_port(run_port, timeout=15)
        for url in (f"http://127.0.0.1:{port}/quiet", f"http://127.0.0.1:{run_port}/quiet"):
            assert requests.get(url, timeout=20).status_code == 200
        time.sleep(1)  # the access log is written at most 0.5 s late
    finally:
        codes = [process.stop() for process in (interface, worker, run)]
    for process in (interface, worker, run):
        assert " INFO " not in process.output, process.output
        assert "/quiet" not in process.output
        assert "Running" in process.output  # the start line stays
    assert codes == [0, 0, 0]


@pytest.mark.slow
def test_stats_watch_refreshes_every_second_and_ctrl_c_exits_0(sqlite_url: str) -> None:
    from wsgi_channels.layers import layer_from_url

    layer = layer_from_url(sqlite_url)
    try:
        layer.group_add("fans", "some.member")
        watch = subprocess.Popen(
            cli_command("stats", "--watch", "--layer", sqlite_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
            cwd=TESTS,
        )
        assert watch.stdout is not None
        try:
            frames: list[list[str]] = []
            frame: list[str] = []
            started = time.monotonic()
            sent = False
            while len(frames) < 4 and time.monotonic() - started < 20:
                line = watch.stdout.readline()
                if not line:
                    break
                if line.startswith("layer: ") and frame:
                    frames.append(frame)
                    frame = []
                    if len(frames) == 1 and not sent:
                        for _ in range(3):
                            layer.send("some.member", {"text": "x"})
                        sent = True
                frame.append(line.rstrip("\n"))
            elapsed = time.monotonic() - started
            watch.send_signal(signal.SIGINT)
            _, stderr = watch.communicate(timeout=10)
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait()
        assert len(frames) == 4, frames
        assert 2.0 <= elapsed <= 8.0  # about a second per table
        assert "Ctrl-C to quit" in frames[0][0]
        assert any(row.split() == ["fans", "1"] for row in frames[0])
        assert "change/s" in "\n".join(frames[1])
        rows = [row.split() for frame in frames[1:] for row in frame]
        assert any(row[:3] == ["some.member", "3", "100"] for row in rows), frames
        assert any(row[:3] == ["some.member", "3", "100"] and row[3] != "+0.0" for row in rows)
        assert watch.returncode == 0, stderr
        assert "Traceback" not in stderr
    finally:
        layer.close()
