"""Run cluster_runner's schedules through a chosen transport: the transport switch, end to end.

Reads a cluster descriptor (``descriptor.py``), builds the operational context
for ``--transport`` (ZeroMQ agents, SSH, or ZeroMQ with SSH fallback), runs the
simulated all-reduce test on every group of the chosen schedules, journals each
result, and prints a summary. With ``--local N`` it first starts a private sshd
and N ZeroMQ agents on 127.0.0.1 and writes a descriptor for them, so it runs
without any real host.

Journals: the zmq transports send results over ZeroMQ to a collector (started here
on a free loopback port, or ``--journal-endpoint`` for a running one); ssh writes the
journal in-process with fsync per record, as cluster_runner does today.

    python 03-cluster-runner-simulation/run_schedules.py --local 4 --transport zmq --journal J.jsonl
    python 03-cluster-runner-simulation/run_schedules.py --descriptor D.toml \\
        --transport zmq+ssh-fallback --journal J.jsonl --schedule pairs --nodes a,b,c,d
    python 03-cluster-runner-simulation/run_schedules.py --local 4 --transport zmq --shadow

--mpi: the pairs schedule runs the real MPI all-reduce instead of the simulated test (zmq
only): mpirun on each pair's first node through its agent, the other node's daemon through
zrsh and its agent (mpi_job.py), one journal record per result line. With --local, no sshd is
started at all, so SSH cannot be what runs it.

--shadow (A/B, integration phase 3) answers from --transport and mirrors commands to the other
transport (shadow.py): a test runs its copy after the primary, never beside it, and the two
must agree on exit status and on the parsed busbw within the tolerance; read-only probes are
copied at once and must print the same.

Exit codes: 0 every test passed; 1 some tests failed; 2 bad arguments, descriptor or journal
path (a directory, read-only, full);
3 nodes unreachable while building the context; 4 the journal failed; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final

from cluster_patterns.cli_args import ErrorExit, make_parser, run_interruptible
from cluster_runner_simulation.agent_keys import KeyFileError
from cluster_runner_simulation.context_common import ContextBuildError, ExecutorContext
from cluster_runner_simulation.descriptor import (
    ClusterDescriptor,
    DescriptorError,
    NodeSpec,
    load_descriptor,
    render_descriptor,
)
from cluster_runner_simulation.journal_format import FileJournalWriter, JournalFileError
from cluster_runner_simulation.journal_writer import ZmqJournalWriter
from cluster_runner_simulation.testing import (
    LocalAgents,
    LocalSshd,
    free_port,
    local_nodes,
    sshd_unavailable_reason,
    write_local_descriptor,
)
from cluster_runner_simulation.migration import (
    ShadowPolicy,
    build_fallback_context,
    build_shadow_context,
    fallback_counts,
    shadow_stats,
)
from cluster_runner_simulation.protocols import (
    AsyncJournalWriterProtocol,
    JournalError,
    PerfTestResult,
)
from cluster_runner_simulation.mpi_bench import MpiBuildError, bench_binary
from cluster_runner_simulation.mpi_job import MpiJobSpec, descriptor_job, run_mpi_scheduled
from cluster_runner_simulation.scheduling import SCHEDULE_NAMES, Group, build_schedule
from cluster_runner_simulation.shadow import DEFAULT_REL_TOLERANCE
from cluster_runner_simulation.scheduling import run_perf_test_scheduled
from cluster_runner_simulation.ssh_context import build_ssh_context
from cluster_runner_simulation.zmq_operational_context import build_zmq_context

TRANSPORTS = ("zmq", "ssh", "zmq+ssh-fallback")
COLLECTOR_SCRIPT = Path(__file__).resolve().parent / "zmq_journal.py"
COLLECTOR_START_S = 15.0
MPI_SCHEDULE = "pairs"  # the leaf-to-leaf pairs run the real MPI job with --mpi


# --- Setting things up ------------------------------------------------------------------------


@contextlib.contextmanager
def local_cluster(count: int, workdir: Path) -> Iterator[Path]:
    """An sshd and ``count`` agents on loopback, and a descriptor file that lists them."""
    reason = sshd_unavailable_reason()
    if reason:
        raise SystemExit(f"run_schedules: error: --local needs sshd: {reason}")
    with LocalSshd() as sshd, LocalAgents(count) as agents:
        path = write_local_descriptor(sshd, agents, workdir / "local-cluster.toml")
        yield path


@contextlib.contextmanager
def local_agents_only(count: int, workdir: Path) -> Iterator[Path]:
    """``count`` agents on loopback and no sshd (--mpi), in a descriptor file."""
    with LocalAgents(count, private_tmp=True) as agents:
        path = workdir / "local-cluster.toml"
        nodes = local_nodes(count, None, agents)
        path.write_text(render_descriptor(ClusterDescriptor("local", nodes)))
        yield path


@contextlib.contextmanager
def local_collector(journal: Path) -> Iterator[str]:
    """A ``zmq_journal.py collector`` subprocess for ``journal``; yields its endpoint."""
    port = free_port()
    argv = [sys.executable, "-u", str(COLLECTOR_SCRIPT), "collector"]
    argv += ["--path", str(journal), "--port", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + COLLECTOR_START_S
        said = ""
        listening = False
        while time.monotonic() < deadline and not listening:
            line = proc.stdout.readline()
            if not line:
                break  # end of output: the collector exited
            listening = "listening" in line
            said = line.strip() or said
        if not listening:
            try:
                code = proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
            if code == 2:  # the collector's code for an unusable journal path
                raise JournalFileError(said.replace(": error:", ":", 1), journal)
            raise JournalError(f"journal collector did not start: {said or 'no output'}")
        yield f"tcp://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


# --- Running ----------------------------------------------------------------------------------


async def open_context(
    args: argparse.Namespace, descriptor: ClusterDescriptor, journal: AsyncJournalWriterProtocol
) -> ExecutorContext:
    wanted = set(args.nodes) if args.nodes else None

    def filter_fn(node: NodeSpec) -> bool:
        return wanted is None or node.id in wanted

    if args.shadow:
        policy = ShadowPolicy(
            sample_every=args.shadow_every, rel_tolerance=args.shadow_tolerance / 100
        )
        return await build_shadow_context(
            descriptor, filter_fn, journal, primary=args.transport, policy=policy
        )
    # The switch, as cluster_runner will have it.
    if args.transport == "zmq":
        return await build_zmq_context(descriptor, filter_fn, journal)
    if args.transport == "zmq+ssh-fallback":
        return await build_fallback_context(descriptor, filter_fn, journal)
    return await build_ssh_context(descriptor, filter_fn, journal)


async def run_all(
    args: argparse.Namespace, descriptor: ClusterDescriptor, journal: AsyncJournalWriterProtocol
) -> list[PerfTestResult]:
    opcon = await open_context(args, descriptor, journal)
    names = SCHEDULE_NAMES if args.schedule == "every" else (args.schedule,)
    results: list[PerfTestResult] = []
    try:
        for name in names:
            groups = build_schedule(name, opcon.leaves)
            started = time.monotonic()
            mpi = args.mpi and name == MPI_SCHEDULE
            if mpi:
                job = mpi_job_for(args, descriptor)
                by_group = await run_mpi_scheduled(opcon, name, groups, job)
            else:
                by_group = [[r] for r in await run_perf_test_scheduled(opcon, name, groups)]
            failed = [g[0] for g in by_group if any(r.exit_status != 0 for r in g)]
            lines = sum(len(g) for g in by_group)
            print(
                f"schedule {name:<7} {len(by_group):>3} groups, {len(by_group) - len(failed)} ok, "
                f"{len(failed)} failed, {time.monotonic() - started:.2f}s"
                + (f" (MPI all-reduce over zrsh, {lines} result lines)" if mpi else "")
            )
            for result in failed:
                print(
                    f"  FAILED {'+'.join(result.nodes)}: {result.extra.get('errors', result.extra)}"
                )
            results += [r for g in by_group for r in g]
        if args.transport == "zmq+ssh-fallback":
            counts = {n: c for n, c in fallback_counts(opcon).items() if c}
            print(f"ssh fallbacks: {counts or 'none'}")
        if args.shadow:
            stats = await shadow_stats(opcon)
            print(
                f"shadow: {stats.compared} commands compared, {stats.mismatched} mismatched, "
                f"{stats.secondary_errors} failed on the shadow side; {stats.serial_copies} "
                f"test copies ran after their primary, {stats.not_shadowed} not shadowed"
            )
            for found in stats.discrepancies[:10]:
                print(f"  DISCREPANCY {found.node_id}: {found.detail}")
    finally:
        await opcon.close()
    return results


def mpi_job_for(
    args: argparse.Namespace, descriptor: ClusterDescriptor
) -> Callable[[Group], MpiJobSpec]:
    """Each pair's MPI job; the program is built (or found) once, here."""
    bench = args.mpi_bench or str(bench_binary())

    def spec(group: Group) -> MpiJobSpec:
        return descriptor_job(
            descriptor,
            group,
            bench=bench,
            allow_run_as_root=os.geteuid() == 0,
            shared_machine=args.local is not None,  # the local nodes are this machine's
        )

    return spec


