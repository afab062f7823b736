"""The rollback command documented in integration-plan/rollback-plan.md really rolls back.

A real sshd and three real ZeroMQ agents on loopback, one descriptor for both transports:

1. the schedules run over ZeroMQ (the state before the incident);
2. every agent is stopped (the incident) and the ZeroMQ transport now fails with exit 3;
3. the command copied from rollback-plan.md, pointed at this descriptor, runs every schedule over
   SSH and exits 0, and its journal holds the same (schedule, nodes, result line) records;
4. with ``zmq+ssh-fallback`` (phase 2) the same outage is absorbed by SSH and reported.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from cluster_runner_simulation.journal_format import scan_journal
from cluster_runner_simulation.testing import (
    LocalAgents,
    LocalSshd,
    sshd_unavailable_reason,
    write_local_descriptor,
)

REPO = Path(__file__).resolve().parent.parent
PLAN = REPO / "integration-plan" / "rollback-plan.md"


def documented_rollback_argv() -> list[str]:
    """The first command in rollback-plan.md that switches the transport to ssh."""
    for line in PLAN.read_text().splitlines():
        if line.startswith("python ") and "--transport ssh" in line:
            return shlex.split(line)
    raise AssertionError("rollback-plan.md shows no `--transport ssh` command")


def with_option(argv: list[str], option: str, value: str) -> list[str]:
    index = argv.index(option)
    return [*argv[: index + 1], value, *argv[index + 2 :]]


def records(journal: Path) -> set[tuple[str, str, str]]:
    return {
        (e.body["schedule"], "+".join(e.body["nodes"]), e.body["result_line"])
        for e in scan_journal(journal).entries
    }


def test_documented_rollback_command_works(run: Any, tmp_path: Path) -> None:
    reason = sshd_unavailable_reason()
    if reason:
        pytest.skip(f"needs a local sshd: {reason}")
    argv = documented_rollback_argv()
    assert argv[1] == "03-cluster-runner-simulation/run_schedules.py"
    with LocalSshd() as sshd, LocalAgents(3) as agents:
        descriptor = write_local_descriptor(sshd, agents, tmp_path / "cluster.toml", "rollback")

        base = with_option(argv[1:], "--descriptor", str(descriptor))
        zmq_journal = tmp_path / "zmq.jsonl"
        before = run(
            *with_option(with_option(base, "--transport", "zmq"), "--journal", str(zmq_journal)),
            timeout=120,
        )
        assert before.returncode == 0, before.stdout + before.stderr

        for index in range(len(agents.agents)):
            agents.stop_one(index)  # the incident: every ZeroMQ agent is gone (keys stay)
        broken = run(
            *with_option(
                with_option(base, "--transport", "zmq"), "--journal", str(tmp_path / "broken.jsonl")
            ),
            timeout=120,
        )
        assert broken.returncode == 3, broken.stdout + broken.stderr

        ssh_journal = tmp_path / "ssh.jsonl"
        rolled_back = run(*with_option(base, "--journal", str(ssh_journal)), timeout=180)
        assert rolled_back.returncode == 0, rolled_back.stdout + rolled_back.stderr
        assert re.search(r"results journaled to .* 0 failed", rolled_back.stdout)
        assert records(ssh_journal) == records(zmq_journal)

        fallback = run(
            *with_option(
                with_option(base, "--transport", "zmq+ssh-fallback"),
                "--journal",
                str(tmp_path / "fb.jsonl"),
            ),
            timeout=180,
        )
        assert fallback.returncode == 0, fallback.stdout + fallback.stderr
        assert re.search(r"ssh fallbacks: \{.+\}", fallback.stdout), fallback.stdout
