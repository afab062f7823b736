"""Where one command's latency goes: transport round trip, process spawn, wrappers.

Starts one ZeroMQ agent and a private sshd on loopback (LocalAgents, LocalSshd),
then times, one after another, the steps that make up a `true` on each side:

    zmq ping             a CURVE round trip to the agent; nothing is spawned
    zmq true             ZmqNodeExecutor.run("true"): round trip + /bin/sh -c true on the agent
    local spawn          create_subprocess_shell("true") in this process (asyncio, pipes)
    posix_spawn          os.posix_spawn of /bin/sh -c true, then waitpid (no pipes): the floor
    Popen                subprocess.run of /bin/sh -c true with pipes (synchronous)
    agent spawn path     agent_spawn.SpawnedShell: what the agent does (posix_spawn + setsid,
                         pipes on the event loop, a pidfd), without the network
    asyncssh raw true    conn.run("true") on a persistent asyncssh connection: a channel
                         open, an exec request, sshd forks the login shell
    asyncssh true        AsyncSSHExecutor.run("true"): the same plus the process-group
                         wrapper (two more /bin/sh execs) that lets it kill a timed-out tree

Subtracting rows shows what bounds each executor; performance_comparison.py
gives the side-by-side numbers. ``--ssh-login-rc`` lets bash source the login
user's ~/.bashrc (as LocalSshd(source_rc=True)) to show that cost too.

Run it:
    python 03-cluster-runner-simulation/latency_breakdown.py
    python 03-cluster-runner-simulation/latency_breakdown.py --samples 1000 --ssh-login-rc
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Final

import asyncssh

from cluster_patterns.cli_args import ErrorExit, positive_int, run_interruptible
from cluster_patterns.stats import percentile
from cluster_runner_simulation.agent_spawn import SpawnedShell
from cluster_runner_simulation.testing import LocalAgents, LocalSshd, sshd_unavailable_reason
from cluster_runner_simulation.protocols import ExecutorError

PROG: Final = "latency_breakdown.py"
EXITS: Final = (ErrorExit((ExecutorError, RuntimeError, OSError, asyncssh.Error), 1),)

DEFAULT_SAMPLES = 400
WARMUP = 5


async def local_true() -> None:
    proc = await asyncio.create_subprocess_shell(
        "true",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # as the agent does
    )
    await proc.communicate()


async def posix_spawn_true() -> None:
    pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", "true"], os.environ, setsid=True)
    os.waitpid(pid, 0)


async def popen_true() -> None:
    subprocess.run(
        ["/bin/sh", "-c", "true"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        check=True,
    )


class _Ended:
    """The least a SpawnedShell needs told: pipes closed and exit seen."""

    def __init__(self) -> None:
        self.done = asyncio.get_running_loop().create_future()
        self.waiting = 3  # stdout, stderr, exit

    def data_received(self, fd: int, data: bytes) -> None:
        pass

    def eof_received(self, fd: int) -> None:
        self._one()

    def process_exited(self) -> None:
        self._one()

    def _one(self) -> None:
        self.waiting -= 1
        if not self.waiting:
            self.done.set_result(None)


async def agent_spawn_true() -> None:
    ended = _Ended()
    shell = SpawnedShell("true", ended)
    await ended.done
    shell.close()


async def sample(call: Callable[[], Awaitable[object]], count: int) -> tuple[float, float]:
    """p50 and p95 of ``count`` sequential calls, in ms, after a short warm-up."""
    for _ in range(WARMUP):
        await call()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000.0)
    return percentile(times, 0.50), percentile(times, 0.95)


async def breakdown(samples: int, source_rc: bool) -> list[tuple[str, float, float]]:
    rows: list[tuple[str, float, float]] = []
    with LocalAgents(1) as agents, LocalSshd(source_rc=source_rc) as sshd:
        zmq = agents.executor(0)
        ssh = sshd.executor("node0")
        conn = await asyncssh.connect(
            sshd.host,
            sshd.port,
            username=sshd.username,
            client_keys=[str(sshd.client_key_path)],
            known_hosts=str(sshd.known_hosts),
        )
        try:
            steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                ("zmq ping (no spawn)", zmq.ping),
                ("zmq true", lambda: zmq.run("true")),
                ("local spawn true (asyncio subprocess, pipes)", local_true),
                ("posix_spawn true (no pipes)", posix_spawn_true),
                ("Popen true (pipes)", popen_true),
                ("agent spawn path true (no network)", agent_spawn_true),
                ("asyncssh raw true", lambda: conn.run("true")),
                ("asyncssh true (executor)", lambda: ssh.run("true")),
            ]
            for label, call in steps:
                p50, p95 = await sample(call, samples)
                rows.append((label, p50, p95))
        finally:
            conn.close()
            await zmq.close()
            await ssh.close()
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="latency of one command, step by step",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--samples", type=positive_int, default=DEFAULT_SAMPLES, help="sequential calls per step"
    )
    parser.add_argument(
        "--ssh-login-rc", action="store_true", help="let bash source the login user's ~/.bashrc"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reason = sshd_unavailable_reason()
    if reason:
        print(f"{PROG}: error: {reason}", file=sys.stderr)
        return 2
    return run_interruptible(PROG, lambda: print_breakdown(args.samples, args.ssh_login_rc), EXITS)


def print_breakdown(samples: int, ssh_login_rc: bool) -> int:
    rows = asyncio.run(breakdown(samples, ssh_login_rc))
    print(f"| step ({samples} sequential samples) | p50 ms | p95 ms |")
    print("|---|---:|---:|")
    for label, p50, p95 in rows:
        print(f"| {label} | {p50:.2f} | {p95:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
