"""SSH vs ZeroMQ, side by side in one run: latency, throughput, fan-out, 10 MB transfer.

With no target it builds everything on loopback: a private sshd (LocalSshd:
Debian's openssh-server, generated host and client keys, a free high port) and
--nodes ZeroMQ agents (LocalAgents: CURVE keys, free ports). The same commands
then run through five executors:

    zmq        ZmqNodeExecutor -> zmq_node_agent.py (one DEALER per node)
    asyncssh   AsyncSSHExecutor (one persistent connection per node, a channel per command)
    ssh_mux    OpenSSH `ssh` with ControlMaster multiplexing (one master per node)
    ssh_fresh  OpenSSH `ssh`, a new connection per command
    local      asyncio.create_subprocess_shell on this machine: the physical floor

Measured: sequential latency of `true` (p50/p95/p99), commands/s at
concurrency 16, fan-out of `true` to --nodes nodes at once, and a 10 MB stdout.
A progress bar (tqdm) runs on stderr when it is a terminal; a markdown table and
the target ratios go to stdout. The runners are perf_runners.py, the figures and their
reports perf_report.py.

With ``--descriptor cluster.toml`` (the format of descriptor.py) it measures
real hosts instead: each node's sshd (ssh_port, ssh_user, ssh_key,
ssh_known_hosts) and its agent (zmq_port, curve_keys_dir), fanning out to all
of the descriptor's nodes; ``local`` still runs on this machine, and no local
sshd is needed (only the ``ssh`` client, for ssh_mux and ssh_fresh).
``./docker/simulate-cluster.sh compare`` runs this mode inside the Docker
cluster against its worker containers.

By default the private sshd sets SHLVL=1, so Debian's bash does not source the
login user's ~/.bashrc before each command (the agent's /bin/sh sources nothing
either): both sides measure the transport. ``--ssh-login-rc`` drops that
setting, to show what the user's rc file adds to every SSH command.

Run it:
    python 03-cluster-runner-simulation/performance_comparison.py --quick
    python 03-cluster-runner-simulation/performance_comparison.py --quick --ssh-login-rc
    python 03-cluster-runner-simulation/performance_comparison.py --nodes 64 \\
        --json build/perf.json --plot build/perf.png
    python 03-cluster-runner-simulation/performance_comparison.py --descriptor cluster.toml
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from tqdm import tqdm

from cluster_patterns.cli_args import output_file, positive_int
from cluster_runner_simulation.agent_keys import KeyFileError
from cluster_runner_simulation.descriptor import DescriptorError, load_descriptor
from cluster_runner_simulation.perf_report import CONCURRENCY, Figures, markdown, plot
from cluster_runner_simulation.perf_report import report_json
from cluster_runner_simulation.perf_runners import (
    EXECUTORS,
    Runner,
    SetupError,
    build_bench,
    stop_ssh_masters,
)
from cluster_runner_simulation.protocols import ExecutorError
from cluster_runner_simulation.testing import (
    LocalAgents,
    LocalSshd,
    local_nodes,
    sshd_unavailable_reason,
)

TRANSFER_BYTES: Final = 10 * 1024 * 1024
DEFAULT_NODES: Final = 16
QUICK_NODES: Final = 16
MIN_SAMPLES: Final = 5


@dataclass(frozen=True)
class Plan:
    """How much to measure per executor; each phase also stops once it has used budget_s."""

    latency: int  # sequential `true` samples
    throughput: int  # commands at concurrency 16
    fanout: int  # repetitions of the fan-out
    transfer: int  # 10 MB transfers
    budget_s: float


FULL_PLANS = {
    "zmq": Plan(1000, 2000, 5, 5, 20.0),
    "local": Plan(1000, 2000, 5, 5, 20.0),
    "asyncssh": Plan(100, 320, 5, 3, 20.0),
    "ssh_mux": Plan(100, 320, 5, 3, 20.0),
    "ssh_fresh": Plan(30, 64, 3, 3, 20.0),
}
QUICK_PLANS = {
    "zmq": Plan(300, 400, 3, 3, 3.0),
    "local": Plan(300, 400, 3, 3, 3.0),
    "asyncssh": Plan(20, 32, 2, 1, 3.0),
    "ssh_mux": Plan(20, 32, 2, 1, 3.0),
    "ssh_fresh": Plan(8, 16, 1, 1, 3.0),
}
SMOKE_PLAN = Plan(5, 16, 1, 1, 1.0)  # --smoke: proves the script works, measures nothing


class Progress(Protocol):
    """What the measurements report to: a tqdm bar, or anything with these two methods."""

    def update(self, n: float | None = 1) -> bool | None: ...

    def set_description_str(self, desc: str | None = None, refresh: bool = True) -> None: ...


def progress_bar(total: int, enabled: bool) -> tqdm[Any]:
    """A bar on stderr; tqdm turns it off by itself when stderr is not a terminal."""
    return tqdm(
        total=total, file=sys.stderr, disable=None if enabled else True, unit="step", leave=False
    )


# --- Measurements -----------------------------------------------------------------------------


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await call()
    return (time.perf_counter() - started) * 1000.0


async def measure_latencies(
    runners: dict[str, Runner], plans: dict[str, Plan], progress: Progress
) -> dict[str, list[float]]:
    """Sequential `true`, one sample per executor in turn, so that a burst of load on
    this shared machine hits every executor alike instead of whichever ran then."""
    for runner in runners.values():
        for _ in range(3):
            await runner.run("true")  # warm up: connections, caches
    samples: dict[str, list[float]] = {name: [] for name in runners}
    spent = dict.fromkeys(runners, 0.0)
    active = list(runners)
    while active:
        for name in list(active):
            elapsed = await timed(lambda: runners[name].run("true"))
            samples[name].append(elapsed)
            spent[name] += elapsed / 1000.0
            progress.update()
            plan, taken = plans[name], len(samples[name])
            if taken >= plan.latency or (spent[name] > plan.budget_s and taken >= MIN_SAMPLES):
                progress.update(plan.latency - taken)
                active.remove(name)
    return samples


async def measure_throughput(runner: Runner, plan: Plan, progress: Progress) -> float:
    todo = iter(range(plan.throughput))
    done = 0
    started = time.perf_counter()
    deadline = started + plan.budget_s

    async def worker() -> None:
        nonlocal done
        for _ in todo:
            if time.perf_counter() > deadline and done >= CONCURRENCY:
                return
            await runner.run("true")
            done += 1
            progress.update()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    progress.update(plan.throughput - done)
    return done / (time.perf_counter() - started)


async def repeat(
    plan_count: int, budget_s: float, call: Callable[[], Awaitable[Any]], progress: Progress
) -> float:
    """Median wall time of ``call`` in ms, over plan_count runs or budget_s, at least one."""
    totals: list[float] = []
    started = time.perf_counter()
    while len(totals) < plan_count:
        totals.append(await timed(call))
        progress.update()
        if time.perf_counter() - started > budget_s:
            break
    progress.update(plan_count - len(totals))
    return statistics.median(totals)


async def measure_fanout(runners: list[Runner], plan: Plan, progress: Progress) -> float:
    if runners[0].name != "ssh_fresh":  # nothing to warm up without a connection
        await asyncio.gather(*(r.run("true") for r in runners))  # every connection warm

    async def fan_out() -> None:
        await asyncio.gather(*(r.run("true") for r in runners))

    return await repeat(plan.fanout, plan.budget_s, fan_out, progress)


async def measure_transfer(runner: Runner, plan: Plan, progress: Progress) -> float:
    async def transfer() -> None:
        out = await runner.run(f"head -c {TRANSFER_BYTES} /dev/zero")
        if len(out) != TRANSFER_BYTES:
            raise RuntimeError(f"{runner.name}: got {len(out)} of {TRANSFER_BYTES} bytes")

    return await repeat(plan.transfer, plan.budget_s, transfer, progress)


# --- Running ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run; the command line builds it."""

    executors: tuple[str, ...] = EXECUTORS
    nodes: int = DEFAULT_NODES  # agents started on loopback (ignored with a descriptor)
    quick: bool = False
    smoke: bool = False
    descriptor: Path | None = None
    progress: bool = True
    ssh_login_rc: bool = False


