"""Docker Swarm as the simulator sees it: this engine's membership, and one stack's tasks.

A node of the simulated cluster is a task: `coordinator` and `monitor` are services of one
task each, and the workers are the tasks of the replicated service `worker`, named by their
slot (worker1..N). Everything is read through the docker CLI on a manager: `docker info`
(membership), `docker service ls/inspect/ps` and `docker inspect` of tasks (their slot,
node, state, error and container).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from cluster_simulator.containers import docker, docker_json, inspect_present
from cluster_simulator.output import SimError, UsageError

STACK_LABEL: Final = "com.docker.stack.namespace"
WORKER_SERVICE: Final = "worker"
ROLES: Final = ("coordinator", WORKER_SERVICE, "monitor")
# Desired states of a slot's current task (a replacement waits in `ready` for its delay).
LIVE: Final = {"new", "ready", "accepted", "running"}
POLL_S: Final = 0.5
JOIN_HINT: Final = (
    "create a one-node swarm with `docker swarm init --advertise-addr 127.0.0.1`, or join "
    "one (`docker swarm join-token worker` on a manager prints the command)"
)


@dataclass(frozen=True)
class SwarmInfo:
    """This engine's place in a swarm, from `docker info`."""

    state: str  # inactive, pending, active, error, locked
    node_id: str
    manager: bool
    nodes: int
    error: str = ""


def swarm_info() -> SwarmInfo:
    document = docker_json("info", "--format", "{{json .Swarm}}")
    return SwarmInfo(
        state=str(document.get("LocalNodeState") or "inactive"),
        node_id=str(document.get("NodeID") or ""),
        manager=bool(document.get("ControlAvailable")),
        nodes=int(document.get("Nodes") or 0),
        error=str(document.get("Error") or ""),
    )


def require_manager(info: SwarmInfo) -> None:
    """Exit 2 with what to do, unless this engine is a manager of an active swarm."""
    if info.state == "inactive":
        raise UsageError(f"this Docker engine is not part of a swarm: {JOIN_HINT}")
    if info.state == "locked":
        raise UsageError("this swarm is locked: `docker swarm unlock` first")
    if info.state != "active":
        detail = f" ({info.error})" if info.error else ""
        raise UsageError(f"this node's swarm state is {info.state}{detail}: {JOIN_HINT}")
    if not info.manager:
        raise UsageError(
            "this node is a swarm worker, not a manager: stacks and services are managed on a "
            "manager only. Run the simulator on one (`docker node ls` there lists them), or "
            "promote this node there: `docker node promote NODE`"
        )


@dataclass(frozen=True)
class Task:
    """One task of the stack, as `docker inspect` of the task shows it."""

    id: str
    role: str  # coordinator, worker, monitor
    slot: int
    node_id: str
    desired: str
    state: str  # pending, starting, running, failed, rejected, complete, shutdown, ...
    error: str
    container: str
    created: str

    @property
    def node(self) -> str:
        """The simulator's name for it: coordinator, monitor or workerN."""
        return f"worker{self.slot}" if self.role == WORKER_SERVICE else self.role

    @property
    def live(self) -> bool:
        return self.desired in LIVE

    @property
    def running(self) -> bool:
        return self.state == "running"


def missing_image(task: Task) -> bool:
    error = task.error.lower()
    return "no such image" in error or (task.state == "rejected" and "image" in error)


ServiceDocs = dict[str, dict[str, Any]]  # role -> its `docker service inspect` document


class Stack:
    """One stack (the project) on this manager: its services and their tasks."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.label = f"label={STACK_LABEL}={project}"

    def service(self, role: str) -> str:
        return f"{self.project}_{role}"

    def services(self) -> ServiceDocs:
        """Role -> `docker service inspect` document of every service of the stack."""
        ids = docker("service", "ls", "-q", "--filter", self.label).split()
        prefix = f"{self.project}_"
        return {doc["Spec"]["Name"].removeprefix(prefix): doc for doc in inspect_present(*ids)}

    def replicas(self, role: str, services: ServiceDocs | None = None) -> int | None:
        """The replicas wanted of ``role``'s service (``services``: as just listed)."""
        service = (self.services() if services is None else services).get(role)
        if service is None:
            return None
        return int(service["Spec"]["Mode"]["Replicated"]["Replicas"])

    def tasks(self, services: ServiceDocs | None = None) -> list[Task]:
        """Every task the swarm still remembers of this stack (the latest few per slot)."""
        found = self.services() if services is None else services
        role_of = {doc["ID"]: role for role, doc in found.items()}
        if not role_of:
            return []
        listed = docker("service", "ps", "-q", "--no-trunc", *role_of).split()
        return [_task(doc, role_of) for doc in inspect_present(*listed)]

    def current(self, tasks: Iterable[Task] | None = None) -> dict[str, Task]:
        """Node name -> its current task: the one Swarm wants running, else the latest."""
        chosen: dict[str, Task] = {}
        found = self.tasks() if tasks is None else tasks
        for task in sorted(found, key=lambda t: (t.live, t.created)):
            chosen[task.node] = task
        return chosen

    def worker_slots(self, tasks: Iterable[Task] | None = None) -> set[int]:
        found = self.tasks() if tasks is None else tasks
        return {t.slot for t in found if t.role == WORKER_SERVICE and t.live}

    def hostnames(self) -> dict[str, str]:
        """Swarm node id -> its hostname."""
        listing = docker("node", "ls", "--format", "{{.ID}} {{.Hostname}}")
        pairs = (line.split(maxsplit=1) for line in listing.splitlines() if " " in line)
        return {node_id: host for node_id, host in pairs}

    def exists(self) -> bool:
        """Services, or a network still being removed."""
        return bool(self.services()) or bool(
            docker("network", "ls", "-q", "--filter", self.label).strip()
        )

    def remove(self, timeout: float) -> None:
        """`docker stack rm`, and wait until its containers and network are gone: a deploy
        right after `stack rm` returns would find the old network half-removed."""
        docker("stack", "rm", self.project)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = docker("ps", "-aq", "--filter", self.label).split()
            left += docker("network", "ls", "-q", "--filter", self.label).split()
            if not left:
                return
            time.sleep(POLL_S)
        raise SimError(f"stack '{self.project}' was still being removed after {timeout:.0f} s")


def _task(doc: dict[str, Any], role_of: dict[str, str]) -> Task:
    status = doc.get("Status") or {}
    return Task(
        id=doc["ID"],
        role=role_of.get(doc.get("ServiceID", ""), "?"),
        slot=int(doc.get("Slot") or 1),
        node_id=str(doc.get("NodeID") or ""),
        desired=str(doc.get("DesiredState", "")),
        state=str(status.get("State", "")),
        error=str(status.get("Err") or ""),
        container=str((status.get("ContainerStatus") or {}).get("ContainerID") or ""),
        created=str(doc.get("CreatedAt", "")),
    )
