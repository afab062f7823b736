"""`make demo` (= ./docker/simulate-cluster.sh demo) with the local backend, non-interactively.

DEMO_SECONDS=N makes the demo stop by itself; Ctrl-C (SIGINT to its process group, as a
terminal sends it) must stop it just as cleanly. Free ports and a temporary state directory
keep a user's cluster untouched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import run_in_repo

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def demo_env(tmp_path: Path, free_port: Any, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "CLUSTER_BACKEND": "local",
        "COMPOSE_PROJECT_NAME": f"zsimdemo{uuid.uuid4().hex[:8]}",
        "COORDINATOR_PORT": str(free_port()),
        "STATUS_PORT": str(free_port()),
        "MONITOR_PORT": str(free_port()),
        "CLUSTER_STATE_DIR": str(tmp_path / "state"),
        **extra,
    }


def no_live_pids(state: Path) -> bool:
    return not list(state.glob("*/*.pid"))


@pytest.fixture
def demo_env_factory(tmp_path: Path, free_port: Any) -> Iterator[Callable[..., dict[str, str]]]:
    """Environments for demo runs; whatever a failed run left behind is cleaned up after."""
    made: list[dict[str, str]] = []

    def make(**extra: str) -> dict[str, str]:
        made.append(demo_env(tmp_path, free_port, **extra))
        return made[-1]

    yield make
    for env in made:
        subprocess.run(
            [str(REPO / "docker" / "simulate-cluster.sh"), "cleanup"],
            env=env,
            capture_output=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )


def test_make_demo_runs_for_demo_seconds(
    demo_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    env = demo_env_factory(DEMO_SECONDS="3")
    done = run_in_repo(["make", "-s", "demo"], env, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "client: submitted 200, done 200" in done.stdout
    assert f"dashboard: http://localhost:{env['MONITOR_PORT']}/" in done.stdout
    assert "stopping the demo cluster" in done.stdout
    assert no_live_pids(tmp_path / "state")


def test_demo_stops_cleanly_on_ctrl_c(
    spawn: Any, demo_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    env = demo_env_factory(DEMO_SECONDS="0")
    demo = spawn("./docker/simulate-cluster.sh", "demo", env=env, python=False)
    demo.wait_for(r"press Ctrl-C to stop", timeout=120)
    os.killpg(demo.pid, signal.SIGINT)
    assert demo.wait(timeout=60) == 0, demo.output()
    assert "stopping the demo cluster" in demo.stdout()
    assert "Traceback" not in demo.output()
    assert no_live_pids(tmp_path / "state")


def test_ctrl_c_while_the_demo_pauses_between_workloads(
    spawn: Any, demo_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """Ctrl-C while the loop waits between two batches (no client.py runs then): the demo
    must still stop the cluster and exit 0, as it does when a batch is running."""
    env = demo_env_factory(DEMO_SECONDS="0")
    demo = spawn("./docker/simulate-cluster.sh", "demo", env=env, python=False)
    demo.wait_for(r"press Ctrl-C to stop", timeout=120)
    for wanted in (True, False):  # a batch starts, then it ends and the pause begins
        deadline = time.monotonic() + 30
        while client_in_group(demo.pid) != wanted:
            assert time.monotonic() < deadline, "the demo loop never reached its pause"
            time.sleep(0.02)
    os.killpg(demo.pid, signal.SIGINT)
    assert demo.wait(timeout=60) == 0, demo.output()
    assert "stopping the demo cluster" in demo.stdout()
    assert no_live_pids(tmp_path / "state")


def client_in_group(pgid: int) -> bool:
    found = subprocess.run(["pgrep", "-g", str(pgid), "-f", "client.py"], capture_output=True)
    return found.returncode == 0
