"""Scheduling, contexts and migration helpers, with fake executors (no network).

The fake executors run the real node script through a local shell where a result
is needed, and record start/end timestamps so that overlap can be checked.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from cluster_runner_simulation.context_common import ContextBuildError, build_context
from cluster_runner_simulation.descriptor import ClusterDescriptor, NodeSpec
from cluster_runner_simulation.journal_format import FileJournalWriter, scan_journal
from cluster_runner_simulation.migration import FallbackExecutor
from cluster_runner_simulation.protocols import (
    CommandResult,
    NodeUnreachable,
    SystemConfiguration,
)
from cluster_runner_simulation.scheduling import (
    node_command,
    nodes_concurrency_set,
    parse_result_line,
    run_perf_test_scheduled,
    schedule_all_servers,
    schedule_increasing_size_groups,
    schedule_leaf_to_leaf_pairs,
)
from conftest import FakeNode


class FakeExecutor(FakeNode):
    """Runs commands through a local shell; can be told to be unreachable or to fail."""

    def __init__(self, node_id: str, *, down: bool = False, lost_mid_run: bool = False) -> None:
        super().__init__(node_id, down=down)
        self.lost_mid_run = lost_mid_run
        self.pings = 0
        self.closed = False

    async def ping(self) -> float:
        self.pings += 1
        if self.down:
            raise self.unreachable()
        return 0.0

    async def answer(self, command: str) -> CommandResult:
        if self.lost_mid_run:
            raise self.unreachable("lost while running")
        proc = await asyncio.create_subprocess_shell(
            command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        return CommandResult(command, proc.returncode, out, err)

    async def system_facts(self) -> SystemConfiguration:
        if self.down:
            raise self.unreachable()
        return SystemConfiguration(self._node_id, "host", 2, 1 << 30, "3.11")

    async def close(self) -> None:
        self.closed = True


def descriptor(count: int) -> ClusterDescriptor:
    nodes = tuple(
        NodeSpec(id=f"n{i}", host="127.0.0.1", leaf=f"leaf-{i % 2}") for i in range(count)
    )
    return ClusterDescriptor("fake", nodes)


# --- nodes_concurrency_set --------------------------------------------------------------------


async def test_no_node_ever_runs_two_group_tasks_at_once() -> None:
    rng = random.Random(7)
    nodes = [f"n{i}" for i in range(6)]
    intervals: dict[str, list[tuple[float, float]]] = {n: [] for n in nodes}

    async def task(group: tuple[str, ...], pause: float) -> None:
        start = time.monotonic()
        await asyncio.sleep(pause)
        end = time.monotonic()
        for node in group:
            intervals[node].append((start, end))

    groups = [tuple(rng.sample(nodes, rng.randint(1, 3))) for _ in range(40)]
    async with nodes_concurrency_set() as task_runner:
        for group in groups:
            await task_runner(nodes=group, coroutine=task(group, rng.uniform(0.005, 0.02)))
    for node, spans in intervals.items():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end, f"{node} ran two groups at once"
    assert sum(len(s) for s in intervals.values()) == sum(len(g) for g in groups)
    # It is not serial either: some spans of different nodes overlap in time.
    everything = sorted({span for spans in intervals.values() for span in spans})
    assert any(b[0] < a[1] for a, b in zip(everything, everything[1:]))


async def test_groups_sharing_a_node_run_in_submission_order() -> None:
    order: list[int] = []

    async def note(index: int) -> int:
        await asyncio.sleep(0.001 * (5 - index))
        order.append(index)
        return index

    async with nodes_concurrency_set() as task_runner:
        tasks = [await task_runner(nodes=["a", f"x{i}"], coroutine=note(i)) for i in range(5)]
    assert order == [0, 1, 2, 3, 4] and [t.result() for t in tasks] == order


async def test_a_failing_task_fails_the_block_after_the_others_finish() -> None:
    finished: list[str] = []

    async def ok(name: str) -> None:
        await asyncio.sleep(0.01)
        finished.append(name)

    async def boom() -> None:
        raise RuntimeError("boom")

    with pytest.raises(ExceptionGroup) as info:
        async with nodes_concurrency_set() as task_runner:
            await task_runner(nodes=["a"], coroutine=boom)  # a factory works too
            await task_runner(nodes=["a"], coroutine=ok("after"))
            await task_runner(nodes=["b"], coroutine=ok("other"))
    assert sorted(finished) == ["after", "other"]
    assert [str(e) for e in info.value.exceptions] == ["boom"]


# --- Schedules --------------------------------------------------------------------------------


def test_schedules_shapes() -> None:
    leaf_of = {f"n{i}": f"leaf-{i % 2}" for i in range(6)}
    assert schedule_all_servers(["a", "b"]) == [("a",), ("b",)]
    assert schedule_leaf_to_leaf_pairs(leaf_of) == [("n0", "n1"), ("n2", "n3"), ("n4", "n5")]
    assert schedule_leaf_to_leaf_pairs({"a": "x", "b": "x", "c": "x"}) == [("a", "b")]
    three = {"a": "l1", "b": "l2", "c": "l3"}
    assert schedule_leaf_to_leaf_pairs(three) == [("a", "b"), ("a", "c"), ("b", "c")]
    groups = schedule_increasing_size_groups(leaf_of)
    assert [len(g) for g in groups] == [2, 4, 6]
    assert groups[0] == ("n0", "n2")  # leaves are filled first
    assert schedule_increasing_size_groups({"a": "l"}) == [("a",)]


async def test_node_script_prints_an_nccl_shaped_line() -> None:
    proc = await asyncio.create_subprocess_shell(
        node_command(16, 0, 1 << 20), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    line, metrics = parse_result_line(out.decode())
    assert line.startswith("1048576") and "float     sum" in line
    assert metrics["size_bytes"] == 1 << 20 and metrics["busbw_gbps"] > metrics["algbw_gbps"] > 0
    assert parse_result_line("no numbers here") == ("", {})


async def test_run_perf_test_scheduled_journals_every_group(tmp_path: Path) -> None:
    journal = FileJournalWriter(tmp_path / "j.jsonl")
    fakes = {f"n{i}": FakeExecutor(f"n{i}", down=i == 3) for i in range(4)}
    opcon = await build_context("fake", descriptor(3), None, journal, lambda n: fakes[n.id])
    results = await run_perf_test_scheduled(opcon, "pairs", [("n0", "n1"), ("n2",)], run_id="r")
    assert [r.exit_status for r in results] == [0, 0]
    assert results[0].metrics["busbw_gbps"] > 0 and results[0].result_line
    assert sorted(scan_journal(journal.path).record_ids) == sorted(r.record_id for r in results)
    # A node failing inside a group is reported, and the group's result still journaled.
    broken = await build_context(
        "fake",
        descriptor(2),
        None,
        journal,
        lambda n: FakeExecutor(n.id, lost_mid_run=n.id == "n1"),
    )
    (failed,) = await run_perf_test_scheduled(broken, "pairs", [("n0", "n1")], run_id="s")
    assert failed.exit_status is None and "lost while running" in failed.extra["errors"]["n1"]
    assert len(scan_journal(journal.path).entries) == 3
    await journal.close()


# --- Contexts ---------------------------------------------------------------------------------


async def test_context_names_unknown_nodes_and_unreachable_ones(tmp_path: Path) -> None:
    journal = FileJournalWriter(tmp_path / "j.jsonl")
    opcon = await build_context(
        "fake", descriptor(3), lambda n: n.id != "n2", journal, lambda n: FakeExecutor(n.id)
    )
    assert opcon.node_ids() == ["n0", "n1"] and opcon.journal() is journal
    assert opcon.system_config("n1").node_id == "n1"
    with pytest.raises(
        KeyError, match="unknown node 'n2' in the fake context; valid nodes: n0, n1"
    ):
        opcon.executor("n2")
    with pytest.raises(KeyError, match="valid nodes: n0, n1"):
        opcon.system_config("zz")
    made: list[FakeExecutor] = []

    def make(node: NodeSpec) -> FakeExecutor:
        made.append(FakeExecutor(node.id, down=node.id == "n1"))
        return made[-1]

    with pytest.raises(ContextBuildError, match="1 node.* unreachable: n1: n1: fake: down"):
        await build_context("fake", descriptor(3), None, journal, make)
    assert all(e.closed for e in made)
    await journal.close()


# --- FallbackExecutor -------------------------------------------------------------------------


async def test_fallback_only_when_unreachable_before_the_command() -> None:
    primary, ssh = FakeExecutor("n0", down=True), FakeExecutor("n0")
    executor = FallbackExecutor(primary, ssh, down_recheck_s=0.0)
    result = await executor.run("echo hi")
    assert result.stdout == b"hi\n" and executor.fallbacks == 1
    assert primary.commands == [] and ssh.commands == ["echo hi"]
    primary.down = False
    await executor.run("echo back")
    assert primary.commands == ["echo back"] and executor.fallbacks == 1


async def test_a_down_primary_is_asked_again_once_the_recheck_time_has_passed() -> None:
    now = [100.0]
    primary, ssh = FakeExecutor("n0", down=True), FakeExecutor("n0")
    executor = FallbackExecutor(primary, ssh, down_recheck_s=5.0, clock=lambda: now[0])
    await executor.run("first")
    primary.down = False
    now[0] += 4.9
    await executor.run("still skipped")
    assert ssh.commands == ["first", "still skipped"] and primary.commands == []
    now[0] += 0.2
    await executor.run("back")
    assert primary.commands == ["back"]


async def test_fallback_never_reruns_a_command_lost_mid_run() -> None:
    primary, ssh = FakeExecutor("n0", lost_mid_run=True), FakeExecutor("n0")
    executor = FallbackExecutor(primary, ssh)
    with pytest.raises(NodeUnreachable, match="lost while running"):
        await executor.run("touch once")
    assert primary.commands == ["touch once"] and ssh.commands == []
    assert (executor.fallbacks, executor.refused_fallbacks) == (0, 1)
    # While the primary is marked down, later commands skip it without pinging.
    pings = primary.pings
    await executor.run("echo later")
    assert ssh.commands == ["echo later"] and primary.pings == pings


async def test_fallback_rejects_executors_of_different_nodes() -> None:
    with pytest.raises(ValueError, match="different nodes"):
        FallbackExecutor(FakeExecutor("a"), FakeExecutor("b"))
