"""`test`: a workload during every fault, and the invariants after each step (Jepsen's shape).

Five steps, each submitting ``tasks`` sleep tasks with client.py while one fault is
injected once the first wave of tasks is done: baseline (no fault), fail worker1, recover
worker1, partition worker2, heal worker2. After every step the client's summary must show
every acknowledged task done exactly once: lost == 0, duplicates == 0, done == submitted ==
tasks, failed == 0. The figures table gives latency, throughput, and how long the monitor
took to see each fault (and the coordinator's own measurement of it). A fault this run
injected and had not yet repaired is repaired however the run ends.
"""

from __future__ import annotations

import enum
import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cluster_patterns.protocol import NodeState, TaskKind
from cluster_simulator.backend import Backend
from cluster_simulator.faults import VERDICT_TIMEOUT_S, Faults
from cluster_simulator.output import SimError, say, say_err
from cluster_simulator.roles import Workload

# --8<-- [start:steps]
# Tasks long enough that the workload is still running when the fault hits.
FAULT_TASK_MS: Final = 300
BASELINE_TASK_MS: Final = 5
WORKLOAD_TIMEOUT_S: Final = 240.0
# A fault is injected once this many tasks of the step's workload are done.
FAULT_AFTER_DONE: Final = 24
FIGURE_WAIT_S: Final = 3.0
# --8<-- [end:steps]
POLL_S: Final = 0.05
# Which /api/cluster figure the coordinator measured for a step.
FIGURE_KEYS: Final = {
    "failure detection": "failure_detection",
    "partition recovery": "partition_recovery",
}


class Fault(enum.Enum):
    FAIL = "fail"
    RECOVER = "recover"
    PARTITION = "partition"
    HEAL = "heal"


# The fault that repairs each fault, for a run that ends before the step that would.
REPAIR: Final = {Fault.FAIL: Fault.RECOVER, Fault.PARTITION: Fault.HEAL}


@dataclass(frozen=True)
class Step:
    name: str
    fault: Fault | None = None
    node: str = ""
    verdict: NodeState | None = None
    figure: str = ""
    task_ms: int = FAULT_TASK_MS


@dataclass(frozen=True)
class StepResult:
    step: Step
    summary: dict[str, Any]
    exit_code: int
    figure_s: float | None
    monitor_s: float | None
    violations: list[str]


STEPS: Final = [
    Step("baseline", task_ms=BASELINE_TASK_MS),
    Step("fail worker1", Fault.FAIL, "worker1", NodeState.DEAD, "failure detection"),
    Step("recover worker1", Fault.RECOVER, "worker1", NodeState.ALIVE, "rejoin"),
    Step("partition worker2", Fault.PARTITION, "worker2", NodeState.DEAD, "failure detection"),
    Step("heal worker2", Fault.HEAL, "worker2", NodeState.ALIVE, "partition recovery"),
]


# --8<-- [start:invariants]
def check_invariants(summary: dict[str, Any], tasks: int) -> list[str]:
    """What is wrong with one step's client summary (nothing: [])."""
    if not summary:
        return ["the workload wrote no summary"]
    problems = []
    if summary.get("lost", 0):
        problems.append(f"{summary['lost']} acknowledged task(s) lost")
    if summary.get("duplicates", 0):
        problems.append(f"{summary['duplicates']} result(s) recorded twice")
    if summary.get("done") != summary.get("submitted") or summary.get("submitted") != tasks:
        problems.append(
            f"done {summary.get('done')} of submitted {summary.get('submitted')} (wanted {tasks})"
        )
    if summary.get("failed", 0):
        problems.append(f"{summary['failed']} task(s) failed")
    return problems


# --8<-- [end:invariants]


