"""The task kinds a worker runs: echo, sleep MS, cpu MS (burn), fail. No shell commands.

    echo   -> output = payload, at once
    sleep  -> waits ``ms`` milliseconds without using a CPU (asyncio timer)
    cpu    -> burns a CPU for ``ms`` milliseconds in a thread (so heartbeats keep flowing)
    fail   -> a deterministic failure: ok = false, error "fail task: requested failure"

``ms`` is at most 600,000 (``MAX_TASK_MS``): the codec refuses a larger one, so no task can
pin a worker for longer. Running a remote command is the 03 agent's job, with
authentication; it is deliberately not a task kind here. ``run_quick`` handles the kinds that
finish without waiting, so the worker can answer a whole batch of them in one RESULTS frame.

Try it:  python -c "import asyncio; from cluster_patterns.tasks import run; \\
                    from cluster_patterns.protocol import Assignment as A; \\
                    print(asyncio.run(run(A('t1', 1, 'sleep', 20))))"
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from typing import Final

from cluster_patterns.protocol import Assignment, TaskKind, TaskResult

CAPABILITIES: Final = tuple(kind.value for kind in TaskKind)


def _result(
    task: Assignment, started: float, ok: bool, output: str = "", error: str = ""
) -> TaskResult:
    return TaskResult(
        task_id=task.task_id,
        attempt=task.attempt,
        ok=ok,
        output=output,
        error=error,
        duration_s=round(time.monotonic() - started, 6),
    )


def run_quick(task: Assignment) -> TaskResult | None:
    """The result of a task that needs no waiting, or None if it must be awaited."""
    kind = task.kind
    if kind == TaskKind.ECHO:
        return TaskResult(task.task_id, task.attempt, True, task.payload, "", 0.0)
    if kind == TaskKind.FAIL:
        return TaskResult(task.task_id, task.attempt, False, "", "fail task: requested failure")
    if kind not in (TaskKind.SLEEP, TaskKind.CPU):
        return TaskResult(task.task_id, task.attempt, False, "", f"unknown task kind {kind!r}")
    if task.ms == 0:
        return TaskResult(task.task_id, task.attempt, True, "", "", 0.0)
    return None


def burn(ms: int) -> int:
    """Keep one CPU busy for ``ms`` milliseconds; returns the loop count (the 'work')."""
    deadline = time.perf_counter() + ms / 1000
    loops = 0
    while time.perf_counter() < deadline:
        loops += 1
    return loops


async def run(task: Assignment, executor: Executor | None = None) -> TaskResult:
    """Run any task kind; sleep and cpu are awaited, the rest answer at once."""
    quick = run_quick(task)
    if quick is not None:
        return quick
    started = time.monotonic()
    if task.kind == TaskKind.SLEEP:
        await asyncio.sleep(task.ms / 1000)
        return _result(task, started, True)
    loops = await asyncio.get_running_loop().run_in_executor(executor, burn, task.ms)
    return _result(task, started, True, output=f"{loops} loops")
