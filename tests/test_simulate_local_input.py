"""Bad input to docker/simulate-cluster.sh: a clear one-line reason and exit code 2.

None of these start a cluster: unknown command, a cluster that was never started (both
backends), a missing Docker engine, bad numbers, a bad project name; `help` exits 0.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import run_in_repo

REPO = Path(__file__).resolve().parent.parent
SIM = REPO / "docker" / "simulate-cluster.sh"


def run(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": "zsimnever",
        "CLUSTER_STATE_DIR": str(tmp_path / "state"),
        **env,
    }
    return run_in_repo([str(SIM), *args], full_env, timeout=60)


def test_help_lists_every_command(tmp_path: Path) -> None:
    done = run("help", tmp_path=tmp_path)
    assert done.returncode == 0
    for command in (
        "build", "start [--workers N]", "stop", "status", "cleanup", "logs [SERVICE]", "test",
        "fail NODE", "recover NODE", "partition NODE", "heal NODE", "pause NODE",
        "resume NODE", "slow NODE MS", "flaky NODE PERCENT", "fast NODE", "demo", "compare",
    ):  # fmt: skip
        assert command in done.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "Usage:"),
        (["explode"], "unknown command 'explode'"),
        (["--local", "status"], "was never started (local backend)"),
        (["--local", "fail", "worker1"], "was never started"),
        (["--local", "start", "--workers", "0"], "--workers needs a number from 1 to 9"),
        (["--local", "start", "--workers", "many"], "--workers needs a number"),
        (["--local", "start", "--color"], "unknown option '--color'"),
        (["--local", "-p", "Upper", "status"], "project name 'Upper'"),
        (["--local", "test", "--tasks", "lots"], "--tasks needs a positive number"),
        (["--local", "workload", "--kind", "nap"], "--kind is echo|sleep|cpu|fail"),
        (["--local", "compare"], "compare needs the Docker backend"),
    ],
)
def test_bad_input_exits_2(args: list[str], message: str, tmp_path: Path) -> None:
    done = run(*args, tmp_path=tmp_path)
    assert done.returncode == 2, done
    assert message in done.stderr + done.stdout


def test_missing_engine_points_to_local_backend(tmp_path: Path) -> None:
    missing = f"unix://{tmp_path}/no-docker.sock"
    done = run("--docker", "start", tmp_path=tmp_path, DOCKER_HOST=missing)
    assert done.returncode == 2
    assert "no Docker engine answers" in done.stderr and "--local" in done.stderr


def test_auto_backend_without_engine_falls_back_to_local(tmp_path: Path) -> None:
    missing = f"unix://{tmp_path}/no-docker.sock"
    done = run("status", tmp_path=tmp_path, DOCKER_HOST=missing, CLUSTER_BACKEND="auto")
    assert done.returncode == 2 and "(local backend)" in done.stderr


def test_docker_cluster_never_started(tmp_path: Path) -> None:
    probe = subprocess.run(["docker", "info"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip("no Docker engine answers `docker info`")
    done = run("--docker", "recover", "worker1", tmp_path=tmp_path)
    assert done.returncode == 2 and "was never started (docker backend)" in done.stderr
