"""simulate-cluster.sh's Python half: read the monitor's API, wait for verdicts, run `test`.

It talks only HTTP to the monitor (GET /api/cluster on the loopback port the wrapper gives
it) and runs the wrapper itself for workloads and faults, so the same code drives the Docker
and the local backend. Stdlib only, so it runs with whatever python3 the host has; psutil,
where installed, names the process that holds a busy port.

    python docker/cluster_ctl.py view --url http://127.0.0.1:5572
    python docker/cluster_ctl.py wait --url URL --node worker1 --state dead --timeout 10
    python docker/cluster_ctl.py wait-ready --url URL --workers 3 --timeout 60
    python docker/cluster_ctl.py status --url URL --row "worker1|running|healthy" ...
    python docker/cluster_ctl.py scenario --url URL -- docker/simulate-cluster.sh --local
    python docker/cluster_ctl.py ports-in-use --host 127.0.0.1 MONITOR_PORT=5572 ...

`scenario` is the `test` command: a >= 200-task workload during each of baseline, fail
worker1, recover worker1, partition worker2 and heal worker2; after every step it checks
the invariants (every acknowledged task done exactly once: lost == 0, duplicates == 0,
done == submitted) and prints a table with failure-detection and partition-recovery times.
Exit codes: 0 all invariants hold, 1 a violation or a timeout, 2 bad arguments.
`ports-in-use` prints one line per NAME=PORT that something already listens on (naming the
holder) and nothing when all are free. Output to a closed stdout (a reader that went away,
as `tee` does on Ctrl-C) is dropped and the work goes on.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

psutil: ModuleType | None
try:
    import psutil
except ImportError:  # the Docker backend may run on a host Python without it
    psutil = None

POLL_INTERVAL_S = 0.05
HTTP_TIMEOUT_S = 2.0
DEFAULT_TASKS = 200
# Tasks long enough that the workload is still running when the fault hits.
FAULT_TASK_MS = 300
BASELINE_TASK_MS = 5
VERDICT_TIMEOUT_S = 30.0
WORKLOAD_TIMEOUT_S = 240.0
# Which /api/cluster figure the coordinator measured for a step.
FIGURE_KEYS = {"failure detection": "failure_detection", "partition recovery": "partition_recovery"}
# A fault is injected once this many tasks of the step's workload are done.
FAULT_AFTER_DONE = 24


def say(*parts: object, stream: TextIO | None = None) -> None:
    """print(), except that a closed stream is no error: it is pointed at /dev/null instead,
    so a `test` whose reader went away still finishes (and heals the faults it injected)."""
    target = stream or sys.stdout
    try:
        print(*parts, file=target, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, target.fileno())
        os.close(devnull)


# --- ports -----------------------------------------------------------------------------------


def port_taken(host: str, port: int) -> bool:
    """True if something listens on HOST:PORT: a bind there fails as the node's own would."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def port_holders(port: int) -> list[str]:
    """'pid N (name)' of every process listening on TCP ``port`` that this user may see."""
    if psutil is None:
        return []
    try:
        listeners = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return []
    holders = set()
    for conn in listeners:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                continue
            try:
                name = psutil.Process(conn.pid).name()
            except psutil.Error:
                name = "exited"
            holders.add(f"pid {conn.pid} ({name})")
    return sorted(holders)


def describe_taken_port(name: str, port: int) -> str:
    holders = port_holders(port)
    if holders:
        holder = ", ".join(holders)
        if "(docker-proxy)" in holder:
            holder += ": a container publishes it, see `docker ps`"
    elif psutil is None:
        holder = "another process (install psutil to see which)"
    else:
        holder = "a process this user cannot see (try as root: ss -ltnp)"
    return f"port {port} ({name}) is already in use by {holder}; free it or set {name}=ANOTHER"


def ports_in_use(host: str, named_ports: list[tuple[str, int]]) -> list[str]:
    return [describe_taken_port(name, port) for name, port in named_ports if port_taken(host, port)]


def named_port(text: str) -> tuple[str, int]:
    name, _, port = text.partition("=")
    if not name or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected NAME=PORT with PORT 1-65535, got {text!r}")
    return name, int(port)


