"""Coordination tests on a real sshd and real ZeroMQ agents on loopback (runs under pytest).

Binds nothing itself: LocalSshd (one private sshd on 127.0.0.1) and LocalAgents
(4 ``zmq_node_agent.py`` processes with CURVE keys) provide the cluster, and
``zmq_journal.py collector`` subprocesses provide journals, all on free ports.

    .venv/bin/python -m pytest 03-cluster-runner-simulation/test_coordination.py -q
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster_runner_simulation.context_common import ExecutorContext
from cluster_runner_simulation.descriptor import (
    ClusterDescriptor,
    load_descriptor,
)
from cluster_runner_simulation.journal_format import FileJournalWriter, scan_journal
from cluster_runner_simulation.journal_writer import ZmqJournalWriter
from cluster_runner_simulation.testing import (
    LocalAgents,
    LocalSshd,
    sshd_unavailable_reason,
    write_local_descriptor,
)
from cluster_runner_simulation.migration import (
    FallbackExecutor,
    ShadowExecutor,
    build_fallback_context,
    fallback_counts,
)
from cluster_runner_simulation.protocols import (
    AsyncJournalWriterProtocol,
    JournalError,
    NodeUnreachable,
    PerfTestResult,
)
from cluster_runner_simulation.scheduling import SCHEDULE_NAMES, build_schedule
from cluster_runner_simulation.scheduling import run_perf_test_scheduled
from cluster_runner_simulation.ssh_context import build_ssh_context, ssh_executor_for
from cluster_runner_simulation.zmq_node_executor import ZmqNodeExecutor
from cluster_runner_simulation.zmq_operational_context import build_zmq_context

COLLECTOR = "03-cluster-runner-simulation/zmq_journal.py"
AGENTS = 4
VICTIM = 3  # node3: leaf-b, so it is not in the first "groups" group (node0, node2)
CONNECT_TIMEOUT_S = 2.0  # generous: a busy 2-core CI machine must not fake a dead agent
SIGKILL_ROUNDS = 8


# --- Fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sshd() -> Iterator[LocalSshd]:
    reason = sshd_unavailable_reason()
    if reason:
        pytest.skip(f"no sshd for the coordination tests: {reason}")
    with LocalSshd() as server:
        yield server


@pytest.fixture
def agents() -> Iterator[LocalAgents]:
    with LocalAgents(AGENTS) as running:
        yield running


@pytest.fixture
def descriptor(tmp_path: Path, sshd: LocalSshd, agents: LocalAgents) -> ClusterDescriptor:
    """A descriptor file for the local cluster, written and read back like a user's."""
    path = write_local_descriptor(sshd, agents, tmp_path / "cluster.toml", name="test")
    return load_descriptor(path)


def start_collector(spawn: Any, path: Path, port: int) -> Any:
    proc = spawn(COLLECTOR, "collector", "--path", str(path), "--port", str(port))
    proc.wait_for("listening on", timeout=30)
    return proc


class KillAfterFirstWrite:
    """A journal that kills an agent right after the first result is durable."""

    def __init__(self, inner: AsyncJournalWriterProtocol, agents: LocalAgents) -> None:
        self.inner = inner
        self.agents = agents
        self.fired = False

    async def write(self, test_result: PerfTestResult) -> None:
        await self.inner.write(test_result)
        if not self.fired:
            self.fired = True
            self.agents.stop_one(VICTIM, signal.SIGKILL)

    async def close(self) -> None:
        await self.inner.close()


def comparable(path: Path) -> set[tuple[Any, ...]]:
    """What must match between transports: everything but ids and timings."""
    return {
        (b["schedule"], tuple(b["nodes"]), b["test"], b["exit_status"], b["result_line"])
        for b in (e.body for e in scan_journal(path).entries)
    }


async def run_schedules(opcon: ExecutorContext, names: tuple[str, ...]) -> list[PerfTestResult]:
    results: list[PerfTestResult] = []
    for name in names:
        results += await run_perf_test_scheduled(opcon, name, build_schedule(name, opcon.leaves))
    return results


# --- Schedules through both contexts --------------------------------------------------------------


async def test_schedules_give_equivalent_journals_over_ssh_and_zmq(
    descriptor: ClusterDescriptor, tmp_path: Path, spawn: Any, port: int
) -> None:
    ssh_path, zmq_path = tmp_path / "ssh.jsonl", tmp_path / "zmq.jsonl"
    ssh_journal = FileJournalWriter(ssh_path)
    opcon = await build_ssh_context(descriptor, None, ssh_journal)
    try:
        ssh_results = await run_schedules(opcon, SCHEDULE_NAMES)
    finally:
        await opcon.close()
        await ssh_journal.close()

    start_collector(spawn, zmq_path, port)
    zmq_journal = ZmqJournalWriter(f"tcp://127.0.0.1:{port}")
    opcon = await build_zmq_context(descriptor, None, zmq_journal)
    try:
        assert opcon.system_config("node0").cpu_count >= 1
        with pytest.raises(KeyError, match="valid nodes: node0, node1, node2, node3"):
            opcon.executor("node9")
        zmq_results = await run_schedules(opcon, SCHEDULE_NAMES)
    finally:
        await opcon.close()
        await zmq_journal.close()

    assert all(r.exit_status == 0 for r in ssh_results + zmq_results)
    assert len(ssh_results) == len(zmq_results) == 4 + 2 + 2
    assert comparable(ssh_path) == comparable(zmq_path)
    assert len(comparable(zmq_path)) == 8


