"""The client's side of the protocol as a pure state machine: no socket, no futures.

client.py (ClusterClient) is the asyncio shell around it: it owns the DEALER socket and one
future per task, feeds this class what arrives (``heard``, ``receive``) and what the caller
submits, calls ``tick`` on a timer, sends ``take_outbox()`` and resolves the futures of
``take_outcomes()``. Time comes from an injected clock (tests/test_cluster_client_session.py).

Task ids are chosen by the client and are idempotency keys, so re-submitting is always safe:
the coordinator runs an unknown id, answers a finished one with its recorded outcome and
ignores one it is still running. This class re-submits every unresolved task when

  * the coordinator was silent for interval * liveness (it may have restarted),
  * a new ``coordinator_id`` shows up in COORDINATOR_HEARTBEAT (it did restart), or
  * no outcome arrived for ``stall_after_s`` (a reply was lost somewhere),

and counts an outcome that arrives twice as a duplicate: each task gets exactly one outcome.
The coordinator's interval and liveness, when its COORDINATOR_HEARTBEAT carries them, replace
the configured ones (which only judge a coordinator that has not spoken yet).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final

from cluster_patterns.session import Session
from cluster_patterns.protocol import MAX_BATCH, Accepted, Completed, CoordinatorHeartbeat
from cluster_patterns.protocol import Submit, TaskOutcome, TaskSpec

# No outcome at all for this long while tasks are unresolved: ask again (at least two
# liveness windows, so a slow but live coordinator is not flooded).
STALL_AFTER_S: Final = 10.0
# Finished tasks remembered (to count a late duplicate outcome, and to keep a re-submitted
# finished id from counting as new); a client that lives long forgets the oldest beyond this.
MAX_REMEMBERED: Final = 200_000


class ClientSession(Session):
    """Which tasks are unresolved, what to (re-)send, and each task's single outcome."""

    role = "client"

    def __init__(
        self,
        client_id: str,
        *,
        heartbeat_interval_s: float,
        liveness: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.client_id = client_id
        self.clock = clock
        self.unresolved: dict[str, TaskSpec] = {}
        self.resolved: dict[str, None] = {}  # in the order resolved: the oldest go first
        self.sent_at: dict[str, float] = {}
        self.latencies: dict[str, float] = {}  # submit -> outcome, of the resolved ones
        self.accepted = 0  # of our tasks, ACCEPTED (only ours: a peer cannot make it grow)
        self.duplicates = 0
        self.resubmissions = 0
        self.coordinator_id: str | None = None
        self.last_heard = self.last_progress = clock()
        self._adopt(heartbeat_interval_s, liveness)
        self._outcomes: list[TaskOutcome] = []

    def _adopt(self, interval_s: float, liveness: int) -> None:
        self.interval_s = interval_s
        self.lost_after_s = interval_s * liveness
        self.stall_after_s = max(STALL_AFTER_S, self.lost_after_s * 2)

    # --- Outputs --------------------------------------------------------------------------------

    def take_outcomes(self) -> list[TaskOutcome]:
        """Outcomes resolved since the last call, each task exactly once."""
        outcomes, self._outcomes = self._outcomes, []
        return outcomes

    # --- Inputs ---------------------------------------------------------------------------------

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        """Send tasks (in batches); a task submitted before is sent again, harmlessly."""
        now = self.clock()
        for spec in specs:
            if spec.task_id not in self.unresolved and spec.task_id not in self.resolved:
                self.unresolved[spec.task_id] = spec
                self.sent_at[spec.task_id] = now
        self._send(list(specs))

    def resubmit_unresolved(self) -> None:
        """Re-send every task without an outcome; harmless for ids the coordinator knows."""
        if self.unresolved:
            self.resubmissions += 1
            self._send(list(self.unresolved.values()))

    def _send(self, specs: list[TaskSpec]) -> None:
        for start in range(0, len(specs), MAX_BATCH):
            self._outbox.append(Submit(self.client_id, specs[start : start + MAX_BATCH]))

    def heard(self) -> None:
        """Any frame from the coordinator, even one the codec refuses."""
        self.last_heard = self.clock()

    # --8<-- [start:tick]
    def tick(self) -> None:
        """Call about once per interval: re-submit when the coordinator is silent or stuck."""
        now = self.clock()
        if not self.unresolved:
            self.last_progress = now
            return
        silent = now - self.last_heard > self.lost_after_s
        stalled = now - self.last_progress > self.stall_after_s
        if silent or stalled:
            self.last_heard = self.last_progress = now  # at most once per period
            self.resubmit_unresolved()

    # --8<-- [end:tick]

    # --- Handlers ---------------------------------------------------------------------------------

    def do_Accepted(self, msg: Accepted) -> None:
        self.accepted += sum(1 for task_id in msg.task_ids if task_id in self.unresolved)

    # --8<-- [start:completed]
    def do_Completed(self, msg: Completed) -> None:
        now = self.clock()
        for outcome in msg.outcomes:
            task_id = outcome.task_id
            if task_id in self.resolved:
                self.duplicates += 1
                continue
            if self.unresolved.pop(task_id, None) is None:
                continue  # not ours (a previous client with our id); nothing to resolve
            self.resolved[task_id] = None
            self.latencies[task_id] = now - self.sent_at.pop(task_id, now)
            self._outcomes.append(outcome)
            self.last_progress = now
        self._forget_oldest()

    # --8<-- [end:completed]

    def _forget_oldest(self) -> None:
        while len(self.resolved) > MAX_REMEMBERED:
            oldest = next(iter(self.resolved))
            del self.resolved[oldest]
            self.latencies.pop(oldest, None)

    def do_CoordinatorHeartbeat(self, msg: CoordinatorHeartbeat) -> None:
        if msg.heartbeat_interval_s is not None and msg.liveness is not None:
            self._adopt(msg.heartbeat_interval_s, msg.liveness)
        previous, self.coordinator_id = self.coordinator_id, msg.coordinator_id
        if previous is not None and previous != msg.coordinator_id:
            # A restarted coordinator: it may have lost what it had not committed.
            self.resubmit_unresolved()
