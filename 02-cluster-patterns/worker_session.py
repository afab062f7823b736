"""The worker's side of the protocol as a pure state machine: no socket, no task runner.

worker.py is the process around it: it owns the DEALER socket, runs the tasks that take time
and samples the machine's load. It tells this class what happens (``connected``, ``heard``,
``receive``, ``finished``, ``drain``, ``tick``) and sends what ``take_outbox`` returns; tasks
to start come from ``take_started``. Time comes from an injected clock, so tests drive it
with a fake clock and a fake network (tests/test_cluster_worker_session.py).

    connected ──REGISTER──> REGISTERING ──WELCOME──> SERVING ──silence > window──> LOST
                                 │ REFUSED                 │ RESET: REGISTER again
                                 v                         │ signal: DRAIN ... DEREGISTER
                              REFUSED ──2 windows──> FAILED (exit 3)          └──> DONE

The rules it follows are those of docs/wire-protocol.md, section 6:
  * the coordinator's heartbeat interval and liveness apply, adopted from WELCOME; the
    configured ones only judge a coordinator that has not welcomed us yet;
  * HEARTBEAT, RESULTS and DRAIN are sent only while SERVING (welcomed on this connection);
    results finished before that are held, and listed in ``running`` with the tasks that
    still execute, so the coordinator does not hand them to another worker;
  * a DISPATCH that arrives after our DRAIN crossed it on the wire: its tasks are run;
  * the backoff before a reconnect restarts from its initial value on every WELCOME.
Exit codes it decides: 0 drained, 3 refused for good, 4 drain incomplete (timed out or a
second signal: what it still held was handed back with DEREGISTER).
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cluster_patterns import defaults
from cluster_patterns.heartbeat import BACKOFF_MAX_S, Backoff, Liveness
from cluster_patterns.protocol import MAX_BATCH, MAX_RUNNING, Assignment, CoordinatorHeartbeat
from cluster_patterns.protocol import Deregister, Dispatch, Drain, Heartbeat, NodeState
from cluster_patterns.protocol import RefusalReason, Refused, Register, Reset, Results, TaskResult
from cluster_patterns.protocol import Welcome
from cluster_patterns.session import Session
from cluster_patterns.tasks import CAPABILITIES, run_quick

DEFAULT_DRAIN_TIMEOUT_S: Final = 60.0
# A refused worker gives up when the coordinator still refuses it this many liveness
# windows after the first refusal (one window is enough for a crashed holder to expire).
REFUSED_GIVE_UP_WINDOWS: Final = 2
DRAINED_EXIT: Final = 0
REFUSED_EXIT: Final = 3
DRAIN_INCOMPLETE_EXIT: Final = 4


class Phase(enum.Enum):
    REGISTERING = "registering"  # REGISTER sent on this connection, no WELCOME yet
    SERVING = "serving"  # welcomed: runs tasks, sends RESULTS and HEARTBEAT
    REFUSED = "refused"  # REFUSED: no HEARTBEAT, REGISTER again later
    LOST = "lost"  # the coordinator was silent for a window: reconnect
    DONE = "done"  # drained, or gave up draining: exit
    FAILED = "failed"  # refused for good: exit 3


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker is started with (worker.py --help builds one)."""

    worker_id: str
    coordinator: str = defaults.LOOPBACK
    port: int = defaults.TASK_PORT
    capacity: int = defaults.WORKER_CAPACITY
    # Until the first WELCOME; then the coordinator's own settings apply.
    heartbeat_interval_s: float = defaults.HEARTBEAT_INTERVAL_S
    liveness: int = defaults.LIVENESS
    reconnect_max_s: float = BACKOFF_MAX_S
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    capabilities: tuple[str, ...] = CAPABILITIES


@dataclass(frozen=True)
class Load:
    """The machine's load for HEARTBEAT: percentages of the whole machine (0-100)."""

    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    load1: float = 0.0


def _quiet(line: str) -> None:
    pass


