"""The Docker backend: one container per node, from one image, run by Compose.

State lives in the engine (containers found by the Compose labels) plus a small file under
``.cluster-state/docker-PROJECT/`` (worker count, Compose version, CURVE on or off) and the
generated Compose override. CURVE keys for the coordinator's ports are made once per cluster
by the `keys` service into the project's `keys` volume (secret files 0600, never in the
image); every role reads them from /keys/coordinator.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Final

from cluster_simulator.backend import (
    START_TIMEOUT_S,
    CompareOptions,
    StatusRow,
    Topology,
)
from cluster_simulator.compose import Compose
from cluster_simulator.config import DEFAULT_WORKERS, ComposeChoice
from cluster_simulator.containers import (
    ContainerBackend,
    build_image,
    copy_out,
    docker,
    inspect,
    project_image,
    remove_project_images,
)
from cluster_simulator.mpi import RUN_MPI, MpiOptions, restore, run_mpi_argv
from cluster_simulator.output import SimError, say
from cluster_simulator.ports import require_free_ports
from cluster_simulator.roles import Roles

PROJECT_LABEL: Final = "com.docker.compose.project"
SERVICE_LABEL: Final = "com.docker.compose.service"
KEYS_IN_CONTAINER: Final = "/keys/coordinator"
MONITOR_CONTAINER_PORT: Final = "5572/tcp"
COMPARE_DIR: Final = "/tmp/zsim-compare"
MPI_DIR: Final = "/tmp/zsim-mpi"
NODE_SSH_PORT: Final = "2222"  # node-entrypoint.sh's sshd
ZRSH_IN_IMAGE: Final = "/usr/local/bin/zrsh"
HEALTH_POLL_S: Final = 0.5
# --8<-- [start:tc-script]
# `tc qdisc ACTION dev DEV root [ARGS]` on the container's interface with the default route.
TC_SCRIPT: Final = (
    'dev=$(ip -o route show default | sed -n "s/.* dev \\([^ ]*\\).*/\\1/p" | head -n 1); '
    'action="$1"; shift; exec tc qdisc "$action" dev "${dev:-eth0}" root "$@"'
)
# --8<-- [end:tc-script]


@dataclass(frozen=True)
class DockerState:
    """What start records for later commands."""

    workers: int = DEFAULT_WORKERS
    compose: str = ComposeChoice.AUTO.value
    curve: bool = False


class DockerBackend(ContainerBackend[DockerState]):
    name = "docker"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.image = project_image(self.config.project)
        self.recorded = self._read_state(DockerState)
        compose_choice = self.config.compose
        if compose_choice is ComposeChoice.AUTO and self.recorded is not None:
            compose_choice = ComposeChoice(self.recorded.compose)  # stay with the starter's
        self.compose = Compose(self.config, compose_choice, self.image, self.state_dir)

    # --- state -------------------------------------------------------------------------------

    def containers(self) -> dict[str, str]:
        """Service name -> container id of every container of the project, running or not."""
        project = f"label={PROJECT_LABEL}={self.config.project}"
        row = f'{{{{.ID}}}} {{{{.Label "{SERVICE_LABEL}"}}}}'
        listing = docker("ps", "-a", "--filter", project, "--format", row)
        pairs = (line.split(maxsplit=1) for line in listing.splitlines() if " " in line)
        return {service: cid for cid, service in pairs}

    def container(self, node: str) -> str:
        cid = self.containers().get(node)
        if cid is None:
            raise SimError(f"{node} has no container in project '{self.config.project}'")
        return cid

    def cluster_network(self) -> str | None:
        project = f"label={PROJECT_LABEL}={self.config.project}"
        network = "label=com.docker.compose.network=cluster"
        found = docker("network", "ls", "-q", "--filter", project, "--filter", network).split()
        return found[0] if found else None

    def is_started(self) -> bool:
        return "coordinator" in self.containers()

    def worker_count(self) -> int:
        if self.recorded is not None:
            return self.recorded.workers
        workers = [s for s in self.containers() if s.startswith("worker")]
        return len(workers) or DEFAULT_WORKERS

    def monitor_port(self) -> int:
        cid = self.containers().get("monitor")
        if cid is not None:
            try:
                mapping = docker("port", cid, MONITOR_CONTAINER_PORT).split()
            except SimError:
                mapping = []
            if mapping:
                return int(mapping[0].rsplit(":", 1)[1])
        return self.config.ports.monitor

    def summary(self) -> str:
        curve = "CURVE on 5570/5571" if self.curve() else "no CURVE"
        return f"docker backend, Compose {self.compose.version}, {curve}"

    def roles(self) -> Roles:
        keys = KEYS_IN_CONTAINER if self.curve() else None
        return Roles(["python"], self.config.liveness, keys)

    # --- lifecycle ---------------------------------------------------------------------------

    def build(self) -> None:
        say(f"building {self.image} from docker/Dockerfile")
        build_image(self.config.project, self.image, quiet=False)

    def start(self, workers: int) -> None:
        # A project that already has containers is the user's: start it again as it is.
        if not self.containers():
            require_free_ports([("MONITOR_PORT", self.config.ports.monitor)])
            self.arm_stop()  # from here on a failure or Ctrl-C removes it all
        say(f"building {self.image} (cached layers make this quick)")
        build_image(self.config.project, self.image, quiet=True)
        curve = self.curve()
        self._record(DockerState(workers, self.compose.version, curve))
        self.compose.write_override(workers, self.roles())
        services = Topology(workers).nodes()
        self.compose.up(services)
        if not self._ready(workers, services):
            log = self.state_dir / "failed-start.log"
            with log.open("wb") as out:  # the undo removes the containers and their logs
                self.compose.run("logs", "--no-color", "--tail", "100", stdout=out, stderr=out)
            raise SimError(
                f"the cluster did not become ready in {START_TIMEOUT_S:.0f} s; logs: {log}"
            )

    def _ready(self, workers: int, services: list[str]) -> bool:
        """The monitor sees every worker alive, and every healthcheck says healthy."""
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            self.api().wait_ready(workers, START_TIMEOUT_S)
        except TimeoutError:
            return False
        while time.monotonic() < deadline:
            found = self.containers()
            if all(s in found for s in services):
                documents = inspect(*(found[s] for s in services))  # one call for all
                if all(self._health(doc) == "healthy" for doc in documents):
                    return True
            time.sleep(HEALTH_POLL_S)
        return False

    @staticmethod
    def _health(document: dict[str, Any]) -> str:
        return str((document["State"].get("Health") or {}).get("Status", ""))

    def _forget(self) -> None:
        self.compose.remove_override()
        self._state_file().unlink(missing_ok=True)
        for marker in self.state_dir.glob("partitioned-*"):
            marker.unlink()
        self.recorded = None

    def stop(self) -> None:
        if self.containers() or self.cluster_network():
            self.compose.down()
        self._forget()

    def cleanup(self) -> None:
        if self.containers() or self.cluster_network():
            self.compose.down("--volumes")
        label = f"label={PROJECT_LABEL}={self.config.project}"
        volumes = docker("volume", "ls", "-q", "--filter", label).split()
        if volumes:
            docker("volume", "rm", *volumes)
        remove_project_images(self.config.project, self.image)
        self._forget()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def status_rows(self, topology: Topology) -> list[StatusRow]:
        found = self.containers()
        states = {doc["Id"][:12]: doc["State"] for doc in inspect(*found.values())}
        rows = []
        for node in topology.nodes():
            cid = found.get(node)
            if cid is None:
                rows.append(self.status_row(node, None))
                continue
            state = states.get(cid[:12], {})
            health = str((state.get("Health") or {}).get("Status", ""))
            rows.append(self.status_row(node, str(state.get("Status", "unknown")), health))
        return rows

    def show_logs(self, node: str | None, follow: bool) -> int:
        args = ["logs", "--no-color", "--tail", "200", *(["--follow"] if follow else [])]
        return self.compose.run(
            *args, *([node] if node else []), stdin=subprocess.DEVNULL
        ).returncode

    # --- faults ------------------------------------------------------------------------------

    def kill(self, node: str) -> None:
        docker("kill", "--signal", "KILL", self.container(node))

    def restart(self, node: str) -> None:
        docker("start", self.container(node))

    def _network(self) -> str:
        network = self.cluster_network()
        if network is None:
            raise SimError(f"project '{self.config.project}' has no cluster network")
        return network

    def disconnect(self, node: str) -> None:
        docker("network", "disconnect", self._network(), self.container(node))

    def reconnect(self, node: str) -> None:
        docker("network", "connect", "--alias", node, self._network(), self.container(node))

    def traffic_control(
        self, node: str, action: str, *netem: str
    ) -> subprocess.CompletedProcess[str]:
        # tc needs NET_ADMIN, which Compose grants; run as root inside the container.
        argv = ["docker", "exec", "-u", "root", self.container(node), "sh", "-c", TC_SCRIPT, "tc"]
        return subprocess.run([*argv, action, *netem], capture_output=True, text=True)

    # --- work --------------------------------------------------------------------------------

    def compare(self, options: CompareOptions) -> int:
        self.require_started()
        nodes = Topology(self.worker_count()).worker_names()
        cid = self.container("coordinator")
        docker("exec", cid, "node-entrypoint", "descriptor", COMPARE_DIR, *nodes)
        args = ["--descriptor", f"{COMPARE_DIR}/cluster.toml", "--json", f"{COMPARE_DIR}/perf.json"]
        if options.mode != "--full":  # full sampling is the script's default
            args.append(options.mode)
        if options.executors:
            args += ["--executors", options.executors]
        tty: list[str] = []
        if all(os.isatty(fd) for fd in (0, 1, 2)):
            tty = ["-it"]  # a terminal: the progress bar shows and Ctrl-C reaches the benchmark
        else:
            args.append("--no-progress")
        say(
            f"compare: performance_comparison.py {options.mode} from the coordinator container "
            f"against {' '.join(nodes)}"
        )
        script = "03-cluster-runner-simulation/performance_comparison.py"
        status = subprocess.run(["docker", "exec", *tty, cid, "python", script, *args]).returncode
        if status == 0 and options.json_path is not None:
            copy_out(cid, f"{COMPARE_DIR}/perf.json", options.json_path)
        subprocess.run(["docker", "exec", cid, "rm", "-rf", COMPARE_DIR], capture_output=True)
        sys.stdout.flush()
        return status

    # --- mpi: the MPI job over the agents, with every worker's sshd stopped -------------------

    def mpi(self, options: MpiOptions) -> int:
        self.require_started()
        every = Topology(self.worker_count()).worker_names()
        workers = options.workers(every)
        coordinator = self.container("coordinator")
        self.undo.arm(lambda: self._sshd(every, "start"), "starting sshd on the workers again")
        try:
            self._sshd(every, "stop")
            self._require_ssh_refused(coordinator, every)
            say(f"mpi: sshd stopped on {' '.join(every)}; port {NODE_SSH_PORT} refuses connections")
            for cid in {coordinator, self.container(workers[0])}:
                docker("exec", cid, "node-entrypoint", "descriptor", MPI_DIR, *workers)
            args = run_mpi_argv(
                options,
                workers,
                f"{MPI_DIR}/cluster.toml",
                launcher=ZRSH_IN_IMAGE,
                interfaces="eth0",
                json_path=f"{MPI_DIR}/records.json" if options.json_path else None,
            )
            sys.stdout.flush()
            argv = ["docker", "exec", coordinator, "python", str(RUN_MPI), *args]
            status = subprocess.run(argv, stdin=subprocess.DEVNULL).returncode
            if status == 0 and options.json_path is not None:
                copy_out(coordinator, f"{MPI_DIR}/records.json", options.json_path)
        finally:
            restore(self.undo, self.signals)
        return status

    def _sshd(self, nodes: list[str], action: str) -> None:
        for node in nodes:
            docker("exec", self.container(node), "node-entrypoint", "sshd", action)

    def _require_ssh_refused(self, coordinator: str, nodes: list[str]) -> None:
        """From the coordinator, every worker's SSH port must refuse: SSH cannot run the job."""
        for node in nodes:
            probe = ["python", "-m", "cluster_patterns.healthcheck", "tcp"]
            probe += ["--host", node, "--port", NODE_SSH_PORT]
            done = subprocess.run(
                ["docker", "exec", coordinator, *probe], capture_output=True, text=True
            )
            if done.returncode == 0:
                raise SimError(f"{node}:{NODE_SSH_PORT} still accepts connections after sshd stop")
