"""The MPI all-reduce job over the agents: mpirun on one node, its daemons started by zrsh.

Nothing here binds or connects itself: the job goes through a node's executor. The first node
of a group runs ``mpirun`` (asked through its agent, as cluster_runner asks for any command);
Open MPI starts its daemon (``orted``) on every other node through ``zrsh`` instead of ssh
(``--mca plm_rsh_agent zrsh``), and zrsh asks that node's agent to run it. The ranks then run
``allreduce_bench`` (mpi_bench.py) and talk to each other directly over TCP; rank 0's output,
the busbw table, comes back as the mpirun command's stdout. No sshd is involved anywhere.

* ``MpiJobSpec``: the hosts and every knob of the mpirun command line (``mpirun_argv``).
* ``run_mpi_job(executor, spec)``: run it on one node; an ``MpiRun`` with the parsed report.
* ``mpi_results(run, ...)``: one ``PerfTestResult`` per result line, for the journal (one
  record with the error when the job failed: nothing is lost silently).
* ``run_mpi_scheduled(opcon, schedule, groups, spec_for)``: every group, node-exclusively, as
  ``run_perf_test_scheduled`` does for the simulated test; run_schedules.py --mpi uses it.

Why these Open MPI options: ``--leave-session-attached`` keeps each daemon in the foreground of
its zrsh instead of daemonizing it (Open MPI's default for rsh launches), so the agent owns it:
a cancel or a timeout kills it with its process group, and a daemon that dies ends its zrsh,
which mpirun notices at once (a daemonized one that dies is noticed by nobody, and mpirun
waits for it forever; ``orte_startup_timeout`` bounds that wait too). ``plm_rsh_no_tree_spawn 1``
makes mpirun start every daemon itself (so only the launch node needs zrsh's descriptor and
keys); ``--bind-to none`` because nodes
that share one machine (the simulator) would otherwise all bind their rank 0 to core 0;
``pml ob1`` and ``btl self,tcp`` keep to plain TCP (no UCX or InfiniBand probing);
``btl_tcp_if_include``/``oob_tcp_if_include`` name the network the nodes share;
The first host is given to mpirun as ``localhost``: mpirun runs there, so its ranks there are
mpirun's own children, and no daemon is started beside mpirun through zrsh (nodes named so
that they do not resolve, such as the simulator's, would otherwise get one).
``shared_machine`` where simulated nodes are one machine's processes or containers:
``mpi_yield_when_idle 1``, since each node believes it has a core to itself and its rank would
spin on it while waiting, and ``rtc_hwloc_vmhole none``, since Open MPI 4.1.4's orted has
crashed (SIGSEGV in mca_rtc_hwloc, mapping mpirun's topology) under load on this 2-core
machine. Simulated nodes on one machine also need a /tmp each (``$TMPDIR``), as real nodes
have: Open MPI keeps its session files there, and daemons of one job on one /tmp collide
(``orte_session_dir`` and PMIx ``dstore`` errors). The simulator and ``LocalAgents(...,
private_tmp=True)`` give every agent its own.
The command line: python 03-cluster-runner-simulation/run_mpi.py --help
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cluster_patterns.transport import is_loopback
from cluster_runner_simulation.descriptor import ClusterDescriptor
from cluster_runner_simulation.mpi_bench import BenchOutputError, BenchReport, parse_bench_output
from cluster_runner_simulation.protocols import (
    CommandResult,
    ExecutorError,
    NodeExecutorProtocol,
    OperationalContextProtocol,
    PerfTestResult,
)
from cluster_runner_simulation.scheduling import Group, run_node_exclusive

TEST_NAME: Final = "mpi_allreduce"
DEFAULT_LAUNCHER: Final = "zrsh"
LAUNCHER_DESCRIPTOR_ENV: Final = "ZRSH_DESCRIPTOR"  # where zrsh finds the nodes
DEFAULT_TIMEOUT_S: Final = 300.0
DEFAULT_STARTUP_TIMEOUT_S: Final = 60
LAUNCH_HOST: Final = "localhost"  # how mpirun names the node it runs on
HOST_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
SIZE: Final = re.compile(r"^[1-9][0-9]*[KMG]?$")
MAX_OUTPUT_TAIL: Final = 2000  # characters of a failed job's output kept in its record


@dataclass(frozen=True)
class BenchSizes:
    """allreduce_bench's sweep: MIN to MAX bytes, times FACTOR per line (-b -e -f -n -w)."""

    min_bytes: str = "1K"
    max_bytes: str = "4M"
    factor: int = 4
    iters: int = 10
    warmup: int = 3

    def __post_init__(self) -> None:
        for name in ("min_bytes", "max_bytes"):
            if not SIZE.match(getattr(self, name)):
                raise ValueError(f"{name} must be a byte count such as 1024, 64K or 4M")
        if self.factor < 2 or self.iters < 1 or self.warmup < 0:
            raise ValueError("factor must be at least 2, iters at least 1, warmup at least 0")

    def argv(self) -> list[str]:
        return ["-b", self.min_bytes, "-e", self.max_bytes, "-f", str(self.factor)] + [
            "-n",
            str(self.iters),
            "-w",
            str(self.warmup),
        ]


