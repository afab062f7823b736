"""run_schedules.py, the transport switch CLI: a local run end to end, and every exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cluster_runner_simulation.journal_format import scan_journal
from cluster_runner_simulation.testing import sshd_unavailable_reason

SCRIPT = "03-cluster-runner-simulation/run_schedules.py"


def descriptor(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return str(path)


def test_local_cluster_over_zmq_journals_through_a_collector(tmp_path: Path, run: Any) -> None:
    reason = sshd_unavailable_reason()
    if reason:
        pytest.skip(f"--local needs sshd: {reason}")
    journal = tmp_path / "j.jsonl"
    args = ["--local", "2", "--transport", "zmq", "--schedule", "all", "--journal", str(journal)]
    proc = run(SCRIPT, *args, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "schedule all       2 groups, 2 ok, 0 failed" in proc.stdout
    assert "2 results journaled to collector tcp://127.0.0.1:" in proc.stdout
    bodies = [e.body for e in scan_journal(journal).entries]
    assert sorted(b["nodes"][0] for b in bodies) == ["node0", "node1"]
    assert all(b["exit_status"] == 0 and "float     sum" in b["result_line"] for b in bodies)


def test_usage_errors_exit_2(tmp_path: Path, run: Any) -> None:
    neither = run(SCRIPT, "--transport", "zmq")
    assert neither.returncode == 2 and "one of the arguments --descriptor --local" in neither.stderr
    bad_transport = run(SCRIPT, "--local", "2", "--transport", "carrier-pigeon")
    assert bad_transport.returncode == 2 and "invalid choice" in bad_transport.stderr
    too_many = run(SCRIPT, "--local", "0")
    assert too_many.returncode == 2 and "--local must be 1-64" in too_many.stderr


def test_descriptor_errors_exit_2_naming_the_field(tmp_path: Path, run: Any) -> None:
    bad = descriptor(tmp_path, '[[nodes]]\nid = "a"\nhost = "h"\nzmq_port = 0\n')
    proc = run(SCRIPT, "--descriptor", bad)
    assert proc.returncode == 2
    assert "nodes[0].zmq_port: must be an integer 1-65535" in proc.stderr
    good = descriptor(tmp_path, '[[nodes]]\nid = "a"\nhost = "127.0.0.1"\n')
    unknown = run(SCRIPT, "--descriptor", good, "--nodes", "a,zz")
    assert unknown.returncode == 2 and "unknown node(s) zz; valid nodes: a" in unknown.stderr


def test_unreachable_nodes_exit_3_naming_them(tmp_path: Path, run: Any, free_port: Any) -> None:
    text = f'[[nodes]]\nid = "gone"\nhost = "127.0.0.1"\nssh_port = {free_port()}\n'
    proc = run(SCRIPT, "--descriptor", descriptor(tmp_path, text), "--transport", "ssh")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "ssh context: 1 node(s) unreachable: gone:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_shadow_mirrors_every_command_to_the_other_transport(tmp_path: Path, run: Any) -> None:
    reason = sshd_unavailable_reason()
    if reason:
        pytest.skip(f"--local needs sshd: {reason}")
    args = ["--local", "2", "--transport", "ssh", "--shadow", "--schedule", "all"]
    proc = run(SCRIPT, *args, "--journal", str(tmp_path / "j.jsonl"), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "shadow: 2 commands compared, 0 mismatched, 0 failed on the shadow side" in proc.stdout
    assert "in-process, fsync per record" in proc.stdout  # ssh keeps today's journal
    wrong = run(SCRIPT, "--local", "2", "--transport", "zmq+ssh-fallback", "--shadow")
    assert wrong.returncode == 2 and "--shadow needs --transport zmq or ssh" in wrong.stderr