async def benchmark(config: BenchConfig) -> dict[str, Figures]:
    # SIGTERM unwinds like Ctrl-C, so the agents and sshd (own sessions) are stopped too.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    names = list(config.executors)
    plans = QUICK_PLANS if config.quick else FULL_PLANS
    if config.smoke:
        plans = dict.fromkeys(EXECUTORS, SMOKE_PLAN)
    steps = sum(
        p.latency + p.throughput + p.fanout + p.transfer for n, p in plans.items() if n in names
    )
    progress = progress_bar(steps, enabled=config.progress)
    figures = {name: Figures() for name in names}
    with contextlib.ExitStack() as stack:
        if config.descriptor is not None:
            nodes = list(load_descriptor(config.descriptor).nodes)
        else:
            progress.set_description_str(f"starting sshd and {config.nodes} agents")
            needs_ssh = any(n.startswith(("ssh", "async")) for n in names)
            sshd = LocalSshd(source_rc=config.ssh_login_rc) if needs_ssh else None
            if sshd is not None:
                stack.enter_context(sshd)
            agents = stack.enter_context(LocalAgents(config.nodes)) if "zmq" in names else None
            nodes = list(local_nodes(config.nodes, sshd, agents))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cm-", dir="/tmp")))
        bench = build_bench(names, nodes, tmp)
        try:
            progress.set_description_str("latency, all executors in turn")
            firsts = {name: group[0] for name, group in bench.runners.items()}
            for name, latencies in (await measure_latencies(firsts, plans, progress)).items():
                figures[name].latencies_ms = latencies
            for name in names:
                group, plan, fig = bench.runners[name], plans[name], figures[name]
                progress.set_description_str(f"{name}: throughput @{CONCURRENCY}")
                fig.cmds_per_s = await measure_throughput(group[0], plan, progress)
                progress.set_description_str(f"{name}: fan-out to {len(group)}")
                fig.fanout_nodes = len(group)
                fig.fanout_ms = await measure_fanout(group, plan, progress)
                progress.set_description_str(f"{name}: 10 MB stdout")
                fig.transfer_ms = await measure_transfer(group[0], plan, progress)
        finally:
            await bench.close()
            await stop_ssh_masters(bench)
        progress.close()
    return figures


