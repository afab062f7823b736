"""The Swarm stack file, derived from docker/docker-compose.yml, and the CURVE keys as secrets.

Compose runs the same file; from it come the roles' healthchecks, init, capabilities and
grace periods. What Swarm needs on top:

- one replicated `worker` service instead of worker1..3, so that `scale N` is
  `docker service scale`; each task is named by its slot (hostname and NODE_ID
  `worker{{.Task.Slot}}`, and node-entrypoint --id-from-env passes it as --id);
- the coordinator's CURVE keys as Docker secrets instead of the per-host `keys` volume, so
  every swarm node gets them; each role gets only the files it reads (a worker never holds
  the coordinator's secret key);
- coordinator and monitor pinned to this manager (the simulator runs the client in the
  coordinator's container and reads the monitor on 127.0.0.1), both reached by their task's
  own address (endpoint_mode dnsrr: no IPVS virtual IP), the dashboard published in `host`
  mode on this node;
- a restart policy: Swarm replaces a task that dies after RESTART_DELAY_S, and one that
  fails its healthcheck for HEALTH_TOLERANCE_S (a partition, a pause, a starved machine).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from cluster_patterns import curve, defaults
from cluster_simulator.compose import COMPOSE_FILE
from cluster_simulator.containers import IMAGE_LABEL, docker
from cluster_simulator.output import SimError
from cluster_simulator.swarm import ROLES, WORKER_SERVICE

# What `docker stack deploy` of Docker CLI 20.10 needs to read the file; later ones ignore it.
STACK_VERSION: Final = "3.9"
NETWORK: Final = "cluster"
RESTART_DELAY_S: Final = 5
HEALTH_INTERVAL_S: Final = 2
HEALTH_TOLERANCE_S: Final = 60
# Where a task finds the CURVE keys, in the layout of `curve.py generate DIR --server coordinator`.
SECRETS_DIR: Final = "/run/secrets/curve"
# The image's user `cluster` (docker/Dockerfile, useradd --uid 10001), owner of the secrets.
IMAGE_UID: Final = "10001"
SECRET_MODE: Final = 0o400
PUBLIC_MODE: Final = 0o444
# Key file (relative to the keys directory) -> the roles that read it. The client runs in the
# coordinator's container, so the coordinator also gets the client's keys.
CURVE_FILES: Final[dict[str, tuple[str, ...]]] = {
    "coordinator.key_secret": ("coordinator",),
    f"{curve.AUTHORIZED_DIR}/{curve.CLIENT_NAME}.key": ("coordinator",),
    f"{curve.CLIENT_NAME}.key_secret": ROLES,
    "coordinator.key": ROLES,
}
# Service keys of docker-compose.yml that Swarm honours and the stack keeps as they are.
CARRIED: Final = ("init", "cap_add", "healthcheck", "stop_grace_period")


# --- the stack file ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StackPlan:
    """What one deployment needs: the image, the roles' command lines, and where things go."""

    image: str
    workers: int
    coordinator: list[str]
    worker: list[str]  # without --id: node-entrypoint adds the task's own
    monitor: list[str]
    monitor_port: int
    manager_node_id: str
    secrets: Mapping[str, str] | None  # key file -> Docker secret name; None: CURVE off


