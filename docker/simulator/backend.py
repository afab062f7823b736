"""What a backend is: the ``Backend`` interface that DockerBackend and LocalBackend implement.

A backend knows how to run the cluster's nodes and how to hurt them; everything above it
(the commands, the fault vocabulary, the `test` scenario) is written once against this
interface. To add a backend (say, one VM per node), subclass ``Backend``, implement the
abstract methods, and add it to ``cli.BACKENDS``; docs/cluster-simulation.md walks through it.
"""

from __future__ import annotations

import abc
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, Final

from cluster_simulator.config import DEFAULT_WORKERS, SimConfig
from cluster_simulator.lifecycle import Signals, Undo
from cluster_simulator.monitor_api import MonitorApi
from cluster_simulator.mpi import MpiOptions
from cluster_simulator.output import UsageError
from cluster_simulator.roles import Workload

# Where a child's stdout or stderr goes: ours (None), a file, or subprocess.DEVNULL.
Output = IO[bytes] | int | None
# How long a start may take before it is given up (and undone).
START_TIMEOUT_S: Final = 90.0


@dataclass(frozen=True)
class Topology:
    """The nodes of a cluster with N workers: coordinator, worker1..N, monitor.

    ``numbers`` names the workers when they are not 1..N: Swarm numbers a service's tasks by
    slot, and a scale-down may leave, say, worker1, worker2 and worker4."""

    workers: int
    numbers: tuple[int, ...] = ()

    def worker_names(self) -> list[str]:
        numbers = self.numbers or tuple(range(1, self.workers + 1))
        return [f"worker{index}" for index in numbers]

    def nodes(self) -> list[str]:
        return ["coordinator", *self.worker_names(), "monitor"]

    def check(self, command: str, node: str, workers_only: bool = False) -> str:
        """``node`` if it is one of this cluster's nodes (workers, if asked); else exit 2."""
        if node not in self.nodes():
            raise UsageError(f"unknown node '{node}'; valid nodes: {' '.join(self.nodes())}")
        if workers_only and node not in self.worker_names():
            names = " ".join(self.worker_names())
            raise UsageError(f"{command} works on workers only; valid nodes: {names}")
        return node


@dataclass(frozen=True)
class StatusRow:
    node: str
    runtime: str  # running, paused, dead, absent ... and ",partitioned" when cut off
    detail: str  # health (docker) or pid (local)


@dataclass(frozen=True)
class CompareOptions:
    """`compare`: performance_comparison.py's mode, executors and where to copy its JSON."""

    mode: str = "--quick"
    executors: str | None = None
    json_path: Path | None = None


class ClientRun:
    """A running client.py; ``finish`` waits for it and leaves its summary in ``json_path``."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        json_path: Path | None,
        collect: Callable[[], None] | None = None,
    ) -> None:
        self.popen = popen
        self.json_path = json_path
        self._collect = collect

    def running(self) -> bool:
        return self.popen.poll() is None

    def finish(self, timeout: float | None = None) -> int:
        """The client's exit code, once it has ended and its summary is in place."""
        try:
            code = self.popen.wait(timeout=timeout)
        finally:
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait()
        if self._collect is not None:
            self._collect()
        return code

    def summary(self) -> dict[str, Any]:
        """The client's JSON summary ({} when it wrote none)."""
        if self.json_path is None:
            return {}
        try:
            document: dict[str, Any] = json.loads(self.json_path.read_text())
        except (OSError, ValueError):
            return {}
        return document


