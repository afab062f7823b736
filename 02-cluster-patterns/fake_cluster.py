"""A whole cluster on a fake network and a fake clock: the real state machines, no sockets.

The coordinator's ``Dispatcher`` (dispatcher.py), one ``WorkerSession`` per worker
(worker_session.py) and a ``ClientSession`` (client_session.py) are the objects the real
processes run; here in-memory links connect them. Every message is encoded and decoded by the
real codec (protocol.py) on its way. Time is a number that advances STEP_S at a time, and each
step does, in order, what the processes' loops do:

    deliver      every message whose arrival time has come (a link may delay them)
    workers      worker.py's loop: finish tasks that are due, tick the session, reconnect
    coordinator  coordinator.py's loop: tick every interval / TICKS_PER_INTERVAL, heartbeats
                 and STATUS every interval, pump (dispatch), replies
    client       client.py's: tick every interval (re-submits if the coordinator is silent)

Faults are a process's or a link's, as on real machines: ``kill`` (the process is gone; its
kernel resets the TCP connection at once, so the coordinator's sends fail: ROUTER_MANDATORY),
``freeze`` (SIGSTOP: the connection stays up, messages to it wait in the pipe and arrive
when it thaws, it sends nothing) and ``delay`` (netem on the worker's own interface: its
outgoing messages arrive late, what it receives does not).

Everything that happens is a ``Line`` handed to ``trace``; task_life.py prints them.
Test: python -m pytest tests/test_fake_cluster.py -q
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from cluster_patterns.client_session import ClientSession
from cluster_patterns.coordinator import TICKS_PER_INTERVAL
from cluster_patterns.defaults import HEARTBEAT_INTERVAL_S, LIVENESS
from cluster_patterns.dispatcher import Dispatcher
from cluster_patterns.protocol import Assignment, Message, NodeEvent, TaskOutcome, TaskResult
from cluster_patterns.protocol import NodeEventKind, TaskSpec, decode, encode
from cluster_patterns.transport import BadInput
from cluster_patterns.worker_session import Phase, WorkerConfig, WorkerSession

STEP_S: Final = 0.01  # the fake clock's resolution
COORDINATOR: Final = "coordinator"
CLIENT: Final = "client"


class Process(enum.Enum):
    RUNNING = "running"
    FROZEN = "frozen"
    KILLED = "killed"


@dataclass(frozen=True)
class Line:
    """One thing that happened: a message that arrived, a verdict, a fault, a task's step."""

    at: float
    source: str
    target: str = ""  # "" for anything that is not a message
    text: str = ""
    message: Message | None = None
    sent_at: float | None = None
    where: str = ""  # the code that did it, for anything that is not a message


@dataclass(order=True)
class _InFlight:
    arrive_at: float
    seq: int
    sender: str = field(compare=False)
    receiver: str = field(compare=False)
    sent_at: float = field(compare=False)
    frame: bytes = field(compare=False)


@dataclass
class FakeWorker:
    session: WorkerSession
    identity: bytes
    process: Process = Process.RUNNING
    connected: bool = False  # worker.py has a socket (after LOST it closes it, then waits)
    reconnect_at: float = 0.0
    delay_s: float = 0.0  # added to everything it sends
    tasks: dict[str, tuple[float, Assignment]] = field(default_factory=dict)  # id -> (due, task)
    held: list[_InFlight] = field(default_factory=list)  # arrived while frozen


