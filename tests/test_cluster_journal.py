"""The coordinator's state log: group commit, replay, and the recovery rules it shares with
03's journal (line_journal.py): a torn last line is cut and counted, a complete bad line is
corruption that stops the coordinator with exit 3 and changes nothing, repair keeps a copy."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cluster_patterns.dispatcher import Dispatcher
from cluster_patterns.task_book import TaskState
from cluster_patterns.journal import JOURNAL_NAME, FileJournal, JournalCorruption, ResultEntry
from cluster_patterns.journal import StateLogError, SubmitEntry, replay
from cluster_patterns.protocol import TaskOutcome, TaskSpec

COORDINATOR = "02-cluster-patterns/coordinator.py"
JOURNAL_CLI = "02-cluster-patterns/journal.py"


def write_log(state: Path, tasks: int = 3, results: int = 1) -> bytes:
    journal = FileJournal(state, fsync=False)
    for i in range(tasks):
        journal.submitted(TaskSpec(f"t{i}", "sleep", 5), b"client:c1")
    for i in range(results):
        journal.recorded(TaskOutcome(f"t{i}", True, "", "", 1, "w1", 0.01))
    journal.close()
    return (state / JOURNAL_NAME).read_bytes()


def test_nothing_is_written_before_flush_and_flush_is_one_commit(tmp_path: Path) -> None:
    journal = FileJournal(tmp_path)
    journal.submitted(TaskSpec("t1", "echo"), b"client:c1")
    journal.recorded(TaskOutcome("t1", True, "x", "", 1, "w1", 0.1))
    assert (tmp_path / JOURNAL_NAME).read_bytes() == b""
    journal.flush()
    journal.flush()  # nothing buffered: no second commit
    assert journal.commits == 1
    journal.close()
    entries = list(replay(tmp_path))
    assert entries[0] == SubmitEntry("t1", "echo", 0, "", "client:c1")
    assert entries[1] == ResultEntry("t1", True, "x", "", 1, "w1", 0.1)


def test_the_line_format_is_unchanged(tmp_path: Path) -> None:
    """Logs written before issue 11 still open: same keys, same values."""
    lines = [json.loads(line) for line in write_log(tmp_path, 1, 1).splitlines()]
    assert lines[0] == {
        "op": "submit", "client": "client:c1", "task_id": "t0", "kind": "sleep", "ms": 5,
        "payload": "",
    }  # fmt: skip
    assert lines[1] == {
        "op": "result", "task_id": "t0", "ok": True, "output": "", "error": "", "tries": 1,
        "worker_id": "w1", "latency_s": 0.01,
    }  # fmt: skip


def test_a_torn_last_line_is_cut_exactly_and_the_rest_restores(tmp_path: Path) -> None:
    before = write_log(tmp_path)
    torn = b'{"op":"result","task_id":"t1","ok":tr'  # the crash cut this line
    with (tmp_path / JOURNAL_NAME).open("ab") as raw:
        raw.write(torn)
    journal = FileJournal(tmp_path)
    assert journal.torn_bytes == len(torn)
    assert (tmp_path / JOURNAL_NAME).read_bytes() == before
    dispatcher = Dispatcher("coord-2", heartbeat_interval_s=0.5, liveness=3)
    for entry in journal.entries:
        if isinstance(entry, SubmitEntry):
            dispatcher.restore_submitted(entry, entry.client.encode(), now=0.0)
        else:
            dispatcher.restore_recorded(entry, now=0.0)
    journal.close()
    assert dispatcher.totals.submitted == 3 and dispatcher.totals.done == 1
    assert dispatcher.tasks["t0"].state is TaskState.DONE
    assert dispatcher.tasks["t1"].state is TaskState.PENDING
    assert dispatcher.status(0.0).totals.pending == 2


@pytest.mark.parametrize(
    "bad",
    [
        b'{"op":"result","task_id":"t1","ok":tr\n',  # a torn line that is no longer last
        b'{"op":"erase","task_id":"t1"}\n',
        b'{"op":"submit","task_id":"t9","kind":"sleep","ms":600001,"payload":""}\n',
        b"\xff\xfe\n",
    ],
)
def test_a_complete_bad_line_anywhere_is_corruption_and_nothing_changes(
    tmp_path: Path, bad: bytes
) -> None:
    good = write_log(tmp_path, 2, 0)
    first_line = good.index(b"\n") + 1
    damaged = good[:first_line] + bad + good[first_line:]
    (tmp_path / JOURNAL_NAME).write_bytes(damaged)
    with pytest.raises(JournalCorruption) as caught:
        FileJournal(tmp_path)
    assert f"line 2 (byte offset {first_line})" in str(caught.value)
    assert "journal.py repair" in str(caught.value)
    assert (tmp_path / JOURNAL_NAME).read_bytes() == damaged
    with pytest.raises(JournalCorruption):
        list(replay(tmp_path))


def test_one_coordinator_per_state_log(tmp_path: Path) -> None:
    first = FileJournal(tmp_path)
    with pytest.raises(StateLogError, match="in use"):
        FileJournal(tmp_path)
    first.close()
    FileJournal(tmp_path).close()


def test_replay_of_a_missing_journal_is_empty(tmp_path: Path) -> None:
    assert list(replay(tmp_path / "nothing-here")) == []


def test_a_coordinator_refuses_a_corrupt_log_with_exit_3_then_repair_keeps_a_copy(
    tmp_path: Path, run: Any, free_port: Callable[[], int]
) -> None:
    state = tmp_path / "state"
    good = write_log(state, 3, 0)
    second = good.index(b"\n") + 1
    damaged = good[:second] + b"garbage\n" + good[second:]
    (state / JOURNAL_NAME).write_bytes(damaged)
    ports = ("--port", str(free_port()), "--status-port", str(free_port()))
    refused = run(COORDINATOR, *ports, "--state-dir", str(state), timeout=30)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert f"line 2 (byte offset {second})" in refused.stderr
    assert "Traceback" not in refused.stderr and refused.stderr.count("\n") == 1
    assert (state / JOURNAL_NAME).read_bytes() == damaged

    checked = run(JOURNAL_CLI, "check", str(state), timeout=30)
    assert checked.returncode == 3 and "line 2" in checked.stderr
    repaired = run(JOURNAL_CLI, "repair", str(state), timeout=30)
    assert repaired.returncode == 0, repaired.stderr
    assert "kept 1 entries" in repaired.stdout and "2 of them valid" in repaired.stdout
    [copy] = state.glob(f"{JOURNAL_NAME}.corrupt-*")
    assert copy.read_bytes() == damaged[second:]
    assert (state / JOURNAL_NAME).read_bytes() == good[:second]
    again = run(JOURNAL_CLI, "repair", str(state), timeout=30)
    assert again.returncode == 0 and "nothing to repair" in again.stdout
