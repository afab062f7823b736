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
A progress bar runs on stderr; a markdown table and the target ratios go to
stdout.

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
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster_patterns.cli_args import positive_int
from cluster_runner_simulation.agent_keys import KeyFileError
from cluster_runner_simulation.descriptor import DescriptorError, NodeSpec, load_descriptor
from cluster_runner_simulation.testing import (
    LocalAgents,
    LocalSshd,
    openssh_argv,
    sshd_unavailable_reason,
)
from cluster_runner_simulation.protocols import ExecutorError, NodeExecutorProtocol
from cluster_runner_simulation.ssh_context import ssh_executor_for
from cluster_runner_simulation.zmq_operational_context import zmq_executor_for

EXECUTORS = ("zmq", "asyncssh", "ssh_mux", "ssh_fresh", "local")
CONCURRENCY = 16
TRANSFER_BYTES = 10 * 1024 * 1024
DEFAULT_NODES = 16
QUICK_NODES = 16
MIN_SAMPLES = 5


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
TARGET_ZMQ_VS_LOCAL_P50 = 2.0  # at most
TARGET_ASYNCSSH_VS_ZMQ_P50 = 20.0  # at least
TARGET_FANOUT_SPEEDUP = 10.0  # at least, at 64 nodes
COMMAND_TIMEOUT_S = 60.0


# --- What runs a command ----------------------------------------------------------------------


class SetupError(Exception):
    """The benchmark cannot be set up as asked; reported on one line, exit status 2."""


class Runner:
    """Runs a shell command on one node and returns its stdout; the benchmark's only view."""

    name = ""

    async def run(self, command: str) -> bytes:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class ExecutorRunner(Runner):
    """Any NodeExecutorProtocol: the ZeroMQ and asyncssh executors."""

    def __init__(self, name: str, executor: NodeExecutorProtocol) -> None:
        self.name = name
        self.executor = executor

    async def run(self, command: str) -> bytes:
        result = await self.executor.run(command, timeout=COMMAND_TIMEOUT_S)
        if result.exit_status != 0:
            raise RuntimeError(f"{self.name}: {command!r} exited {result.exit_status}")
        return result.stdout

    async def close(self) -> None:
        await self.executor.close()