async def run_with_journal(args: argparse.Namespace, descriptor: ClusterDescriptor) -> int:
    journal: AsyncJournalWriterProtocol
    with contextlib.ExitStack() as stack:
        endpoint = args.journal_endpoint
        if endpoint is None and args.transport != "ssh":
            endpoint = stack.enter_context(local_collector(Path(args.journal)))
        if endpoint is not None:
            journal = ZmqJournalWriter(endpoint, keys_dir=args.journal_keys)
            where = f"collector {endpoint} -> {args.journal}"
        else:
            journal = FileJournalWriter(args.journal)
            where = f"{args.journal} (in-process, fsync per record)"
        try:
            results = await run_all(args, descriptor, journal)
        finally:
            await journal.close()
    failed = sum(1 for r in results if r.exit_status != 0)
    print(f"{len(results)} results journaled to {where}; {failed} failed")
    return 1 if failed else 0


# Exit codes: 2 bad input or files, 3 a transport that did not start, 4 a journal that
# failed while the schedules ran.
EXITS: Final = (
    ErrorExit(DescriptorError, 2),
    ErrorExit(ContextBuildError, 3),
    ErrorExit(JournalFileError, 2, "journal: "),
    ErrorExit((JournalError, ExceptionGroup), 4, "journal: "),
    ErrorExit((KeyFileError, MpiBuildError), 2),
)


