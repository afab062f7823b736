"""Repeat the MPI all-reduce job, launched over SSH and over the agents, to size the noise.

A benchmark script, not a test. It runs the job ``--runs`` times per launcher, interleaved
(zmq, ssh, ssh, zmq...), so that both see the same machine:

* zmq: the first node's agent runs mpirun, whose daemon on the other node starts through zrsh;
* ssh: the first node's sshd runs mpirun (asyncssh), whose daemon starts through ssh, as
  cluster_runner's jobs do today.

The ranks talk over TCP either way; only the launch differs. Per message size it reports the
median, minimum and maximum busbw of each launcher, the ratio of the medians, and, for each
back-to-back pair of runs, the relative difference ``|a - b| / max(a, b)``: exactly what the
shadow comparison computes (shadow.py). From 1 MiB up it derives two thresholds, each 1.5x
the worst value seen, rounded up to 5 % and at least 5 %:

* the shadow tolerance (``ShadowPolicy.rel_tolerance``), from the worst pair difference;
* the phase-3 gate on busbw medians (migrated nodes against their SSH baseline), from the
  worst distance of the median ratio from 1.

Without ``--descriptor`` it runs on a loopback cluster of this machine (a private sshd and two
agents, from the test harness); with it, on two nodes of a real cluster, which is where the
migration plan's thresholds must come from (integration-plan/migration-strategy.md).

    python 03-cluster-runner-simulation/mpi_repeat.py --runs 10 \\
        --json docs/results/mpi-allreduce-repeat.json \\
        --markdown docs/results/mpi-allreduce-repeat.md
    python 03-cluster-runner-simulation/mpi_repeat.py --descriptor cluster.toml \\
        --nodes gpu-01,gpu-02 --bench /shared/bin/allreduce_bench --max-bytes 1G
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cluster_patterns.cli_args import ErrorExit, output_file, run_interruptible
from cluster_runner_simulation.descriptor import ClusterDescriptor, NodeSpec, load_descriptor
from cluster_runner_simulation.mpi_bench import MpiBuildError, bench_binary
from cluster_runner_simulation.mpi_job import (
    BenchSizes,
    MpiJobSpec,
    default_launcher,
    descriptor_job,
    run_mpi_job,
)
from cluster_runner_simulation.protocols import NodeExecutorProtocol
from cluster_runner_simulation.ssh_context import ssh_executor_for
from cluster_runner_simulation.testing import (
    LocalAgents,
    LocalSshd,
    openssh_argv,
    write_local_descriptor,
)
from cluster_runner_simulation.zmq_operational_context import zmq_executor_for

LAUNCHERS: Final = ("zmq", "ssh")
COMPARED_FROM_BYTES: Final = 1 << 20
# A --json or --markdown that cannot be written (a full disk, say): one line, exit 2.
EXITS: Final = (ErrorExit(OSError, 2),)


@dataclass
class Sample:
    launcher: str
    seconds: float  # the whole job, mpirun's start included
    busbw: dict[int, float]  # size -> GB/s


def ssh_launcher(node: NodeSpec, one_sshd: bool) -> str:
    """OpenSSH as Open MPI's rsh agent, with the descriptor's port, user, key and known_hosts.
    ``one_sshd``: every node name reaches this node's sshd (the loopback cluster has one)."""
    argv = openssh_argv(node.host, node.ssh_port, None, node.ssh_key, node.ssh_known_hosts)[:-1]
    if one_sshd:
        argv += ["-o", f"HostName={node.host}"]
    return shlex.join([*argv, *(["-l", node.ssh_user] if node.ssh_user else [])])


def job(args: Any, descriptor: ClusterDescriptor, name: str, launcher: str) -> MpiJobSpec:
    """The same job for both launchers; over ssh the hosts are the nodes' own names."""
    nodes = [descriptor.node(node_id) for node_id in args.nodes]
    hosts = args.nodes if name == "zmq" or args.local else [n.host for n in nodes]
    return descriptor_job(
        descriptor,
        args.nodes,
        bench=args.bench,
        launcher=launcher,
        launcher_descriptor=args.launcher_descriptor,
        interfaces=args.interfaces,
        sizes=BenchSizes(max_bytes=args.max_bytes, iters=args.iters),
        allow_run_as_root=os.geteuid() == 0,
        shared_machine=bool(args.local),
    ).with_hosts(hosts)


