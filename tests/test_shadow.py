"""ShadowExecutor: probes mirrored at once, tests mirrored after the primary (never beside it),
and metrics compared within a tolerance instead of stdout. Fake executors, no network."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cluster_runner_simulation.descriptor import ClusterDescriptor, NodeSpec
from cluster_runner_simulation.journal_format import FileJournalWriter
from cluster_runner_simulation.context_common import build_context
from cluster_runner_simulation.migration import ShadowExecutor, ShadowMode, ShadowPolicy
from cluster_runner_simulation.protocols import (
    CommandResult,
    NodeUnreachable,
    SystemConfiguration,
)
from cluster_runner_simulation.scheduling import build_schedule, run_perf_test_scheduled
from cluster_runner_simulation.shadow import bench_metrics
from conftest import FakeNode

Busy = dict[str, list[tuple[float, float, str]]]  # node -> (start, end, which side)


def bench_output(busbw_1m: float, busbw_4m: float, wrong: int = 0) -> bytes:
    """allreduce_bench's shape: two sizes of 1 MiB and more, one small one, the average."""
    rows = [(65536, 1.0), (1048576, busbw_1m), (4194304, busbw_4m)]
    lines = ["# allreduce_bench (MPI_Allreduce, float sum): nranks 2"]
    for size, busbw in rows:
        lines.append(
            f"{size:12d}  {size // 4:12d}     float     sum      -1    100.0"
            f"  {busbw:6.2f}  {busbw:6.2f}  {wrong:6d}"
        )
    lines.append(f"# Avg bus bandwidth    : {(busbw_1m + busbw_4m) / 2:.3f}")
    return ("\n".join(lines) + "\n").encode()


class Recording(FakeNode):
    """Answers after ``pause`` seconds with ``answer(command)``; notes when it was busy."""

    def __init__(
        self,
        node_id: str,
        side: str,
        busy: Busy,
        answer: Callable[[str], CommandResult] | None = None,
        pause: float = 0.05,
        down: bool = False,
    ) -> None:
        super().__init__(node_id, down=down)
        self.side, self.busy = side, busy
        self.reply = answer or (lambda command: CommandResult(command, 0, f"{side}\n".encode()))
        self.pause = pause

    async def answer(self, command: str) -> CommandResult:
        start = time.monotonic()
        await asyncio.sleep(self.pause)
        self.busy.setdefault(self._node_id, []).append((start, time.monotonic(), self.side))
        return self.reply(command)

    async def system_facts(self) -> SystemConfiguration:
        return SystemConfiguration(self._node_id, "host", 2, 1 << 30, "3.11")

    async def close(self) -> None:
        pass


def pair(
    *,
    busy: Busy | None = None,
    policy: ShadowPolicy | None = None,
    primary_answer: Callable[[str], CommandResult] | None = None,
    secondary_answer: Callable[[str], CommandResult] | None = None,
    pause: float = 0.05,
    down: bool = False,
) -> tuple[ShadowExecutor, Recording, Recording]:
    busy = {} if busy is None else busy
    primary = Recording("n0", "primary", busy, primary_answer)
    secondary = Recording("n0", "secondary", busy, secondary_answer, pause=pause, down=down)
    return ShadowExecutor(primary, secondary, policy), primary, secondary


def test_only_allow_listed_read_only_commands_are_probes() -> None:
    policy = ShadowPolicy()
    for probe in ("hostname", "nvidia-smi -L", "uname -a", "  cat /proc/meminfo ", "ibstat -l"):
        assert policy.mode(probe) is ShadowMode.PROBE, probe
    for test in ("hostname; rm -rf /tmp/x", "nvidia-smi -r", "all_reduce_perf -b 8", "cat /etc/x"):
        assert policy.mode(test) is ShadowMode.SERIAL, test
    assert ShadowPolicy(serial_tests=False).mode("all_reduce_perf") is ShadowMode.SKIP


async def test_a_probe_is_mirrored_at_once_and_its_stdout_compared() -> None:
    shadow, _, _ = pair(pause=0.3)
    started = time.monotonic()
    result = await shadow.run("hostname")
    assert time.monotonic() - started < 0.3  # the caller does not wait for the copy
    assert result.stdout == b"primary\n"
    await shadow.drain()
    (found,) = shadow.discrepancies
    assert found.mode is ShadowMode.PROBE and found.detail == "stdout differs (8 vs 10 B)"


async def test_a_test_is_mirrored_after_the_primary_and_never_beside_it() -> None:
    busy: Busy = {}
    shadow, primary, secondary = pair(busy=busy)
    result = await shadow.run("all_reduce_perf -b 8 -e 128M")
    assert result.stdout == b"primary\n"  # always the primary's answer
    first, second = busy["n0"]
    assert (first[2], second[2]) == ("primary", "secondary") and second[0] >= first[1]
    # Outputs differ, but a test's stdout is never compared: only exit status and metrics.
    assert shadow.stats.compared == 1 and shadow.discrepancies == []
    assert shadow.stats.serial_copies == 1