# --- the monitor's view ----------------------------------------------------------------------


def fetch_cluster(url: str) -> dict[str, Any] | None:
    """The monitor's /api/cluster document, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/api/cluster", timeout=HTTP_TIMEOUT_S) as response:
            document: dict[str, Any] = json.loads(response.read())
            return document
    except (urllib.error.URLError, OSError, ValueError):
        return None


def node_states(document: dict[str, Any] | None) -> dict[str, str]:
    if not document:
        return {}
    return {str(node["id"]): str(node["state"]) for node in document.get("nodes", [])}


def wait_for_state(url: str, node: str, states: set[str], timeout: float) -> float:
    """Seconds until the monitor shows ``node`` in one of ``states``; raises TimeoutError."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if node_states(fetch_cluster(url)).get(node) in states:
            return time.monotonic() - start
        time.sleep(POLL_INTERVAL_S)
    seen = node_states(fetch_cluster(url)).get(node, "not reported")
    raise TimeoutError(f"{node} not {'/'.join(sorted(states))} after {timeout:.0f} s ({seen})")


def wait_ready(url: str, workers: int, timeout: float) -> float:
    """Seconds until the monitor sees the coordinator and ``workers`` alive workers."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        document = fetch_cluster(url)
        alive = [s for s in node_states(document).values() if s == "alive"]
        if document and document["coordinator"]["seen"] and len(alive) >= workers:
            return time.monotonic() - start
        time.sleep(POLL_INTERVAL_S * 4)
    raise TimeoutError(f"the monitor at {url} did not see {workers} alive worker(s) in time")


def print_status(url: str, rows: list[str]) -> None:
    """Each node's runtime state (from the wrapper) next to the cluster's own view of it."""
    document = fetch_cluster(url)
    view = node_states(document)
    say(f"{'NODE':<13} {'RUNTIME':<22} {'DETAIL':<22} CLUSTER VIEW (monitor)")
    for row in rows:
        node, runtime, detail = (row.split("|") + ["", ""])[:3]
        if node in ("coordinator", "monitor"):
            cluster = _role_view(node, document)
        else:
            cluster = view.get(node, "not reported")
        say(f"{node:<13} {runtime:<22} {detail:<22} {cluster}")
    if document is None:
        say(f"monitor API {url}/api/cluster does not answer")
    else:
        totals = document.get("totals", {})
        say(
            "tasks: "
            + ", ".join(f"{key} {totals.get(key, 0)}" for key in ("submitted", "done", "failed"))
            + f"; dashboard {url}/"
        )


def _role_view(node: str, document: dict[str, Any] | None) -> str:
    if document is None:
        return "unknown (monitor down)"
    if node == "monitor":
        return "serving"
    coordinator = document["coordinator"]
    return "seen" if coordinator["seen"] else "not seen"


# --- the `test` scenario ---------------------------------------------------------------------


@dataclass
class Step:
    name: str
    action: list[str]
    node: str = ""
    verdict: set[str] = field(default_factory=set)
    figure: str = ""
    task_ms: int = FAULT_TASK_MS


@dataclass
class StepResult:
    step: Step
    summary: dict[str, Any]
    exit_code: int
    figure_s: float | None
    monitor_s: float | None
    violations: list[str]


STEPS = [
    Step("baseline", [], task_ms=BASELINE_TASK_MS),
    Step("fail worker1", ["fail", "worker1"], "worker1", {"dead"}, "failure detection"),
    Step("recover worker1", ["recover", "worker1"], "worker1", {"alive"}, "rejoin"),
    Step("partition worker2", ["partition", "worker2"], "worker2", {"dead"}, "failure detection"),
    Step("heal worker2", ["heal", "worker2"], "worker2", {"alive"}, "partition recovery"),
]


class Scenario:
    def __init__(self, url: str, sim: list[str], tasks: int, workdir: Path) -> None:
        self.url = url
        self.sim = sim
        self.tasks = tasks
        self.workdir = workdir

    def run_sim(self, *args: str) -> None:
        done = subprocess.run([*self.sim, *args], stdin=subprocess.DEVNULL, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(args)}` exited {done.returncode}")

    def done_total(self) -> int:
        document = fetch_cluster(self.url)
        return int(document["totals"]["done"]) if document else 0

    def run_step(self, step: Step) -> StepResult:
        json_path = self.workdir / (step.name.replace(" ", "-") + ".json")
        before = self.done_total()
        workload = subprocess.Popen(
            [*self.sim, "workload", "--count", str(self.tasks), "--kind", "sleep"]
            + ["--ms", str(step.task_ms), "--json", str(json_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        figure_s = monitor_s = None
        if step.action:
            self._wait_until_running(before, workload)
            count_before = self._figure_count(step)
            self.run_sim(*step.action, "--no-wait")
            figure_s = wait_for_state(self.url, step.node, step.verdict, VERDICT_TIMEOUT_S)
            monitor_s = self._monitor_figure(step, count_before)
        exit_code = workload.wait(timeout=WORKLOAD_TIMEOUT_S)
        try:
            summary = json.loads(json_path.read_text())
        except (OSError, ValueError):
            summary = {}
        return StepResult(step, summary, exit_code, figure_s, monitor_s, self._check(summary))

    def _wait_until_running(self, before: int, workload: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + VERDICT_TIMEOUT_S
        while time.monotonic() < deadline and workload.poll() is None:
            if self.done_total() >= before + FAULT_AFTER_DONE:
                return
            time.sleep(POLL_INTERVAL_S)

    def _figure_count(self, step: Step) -> int:
        document = fetch_cluster(self.url)
        key = FIGURE_KEYS.get(step.figure)
        return int(document[key]["count"]) if document and key else 0

    def _monitor_figure(self, step: Step, count_before: int) -> float | None:
        """The coordinator's own measurement of this step, as the monitor publishes it."""
        key = FIGURE_KEYS.get(step.figure)
        deadline = time.monotonic() + 3.0
        while key and time.monotonic() < deadline:
            document = fetch_cluster(self.url)
            if document and int(document[key]["count"]) > count_before:
                last = document[key]["last_s"]
                return None if last is None else float(last)
            time.sleep(POLL_INTERVAL_S)
        return None

    def _check(self, summary: dict[str, Any]) -> list[str]:
        if not summary:
            return ["the workload wrote no summary"]
        problems = []
        if summary.get("lost", 0):
            problems.append(f"{summary['lost']} acknowledged task(s) lost")
        if summary.get("duplicates", 0):
            problems.append(f"{summary['duplicates']} result(s) recorded twice")
        if (
            summary.get("done") != summary.get("submitted")
            or summary.get("submitted") != self.tasks
        ):
            problems.append(
                f"done {summary.get('done')} of submitted {summary.get('submitted')} "
                f"(wanted {self.tasks})"
            )
        if summary.get("failed", 0):
            problems.append(f"{summary['failed']} task(s) failed")
        return problems


