"""The coordinator's record of every task: pending queue, outcomes, replies owed to clients.

Pure bookkeeping, no sockets and no clock of its own; the Dispatcher (dispatcher.py) decides
who runs what and tells the book. The book keeps

  * every known task by id, with its state (pending, assigned, done), tries and outcome;
  * the queue of pending task ids, one entry per task (an entry whose task was assigned,
    finished or forgotten meanwhile is dropped when it comes up; only an id forgotten and
    submitted again can have a second one), so it does not outgrow the tasks;
  * exactly one outcome per task: ``finish`` records it, in the journal too, and owes the
    client a COMPLETED; a re-submission of a finished task is answered from the record;
  * finished tasks for DONE_RETENTION_S, at most MAX_FINISHED_REMEMBERED of them, so a late
    re-submission is not run again;
  * at most ``max_unfinished`` tasks not yet finished: new ids beyond that are not ACCEPTED and
    are counted in ``refused_tasks`` (the client re-submits them, see client_session.py);
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
# Memory bounds, whatever clients send: a task takes about 250 bytes while unfinished and 400
# once finished with short ids (measured with tracemalloc), and at most about 2 KiB with ids
# and payload at their limits. A finished task beyond the newest MAX_FINISHED_REMEMBERED is
# forgotten before its DONE_RETENTION_S (then a re-submission of it would run it again).
MAX_UNFINISHED: Final = 500_000
MAX_FINISHED_REMEMBERED: Final = 1_000_000


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
    queued: bool = False  # its id has an entry in the pending queue


class TaskBook:
    """Tasks, the pending queue and the outcomes; counts go to the shared ``totals``."""

    def __init__(
        self, journal: Journal, totals: Totals, max_unfinished: int = MAX_UNFINISHED
    ) -> None:
        self.journal = journal
        self.totals = totals
        self.max_unfinished = max_unfinished
        self.tasks: dict[str, Task] = {}
        self.pending: deque[str] = deque()
        self.latencies: list[float] = []
        self.stats_done = 0
        self.stats_failed = 0
        self.unfinished = 0
        self._finished: deque[tuple[float, str]] = deque()
        self._completed: dict[bytes, list[TaskOutcome]] = {}
        self._accepted: dict[bytes, list[str]] = {}

    # --- From a journal ---------------------------------------------------------------------

    def restore_submitted(self, spec: TaskSpec, client: bytes, now: float) -> None:
        # No MAX_UNFINISHED here: what the log holds was accepted, and is never refused.
        if spec.task_id not in self.tasks:
            self._add(Task(spec, client, now))

    def restore_recorded(self, outcome: TaskOutcome, now: float) -> None:
        task = self.tasks.get(outcome.task_id)
        if task is None or task.state is TaskState.DONE:
            return
        task.state, task.outcome, task.tries = TaskState.DONE, outcome, outcome.tries
        self._remember_finished(task, now)
        self._count(outcome)

    def _add(self, task: Task) -> None:
        self.tasks[task.spec.task_id] = task
        self.unfinished += 1
        self.queue(task)
        self.totals.submitted += 1

    # --- From clients -----------------------------------------------------------------------

    # --8<-- [start:submit]
    def submit(self, identity: bytes, msg: Submit, now: float) -> None:
        """Record new tasks; a known id is idempotent (answered from the record if done)."""
        accepted = self._accepted.setdefault(identity, [])
        for spec in msg.tasks:
            task = self.tasks.get(spec.task_id)
            if task is None:
                if self.unfinished >= self.max_unfinished:
                    self.totals.refused_tasks += 1  # not ACCEPTED: the client sends it again
                    continue
                self._add(Task(spec, identity, now))
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
        self._remember_finished(task, task.submitted_at + outcome.latency_s)
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

    def _remember_finished(self, task: Task, finished_at: float) -> None:
        self.unfinished -= 1
        self._finished.append((finished_at, task.spec.task_id))
        while len(self._finished) > MAX_FINISHED_REMEMBERED:
            self.tasks.pop(self._finished.popleft()[1], None)

    def requeue(self, task_id: str) -> Task | None:
        """An assigned task is pending again, at the front (its worker died, left, timed out
        or could not be reached); the task, or None if it was not assigned. A task whose
        old entry is still in the queue keeps that place instead."""
        task = self.tasks.get(task_id)
        if task is None or task.state is not TaskState.ASSIGNED:
            return None
        task.state = TaskState.PENDING
        self.queue(task, front=True)
        return task

    # --- The pending queue ------------------------------------------------------------------

    def queue(self, task: Task, *, front: bool = False) -> None:
        """Give a pending task its one entry in the queue (an entry it has already serves)."""
        if not task.queued:
            task.queued = True
            if front:
                self.pending.appendleft(task.spec.task_id)
            else:
                self.pending.append(task.spec.task_id)

    def next_pending(self) -> Task | None:
        """The first pending task, out of the queue; entries of tasks assigned, finished or
        forgotten since they were queued are dropped on the way."""
        while self.pending:
            task = self.tasks.get(self.pending.popleft())
            if task is None:
                continue
            task.queued = False
            if task.state is TaskState.PENDING:
                return task
        return None

    def put_back(self, tasks: list[Task], *, front: bool) -> None:
        """Queue again, in their order, tasks that ``next_pending`` took out."""
        for task in reversed(tasks) if front else tasks:
            self.queue(task, front=front)

    # --- Timers and the status channel ------------------------------------------------------

    def forget_old(self, now: float) -> None:
        while self._finished and now - self._finished[0][0] > DONE_RETENTION_S:
            self.tasks.pop(self._finished.popleft()[1], None)

    def pending_count(self) -> int:
        tasks = self.tasks
        return sum(
            1 for t in self.pending if (task := tasks.get(t)) and task.state is TaskState.PENDING
        )

    def task_stats(self) -> TaskStats:
        stats = TaskStats(self.latencies[-MAX_LATENCIES:], self.stats_done, self.stats_failed)
        self.latencies = []
        self.stats_done = self.stats_failed = 0
        return stats
