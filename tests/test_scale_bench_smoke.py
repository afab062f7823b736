"""scale_bench.py runs end to end at the smallest sizes and writes its JSON, table and plot.

Not a benchmark: it proves the script still works (real coordinator and worker processes,
the heartbeat emulator, real agents and a real sshd on loopback). The published figures
come from a full run (docs/scaling.md), never from a test; nothing here is timed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster_runner_simulation.testing import sshd_unavailable_reason

SCRIPT = "docker/simulator/scale_bench.py"


def test_smallest_run_writes_every_part_with_no_false_verdicts(run: object, tmp_path: Path) -> None:
    reason = sshd_unavailable_reason()
    if reason:
        pytest.skip(reason)
    assert callable(run)
    result = run(
        SCRIPT, "--quick", "--sizes", "4", "--emulated-sizes", "32", "--kills", "2",
        "--out", str(tmp_path), "--no-progress",
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "scale-bench.json").read_text())
    [cluster] = report["cluster"]
    assert cluster["workers"] == 4 and cluster["tasks_per_s"] > 0
    assert len(cluster["detection_s"]) + cluster["missed_verdicts"] == 2
    assert cluster["false_dead_start"] == cluster["false_dead_idle"] == 0
    [emulated] = report["emulated"]
    assert emulated["registered"] == 32 and emulated["false_dead"] == 0
    [agents] = report["agents"]
    assert agents["nodes"] == 4 and agents["zmq_ms"] > 0 and agents["asyncssh_ms"] > 0
    assert "| 4 |" in (tmp_path / "scale-bench.md").read_text()
    assert (tmp_path / "scale-bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--sizes", "4,many"], "many"),
        (["--sizes", "0"], "'0'"),
        (["--parts", "cluster,disks"], "disks"),
        (["--kills", "-1"], "-1"),
    ],
)
def test_bad_arguments_are_usage_errors(run: object, argv: list[str], named: str) -> None:
    assert callable(run)
    result = run(SCRIPT, *argv, timeout=60)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr
