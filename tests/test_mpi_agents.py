"""The real MPI job over real agents and the real zrsh, with no sshd anywhere.

run_mpi.py --local and run_schedules.py --mpi start agents on loopback only (no sshd), so
Open MPI can start its daemons through nothing but zrsh. Every process the job starts inherits
a marker variable from the agents, so a test can prove that none outlives it. Skips only when
Open MPI (mpirun, mpicc) is absent; CI installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from cluster_runner_simulation.agent_keys import generate_keys
from cluster_runner_simulation.journal_format import scan_journal
from cluster_runner_simulation.mpi_repeat import threshold
from cluster_runner_simulation.testing import sshd_unavailable_reason

REPO = Path(__file__).resolve().parent.parent
RUN_MPI = "03-cluster-runner-simulation/run_mpi.py"
RUN_SCHEDULES = "03-cluster-runner-simulation/run_schedules.py"
SMALL = ["--max-bytes", "64K"]
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def open_mpi() -> None:
    for tool in ("mpirun", "mpicc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found (apt-get install openmpi-bin libopenmpi-dev)")


@pytest.fixture
def marker() -> str:
    return uuid.uuid4().hex


def marked(marker: str) -> list[str]:
    """Live processes that inherited MPI_TEST_MARKER=marker: agents, mpirun, orted, ranks."""
    found = []
    for proc in psutil.process_iter(["name", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("MPI_TEST_MARKER") == marker:
                found.append(f"{proc.pid} {proc.info['name']}")
        except (psutil.Error, OSError):
            continue
    return found


def wait_until_gone(marker: str, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while marked(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marked(marker) == [], "processes of the job outlived it"


def run_marked(marker: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-u", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "MPI_TEST_MARKER": marker},
        stdin=subprocess.DEVNULL,
    )


def dead_descriptor(tmp_path: Path, nodes: tuple[str, ...], free_port: Any) -> Path:
    """A descriptor whose nodes have real keys but no agent: every port is a dead one."""
    keys = tmp_path / "keys"
    generate_keys(keys)
    path = tmp_path / "dead.toml"
    path.write_text(
        "".join(
            f'[[nodes]]\nid = "{node}"\nhost = "127.0.0.1"\nzmq_port = {free_port()}\n'
            f'curve_keys_dir = "{keys}"\n'
            for node in nodes
        )
    )
    return path


def test_the_job_runs_across_two_agents_through_zrsh(tmp_path: Path, marker: str) -> None:
    records = tmp_path / "records.json"
    done = run_marked(marker, RUN_MPI, "--local", "2", *SMALL, "--json", str(records))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "local cluster: 2 agents on 127.0.0.1, no sshd" in done.stdout
    assert "remote daemons through zrsh, not ssh" in done.stdout
    assert (
        "#  Rank  0 Pid" in done.stdout and "on node0" in done.stdout and "on node1" in done.stdout
    )
    assert "# Avg bus bandwidth" in done.stdout
    assert "mpi: 2 ranks on node0 node1; avg busbw" in done.stdout
    bodies = json.loads(records.read_text())
    assert [b["metrics"]["size_bytes"] for b in bodies] == [1024, 4096, 16384, 65536]
    assert all(b["exit_status"] == 0 and b["test"] == "mpi_allreduce" for b in bodies)
    assert all(b["extra"]["rank_nodes"] == ["node0", "node1"] for b in bodies)
    wait_until_gone(marker)


def test_a_daemon_zrsh_cannot_start_fails_the_job_with_the_reason(
    tmp_path: Path, marker: str, free_port: Any
) -> None:
    # mpirun's own node answers; the descriptor zrsh reads sends node1 to a dead port.
    wrong = dead_descriptor(tmp_path, ("node0", "node1"), free_port)
    args = ["--local", "2", *SMALL, "--launcher-descriptor", str(wrong), "--timeout", "60"]
    done = run_marked(marker, RUN_MPI, *args)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "mpi: FAILED after" in done.stderr and "zrsh: " in done.stderr
    assert "Traceback" not in done.stderr
    wait_until_gone(marker)


def test_ctrl_c_cancels_the_job_on_every_node(marker: str) -> None:
    argv = [sys.executable, "-u", RUN_MPI, "--local", "2", "--max-bytes", "16M", "--iters", "500"]
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env={**os.environ, "MPI_TEST_MARKER": marker},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while sum(" allreduce_bench" in p for p in marked(marker)) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the ranks never started"
            time.sleep(0.2)
        assert any(" orted" in p for p in marked(marker))  # the daemons zrsh started
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "run_mpi: interrupted" in err and "Traceback" not in err
    wait_until_gone(marker)


def test_bad_arguments_exit_2_and_unreachable_nodes_exit_3(
    tmp_path: Path, run: Any, free_port: Any
) -> None:
    for args, problem in (
        (["--local", "1"], "--local must be 2-8"),
        (["--local", "2", "--nodes", "node0"], "at least two nodes"),
        (["--local", "2", "--nodes", "node0,node0"], "names a node twice"),
        (["--local", "2", "--max-bytes", "4 MB"], "byte count"),
        (["--local", "2", "--ranks-per-node", "0"], "ranks_per_node"),
    ):
        done = run(RUN_MPI, *args)
        assert done.returncode == 2 and problem in done.stderr, (args, done.stderr)
    gone = dead_descriptor(tmp_path, ("a", "b"), free_port)
    unknown = run(RUN_MPI, "--descriptor", str(gone), "--nodes", "a,zz")
    assert unknown.returncode == 2 and "unknown node(s) zz" in unknown.stderr
    down = run(RUN_MPI, "--descriptor", str(gone), timeout=60)
    assert down.returncode == 3 and "2 node(s) unreachable: a:" in down.stderr
    assert "Traceback" not in down.stderr


def test_the_pairs_schedule_journals_every_result_line(tmp_path: Path, marker: str) -> None:
    journal = tmp_path / "j.jsonl"
    args = ["--local", "4", "--transport", "zmq", "--schedule", "pairs", "--mpi"]
    done = run_marked(marker, RUN_SCHEDULES, *args, "--journal", str(journal))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "local cluster: 4 agents, no sshd (--mpi)" in done.stdout
    assert "schedule pairs     2 groups, 2 ok, 0 failed" in done.stdout
    assert "(MPI all-reduce over zrsh, 14 result lines)" in done.stdout
    bodies = [entry.body for entry in scan_journal(journal).entries]
    assert len(bodies) == 14 and len({b["record_id"] for b in bodies}) == 14
    pairs = {tuple(b["nodes"]) for b in bodies}
    assert pairs == {("node0", "node1"), ("node2", "node3")}  # one node of each leaf
    for body in bodies:
        assert body["schedule"] == "pairs" and body["test"] == "mpi_allreduce"
        assert body["exit_status"] == 0 and body["metrics"]["wrong"] == 0
        assert body["result_line"].split()[0] == str(int(body["metrics"]["size_bytes"]))
        assert body["extra"]["rank_nodes"] == body["nodes"]
        assert body["extra"]["launcher"].endswith("zrsh")
    wrong = subprocess.run(
        [sys.executable, RUN_SCHEDULES, "--local", "2", "--transport", "ssh", "--mpi"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 2 and "--mpi runs over the agents" in wrong.stderr
    wait_until_gone(marker)


def test_mpi_repeat_measures_both_launchers_and_derives_the_thresholds(
    tmp_path: Path, marker: str
) -> None:
    """The benchmark script, smoke-sized: two runs per launcher, SSH and the agents."""
    if sshd_unavailable_reason():
        pytest.skip(f"mpi_repeat.py needs sshd: {sshd_unavailable_reason()}")
    out = tmp_path / "repeat.json"
    args = ["--runs", "2", "--iters", "1", "--max-bytes", "1M", "--json", str(out)]
    done = run_marked(marker, "03-cluster-runner-simulation/mpi_repeat.py", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(out.read_text())["summary"]
    assert [row["size_bytes"] for row in summary["sizes"]][-1] == 1 << 20
    assert summary["runs_per_launcher"] == 2 and summary["derived_tolerance_pct"] >= 5
    assert "derived gate on the medians" in done.stdout
    wait_until_gone(marker)


@pytest.mark.parametrize(
    "worst, derived", [(0.0, 5), (0.02, 5), (0.034, 10), (0.10, 15), (0.746, 115)]
)
def test_thresholds_are_one_and_a_half_the_worst_rounded_up_to_5(
    worst: float, derived: int
) -> None:
    assert threshold(worst) == derived