async def measure(args: Any, path: Path) -> list[Sample]:
    descriptor = load_descriptor(path)
    args.nodes = args.nodes or descriptor.node_ids()[:2]
    first = descriptor.node(args.nodes[0])
    executors: dict[str, NodeExecutorProtocol] = {
        "zmq": zmq_executor_for(first),
        "ssh": ssh_executor_for(first),
    }
    specs = {
        "zmq": job(args, descriptor, "zmq", args.zrsh),
        "ssh": job(args, descriptor, "ssh", ssh_launcher(first, bool(args.local))),
    }
    samples = []
    try:
        for index in range(args.runs):
            order = LAUNCHERS if index % 2 == 0 else LAUNCHERS[::-1]
            for name in order:
                run = await run_mpi_job(executors[name], specs[name])
                if not run.ok or run.report is None:
                    raise SystemExit(f"mpi_repeat: the {name} run failed: {run.error}")
                rows = {row.size_bytes: row.busbw_gbps for row in run.report.rows}
                samples.append(Sample(name, run.finished_at - run.started_at, rows))
                print(f"run {index + 1:>2} {name}: {samples[-1].seconds:.2f} s", flush=True)
    finally:
        await asyncio.gather(*(e.close() for e in executors.values()))
    return samples


def _pct(value: float) -> float:
    return round(value * 100, 1)


def summarize(samples: list[Sample]) -> dict[str, Any]:
    sizes = sorted(samples[0].busbw)
    by = {name: [s for s in samples if s.launcher == name] for name in LAUNCHERS}
    rows = []
    worst_pair = worst_ratio = 0.0
    for size in sizes:
        row: dict[str, Any] = {"size_bytes": size}
        for name, runs in by.items():
            values = [s.busbw[size] for s in runs]
            row[name] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
        pairs = [
            abs(a.busbw[size] - b.busbw[size]) / max(a.busbw[size], b.busbw[size], 1e-9)
            for a, b in zip(by["zmq"], by["ssh"])
        ]
        row["pair_difference_pct"] = {
            "median": _pct(statistics.median(pairs)),
            "max": _pct(max(pairs)),
        }
        row["median_ratio_zmq_over_ssh"] = round(
            row["zmq"]["median"] / max(row["ssh"]["median"], 1e-9), 3
        )
        if size >= COMPARED_FROM_BYTES:
            worst_pair = max(worst_pair, max(pairs))
            worst_ratio = max(worst_ratio, abs(row["median_ratio_zmq_over_ssh"] - 1))
        rows.append(row)
    seconds = {name: statistics.median(s.seconds for s in runs) for name, runs in by.items()}
    return {
        "runs_per_launcher": len(by["zmq"]),
        "sizes": rows,
        "job_seconds_median": seconds,
        "worst_pair_difference_pct_from_1MiB": _pct(worst_pair),
        "worst_median_ratio_distance_pct_from_1MiB": _pct(worst_ratio),
        "derived_tolerance_pct": threshold(worst_pair),
        "derived_median_gate_pct": threshold(worst_ratio),
    }


def threshold(worst: float) -> int:
    """1.5x the worst value seen, rounded up to 5 %, at least 5 % (in percent)."""
    return max(5, 5 * math.ceil(round(150 * worst, 6) / 5))


