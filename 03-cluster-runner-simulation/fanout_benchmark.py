"""Cold fan-out, side by side: ``zrun -b`` against ``clush -b`` and ``pdsh -R ssh``.

Builds N loopback nodes: N ZeroMQ agents (LocalAgents, CURVE, one process and port each) and
one private sshd (LocalSshd) that the SSH tools reach under N host names (``node0`` ...,
an ssh_config whose ``Host node*`` maps them all to it). Then every tool runs
``hostname`` on all N nodes as a fresh process, the way an operator types it, in turns
(zrun, clush, pdsh, then the next round in another order), so a burst of load on this
shared machine hits each tool alike. Every run is checked (exit 0, every node answered).

    zrun   -b -w 'node[0-N]' hostname               (its descriptor via $ZRSH_DESCRIPTOR)
    clush  -b -f N -o '-F ssh_config' -w 'node[0-N]' hostname
    pdsh   -R ssh -f N -w 'node[0-N]' hostname        (PDSH_SSH_ARGS='-F ssh_config %h')

It also times what bounds each tool: a bare interpreter, the imports of zrun, zrun and ssh
on one node. Markdown on stdout, ``--json`` for the figures.

Run it:
    python 03-cluster-runner-simulation/fanout_benchmark.py --nodes 64 --runs 5
    python 03-cluster-runner-simulation/fanout_benchmark.py --nodes 256 --runs 3 --json f.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cluster_patterns.cli_args import ErrorExit, make_parser, output_file, positive_int
from cluster_patterns.cli_args import run_interruptible
from cluster_patterns.stats import percentile
from cluster_runner_simulation.testing import LocalAgents, LocalSshd, sshd_unavailable_reason
from cluster_runner_simulation.testing import write_local_descriptor

BIN: Final = Path(sys.executable).parent
RUN_TIMEOUT_S: Final = 600.0
TOOLS: Final = ("zrun", "clush", "pdsh")
# A run that failed is exit 1; a file that could not be written (--json on a full disk) 2.
BENCHMARK_EXITS: Final = (
    ErrorExit((RuntimeError, subprocess.TimeoutExpired), 1),
    ErrorExit(OSError, 2),
)


@dataclass
class Timing:
    label: str
    argv: list[str]
    check: Callable[[subprocess.CompletedProcess[str]], str | None]  # None, or what is wrong
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return percentile(self.seconds, 0.5)


def ssh_config(sshd: LocalSshd, path: Path) -> Path:
    path.write_text(
        "\n".join(
            [
                "Host node*",
                f"  HostName {sshd.host}",
                f"  Port {sshd.port}",
                f"  User {sshd.username}",
                f"  IdentityFile {sshd.client_key_path}",
                "  IdentitiesOnly yes",
                f"  UserKnownHostsFile {sshd.known_hosts}",
                "  StrictHostKeyChecking yes",
                "  BatchMode yes",
                "  LogLevel ERROR",
                "  ControlMaster no",
                "  ControlPath none",
                "",
            ]
        )
    )
    return path


def every_node(
    nodes: int, folded: bool
) -> Callable[[subprocess.CompletedProcess[str]], str | None]:
    """A check: exit 0, and all ``nodes`` answered (one folded block, or a line each)."""
    host = platform.node()

    def check(done: subprocess.CompletedProcess[str]) -> str | None:
        if done.returncode != 0:
            return f"exit {done.returncode}: {done.stderr[-300:]}"
        if folded:
            ok = (
                f"node[0-{nodes - 1}] ({nodes})" in done.stdout
                if nodes > 1
                else host in done.stdout
            )
        else:
            ok = sum(1 for line in done.stdout.splitlines() if line.endswith(f": {host}")) == nodes
        return None if ok else f"not every node answered: {done.stdout[-300:]}"

    return check


def timed(timing: Timing, env: dict[str, str]) -> None:
    started = time.perf_counter()
    done = subprocess.run(
        timing.argv, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S, check=False
    )
    elapsed = time.perf_counter() - started
    problem = timing.check(done)
    if problem:
        raise RuntimeError(f"{timing.label}: {problem}")
    timing.seconds.append(elapsed)


def fanout_timings(nodes: int, config: Path) -> list[Timing]:
    targets = f"node[0-{nodes - 1}]"
    return [
        Timing(
            "zrun", [str(BIN / "zrun"), "-b", "-w", targets, "hostname"], every_node(nodes, True)
        ),
        Timing(
            "clush",
            ["clush", "-b", "-f", str(nodes), "-o", f"-F {config}", "-w", targets, "hostname"],
            every_node(nodes, True),
        ),
        Timing(
            "pdsh",
            ["pdsh", "-R", "ssh", "-f", str(nodes), "-w", targets, "hostname"],
            every_node(nodes, False),
        ),
    ]


def bound_timings(config: Path) -> list[Timing]:
    def exit0(done: subprocess.CompletedProcess[str]) -> str | None:
        return None if done.returncode == 0 else f"exit {done.returncode}: {done.stderr[-300:]}"

    python = str(BIN / "python")
    return [
        Timing("python -c pass (this venv)", [python, "-c", "pass"], exit0),
        Timing(
            "python -I -S -c pass (bare interpreter)", [python, "-I", "-S", "-c", "pass"], exit0
        ),
        Timing("python -c 'import zmq'", [python, "-c", "import zmq"], exit0),
        Timing(
            "python -c 'import ...zrun' (zrun's imports)",
            [python, "-c", "import cluster_runner_simulation.zrun"],
            exit0,
        ),
        Timing("zrun -w node0 hostname", [str(BIN / "zrun"), "-w", "node0", "hostname"], exit0),
        Timing(
            "ssh node0 hostname (one cold SSH)",
            ["ssh", "-F", str(config), "node0", "hostname"],
            exit0,
        ),
    ]


def measure(nodes: int, runs: int, workdir: Path) -> tuple[list[Timing], list[Timing], list[float]]:
    loads = [os.getloadavg()[0]]
    with LocalSshd() as sshd, LocalAgents(nodes) as agents:
        descriptor = write_local_descriptor(sshd, agents, workdir / "cluster.toml")
        config = ssh_config(sshd, workdir / "ssh_config")
        env = {
            **os.environ,
            "ZRSH_DESCRIPTOR": str(descriptor),
            "PDSH_SSH_ARGS": f"-F {config} %h",
        }
        fanouts, bounds = fanout_timings(nodes, config), bound_timings(config)
        for timing in [*fanouts, *bounds]:
            timed(timing, env)  # warm-up: page cache, sshd's first fork; not counted
            timing.seconds.clear()
        loads.append(os.getloadavg()[0])
        for round_index in range(runs):
            shift = round_index % len(fanouts)
            for timing in fanouts[shift:] + fanouts[:shift]:  # each tool goes first in turn
                timed(timing, env)
            for timing in bounds:
                timed(timing, env)
        loads.append(os.getloadavg()[0])
    return fanouts, bounds, loads


def markdown(nodes: int, runs: int, fanouts: list[Timing], bounds: list[Timing]) -> str:
    zrun = fanouts[0].median
    lines = [
        f"| `hostname` on {nodes} nodes, cold ({runs} runs) | median s | min s | max s | × zrun |",
        "|---|---:|---:|---:|---:|",
    ]
    for timing in fanouts:
        lines.append(
            f"| {timing.label} | {timing.median:.3f} | {min(timing.seconds):.3f} "
            f"| {max(timing.seconds):.3f} | {timing.median / zrun:.1f} |"
        )
    lines += ["", "| what bounds it (one node, or no node) | median s |", "|---|---:|"]
    lines += [f"| {t.label} | {t.median:.3f} |" for t in bounds]
    return "\n".join(lines)


def load_line(loads: Sequence[float]) -> str:
    return (
        f"(load average {loads[0]:.2f} at the start, {loads[1]:.2f} once the nodes were up, "
        f"{loads[2]:.2f} at the end; {os.cpu_count()} CPUs)"
    )


def write_json(path: Path | None, document: dict[str, object]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2) + "\n")


@dataclass(frozen=True)
class Report:
    """What one benchmark run measured: its table, the load averages, its JSON figures."""

    table: str
    loads: Sequence[float]
    figures: dict[str, object]


def benchmark_main(
    problem: str | None, prefix: str, measure: Callable[[Path], Report], json_path: Path | None
) -> int:
    """A side-by-side benchmark's exit status: 2 when a tool is missing (``problem``), 130 on
    Ctrl-C or SIGTERM (after its daemons are stopped and its folder removed), 1 when a run
    failed; else 0, with the table, the load line and the JSON figures (plus the load and the
    CPUs). ``measure`` works in a fresh directory under /tmp."""
    prog = Path(sys.argv[0]).name
    if problem:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        return 2

    def measure_and_report() -> int:
        with tempfile.TemporaryDirectory(prefix=prefix, dir="/tmp") as work:
            report = measure(Path(work))
        print(report.table)
        print(f"\n{load_line(report.loads)}")
        loads = list(report.loads)
        write_json(json_path, {**report.figures, "load_average": loads, "cpus": os.cpu_count()})
        return 0

    return run_interruptible(prog, measure_and_report, BENCHMARK_EXITS)


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        description="cold fan-out of hostname: zrun vs clush -b vs pdsh -R ssh, side by side"
    )
    parser.add_argument("--nodes", type=positive_int, default=64, help="loopback nodes")
    parser.add_argument("--runs", type=positive_int, default=5, help="timed runs per tool")
    parser.add_argument("--json", type=output_file, default=None, help="write the figures as JSON")
    return parser


def missing_tools() -> str | None:
    for tool, package in (("clush", "clustershell"), ("pdsh", "pdsh"), ("ssh", "openssh-client")):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install {package})"
    return sshd_unavailable_reason()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def measured(workdir: Path) -> Report:
        fanouts, bounds, loads = measure(args.nodes, args.runs, workdir)
        timings = [*fanouts, *bounds]
        figures: dict[str, object] = {
            "nodes": args.nodes,
            "runs": args.runs,
            "seconds": {t.label: t.seconds for t in timings},
            "medians": {t.label: round(t.median, 4) for t in timings},
            "over_zrun": {t.label: round(t.median / fanouts[0].median, 2) for t in fanouts[1:]},
        }
        return Report(markdown(args.nodes, args.runs, fanouts, bounds), loads, figures)

    return benchmark_main(missing_tools(), "fanout-", measured, args.json)


if __name__ == "__main__":
    sys.exit(main())