# --- An agent dies mid-schedule -------------------------------------------------------------------


async def test_zmq_context_reports_a_killed_agent_and_finishes_the_rest(
    descriptor: ClusterDescriptor, agents: LocalAgents, tmp_path: Path
) -> None:
    journal = KillAfterFirstWrite(FileJournalWriter(tmp_path / "j.jsonl"), agents)
    opcon = await build_zmq_context(descriptor, None, journal, connect_timeout=CONNECT_TIMEOUT_S)
    try:
        results = await run_schedules(opcon, ("groups", "all", "pairs"))
    finally:
        await opcon.close()
        await journal.close()
    assert journal.fired
    victim = f"node{VICTIM}"
    for result in results:
        if victim in result.nodes:
            assert result.exit_status is None, result
            error = result.extra["errors"][victim]
            assert "NodeUnreachable" in error and victim in error
        else:
            assert result.exit_status == 0, result
    assert sum(victim not in r.nodes for r in results) == 1 + 3 + 1


async def test_fallback_context_completes_through_ssh(
    descriptor: ClusterDescriptor, agents: LocalAgents, tmp_path: Path
) -> None:
    journal = KillAfterFirstWrite(FileJournalWriter(tmp_path / "j.jsonl"), agents)
    opcon = await build_fallback_context(
        descriptor, None, journal, zmq_connect_timeout=CONNECT_TIMEOUT_S
    )
    try:
        results = await run_schedules(opcon, ("groups", "all", "pairs"))
        counts = fallback_counts(opcon)
    finally:
        await opcon.close()
        await journal.close()
    assert journal.fired
    assert [r.exit_status for r in results] == [0] * len(results)
    assert counts[f"node{VICTIM}"] >= 3  # groups (whole set), all, pairs


async def test_fallback_never_runs_a_started_command_twice(
    descriptor: ClusterDescriptor, agents: LocalAgents, tmp_path: Path
) -> None:
    node = descriptor.node("node0")
    marker = tmp_path / "runs.txt"
    primary = ZmqNodeExecutor.from_keys_dir(
        node.id, node.host, node.zmq_port, agents.keys_dir, connect_timeout=1.0, silence_timeout=1.5
    )
    executor = FallbackExecutor(primary, ssh_executor_for(node))
    try:
        task = asyncio.create_task(executor.run(f"echo started >> {marker}; sleep 3; echo done"))
        deadline = asyncio.get_running_loop().time() + 30
        while not marker.exists() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        agents.stop_one(0, signal.SIGKILL)  # the command has started on the agent
        with pytest.raises(NodeUnreachable):
            await task
        await asyncio.sleep(3.5)  # the orphaned command finishes; nothing else may start it
        assert marker.read_text().splitlines() == ["started"]
        assert (executor.fallbacks, executor.refused_fallbacks) == (0, 1)
        # A command that had not started yet does go through SSH.
        result = await executor.run("echo via-ssh")
        assert result.stdout_text.strip() == "via-ssh" and executor.fallbacks == 1
    finally:
        await executor.close()


async def test_shadow_records_a_discrepancy_without_changing_the_answer(
    descriptor: ClusterDescriptor, agents: LocalAgents
) -> None:
    node = descriptor.node("node1")
    primary = ZmqNodeExecutor.from_keys_dir(node.id, node.host, node.zmq_port, agents.keys_dir)
    shadow = ShadowExecutor(primary, ssh_executor_for(node))
    try:
        same = await shadow.run("echo same; exit 3")
        # Only sshd sets SSH_CONNECTION: an injected, real difference in stdout and exit status.
        differs = await shadow.run('[ -z "$SSH_CONNECTION" ] && echo zmq || { echo ssh; exit 7; }')
        # A read-only probe is compared on its stdout: the same node, the same hostname.
        probe = await shadow.run("hostname")
        await shadow.drain()
    finally:
        await shadow.close()
    assert (same.exit_status, same.stdout_text) == (3, "same\n")
    assert (differs.exit_status, differs.stdout_text) == (0, "zmq\n")
    assert probe.exit_status == 0
    assert shadow.stats.compared == 3 and shadow.stats.mismatched == 1
    assert shadow.stats.serial_copies == 2  # the two non-probes ran one after the other
    (found,) = shadow.discrepancies
    assert (found.primary_exit, found.secondary_exit) == (0, 7)
    # A test's stdout is not compared (timings differ run to run); its exit status is.
    assert found.detail == "exit 0 != 7"