class Scenario:
    def __init__(self, backend: Backend, tasks: int, workdir: Path) -> None:
        self.backend = backend
        self.api = backend.api()
        self.tasks = tasks
        self.workdir = workdir
        faults = Faults(backend, "test", wait=False)
        self.inject: dict[Fault, Callable[[str], None]] = {
            Fault.FAIL: faults.fail,
            Fault.RECOVER: faults.recover,
            Fault.PARTITION: faults.partition,
            Fault.HEAL: faults.heal,
        }

    # --8<-- [start:run-step]
    def run_step(self, step: Step) -> StepResult:
        json_path = self.workdir / (step.name.replace(" ", "-") + ".json")
        before = self.api.total("done")
        work = Workload(self.tasks, TaskKind.SLEEP, step.task_ms)
        client = self.backend.start_client(work, json_path, subprocess.DEVNULL)
        figure_s = monitor_s = None
        if step.fault is not None and step.verdict is not None:
            self._wait_until_running(before, client.running)
            count_before = self._figure_count(step)
            self._inject(step)
            figure_s = self.api.wait_for_state(step.node, step.verdict, VERDICT_TIMEOUT_S)
            monitor_s = self._monitor_figure(step, count_before)
        exit_code = client.finish(timeout=WORKLOAD_TIMEOUT_S)
        summary = client.summary()
        violations = check_invariants(summary, self.tasks)
        return StepResult(step, summary, exit_code, figure_s, monitor_s, violations)

    # --8<-- [end:run-step]

    def _inject(self, step: Step) -> None:
        assert step.fault is not None
        self.inject[step.fault](step.node)
        repair = REPAIR.get(step.fault)
        if repair is None:
            self.backend.undo.arm(None)  # this step was the repair
            return
        node = step.node

        def undo() -> None:
            self.inject[repair](node)

        self.backend.undo.arm(undo, f"repairing what this test did to {node} ({repair.value})")

    def _wait_until_running(self, before: int, running: Callable[[], bool]) -> None:
        deadline = time.monotonic() + VERDICT_TIMEOUT_S
        while time.monotonic() < deadline and running():
            if self.api.total("done") >= before + FAULT_AFTER_DONE:
                return
            time.sleep(POLL_S)

    def _figure_count(self, step: Step) -> int:
        document = self.api.cluster()
        key = FIGURE_KEYS.get(step.figure)
        return int(document[key]["count"]) if document and key else 0

    def _monitor_figure(self, step: Step, count_before: int) -> float | None:
        """The coordinator's own measurement of this step, as the monitor publishes it."""
        key = FIGURE_KEYS.get(step.figure)
        deadline = time.monotonic() + FIGURE_WAIT_S
        while key and time.monotonic() < deadline:
            document = self.api.cluster()
            if document and int(document[key]["count"]) > count_before:
                last = document[key]["last_s"]
                return None if last is None else float(last)
            time.sleep(POLL_S)
        return None


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


def as_json(results: list[StepResult], violations: list[str]) -> dict[str, Any]:
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


def run_scenario(backend: Backend, tasks: int, json_out: Path | None) -> int:
    """Run every step; 0 when all invariants hold, 1 on a violation or a failed step."""
    results: list[StepResult] = []
    with tempfile.TemporaryDirectory(prefix="cluster-test-") as tmp:
        scenario = Scenario(backend, tasks, Path(tmp))
        for step in STEPS:
            say(f"--- {step.name}: {tasks} tasks")
            try:
                result = scenario.run_step(step)
            except (SimError, TimeoutError, subprocess.TimeoutExpired) as exc:
                say_err(f"FAILED at step '{step.name}': {exc}")
                say(format_table(results))
                return 1
            results.append(result)
            verdict = "ok" if not result.violations else "; ".join(result.violations)
            say(f"    invariants: {verdict}")
    say()
    say(format_table(results))
    violations = [f"{r.step.name}: {v}" for r in results for v in r.violations]
    if json_out is not None:
        json_out.write_text(json.dumps(as_json(results, violations), indent=2) + "\n")
    if violations:
        say_err("\nINVARIANT VIOLATIONS:\n  " + "\n  ".join(violations))
        return 1
    say("\nall invariants hold: no acknowledged task lost, no result recorded twice")
    return 0