# --- Command line -----------------------------------------------------------------------------


def executor_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in EXECUTORS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {','.join(EXECUTORS)}; got {text!r}")
    return names


def setup_problem(descriptor: Path | None, names: list[str]) -> str | None:
    """Why the chosen executors cannot run on this machine, or None.

    On loopback every SSH executor needs the private sshd; against a descriptor's hosts
    only the OpenSSH client runs here (ssh_mux, ssh_fresh), since asyncssh is a library."""
    if descriptor is None:
        reason = sshd_unavailable_reason()
        if reason and any(n not in ("zmq", "local") for n in names):
            return f"{reason}; or pass --executors zmq,local"
        return None
    if shutil.which("ssh") is None and {"ssh_mux", "ssh_fresh"} & set(names):
        return "ssh not found (apt-get install openssh-client); or leave out ssh_mux,ssh_fresh"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="SSH vs ZeroMQ command execution benchmark",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples; under 90 s")
    parser.add_argument("--smoke", action="store_true", help="tiny samples: a test run")
    parser.add_argument(
        "--nodes",
        type=positive_int,
        default=None,
        help=f"fan-out width (agents on loopback); None: {DEFAULT_NODES}, {QUICK_NODES} --quick",
    )
    parser.add_argument(
        "--executors",
        type=executor_list,
        default=",".join(EXECUTORS),
        help="comma-separated executors to measure",
    )
    parser.add_argument("--json", type=output_file, default=None, help="write figures as JSON")
    parser.add_argument("--plot", type=output_file, default=None, help="write a latency PNG")
    parser.add_argument(
        "--descriptor", type=Path, default=None, help="cluster TOML (descriptor.py): real hosts"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (none when stderr is no tty)"
    )
    parser.add_argument(
        "--ssh-login-rc",
        action="store_true",
        help="let the local sshd's bash source the login user's ~/.bashrc (off by default: "
        "that measures the user's rc file, not SSH)",
    )
    return parser


def config_from(args: argparse.Namespace) -> BenchConfig:
    nodes = args.nodes or (QUICK_NODES if args.quick else DEFAULT_NODES)
    if args.descriptor is not None:
        nodes = len(load_descriptor(args.descriptor).nodes)
    return BenchConfig(
        executors=tuple(n for n in EXECUTORS if n in args.executors),
        nodes=nodes,
        quick=args.quick,
        smoke=args.smoke,
        descriptor=args.descriptor,
        progress=not args.no_progress,
        ssh_login_rc=args.ssh_login_rc,
    )


def write_outputs(
    args: argparse.Namespace, config: BenchConfig, figures: dict[str, Figures]
) -> None:
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = report_json(figures, config.quick, config.ssh_login_rc)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(figures, args.plot)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reason = setup_problem(args.descriptor, list(args.executors))
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        config = config_from(args)
        if config.descriptor is not None:
            descriptor = load_descriptor(config.descriptor)
            print(f"measuring {descriptor.name}: {', '.join(descriptor.node_ids())}\n")
        figures = asyncio.run(benchmark(config))
    except (SetupError, DescriptorError, KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ExecutorError, RuntimeError) as exc:
        print(f"\nerror: benchmark failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted", file=sys.stderr)
        return 130
    print(markdown(figures, config.nodes))
    rc_mode = "sourced" if config.ssh_login_rc else "not sourced (SHLVL=1)"
    print(
        f"\n({time.monotonic() - started:.0f} s, {os.cpu_count()} CPUs, nodes={config.nodes}, "
        f"login ~/.bashrc {rc_mode})"
    )
    write_outputs(args, config, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
