"""The coordinator's record of every task: pending queue, outcomes, replies owed to clients.

Pure bookkeeping, no sockets and no clock of its own; the Dispatcher (dispatcher.py) decides
who runs what and tells the book. The book keeps

  * every known task by id, with its state (pending, assigned, done), tries and outcome;
  * the queue of pending task ids (a task may sit in it more than once: stale entries are
    skipped when they come up);
  * exactly one outcome per task: ``finish`` records it, in the journal too, and owes the
    client a COMPLETED; a re-submission of a finished task is answered from the record;
  * finished tasks for DONE_RETENTION_S, so a late re-submission is not run again;
  * the latencies and counts of TASK_STATS since the last one.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Final

from cluster_patterns.journal import Journal
from cluster_patterns.protocol import MAX_BATCH, MAX_LATENCIES, Accepted, Completed, Message, Submit
from cluster_patterns.protocol import TaskOutcome, TaskSpec, TaskStats, Totals

# Finished tasks are remembered this long, so a late re-submission gets the recorded
# outcome instead of a second run; after that their memory is reclaimed.
DONE_RETENTION_S: Final = 900.0


class TaskState(enum.Enum):
    PENDING = "pending"
    ASSIGNED = "assigned"
    DONE = "done"


@dataclass(slots=True)
class Task:
    spec: TaskSpec
    client: bytes
    submitted_at: float
    state: TaskState = TaskState.PENDING
    tries: int = 0
    worker_id: str = ""
    outcome: TaskOutcome | None = None
    dispatch_no: int = 0


class TaskBook:
    """Tasks, the pending queue and the outcomes; counts go to the shared ``totals``."""

    def __init__(self, journal: Journal, totals: Totals) -> None:
        self.journal = journal
        self.totals = totals
        self.tasks: dict[str, Task] = {}
        self.pending: deque[str] = deque()
        self.latencies: list[float] = []
        self.stats_done = 0
        self.stats_failed = 0
        self._finished: deque[tuple[float, str]] = deque()
        self._completed: dict[bytes, list[TaskOutcome]] = {}
        self._accepted: dict[bytes, list[str]] = {}

    # --- From a journal ---------------------------------------------------------------------

    def restore_submitted(self, spec: TaskSpec, client: bytes, now: float) -> None:
        if spec.task_id not in self.tasks:
            self.tasks[spec.task_id] = Task(spec, client, now)
            self.pending.append(spec.task_id)
            self.totals.submitted += 1

    def restore_recorded(self, outcome: TaskOutcome) -> None:
        task = self.tasks.get(outcome.task_id)
        if task is None or task.state is TaskState.DONE:
            return
        task.state, task.outcome, task.tries = TaskState.DONE, outcome, outcome.tries
        self._count(outcome)

    # --- From clients -----------------------------------------------------------------------

    # --8<-- [start:submit]
    def submit(self, identity: bytes, msg: Submit, now: float) -> None:
        """Record new tasks; a known id is idempotent (answered from the record if done)."""
        accepted = self._accepted.setdefault(identity, [])
        for spec in msg.tasks:
            task = self.tasks.get(spec.task_id)
            if task is None:
                self.tasks[spec.task_id] = Task(spec, identity, now)
                self.pending.append(spec.task_id)
                self.totals.submitted += 1
                self.journal.submitted(spec, identity)
            else:
                task.client = identity
                if task.outcome is not None:
                    self._completed.setdefault(identity, []).append(task.outcome)
            accepted.append(spec.task_id)

    # --8<-- [end:submit]

    def replies(self) -> list[tuple[bytes, Message]]:
        """This turn's ACCEPTED and COMPLETED batches, per client."""
        out: list[tuple[bytes, Message]] = []
        for client, task_ids in self._accepted.items():
            for start in range(0, len(task_ids), MAX_BATCH):
                out.append((client, Accepted(task_ids[start : start + MAX_BATCH])))
        self._accepted.clear()
        for client, outcomes in self._completed.items():
            for start in range(0, len(outcomes), MAX_BATCH):
                out.append((client, Completed(outcomes[start : start + MAX_BATCH])))
        self._completed.clear()
        return out

    # --- Outcomes ---------------------------------------------------------------------------

    def finish(self, task: Task, outcome: TaskOutcome) -> None:
        """The one outcome of ``task``: journaled, counted, owed to its client."""
        task.state = TaskState.DONE
        task.outcome = outcome
        self._finished.append((task.submitted_at + outcome.latency_s, task.spec.task_id))
        self.journal.recorded(outcome)
        self._count(outcome)
        self.latencies.append(outcome.latency_s)
        self._completed.setdefault(task.client, []).append(outcome)

    def fail(self, task: Task, error: str, now: float) -> None:
        outcome = TaskOutcome(
            task_id=task.spec.task_id,
            ok=False,
            error=error,
            tries=task.tries,
            worker_id=task.worker_id,
            latency_s=round(now - task.submitted_at, 6),
        )
        self.finish(task, outcome)

    def _count(self, outcome: TaskOutcome) -> None:
        if outcome.ok:
            self.totals.done += 1
            self.stats_done += 1
        else:
            self.totals.failed += 1
            self.stats_failed += 1

    def requeue(self, task_id: str) -> Task | None:
        """An assigned task is pending again, at the front (its worker died, left, timed out
        or could not be reached); the task, or None if it was not assigned."""
        task = self.tasks.get(task_id)
        if task is None or task.state is not TaskState.ASSIGNED:
            return None
        task.state = TaskState.PENDING
        self.pending.appendleft(task_id)
        return task

    # --- Timers and the status channel ------------------------------------------------------

    def forget_old(self, now: float) -> None:
        while self._finished and now - self._finished[0][0] > DONE_RETENTION_S:
            self.tasks.pop(self._finished.popleft()[1], None)

    def pending_count(self) -> int:
        return sum(1 for t in self.pending if self.tasks[t].state is TaskState.PENDING)

    def task_stats(self) -> TaskStats:
        stats = TaskStats(self.latencies[-MAX_LATENCIES:], self.stats_done, self.stats_failed)
        self.latencies = []
        self.stats_done = self.stats_failed = 0
        return stats
