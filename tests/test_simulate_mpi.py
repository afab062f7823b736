"""`simulate-cluster.sh mpi` on both backends: the all-reduce job across the workers over their
agents, with no sshd running, and its busbw table.

Local: the agents start in the workers' network namespaces (as root, as in CI), where nothing
else listens, and stop when the job ends. Docker: sshd is stopped on every worker for the
job (port 2222 refuses connections from the coordinator) and started again afterwards.
Each skips only when its component is absent (Open MPI; a Docker engine).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TABLE_ROW = re.compile(r"^\s+(\d+)\s+\d+\s+float\s+sum\s+-1\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+0$", re.M)
SIZES = [1024, 4096, 16384, 65536, 262144, 1048576, 4194304]


def open_mpi_problem() -> str | None:
    for tool in ("mpirun", "mpicc"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install openmpi-bin libopenmpi-dev)"
    return None


def check_table(stdout: str, workers: list[str]) -> None:
    assert [int(size) for size in TABLE_ROW.findall(stdout)] == SIZES, stdout
    for rank, node in enumerate(workers):
        assert re.search(rf"#  Rank\s+{rank} Pid\s+\d+ on {node}$", stdout, re.M), stdout
    assert "# Avg bus bandwidth" in stdout
    assert f"mpi: {len(workers)} ranks on {' '.join(workers)}; avg busbw" in stdout
    assert "remote daemons through zrsh, not ssh" in stdout


def check_records(path: Path, workers: list[str]) -> None:
    records = json.loads(path.read_text())
    assert [r["metrics"]["size_bytes"] for r in records] == SIZES
    assert all(r["exit_status"] == 0 and r["nodes"] == workers for r in records)


# --- local ----------------------------------------------------------------------------------


@pytest.fixture
def local_sim(new_simulator: Any) -> Iterator[Any]:
    problem = open_mpi_problem()
    if problem:
        pytest.skip(problem)
    sim = new_simulator("local", "zsimmpi")
    yield sim
    sim("cleanup", timeout=120)
    assert sim.survivors() == []


@pytest.mark.timeout(600)
def test_local_mpi_runs_over_agents_in_the_workers_namespaces(
    local_sim: Any, tmp_path: Path
) -> None:
    never = local_sim("mpi")
    assert never.returncode == 2 and "was never started" in never.stderr
    local_sim.ok("start", "--workers", "3")
    for args, problem in (
        (["--nodes", "1"], "--nodes must be 2-3"),
        (["--nodes", "4"], "--nodes must be 2-3"),
        (["--max-bytes", "lots"], "--max-bytes takes a size"),
        (["--ranks-per-node", "9"], "--ranks-per-node must be 1-4"),
    ):
        done = local_sim("mpi", *args)
        assert done.returncode == 2 and problem in done.stderr, (args, done.stderr)
    records = tmp_path / "records.json"
    out = local_sim.ok("mpi", "--json", str(records), timeout=300)
    workers = ["worker1", "worker2", "worker3"]
    check_table(out, workers)
    check_records(records, workers)
    if os.geteuid() == 0:
        assert "mpi: no sshd: only the agents listen in worker1 worker2 worker3's namespaces" in out
    # The job's agents are gone again; the cluster itself still runs, and runs again.
    assert not [p for p in local_sim.survivors() if "zmq_node_agent" in p]
    again = local_sim.ok("mpi", "--nodes", "2", timeout=300)
    check_table(again, workers[:2])
    status = local_sim.ok("status")
    assert status.count(" alive") >= 3


@pytest.mark.timeout(600)
def test_local_mpi_ctrl_c_stops_the_job_and_its_agents(local_sim: Any) -> None:
    local_sim.ok("start", "--workers", "2")
    job = local_sim.popen("mpi", "--max-bytes", "64M")
    try:
        deadline = time.monotonic() + 180
        while sum("allreduce_bench" in p for p in local_sim.survivors()) < 2:
            assert job.poll() is None, local_sim.stderr_of(job)
            assert time.monotonic() < deadline, "the ranks never started"
            time.sleep(0.3)
        os.killpg(job.pid, signal.SIGINT)  # as a terminal's Ctrl-C does
        assert job.wait(timeout=60) == 130, local_sim.stderr_of(job)
    finally:
        if job.poll() is None:
            job.kill()
    deadline = time.monotonic() + 20
    left = ["-"]
    while left and time.monotonic() < deadline:
        left = [
            p
            for p in local_sim.survivors()
            if any(name in p for name in ("zmq_node_agent", "orted", "mpirun", "allreduce_bench"))
        ]
        time.sleep(0.3)
    assert left == [], left
    assert "stopping the MPI job's node agents" in local_sim.stderr_of(job)


# --- docker -----------------------------------------------------------------------------------


@pytest.fixture
def docker_sim(new_simulator: Any, docker_engine: None) -> Iterator[Any]:
    sim = new_simulator("docker", "zsimtest")
    yield sim
    sim("cleanup", timeout=180)


def sshd_state(sim: Any, worker: str) -> str:
    done = subprocess.run(
        ["docker", "exec", f"{sim.project}-{worker}-1", "node-entrypoint", "sshd", "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout.strip()


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_docker_mpi_runs_with_sshd_stopped_on_every_worker(docker_sim: Any, tmp_path: Path) -> None:
    docker_sim.ok("start", "--workers", "2", timeout=900)
    workers = ["worker1", "worker2"]
    assert all(sshd_state(docker_sim, w).startswith("sshd: running") for w in workers)
    records = tmp_path / "records.json"
    out = docker_sim.ok("mpi", "--json", str(records), timeout=600)
    assert "mpi: sshd stopped on worker1 worker2; port 2222 refuses connections" in out
    check_table(out, workers)
    check_records(records, workers)
    # The SSH baseline is back for `compare`: sshd runs again on every worker.
    assert all(sshd_state(docker_sim, w).startswith("sshd: running") for w in workers)
    too_many = docker_sim("mpi", "--nodes", "3")
    assert (
        too_many.returncode == 2
        and "--nodes must be 2 (the cluster has 2 workers)" in too_many.stderr
    )