class ProcessRunner(Runner):
    """A local process per command: `ssh ...` (mux or fresh), or the command itself."""

    def __init__(self, name: str, argv_prefix: list[str]) -> None:
        self.name = name
        self.argv_prefix = argv_prefix

    async def run(self, command: str) -> bytes:
        if self.argv_prefix:
            proc = await asyncio.create_subprocess_exec(
                *self.argv_prefix,
                command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        else:
            proc = await asyncio.create_subprocess_shell(
                command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{self.name}: {command!r} exited {proc.returncode}: {err[-200:]!r}")
        return out


# --- Progress ---------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal, or forced)."""

    WIDTH = 30

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.enabled = enabled
        self.label = ""
        self._drawn_at = 0.0

    def phase(self, label: str) -> None:
        self.label = label
        self.draw(force=True)

    def step(self, count: int = 1) -> None:
        self.done += count
        self.draw()

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._drawn_at < 0.1):
            return
        self._drawn_at = now
        share = min(self.done / self.total, 1.0)
        bar = "#" * int(share * self.WIDTH)
        sys.stderr.write(f"\r[{bar:<{self.WIDTH}}] {share:4.0%} {self.label:<40.40}")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            self.done = self.total
            self.draw(force=True)
            sys.stderr.write("\n")


# --- Measurements -----------------------------------------------------------------------------


@dataclass
class Figures:
    latencies_ms: list[float] = field(default_factory=list)
    cmds_per_s: float = 0.0
    fanout_ms: float = 0.0
    fanout_nodes: int = 0
    transfer_ms: float = 0.0

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
        return ordered[index]

    def as_json(self) -> dict[str, float]:
        return {
            "p50_ms": round(self.percentile(0.50), 3),
            "p95_ms": round(self.percentile(0.95), 3),
            "p99_ms": round(self.percentile(0.99), 3),
            "cmds_per_s": round(self.cmds_per_s, 1),
            "transfer_10mb_ms": round(self.transfer_ms, 1),
            "samples": len(self.latencies_ms),
        }


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
            progress.step()
            plan, taken = plans[name], len(samples[name])
            if taken >= plan.latency or (spent[name] > plan.budget_s and taken >= MIN_SAMPLES):
                progress.step(plan.latency - taken)
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
            progress.step()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    progress.step(plan.throughput - done)
    return done / (time.perf_counter() - started)


async def repeat(
    plan_count: int, budget_s: float, call: Callable[[], Awaitable[Any]], progress: Progress
) -> float:
    """Median wall time of ``call`` in ms, over plan_count runs or budget_s, at least one."""
    totals: list[float] = []
    started = time.perf_counter()
    while len(totals) < plan_count:
        totals.append(await timed(call))
        progress.step()
        if time.perf_counter() - started > budget_s:
            break
    progress.step(plan_count - len(totals))
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


# --- Setup ------------------------------------------------------------------------------------


@dataclass
class Bench:
    """Runners per executor name: index 0 is 'the' node; all of them are the fan-out."""

    runners: dict[str, list[Runner]]

    async def close(self) -> None:
        for group in self.runners.values():
            await asyncio.gather(*(r.close() for r in group), return_exceptions=True)


def local_nodes(count: int, sshd: LocalSshd | None, agents: LocalAgents | None) -> list[NodeSpec]:
    """The loopback cluster described like a real one: one sshd, ``count`` agents."""
    nodes = []
    for i in range(count):
        ssh: dict[str, Any] = {}
        if sshd is not None:
            ssh = {
                "ssh_port": sshd.port,
                "ssh_user": sshd.username,
                "ssh_key": sshd.client_key_path,
                "ssh_known_hosts": sshd.known_hosts,
            }
        zmq: dict[str, Any] = {}
        if agents is not None:
            zmq = {"zmq_port": agents.agents[i].port, "curve_keys_dir": agents.keys_dir}
        nodes.append(NodeSpec(id=f"node{i}", host="127.0.0.1", **ssh, **zmq))
    return nodes


def make_runner(name: str, node: NodeSpec, control_path: Path) -> Runner:
    def ssh_argv(mux: bool) -> list[str]:
        return openssh_argv(
            node.host,
            node.ssh_port,
            node.ssh_user,
            node.ssh_key,
            node.ssh_known_hosts,
            control_path if mux else None,
        )

    if name == "zmq":
        if node.curve_keys_dir is None:
            raise SetupError(f"{node.id}: curve_keys_dir is needed to benchmark zmq")
        return ExecutorRunner(name, zmq_executor_for(node))
    if name == "asyncssh":
        return ExecutorRunner(name, ssh_executor_for(node))
    if name in ("ssh_mux", "ssh_fresh"):
        return ProcessRunner(name, ssh_argv(mux=name == "ssh_mux"))
    return ProcessRunner(name, [])  # local


def build_bench(names: list[str], nodes: list[NodeSpec], tmp: Path) -> Bench:
    return Bench(
        {
            name: [make_runner(name, node, tmp / f"cm{i}") for i, node in enumerate(nodes)]
            for name in names
        }
    )


async def stop_ssh_masters(bench: Bench) -> None:
    """``ssh -O exit`` for every ControlMaster the ssh_mux runners started."""
    for runner in bench.runners.get("ssh_mux", []):
        assert isinstance(runner, ProcessRunner)
        argv = runner.argv_prefix
        proc = await asyncio.create_subprocess_exec(
            *argv[:-1], "-O", "exit", argv[-1],
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await proc.wait()


async def benchmark(args: argparse.Namespace, names: list[str]) -> dict[str, Figures]:
    # SIGTERM unwinds like Ctrl-C, so the agents and sshd (own sessions) are stopped too.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    plans = QUICK_PLANS if args.quick else FULL_PLANS
    if args.smoke:
        plans = dict.fromkeys(EXECUTORS, SMOKE_PLAN)
    steps = sum(
        p.latency + p.throughput + p.fanout + p.transfer for n, p in plans.items() if n in names
    )
    progress = Progress(steps, enabled=not args.no_progress)
    figures = {name: Figures() for name in names}
    with contextlib.ExitStack() as stack:
        if args.descriptor is not None:
            nodes = list(load_descriptor(args.descriptor).nodes)
        else:
            progress.phase(f"starting sshd and {args.nodes} agents")
            needs_ssh = any(n.startswith(("ssh", "async")) for n in names)
            sshd = LocalSshd(source_rc=args.ssh_login_rc) if needs_ssh else None
            if sshd is not None:
                stack.enter_context(sshd)
            agents = stack.enter_context(LocalAgents(args.nodes)) if "zmq" in names else None
            nodes = local_nodes(args.nodes, sshd, agents)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cm-", dir="/tmp")))
        bench = build_bench(names, nodes, tmp)
        try:
            progress.phase("latency, all executors in turn")
            firsts = {name: group[0] for name, group in bench.runners.items()}
            for name, latencies in (await measure_latencies(firsts, plans, progress)).items():
                figures[name].latencies_ms = latencies
            for name in names:
                group, plan, fig = bench.runners[name], plans[name], figures[name]
                progress.phase(f"{name}: throughput @{CONCURRENCY}")
                fig.cmds_per_s = await measure_throughput(group[0], plan, progress)
                progress.phase(f"{name}: fan-out to {len(group)}")
                fig.fanout_nodes = len(group)
                fig.fanout_ms = await measure_fanout(group, plan, progress)
                progress.phase(f"{name}: 10 MB stdout")
                fig.transfer_ms = await measure_transfer(group[0], plan, progress)
        finally:
            await bench.close()
            await stop_ssh_masters(bench)
        progress.finish()
    return figures


# --- Reporting --------------------------------------------------------------------------------


def ratios(figures: dict[str, Figures]) -> dict[str, Any]:
    """The issue's three targets, as measured in this one run."""
    out: dict[str, Any] = {}
    zmq, local, ssh = figures.get("zmq"), figures.get("local"), figures.get("asyncssh")
    if zmq and local:
        value = zmq.percentile(0.5) / local.percentile(0.5)
        out["zmq_p50_over_local_p50"] = {
            "value": round(value, 2),
            "target": f"<= {TARGET_ZMQ_VS_LOCAL_P50}",
            "met": value <= TARGET_ZMQ_VS_LOCAL_P50,
        }
    if zmq and ssh:
        value = ssh.percentile(0.5) / zmq.percentile(0.5)
        out["asyncssh_p50_over_zmq_p50"] = {
            "value": round(value, 1),
            "target": f">= {TARGET_ASYNCSSH_VS_ZMQ_P50}",
            "met": value >= TARGET_ASYNCSSH_VS_ZMQ_P50,
        }
        value = ssh.fanout_ms / zmq.fanout_ms
        out["asyncssh_fanout_over_zmq_fanout"] = {
            "value": round(value, 1),
            "nodes": zmq.fanout_nodes,
            "target": f">= {TARGET_FANOUT_SPEEDUP} (at 64 nodes)",
            "met": value >= TARGET_FANOUT_SPEEDUP,
        }
    return out


def markdown(figures: dict[str, Figures], nodes: int) -> str:
    lines = [
        f"| executor | p50 ms | p95 ms | p99 ms | cmds/s @{CONCURRENCY} "
        f"| fan-out {nodes} nodes ms | 10 MB stdout ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, fig in figures.items():
        lines.append(
            f"| {name} | {fig.percentile(0.5):.2f} | {fig.percentile(0.95):.2f} "
            f"| {fig.percentile(0.99):.2f} | {fig.cmds_per_s:.0f} | {fig.fanout_ms:.1f} "
            f"| {fig.transfer_ms:.1f} |"
        )
    lines.append("")
    for key, ratio in ratios(figures).items():
        verdict = "met" if ratio["met"] else "MISSED"
        lines.append(f"- {key} = {ratio['value']} (target {ratio['target']}): {verdict}")
    return "\n".join(lines)


def report_json(figures: dict[str, Figures], args: argparse.Namespace) -> dict[str, Any]:
    return {
        "executors": {name: fig.as_json() for name, fig in figures.items()},
        "fanout": {
            name: {"nodes": fig.fanout_nodes, "total_ms": round(fig.fanout_ms, 2)}
            for name, fig in figures.items()
        },
        "ratios": ratios(figures),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "quick": bool(args.quick),
            "ssh_login_rc": bool(args.ssh_login_rc),
        },
    }


def plot(figures: dict[str, Figures], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    names = list(figures)
    shares = [(0.50, "p50"), (0.95, "p95"), (0.99, "p99")]
    fig, axis = plt.subplots(figsize=(8, 4.5))
    width = 0.25
    for offset, (share, label) in enumerate(shares):
        values = [figures[n].percentile(share) for n in names]
        axis.bar([i + (offset - 1) * width for i in range(len(names))], values, width, label=label)
    axis.set_xticks(range(len(names)), names)
    axis.set_yscale("log")
    axis.set_ylabel("latency of `true` (ms, log scale)")
    axis.set_title("Sequential command latency: ZeroMQ vs SSH vs local floor")
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    parser = argparse.ArgumentParser(description="SSH vs ZeroMQ command execution benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer samples; under 90 s")
    parser.add_argument("--smoke", action="store_true", help="tiny samples: a test run")
    parser.add_argument("--nodes", type=positive_int, default=None, help="fan-out width")
    parser.add_argument("--executors", type=executor_list, default=list(EXECUTORS))
    parser.add_argument("--json", type=Path, default=None, help="write figures as JSON")
    parser.add_argument("--plot", type=Path, default=None, help="write a latency PNG")
    parser.add_argument(
        "--descriptor", type=Path, default=None, help="cluster TOML (descriptor.py): real hosts"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--ssh-login-rc",
        action="store_true",
        help="let the local sshd's bash source the login user's ~/.bashrc (off by default: "
        "that measures the user's rc file, not SSH)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.nodes = args.nodes or (QUICK_NODES if args.quick else DEFAULT_NODES)
    names = [n for n in EXECUTORS if n in args.executors]
    reason = setup_problem(args.descriptor, names)
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        if args.descriptor is not None:
            descriptor = load_descriptor(args.descriptor)
            args.nodes = len(descriptor.nodes)
            print(f"measuring {descriptor.name}: {', '.join(descriptor.node_ids())}\n")
        figures = asyncio.run(benchmark(args, names))
    except (SetupError, DescriptorError, KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ExecutorError, RuntimeError) as exc:
        print(f"\nerror: benchmark failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted", file=sys.stderr)
        return 130
    print(markdown(figures, args.nodes))
    rc_mode = "sourced" if args.ssh_login_rc else "not sourced (SHLVL=1)"
    print(
        f"\n({time.monotonic() - started:.0f} s, {os.cpu_count()} CPUs, nodes={args.nodes}, "
        f"login ~/.bashrc {rc_mode})"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report_json(figures, args), indent=2) + "\n")
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(figures, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
