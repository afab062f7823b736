"""The coordinator's brain: credit-based dispatch, retries, requeues, exactly-once results.

Pure logic, no sockets and no clock of its own: the coordinator feeds it decoded messages
with the sender's routing id and ``now`` (monotonic seconds), and after each turn takes what
it produced with ``take_output()``: replies to peers on 5570 and NODE_EVENTs for the status
channel on 5571. NODE_EVENT's ``at`` is wall-clock time, from the injected ``wall_clock``.
Tests drive it with a fake clock and a fake network (tests/test_cluster_dispatcher.py).

Rules it enforces:
  * credit: a worker never holds more tasks than the capacity it announced (tasks it is
    still running from before a re-registration or a timeout count against it too);
  * fairness: free workers are served least-loaded first, then least recently used;
  * exactly once: the first result for a task id is recorded, every later one is counted
    as a duplicate and dropped; client re-submissions of a known id are idempotent;
  * a task whose worker died or timed out is retried until ``max_tries`` dispatches, then
    recorded as failed;
  * one holder per worker id: a REGISTER for an id that another live peer holds is REFUSED;
    the id changes hands only after its holder was silent for a full liveness window (or left);
  * a bounded worker table (workers.py): STATUS always fits in one frame.

What is known of each task (queue, outcomes, replies owed to clients) is the TaskBook's
(task_book.py); the Dispatcher decides who runs what.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Final, NamedTuple

import msgspec

from cluster_patterns.heartbeat import Liveness, Transition
from cluster_patterns.journal import Journal, NullJournal
from cluster_patterns.protocol import MAX_BATCH, Assignment, CoordinatorHeartbeat, Deregister
from cluster_patterns.protocol import Dispatch, Drain, Heartbeat, Message, NodeEvent, NodeEventKind
from cluster_patterns.protocol import NodeState, RefusalReason, Refused, Register, Reset, Results
from cluster_patterns.protocol import Status, Submit, TaskOutcome, TaskResult, TaskSpec, TaskStats
from cluster_patterns.protocol import Totals, Welcome, handler_table
from cluster_patterns.task_book import MAX_UNFINISHED, Task, TaskBook, TaskState
from cluster_patterns.workers import GONE, WorkerRecord, WorkerTable

DEFAULT_TASK_TIMEOUT_S: Final = 30.0
DEFAULT_MAX_TRIES: Final = 3
# Forget a client that has sent nothing for this long (it gets no more COORDINATOR_HEARTBEAT).
CLIENT_IDLE_S: Final = 60.0
# A run of tasks at the head of the queue that a free worker cannot run, after which they
# are moved behind the rest (so that tasks of a kind nobody runs cannot starve the others).
MAX_SKIPPED: Final = 4 * MAX_BATCH


class Output(NamedTuple):
    """What one turn produced: replies for 5570 and events for the status channel."""

    outbox: list[tuple[bytes, Message]]
    events: list[NodeEvent]


class Dispatcher:
    """All coordinator state; handlers take ``now``; ``take_output`` hands over the replies."""

    def __init__(
        self,
        coordinator_id: str,
        *,
        heartbeat_interval_s: float,
        liveness: int,
        task_timeout_s: float = DEFAULT_TASK_TIMEOUT_S,
        max_tries: int = DEFAULT_MAX_TRIES,
        max_unfinished: int = MAX_UNFINISHED,
        journal: Journal | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.coordinator_id = coordinator_id
        self.interval_s = heartbeat_interval_s
        self.liveness = liveness
        self.task_timeout_s = task_timeout_s
        self.max_tries = max_tries
        self.wall_clock = wall_clock
        self.totals = Totals()
        self.book = TaskBook(journal or NullJournal(), self.totals, max_unfinished)
        # The book's own dict and queue, named here for the dispatch loops.
        self.tasks: dict[str, Task] = self.book.tasks
        self.pending: deque[str] = self.book.pending
        self.workers = WorkerTable()
        self.clients: dict[bytes, float] = {}
        # One entry per dispatched batch: (deadline, dispatch number of its first task, task
        # ids in dispatch order). Appended in time order, hence sorted by deadline; one
        # entry per batch keeps this small at tens of thousands of tasks per second.
        self.deadlines: deque[tuple[float, int, list[str]]] = deque()
        self.seq = 0
        self.dispatches = 0
        self._outbox: list[tuple[bytes, Message]] = []
        self._events: list[NodeEvent] = []
        self._resets: dict[bytes, float] = {}
        self._refusals: dict[bytes, float] = {}
        self._handlers = handler_table(self)  # do_Register, do_Heartbeat...: what a K receives

    def take_output(self) -> Output:
        """Everything produced since the last call; the caller sends it (or gives it back)."""
        output = Output(self._outbox, self._events)
        self._outbox, self._events = [], []
        return output

    # --- Restoring from a journal -----------------------------------------------------------

    def restore_submitted(self, spec: TaskSpec, client: bytes, now: float) -> None:
        self.book.restore_submitted(spec, client, now)

    def restore_recorded(self, outcome: TaskOutcome, now: float) -> None:
        self.book.restore_recorded(outcome, now)

    # --- Inbound ----------------------------------------------------------------------------

    def handle(self, identity: bytes, message: Message, now: float) -> bool:
        """Apply one message; False if it has no business arriving here (a bad message)."""
        handler = self._handlers.get(type(message))
        if handler is None:
            return False
        handler(identity, message, now)
        return True

    # --8<-- [start:known-worker]
    def _known_worker(self, identity: bytes, worker_id: str, now: float) -> WorkerRecord | None:
        """The live record for this sender, or None after telling it to register again."""
        record = self.workers.held_by(identity, worker_id)
        if record is None or record.liveness.state in GONE:
            self._reset(identity, now)
            return None
        self._heard(record, now)
        return record

    def _reset(self, identity: bytes, now: float) -> None:
        """Ask a peer to register again, at most once per interval (its queued messages
        would otherwise each earn a RESET, and each RESET a REGISTER)."""
        if now - self._resets.get(identity, -1e9) < self.interval_s:
            return
        self._resets[identity] = now
        self._outbox.append((identity, Reset(reason="unknown or expired worker; register")))

    # --8<-- [end:known-worker]

    def _heard(self, record: WorkerRecord, now: float) -> None:
        transition = record.liveness.heard(now)
        if transition is not None:
            self._publish_transition(record.worker_id, transition)

    def do_Register(self, identity: bytes, msg: Register, now: float) -> None:
        record = self.workers.get(msg.worker_id)
        if record is not None and record.identity != identity and not self._free(record, now):
            age = record.liveness.age(now)
            detail = (
                f"held by another peer, heard {age:.2f} s ago; "
                f"free after {record.liveness.dead_after_s:g} s of silence"
            )
            retry = record.liveness.dead_after_s - age
            self._refuse(identity, msg, RefusalReason.WORKER_ID_IN_USE, detail, retry, now)
            return
        if not self.workers.make_room(msg):
            detail = f"the worker table is full ({len(self.workers)} workers)"
            retry = self.interval_s * self.liveness
            self._refuse(identity, msg, RefusalReason.CLUSTER_FULL, detail, retry, now)
            return
        # --8<-- [start:register]
        if record is None:
            record = WorkerRecord(
                msg.worker_id,
                identity,
                msg.capacity,
                frozenset(msg.capabilities),
                Liveness(self.interval_s, self.liveness, now),
            )
            self._publish(msg.worker_id, NodeEventKind.JOINED)
        else:
            # A re-registration: it keeps what it still runs; the rest is requeued.
            self._requeue_all(record, keep=set(msg.running))
            record.draining = False  # a DRAIN holds for one registration only
            if record.liveness.state is NodeState.LEFT:
                record.liveness = Liveness(self.interval_s, self.liveness, now)
                self._publish(msg.worker_id, NodeEventKind.JOINED)
            else:
                self._heard(record, now)
        self.workers.bind(record, identity, msg)
        self._adopt(record, msg.running, now)
        self._resets.pop(identity, None)
        welcome = Welcome(self.coordinator_id, self.interval_s, self.liveness)
        self._outbox.append((identity, welcome))
        # --8<-- [end:register]

    def _free(self, record: WorkerRecord, now: float) -> bool:
        """Whether another peer may take this worker id now: its holder is dead or left."""
        self._check_liveness(record, now)
        return record.liveness.state in GONE

    def _refuse(
        self,
        identity: bytes,
        msg: Register,
        reason: RefusalReason,
        detail: str,
        retry_after_s: float,
        now: float,
    ) -> None:
        """Answer a REGISTER with REFUSED, at most once per interval per peer."""
        self.totals.refused_registrations += 1
        if now - self._refusals.get(identity, -1e9) < self.interval_s:
            return
        self._refusals[identity] = now
        retry = round(max(self.interval_s, retry_after_s), 3)
        self._outbox.append((identity, Refused(msg.worker_id, reason, detail, retry)))

    def _adopt(self, record: WorkerRecord, running: list[str], now: float) -> None:
        """Count what a (re-)registering worker still holds: a task we hold as pending (we
        restarted, or requeued it) becomes assigned to it again instead of running twice;
        anything else it holds is an orphan that only occupies its credit."""
        record.orphans = set()
        for task_id in running:
            task = self.tasks.get(task_id)
            if task_id in record.assigned:
                continue
            if task is not None and task.state is TaskState.PENDING:
                self._assign(task, record)
                self.deadlines.append((now + self.task_timeout_s, task.dispatch_no, [task_id]))
            else:
                record.orphans.add(task_id)

    def _assign(self, task: Task, worker: WorkerRecord) -> None:
        task.tries += 1
        self.dispatches += 1
        task.dispatch_no = self.dispatches
        task.state = TaskState.ASSIGNED
        task.worker_id = worker.worker_id
        worker.assigned.add(task.spec.task_id)

    def do_Heartbeat(self, identity: bytes, msg: Heartbeat, now: float) -> None:
        record = self._known_worker(identity, msg.worker_id, now)
        if record is None:
            return
        record.cpu_percent = msg.cpu_percent
        record.memory_percent = msg.memory_percent
        record.load1 = msg.load1
        # Anything it runs that we do not count as assigned still uses its credit; anything
        # we counted as an orphan that it no longer runs has finished or been lost.
        record.orphans = {tid for tid in msg.running if tid not in record.assigned}

    def do_Drain(self, identity: bytes, msg: Drain, now: float) -> None:
        record = self._known_worker(identity, msg.worker_id, now)
        if record is not None:
            record.draining = True

    def do_Deregister(self, identity: bytes, msg: Deregister, now: float) -> None:
        record = self.workers.held_by(identity, msg.worker_id)
        if record is None:
            return
        self._requeue_all(record)
        record.orphans.clear()
        transition = record.liveness.leave(now)
        if transition is not None:
            self._publish_transition(record.worker_id, transition)

    # --8<-- [start:results]
    def do_Results(self, identity: bytes, msg: Results, now: float) -> None:
        record = self.workers.held_by(identity, msg.worker_id)
        if record is not None:
            for result in msg.results:
                record.assigned.discard(result.task_id)
                record.orphans.discard(result.task_id)
        # Results count even from a worker we declared dead: the first result wins.
        for result in msg.results:
            self._record(result, msg.worker_id, now)
        if record is not None:
            record.done += len(msg.results)
        self._known_worker(identity, msg.worker_id, now)

    # --8<-- [end:results]

    # --8<-- [start:record-once]
    def _record(self, result: TaskResult, worker_id: str, now: float) -> None:
        task = self.tasks.get(result.task_id)
        if task is None:
            return  # from before a restart without --state-dir; the client re-submits it
        if task.state is TaskState.DONE:
            self.totals.duplicates += 1
            return
        if task.state is TaskState.ASSIGNED:
            holder = self.workers.get(task.worker_id)
            if holder is not None and task.spec.task_id in holder.assigned:
                # Another worker answered first; this one still runs it: keep its credit used.
                holder.assigned.discard(task.spec.task_id)
                holder.orphans.add(task.spec.task_id)
        self.book.finish(
            task,
            TaskOutcome(
                task_id=result.task_id,
                ok=result.ok,
                output=result.output,
                error=result.error,
                tries=max(task.tries, 1),
                worker_id=worker_id,
                latency_s=round(now - task.submitted_at, 6),
            ),
        )

    # --8<-- [end:record-once]

    def do_Submit(self, identity: bytes, msg: Submit, now: float) -> None:
        self.clients[identity] = now
        self.book.submit(identity, msg, now)

    # --- Dispatch ---------------------------------------------------------------------------

    # --8<-- [start:pump]
    def pump(self, now: float) -> None:
        """Hand pending tasks to workers with free credit, least loaded first."""
        while self.pending:
            ready = [w for w in self.workers if w.free > 0]
            if not ready:
                return
            ready.sort(key=lambda w: (w.in_flight / max(w.capacity, 1), w.last_dispatch))
            share = -(-len(self.pending) // len(ready))  # ceil: spread a burst evenly
            handed = 0
            for worker in ready:
                handed += self._dispatch_to(worker, min(worker.free, share, MAX_BATCH), now)
                if not self.pending:
                    return
            if handed == 0:
                return  # nothing pending fits any free worker's capabilities

    # --8<-- [end:pump]

    # --8<-- [start:dispatch-batch]
    def _dispatch_to(self, worker: WorkerRecord, limit: int, now: float) -> int:
        batch: list[Assignment] = []
        skipped: list[Task] = []
        clogged = False
        first_dispatch = self.dispatches + 1
        while len(batch) < limit and (task := self.book.next_pending()) is not None:
            spec = task.spec
            if spec.kind not in worker.capabilities:
                skipped.append(task)
                if len(skipped) > MAX_SKIPPED:
                    clogged = True
                    break
                continue
            if task.tries >= self.max_tries:
                self.book.fail(task, f"gave up after {task.tries} tries", now)
                continue
            if task.tries:
                self.totals.retried += 1
            self._assign(task, worker)
            batch.append(Assignment(spec.task_id, task.tries, spec.kind, spec.ms, spec.payload))
        # A clogged head goes to the back, so tasks this worker can run get their turn.
        self.book.put_back(skipped, front=not clogged)
        if batch:
            ids = [assignment.task_id for assignment in batch]
            self.deadlines.append((now + self.task_timeout_s, first_dispatch, ids))
            worker.last_dispatch = now
            self._outbox.append((worker.identity, Dispatch(tasks=batch)))
        return len(batch)

    # --8<-- [end:dispatch-batch]

    def undeliverable(self, identity: bytes, message: Message, now: float) -> None:
        """The transport could not send ``message``: take back the tasks it carried."""
        if type(message) is not Dispatch:
            return
        worker = self.workers.of_identity(identity)
        for assignment in reversed(message.tasks):
            if worker is not None:
                worker.assigned.discard(assignment.task_id)
            task = self.book.requeue(assignment.task_id)
            if task is not None:
                task.tries -= 1  # it never left: this dispatch does not count

    # --8<-- [start:requeue-all]
    def _requeue_all(self, worker: WorkerRecord, keep: set[str] | None = None) -> None:
        """Take back every task assigned to ``worker`` except those in ``keep``."""
        keep = keep or set()
        for task_id in sorted(worker.assigned - keep, reverse=True):
            if self.book.requeue(task_id) is not None:
                self.totals.requeued += 1
        worker.assigned &= keep

    # --8<-- [end:requeue-all]

    # --- Timers -----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Liveness verdicts and task timeouts; call a few times per heartbeat interval."""
        for worker in self.workers:
            self._check_liveness(worker, now)
        while self.deadlines and self.deadlines[0][0] <= now:
            _, first_dispatch, task_ids = self.deadlines.popleft()
            for offset, task_id in enumerate(task_ids):
                self._expire(task_id, first_dispatch + offset, now)
        self.book.forget_old(now)
        for told in (self._resets, self._refusals):
            for identity, sent in list(told.items()):
                if now - sent > self.interval_s:
                    del told[identity]
        for client, last in list(self.clients.items()):
            if now - last > CLIENT_IDLE_S:
                del self.clients[client]

    # --8<-- [start:check-liveness]
    def _check_liveness(self, worker: WorkerRecord, now: float) -> None:
        """Advance one worker's verdict; a dead worker's tasks go back to pending."""
        transition = worker.liveness.check(now)
        if transition is None:
            return
        if transition.new is NodeState.DEAD:
            self._requeue_all(worker)
            worker.orphans.clear()
        self._publish_transition(worker.worker_id, transition)

    # --8<-- [end:check-liveness]

    def _expire(self, task_id: str, dispatch_no: int, now: float) -> None:
        """A dispatch reached its deadline: retry the task, or give up after max_tries."""
        task = self.tasks.get(task_id)
        if task is None or task.state is not TaskState.ASSIGNED or task.dispatch_no != dispatch_no:
            return  # finished, or dispatched again since
        holder = self.workers.get(task.worker_id)
        if holder is not None and task_id in holder.assigned:
            holder.assigned.discard(task_id)
            holder.orphans.add(task_id)  # it may still be running there
        if task.tries >= self.max_tries:
            self.book.fail(task, f"timed out {task.tries} times", now)
        else:
            self.book.requeue(task_id)

    def _publish(self, node_id: str, kind: NodeEventKind) -> None:
        self._events.append(NodeEvent(node_id, kind, self.wall_clock()))

    def _publish_transition(self, worker_id: str, transition: Transition) -> None:
        self._events.append(
            NodeEvent(
                node_id=worker_id,
                event=NodeEventKind(transition.new.value),
                at=self.wall_clock(),
                detection_latency_s=transition.detection_latency_s,
                recovery_s=transition.recovery_s,
            )
        )

    def heartbeats(self, now: float) -> None:
        """Queue COORDINATOR_HEARTBEAT to every serving worker and every recent client."""
        beat = CoordinatorHeartbeat(self.coordinator_id, self.interval_s, self.liveness)
        for worker in self.workers.serving():
            self._outbox.append((worker.identity, beat))
        for client in self.clients:
            self._outbox.append((client, beat))

    def flush_replies(self) -> None:
        """Turn the per-client accumulations of this round into ACCEPTED/COMPLETED batches."""
        self._outbox.extend(self.book.replies())

    # --- Status channel ---------------------------------------------------------------------

    def status(self, now: float) -> Status:
        self.seq += 1
        totals = self.totals
        totals.pending = self.book.pending_count()
        totals.in_flight = sum(len(w.assigned) for w in self.workers)
        return Status(
            coordinator_id=self.coordinator_id,
            seq=self.seq,
            heartbeat_interval_s=self.interval_s,
            liveness=self.liveness,
            nodes=self.workers.node_statuses(now),
            totals=msgspec.structs.replace(totals),  # a copy: the counters move on
        )

    def task_stats(self) -> TaskStats:
        return self.book.task_stats()

    def count_bad(self) -> None:
        """A message or a ZMTP exchange that breaks the protocol."""
        self.totals.bad_messages += 1

    def count_aborted_handshake(self) -> None:
        """A connection closed before its handshake completed (a probe, a peer giving up)."""
        self.totals.aborted_handshakes += 1

    def count_denied_handshake(self) -> None:
        """A handshake the security layer refused (key not allowed, mechanism mismatch)."""
        self.totals.denied_handshakes += 1