@dataclass(frozen=True)
class MpiJobSpec:
    """One all-reduce job: where its ranks go and how mpirun reaches the other nodes."""

    hosts: tuple[str, ...]  # as the launcher knows them (zrsh: descriptor node ids)
    bench: str  # allreduce_bench's path, the same on every node
    launcher: str = DEFAULT_LAUNCHER  # Open MPI's plm_rsh_agent
    launcher_env: Mapping[str, str] = field(default_factory=dict)  # for mpirun and the launcher
    ranks_per_node: int = 1
    sizes: BenchSizes = BenchSizes()
    interfaces: str | None = None  # btl_tcp_if_include / oob_tcp_if_include; None: Open MPI's
    allow_run_as_root: bool = False
    mpirun: str = "mpirun"
    bind_to: str = "none"
    shared_machine: bool = False  # the nodes are one machine's (the simulator, --local)
    startup_timeout_s: int = DEFAULT_STARTUP_TIMEOUT_S  # a daemon that never calls back
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if len(self.hosts) < 1:
            raise ValueError("an MPI job needs at least one host")
        for host in self.hosts:
            if not HOST_NAME.match(host):
                raise ValueError(f"host {host!r}: 1-63 letters, digits, '.', '_' or '-'")
        if len(set(self.hosts)) != len(self.hosts):
            raise ValueError(f"hosts repeat: {', '.join(self.hosts)}")
        if not 1 <= self.ranks_per_node <= 64:
            raise ValueError("ranks_per_node must be 1-64")
        if not self.timeout_s > 0 or self.startup_timeout_s < 1:
            raise ValueError("timeout_s and startup_timeout_s must be positive")

    @property
    def ranks(self) -> int:
        return self.ranks_per_node * len(self.hosts)

    def with_hosts(self, hosts: Sequence[str]) -> MpiJobSpec:
        """The same job under other names for its hosts (ssh needs the hosts' own names)."""
        return dataclasses.replace(self, hosts=tuple(hosts))


def default_launcher() -> str:
    """zrsh beside this Python (a venv's bin/), else on PATH, else the bare name."""
    beside = Path(sys.executable).parent / DEFAULT_LAUNCHER
    if beside.is_file():
        return str(beside)
    return shutil.which(DEFAULT_LAUNCHER) or DEFAULT_LAUNCHER


def descriptor_job(
    descriptor: ClusterDescriptor,
    hosts: Sequence[str],
    *,
    bench: str,
    launcher: str | None = None,
    launcher_descriptor: str | None = None,
    interfaces: str | None = None,
    **options: Any,
) -> MpiJobSpec:
    """A job over descriptor nodes: zrsh on the first finds the others in the descriptor file
    (``launcher_descriptor``: its path on that node; default the file's own), and nodes that
    are all on loopback talk over ``lo``, which Open MPI leaves out unless it is named."""
    if launcher_descriptor is None:
        if descriptor.source is None:
            raise ValueError("the descriptor has no file for zrsh: give launcher_descriptor")
        launcher_descriptor = str(Path(descriptor.source).resolve())
    if interfaces is None and all(is_loopback(descriptor.node(h).host) for h in hosts):
        interfaces = "lo"
    return MpiJobSpec(
        hosts=tuple(hosts),
        bench=bench,
        launcher=launcher or default_launcher(),
        launcher_env={LAUNCHER_DESCRIPTOR_ENV: launcher_descriptor},
        interfaces=interfaces,
        **options,
    )


def mpirun_argv(spec: MpiJobSpec) -> list[str]:
    """The mpirun command line that runs ``spec`` from its first host."""
    return [*mpirun_launch_argv(spec), spec.bench, *spec.sizes.argv()]


def mpirun_launch_argv(spec: MpiJobSpec) -> list[str]:
    """mpirun and every option of ``spec``, without the program: what any program run
    across ``spec.hosts`` through the launcher needs (a test runs ``sh -c`` after it)."""
    names = [LAUNCH_HOST, *spec.hosts[1:]]  # mpirun runs on the first host
    slots = ",".join(f"{host}:{spec.ranks_per_node}" for host in names)
    argv = [spec.mpirun, "--host", slots, "-np", str(spec.ranks), "--map-by", "node"]
    argv += ["--bind-to", spec.bind_to, "--leave-session-attached"]
    if spec.allow_run_as_root:
        argv.append("--allow-run-as-root")
    # Ranks on one node may share memory (vader); across nodes only TCP.
    btl = "self,vader,tcp" if spec.ranks_per_node > 1 else "self,tcp"
    mca = [
        ("plm_rsh_agent", spec.launcher),
        ("plm_rsh_no_tree_spawn", "1"),
        ("orte_startup_timeout", str(spec.startup_timeout_s)),
        ("pml", "ob1"),
        ("btl", btl),
    ]
    if spec.interfaces:
        mca += [("btl_tcp_if_include", spec.interfaces), ("oob_tcp_if_include", spec.interfaces)]
    if spec.shared_machine:
        mca += [("mpi_yield_when_idle", "1"), ("rtc_hwloc_vmhole", "none")]
    for name, value in mca:
        argv += ["--mca", name, value]
    return argv


