"""Week 3, exercise 2, a reference solution: a timeout kills the whole process tree.

The agent starts every command in a session (process group) of its own, and at the timeout
kills the group, so a command that started children leaves none behind; the executor raises
CommandTimeout. A child that makes a session of its own (``setsid``) is no longer in the
group, and survives: --escape shows it.

Connects  DEALER to tcp://HOST:PORT (the agent), CURVE with the keys in KEYS
Runs      "sleep S & sleep S; echo done" (with --escape: "setsid sleep S & sleep S; ...")
          with a timeout of 1 s, then counts the processes left that run "sleep S"
Prints    "timed out after 1.0 s", then "0 of the sleep 30 processes left"

    python docs/solutions/week3/tree_timeout.py 127.0.0.1 5580 /tmp/agent-keys
Check it: python 01-zmq-basics/labs.py check timeout-tree docs/solutions/week3/tree_timeout.py
"""

import argparse
import asyncio
import sys
import time
from pathlib import Path

import psutil

from cluster_runner_simulation.protocols import CommandTimeout
from cluster_runner_simulation.zmq_node_executor import ZmqNodeExecutor

TIMEOUT_S = 1.0


async def run_until_timeout(host: str, port: int, keys: Path, command: str) -> float:
    """Seconds until the executor reported the timeout."""
    async with ZmqNodeExecutor.from_keys_dir("n1", host, port, keys) as executor:
        started = time.monotonic()
        try:
            await executor.run(command, timeout=TIMEOUT_S)
        except CommandTimeout:
            return time.monotonic() - started
    raise SystemExit(f"error: {command!r} finished within its timeout")


def left(seconds: str) -> int:
    """Processes on this machine (the agent's) that still run `sleep SECONDS`."""
    return sum(
        1 for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", seconds]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="time out a command that started children")
    parser.add_argument("host", help="the agent's address")
    parser.add_argument("port", type=int, help="its port (5580 by default)")
    parser.add_argument("keys", type=Path, help="a directory made by `keys generate`")
    parser.add_argument("--seconds", default="30", help="how long each sleep runs (30)")
    parser.add_argument("--escape", action="store_true", help="setsid the first sleep (off)")
    args = parser.parse_args()
    prefix = "setsid " if args.escape else ""
    command = f"{prefix}sleep {args.seconds} & sleep {args.seconds}; echo done"
    took = asyncio.run(run_until_timeout(args.host, args.port, args.keys, command))
    print(f"timed out after {took:.1f} s")
    print(f"{left(args.seconds)} of the sleep {args.seconds} processes left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
