"""The local backend: one process per node on this host; as root, workers in namespaces.

State lives under ``.cluster-state/local-PROJECT/``: ``cluster.json`` (ports, worker count,
whether namespaces are in use), and a pid and a log file per node and relay. Every process
runs in a session of its own, so a Ctrl-C in the user's terminal reaches only the
simulator, which then decides what to stop.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import psutil

from cluster_patterns import curve
from cluster_patterns.defaults import LOOPBACK
from cluster_runner_simulation.agent_keys import generate_keys
from cluster_runner_simulation.descriptor import ClusterDescriptor, NodeSpec, render_descriptor
from cluster_simulator.backend import (
    START_TIMEOUT_S,
    Backend,
    ClientRun,
    Output,
    StatusRow,
    Topology,
)
from cluster_simulator.config import REPO_ROOT, CurveChoice
from cluster_simulator.lifecycle import child_ignores_sigint
from cluster_simulator.mpi import AGENT, RUN_MPI, MpiOptions, restore, run_mpi_argv
from cluster_simulator.netns import WORKERS_NET, Network, namespaces_possible
from cluster_simulator.output import SimError, UsageError, say
from cluster_simulator.ports import require_free_ports
from cluster_simulator.roles import Roles, Workload

LOG_WAIT_S: Final = 30.0
STOP_GRACE_S: Final = 8.0
POLL_S: Final = 0.1
LOG_LINES: Final = 200
FOLLOW_LINES: Final = 20
PAUSED: Final = {psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP}
AGENT_READY: Final = re.compile(r"ready on tcp://[^\s]+:(\d+)")


@dataclass(frozen=True)
class LocalState:
    """What start records for later commands."""

    workers: int
    coordinator_port: int
    status_port: int
    monitor_port: int
    netns: bool
    curve: bool


def pid_alive(pid: int | None) -> bool:
    """Exists and is not a zombie (a container's PID 1 may never reap our orphans)."""
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class LocalBackend(Backend):
    name = "local"
    shapes_workers_only = True

    @property
    def network(self) -> Network:
        return Network(self.config.project)

    def summary(self) -> str:
        state = self.state()
        network = "workers in network namespaces" if state.netns else "workers on 127.0.0.1"
        return f"local backend, {network}, {'CURVE on' if state.curve else 'no CURVE'}"

    def start_hint(self) -> str:
        return f"{self.config.prog} --local start"

    # --- state -------------------------------------------------------------------------------

    def _state_file(self) -> Path:
        return self.state_dir / "cluster.json"

    def state(self) -> LocalState:
        try:
            return LocalState(**json.loads(self._state_file().read_text()))
        except (OSError, ValueError, TypeError):
            self.require_started()
            raise SimError(f"{self._state_file()} is unreadable: run `cleanup`") from None

    def is_started(self) -> bool:
        return self._state_file().is_file()

    def worker_count(self) -> int:
        return self.state().workers

    def monitor_port(self) -> int:
        return self.state().monitor_port if self.is_started() else self.config.ports.monitor

    def pid(self, name: str) -> int | None:
        try:
            return int((self.state_dir / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None

    def log(self, name: str) -> Path:
        return self.state_dir / f"{name}.log"

    # --- processes ---------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str]) -> None:
        """Start one process in a session of its own, its output in NAME.log; record its pid
        in the same step (a Ctrl-C in between cannot leave an unrecorded process)."""
        env = {**os.environ, "COMPOSE_PROJECT_NAME": self.config.project}
        with self.signals.deferred(), self.log(name).open("ab") as log:
            popen = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            (self.state_dir / f"{name}.pid").write_text(f"{popen.pid}\n")

    def wait_for_log(self, name: str, word: str) -> None:
        deadline = time.monotonic() + LOG_WAIT_S
        pattern = re.compile(rf"\b{re.escape(word)}\b")
        while time.monotonic() < deadline:
            if pattern.search(self.log(name).read_text(errors="replace")):
                return
            if not pid_alive(self.pid(name)):
                break
            time.sleep(POLL_S)
        tail = "\n".join(self.log(name).read_text(errors="replace").splitlines()[-20:])
        raise SimError(f"{name} did not print '{word}'; log: {self.log(name)}\n{tail}")

    def roles(self, state: LocalState) -> Roles:
        keys = str(self.state_dir / "keys") if state.curve else None
        return Roles([self.config.python, "-u"], self.config.liveness, keys)

    def node_argv(self, node: str) -> list[str]:
        state = self.state()
        roles = self.roles(state)
        if node == "coordinator":
            return roles.coordinator(LOOPBACK, state.coordinator_port, state.status_port)
        if node == "monitor":
            return roles.monitor(LOOPBACK, state.status_port, state.monitor_port, LOOPBACK)
        if not state.netns:
            return roles.worker(node, LOOPBACK, state.coordinator_port)
        network = self.network
        prefix = network.exec_prefix(network.namespace(node))
        return prefix + roles.worker(node, network.hub_address(node), state.coordinator_port)

    def start_relays(self, coordinator_port: int) -> None:
        network, relay = self.network, [self.config.python, "-u", "-m", "cluster_simulator.relay"]
        sock = str(network.relay_socket)
        host_side = ["unix-to-tcp", "--listen", sock, "--to", f"{LOOPBACK}:{coordinator_port}"]
        self.spawn("relay-host", [*relay, *host_side])
        self.wait_for_log("relay-host", "ready")
        hub_side = ["tcp-to-unix", "--listen", f"0.0.0.0:{coordinator_port}", "--to", sock]
        self.spawn("relay-hub", [*network.exec_prefix(network.hub), *relay, *hub_side])
        self.wait_for_log("relay-hub", "ready")

    # --- lifecycle ---------------------------------------------------------------------------

    def build(self) -> None:
        missing = [name for name in ("zmq", "cluster_patterns") if not _importable(name)]
        if missing:
            raise SimError(
                "the local backend needs the project installed: run `make venv` "
                "(or pip install -r requirements.txt)"
            )
        python = self.config.python
        say(f"local backend: nothing to build; {python} imports zmq and cluster_patterns")

    def _new_state(self, workers: int) -> LocalState:
        ports = self.config.ports
        curve_on = self.config.curve is CurveChoice.ON
        return LocalState(
            workers, ports.coordinator, ports.status, ports.monitor, namespaces_possible(), curve_on
        )

    def start(self, workers: int) -> None:
        if self.is_started() and pid_alive(self.pid("coordinator")):
            raise UsageError(
                f"cluster '{self.config.project}' is already running (local backend); "
                f"`{self.config.prog} --local stop` first"
            )
        state = self._new_state(workers)
        self.stop_processes()  # leftovers of a cluster that died, which may hold its ports
        require_free_ports(self.config.ports.named())
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for old in self.state_dir.glob("*.log"):
            old.unlink()
        self.arm_stop()  # a start that fails half-way leaves nothing behind
        self._state_file().write_text(json.dumps(asdict(state)) + "\n")
        if state.curve:
            curve.generate_keys(self.state_dir / "keys", "coordinator")
        self.spawn("coordinator", self.node_argv("coordinator"))
        self.wait_for_log("coordinator", "ready")
        if state.netns:
            self.network.up(Topology(workers).worker_names())
            self.start_relays(state.coordinator_port)
        self.spawn("monitor", self.node_argv("monitor"))
        for node in Topology(workers).worker_names():
            self.spawn(node, self.node_argv(node))
        self.wait_for_log("monitor", "ready")
        try:
            self.api().wait_ready(workers, START_TIMEOUT_S)
        except TimeoutError:
            raise SimError(
                f"the cluster did not become ready in {START_TIMEOUT_S:.0f} s; "
                f"see `{self.config.prog} --local logs`"
            ) from None

    def _recorded_pids(self) -> list[tuple[Path, int]]:
        found = []
        for pidfile in sorted(self.state_dir.glob("*.pid")):
            try:
                found.append((pidfile, int(pidfile.read_text())))
            except (OSError, ValueError):
                pidfile.unlink(missing_ok=True)
        return found

    def stop_processes(self) -> None:
        """SIGTERM every recorded process (thawing paused ones), SIGKILL what outlives 8 s."""
        _terminate(self._recorded_pids() if self.state_dir.is_dir() else [])
        self.network.down()

    def stop(self) -> None:
        self.stop_processes()
        self._state_file().unlink(missing_ok=True)
        for marker in self.state_dir.glob("partitioned-*"):
            marker.unlink()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def status_rows(self, topology: Topology) -> list[StatusRow]:
        rows = []
        for node in topology.nodes():
            pid = self.pid(node)
            detail = f"pid {pid if pid is not None else '-'}"
            rows.append(self.status_row(node, _runtime_state(pid), detail))
        return rows

    def show_logs(self, node: str | None, follow: bool) -> int:
        nodes = [node] if node else self.topology().nodes()
        if follow:
            lines = LOG_LINES if node else FOLLOW_LINES
            files = [str(self.log(name)) for name in nodes]
            return subprocess.run(["tail", "-n", str(lines), "-F", *files]).returncode
        for name in nodes:
            prefix = "" if node else f"{name} | "
            try:
                with self.log(name).open(errors="replace") as log:
                    tail = deque(log, maxlen=LOG_LINES)
            except OSError:
                tail = deque()
            for line in tail:
                sys.stdout.write(prefix + line)
        sys.stdout.flush()
        return 0

    # --- faults ------------------------------------------------------------------------------

    def kill(self, node: str) -> None:
        pid = self.pid(node)
        if pid is None or not pid_alive(pid):
            raise SimError(f"{node} is not running (already failed?)")
        _signal(pid, signal.SIGKILL)

    def restart(self, node: str) -> None:
        if pid_alive(self.pid(node)):
            raise SimError(f"{node} is still running; `fail {node}` first")
        self.spawn(node, self.node_argv(node))

    def require_namespaces(self, command: str) -> Network:
        if not self.state().netns:
            raise UsageError(
                f"{command} need network namespaces, which the local backend creates only "
                "when started as root; start it as root, or use the Docker backend"
            )
        return self.network

    def disconnect(self, node: str) -> None:
        self.require_namespaces("partition and heal").set_link(node, up=False)

    def reconnect(self, node: str) -> None:
        self.require_namespaces("partition and heal").set_link(node, up=True)

    def freeze(self, node: str) -> None:
        _signal(self.pid(node), signal.SIGSTOP)

    def thaw(self, node: str) -> None:
        _signal(self.pid(node), signal.SIGCONT)

    def traffic_control(
        self, node: str, action: str, *netem: str
    ) -> subprocess.CompletedProcess[str]:
        network = self.require_namespaces("slow, flaky and fast")
        argv = network.exec_prefix(network.namespace(node))
        argv += ["tc", "qdisc", action, "dev", network.node_link(node), "root", *netem]
        return subprocess.run(argv, capture_output=True, text=True)

    def in_node_netns(self, node: str) -> list[str]:
        network = self.require_namespaces("slow, flaky and fast")
        return network.exec_prefix(network.namespace(node))

    # --- work --------------------------------------------------------------------------------

    def start_client(
        self, work: Workload, json_path: Path | None, stdout: Output = None, stderr: Output = None
    ) -> ClientRun:
        state = self.state()
        target = str(json_path) if json_path else None
        argv = self.roles(state).client(state.coordinator_port, work, target)
        popen = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            preexec_fn=child_ignores_sigint,
        )
        return ClientRun(popen, json_path)

    # --- mpi: the MPI job over node agents started for it, in the workers' namespaces -----------

    def mpi(self, options: MpiOptions) -> int:
        state = self.state()
        workers = options.workers(Topology(state.workers).worker_names())
        launcher = Path(self.config.python).parent / "zrsh"
        if not launcher.is_file():
            raise SimError(f"{launcher} is missing: run `make venv` (zrsh is a console script)")
        names = [f"mpi-agent-{node}" for node in workers]
        self.undo.arm(lambda: self._stop_named(names), "stopping the MPI job's node agents")
        try:
            descriptor, ports = self._mpi_agents(workers, state.netns)
            interfaces = "lo"
            prefix: list[str] = []
            if state.netns:
                network = self.network
                network.route_between_workers(Topology(state.workers).worker_names())
                self._require_only_agents_listen(ports)
                interfaces, prefix = WORKERS_NET, network.exec_prefix(network.hub)
                say(f"mpi: no sshd: only the agents listen in {' '.join(workers)}'s namespaces")
            args = run_mpi_argv(
                options,
                workers,
                str(descriptor),
                launcher=str(launcher),
                interfaces=interfaces,
                json_path=str(options.json_path) if options.json_path else None,
            )
            sys.stdout.flush()
            argv = [*prefix, self.config.python, "-u", str(RUN_MPI), *args]
            status = subprocess.run(argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL).returncode
        finally:
            restore(self.undo, self.signals)
        return status

    def _mpi_agents(self, workers: list[str], netns: bool) -> tuple[Path, dict[str, int]]:
        """One node agent per worker (CURVE keys made once); a descriptor that lists them,
        and each agent's port."""
        folder = self.state_dir / "mpi"
        keys = folder / "keys"
        if not (keys / "client.key_secret").is_file():
            generate_keys(keys)
        nodes = []
        for node in workers:
            host = self.network.worker_address(node) if netns else LOOPBACK
            name = f"mpi-agent-{node}"
            # A /tmp of its own, as a real node has: Open MPI keeps its session files there.
            private_tmp = folder / "tmp" / node
            private_tmp.mkdir(parents=True, exist_ok=True)
            argv = ["env", f"NODE_ID={node}", f"TMPDIR={private_tmp}"]
            argv += [self.config.python, "-u", str(AGENT), "serve"]
            argv += ["--node-id", node, "--bind", host, "--port", "0", "--keys", str(keys)]
            if netns:
                argv = self.network.exec_prefix(self.network.namespace(node)) + argv
            self.log(name).unlink(missing_ok=True)
            self.spawn(name, argv)
            self.wait_for_log(name, "ready")
            port = int(AGENT_READY.findall(self.log(name).read_text(errors="replace"))[-1])
            nodes.append(NodeSpec(node, host, zmq_port=port, curve_keys_dir=keys))
        path = folder / "cluster.toml"
        described = ClusterDescriptor(f"{self.config.project}-mpi", tuple(nodes))
        path.write_text(render_descriptor(described))
        return path, {node.id: node.zmq_port for node in nodes}

    def _require_only_agents_listen(self, agent_ports: dict[str, int]) -> None:
        """Nothing but the agent listens in a worker's namespace: no sshd can run the job."""
        for node, port in agent_ports.items():
            others = sorted(self.network.listening_ports(node) - {port})
            if others:
                raise SimError(f"{node}'s namespace also listens on {others}: not only the agent")

    def _stop_named(self, names: list[str]) -> None:
        _terminate([(self.state_dir / f"{name}.pid", self.pid(name)) for name in names])


def _terminate(recorded: Sequence[tuple[Path, int | None]]) -> None:
    """SIGTERM every live one (thawing paused ones), SIGKILL what outlives STOP_GRACE_S
    (one deadline for all), and remove the pid files."""
    for _, pid in recorded:
        if pid_alive(pid):
            for signum in (signal.SIGTERM, signal.SIGCONT):
                _signal(pid, signum)
    deadline = time.monotonic() + STOP_GRACE_S
    for pidfile, pid in recorded:
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if pid_alive(pid):
            _signal(pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _signal(pid: int | None, signum: int) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _runtime_state(pid: int | None) -> str:
    if pid is None:
        return "dead"
    try:
        status = psutil.Process(pid).status()
    except psutil.Error:
        return "dead"
    if status == psutil.STATUS_ZOMBIE:
        return "dead"
    return "paused" if status in PAUSED else "running"