def format_table(results: list[StepResult]) -> str:
    header = (
        f"{'step':<18} {'tasks':>5} {'done':>5} {'lost':>4} {'dup':>4} {'retried':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'tasks/s':>8}  figure"
    )
    lines = [header, "-" * len(header)]
    for result in results:
        summary = result.summary
        figure = "-"
        if result.figure_s is not None:
            figure = f"{result.step.figure} {result.figure_s:.2f} s"
            if result.monitor_s is not None:
                figure += f" (coordinator: {result.monitor_s:.2f} s)"
        lines.append(
            f"{result.step.name:<18} {summary.get('submitted', 0):>5} {summary.get('done', 0):>5} "
            f"{summary.get('lost', 0):>4} {summary.get('duplicates', 0):>4} "
            f"{summary.get('retried', 0):>7} {float(summary.get('p50_ms', 0)):>7.1f} "
            f"{float(summary.get('p99_ms', 0)):>7.1f} {float(summary.get('tasks_per_s', 0)):>8.1f}"
            f"  {figure}"
        )
    return "\n".join(lines)


def run_scenario(url: str, sim: list[str], tasks: int, json_out: str | None) -> int:
    results: list[StepResult] = []
    with tempfile.TemporaryDirectory(prefix="cluster-test-") as tmp:
        scenario = Scenario(url, sim, tasks, Path(tmp))
        for step in STEPS:
            say(f"--- {step.name}: {tasks} tasks")
            try:
                result = scenario.run_step(step)
            except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
                say(f"FAILED at step '{step.name}': {exc}", stream=sys.stderr)
                say(format_table(results))
                return 1
            results.append(result)
            verdict = "ok" if not result.violations else "; ".join(result.violations)
            say(f"    invariants: {verdict}")
    say()
    say(format_table(results))
    violations = [f"{r.step.name}: {v}" for r in results for v in r.violations]
    if json_out:
        Path(json_out).write_text(json.dumps(_as_json(results, violations), indent=2) + "\n")
    if violations:
        say("\nINVARIANT VIOLATIONS:\n  " + "\n  ".join(violations), stream=sys.stderr)
        return 1
    say("\nall invariants hold: no acknowledged task lost, no result recorded twice")
    return 0


