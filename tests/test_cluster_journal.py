"""The coordinator's journal: group commit, replay after a crash, a torn last line."""

from __future__ import annotations

from pathlib import Path

from cluster_patterns.dispatcher import Dispatcher, TaskState
from cluster_patterns.journal import JOURNAL_NAME, FileJournal, replay
from cluster_patterns.protocol import TaskOutcome, TaskSpec


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
    assert entries[0] == (TaskSpec("t1", "echo", 0, ""), b"client:c1")
    assert entries[1] == TaskOutcome("t1", True, "x", "", 1, "w1", 0.1)


def test_replay_skips_a_torn_tail_and_restores_the_dispatcher(tmp_path: Path) -> None:
    journal = FileJournal(tmp_path, fsync=False)
    for i in range(3):
        journal.submitted(TaskSpec(f"t{i}", "sleep", 5), b"client:c1")
    journal.recorded(TaskOutcome("t0", True, "", "", 1, "w1", 0.01))
    journal.close()
    with (tmp_path / JOURNAL_NAME).open("ab") as raw:
        raw.write(b'{"op":"result","task_id":"t1","ok":tr')  # the crash cut this line
    dispatcher = Dispatcher("coord-2", heartbeat_interval_s=0.5, liveness=3)
    outcomes = []
    for entry in replay(tmp_path):
        if isinstance(entry, TaskOutcome):
            outcomes.append(entry)
        else:
            dispatcher.restore_submitted(entry[0], entry[1], now=0.0)
    for outcome in outcomes:
        dispatcher.restore_recorded(outcome)
    assert dispatcher.totals.submitted == 3 and dispatcher.totals.done == 1
    assert dispatcher.tasks["t0"].state is TaskState.DONE
    assert dispatcher.tasks["t1"].state is TaskState.PENDING
    assert dispatcher.status(0.0).totals.pending == 2


def test_replay_of_a_missing_journal_is_empty(tmp_path: Path) -> None:
    assert list(replay(tmp_path / "nothing-here")) == []
