"""A terminal view of the cluster: polls the monitor's /api/cluster and prints the node table.

Connects to: the monitor's HTTP API (02-cluster-patterns/monitor.py, port 5572 by default).
Nothing else: no ZeroMQ socket, so it can run anywhere the HTTP port reaches.

Run it next to a running cluster (`make demo`, or the processes in the README):

    python examples/monitoring/watch.py                      # redraws every second, Ctrl-C stops
    python examples/monitoring/watch.py --once               # one table, then exit (scripts, tests)
    python examples/monitoring/watch.py --url http://127.0.0.1:5572 --interval 0.5

Exit codes: 0 after --once or Ctrl-C, 1 when the monitor cannot be reached (--once), 2 on bad
arguments.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import urllib.error
import urllib.request
from types import FrameType
from typing import Any

DEFAULT_URL = "http://127.0.0.1:5572"
DEFAULT_INTERVAL_S = 1.0
HTTP_TIMEOUT_S = 2.0
CLEAR_SCREEN = "\033[2J\033[H"
STATE_COLOURS = {"alive": "\033[32m", "suspect": "\033[33m", "dead": "\033[31m", "left": "\033[90m"}
RESET = "\033[0m"
COLUMNS = ("node", "state", "seen", "in flight", "cap", "cpu %", "mem %", "done")


class MonitorUnreachable(Exception):
    """The monitor did not answer (not started, wrong URL, or down)."""


def fetch_cluster(url: str) -> dict[str, Any]:
    """GET {url}/api/cluster and return the decoded JSON object."""
    try:
        with urllib.request.urlopen(f"{url}/api/cluster", timeout=HTTP_TIMEOUT_S) as response:
            body = json.loads(response.read().decode())
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise MonitorUnreachable(f"cannot read {url}/api/cluster: {error}") from error
    if not isinstance(body, dict):
        raise MonitorUnreachable(f"{url}/api/cluster did not return a JSON object")
    return body


def _number(value: Any, digits: int = 1) -> str:
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return "-"


def node_rows(cluster: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for node in sorted(cluster.get("nodes", []), key=lambda n: str(n.get("id"))):
        rows.append(
            (
                str(node.get("id", "?")),
                str(node.get("state", "?")),
                _number(node.get("last_seen_age_s")) + "s",
                _number(node.get("in_flight")),
                _number(node.get("capacity")),
                _number(node.get("cpu_percent")),
                _number(node.get("memory_percent")),
                _number(node.get("done")),
            )
        )
    return rows


def render(cluster: dict[str, Any], colour: bool) -> str:
    """The whole screen: coordinator line, node table, totals, detection figures."""
    coordinator = cluster.get("coordinator", {})
    seen = "seen" if coordinator.get("seen") else "NOT SEEN"
    lines = [f"coordinator {coordinator.get('id') or '-'}: {seen}", ""]
    rows = node_rows(cluster)
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(COLUMNS)]
    lines.append("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)))
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        if colour and row[1] in STATE_COLOURS:
            cells[1] = f"{STATE_COLOURS[row[1]]}{cells[1]}{RESET}"
        lines.append("  ".join(cells))
    if not rows:
        lines.append("(no workers registered)")
    totals = cluster.get("totals", {})
    lines.append("")
    lines.append(
        "tasks: "
        + ", ".join(
            f"{key} {totals.get(key, '-')}"
            for key in ("submitted", "done", "failed", "retried", "requeued", "pending")
        )
    )
    detection = cluster.get("failure_detection", {})
    recovery = cluster.get("partition_recovery", {})
    lines.append(
        f"failure detection: last {_number(detection.get('last_s'), 2)} s"
        f" ({detection.get('count', 0)} verdicts); partition recovery: last"
        f" {_number(recovery.get('last_s'), 2)} s ({recovery.get('count', 0)})"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help=f"monitor base URL ({DEFAULT_URL})")
    parser.add_argument(
        "--interval", type=float, default=DEFAULT_INTERVAL_S, help="seconds between redraws"
    )
    parser.add_argument("--once", action="store_true", help="print one table and exit")
    parser.add_argument("--no-colour", action="store_true", help="plain text, no ANSI colours")
    return parser


def _stop_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.interval <= 0:
        build_parser().error("--interval must be positive")
    url = args.url.rstrip("/")
    colour = not args.no_colour and sys.stdout.isatty()
    if args.once:
        try:
            print(render(fetch_cluster(url), colour))
        except MonitorUnreachable as error:
            print(f"watch: {error} (is monitor.py running?)", file=sys.stderr)
            return 1
        return 0
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        while True:
            try:
                screen = render(fetch_cluster(url), colour)
            except MonitorUnreachable as error:
                screen = f"waiting for the monitor: {error}"
            print(CLEAR_SCREEN + screen, flush=True)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
