"""The extras say who they are for, and the README's test command is what CI runs."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
README_TEST_COMMAND = "python -m pip install -e '.[dev]' && python -m pytest"


def extras() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib")
    project: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    result: dict[str, list[str]] = project["optional-dependencies"]
    return result


def names(requirements: list[str]) -> set[str]:
    found = set()
    for requirement in requirements:
        match = re.match(r"[A-Za-z0-9_.-]+(\[[^]]*\])?", requirement)
        assert match is not None, requirement
        found.add(match.group(0).lower())
    return found


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    first_screen = "\n".join(readme.splitlines()[:30])
    assert README_TEST_COMMAND in first_screen
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert README_TEST_COMMAND in ci_lines


def test_testing_extra_holds_only_what_wsgi_channels_testing_needs() -> None:
    assert names(extras()["testing"]) == {"webtest", "websockets"}


def test_dev_extra_holds_the_suite_and_the_testing_extra() -> None:
    dev = names(extras()["dev"])
    assert "wsgi-channels[redis,gunicorn,example,testing]" in dev
    for needed in (
        "pytest",
        "pytest-timeout",
        "hypothesis",
        "flask",
        "django",
        "playwright",
        "requests",
        "ruff",
        "mypy",
        "msgpack-types",
        "channels-redis",
        "cryptography",
    ):
        assert needed in dev


USER_TEST = textwrap.dedent(
    """
    from wsgi_channels import Group
    from wsgi_channels.testing import WorkerTestApp


    def app(environ, start_response):
        event = environ.get("wsgi_channels.websocket")
        if event == "connect":
            Group("room").add(environ["wsgi_channels.reply_channel"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"" if event else b"page"]


    with WorkerTestApp(app) as client:
        assert client.get("/").text == "page"
        with client.websocket("/ws") as ws:
            Group("room").send({"text": "hi"})
            assert ws.receive_text() == "hi"
    import importlib.util
    for absent in ("pytest", "django", "playwright", "mypy"):
        assert importlib.util.find_spec(absent) is None, absent
    print("user test passed")
    """
)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_venv_with_only_the_testing_extra_runs_a_worker_test(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{REPO}[testing]"],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    script = tmp_path / "test_user.py"
    script.write_text(USER_TEST)
    ran = subprocess.run(
        [str(python), str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "user test passed" in ran.stdout
