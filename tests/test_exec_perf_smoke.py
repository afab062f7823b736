"""performance_comparison.py runs end to end (tiny samples) and writes its JSON and PNG.

This is not a benchmark: it only proves the script works against a real sshd
and real agents. The figures come from `--quick` or a full run, never from a test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster_runner_simulation.testing import (
    LocalAgents,
    LocalSshd,
    sshd_unavailable_reason,
    write_local_descriptor,
)

SCRIPT = "03-cluster-runner-simulation/performance_comparison.py"
NAMES = {"zmq", "asyncssh", "ssh_mux", "ssh_fresh", "local"}


def test_smoke_run_writes_table_json_and_plot(run: object, tmp_path: Path) -> None:
    reason = sshd_unavailable_reason()
    if reason:
        pytest.skip(reason)
    assert callable(run)
    out_json, out_png = tmp_path / "perf.json", tmp_path / "perf.png"
    result = run(
        SCRIPT, "--smoke", "--nodes", "2", "--no-progress",
        "--json", str(out_json), "--plot", str(out_png),
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| zmq |" in result.stdout and "| ssh_fresh |" in result.stdout
    report = json.loads(out_json.read_text())
    assert set(report["executors"]) == NAMES
    assert set(report["fanout"]) == NAMES
    for figures in report["executors"].values():
        assert {"p50_ms", "p99_ms", "cmds_per_s"} <= set(figures)
        assert figures["p50_ms"] > 0
    for fanout in report["fanout"].values():
        assert fanout["nodes"] == 2 and fanout["total_ms"] > 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_exit_2(run: object) -> None:
    assert callable(run)
    result = run(SCRIPT, "--executors", "telnet")
    assert result.returncode == 2
    assert "choose from" in result.stderr
    result = run(SCRIPT, "--descriptor", "/nonexistent/cluster.toml")
    assert result.returncode == 2
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr


def test_descriptor_points_it_at_given_hosts(run: object, tmp_path: Path) -> None:
    """Real hosts are reached through a descriptor; here its hosts are on loopback."""
    reason = sshd_unavailable_reason()
    if reason:
        pytest.skip(reason)
    assert callable(run)
    with LocalSshd() as sshd, LocalAgents(2) as agents:
        path = write_local_descriptor(sshd, agents, tmp_path / "cluster.toml", name="loopback")
        out_json = tmp_path / "perf.json"
        result = run(
            SCRIPT, "--smoke", "--descriptor", str(path), "--executors", "zmq,asyncssh,ssh_mux",
            "--no-progress", "--json", str(out_json), timeout=240,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(out_json.read_text())
    assert set(report["fanout"]) == {"zmq", "asyncssh", "ssh_mux"}
    assert all(f["nodes"] == 2 for f in report["fanout"].values())
