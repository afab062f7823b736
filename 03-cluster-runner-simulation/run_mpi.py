"""Run the MPI all-reduce job across nodes over the ZeroMQ agents, and print its busbw table.

Reads a cluster descriptor, connects to the agents of ``--nodes`` (CURVE, as
``build_zmq_context`` does), and asks the first node's agent to run ``mpirun``; Open MPI
starts its daemons on the other nodes through ``zrsh`` (mpi_job.py), so no sshd is needed
anywhere. Prints the program's output (a table shaped like nccl-tests' all_reduce_perf) and
one summary line; ``--json`` writes the journal records it would make.

    python 03-cluster-runner-simulation/run_mpi.py --local 2
    python 03-cluster-runner-simulation/run_mpi.py --descriptor cluster.toml \\
        --nodes gpu-01,gpu-02 \\
        --bench /shared/bin/allreduce_bench --interfaces ib0

zrsh on the first node finds the nodes through ``$ZRSH_DESCRIPTOR``: ``--launcher-descriptor``
(default: the ``--descriptor`` path, the same file on a shared filesystem). The program must be
at the same path on every node: ``--bench`` (default ``$ALLREDUCE_BENCH``, else built here with
mpicc, which serves when the nodes share this filesystem).

Exit codes: 0 the job ran and every value was right; 1 it failed (its error is printed);
2 bad arguments, descriptor or build; 3 a node unreachable; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from cluster_patterns.cli_args import (
    ErrorExit,
    make_parser,
    output_file,
    run_interruptible,
)
from cluster_runner_simulation.context_common import ContextBuildError
from cluster_runner_simulation.descriptor import (
    ClusterDescriptor,
    DescriptorError,
    load_descriptor,
)
from cluster_runner_simulation.journal_format import FileJournalWriter
from cluster_runner_simulation.mpi_bench import MpiBuildError, bench_binary
from cluster_runner_simulation.mpi_job import (
    DEFAULT_TIMEOUT_S,
    LAUNCHER_DESCRIPTOR_ENV,
    BenchSizes,
    MpiJobSpec,
    default_launcher,
    descriptor_job,
    mpi_results,
    mpirun_command,
    run_mpi_job,
)
from cluster_runner_simulation.protocols import ExecutorError, JournalError
from cluster_runner_simulation.zmq_node_executor import ZmqNodeExecutor
from cluster_runner_simulation.zmq_operational_context import zmq_executor_for

MAX_LOCAL_NODES: Final = 8


@contextlib.contextmanager
def local_descriptor(count: int) -> Iterator[Path]:
    """``count`` agents on loopback (the test harness) and no sshd, in a descriptor file."""
    from cluster_runner_simulation.testing import LocalAgents, write_local_descriptor

    with (
        tempfile.TemporaryDirectory(prefix="run-mpi-") as tmp,
        LocalAgents(count, private_tmp=True) as agents,
    ):
        path = write_local_descriptor(None, agents, Path(tmp) / "cluster.toml", "local-mpi")
        print(f"local cluster: {count} agents on 127.0.0.1, no sshd; descriptor {path}")
        yield path


def job_spec(
    args: argparse.Namespace, descriptor: ClusterDescriptor, hosts: list[str]
) -> MpiJobSpec:
    return descriptor_job(
        descriptor,
        hosts,
        bench=args.bench or str(bench_binary()),
        launcher=args.launcher,
        launcher_descriptor=args.launcher_descriptor,
        interfaces=args.interfaces,
        ranks_per_node=args.ranks_per_node,
        sizes=BenchSizes(args.min_bytes, args.max_bytes, args.factor, args.iters, args.warmup),
        allow_run_as_root=args.allow_run_as_root,
        shared_machine=args.shared_machine or args.local is not None,
        timeout_s=args.timeout,
    )


async def reachable(executors: Sequence[ZmqNodeExecutor]) -> None:
    """Every agent answers a ping, or ContextBuildError names each one that did not."""
    outcomes = await asyncio.gather(*(e.ping() for e in executors), return_exceptions=True)
    failures: dict[str, BaseException] = {}
    for executor, outcome in zip(executors, outcomes):
        if isinstance(outcome, ExecutorError):
            failures[executor.node_id] = outcome
        elif isinstance(outcome, BaseException):
            raise outcome
    if failures:
        raise ContextBuildError("zmq", failures)


async def run(args: argparse.Namespace, descriptor: ClusterDescriptor) -> int:
    hosts = args.nodes or descriptor.node_ids()[:2]
    spec = job_spec(args, descriptor, hosts)
    if args.print_command:
        where = spec.launcher_env[LAUNCHER_DESCRIPTOR_ENV]
        print(f"{LAUNCHER_DESCRIPTOR_ENV}={where} {mpirun_command(spec)}")
    # Opened (and locked) before the job runs: a journal that cannot take the results must
    # not be found out after the job.
    journal = FileJournalWriter(args.journal) if args.journal else None
    try:
        return await run_job(args, descriptor, hosts, spec, journal)
    finally:
        if journal is not None:
            await journal.close()


async def run_job(
    args: argparse.Namespace,
    descriptor: ClusterDescriptor,
    hosts: Sequence[str],
    spec: MpiJobSpec,
    journal: FileJournalWriter | None,
) -> int:
    executors = [zmq_executor_for(descriptor.node(host)) for host in hosts]
    try:
        await reachable(executors)
        print(
            f"mpi: mpirun on {hosts[0]} (through its agent) starts {spec.ranks} ranks on "
            f"{', '.join(hosts)}; remote daemons through {Path(spec.launcher).name}, not ssh",
            flush=True,
        )
        outcome = await run_mpi_job(executors[0], spec)
    finally:
        await asyncio.gather(*(executor.close() for executor in executors))
    if outcome.result is not None:
        sys.stdout.write(outcome.result.stdout_text)
    results = mpi_results(outcome, run_id=args.run_id, schedule="mpi", launcher=spec.launcher)
    if journal is not None:
        for result in results:
            await journal.write(result)
    if args.json:
        args.json.write_text(json.dumps([r.to_record() for r in results], indent=2) + "\n")
    seconds = outcome.finished_at - outcome.started_at
    if not outcome.ok or outcome.report is None:
        print(f"mpi: FAILED after {seconds:.2f} s: {outcome.error}", file=sys.stderr)
        return 1
    report = outcome.report
    print(
        f"mpi: {len(report.ranks)} ranks on {' '.join(report.nodes)}; "
        f"avg busbw {report.avg_busbw_gbps:.3f} GB/s; {len(report.rows)} sizes, 0 wrong; "
        f"{seconds:.2f} s"
    )
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = make_parser(
        description="Run the MPI all-reduce job over the ZeroMQ agents (mpirun + zrsh, no ssh)"
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--descriptor", type=Path, help="cluster descriptor (TOML)")
    where.add_argument("--local", type=int, metavar="N", help="N agents on loopback, no sshd")
    parser.add_argument("--nodes", help="comma-separated node ids, mpirun on the first; None: 2")
    parser.add_argument("--ranks-per-node", type=int, default=1, help="MPI ranks on each node")
    job = parser.add_argument_group("the job")
    sizes = BenchSizes()
    job.add_argument("--min-bytes", default=sizes.min_bytes, help="smallest message (K/M/G)")
    job.add_argument("--max-bytes", default=sizes.max_bytes, help="largest message (K/M/G)")
    job.add_argument("--factor", type=int, default=sizes.factor, help="size step factor")
    job.add_argument("--iters", type=int, default=sizes.iters, help="timed iterations per size")
    job.add_argument("--warmup", type=int, default=sizes.warmup, help="untimed iterations")
    job.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds")
    where_on_nodes = parser.add_argument_group("paths on the nodes")
    where_on_nodes.add_argument(
        "--bench", help="allreduce_bench on every node; None: $ALLREDUCE_BENCH or build here"
    )
    where_on_nodes.add_argument(
        "--launcher", default=default_launcher(), help="Open MPI's plm_rsh_agent (zrsh)"
    )
    where_on_nodes.add_argument(
        "--launcher-descriptor",
        help=f"${LAUNCHER_DESCRIPTOR_ENV} for zrsh; None: --descriptor's path",
    )
    parser.add_argument(
        "--interfaces",
        help="TCP networks for MPI (lo, eth0, 10.0.0.0/8); None: lo if every node is on "
        "loopback, else Open MPI's choice",
    )
    parser.add_argument(
        "--allow-run-as-root",
        action="store_true",
        default=os.geteuid() == 0,
        help="pass --allow-run-as-root to mpirun (default: when run as root)",
    )
    parser.add_argument(
        "--shared-machine",
        action="store_true",
        help="the nodes are one machine's (a simulator; on with --local): ranks yield the "
        "CPU while they wait",
    )
    parser.add_argument("--journal", type=Path, help="also journal the records here (JSONL)")
    parser.add_argument("--json", type=output_file, help="also write the records here (JSON)")
    parser.add_argument("--run-id", default=f"mpi-{int(time.time())}", help="record id prefix")
    parser.add_argument("--print-command", action="store_true", help="show the mpirun command")
    args = parser.parse_args(argv)
    if args.local is not None and not 2 <= args.local <= MAX_LOCAL_NODES:
        parser.error(f"--local must be 2-{MAX_LOCAL_NODES}")
    args.nodes = [n.strip() for n in (args.nodes or "").split(",") if n.strip()] or None
    if args.nodes is not None and len(args.nodes) < 2:
        parser.error("--nodes needs at least two nodes: the job runs across nodes")
    if args.nodes is not None and len(set(args.nodes)) != len(args.nodes):
        parser.error(f"--nodes names a node twice: {','.join(args.nodes)}")
    try:
        BenchSizes(args.min_bytes, args.max_bytes, args.factor, args.iters, args.warmup)
        MpiJobSpec(("a",), "b", ranks_per_node=args.ranks_per_node, timeout_s=args.timeout)
    except ValueError as exc:
        parser.error(str(exc))
    return args


# Exit codes: 2 bad input or files, 3 a transport that did not start.
EXITS: Final = (
    ErrorExit((DescriptorError, MpiBuildError), 2),
    ErrorExit(ContextBuildError, 3),
    ErrorExit(JournalError, 2, "journal: "),
    ErrorExit(OSError, 2),  # --json: a full disk, say (the path was checked at parsing)
)


def main_with(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        path = args.descriptor or stack.enter_context(local_descriptor(args.local))
        descriptor = load_descriptor(path)
        if args.nodes:
            descriptor.select(args.nodes)
        elif len(descriptor.nodes) < 2:
            raise DescriptorError(f"{path}: the job needs two nodes, the descriptor has one")
        return asyncio.run(run(args, descriptor))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_interruptible("run_mpi", lambda: main_with(args), EXITS)


if __name__ == "__main__":
    sys.exit(main())