def _as_json(results: list[StepResult], violations: list[str]) -> dict[str, Any]:
    return {
        "steps": [
            {
                "step": r.step.name,
                "summary": r.summary,
                "figure": r.step.figure or None,
                "figure_s": r.figure_s,
                "coordinator_s": r.monitor_s,
                "violations": r.violations,
            }
            for r in results
        ],
        "violations": violations,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Monitor queries and the `test` scenario.")
    sub = parser.add_subparsers(dest="command", required=True)
    view = sub.add_parser("view", help="print each node's state as the monitor sees it")
    view.add_argument("--url", required=True)
    wait = sub.add_parser("wait", help="wait until the monitor shows NODE in STATE")
    wait.add_argument("--url", required=True)
    wait.add_argument("--node", required=True)
    wait.add_argument("--state", required=True, help="one state or several, comma-separated")
    wait.add_argument("--timeout", type=float, default=VERDICT_TIMEOUT_S)
    ready = sub.add_parser("wait-ready", help="wait until N workers are alive")
    ready.add_argument("--url", required=True)
    ready.add_argument("--workers", type=int, required=True)
    ready.add_argument("--timeout", type=float, default=60.0)
    status = sub.add_parser("status", help="runtime states next to the monitor's view")
    status.add_argument("--url", required=True)
    status.add_argument("--row", action="append", default=[], help="NODE|RUNTIME|DETAIL")
    scenario = sub.add_parser("scenario", help="the `test` command")
    scenario.add_argument("--url", required=True)
    scenario.add_argument("sim", nargs="+", help="the wrapper's argv, after --")
    scenario.add_argument("--tasks", type=int, default=DEFAULT_TASKS)
    scenario.add_argument("--json", help="also write the figures as JSON here")
    ports = sub.add_parser("ports-in-use", help="one line per NAME=PORT that is already taken")
    ports.add_argument("--host", default="127.0.0.1", help="address the nodes bind")
    ports.add_argument("ports", nargs="+", type=named_port, metavar="NAME=PORT")
    args = parser.parse_args(argv)
    if args.command == "scenario" and args.tasks < 1:
        parser.error("--tasks must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    # The wrapper starts this with SIGINT ignored, so that a Ctrl-C during start-up cannot
    # interrupt the imports; from here on Ctrl-C raises KeyboardInterrupt, handled below.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = parse_args(argv)
    try:
        if args.command == "view":
            for node, state in sorted(node_states(fetch_cluster(args.url)).items()):
                say(f"{node} {state}")
        elif args.command == "wait":
            elapsed = wait_for_state(args.url, args.node, set(args.state.split(",")), args.timeout)
            say(f"{elapsed:.2f}")
        elif args.command == "wait-ready":
            say(f"{wait_ready(args.url, args.workers, args.timeout):.2f}")
        elif args.command == "status":
            print_status(args.url, args.row)
        elif args.command == "ports-in-use":
            for line in ports_in_use(args.host, args.ports):
                say(line)
        else:
            return run_scenario(args.url, args.sim, args.tasks, args.json)
    except TimeoutError as exc:
        say(f"error: {exc}", stream=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