async def test_metrics_within_the_tolerance_agree_and_beyond_it_disagree() -> None:
    def output(busbw: float, wrong: int = 0) -> Callable[[str], CommandResult]:
        return lambda command: CommandResult(command, 0, bench_output(busbw, busbw * 2, wrong))

    close, _, _ = pair(primary_answer=output(10.0), secondary_answer=output(8.0))
    await close.run("mpirun allreduce_bench")
    assert close.discrepancies == []  # 20 % < 25 %, and the 64 KiB line is not compared
    far, _, _ = pair(primary_answer=output(10.0), secondary_answer=output(7.0))
    await far.run("mpirun allreduce_bench")
    (found,) = far.discrepancies
    assert "busbw_gbps@1048576: 10 vs 7 (-30.0 %, over 25%)" in found.detail
    assert "busbw_gbps@4194304: 20 vs 14" in found.detail
    wrong, _, _ = pair(primary_answer=output(10.0), secondary_answer=output(10.0, wrong=3))
    await wrong.run("mpirun allreduce_bench")
    assert "wrong@65536: 0 vs 3" in wrong.discrepancies[0].detail
    strict, _, _ = pair(
        policy=ShadowPolicy(rel_tolerance=0.1),
        primary_answer=output(10.0),
        secondary_answer=output(8.0),
    )
    await strict.run("mpirun allreduce_bench")
    assert "over 10%" in strict.discrepancies[0].detail


async def test_an_exit_status_or_a_missing_result_is_a_discrepancy() -> None:
    def failing(command: str) -> CommandResult:
        return CommandResult(command, 7, b"")

    def good(command: str) -> CommandResult:
        return CommandResult(command, 0, bench_output(10.0, 20.0))

    shadow, _, _ = pair(primary_answer=good, secondary_answer=failing)
    await shadow.run("mpirun allreduce_bench")
    detail = shadow.discrepancies[0].detail
    assert detail.startswith("exit 0 != 7") and "busbw_gbps@1048576: only on the primary" in detail


async def test_sampling_shadows_one_test_in_n_and_counts_the_rest() -> None:
    shadow, _, secondary = pair(policy=ShadowPolicy(sample_every=3))
    for index in range(6):
        await shadow.run(f"test {index}")
    assert secondary.commands == ["test 0", "test 3"]
    assert (shadow.stats.serial_copies, shadow.stats.not_shadowed) == (2, 4)
    with pytest.raises(ValueError, match="sample_every"):
        ShadowPolicy(sample_every=0)


async def test_primary_errors_pass_through_and_secondary_errors_are_findings() -> None:
    busy: Busy = {}
    down = ShadowExecutor(Recording("n0", "p", busy, down=True), Recording("n0", "s", busy))
    with pytest.raises(NodeUnreachable, match="fake: down"):
        await down.run("test")
    assert busy == {}  # no copy ran for a test whose primary never did
    shadow, _, _ = pair(down=True)
    assert (await shadow.run("test")).stdout == b"primary\n"
    assert (await shadow.run("hostname")).stdout == b"primary\n"
    await shadow.close()
    assert shadow.stats.secondary_errors == 2
    assert shadow.discrepancies[0].detail.startswith("secondary failed: NodeUnreachable")


async def test_a_shadowed_schedule_never_runs_two_copies_on_one_node(tmp_path: Path) -> None:
    """The schedules with shadowing on: per node, primary and secondary spans never overlap."""
    busy: Busy = {}
    nodes = tuple(NodeSpec(id=f"n{i}", host="127.0.0.1", leaf=f"leaf-{i % 2}") for i in range(4))

    def answer(command: str) -> CommandResult:
        return CommandResult(command, 0, bench_output(10.0, 20.0))

    def make(node: NodeSpec) -> ShadowExecutor:
        return ShadowExecutor(
            Recording(node.id, "primary", busy, answer, pause=0.02),
            Recording(node.id, "secondary", busy, answer, pause=0.02),
        )

    journal = FileJournalWriter(tmp_path / "j.jsonl")
    context = await build_context("shadow", ClusterDescriptor("t", nodes), None, journal, make)
    try:
        for schedule in ("all", "pairs", "groups"):
            await run_perf_test_scheduled(
                context, schedule, build_schedule(schedule, context.leaves)
            )
    finally:
        await context.close()
        await journal.close()
    for node, spans in busy.items():
        spans.sort()
        for (_, end, _), (start, _, _) in zip(spans, spans[1:]):
            assert start >= end, f"{node} ran two copies at once: {spans}"
        sides = [side for _, _, side in spans]
        assert sides.count("primary") == sides.count("secondary") > 0


def test_bench_metrics_reads_the_simulated_test_too() -> None:
    line = "   134217728      33554432     float     sum      -1   1020.3  131.55  131.55      0"
    assert bench_metrics(line) == {"wrong@134217728": 0.0, "busbw_gbps@134217728": 131.55}
    assert bench_metrics("no figures here") == {}
