"""One size of the scale benchmark: a coordinator and N workers, each a real local process.

The coordinator binds two free loopback ports (NULL security, as on loopback by default);
a SUB tap on its status port reads every STATUS and NODE_EVENT. For one size it measures:

- the coordinator's CPU per second and RSS while nothing but heartbeats flow (idle);
- no-op (echo) tasks/s through it, and dispatch latency with one task in flight;
- kill -> "dead" on the status channel for SIGKILLed workers (a few at a time, each replaced
  by a new worker so the cluster keeps its size), and the coordinator's own figure (last
  message -> verdict);
- dead and suspect verdicts about workers nobody killed: false verdicts.

Used by scale_bench.py; it owns its sockets and processes and stops them however it ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import psutil
import zmq

from cluster_patterns import defaults
from cluster_patterns.client import ClientConfig, ClusterClient
from cluster_patterns.protocol import NodeEvent, NodeState, Status, decode
from cluster_patterns.stats import percentile
from cluster_patterns.transport import queued_messages
from cluster_runner_simulation.testing.processes import free_port
from cluster_simulator.config import REPO_ROOT

WORKER_CAPACITY: Final = 64
# Workers start this many at a time: 256 Python processes importing at once on 2 cores
# starve the rest for longer than a liveness window (260 dead verdicts while they started, in
# the first full run). And they run at the lowest priority: they stand in for machines of
# their own, so the coordinator and the status tap get the CPU first. At the same priority,
# 256 workers took so much of the 2 cores from the coordinator that it read heartbeats late
# and declared 178 and 211 of them dead while later batches started (2 at nice 19).
START_BATCH: Final = 32
WORKER_NICE: Final = 19
SETTLE_S: Final = 3.0  # after the last worker registered, before anything is measured
KILLS_PER_ROUND: Final = 5
KILL_SPACING_S: Final = 0.1
VERDICT_TIMEOUT_S: Final = 15.0
STOP_TIMEOUT_S: Final = 30.0
POLL_MS: Final = 50
STALL_S: Final = 5.0
# Told which phase the measurement is in (scale_bench.py shows it as progress).
PhaseReporter = Callable[[str], None]
# A NODE_EVENT with the time the tap read it.
Event = tuple[float, NodeEvent]


@dataclass(frozen=True)
class ClusterPlan:
    """How much to measure at one size."""

    workers: int
    idle_s: float
    tasks: int
    latency_tasks: int
    kills: int


@dataclass
class ClusterFigures:
    workers: int
    start_s: float = 0.0
    idle_cpu_percent: float = 0.0  # of one core, heartbeats only
    idle_rss_mib: float = 0.0
    idle_workers_cpu_percent: float = 0.0  # all workers together, of one core
    idle_machine_cpu_percent: float = 0.0  # everything on the machine (other users too)
    idle_load1: float = 0.0
    load_cpu_percent: float = 0.0  # the coordinator during the throughput batch
    load_workers_cpu_percent: float = 0.0
    load_machine_cpu_percent: float = 0.0
    tasks_per_s: float = 0.0
    dispatch_p50_ms: float = 0.0
    dispatch_p99_ms: float = 0.0
    detection_s: list[float] = field(default_factory=list)  # kill -> dead on the status channel
    silence_s: list[float] = field(default_factory=list)  # coordinator: last message -> dead
    missed_verdicts: int = 0  # killed workers never declared dead within VERDICT_TIMEOUT_S
    false_dead_start: int = 0  # while the workers registered
    false_dead_idle: int = 0
    false_dead_load: int = 0
    false_suspect: int = 0


class StatusTap:
    """A SUB socket on the coordinator's status port; owned by the thread that made it."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], port: int) -> None:
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)  # keep every event, however long we do not read
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(f"tcp://{defaults.LOOPBACK}:{port}")
        self.states: dict[str, str] = {}
        self.status_bytes = 0  # the size of the last STATUS frame

    def read(self, timeout_s: float) -> list[Event]:
        """NODE_EVENTs (with the time each was read) for up to ``timeout_s``; STATUS frames
        update ``states``."""
        events: list[Event] = []
        deadline = time.monotonic() + timeout_s
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms < 0 or not self.sock.poll(max(0, min(left_ms, POLL_MS))):
                if time.monotonic() >= deadline:
                    return events
                continue
            for frame, message in queued_messages(self.sock, decode):
                if isinstance(message, Status):
                    self.states = {n.node_id: n.state for n in message.nodes}
                    self.status_bytes = len(frame)
                elif isinstance(message, NodeEvent):
                    events.append((time.monotonic(), message))

    def alive(self) -> set[str]:
        return {node for node, state in self.states.items() if state == NodeState.ALIVE.value}

    def close(self) -> None:
        self.sock.close()


