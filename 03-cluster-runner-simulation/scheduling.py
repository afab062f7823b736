"""cluster_runner's scheduling, rebuilt: node-exclusive groups, three schedules, a fake NCCL test.

Nothing here binds or connects by itself: tasks reach nodes only through the
``OperationalContextProtocol`` they are given (SSH or ZeroMQ, it does not matter),
and every result goes into that context's journal.

  * ``nodes_concurrency_set()``: ``async with nodes_concurrency_set() as task_runner:
    await task_runner(nodes=group, coroutine=...)``. Groups start in submission order,
    and no node ever runs two group tasks at once; leaving the block waits for all.
  * Schedules: ``schedule_all_servers`` (every node alone, all at once),
    ``schedule_leaf_to_leaf_pairs`` (one node of each of two leaves, every leaf pair),
    ``schedule_increasing_size_groups`` (2, 4, 8, ... nodes, then all of them).
  * ``run_perf_test_scheduled``: runs the simulated all-reduce test on every group.
    The test is a few lines of Python sent to the node through its executor: it
    sleeps briefly and prints a line shaped like nccl-tests' all_reduce_perf output,
    with figures derived from message size and rank count only, so the SSH and the
    ZeroMQ contexts produce identical result lines.

Run the schedules: python 03-cluster-runner-simulation/run_schedules.py --local 4 --transport zmq
"""

from __future__ import annotations

import asyncio
import itertools
import re
import shlex
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cluster_runner_simulation.protocols import (
    CommandResult,
    ExecutorError,
    OperationalContextProtocol,
    PerfTestResult,
)

T = TypeVar("T")
Group = tuple[str, ...]

TEST_NAME = "all_reduce_perf"
MESSAGE_BYTES = 128 << 20  # the all-reduce size the simulated test reports
GPUS_PER_NODE = 8
SIMULATED_SLEEP_S = 0.05  # how long the fake test "runs" on the node
TEST_TIMEOUT_S = 60.0
SCHEDULE_NAMES = ("all", "pairs", "groups")

# The node-side script. It must run with any python3 >= 3.6 and nothing installed.
# --8<-- [start:node-script]
NODE_SCRIPT = """
import sys, time
size, ranks, rank, pause = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
time.sleep(pause)
link_gbps = 240.0 if ranks <= 8 else 190.0 - 0.5 * (ranks // 8)
factor = 2.0 * (ranks - 1) / ranks
t_us = 8.0 * ranks + size * factor / (link_gbps * 1e3)
algbw = size / t_us / 1e3
busbw = algbw * factor
print("# nccl-tests simulation, rank %d of %d" % (rank, ranks))
print("#       size         count      type   redop    root     time   algbw   busbw #wrong")
print("%12d  %12d     float     sum      -1  %7.1f  %6.2f  %6.2f      0"
      % (size, size // 4, t_us, algbw, busbw))
print("# Avg bus bandwidth    : %.2f" % busbw)
"""
# --8<-- [end:node-script]
RESULT_LINE = re.compile(
    r"^\s*(?P<size>\d+)\s+(?P<count>\d+)\s+\w+\s+\w+\s+-?\d+\s+"
    r"(?P<time>[\d.]+)\s+(?P<algbw>[\d.]+)\s+(?P<busbw>[\d.]+)\s+\d+\s*$",
    re.MULTILINE,
)


# --- nodes_concurrency_set --------------------------------------------------------------------


@dataclass
class _Waiter:
    seq: int
    nodes: frozenset[str]


@dataclass
class NodesConcurrencySet:
    """Runs group tasks so that no node is in two running groups, in submission order."""

    busy: set[str] = field(default_factory=set)
    waiting: list[_Waiter] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    async def __call__(
        self, *, nodes: Sequence[str], coroutine: Awaitable[T] | Callable[[], Awaitable[T]]
    ) -> asyncio.Task[T]:
        """Queue ``coroutine`` for ``nodes``; returns at once with the task that will run it."""
        if not nodes:
            raise ValueError("a group task needs at least one node")
        waiter = _Waiter(next(self._seq), frozenset(nodes))
        self.waiting.append(waiter)
        task = asyncio.create_task(self._run(waiter, coroutine), name=f"group-{'+'.join(nodes)}")
        self.tasks.append(task)
        return task

    def _may_start(self, waiter: _Waiter) -> bool:
        if waiter.nodes & self.busy:
            return False
        # First come, first served per node: an earlier group that shares a node goes first.
        return not any(w.seq < waiter.seq and w.nodes & waiter.nodes for w in self.waiting)

    async def _run(self, waiter: _Waiter, work: Awaitable[T] | Callable[[], Awaitable[T]]) -> T:
        try:
            async with self._changed:
                await self._changed.wait_for(lambda: self._may_start(waiter))
                self.waiting.remove(waiter)
                self.busy |= waiter.nodes
        except BaseException:
            self.waiting.remove(waiter)
            if asyncio.iscoroutine(work):
                work.close()  # never started: do not leave a "never awaited" warning
            raise
        try:
            return await (work() if callable(work) else work)
        finally:
            async with self._changed:
                self.busy -= waiter.nodes
                self._changed.notify_all()

    async def wait_all(self) -> None:
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise ExceptionGroup("group tasks failed", errors)


@asynccontextmanager
async def nodes_concurrency_set() -> AsyncIterator[NodesConcurrencySet]:
    runner = NodesConcurrencySet()
    try:
        yield runner
    except BaseException:
        for task in runner.tasks:
            task.cancel()
        await asyncio.gather(*runner.tasks, return_exceptions=True)
        raise
    await runner.wait_all()


