"""The Swarm backend's logic without an engine (the real swarm is in test_swarm_simulator.py).

The stack file derived from the real docker/docker-compose.yml, the CURVE secrets each role
gets, the errors for an engine that is in no swarm or only a worker of one, worker names after
a scale-down, and `scale` refused by the other backends.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cluster_simulator.backend import Topology
from cluster_simulator.config import Liveness
from cluster_simulator.roles import Roles
from cluster_simulator.swarm import SwarmInfo, Task, missing_image, require_manager
from cluster_simulator.swarm_stack import (
    HEALTH_INTERVAL_S,
    HEALTH_TOLERANCE_S,
    IMAGE_UID,
    SECRETS_DIR,
    StackPlan,
    derive_stack,
    load_compose_file,
    secret_names,
)

REPO = Path(__file__).resolve().parent.parent


def plan(curve: bool = True, workers: int = 4) -> StackPlan:
    roles = Roles(["python"], Liveness(), SECRETS_DIR if curve else None)
    return StackPlan(
        image="zmqsim-node:latest",
        workers=workers,
        coordinator=roles.coordinator("0.0.0.0", 5570, 5571),
        worker=roles.worker(None, "coordinator", 5570),
        monitor=roles.monitor("coordinator", 5571, 5572, "0.0.0.0"),
        monitor_port=15572,
        manager_node_id="abc123",
        secrets=secret_names("zmqsim") if curve else None,
    )


@pytest.fixture
def stack() -> dict[str, Any]:
    return derive_stack(load_compose_file(), plan())


def test_one_replicated_worker_service_named_by_slot(stack: dict[str, Any]) -> None:
    assert sorted(stack["services"]) == ["coordinator", "monitor", "worker"]
    worker = stack["services"]["worker"]
    assert worker["deploy"]["replicas"] == 4
    assert worker["hostname"] == "worker{{.Task.Slot}}"
    assert worker["environment"] == {"NODE_ID": "worker{{.Task.Slot}}"}
    assert worker["entrypoint"] == ["node-entrypoint", "--id-from-env"]
    assert "--id" not in worker["command"]
    assert worker["command"][:2] == ["python", "02-cluster-patterns/worker.py"]


def test_what_swarm_ignores_or_refuses_is_left_out(stack: dict[str, Any]) -> None:
    assert stack["version"] == "3.9"  # Docker CLI 20.10's `stack deploy` needs one
    for service in stack["services"].values():
        for key in ("build", "depends_on", "restart", "expose", "volumes", "container_name"):
            assert key not in service, key
        assert service["networks"] == ["cluster"]
        assert service["deploy"]["restart_policy"] == {"condition": "any", "delay": "5s"}
    assert stack["networks"] == {"cluster": {"driver": "overlay"}}


def test_the_compose_files_roles_carry_over(stack: dict[str, Any]) -> None:
    compose = load_compose_file()["services"]
    worker = stack["services"]["worker"]
    assert worker["healthcheck"]["test"] == compose["worker1"]["healthcheck"]["test"]
    assert worker["cap_add"] == ["NET_ADMIN"] and worker["init"] is True
    retries = HEALTH_TOLERANCE_S // HEALTH_INTERVAL_S
    for service in stack["services"].values():
        assert service["healthcheck"]["retries"] == retries


def test_coordinator_and_monitor_stay_on_this_manager_without_virtual_ips(
    stack: dict[str, Any],
) -> None:
    for name in ("coordinator", "monitor"):
        deploy = stack["services"][name]["deploy"]
        assert deploy["placement"] == {"constraints": ["node.id == abc123"]}
        assert deploy["endpoint_mode"] == "dnsrr"
    assert "placement" not in stack["services"]["worker"]["deploy"]
    ports = stack["services"]["monitor"]["ports"]
    assert ports == [{"target": 5572, "published": 15572, "mode": "host"}]


def test_each_role_gets_only_the_key_files_it_reads(stack: dict[str, Any]) -> None:
    def files(role: str) -> dict[str, int]:
        secrets = stack["services"][role]["secrets"]
        for secret in secrets:
            assert secret["uid"] == secret["gid"] == IMAGE_UID
        return {s["target"].removeprefix(SECRETS_DIR + "/"): s["mode"] for s in secrets}

    client = {"client.key_secret": 0o400, "coordinator.key": 0o444}
    assert files("worker") == client
    assert files("monitor") == client
    assert files("coordinator") == {
        **client,
        "coordinator.key_secret": 0o400,
        "authorized_clients/client.key": 0o444,
    }
    assert stack["services"]["coordinator"]["command"][-2:] == ["--keys", SECRETS_DIR]
    names = {spec["name"] for spec in stack["secrets"].values()}
    assert names == set(secret_names("zmqsim").values())
    assert all(spec["external"] for spec in stack["secrets"].values())


def test_curve_off_means_no_secrets_and_no_keys() -> None:
    stack = derive_stack(load_compose_file(), plan(curve=False))
    assert "secrets" not in stack
    for service in stack["services"].values():
        assert "secrets" not in service and "--keys" not in service["command"]


def test_secret_owner_is_the_images_user() -> None:
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert re.search(rf"useradd [^\n]*--uid {IMAGE_UID}\b", dockerfile)


@pytest.mark.parametrize(
    "info, message",
    [
        (SwarmInfo("inactive", "", False, 0), "docker swarm init --advertise-addr 127.0.0.1"),
        (SwarmInfo("inactive", "", False, 0), "docker swarm join-token worker"),
        (SwarmInfo("active", "n1", False, 0), "not a manager"),
        (SwarmInfo("active", "n1", False, 0), "docker node promote NODE"),
        (SwarmInfo("locked", "n1", True, 1), "docker swarm unlock"),
        (SwarmInfo("error", "", False, 0, "no route"), "swarm state is error (no route)"),
    ],
)
def test_no_swarm_or_a_worker_node_is_a_clear_usage_error(info: SwarmInfo, message: str) -> None:
    with pytest.raises(Exception) as caught:
        require_manager(info)
    assert message in str(caught.value)
    assert getattr(caught.value, "exit_code") == 2


def test_a_manager_is_accepted() -> None:
    require_manager(SwarmInfo("active", "n1", True, 3))


def test_missing_image_is_recognised_from_the_task_error() -> None:
    def task(state: str, error: str) -> Task:
        return Task("t", "worker", 2, "n1", "running", state, error, "", "")

    assert missing_image(task("rejected", "No such image: zmqsim-node:latest"))
    assert not missing_image(task("failed", "task: non-zero exit (137)"))
    assert task("running", "").node == "worker2"


def test_workers_after_a_scale_down_keep_their_slot_names() -> None:
    topology = Topology(3, (1, 2, 4))
    assert topology.worker_names() == ["worker1", "worker2", "worker4"]
    assert topology.nodes() == ["coordinator", "worker1", "worker2", "worker4", "monitor"]
    assert Topology(2).worker_names() == ["worker1", "worker2"]


def test_scale_is_refused_by_the_other_backends(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(REPO / "docker" / "simulate-cluster.sh"), "--local", "scale", "3"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "CLUSTER_STATE_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done
    assert "scale needs the Swarm backend (--swarm)" in done.stderr
    assert "start --workers 3" in done.stderr
