"""Real ``wsgi-channels`` processes for end-to-end tests.

::

    with Stack(layer_url, app="apps:echo") as stack:      # interface + worker
        requests.get(stack.url + "/hello")
    interface = InterfaceProcess(layer_url, "--http-timeout", "1").start()
    worker = WorkerProcess("apps:echo", layer_url).start()
    code = interface.stop()           # SIGTERM, then the exit status; .output has the log

Each process runs ``python -m wsgi_channels.cli`` (the ``wsgi-channels`` command without
needing it installed) with this repository and this ``tests`` directory on
``PYTHONPATH``, so ``apps:NAME`` imports. Output goes to a temporary file (never a pipe
that could fill and block the child). Readiness is polled, never slept for: the
interface when its port accepts connections, the worker when it logs that it serves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from conftest import free_port, wait_for_port

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def cli_command(*args: str) -> list[str]:
    """The argv of ``wsgi-channels ARGS...`` run with this interpreter."""
    return [sys.executable, "-m", "wsgi_channels.cli", *args]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without any ``WSGI_CHANNELS_*`` variable, with the repository
    and ``tests`` on ``PYTHONPATH``, plus *extra*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGI_CHANNELS_")}
    paths = [str(REPO), str(TESTS)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def metrics_text(port: int, until: str, timeout: float = 10.0) -> str:
    """The text of ``/metrics`` on *port* once it contains *until* (a response reaches
    the client a moment before it is counted); the last text either way."""
    import requests

    wait_for_port(port, timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        if until in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def read_log(log: IO[bytes]) -> str:
    """What a child process wrote so far to *log*, its stdout. Read with pread, which
    leaves the file offset alone: the offset is shared with the child, whose next
    writes would land over the start of the log after a seek()."""
    fd = log.fileno()
    return os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")


class GroupProcess:
    """A command in the background in a process group of its own, stopped with
    SIGINT to the whole group (Ctrl-C at a terminal), as development servers whose
    autoreloader runs the server in a child process expect: ``manage.py runserver``,
    ``flask run``. Its output: :attr:`output`."""

    def __init__(self, argv: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        self.process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    @property
    def output(self) -> str:
        return read_log(self.log)

    def stop(self) -> int:
        """SIGINT to the group, wait (SIGKILL after 15 s); the exit status."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        return self.process.returncode


class CliProcess:
    """One ``wsgi-channels`` subcommand running in the background."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.args = list(args)
        self.env = child_env(env)
        self.cwd = cwd or TESTS
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._final_output = ""
        self.returncode: int | None = None

    def start(self) -> CliProcess:
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        self.process = subprocess.Popen(
            cli_command(*self.args),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
        )
        return self

    @property
    def output(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        if self._log is None:
            return self._final_output
        return read_log(self._log)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_for_output(self, text: str, timeout: float = 10.0) -> None:
        """Poll the output until it contains *text*; raise with the output if the
        process dies or the time is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output:
                return
            if not self.alive():
                raise RuntimeError(f"{self.args[0]} exited before {text!r}:\n{self.output}")
            time.sleep(0.02)
        raise TimeoutError(f"no {text!r} from {self.args[0]} in {timeout} s:\n{self.output}")

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait (SIGKILL after *timeout*), and return the exit status."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.returncode = self.process.returncode
        if self._log is not None:
            self._final_output = self.output
            self._log.close()
            self._log = None
        return self.returncode


class InterfaceProcess(CliProcess):
    """``wsgi-channels interface`` on a free port; ready when the port accepts."""

    def __init__(self, layer_url: str, *args: str, port: int | None = None, **kwargs: object):
        self.port = port or free_port()
        super().__init__(
            "interface",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--layer",
            layer_url,
            *args,
            **kwargs,  # type: ignore[arg-type]
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> InterfaceProcess:
        super().start()
        self.wait_for_output("Running on", timeout=15)
        wait_for_port(self.port, timeout=15)
        return self


class WorkerProcess(CliProcess):
    """``wsgi-channels worker APP``; ready when it logs that it serves."""

    def __init__(self, app: str, layer_url: str, *args: str, threads: int = 4, **kwargs: object):
        super().__init__(
            "worker",
            app,
            "--layer",
            layer_url,
            "--threads",
            str(threads),
            *args,
            **kwargs,  # type: ignore[arg-type]
        )

    def start(self) -> WorkerProcess:
        super().start()
        self.wait_for_output("worker serving", timeout=15)
        return self


class Stack:
    """An interface process and a worker process on one layer, as a context manager."""

    def __init__(
        self,
        layer_url: str,
        app: str = "apps:echo",
        *,
        interface_args: tuple[str, ...] = (),
        threads: int = 4,
    ) -> None:
        self.interface = InterfaceProcess(layer_url, *interface_args)
        self.worker = WorkerProcess(app, layer_url, threads=threads)

    @property
    def url(self) -> str:
        return self.interface.url

    @property
    def ws_url(self) -> str:
        return self.interface.ws_url

    def start(self) -> Stack:
        try:
            self.worker.start()
            self.interface.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> tuple[int, int]:
        return self.interface.stop(), self.worker.stop()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