class LocalCluster:
    """The coordinator and its workers as processes, their output in a temporary directory."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.port, self.status_port = free_port(), free_port()
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.emulator: subprocess.Popen[bytes] | None = None
        self._serial = 0

    def _spawn(self, name: str, *args: str, nice: int = 0) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, *args],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches the benchmark, which stops them
                preexec_fn=(lambda: os.nice(nice) and None) if nice else None,
            )

    def start_coordinator(self) -> psutil.Process:
        script = "02-cluster-patterns/coordinator.py"
        ports = ["--port", str(self.port), "--status-port", str(self.status_port)]
        self.coordinator = self._spawn("coordinator", script, *ports)
        log = self.logs / "coordinator.log"
        deadline = time.monotonic() + 30
        while b"coordinator ready" not in log.read_bytes():
            if self.coordinator.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the coordinator did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        return psutil.Process(self.coordinator.pid)

    def add_workers(self, count: int) -> list[str]:
        names = []
        for _ in range(count):
            self._serial += 1
            name = f"w{self._serial:04d}"
            args = ["--id", name, "--port", str(self.port), "--capacity", str(WORKER_CAPACITY)]
            script = "02-cluster-patterns/worker.py"
            self.workers[name] = self._spawn(name, script, *args, nice=WORKER_NICE)
            names.append(name)
        return names

    def kill(self, name: str) -> None:
        self.workers.pop(name).kill()

    def start_emulator(self, workers: int, seconds: float) -> subprocess.Popen[bytes]:
        """scale_emulate.py: ``workers`` workers' REGISTER and heartbeats from one process."""
        args = ["--port", str(self.port), "--workers", str(workers), "--seconds", str(seconds)]
        self.emulator = subprocess.Popen(
            [sys.executable, "-m", "cluster_simulator.scale_emulate", *args],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=(self.logs / "emulator.log").open("ab"),
            start_new_session=True,
        )
        return self.emulator

    def stop(self) -> None:
        """SIGTERM every worker (they drain and deregister), then the coordinator."""
        procs = list(self.workers.values())
        if self.emulator is not None:
            procs.append(self.emulator)
        for proc in procs:
            _signal(proc, signal.SIGTERM)
        _reap(procs)
        if self.coordinator is not None:
            _signal(self.coordinator, signal.SIGINT)
            _reap([self.coordinator])
        self.workers.clear()


def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signum)
        except ProcessLookupError:
            pass


