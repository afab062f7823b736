"""Week 4, exercise 2, a reference solution: phase 1's benchmark gate, as a program.

integration-plan/migration-strategy.md says when phase 1 may end: in one run of
``performance_comparison.py --json FILE``, ZeroMQ's p50 latency is at most 2x the local
spawn's, and asyncssh's p50, ZeroMQ's throughput at concurrency 16 and asyncssh's 64-node
fan-out time are each at least 1.5x ZeroMQ's (or asyncssh's, for throughput). This reads such
a file and says, check by check, whether the run passes.

Reads     a performance_comparison.py --json FILE (docs/results/ssh-vs-zmq-full.json is one)
Prints    "PASS  floor: zmq p50 / local p50 = 1.31 (at most 2.0)", one line per check
Exit      0 every check passed, 1 one failed, 2 the file is not such a report

    python docs/solutions/week4/gate.py docs/results/ssh-vs-zmq-full.json
Check it: python 01-zmq-basics/labs.py check gate docs/solutions/week4/gate.py
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# name: (what is divided by what, at most / at least, the threshold)
GATES = {
    "floor": ("zmq p50 / local p50", "at most", 2.0),
    "parity": ("asyncssh p50 / zmq p50", "at least", 1.5),
    "throughput": ("zmq commands/s / asyncssh commands/s", "at least", 1.5),
    "fan-out": ("asyncssh fan-out / zmq fan-out", "at least", 1.5),
}


def ratios(report: dict[str, Any]) -> dict[str, float]:
    """The four ratios of the gate, from the report's executors and fan-out figures."""
    executors, fanout = report["executors"], report["fanout"]
    p50 = {name: float(executors[name]["p50_ms"]) for name in ("zmq", "asyncssh", "local")}
    return {
        "floor": p50["zmq"] / p50["local"],
        "parity": p50["asyncssh"] / p50["zmq"],
        "throughput": executors["zmq"]["cmds_per_s"] / executors["asyncssh"]["cmds_per_s"],
        "fan-out": fanout["asyncssh"]["total_ms"] / fanout["zmq"]["total_ms"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="apply phase 1's benchmark gate to a report")
    parser.add_argument("report", type=Path, help="a performance_comparison.py --json file")
    args = parser.parse_args()
    try:
        measured = ratios(json.loads(args.report.read_text()))
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
        print(f"error: {args.report} is not a benchmark report: {exc!r}", file=sys.stderr)
        return 2
    failed = 0
    for name, value in measured.items():
        what, how, limit = GATES[name]
        ok = value <= limit if how == "at most" else value >= limit
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {what} = {value:.2f} ({how} {limit})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