def mpirun_command(spec: MpiJobSpec) -> str:
    """``mpirun_argv`` as the one shell command an executor runs."""
    return shlex.join(mpirun_argv(spec))


# --- One run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MpiRun:
    """What one job gave: the command's result (None if the transport failed) and its report."""

    group: Group
    command: str
    started_at: float
    finished_at: float
    result: CommandResult | None = None
    report: BenchReport | None = None
    error: str | None = None  # why there is no (good) report

    @property
    def ok(self) -> bool:
        return self.error is None and self.report is not None


async def run_mpi_job(executor: NodeExecutorProtocol, spec: MpiJobSpec) -> MpiRun:
    """Run the job from ``executor``'s node; transport errors and bad output become ``error``."""
    command = mpirun_command(spec)
    group = spec.hosts
    started = time.time()
    try:
        result = await executor.run(command, timeout=spec.timeout_s, env=dict(spec.launcher_env))
    except ExecutorError as exc:
        return MpiRun(group, command, started, time.time(), error=f"{type(exc).__name__}: {exc}")
    finished = time.time()
    try:
        report = parse_bench_output(result.stdout_text)
    except BenchOutputError as exc:
        problem = f"exit {result.exit_status}" if result.exit_status != 0 else str(exc)
        detail = result.stderr_text.strip()[-MAX_OUTPUT_TAIL:]
        return MpiRun(group, command, started, finished, result, error=f"{problem}: {detail}")
    error = None
    if result.exit_status != 0:
        error = f"mpirun exited {result.exit_status}: {result.stderr_text.strip()[-200:]}"
    elif report.wrong:
        error = f"{report.wrong} wrong values in the all-reduce results"
    return MpiRun(group, command, started, finished, result, report, error)


def mpi_results(
    run: MpiRun, *, run_id: str, schedule: str, test: str = TEST_NAME, launcher: str = ""
) -> list[PerfTestResult]:
    """One journal record per result line; a single failed record when there is no report."""
    base_id = f"{run_id}/{schedule}/{test}/{'+'.join(run.group)}"
    exit_status = run.result.exit_status if run.result is not None else None
    common: dict[str, Any] = {
        "schedule": schedule,
        "test": test,
        "nodes": run.group,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
    }
    if run.report is None:
        extra: dict[str, Any] = {"errors": {run.group[0]: run.error or "no report"}}
        if run.result is not None:
            extra["stdout_tail"] = run.result.stdout_text[-MAX_OUTPUT_TAIL:]
        return [
            PerfTestResult(
                record_id=base_id,
                exit_status=exit_status if exit_status != 0 else 1,
                result_line="",
                extra=extra,
                **common,
            )
        ]
    report = run.report
    extra = {
        "ranks": len(report.ranks) or report.nranks,
        "rank_nodes": [place.node for place in report.ranks],
        "avg_busbw_gbps": report.avg_busbw_gbps,
        "launcher": launcher,
    }
    if run.error is not None:
        extra["errors"] = {run.group[0]: run.error}
    status = exit_status if run.error is None else (exit_status or 1)
    return [
        PerfTestResult(
            record_id=f"{base_id}/{row.size_bytes}",
            exit_status=status,
            result_line=row.line,
            metrics={
                "size_bytes": float(row.size_bytes),
                "time_us": row.time_us,
                "algbw_gbps": row.algbw_gbps,
                "busbw_gbps": row.busbw_gbps,
                "wrong": float(row.wrong or 0),
            },
            extra=extra,
            **common,
        )
        for row in report.rows
    ]


# --- On a schedule ----------------------------------------------------------------------------


async def run_mpi_test(
    opcon: OperationalContextProtocol, schedule: str, run_id: str, spec: MpiJobSpec
) -> list[PerfTestResult]:
    """Run one group's job from its first node and journal every result line."""
    run = await run_mpi_job(opcon.executor(spec.hosts[0]), spec)
    results = mpi_results(run, run_id=run_id, schedule=schedule, launcher=spec.launcher)
    for result in results:
        await opcon.journal().write(result)
    return results


async def run_mpi_scheduled(
    opcon: OperationalContextProtocol,
    schedule: str,
    groups: Sequence[Group],
    spec_for: Callable[[Group], MpiJobSpec],
    *,
    run_id: str | None = None,
) -> list[list[PerfTestResult]]:
    """Every group's job, node-exclusively; each group's records, in group order."""
    run_id = run_id or uuid.uuid4().hex[:12]
    return await run_node_exclusive(
        groups, lambda group: run_mpi_test(opcon, schedule, run_id, spec_for(group))
    )