def _reap(procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running_cluster() -> Iterator[tuple[LocalCluster, psutil.Process, StatusTap]]:
    """A started coordinator (no workers yet) and a StatusTap on its status channel; all of it
    stopped, and the logs removed, on the way out."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
            cluster = LocalCluster(Path(tmp))
            try:
                coordinator = cluster.start_coordinator()
                tap = StatusTap(ctx, cluster.status_port)
                try:
                    yield cluster, coordinator, tap
                finally:
                    tap.close()
            finally:
                cluster.stop()
    finally:
        ctx.term()


def wait_alive(tap: StatusTap, names: set[str], timeout_s: float) -> list[Event]:
    """Until every one of ``names`` is alive; the NODE_EVENTs seen meanwhile."""
    deadline = time.monotonic() + timeout_s
    events: list[Event] = []
    while not names <= tap.alive():
        if time.monotonic() > deadline:
            missing = sorted(names - tap.alive())
            raise RuntimeError(f"{len(missing)} worker(s) never registered: {missing[:5]} ...")
        events += tap.read(0.2)
    return events


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """CPU time used so far by these processes (one that has exited counts no more)."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy so far (all cores, everyone's processes)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


class CpuMeter:
    """% of one core used by the coordinator, the workers and the machine over a window."""

    def __init__(self, coordinator: psutil.Process, workers: list[psutil.Process]) -> None:
        self.groups = {"coordinator": [coordinator], "workers": workers}
        self.started = time.monotonic()
        self.before = {name: cpu_seconds(procs) for name, procs in self.groups.items()}
        self.machine_before = machine_busy_seconds()

    def percent(self) -> dict[str, float]:
        wall = time.monotonic() - self.started
        used = {name: cpu_seconds(procs) - self.before[name] for name, procs in self.groups.items()}
        used["machine"] = machine_busy_seconds() - self.machine_before
        return {name: 100 * seconds / wall for name, seconds in used.items()}


def false_verdicts(events: list[Event], victims: set[str]) -> tuple[int, int]:
    """(dead, suspect) verdicts about workers that were not killed."""
    dead = suspect = 0
    for _, event in events:
        if event.node_id in victims:
            continue
        dead += event.event == NodeState.DEAD.value
        suspect += event.event == NodeState.SUSPECT.value
    return dead, suspect


async def throughput(port: int, count: int) -> float:
    async with ClusterClient(ClientConfig(port=port)) as client:
        await client.run_batch("echo", min(500, count))  # warm up every worker's pipe
        summary = await client.run_batch("echo", count, window=8192)
    if not summary.all_succeeded:
        raise RuntimeError(f"the throughput batch did not complete: {summary.line()}")
    return summary.tasks_per_s


async def dispatch_latency(port: int, count: int) -> tuple[float, float]:
    """p50 and p99 in ms of submit -> outcome with one task in flight."""
    samples = []
    async with ClusterClient(ClientConfig(port=port)) as client:
        for _ in range(count):
            started = time.perf_counter()
            [future] = client.submit([client.new_task("echo")])
            await future
            samples.append(time.perf_counter() - started)
    return percentile(samples, 0.5) * 1000, percentile(samples, 0.99) * 1000


def measure_cluster(plan: ClusterPlan, phase: PhaseReporter) -> ClusterFigures:
    figures = ClusterFigures(plan.workers)
    phase(f"{plan.workers} workers: starting them")
    started = time.monotonic()
    with running_cluster() as (cluster, coordinator, tap):
        events: list[Event] = []
        for first in range(0, plan.workers, START_BATCH):
            batch = set(cluster.add_workers(min(START_BATCH, plan.workers - first)))
            events += wait_alive(tap, batch, 60 + START_BATCH)
        figures.start_s = time.monotonic() - started
        events += tap.read(SETTLE_S)
        figures.false_dead_start, suspects = false_verdicts(events, set())

        phase(f"{plan.workers} workers: idle, heartbeats only ({plan.idle_s:.0f} s)")
        workers = [psutil.Process(proc.pid) for proc in cluster.workers.values()]
        figures.idle_load1 = os.getloadavg()[0]
        meter = CpuMeter(coordinator, workers)
        events = tap.read(plan.idle_s)
        idle = meter.percent()
        figures.idle_cpu_percent = idle["coordinator"]
        figures.idle_workers_cpu_percent = idle["workers"]
        figures.idle_machine_cpu_percent = idle["machine"]
        figures.idle_rss_mib = coordinator.memory_info().rss / 2**20
        figures.false_dead_idle, more = false_verdicts(events, set())
        suspects += more

        phase(f"{plan.workers} workers: {plan.tasks} echo tasks, then one at a time")
        meter = CpuMeter(coordinator, workers)
        figures.tasks_per_s = asyncio.run(throughput(cluster.port, plan.tasks))
        busy = meter.percent()
        figures.load_cpu_percent = busy["coordinator"]
        figures.load_workers_cpu_percent = busy["workers"]
        figures.load_machine_cpu_percent = busy["machine"]
        p50, p99 = asyncio.run(dispatch_latency(cluster.port, plan.latency_tasks))
        figures.dispatch_p50_ms, figures.dispatch_p99_ms = p50, p99
        dead, more = false_verdicts(tap.read(0.5), set())
        figures.false_dead_load, suspects = dead, suspects + more

        phase(f"{plan.workers} workers: {plan.kills} SIGKILLs")
        suspects += detect(cluster, tap, plan, figures)
        figures.false_suspect = suspects
    return figures


def detect(
    cluster: LocalCluster, tap: StatusTap, plan: ClusterPlan, figures: ClusterFigures
) -> int:
    """Kill workers a few at a time, time their verdicts, replace them; returns the suspect
    verdicts about others (dead ones about others are false verdicts under load)."""
    suspects = 0
    per_round = max(1, min(KILLS_PER_ROUND, plan.workers // 2))
    while len(figures.detection_s) + figures.missed_verdicts < plan.kills:
        batch = min(per_round, plan.kills - len(figures.detection_s) - figures.missed_verdicts)
        victims = sorted(cluster.workers)[:batch]
        killed_at: dict[str, float] = {}
        for name in victims:
            cluster.kill(name)
            killed_at[name] = time.monotonic()
            time.sleep(KILL_SPACING_S)
        waiting = set(victims)
        deadline = time.monotonic() + VERDICT_TIMEOUT_S
        while waiting and time.monotonic() < deadline:
            events = tap.read(0.1)
            for seen_at, event in events:
                if event.node_id in waiting and event.event == NodeState.DEAD.value:
                    waiting.discard(event.node_id)
                    figures.detection_s.append(seen_at - killed_at[event.node_id])
                    if event.detection_latency_s is not None:
                        figures.silence_s.append(event.detection_latency_s)
            dead, suspect = false_verdicts(events, set(killed_at))
            figures.false_dead_load += dead
            suspects += suspect
        figures.missed_verdicts += len(waiting)
        replacements = set(cluster.add_workers(batch))
        wait_alive(tap, replacements, 60 + batch)
        tap.read(1.0)
    return suspects


@dataclass
class EmulatedFigures:
    """The coordinator under ``workers`` emulated workers' heartbeats (scale_emulate.py)."""

    workers: int
    registered: int = 0  # the workers the coordinator lists alive
    refused: int = 0  # REFUSED replies (cluster_full beyond the worker table's bound)
    idle_cpu_percent: float = 0.0
    idle_rss_mib: float = 0.0
    status_kib: float = 0.0  # one STATUS frame, every heartbeat interval
    false_dead_start: int = 0  # while they registered (all at once)
    false_dead: int = 0
    false_suspect: int = 0
    late_heartbeats: int = 0  # the emulator's own lag: sent over a tenth of an interval late
    max_lag_ms: int = 0  # the emulator's worst lag behind its schedule


def wait_registered(tap: StatusTap, workers: int, timeout_s: float) -> list[Event]:
    """Until ``workers`` are alive, or their number has not grown for STALL_S (the table is
    full: the rest are refused), or ``timeout_s``; the NODE_EVENTs seen meanwhile."""
    deadline = time.monotonic() + timeout_s
    last_growth, seen = time.monotonic(), 0
    events: list[Event] = []
    while time.monotonic() < deadline and len(tap.alive()) < workers:
        events += tap.read(0.5)
        if len(tap.alive()) > seen:
            last_growth, seen = time.monotonic(), len(tap.alive())
        elif seen and time.monotonic() - last_growth > STALL_S:
            break
    return events


def measure_emulated(workers: int, idle_s: float, phase: PhaseReporter) -> EmulatedFigures:
    figures = EmulatedFigures(workers)
    phase(f"{workers} emulated workers: heartbeats only ({idle_s:.0f} s)")
    with running_cluster() as (cluster, coordinator, tap):
        ready_s = 30 + workers / 50
        emulator = cluster.start_emulator(workers, ready_s + SETTLE_S + idle_s + 5)
        events = wait_registered(tap, workers, ready_s)
        events += tap.read(SETTLE_S)
        figures.false_dead_start, _ = false_verdicts(events, set())
        figures.registered = len(tap.alive())
        meter = CpuMeter(coordinator, [])
        events = tap.read(idle_s)
        figures.idle_cpu_percent = meter.percent()["coordinator"]
        figures.idle_rss_mib = coordinator.memory_info().rss / 2**20
        figures.status_kib = tap.status_bytes / 1024
        figures.false_dead, figures.false_suspect = false_verdicts(events, set())
        emulator.terminate()  # it prints its counts and exits
        out, _ = emulator.communicate(timeout=STOP_TIMEOUT_S)
        counts = json.loads(out.decode().strip().splitlines()[-1])
        figures.refused = int(counts["refused"])
        figures.late_heartbeats = int(counts["late"])
        figures.max_lag_ms = int(counts["max_lag_ms"])
    return figures