def load_compose_file(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """docker-compose.yml as data, its anchors and `<<` merges resolved."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SimError(f"cannot read {path}: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("services"), dict):
        raise SimError(f"{path} has no services")
    return document


def secret_key(path: str) -> str:
    """The stack's name for a key file's secret: coordinator.key_secret -> curve_coordinator_
    key_secret."""
    return "curve_" + path.replace("/", "_").replace(".", "_")


def _secrets_for(role: str, plan: StackPlan) -> list[dict[str, Any]]:
    if plan.secrets is None:
        return []
    return [
        {
            "source": secret_key(path),
            "target": f"{SECRETS_DIR}/{path}",
            "uid": IMAGE_UID,
            "gid": IMAGE_UID,
            "mode": SECRET_MODE if path.endswith("_secret") else PUBLIC_MODE,
        }
        for path, roles in CURVE_FILES.items()
        if role in roles
    ]


def _deploy(base: Mapping[str, Any], pinned: str | None) -> dict[str, Any]:
    deploy: dict[str, Any] = dict(base.get("deploy") or {})
    deploy["restart_policy"] = {"condition": "any", "delay": f"{RESTART_DELAY_S}s"}
    if pinned:
        deploy["placement"] = {"constraints": [f"node.id == {pinned}"]}
    return deploy


def _service(base: Mapping[str, Any], role: str, plan: StackPlan) -> dict[str, Any]:
    service = {key: base[key] for key in CARRIED if key in base}
    service.update(image=plan.image, networks=[NETWORK], entrypoint=["node-entrypoint"])
    if "test" in service.get("healthcheck", {}):
        # Swarm replaces a task whose healthcheck fails `retries` times in a row: let a node
        # be cut off, paused or starved (a loaded machine) this long before that happens.
        service["healthcheck"] = {
            **service["healthcheck"],
            "interval": f"{HEALTH_INTERVAL_S}s",
            "retries": HEALTH_TOLERANCE_S // HEALTH_INTERVAL_S,
        }
    secrets = _secrets_for(role, plan)
    if secrets:
        service["secrets"] = secrets
    return service


def derive_stack(compose: Mapping[str, Any], plan: StackPlan) -> dict[str, Any]:
    """The stack file for ``plan``, from docker-compose.yml's definitions of the roles."""
    services = compose["services"]
    missing = [name for name in ("coordinator", "worker1", "monitor") if name not in services]
    if missing:
        raise SimError(f"{COMPOSE_FILE} lacks the service(s) {', '.join(missing)}")
    coordinator = _service(services["coordinator"], "coordinator", plan)
    coordinator.update(
        command=plan.coordinator, deploy=_deploy(services["coordinator"], plan.manager_node_id)
    )
    monitor = _service(services["monitor"], "monitor", plan)
    monitor_deploy = _deploy(services["monitor"], plan.manager_node_id)
    monitor_deploy["endpoint_mode"] = "dnsrr"  # published in host mode, no virtual IP needed
    published = {"target": defaults.MONITOR_PORT, "published": plan.monitor_port, "mode": "host"}
    monitor.update(command=plan.monitor, deploy=monitor_deploy, ports=[published])
    worker = _service(services["worker1"], WORKER_SERVICE, plan)
    slot = "worker{{.Task.Slot}}"
    worker_deploy = _deploy(services["worker1"], None)
    worker_deploy["replicas"] = plan.workers
    worker.update(
        hostname=slot,
        environment={"NODE_ID": slot},
        entrypoint=["node-entrypoint", "--id-from-env"],
        command=plan.worker,
        deploy=worker_deploy,
    )
    stack: dict[str, Any] = {
        "version": STACK_VERSION,
        "services": {"coordinator": coordinator, WORKER_SERVICE: worker, "monitor": monitor},
        "networks": {NETWORK: {"driver": "overlay"}},
    }
    if plan.secrets is not None:
        stack["secrets"] = {
            secret_key(path): {"external": True, "name": name}
            for path, name in plan.secrets.items()
        }
    return stack


# --- the CURVE keys as Docker secrets ---------------------------------------------------------


def secret_names(project: str) -> dict[str, str]:
    """Key file -> the Docker secret that holds it for this project."""
    return {path: f"{project}_{secret_key(path)}" for path in CURVE_FILES}


def ensure_secrets(project: str) -> dict[str, str]:
    """The project's CURVE secrets, made once (like the Compose cluster's `keys` volume): the
    keys are generated in a private temporary directory here, stored in the swarm's
    encrypted raft log, and the files deleted."""
    names = secret_names(project)
    listing = docker(
        "secret", "ls", "--filter", f"label={IMAGE_LABEL}={project}", "--format", "{{.Name}}"
    )
    existing = set(listing.split())
    if set(names.values()) <= existing:
        return names
    if existing:  # half a set (an interrupted start): make a fresh one
        docker("secret", "rm", *sorted(existing))
    with tempfile.TemporaryDirectory(prefix="zsim-keys-") as tmp:
        keys = Path(tmp)
        curve.generate_keys(keys, "coordinator")
        for path, name in names.items():
            docker(
                "secret", "create", "--label", f"{IMAGE_LABEL}={project}", name, str(keys / path)
            )
    return names


def remove_secrets(project: str) -> None:
    found = docker("secret", "ls", "-q", "--filter", f"label={IMAGE_LABEL}={project}").split()
    if found:
        docker("secret", "rm", *found)