# --- The journal under crashes --------------------------------------------------------------------


def result(record_id: str) -> PerfTestResult:
    return PerfTestResult(record_id, "crash", "all_reduce_perf", ("n0",), 0, "line", 1.0, 2.0)


async def write_until_stopped(
    journal: ZmqJournalWriter, prefix: str, acked: list[str], lanes: int = 16
) -> None:
    async def lane(index: int) -> None:
        for seq in range(10**9):
            record_id = f"{prefix}-{index}-{seq}"
            await journal.write(result(record_id))
            acked.append(record_id)

    await asyncio.gather(*(lane(i) for i in range(lanes)))


async def test_collector_restart_loses_and_duplicates_nothing(
    tmp_path: Path, spawn: Any, port: int
) -> None:
    path = tmp_path / "j.jsonl"
    collector = start_collector(spawn, path, port)
    journal = ZmqJournalWriter(f"tcp://127.0.0.1:{port}", retry_interval=0.3, timeout=60)
    ids = [f"r{i}" for i in range(3000)]
    acked: list[str] = []

    async def one(record_id: str) -> None:
        await journal.write(result(record_id))
        acked.append(record_id)

    writes = asyncio.gather(*(one(r) for r in ids))
    while len(acked) < 300:
        await asyncio.sleep(0.01)
    collector.signal(signal.SIGKILL)
    collector.wait()
    durable_before = set(scan_journal(path).record_ids)
    await asyncio.sleep(0.5)
    start_collector(spawn, path, port)
    await writes
    await journal.close()
    stored = scan_journal(path).record_ids  # scan_journal raises on a duplicate id
    assert sorted(stored) == sorted(ids)
    assert len(acked) == len(ids) and set(acked) <= set(stored)
    assert len(durable_before) < len(ids)  # the kill really interrupted the stream


async def test_sigkill_during_heavy_writing_keeps_every_acked_record(
    tmp_path: Path, spawn: Any, free_port: Any
) -> None:
    path = tmp_path / "j.jsonl"
    acked: list[str] = []
    torn_rounds: list[int] = []
    rng = random.Random(5)
    for round_no in range(SIGKILL_ROUNDS):
        port = free_port()
        collector = start_collector(spawn, path, port)
        journal = ZmqJournalWriter(f"tcp://127.0.0.1:{port}", timeout=2.0)
        writer = asyncio.create_task(write_until_stopped(journal, f"k{round_no}", acked))
        before = len(acked)
        deadline = asyncio.get_running_loop().time() + 30
        while len(acked) < before + 50 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)  # heavy writing is under way
        await asyncio.sleep(rng.uniform(0.0, 0.2))
        collector.signal(signal.SIGKILL)
        collector.wait()
        writer.cancel()
        with pytest.raises((asyncio.CancelledError, JournalError)):
            await writer
        await journal.close()
        scan = scan_journal(path)  # raises if anything before the last line is damaged
        stored = set(scan.record_ids)
        missing = [r for r in acked if r not in stored]
        assert not missing, f"round {round_no}: acknowledged but lost: {missing[:5]}"
        if round_no % 2:
            # What a crash inside write() leaves: half a line. The next start must cut it.
            with path.open("ab") as handle:
                handle.write(path.read_bytes().splitlines(keepends=True)[-1][:57])
            torn_rounds.append(round_no)
    assert len(acked) >= SIGKILL_ROUNDS * 50
    final = start_collector(spawn, path, free_port())
    final.stop()
    assert set(acked) <= set(scan_journal(path).record_ids)
    cuts = re.findall(
        r"collector: cut \d+ bytes of a torn last line", "".join(p.stdout() for p in spawn.procs)
    )
    assert len(cuts) >= len(torn_rounds)


async def test_corrupted_middle_record_is_reported(
    tmp_path: Path, spawn: Any, port: int, run: Any
) -> None:
    path = tmp_path / "j.jsonl"
    collector = start_collector(spawn, path, port)
    journal = ZmqJournalWriter(f"tcp://127.0.0.1:{port}")
    for i in range(5):
        await journal.write(result(f"c{i}"))
    await journal.close()
    collector.stop()
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"line"', b'"LINE"')  # same length, wrong checksum
    path.write_bytes(b"\n".join(lines))

    offset = len(lines[0]) + len(lines[1]) + 2
    restarted = spawn(COLLECTOR, "collector", "--path", str(path), "--port", str(port))
    assert restarted.wait() == 3
    assert f"line 3 (byte offset {offset}): checksum mismatch" in restarted.stderr()
    read = run(COLLECTOR, "read", str(path))
    assert read.returncode == 3 and f"line 3 (byte offset {offset})" in read.stderr
    assert path.read_bytes() == b"\n".join(lines)  # refused, and touched nothing
