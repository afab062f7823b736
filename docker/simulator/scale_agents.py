"""One size of the scale benchmark's agent side: warm fan-out of `true` to N nodes.

N 03 ZeroMQ node agents (LocalAgents: N real processes on loopback, CURVE) are reached by one
ZmqNodeExecutor each; the same N "nodes" over SSH are N persistent asyncssh connections (one
AsyncSSHExecutor per node) to one private sshd on loopback (LocalSshd), which forks a server
process per connection. Every connection is warmed with one `true` first; then `true` runs on
all N at once, FANOUTS times, and the median wall time is the figure.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cluster_runner_simulation.protocols import NodeExecutorProtocol
from cluster_runner_simulation.testing import LocalAgents, LocalSshd

FANOUTS: Final = 5
COMMAND_TIMEOUT_S: Final = 120.0


@dataclass(frozen=True)
class FanoutFigures:
    nodes: int
    zmq_ms: float
    asyncssh_ms: float
    zmq_connect_s: float  # first `true` on every node: connections and handshakes
    asyncssh_connect_s: float


async def fan_out(executors: Sequence[NodeExecutorProtocol]) -> float:
    """Wall time in ms of `true` on every node at once."""
    started = time.perf_counter()
    results = await asyncio.gather(*(e.run("true", timeout=COMMAND_TIMEOUT_S) for e in executors))
    elapsed = (time.perf_counter() - started) * 1000
    failed = [r for r in results if r.exit_status != 0]
    if failed:
        raise RuntimeError(f"`true` failed on {len(failed)} of {len(executors)} nodes")
    return elapsed


async def warm_then_median(executors: Sequence[NodeExecutorProtocol]) -> tuple[float, float]:
    """(seconds the warm-up took, median fan-out ms); the executors are closed afterwards."""
    try:
        warm = await fan_out(executors) / 1000
        return warm, statistics.median([await fan_out(executors) for _ in range(FANOUTS)])
    finally:
        await asyncio.gather(*(e.close() for e in executors), return_exceptions=True)


def measure_fanout(nodes: int) -> FanoutFigures:
    with LocalSshd() as sshd, LocalAgents(nodes) as agents:
        zmq_connect, zmq_ms = asyncio.run(warm_then_median(agents.executors()))
        ssh_executors = [sshd.executor(f"node{i}") for i in range(nodes)]
        ssh_connect, ssh_ms = asyncio.run(warm_then_median(ssh_executors))
    return FanoutFigures(nodes, zmq_ms, ssh_ms, zmq_connect, ssh_connect)
