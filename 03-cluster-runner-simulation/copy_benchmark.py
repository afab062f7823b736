"""100 MB to 8 nodes, side by side: ``zcp`` against ``scp`` and ``clush --copy`` over SSH.

Builds the nodes as fanout_benchmark.py does (N agents, each with its own --files-root;
one private sshd under N host names), writes a file of random bytes, and copies it to
every node, in turns, as a fresh process each time:

    zcp          zcp FILE 'node[0-N]':.                    (one process, N agents)
    scp ×N       N scp processes at once, node i into its own directory
    clush --copy clush -f N -o '-F ssh_config' -w 'node[0-N]' --copy FILE --dest DIR

After every run each copy is checked against the file's SHA-256, and removed. Differences
that the figures carry: zcp fsyncs every copy before it answers (scp and clush do not);
all the "nodes" share this machine's disk and its two cores, which also encrypt both ends
of every transfer; clush writes all N copies to one path (one machine), scp and zcp to N.

Run it:
    python 03-cluster-runner-simulation/copy_benchmark.py --nodes 8 --megabytes 100 --runs 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cluster_patterns.cli_args import make_parser, output_file, positive_int
from cluster_patterns.stats import percentile
from cluster_runner_simulation.fanout_benchmark import BIN, Report, benchmark_main, missing_tools
from cluster_runner_simulation.fanout_benchmark import ssh_config
from cluster_runner_simulation.testing import LocalAgents, LocalSshd, write_local_descriptor

RUN_TIMEOUT_S: Final = 900.0
CHUNK: Final = 1024 * 1024


@dataclass
class Copier:
    label: str
    run: Callable[[], None]
    copies: Callable[[], list[Path]]  # where the file should be after a run
    seconds: list[float] = field(default_factory=list)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def run_checked(argv: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]}: exit {done.returncode}: {done.stderr[-400:]}")


def parallel_scp(source: Path, config: Path, dirs: list[Path], env: dict[str, str]) -> None:
    procs = [
        subprocess.Popen(
            ["scp", "-q", "-F", str(config), str(source), f"node{i}:{directory}/"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        for i, directory in enumerate(dirs)
    ]
    failed = [p for p in procs if p.wait(RUN_TIMEOUT_S) != 0]
    if failed:
        assert failed[0].stderr is not None
        raise RuntimeError(f"scp: exit {failed[0].returncode}: {failed[0].stderr.read()[-400:]!r}")


def copiers(nodes: int, source: Path, agents: LocalAgents, config: Path, work: Path,
            env: dict[str, str]) -> list[Copier]:  # fmt: skip
    targets = f"node[0-{nodes - 1}]"
    scp_dirs = [work / "scp" / f"node{i}" for i in range(nodes)]
    clush_dir = work / "clush"
    for directory in [*scp_dirs, clush_dir]:
        directory.mkdir(parents=True, exist_ok=True)
    zcp_argv = [str(BIN / "zcp"), "--no-progress", str(source), f"{targets}:."]
    clush_argv = ["clush", "-f", str(nodes), "-o", f"-F {config}", "-w", targets]
    clush_argv += ["--copy", str(source), "--dest", str(clush_dir)]
    return [
        Copier(
            "zcp",
            lambda: run_checked(zcp_argv, env),
            lambda: [agents.files_root(i) / source.name for i in range(nodes)],
        ),
        Copier(
            f"scp ×{nodes} at once",
            lambda: parallel_scp(source, config, scp_dirs, env),
            lambda: [d / source.name for d in scp_dirs],
        ),
        Copier(
            "clush --copy",
            lambda: run_checked(clush_argv, env),
            lambda: [clush_dir / source.name],
        ),
    ]


def measure(nodes: int, megabytes: int, runs: int, work: Path) -> tuple[list[Copier], list[float]]:
    loads = [os.getloadavg()[0]]
    source = work / "payload.bin"
    with source.open("wb") as handle:
        for _ in range(megabytes):
            handle.write(os.urandom(CHUNK))
    want = sha256_of(source)
    with LocalSshd() as sshd, LocalAgents(nodes, files_roots=True) as agents:
        descriptor = write_local_descriptor(sshd, agents, work / "cluster.toml")
        config = ssh_config(sshd, work / "ssh_config")
        env = {**os.environ, "ZRSH_DESCRIPTOR": str(descriptor)}
        tools = copiers(nodes, source, agents, config, work, env)
        loads.append(os.getloadavg()[0])
        for round_index in range(runs + 1):  # round 0 warms up (page cache, sshd) uncounted
            shift = round_index % len(tools)
            for tool in tools[shift:] + tools[:shift]:
                started = time.perf_counter()
                tool.run()
                elapsed = time.perf_counter() - started
                for copy in tool.copies():
                    if sha256_of(copy) != want:
                        raise RuntimeError(f"{tool.label}: {copy} differs from the source")
                    copy.unlink()
                if round_index:
                    tool.seconds.append(elapsed)
        loads.append(os.getloadavg()[0])
    return tools, loads


def markdown(nodes: int, megabytes: int, runs: int, tools: list[Copier]) -> str:
    zcp = percentile(tools[0].seconds, 0.5)
    total = nodes * megabytes
    lines = [
        f"| {megabytes} MB to {nodes} nodes ({runs} runs) | median s | min s | max s "
        f"| MB/s (all copies) | × zcp |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for tool in tools:
        median = percentile(tool.seconds, 0.5)
        lines.append(
            f"| {tool.label} | {median:.2f} | {min(tool.seconds):.2f} | {max(tool.seconds):.2f} "
            f"| {total / median:.0f} | {median / zcp:.2f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        description="copy a file to many nodes: zcp vs scp vs clush --copy, side by side"
    )
    parser.add_argument("--nodes", type=positive_int, default=8, help="loopback nodes")
    parser.add_argument("--megabytes", type=positive_int, default=100, help="size of the file")
    parser.add_argument("--runs", type=positive_int, default=3, help="timed runs per tool")
    parser.add_argument("--json", type=output_file, default=None, help="write the figures as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def measured(work: Path) -> Report:
        tools, loads = measure(args.nodes, args.megabytes, args.runs, work)
        figures: dict[str, object] = {
            "nodes": args.nodes,
            "megabytes": args.megabytes,
            "seconds": {tool.label: tool.seconds for tool in tools},
        }
        return Report(markdown(args.nodes, args.megabytes, args.runs, tools), loads, figures)

    problem = missing_tools() or (None if shutil.which("scp") else "scp not found")
    return benchmark_main(problem, "copy-", measured, args.json)


if __name__ == "__main__":
    sys.exit(main())
