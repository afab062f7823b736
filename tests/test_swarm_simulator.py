"""docker/simulate-cluster.sh --swarm on a real single-node Docker Swarm, driven as a user would.

One test walks the story in order, so the image is built once: the error without a swarm
(when this engine is in none, as in CI), `docker swarm init --advertise-addr 127.0.0.1`, the
Compose file deployed by hand with `docker stack deploy -c docker/docker-compose.yml` (the
same file Compose runs), an image that is missing on the node, then the simulator's stack:
start, status (CURVE keys as Docker secrets, each role holding only its own), scale up and
down with the monitor's view, the `test` scenario's invariants, fail/recover, partition/heal
on the overlay network, logs, stop, cleanup; afterwards nothing of the project is left.
A swarm this test created is left again at the end (`docker swarm leave --force`); one that
was there before stays. Skips (with the reason) only when no Docker engine answers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster_patterns import defaults

REPO = Path(__file__).resolve().parent.parent
STACK_LABEL = "com.docker.stack.namespace"
# docs/cluster-simulation.md (ADR 2): a killed or cut-off worker is reported dead within
# interval * (liveness + 1) of the fault, on Swarm as anywhere.
DETECTION_BOUND_S = defaults.HEARTBEAT_INTERVAL_S * (defaults.LIVENESS + 1)
BY_HAND_TIMEOUT_S = 120

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]


def run(*argv: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


def swarm_state() -> str:
    return run("docker", "info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()


class SwarmEngine:
    """Puts this engine into a one-node swarm if it is in none, and remembers that it did."""

    def __init__(self) -> None:
        self.was_inactive = swarm_state() == "inactive"
        self.created = False

    def ensure(self) -> None:
        if swarm_state() == "inactive":
            done = run("docker", "swarm", "init", "--advertise-addr", "127.0.0.1")
            assert done.returncode == 0, done.stderr
            self.created = True

    def leave_if_created(self) -> None:
        if self.created:
            run("docker", "swarm", "leave", "--force")


@pytest.fixture
def engine() -> Iterator[SwarmEngine]:
    if shutil.which("docker") is None:
        pytest.skip("the Swarm backend needs Docker: the docker command is not installed")
    if run("docker", "info").returncode != 0:
        pytest.skip("the Swarm backend needs a Docker engine: `docker info` fails")
    swarm_engine = SwarmEngine()
    yield swarm_engine
    swarm_engine.leave_if_created()


@pytest.fixture
def sim(engine: SwarmEngine, new_simulator: Any, node_image_layers: None) -> Iterator[Any]:
    simulator = new_simulator("swarm", "zsimswarm")
    yield simulator
    if swarm_state() == "active":
        simulator("cleanup", timeout=300)


def seconds_in(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return float(match.group(1))


def alive_workers(sim: Any) -> set[str]:
    nodes = sim.cluster()["nodes"]
    return {str(n["id"]) for n in nodes if n["state"] == "alive"}


def leftovers(project: str) -> str:
    label = f"label={STACK_LABEL}={project}"
    found = [
        run("docker", "service", "ls", "-q", "--filter", label).stdout,
        run("docker", "ps", "-aq", "--filter", label).stdout,
        run("docker", "network", "ls", "-q", "--filter", label).stdout,
        run(
            "docker", "secret", "ls", "-q", "--filter", f"label=com.zmqsim.project={project}"
        ).stdout,
        run("docker", "images", "-q", "--filter", f"label=com.zmqsim.project={project}").stdout,
    ]
    return "".join(found).strip()


def docker_cli_major() -> int:
    version = run("docker", "version", "--format", "{{.Client.Version}}").stdout.strip()
    match = re.match(r"(\d+)\.", version)
    return int(match.group(1)) if match else 0


def deploy_compose_file_by_hand(sim: Any) -> None:
    """The Compose file itself, with `docker stack deploy`: every service converges (the
    healthchecks pass, so workers reach the coordinator over CURVE) and the keys task ends.
    A Docker CLI before 23 needs a `version:` key, which the file has not (Compose v2 would
    warn about it): there the documented refusal is what the test sees."""
    stack = f"{sim.project}hand"
    env = {**sim.env, "CLUSTER_IMAGE": f"{sim.project}-node:latest"}
    compose_file = str(REPO / "docker" / "docker-compose.yml")
    deploy = ["docker", "stack", "deploy", "--resolve-image", "never", "-c", compose_file, stack]
    done = run(*deploy, env=env)
    if docker_cli_major() < 23:
        assert done.returncode != 0 and "unsupported Compose file version" in done.stderr, done
        return
    assert done.returncode == 0, done.stderr
    try:
        deadline = time.monotonic() + BY_HAND_TIMEOUT_S
        expected = {"coordinator": "1/1", "worker1": "1/1", "worker2": "1/1", "worker3": "1/1"}
        expected["monitor"] = "1/1"
        replicas: dict[str, str] = {}
        while time.monotonic() < deadline:
            listing = run(
                "docker",
                "service",
                "ls",
                "--filter",
                f"label={STACK_LABEL}={stack}",
                "--format",
                "{{.Name}} {{.Replicas}}",
            ).stdout
            replicas = dict(line.split()[:2] for line in listing.splitlines() if " " in line)
            replicas = {name.removeprefix(f"{stack}_"): count for name, count in replicas.items()}
            if all(replicas.get(name, "").startswith(count) for name, count in expected.items()):
                break
            time.sleep(1)
        assert all(replicas.get(n, "").startswith(c) for n, c in expected.items()), replicas
        logs = run("docker", "service", "logs", f"{stack}_coordinator").stdout
        assert "(CURVE, 1 authorized key(s))" in logs, logs
        keys = run("docker", "service", "ps", f"{stack}_keys", "--format", "{{.CurrentState}}")
        assert keys.stdout.startswith("Complete"), keys.stdout
    finally:
        run("docker", "stack", "rm", stack)
        deadline = time.monotonic() + 60
        label = f"label={STACK_LABEL}={stack}"
        while time.monotonic() < deadline and (
            run("docker", "ps", "-aq", "--filter", label).stdout.strip()
            or run("docker", "network", "ls", "-q", "--filter", label).stdout.strip()
        ):
            time.sleep(0.5)
        run("docker", "volume", "rm", f"{stack}_keys")


def assert_secrets_per_role(sim: Any) -> None:
    """CURVE keys as Docker secrets: 0400 and owned by the image's user; a worker holds no
    coordinator secret, and nothing is in the image."""
    workers = run(
        "docker",
        "ps",
        "-q",
        "--filter",
        f"label=com.docker.swarm.service.name={sim.project}_worker",
    ).stdout.split()
    assert workers, "no worker container"
    inside = run("docker", "exec", workers[0], "find", "/run/secrets/curve", "-type", "f")
    assert sorted(inside.stdout.split()) == [
        "/run/secrets/curve/client.key_secret",
        "/run/secrets/curve/coordinator.key",
    ], inside.stdout
    mode = run(
        "docker", "exec", workers[0], "stat", "-c", "%a %u", "/run/secrets/curve/client.key_secret"
    )
    assert mode.stdout.split() == ["400", "10001"], mode.stdout
    baked = run(
        "docker",
        "run",
        "--rm",
        "--entrypoint",
        "ls",
        f"{sim.project}-node:latest",
        "-A",
        "/run/secrets",
    )
    assert baked.stdout.strip() == "", f"secrets in the image: {baked.stdout}"


def test_swarm_cluster_user_story(engine: SwarmEngine, sim: Any, tmp_path: Path) -> None:
    if engine.was_inactive:
        refused = sim("start")
        assert refused.returncode == 2, refused
        assert "not part of a swarm" in refused.stderr, refused.stderr
        assert "docker swarm init --advertise-addr 127.0.0.1" in refused.stderr
    engine.ensure()

    sim.ok("build", timeout=900)
    deploy_compose_file_by_hand(sim)

    missing_env = {**sim.env, "CLUSTER_IMAGE": f"{sim.project}-absent:none"}
    missing = subprocess.run(
        [str(REPO / "docker" / "simulate-cluster.sh"), "--swarm", "start", "--workers", "2"],
        cwd=REPO,
        env=missing_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 1, missing
    assert f"image {sim.project}-absent:none is missing on swarm node" in missing.stderr
    assert "CLUSTER_IMAGE=REGISTRY/NAME:TAG" in missing.stderr
    assert "stopping what this run started" in missing.stderr
    assert (
        run(
            "docker", "service", "ls", "-q", "--filter", f"label={STACK_LABEL}={sim.project}"
        ).stdout
        == ""
    )

    out = sim.ok("start", timeout=300)
    assert "cluster ready: 3 workers alive" in out, out
    status = sim.ok("status")
    assert "CURVE on 5570/5571 (keys as Docker secrets)" in status, status
    for node in ("coordinator", "worker1", "worker2", "worker3", "monitor"):
        assert re.search(rf"^{node}\s+running\s+healthy @", status, re.M), status
    assert re.search(r"^worker3\s.*\balive$", status, re.M), status
    assert_secrets_per_role(sim)

    out = sim.ok("scale", "5")
    assert "monitor: worker4 joined" in out and "monitor: worker5 joined" in out, out
    assert {"worker1", "worker2", "worker3", "worker4", "worker5"} <= alive_workers(sim)
    out = sim.ok("scale", "3")
    assert "5 workers alive" not in out and "3 workers alive" in out, out
    left = set(re.findall(r"monitor: (worker\d) left", out))
    assert len(left) == 2 and alive_workers(sim).isdisjoint(left), out

    out, steps = sim.scenario_steps(tmp_path / "figures.json", timeout=600)
    assert 0 < steps["fail worker1"]["figure_s"] <= DETECTION_BOUND_S
    assert 0 < steps["partition worker2"]["figure_s"] <= DETECTION_BOUND_S
    assert "all invariants hold" in out

    out = sim.ok("fail", "worker3")
    assert seconds_in(r"worker3 dead after ([\d.]+) s", out) <= DETECTION_BOUND_S
    out = sim.ok("recover", "worker3")
    assert "worker3 alive after" in out and sim.node_state("worker3") == "alive"

    sim.ok("partition", "worker2")
    assert sim.node_state("worker2") == "dead"
    assert re.search(r"^worker2\s+running,partitioned", sim.ok("status"), re.M)
    sim.ok("heal", "worker2")
    assert sim.node_state("worker2") == "alive"

    bad = sim("fail", "worker9")
    assert bad.returncode == 2 and "valid nodes: coordinator worker1" in bad.stderr, bad
    too_many = sim("scale", "65")
    assert too_many.returncode == 2 and "1 to 64" in too_many.stderr, too_many
    assert "ready" in sim.ok("logs", "monitor")
    assert "registered" in sim.ok("logs", "worker1")

    sim.ok("stop", timeout=300)
    assert sim("status").returncode == 2
    sim.ok("cleanup", timeout=300)
    assert leftovers(sim.project) == "", "cleanup left services, containers, secrets or images"
    assert sim.survivors() == []
