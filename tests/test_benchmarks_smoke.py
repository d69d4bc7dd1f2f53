"""Every benchmark scenario runs end to end at its ``--quick`` size (about a second of
load each) and prints its Markdown table and writes sane JSON. The figures are not
checked against the bars here (the machine is shared; a smoke test must not assert
performance); benchmarks/README.md holds the real runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

QUIET = {"ws_memory", "sqlite_latency", "micro"}  # plain-text tables only
NEEDS = {
    "http_throughput": ("wrk", "redis-server", "gunicorn"),
    "http_latency": ("wrk", "redis-server", "gunicorn"),
    "ws_echo": ("redis-server",),
    "run_sqlite": ("wrk",),
    "group_send": ("redis-server",),
    "fanout": ("redis-server",),
    "ws_memory": ("redis-server",),
    "sqlite_latency": (),
    "micro": ("redis-server",),
    "ab": ("wrk", "redis-server"),
    "per_request": ("wrk", "redis-server"),
}


def run_quick(name: str, tmp_path: Path, *extra: str) -> dict[str, Any]:
    # The virtualenv's scripts count whether or not it is activated (as the harness does).
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    missing = [binary for binary in NEEDS[name] if shutil.which(binary, path=path) is None]
    if missing:
        pytest.skip(f"benchmark {name} needs {', '.join(missing)} on PATH")
    out = tmp_path / f"{name}.json"
    env = dict(os.environ, BENCH_STRICT="1", PYTHONPATH=str(ROOT))
    env.pop("WSGI_CHANNELS_LAYER", None)
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--quick", "--json", str(out), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    if done.returncode == 3:
        pytest.skip(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "JSON:" in done.stdout
    assert f"Command: `python -m benchmarks.{name}" in done.stdout or name in QUIET, done.stdout
    assert "| --- |" in done.stdout or name in QUIET, done.stdout
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["scenario"] == name
    assert data["rows"], data
    return data


@pytest.mark.parametrize("name", ["http_throughput", "http_latency"])
def test_http(name: str, tmp_path: Path) -> None:
    # With the batched bridge reference too (off by default).
    data = run_quick(name, tmp_path, "--batched-workers", "1")
    configs = [row["config"] for row in data["rows"]]
    assert configs[0].startswith("gunicorn sync") and configs[1].startswith("gunicorn gthread")
    assert configs[2].startswith("naive bridge") and configs[3].startswith("batched bridge")
    assert configs[4].startswith("wsgi-channels")
    for row in data["rows"]:
        assert row["rounds_ok"] == 1 and "error" not in row, row
        assert row["rps"] > 0 and row["errors"] == 0, row
        assert row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"], row
        assert row["runs"][0]["loadavg_1m"] >= 0, row
    assert len(data["bars"]) >= 2


def test_http_over_a_unix_socket(tmp_path: Path) -> None:
    # Every bridge of the run reaches its redis-server over the server's Unix socket,
    # and the rows say so.
    data = run_quick("http_latency", tmp_path, "--redis-transport", "unix")
    bridges = [row for row in data["rows"] if "bridge" in row["config"] or "wsgi" in row["config"]]
    assert len(bridges) >= 2, data["rows"]
    for row in bridges:
        assert row["config"].endswith("Redis over its Unix socket"), row
        assert "error" not in row and row["rps"] > 0 and row["errors"] == 0, row


def test_ab_of_a_tree_against_itself(tmp_path: Path) -> None:
    (row,) = run_quick("ab", tmp_path, str(ROOT))["rows"]
    assert row["case"] == "c1" and row["A_rps"] > 0 and row["B_rps"] > 0, row
    assert row["rps_B_over_A"] > 0 and row["p50_ms_B_minus_A"] is not None, row


def test_per_request_under_both_policies(tmp_path: Path) -> None:
    if not Path("/proc/self/io").exists():
        pytest.skip("needs Linux's /proc/PID/io")
    rows = run_quick("per_request", tmp_path, "--split", "1:1:2")["rows"]
    assert {row["config"] for row in rows} == {"workers SCHED_BATCH", "workers default"}
    assert {row["process"] for row in rows} == {"redis", "interface", "worker 0"}
    for row in rows:
        assert row["rps"] > 0 and row["cpu_us"] > 0, row
        # Every request is one read of the client's socket and one write of the answer.
        if row["process"] == "interface":
            assert row["syscr"] >= 1 and row["syscw"] >= 1, row


def test_ws_echo(tmp_path: Path) -> None:
    pytest.importorskip("channels")
    data = run_quick("ws_echo", tmp_path)
    servers = [row["server"] for row in data["rows"]]
    assert servers[0].startswith("Channels") and servers[1].startswith("wsgi-channels")
    for row in data["rows"]:
        assert "error" not in row, row
        assert row["rate_1"] > 0 and row["rate_32"] > 0, row
        assert row["p99_32"] >= row["p50_32"] > 0, row
    assert len(data["bars"]) == 2


def test_run_sqlite(tmp_path: Path) -> None:
    data = run_quick("run_sqlite", tmp_path)
    assert [row["server"].split()[0] for row in data["rows"]] == ["flask", "wsgi-channels"]
    for row in data["rows"]:
        assert "error" not in row, row
        assert row["rps"] > 0 and row["c1_rps"] > 0 and row["errors"] == 0, row
        assert row["c1_p50_ms"] > 0, row


def test_group_send(tmp_path: Path) -> None:
    data = run_quick("group_send", tmp_path)
    layers = {row["layer"] for row in data["rows"]}
    assert {"wsgi_channels redis", "wsgi_channels sqlite", "channels_redis"} <= layers
    for row in data["rows"]:
        assert row["mean_ms"] > 0, row
    ours = [row for row in data["rows"] if row["layer"].startswith("wsgi_channels")]
    # The expansion check: one process's share of the members, each got the message.
    assert all(row["expanded"] == row["members"] // 2 for row in ours), ours


def test_fanout(tmp_path: Path) -> None:
    (row,) = run_quick("fanout", tmp_path)["rows"]
    assert "error" not in row, row
    assert row["connected"] == row["clients"] == row["members"], row
    assert row["iface_us_per_frame"] is not None and row["iface_us_per_frame"] >= 0, row
    assert row["lost"] == 0 and row["duplicates"] == 0, row
    assert row["last_p99_ms"] is not None


def test_ws_memory(tmp_path: Path) -> None:
    (row,) = run_quick("ws_memory", tmp_path)["rows"]
    assert "error" not in row, row
    assert row["connected"] == 50, row
    assert row["echo_c1_per_s"] > 0 and row["echo_c16_per_s"] > 0, row


def test_sqlite_latency(tmp_path: Path) -> None:
    data = run_quick("sqlite_latency", tmp_path)
    for row in data["rows"]:
        assert row["received"] == row["messages"], row
        assert row["p50_ms"] > 0, row


def test_micro(tmp_path: Path) -> None:
    data = run_quick("micro", tmp_path)
    assert len(data["rows"]) == 3
    for row in data["rows"]:
        assert row["today_us"] > 0 and row["suggested_us"] > 0, row
