"""SSH vs ZeroMQ across containers: run a command on every worker through both, side by side.

simulate-cluster.sh `compare` pipes this file into `python -` inside the coordinator
container, which reaches each worker's 03 ZeroMQ node agent (tcp :5580, CURVE keys from
/keys/agent) and its sshd (:2222, key login as `cluster`, keys from /keys/ssh) over the
cluster network. Both transports run the same command the same number of times, one node
after another, then all nodes at once; the table compares median latencies.

    ./docker/simulate-cluster.sh compare [--runs N]
    docker exec -i CONTAINER python - --runs 50 worker1 worker2 < docker/compare_transports.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

from cluster_runner_simulation.protocols import NodeExecutorProtocol
from cluster_runner_simulation.ssh_executor import AsyncSSHExecutor
from cluster_runner_simulation.zmq_node_executor import ZmqNodeExecutor

KEYS_DIR = Path("/keys")
AGENT_PORT = 5580
SSH_PORT = 2222
SSH_USER = "cluster"
COMMAND = "hostname"
KNOWN_HOSTS = Path("/tmp/compare_known_hosts")


def ssh_known_hosts(nodes: list[str]) -> str:
    """Every worker shares the one host key the `keys` service generated."""
    kind, key = (KEYS_DIR / "ssh" / "host_ed25519.pub").read_text().split()[:2]
    KNOWN_HOSTS.write_text("".join(f"[{node}]:{SSH_PORT} {kind} {key}\n" for node in nodes))
    return str(KNOWN_HOSTS)


def executors(transport: str, nodes: list[str]) -> list[NodeExecutorProtocol]:
    if transport == "zmq":
        return [
            ZmqNodeExecutor.from_keys_dir(node, node, AGENT_PORT, KEYS_DIR / "agent")
            for node in nodes
        ]
    known_hosts = ssh_known_hosts(nodes)
    client_key = str(KEYS_DIR / "ssh" / "client_ed25519")
    return [
        AsyncSSHExecutor(
            node, node, SSH_PORT, username=SSH_USER, client_keys=[client_key],
            known_hosts=known_hosts,
        )
        for node in nodes
    ]  # fmt: skip


async def timed_run(executor: NodeExecutorProtocol) -> float:
    start = time.perf_counter()
    result = await executor.run(COMMAND, timeout=30)
    if result.exit_status != 0:
        raise RuntimeError(f"{executor.node_id}: `{COMMAND}` exited {result.exit_status}")
    return time.perf_counter() - start


async def measure(transport: str, nodes: list[str], runs: int) -> tuple[float, float, float]:
    """(first call incl. connect, median sequential latency, median fan-out) in seconds."""
    pool = executors(transport, nodes)
    try:
        first = max(await asyncio.gather(*(timed_run(ex) for ex in pool)))
        sequential = [await timed_run(ex) for _ in range(runs) for ex in pool]
        fanout = []
        for _ in range(max(1, runs // 5)):
            start = time.perf_counter()
            await asyncio.gather(*(timed_run(ex) for ex in pool))
            fanout.append(time.perf_counter() - start)
        return first, statistics.median(sequential), statistics.median(fanout)
    finally:
        for ex in pool:
            await ex.close()


async def compare(nodes: list[str], runs: int) -> int:
    rows = {}
    for transport in ("zmq", "ssh"):
        rows[transport] = await measure(transport, nodes, runs)
    print(f"`{COMMAND}` on {len(nodes)} worker container(s), {runs} sequential runs per node")
    print(f"{'transport':<22} {'first call ms':>14} {'p50 ms':>9} {'fan-out p50 ms':>15}")
    labels = {"zmq": "zmq agent :5580", "ssh": "asyncssh sshd :2222"}
    for transport, (first, p50, fanout) in rows.items():
        print(
            f"{labels[transport]:<22} {first * 1e3:>14.1f} {p50 * 1e3:>9.2f} {fanout * 1e3:>15.2f}"
        )
    ratio = rows["ssh"][1] / rows["zmq"][1]
    print(f"ssh p50 / zmq p50 = {ratio:.1f}x")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="SSH vs ZeroMQ agent across worker containers.")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("nodes", nargs="+")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        return asyncio.run(compare(args.nodes, args.runs))
    except (RuntimeError, OSError) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