class FakeCluster:
    """A coordinator, workers and one client, wired by fake links; run it with ``run_until``."""

    def __init__(
        self,
        workers: dict[str, int],
        *,
        interval_s: float = HEARTBEAT_INTERVAL_S,
        liveness: int = LIVENESS,
        trace: Callable[[Line], None] = lambda line: None,
    ) -> None:
        self.now = 0.0
        self.interval_s = interval_s
        self.trace = trace
        self.bad = BadInput("fake cluster")
        self.dispatcher = Dispatcher(
            "coord-fake",
            heartbeat_interval_s=interval_s,
            liveness=liveness,
            wall_clock=self.clock,
        )
        self.workers: dict[str, FakeWorker] = {}
        for worker_id, capacity in workers.items():
            config = WorkerConfig(worker_id, capacity=capacity, heartbeat_interval_s=interval_s)
            session = WorkerSession(config, clock=self.clock, say=self._say(worker_id))
            self.workers[worker_id] = FakeWorker(session, f"worker:{worker_id}".encode())
        self.client = ClientSession(
            CLIENT, heartbeat_interval_s=interval_s, liveness=liveness, clock=self.clock
        )
        self.outcomes: list[TaskOutcome] = []
        self.events: list[NodeEvent] = []
        self._by_identity = {w.identity: name for name, w in self.workers.items()}
        self._by_identity[CLIENT.encode()] = CLIENT
        self._wire: list[_InFlight] = []
        self._seq = itertools.count()
        self._next_tick = self._next_status = self._next_client_tick = 0.0

    def clock(self) -> float:
        return self.now

    def _say(self, worker_id: str) -> Callable[[str], None]:
        where = "worker_session.py WorkerSession"
        return lambda text: self.trace(Line(self.now, worker_id, text=text, where=where))

    def _note(self, worker_id: str, text: str, where: str = "(a fault)") -> None:
        self.trace(Line(self.now, worker_id, text=text, where=where))

    # --- What a user does ------------------------------------------------------------------------

    def submit(self, specs: list[TaskSpec]) -> None:
        self.client.submit(specs)
        self._send_all(CLIENT, COORDINATOR, self.client.take_outbox())

    def kill(self, worker_id: str) -> None:
        """SIGKILL: the process is gone; its queued messages go nowhere."""
        worker = self.workers[worker_id]
        worker.process, worker.connected, worker.tasks, worker.held = Process.KILLED, False, {}, []
        self._note(worker_id, "killed (SIGKILL): it sends nothing more")

    def freeze(self, worker_id: str) -> None:
        self.workers[worker_id].process = Process.FROZEN
        self._note(worker_id, "frozen (SIGSTOP)")

    def thaw(self, worker_id: str) -> None:
        worker = self.workers[worker_id]
        worker.process = Process.RUNNING
        self._note(worker_id, "thawed (SIGCONT)")
        held, worker.held = worker.held, []
        for item in held:
            self._deliver(item)

    def delay(self, worker_id: str, seconds: float) -> None:
        """From now on, what ``worker_id`` sends arrives ``seconds`` late (netem on its NIC)."""
        self.workers[worker_id].delay_s = seconds
        self._note(worker_id, f"delays what it sends by {seconds * 1000:.0f} ms")

    def run_until(self, until: float) -> None:
        while self.now < until - STEP_S / 2:
            self.now = round(self.now + STEP_S, 6)
            self._step()

    # --- One step of every loop ------------------------------------------------------------------

    def _step(self) -> None:
        self._deliver_due()
        for worker_id, worker in self.workers.items():
            if worker.process is Process.RUNNING:
                self._worker_turn(worker_id, worker)
        self._deliver_due()
        self._coordinator_turn()
        self._deliver_due()
        if self.now >= self._next_client_tick:
            self._next_client_tick = self.now + self.interval_s
            self.client.tick()
            self._send_all(CLIENT, COORDINATOR, self.client.take_outbox())

    def _deliver_due(self) -> None:
        """A loopback link takes no time: what is due now arrives within this step."""
        while self._wire and self._wire[0].arrive_at <= self.now:
            self._deliver(heapq.heappop(self._wire))

    def _worker_turn(self, worker_id: str, worker: FakeWorker) -> None:
        session = worker.session
        if not worker.connected:
            if self.now < worker.reconnect_at or session.over:
                return
            worker.connected = True  # a new DEALER socket
            session.connected()
        for task_id, (due, task) in list(worker.tasks.items()):
            if due <= self.now:
                del worker.tasks[task_id]
                session.finished(TaskResult(task_id, task.attempt, True, "", "", task.ms / 1000))
        session.flush_results()
        session.tick()
        for task in session.take_started():
            worker.tasks[task.task_id] = (self.now + task.ms / 1000, task)
            self._note(
                worker_id, f"runs {task.task_id} ({task.ms} ms)", "worker.py Worker._run_one"
            )
        self._send_all(worker_id, COORDINATOR, session.take_outbox())
        if session.phase is Phase.LOST:
            delay = session.reconnect_delay()
            worker.connected = False
            worker.reconnect_at = self.now + (delay if delay is not None else float("inf"))
            self._note(worker_id, "coordinator lost: new socket later", "worker.py Worker.run")

    def _coordinator_turn(self) -> None:
        dispatcher = self.dispatcher
        if self.now >= self._next_tick:
            dispatcher.tick(self.now)
            self._next_tick = self.now + self.interval_s / TICKS_PER_INTERVAL
        if self.now >= self._next_status:
            dispatcher.heartbeats(self.now)
            self._next_status = self.now + self.interval_s
        dispatcher.pump(self.now)
        dispatcher.flush_replies()
        outbox, events = dispatcher.take_output()
        for event in events:
            self.events.append(event)
            where = EVENT_SOURCES[event.event]
            self.trace(Line(self.now, COORDINATOR, text=describe_event(event), where=where))
        for identity, message in outbox:
            self._send(COORDINATOR, self._by_identity.get(identity, "?"), message)

    # --- The links -------------------------------------------------------------------------------

    def _send_all(self, sender: str, receiver: str, messages: list[Message]) -> None:
        for message in messages:
            self._send(sender, receiver, message)

    def _send(self, sender: str, receiver: str, message: Message) -> None:
        source = self.workers.get(sender)
        if source is not None and not source.connected:
            return  # worker.py between sockets: nothing leaves
        target = self.workers.get(receiver)
        if target is not None and (not target.connected or target.process is Process.KILLED):
            # ROUTER_MANDATORY: no pipe for this routing id, send() fails with EHOSTUNREACH.
            self.dispatcher.undeliverable(target.identity, message, self.now)
            return
        delay = source.delay_s if source is not None else 0.0
        item = _InFlight(
            round(self.now + delay, 6), next(self._seq), sender, receiver, self.now, encode(message)
        )
        heapq.heappush(self._wire, item)

    def _deliver(self, item: _InFlight) -> None:
        message = decode(item.frame)
        line = Line(self.now, item.sender, item.receiver, "", message, item.sent_at)
        if item.receiver == COORDINATOR:
            self.trace(line)
            sender = self.workers.get(item.sender)
            identity = sender.identity if sender is not None else CLIENT.encode()
            self.dispatcher.handle(identity, message, self.now)
            return
        if item.receiver == CLIENT:
            self.trace(line)
            self.client.deliver([item.frame], self.bad)
            self.outcomes.extend(self.client.take_outcomes())
            self._send_all(CLIENT, COORDINATOR, self.client.take_outbox())
            return
        worker = self.workers[item.receiver]
        if worker.process is Process.FROZEN:
            worker.held.append(item)  # in the socket's pipe until the process runs again
        elif worker.process is Process.RUNNING and worker.connected:
            self.trace(line)
            worker.session.deliver([item.frame], self.bad)


# Where each verdict of the coordinator comes from.
EVENT_SOURCES: Final = {
    NodeEventKind.JOINED: "dispatcher.py Dispatcher.do_Register",
    NodeEventKind.SUSPECT: "heartbeat.py Liveness.check",
    NodeEventKind.DEAD: "dispatcher.py Dispatcher._check_liveness",
    NodeEventKind.ALIVE: "heartbeat.py Liveness.heard",
    NodeEventKind.LEFT: "dispatcher.py Dispatcher.do_Deregister",
}


def describe_event(event: NodeEvent) -> str:
    extra = ""
    if event.detection_latency_s is not None:
        extra = f" after {event.detection_latency_s:.2f} s of silence; its tasks requeued"
    if event.recovery_s is not None:
        extra = f" (recovered after {event.recovery_s:.2f} s)"
    return f"{event.node_id} {event.event}{extra}"
