"""The Swarm backend: the cluster as a stack on Docker Swarm, deployed from docker-compose.yml.

swarm_stack.py derives the stack file and keeps the CURVE keys as Docker secrets; swarm.py
reads the stack's tasks. Swarm replaces a task that dies (swarm_stack.RESTART_DELAY_S after
it died), so `fail` is followed by Swarm's own recovery and `recover` waits for it. A
partition is a DROP chain on the task's overlay interface inside its own network namespace
(nsenter: root on this host). Faults act on the tasks whose containers run on this host; on
a one-node swarm, all of them.

State: ``.cluster-state/swarm-PROJECT/`` holds cluster.json (what start chose), stack.json
(the deployed stack file) and one marker per partitioned node (its container and interface).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Final

from cluster_patterns import defaults
from cluster_patterns.protocol import NodeState
from cluster_simulator import swarm_stack
from cluster_simulator.backend import (
    START_TIMEOUT_S,
    StatusRow,
    Topology,
)
from cluster_simulator.config import DEFAULT_WORKERS, CurveChoice
from cluster_simulator.containers import (
    ContainerBackend,
    container_pid,
    build_image,
    docker,
    inspect,
    inspect_present,
    project_image,
    remove_project_images,
)
from cluster_simulator.drop_chain import DropChain
from cluster_simulator.monitor_api import node_states
from cluster_simulator.output import SimError, UsageError, say
from cluster_simulator.ports import require_free_ports
from cluster_simulator.roles import Roles
from cluster_simulator.swarm import (
    POLL_S,
    ROLES,
    WORKER_SERVICE,
    ServiceDocs,
    Stack,
    SwarmInfo,
    Task,
    missing_image,
    require_manager,
    swarm_info,
)

MAX_SWARM_WORKERS: Final = 64  # a guard against typos: every worker is a container
MAX_PROJECT_LENGTH: Final = 24  # service, secret and network names carry it
STOP_TIMEOUT_S: Final = 60.0
PARTITION_CHAIN: Final = "ZSIM_PARTITION"
ALIVE: Final = NodeState.ALIVE.value


@dataclass(frozen=True)
class SwarmState:
    """What start records for later commands."""

    workers: int
    curve: bool
    monitor_port: int
    image: str


class SwarmBackend(ContainerBackend[SwarmState]):
    name = "swarm"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if len(self.config.project) > MAX_PROJECT_LENGTH:
            raise UsageError(
                f"project name {self.config.project!r} is too long for Swarm "
                f"(at most {MAX_PROJECT_LENGTH} characters)"
            )
        self.recorded = self._read_state(SwarmState)
        self._stack = Stack(self.config.project)

    @cached_property
    def info(self) -> SwarmInfo:
        """This engine's swarm membership; exit 2 unless it is a manager."""
        info = swarm_info()
        require_manager(info)
        return info

    @property
    def stack(self) -> Stack:
        self.info  # noqa: B018 - a clear error first when this engine is no swarm manager
        return self._stack

    # --- state -------------------------------------------------------------------------------

    def was_started(self) -> bool:
        """Whether this project has state here (so that `auto` picks this backend)."""
        return self.recorded is not None

    @property
    def image(self) -> str:
        if self.recorded is not None:
            return self.recorded.image
        return self.config.image or project_image(self.config.project)

    def is_started(self) -> bool:
        return bool(self.stack.services())

    def worker_count(self, services: ServiceDocs | None = None) -> int:
        replicas = self.stack.replicas(WORKER_SERVICE, services)
        if replicas is not None:
            return replicas
        return self.recorded.workers if self.recorded else DEFAULT_WORKERS

    def topology(self) -> Topology:
        services = self.stack.services()  # listed once: each listing is two docker calls
        if not services:
            return Topology(DEFAULT_WORKERS)
        slots = self.stack.worker_slots(self.stack.tasks(services))
        return Topology(self.worker_count(services), tuple(sorted(slots)))

    def monitor_port(self) -> int:
        return self.recorded.monitor_port if self.recorded else self.config.ports.monitor

    def summary(self) -> str:
        keys = "CURVE on 5570/5571 (keys as Docker secrets)" if self.curve() else "no CURVE"
        nodes = f"{self.info.nodes} swarm node{'s' if self.info.nodes != 1 else ''}"
        return f"swarm backend, stack '{self.config.project}' on {nodes}, {keys}"

    def start_hint(self) -> str:
        return f"{self.config.prog} --swarm start"

    def roles(self) -> Roles:
        keys = swarm_stack.SECRETS_DIR if self.curve() else None
        return Roles(["python"], self.config.liveness, keys)

    # --- lifecycle ---------------------------------------------------------------------------

    def build(self) -> None:
        if self.config.image:
            say(f"CLUSTER_IMAGE={self.config.image}: nothing to build (every node pulls it)")
            return
        say(f"building {self.image} from docker/Dockerfile")
        build_image(self.config.project, self.image, quiet=False)

    def start(self, workers: int) -> None:
        if not self.is_started():  # no swarm, or not a manager: exit 2 before anything
            # Swarm publishes on every address of the node: the port must be free on all.
            require_free_ports([("MONITOR_PORT", self.config.ports.monitor)], host="0.0.0.0")
            self.arm_stop()
        if self.config.image is None:
            say(f"building {self.image} (cached layers make this quick)")
            build_image(self.config.project, self.image, quiet=True)
        curve = self.config.curve is not CurveChoice.OFF
        self._record(SwarmState(workers, curve, self.config.ports.monitor, self.image))
        stack_file = self.state_dir / "stack.json"
        stack_file.write_text(json.dumps(self._stack_document(workers, curve), indent=2) + "\n")
        say(f"deploying stack '{self.config.project}' ({self.info.nodes} swarm node(s))")
        deploy = ["docker", "stack", "deploy", "--resolve-image", "never", "--prune"]
        done = subprocess.run(
            [*deploy, "-c", str(stack_file), self.config.project],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise SimError(f"docker stack deploy failed: {(done.stderr or done.stdout).strip()}")
        self._wait_until_running(Topology(workers).nodes(), workers)

    def _stack_document(self, workers: int, curve: bool) -> dict[str, Any]:
        roles = self.roles()
        plan = swarm_stack.StackPlan(
            image=self.image,
            workers=workers,
            coordinator=roles.coordinator("0.0.0.0", defaults.TASK_PORT, defaults.STATUS_PORT),
            worker=roles.worker(None, "coordinator", defaults.TASK_PORT),
            monitor=roles.monitor(
                "coordinator", defaults.STATUS_PORT, defaults.MONITOR_PORT, "0.0.0.0"
            ),
            monitor_port=self.monitor_port(),
            manager_node_id=self.info.node_id,
            secrets=swarm_stack.ensure_secrets(self.config.project) if curve else None,
        )
        return swarm_stack.derive_stack(swarm_stack.load_compose_file(), plan)

    def _wait_until_running(self, nodes: list[str], workers: int) -> None:
        """Until every node's task runs and the monitor sees ``workers`` alive workers."""
        deadline = time.monotonic() + START_TIMEOUT_S
        api = self.api()
        while time.monotonic() < deadline:
            current = self.stack.current()
            self._check_images(current.values())
            running = all(node in current and current[node].running for node in nodes)
            alive = [s for s in node_states(api.cluster()).values() if s == ALIVE]
            if running and len(alive) >= workers:
                return
            time.sleep(POLL_S)
        raise SimError(
            f"the stack did not become ready in {START_TIMEOUT_S:.0f} s: "
            f"`docker stack ps {self.config.project} --no-trunc` shows why"
        )

    def _check_images(self, tasks: Iterable[Task]) -> None:
        """A task that cannot start because its node lacks the image: say which node."""
        for task in tasks:
            if missing_image(task):
                host = self.stack.hostnames().get(task.node_id, task.node_id or "?")
                raise SimError(
                    f"image {self.image} is missing on swarm node '{host}', so {task.node} "
                    f"cannot start there ({task.error}). Build it on that node "
                    "(./docker/simulate-cluster.sh --swarm build), or push it to a registry "
                    "every node can pull from and set CLUSTER_IMAGE=REGISTRY/NAME:TAG"
                )

    def stop(self) -> None:
        if self.stack.exists():
            self.stack.remove(STOP_TIMEOUT_S)
        self._forget()

    def _forget(self) -> None:
        for name in ("cluster.json", "stack.json"):
            (self.state_dir / name).unlink(missing_ok=True)
        for marker in self.state_dir.glob("partitioned-*"):
            marker.unlink()
        self.recorded = None

    def cleanup(self) -> None:
        image = self.image
        if swarm_info().state == "active":
            self.stop()
            swarm_stack.remove_secrets(self.config.project)
        if image != self.config.image:  # a CLUSTER_IMAGE is the user's, not ours to delete
            remove_project_images(self.config.project, image)
        self._forget()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def status_rows(self, topology: Topology) -> list[StatusRow]:
        current = self.stack.current()
        hosts = self.stack.hostnames()
        here = [t.container for t in current.values() if t.container and self._is_here(t)]
        health = {
            doc["Id"]: str((doc["State"].get("Health") or {}).get("Status", ""))
            for doc in inspect_present(*here)
        }

        def row(node: str) -> StatusRow:
            task = current.get(node)
            if task is None:
                return self.status_row(node, None)
            detail = f"{health.get(task.container, '')} @{hosts.get(task.node_id, '?')}"
            return self.status_row(node, task.state, detail.strip())

        return [row(node) for node in topology.nodes()]

    def show_logs(self, node: str | None, follow: bool) -> int:
        args = ["docker", "service", "logs", "--no-trunc", "--tail", "200"]
        args += ["--follow"] if follow else []
        if node is not None:
            target = self.task(node).id if node.startswith("worker") else self.stack.service(node)
            return subprocess.run([*args, target], stdin=subprocess.DEVNULL).returncode
        # One `docker service logs` per service, all at once, so that -f follows every one.
        children = [
            subprocess.Popen([*args, self.stack.service(role)], stdin=subprocess.DEVNULL)
            for role in ROLES
        ]
        return max(child.wait() for child in children)

    # --- scale -------------------------------------------------------------------------------

    def scale(self, workers: int) -> None:
        self.require_started()
        before = set(self.topology().worker_names())
        service = self.stack.service(WORKER_SERVICE)
        docker("service", "scale", "--detach", f"{service}={workers}")
        say(f"scaling service {service} to {workers} replicas")
        if self.recorded is not None:
            self._record(replace(self.recorded, workers=workers))
        self._watch_membership(before, workers)

    def _watch_membership(self, before: set[str], workers: int) -> None:
        """Print each worker as the monitor sees it join or leave, until there are ``workers``."""
        started = time.monotonic()
        api = self.api()
        reported: set[str] = set()
        while time.monotonic() - started < START_TIMEOUT_S:
            tasks = self.stack.tasks()
            self._check_images(self.stack.current(tasks).values())
            names = {f"worker{slot}" for slot in self.stack.worker_slots(tasks)}
            states = node_states(api.cluster())
            for name in sorted(names - before - reported):
                if states.get(name) == ALIVE:
                    say(f"monitor: {name} joined (alive after {time.monotonic() - started:.2f} s)")
                    reported.add(name)
            for name in sorted(before - names - reported):
                if name in states and states[name] != ALIVE:
                    say(f"monitor: {name} left ({states[name]})")
                    reported.add(name)
            settled = all(states.get(name) == ALIVE for name in names) and not any(
                states.get(name) == ALIVE for name in before - names
            )
            if len(names) == workers and settled:
                say(f"{workers} workers alive: {' '.join(sorted(names, key=_slot))}")
                return
            time.sleep(POLL_S)
        raise SimError(
            f"the monitor did not see {workers} alive workers in {START_TIMEOUT_S:.0f} s"
        )

    # --- the node's task and container -------------------------------------------------------

    def task(self, node: str) -> Task:
        task = self.stack.current().get(node)
        if task is None:
            raise SimError(f"{node} has no task in stack '{self.config.project}'")
        return task

    def _is_here(self, task: Task) -> bool:
        return task.node_id == self.info.node_id

    def container(self, node: str) -> str:
        """The container of ``node``'s running task, which must be on this host."""
        task = self.task(node)
        if not self._is_here(task):
            host = self.stack.hostnames().get(task.node_id, task.node_id)
            raise SimError(
                f"{node} runs on swarm node '{host}', not on this one: faults act on this "
                f"host's containers only (inject this one on '{host}' with docker there)"
            )
        if not task.running or not task.container:
            raise SimError(f"{node}'s task is {task.state}, not running (see `status`)")
        return task.container

    def _interface(self, cid: str) -> str:
        """The container's interface on the stack's overlay network."""
        networks = inspect(cid)[0]["NetworkSettings"]["Networks"]
        network = f"{self.config.project}_{swarm_stack.NETWORK}"
        address = (networks.get(network) or {}).get("IPAddress")
        for line in docker("exec", cid, "ip", "-o", "-4", "addr", "show").splitlines():
            words = line.split()
            if address and len(words) > 3 and words[3].split("/")[0] == address:
                return words[1]
        raise SimError(f"container {cid[:12]} has no interface with address {address}")

    # --- faults ------------------------------------------------------------------------------

    def kill(self, node: str) -> None:
        docker("kill", "--signal", "KILL", self.container(node))
        delay = swarm_stack.RESTART_DELAY_S
        say(f"{node}: Swarm replaces a killed task by itself, {delay} s after it died")

    def restart(self, node: str) -> None:
        """Swarm starts the replacement itself; wait until it runs (at once if it does)."""
        task = self.stack.current().get(node)
        if task is not None and task.running:
            return
        delay = swarm_stack.RESTART_DELAY_S
        say(f"waiting for Swarm to start {node} again (restart delay {delay} s)")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            current = self.stack.current()
            self._check_images(current.values())
            if node in current and current[node].running:
                return
            time.sleep(POLL_S)
        raise SimError(f"Swarm did not start {node} again within {START_TIMEOUT_S:.0f} s")

    def _partition_chain(self, cid: str, interface: str, command: str) -> DropChain:
        """On the task's overlay interface only, in the task's own namespace."""
        enter = ["nsenter", "-t", str(container_pid(cid)), "-n"]
        return DropChain(PARTITION_CHAIN, enter, f"{command} on Swarm", interface)

    def disconnect(self, node: str) -> None:
        """Every packet on the task's overlay interface dropped, in its own namespace."""
        cid = self.container(node)
        interface = self._interface(cid)
        self._partition_chain(cid, interface, "partition").install()
        marker = {"container": cid, "interface": interface}
        self.partition_marker(node).write_text(json.dumps(marker) + "\n")

    def reconnect(self, node: str) -> None:
        try:
            marker = json.loads(self.partition_marker(node).read_text())
            cid, interface = str(marker["container"]), str(marker["interface"])
        except (OSError, ValueError, KeyError, TypeError):
            raise SimError(f"the record of {node}'s partition is unreadable") from None
        task = self.stack.current().get(node)
        if task is None or task.container != cid or not task.running:
            say(
                f"{node}: Swarm replaced the cut-off task (its healthcheck failed); nothing to heal"
            )
            return
        self._partition_chain(cid, interface, "heal").remove()

    def traffic_control(
        self, node: str, action: str, *netem: str
    ) -> subprocess.CompletedProcess[str]:
        cid = self.container(node)
        argv = ["docker", "exec", "-u", "root", cid, "tc", "qdisc", action]
        argv += ["dev", self._interface(cid), "root", *netem]
        return subprocess.run(argv, capture_output=True, text=True)


def _slot(name: str) -> int:
    return int(name.removeprefix("worker"))