async def run_node_exclusive(
    groups: Sequence[Group], job: Callable[[Group], Awaitable[T]]
) -> list[T]:
    """``job(group)`` for every group, never two at once on one node; results in group order."""
    async with nodes_concurrency_set() as task_runner:
        tasks = [await task_runner(nodes=group, coroutine=job(group)) for group in groups]
    return [task.result() for task in tasks]


# --- Schedules --------------------------------------------------------------------------------


def schedule_all_servers(node_ids: Sequence[str]) -> list[Group]:
    """Every node on its own; the groups share no node, so they all run at once."""
    return [(node,) for node in node_ids]


def _by_leaf(leaf_of: Mapping[str, str]) -> dict[str, list[str]]:
    leaves: dict[str, list[str]] = {}
    for node in sorted(leaf_of):
        leaves.setdefault(leaf_of[node], []).append(node)
    return dict(sorted(leaves.items()))


def schedule_leaf_to_leaf_pairs(leaf_of: Mapping[str, str]) -> list[Group]:
    """For every pair of leaves, pair their k-th nodes; with one leaf, pair neighbours."""
    leaves = list(_by_leaf(leaf_of).values())
    if len(leaves) < 2:
        nodes = leaves[0] if leaves else []
        return [(nodes[i], nodes[i + 1]) for i in range(0, len(nodes) - 1, 2)]
    pairs: list[Group] = []
    for left, right in itertools.combinations(leaves, 2):
        pairs.extend(zip(left, right))
    return pairs


def schedule_increasing_size_groups(leaf_of: Mapping[str, str]) -> list[Group]:
    """Groups of 2, 4, 8, ... nodes (filling leaves in order), then the whole set."""
    ordered = [node for nodes in _by_leaf(leaf_of).values() for node in nodes]
    if len(ordered) < 2:
        return [tuple(ordered)] if ordered else []
    sizes = [2**k for k in range(1, len(ordered).bit_length()) if 2**k < len(ordered)]
    return [tuple(ordered[:size]) for size in [*sizes, len(ordered)]]


def build_schedule(name: str, leaf_of: Mapping[str, str]) -> list[Group]:
    if name == "all":
        return schedule_all_servers(sorted(leaf_of))
    if name == "pairs":
        return schedule_leaf_to_leaf_pairs(leaf_of)
    if name == "groups":
        return schedule_increasing_size_groups(leaf_of)
    raise ValueError(f"unknown schedule {name!r} (choose from {', '.join(SCHEDULE_NAMES)})")


# --- The simulated perf test ------------------------------------------------------------------


def node_command(ranks: int, rank: int, size: int = MESSAGE_BYTES) -> str:
    args = [str(size), str(ranks), str(rank), str(SIMULATED_SLEEP_S)]
    return " ".join(["python3", "-c", shlex.quote(NODE_SCRIPT), *args])


def parse_result_line(stdout: str) -> tuple[str, dict[str, float]]:
    """The nccl-tests data line and its figures; ``("", {})`` if there is none."""
    match = RESULT_LINE.search(stdout)
    if match is None:
        return "", {}
    metrics = {
        "size_bytes": float(match["size"]),
        "time_us": float(match["time"]),
        "algbw_gbps": float(match["algbw"]),
        "busbw_gbps": float(match["busbw"]),
    }
    return match.group(0).strip(), metrics


def _outcome(group: Group, outcomes: list[CommandResult | BaseException]) -> dict[str, Any]:
    """Exit status, result line, metrics and errors of one group run."""
    errors = {
        node: f"{type(o).__name__}: {o}"
        for node, o in zip(group, outcomes)
        if isinstance(o, BaseException)
    }
    failed = {
        node: o.exit_status
        for node, o in zip(group, outcomes)
        if isinstance(o, CommandResult) and o.exit_status != 0
    }
    first = outcomes[0]
    line, metrics = (
        parse_result_line(first.stdout_text) if isinstance(first, CommandResult) else ("", {})
    )
    exit_status: int | None = 0
    if errors:
        exit_status = None
    elif failed:
        exit_status = next(iter(failed.values()))
    elif not line:
        exit_status = 1
        errors[group[0]] = "no result line in the test's output"
    extra: dict[str, Any] = {}
    if errors:
        extra["errors"] = errors
    if failed:
        extra["failed_exit_status"] = failed
    return {"exit_status": exit_status, "result_line": line, "metrics": metrics, "extra": extra}


async def run_perf_test(
    opcon: OperationalContextProtocol,
    schedule: str,
    group: Group,
    run_id: str,
    test: str = TEST_NAME,
) -> PerfTestResult:
    """Run the simulated test on every node of ``group`` at once and journal the outcome."""
    ranks = GPUS_PER_NODE * len(group)
    started = time.time()
    runs = [
        opcon.executor(node).run(node_command(ranks, index * GPUS_PER_NODE), timeout=TEST_TIMEOUT_S)
        for index, node in enumerate(group)
    ]
    outcomes: list[CommandResult | BaseException] = list(
        await asyncio.gather(*runs, return_exceptions=True)
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, ExecutorError):
            raise outcome
    result = PerfTestResult(
        record_id=f"{run_id}/{schedule}/{test}/{'+'.join(group)}",
        schedule=schedule,
        test=test,
        nodes=group,
        started_at=started,
        finished_at=time.time(),
        **_outcome(group, outcomes),
    )
    await opcon.journal().write(result)
    return result


async def run_perf_test_scheduled(
    opcon: OperationalContextProtocol,
    schedule: str,
    groups: Sequence[Group],
    *,
    run_id: str | None = None,
    test: str = TEST_NAME,
) -> list[PerfTestResult]:
    """Run ``test`` on every group, node-exclusively; results come back in group order."""
    run_id = run_id or uuid.uuid4().hex[:12]
    return await run_node_exclusive(
        groups, lambda group: run_perf_test(opcon, schedule, group, run_id, test)
    )