class Backend(abc.ABC):
    """Runs the cluster's nodes somewhere and injects faults into them."""

    name: ClassVar[str]
    # Whether slow/flaky/fast act on workers only (the local backend shapes veth links).
    shapes_workers_only: ClassVar[bool] = False

    def __init__(self, config: SimConfig, signals: Signals, undo: Undo) -> None:
        self.config = config
        self.signals = signals
        self.undo = undo

    # --- state -------------------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        """Where this backend keeps the project's state files (created on start)."""
        return self.config.state_root / f"{self.name}-{self.config.project}"

    @abc.abstractmethod
    def is_started(self) -> bool:
        """Whether a cluster of this project exists (running or partly failed)."""

    @abc.abstractmethod
    def worker_count(self) -> int:
        """How many workers the running cluster was started with."""

    @abc.abstractmethod
    def monitor_port(self) -> int:
        """The host port (on 127.0.0.1) where the monitor's dashboard and API answer."""

    def summary(self) -> str:
        """How the running cluster is set up, for `status`: "docker backend, Compose v2, ..."."""
        return f"{self.name} backend"

    def start_hint(self) -> str:
        return f"{self.config.prog} start"

    def require_started(self) -> None:
        if not self.is_started():
            raise UsageError(
                f"cluster '{self.config.project}' was never started ({self.name} backend): "
                f"run `{self.start_hint()}` first"
            )

    def topology(self) -> Topology:
        return Topology(self.worker_count() if self.is_started() else DEFAULT_WORKERS)

    def api(self) -> MonitorApi:
        return MonitorApi(self.monitor_port())

    def arm_stop(self) -> None:
        """From now on, however the run ends, stop this cluster (a start in progress)."""
        self.undo.arm(
            self.stop, f"stopping what this run started (cluster '{self.config.project}')"
        )

    def partition_marker(self, node: str) -> Path:
        return self.state_dir / f"partitioned-{node}"

    def status_row(self, node: str, runtime: str | None, detail: str = "") -> StatusRow:
        """The node's row: ``absent`` without a runtime (no container, no task), and
        ``,partitioned`` after its runtime while ``partition`` has it cut off."""
        if runtime is None:
            return StatusRow(node, "absent", "")
        if self.partition_marker(node).exists():
            runtime += ",partitioned"
        return StatusRow(node, runtime, detail)

    # --- lifecycle ---------------------------------------------------------------------------

    @abc.abstractmethod
    def build(self) -> None:
        """Prepare what start needs (an image, a Python environment); say what was done."""

    @abc.abstractmethod
    def start(self, workers: int) -> None:
        """Start coordinator, workers and monitor and wait until the monitor sees them all.
        While it runs, ``self.undo`` is armed to stop whatever it started."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop every node; a stop never gives up half-way."""

    @abc.abstractmethod
    def cleanup(self) -> None:
        """Stop, then remove everything of the project this backend created."""

    @abc.abstractmethod
    def status_rows(self, topology: Topology) -> list[StatusRow]:
        """One row per node: how it runs as this backend sees it."""

    @abc.abstractmethod
    def show_logs(self, node: str | None, follow: bool) -> int:
        """Print the last lines of one node's log (or of every node's); follow if asked."""

    # --- faults ------------------------------------------------------------------------------

    @abc.abstractmethod
    def kill(self, node: str) -> None:
        """SIGKILL the node."""

    @abc.abstractmethod
    def restart(self, node: str) -> None:
        """Start a killed node again."""

    @abc.abstractmethod
    def disconnect(self, node: str) -> None:
        """Cut the node off the cluster network; it keeps running."""

    @abc.abstractmethod
    def reconnect(self, node: str) -> None:
        """Undo ``disconnect``."""

    @abc.abstractmethod
    def freeze(self, node: str) -> None:
        """Stop the node's processes without killing them (SIGSTOP, cgroup freezer)."""

    @abc.abstractmethod
    def thaw(self, node: str) -> None:
        """Undo ``freeze``."""

    @abc.abstractmethod
    def traffic_control(
        self, node: str, action: str, *netem: str
    ) -> subprocess.CompletedProcess[str]:
        """`tc qdisc ACTION dev DEV root [NETEM...]` on the node's interface, output captured."""

    @abc.abstractmethod
    def in_node_netns(self, node: str) -> list[str]:
        """The argv prefix that runs a host command (iptables) in the node's network namespace."""

    # --- work --------------------------------------------------------------------------------

    @abc.abstractmethod
    def start_client(
        self, work: Workload, json_path: Path | None, stdout: Output = None, stderr: Output = None
    ) -> ClientRun:
        """Start client.py against the cluster; its summary goes to ``json_path`` if given,
        its output where ``stdout`` and ``stderr`` say (None: ours). It starts with Ctrl-C
        ignored, which it undoes once its own handler is in place: a Ctrl-C during its
        imports is no traceback."""

    def scale(self, workers: int) -> None:
        """Change the number of workers of the running cluster (Swarm: the replicas)."""
        raise UsageError(
            f"scale needs the Swarm backend (--swarm); with the {self.name} backend, "
            f"`stop` and then `start --workers {workers}`"
        )

    def mpi(self, options: MpiOptions) -> int:
        """Run the MPI all-reduce job across workers over their node agents, no sshd running;
        print its busbw table; the job's exit code (docker and local; mpi.py)."""
        raise UsageError(f"mpi is not available on the {self.name} backend (docker and local are)")

    def compare(self, options: CompareOptions) -> int:
        raise UsageError(
            "compare needs the Docker backend (each worker container runs an agent and sshd); "
            "locally use 03-cluster-runner-simulation/performance_comparison.py"
        )