def main_with(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="run-schedules-") as tmp:
        with contextlib.ExitStack() as stack:
            path = args.descriptor
            if args.local and args.mpi:
                path = stack.enter_context(local_agents_only(args.local, Path(tmp)))
                print(f"local cluster: {args.local} agents, no sshd (--mpi); descriptor {path}")
            elif args.local:
                path = stack.enter_context(local_cluster(args.local, Path(tmp)))
                print(f"local cluster: {args.local} agents and an sshd; descriptor {path}")
            descriptor = load_descriptor(path)
            if args.nodes:
                descriptor.select(args.nodes)  # unknown ids: a clear error now
            return asyncio.run(run_with_journal(args, descriptor))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = make_parser(description="Run cluster_runner schedules over a transport")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--descriptor", help="cluster descriptor (TOML)")
    where.add_argument("--local", type=int, metavar="N", help="start N local agents + an sshd")
    parser.add_argument(
        "--transport", choices=TRANSPORTS, default="zmq", help="how commands reach the nodes"
    )
    parser.add_argument("--journal", default="journal.jsonl", help="journal file (JSONL)")
    parser.add_argument("--journal-endpoint", help="a running collector (tcp://HOST:PORT)")
    parser.add_argument("--journal-keys", help="CURVE keys dir of that collector's writers")
    parser.add_argument(
        "--schedule",
        choices=(*SCHEDULE_NAMES, "every"),
        default="every",
        help="which schedule to run; every: all of them in turn",
    )
    parser.add_argument("--nodes", help="comma-separated node ids; None: all")
    parser.add_argument(
        "--shadow",
        action="store_true",
        help="mirror commands to the other transport (A/B): tests after their primary",
    )
    parser.add_argument(
        "--shadow-tolerance",
        type=float,
        default=DEFAULT_REL_TOLERANCE * 100,
        metavar="PCT",
        help="--shadow: busbw from 1 MiB may differ by this many per cent (mpi_repeat.py "
        "derives it from repeated runs)",
    )
    parser.add_argument(
        "--shadow-every",
        type=int,
        default=1,
        metavar="N",
        help="--shadow: copy one test in N (each copy runs after its primary: twice the time)",
    )
    parser.add_argument(
        "--mpi",
        action="store_true",
        help=f"the {MPI_SCHEDULE} schedule runs the real MPI all-reduce through zrsh (zmq only)",
    )
    parser.add_argument(
        "--mpi-bench",
        help="allreduce_bench's path on the nodes; None: $ALLREDUCE_BENCH, else built here",
    )
    args = parser.parse_args(argv)
    if args.local is not None and not 1 <= args.local <= 64:
        parser.error("--local must be 1-64")
    if args.mpi and (args.transport != "zmq" or args.shadow):
        parser.error("--mpi runs over the agents: --transport zmq, without --shadow")
    if args.mpi and args.schedule not in (MPI_SCHEDULE, "every"):
        parser.error(f"--mpi runs in the {MPI_SCHEDULE} schedule: --schedule {MPI_SCHEDULE}")
    if args.shadow and args.transport == "zmq+ssh-fallback":
        parser.error("--shadow needs --transport zmq or ssh (the primary)")
    if not 0 <= args.shadow_tolerance < 100 or args.shadow_every < 1:
        parser.error("--shadow-tolerance must be 0-99 (per cent) and --shadow-every at least 1")
    args.nodes = [n.strip() for n in args.nodes.split(",") if n.strip()] if args.nodes else None
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_interruptible("run_schedules", lambda: main_with(args), EXITS)


if __name__ == "__main__":
    sys.exit(main())