class WorkerSession(Session):
    """The worker's protocol state: one instance for the life of the process."""

    role = "worker"

    def __init__(
        self,
        config: WorkerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        load: Callable[[], Load] = Load,
        pid: int = 0,
        say: Callable[[str], None] = _quiet,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.name = f"worker {config.worker_id}"
        self.clock = clock
        self.load = load
        self.pid = pid
        self.say = say
        self.interval_s = config.heartbeat_interval_s
        self.liveness = config.liveness
        self.coordinator = Liveness(self.interval_s, self.liveness, clock())
        self.backoff = Backoff(maximum_s=config.reconnect_max_s, rng=rng)
        self.phase = Phase.LOST
        self.exit_code = DRAINED_EXIT
        self.failure = ""
        self.running: set[str] = set()  # started, not finished
        self.unsent: list[TaskResult] = []  # finished, RESULTS not sent yet
        self.draining = False
        self.drain_deadline = float("inf")
        self.welcomed_once = False
        self.registered_at = 0.0
        self.refused_since: float | None = None
        self.register_at: float | None = None
        self.next_beat = 0.0
        self._started: list[Assignment] = []

    # --- Outputs --------------------------------------------------------------------------------

    def take_started(self) -> list[Assignment]:
        """Tasks the process must run now (``finished`` when each is done)."""
        started, self._started = self._started, []
        return started

    @property
    def over(self) -> bool:
        return self.phase in (Phase.DONE, Phase.FAILED)

    def holding(self) -> bool:
        return bool(self.running or self.unsent)

    def held_ids(self) -> list[str]:
        """What REGISTER and HEARTBEAT list as ``running``: executing, then unsent."""
        ids = [*self.running, *(r.task_id for r in self.unsent if r.task_id not in self.running)]
        return ids[:MAX_RUNNING]

    # --- Inputs: the connection -----------------------------------------------------------------

    def connected(self) -> None:
        """A new connection (a new socket): register on it."""
        self.coordinator = Liveness(self.interval_s, self.liveness, self.clock())
        self.refused_since = self.register_at = None
        self._register()

    def heard(self) -> None:
        """Any frame from the coordinator, even one the codec refuses, proves it alive."""
        self.coordinator.heard(self.clock())

    def fail(self, reason: str) -> None:
        """Give up for good (exit 3): nothing a retry could fix."""
        self.failure = reason
        self.phase = Phase.FAILED
        self.exit_code = REFUSED_EXIT

    # --- Inputs: tasks and signals --------------------------------------------------------------

    def finished(self, result: TaskResult) -> None:
        """A task the process ran is done; ``flush_results`` sends it (batched)."""
        self.running.discard(result.task_id)
        self.unsent.append(result)

    def flush_results(self) -> None:
        """RESULTS for everything finished, MAX_BATCH per frame, if we may send them now."""
        if self.phase is not Phase.SERVING or not self.unsent:
            return
        unsent, self.unsent = self.unsent, []
        worker_id = self.config.worker_id
        for start in range(0, len(unsent), MAX_BATCH):
            self._outbox.append(Results(worker_id, unsent[start : start + MAX_BATCH]))

    def drain(self) -> None:
        """SIGTERM or Ctrl-C: the first drains, a second one stops at once."""
        if self.draining:
            self.say(f"{self.name}: second signal, handing back {len(self.running)} task(s)")
            self._stop_draining()
            return
        self.say(f"{self.name}: draining {len(self.running)} task(s)")
        self.draining = True
        self.drain_deadline = self.clock() + self.config.drain_timeout_s
        if self.phase is Phase.SERVING:
            self._outbox.append(Drain(self.config.worker_id))
        self.tick()

    def _stop_draining(self) -> None:
        if self.phase is not Phase.LOST:
            # Requeues what we hold; harmless if the coordinator never welcomed us (ignored),
            # and right if it welcomes the REGISTER just before this arrives (same pipe).
            self._outbox.append(Deregister(self.config.worker_id))
        self.phase = Phase.DONE
        self.exit_code = DRAINED_EXIT if not self.holding() else DRAIN_INCOMPLETE_EXIT

    # --- Timers -----------------------------------------------------------------------------------

    # --8<-- [start:tick]
    def tick(self) -> None:
        """Call a few times per interval: liveness, heartbeats, retries, the end of a drain."""
        if self.over or self.phase is Phase.LOST:
            return
        now = self.clock()
        if self.coordinator.check(now) is not None and self.coordinator.state is NodeState.DEAD:
            self.phase = Phase.LOST
            return
        if self.draining and (not self.holding() or now >= self.drain_deadline):
            if self.holding():
                self.say(f"{self.name}: drain timed out after {self.config.drain_timeout_s:g}s")
            self._stop_draining()
            return
        if self.register_at is not None and now >= self.register_at:
            self.register_at = None
            self._register()
        if self.phase is Phase.SERVING and now >= self.next_beat:
            self.next_beat = now + self.interval_s
            self._outbox.append(self._heartbeat())

    # --8<-- [end:tick]

    def reconnect_delay(self) -> float | None:
        """After LOST: seconds to wait before connecting again, or None to stop."""
        if self.draining and (not self.holding() or self.clock() >= self.drain_deadline):
            self.phase = Phase.DONE  # nobody to hand anything back to
            self.exit_code = DRAINED_EXIT if not self.holding() else DRAIN_INCOMPLETE_EXIT
            return None
        return self.backoff.delay()

    # --- Handlers ---------------------------------------------------------------------------------

    # --8<-- [start:welcome]
    def do_Welcome(self, msg: Welcome) -> None:
        # The coordinator's settings are the cluster's: judge it, and beat, by them.
        self.interval_s, self.liveness = msg.heartbeat_interval_s, msg.liveness
        self.coordinator.retune(self.interval_s, self.liveness)
        self.backoff.reset()
        self.phase = Phase.SERVING
        self.refused_since = self.register_at = None
        self.next_beat = self.clock() + self.interval_s
        verb = "registered again" if self.welcomed_once else "registered"
        self.welcomed_once = True
        self.say(f"{self.name} {verb} with {msg.coordinator_id}")
        if self.draining:
            self._outbox.append(Drain(self.config.worker_id))  # a REGISTER cleared the last
        self.flush_results()

    # --8<-- [end:welcome]

    # --8<-- [start:dispatch]
    def do_Dispatch(self, msg: Dispatch) -> None:
        for task in msg.tasks:
            if task.task_id in self.running:
                continue  # already running it (a re-dispatch raced with our re-registration)
            quick = run_quick(task)
            if quick is not None:
                self.unsent.append(quick)
            else:
                self.running.add(task.task_id)
                self._started.append(task)
        self.flush_results()

    # --8<-- [end:dispatch]

    def do_CoordinatorHeartbeat(self, msg: CoordinatorHeartbeat) -> None:
        pass  # proof of life only (``heard``); its settings match those of WELCOME

    # --8<-- [start:reset]
    def do_Reset(self, msg: Reset) -> None:
        if self.phase is Phase.REFUSED:
            return  # we register again on the schedule the refusal set
        if self.phase is Phase.SERVING or self.clock() - self.registered_at > self.interval_s:
            self.say(f"{self.name}: {msg.reason}; registering again")
            self._register()
        # else: it answers something sent before our REGISTER arrived; WELCOME will follow

    # --8<-- [end:reset]

    def do_Refused(self, msg: Refused) -> None:
        now = self.clock()
        window = self.interval_s * self.liveness
        self.phase = Phase.REFUSED
        if self.refused_since is None:
            self.refused_since = now
            self.say(f"{self.name}: registration refused ({msg.reason}): {msg.detail}; retrying")
        if now - self.refused_since >= REFUSED_GIVE_UP_WINDOWS * window:
            if msg.reason == RefusalReason.WORKER_ID_IN_USE:
                self.fail(
                    f"worker id {self.config.worker_id!r} is in use by another live worker "
                    f"({msg.detail}); start this one with another --id"
                )
            else:
                self.fail(f"the coordinator refused to register this worker: {msg.detail}")
            return
        # Ask again when the holder may have expired, but often enough that the replies
        # keep proving the coordinator alive.
        self.register_at = now + max(self.interval_s, min(msg.retry_after_s, window / 2))

    # --- Messages ---------------------------------------------------------------------------------

    # --8<-- [start:register]
    def _register(self) -> None:
        self.phase = Phase.REGISTERING
        self.registered_at = self.clock()
        held = self.held_ids()
        self._outbox.append(
            Register(
                self.config.worker_id,
                self.config.capacity,
                list(self.config.capabilities),
                held,
                self.pid,
            )
        )

    # --8<-- [end:register]

    def _heartbeat(self) -> Heartbeat:
        load = self.load()
        held = self.held_ids()
        return Heartbeat(
            self.config.worker_id,
            len(held),
            held,
            min(100.0, max(0.0, load.cpu_percent)),
            min(100.0, max(0.0, load.memory_percent)),
            max(0.0, load.load1),
        )