def machine() -> str:
    """CPUs, memory, kernel, Python and Open MPI of this machine, for the record."""
    try:
        mpirun = subprocess.run(
            ["mpirun", "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        mpirun = "mpirun unknown"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} CPUs, {memory:.0f} GiB RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, {mpirun}"
    )


def markdown(summary: dict[str, Any], command: str, load: str, where: str) -> str:
    setup = (
        "Two loopback nodes of this machine, one rank each; the ranks talk over TCP on `lo`."
        if where == "loopback"
        else f"Two nodes of {where}, one rank each."
    )
    lines = [
        "# The MPI all-reduce job, repeated: launched over SSH and over the agents",
        "",
        f"- date: {summary['date']}",
        f"- machine: {summary['machine']}",
        f"- load average of the launching machine before the run: {load}",
        f"- command: `{command}`",
        "",
        setup + " Only the launch differs between the two columns.",
        "",
        "| size (B) | zmq busbw median (min-max) GB/s | ssh busbw median (min-max) GB/s "
        "| zmq/ssh medians | pair difference median / max |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in summary["sizes"]:
        cells = [str(row["size_bytes"])]
        for name in LAUNCHERS:
            part = row[name]
            cells.append(f"{part['median']:.2f} ({part['min']:.2f}-{part['max']:.2f})")
        cells.append(f"{row['median_ratio_zmq_over_ssh']:.2f}")
        diff = row["pair_difference_pct"]
        cells.append(f"{diff['median']} % / {diff['max']} %")
        lines.append("| " + " | ".join(cells) + " |")
    seconds = summary["job_seconds_median"]
    unusable = summary["derived_tolerance_pct"] >= 100
    lines += [
        "",
        f"- runs per launcher: {summary['runs_per_launcher']}",
        f"- job time, median (mpirun start to end): zmq {seconds['zmq']:.2f} s, "
        f"ssh {seconds['ssh']:.2f} s",
        "- largest back-to-back difference from 1 MiB up: "
        f"{summary['worst_pair_difference_pct_from_1MiB']} %; derived shadow tolerance "
        f"(1.5x, rounded up to 5 %): {summary['derived_tolerance_pct']} %"
        + (" (100 % or more: busbw cannot be compared here)" if unusable else ""),
        "- largest distance of the zmq/ssh median ratio from 1, from 1 MiB up: "
        f"{summary['worst_median_ratio_distance_pct_from_1MiB']} %; derived gate on the "
        f"medians: {summary['derived_median_gate_pct']} %",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Repeat the MPI job over SSH and over the agents; report the busbw noise",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--descriptor", type=Path, help="a real cluster's descriptor (TOML)")
    where.add_argument(
        "--local", action="store_true", help="a loopback sshd and two agents (the default)"
    )
    parser.add_argument("--nodes", help="two node ids, mpirun on the first; None: the first two")
    parser.add_argument("--runs", type=int, default=10, help="runs per launcher")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per size")
    parser.add_argument("--max-bytes", default="4M", help="largest all-reduce message")
    parser.add_argument("--bench", help="allreduce_bench on the nodes; None: built here")
    parser.add_argument("--zrsh", default=default_launcher(), help="zrsh on the first node")
    parser.add_argument("--launcher-descriptor", help="$ZRSH_DESCRIPTOR on the first node")
    parser.add_argument("--interfaces", help="TCP networks for MPI; None: lo on loopback")
    parser.add_argument("--json", type=output_file, help="write the samples and the summary here")
    parser.add_argument("--markdown", type=output_file, help="write the summary table here")
    args = parser.parse_args(argv)
    args.local = args.descriptor is None
    if not 2 <= args.runs <= 100:
        parser.error("--runs must be 2-100")
    args.nodes = [n for n in (args.nodes or "").split(",") if n] or None
    if args.nodes is not None and len(args.nodes) != 2:
        parser.error("--nodes takes two node ids")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        args.bench = args.bench or str(bench_binary())
    except MpiBuildError as exc:
        print(f"mpi_repeat: error: {exc}", file=sys.stderr)
        return 2
    # SIGTERM takes the Ctrl-C path, so the loopback sshd and agents are stopped either way.
    return run_interruptible("mpi_repeat", lambda: repeat_and_report(args, argv), EXITS)


def repeat_and_report(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        path = args.descriptor or stack.enter_context(loopback_cluster())
        samples = asyncio.run(measure(args, path))
    summary = summarize(samples)
    summary["date"] = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
    summary["machine"] = machine()
    command = "python 03-cluster-runner-simulation/mpi_repeat.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    text = markdown(summary, command.strip(), load, "loopback" if args.local else str(path))
    print(text)
    print(f"({time.monotonic() - started:.0f} s)")
    if args.json:
        document = {"summary": summary, "samples": [s.__dict__ for s in samples], "load": load}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(text)
    return 0


@contextlib.contextmanager
def loopback_cluster() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mpi-repeat-") as tmp:
        with LocalSshd() as sshd, LocalAgents(2, private_tmp=True) as agents:
            yield write_local_descriptor(sshd, agents, Path(tmp) / "cluster.toml")


if __name__ == "__main__":
    sys.exit(main())
