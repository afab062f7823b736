"""The worker's protocol state machine with a fake clock and a fake network (no sockets).

The real-process versions of these rules are in test_cluster_invariants.py and
test_cluster_peers.py; here every rule of docs/wire-protocol.md section 6 gets a test that
runs in microseconds.
"""

from __future__ import annotations

import random

from cluster_patterns.protocol import Accepted, Assignment, CoordinatorHeartbeat, Deregister
from cluster_patterns.protocol import Dispatch, Drain, Heartbeat, Message, RefusalReason, Refused
from cluster_patterns.protocol import Register, Reset, Results, TaskResult, Welcome
from cluster_patterns.worker_session import Load, Phase, WorkerConfig, WorkerSession


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Net:
    """One WorkerSession, its clock, and everything it sent."""

    def __init__(self, **config: object) -> None:
        self.clock = Clock()
        self.said: list[str] = []
        settings: dict[str, object] = {"worker_id": "w1", "capacity": 4}
        settings.update(config)
        self.s = WorkerSession(
            WorkerConfig(**settings),  # type: ignore[arg-type]
            clock=self.clock,
            load=lambda: Load(12.5, 40.0, 0.3),
            pid=4242,
            say=self.said.append,
            rng=random.Random(7),
        )
        self.sent: list[Message] = []

    def pump(self) -> list[Message]:
        new = self.s.take_outbox()
        self.sent.extend(new)
        return new

    def deliver(self, message: Message) -> list[Message]:
        self.s.heard()
        assert self.s.receive(message)
        return self.pump()

    def advance(self, seconds: float, step: float = 0.05, beats: bool = False) -> list[Message]:
        """Let time pass with ticks; the coordinator answers every message if ``beats``."""
        out: list[Message] = []
        end = self.clock.now + seconds
        while self.clock.now < end - 1e-9:
            self.clock.now = round(self.clock.now + step, 6)
            self.s.tick()
            new = self.pump()
            out.extend(new)
            if beats:
                self.s.heard()
        return out

    def welcome(self, interval: float = 0.5, liveness: int = 3) -> list[Message]:
        return self.deliver(Welcome("coord-1", interval, liveness))

    def serving(self, interval: float = 0.5, liveness: int = 3) -> None:
        self.s.connected()
        self.pump()
        self.welcome(interval, liveness)


def of(kind: type, messages: list[Message]) -> list[Message]:
    return [m for m in messages if isinstance(m, kind)]


def sleep_task(task_id: str, ms: int = 1000) -> Assignment:
    return Assignment(task_id, 1, "sleep", ms)


def test_a_connection_starts_with_register_and_nothing_else_until_welcome() -> None:
    net = Net()
    net.s.connected()
    [register] = net.pump()
    assert register == Register("w1", 4, ["echo", "sleep", "cpu", "fail"], [], 4242)
    assert net.s.phase is Phase.REGISTERING
    assert net.advance(0.4, beats=True) == []  # no HEARTBEAT before WELCOME
    net.welcome()
    assert net.s.phase is Phase.SERVING and net.said == ["worker w1 registered with coord-1"]
    beats = of(Heartbeat, net.advance(1.0, beats=True))
    assert len(beats) == 2 and beats[0] == Heartbeat("w1", 0, [], 12.5, 40.0, 0.3)


def test_the_coordinators_interval_and_liveness_from_welcome_apply() -> None:
    """A coordinator started with --heartbeat-interval 2: no false loss, beats every 2 s."""
    net = Net()  # configured with the defaults: 0.5 s * 3
    net.serving(interval=2.0, liveness=3)
    beats = of(Heartbeat, net.advance(5.9))
    assert net.s.phase is Phase.SERVING  # 5.9 s of silence < 2.0 * 3
    assert len(beats) == 2
    net.advance(0.3)
    assert net.s.phase is Phase.LOST


def test_a_faster_coordinator_gets_heartbeats_at_its_own_pace() -> None:
    net = Net()
    net.serving(interval=0.1, liveness=5)
    assert len(of(Heartbeat, net.advance(1.0, step=0.02, beats=True))) == 10
    net.advance(0.45, step=0.02)
    assert net.s.phase is Phase.SERVING  # dead only after 0.1 * 5 of silence
    net.advance(0.1, step=0.02)
    assert net.s.phase is Phase.LOST


def test_quick_tasks_are_answered_in_one_results_frame_and_slow_ones_started() -> None:
    net = Net()
    net.serving()
    tasks = [Assignment(f"e{i}", 1, "echo", 0, f"p{i}") for i in range(3)] + [sleep_task("s1")]
    [results] = net.deliver(Dispatch(tasks))
    assert isinstance(results, Results) and [r.output for r in results.results] == [
        "p0",
        "p1",
        "p2",
    ]
    assert [t.task_id for t in net.s.take_started()] == ["s1"]
    net.s.finished(TaskResult("s1", 1, True))
    net.s.flush_results()
    [done] = net.pump()
    assert isinstance(done, Results) and done.results[0].task_id == "s1"


def test_a_dispatch_of_a_task_already_running_is_ignored() -> None:
    net = Net()
    net.serving()
    net.deliver(Dispatch([sleep_task("s1")]))
    net.deliver(Dispatch([sleep_task("s1")]))
    assert [t.task_id for t in net.s.take_started()] == ["s1"]


def test_results_finished_while_disconnected_are_listed_in_running_and_sent_after_welcome() -> None:
    net = Net()
    net.serving()
    net.deliver(Dispatch([sleep_task("s1"), sleep_task("s2")]))
    net.s.take_started()
    net.advance(1.6)  # the coordinator fell silent
    assert net.s.phase is Phase.LOST
    net.s.finished(TaskResult("s1", 1, True))  # finishes while we are away
    net.s.flush_results()
    assert net.pump() == []  # nothing is sent between connections
    net.s.connected()
    [register] = net.pump()
    # Both are held: s2 still runs, s1 finished but its result was not sent. Were s1 left
    # out, the coordinator would requeue it and another worker would run it again.
    assert isinstance(register, Register) and sorted(register.running) == ["s1", "s2"]
    assert of(Results, net.advance(0.4, beats=True)) == []  # not before WELCOME
    [results] = of(Results, net.welcome())
    assert [r.task_id for r in results.results] == ["s1"]  # type: ignore[attr-defined]


def test_reset_rules() -> None:
    net = Net()
    net.s.connected()
    net.pump()
    assert net.deliver(Reset("unknown worker")) == []  # answers what came before REGISTER
    net.advance(0.6, beats=True)
    assert of(Register, net.deliver(Reset("unknown worker")))  # no WELCOME for an interval
    net.welcome()
    [again] = net.deliver(Reset("expired"))
    assert isinstance(again, Register) and net.s.phase is Phase.REGISTERING


def test_refused_waits_then_registers_again_and_gives_up_with_exit_3() -> None:
    net = Net()
    net.s.connected()
    net.pump()
    refusal = Refused("w1", RefusalReason.WORKER_ID_IN_USE, "held by another peer", 1.4)
    assert net.deliver(refusal) == []
    assert net.s.phase is Phase.REFUSED
    sent = net.advance(0.7, beats=True)  # re-register after min(1.4, window / 2 = 0.75)
    assert of(Heartbeat, sent) == [] and of(Register, sent) == []
    assert len(of(Register, net.advance(0.1, beats=True))) == 1
    while not net.s.over:
        net.deliver(refusal)
        net.advance(0.8, beats=True)
    assert net.s.phase is Phase.FAILED and net.s.exit_code == 3
    assert "in use by another live worker" in net.s.failure
    assert net.clock.now - 100.0 >= 2 * 1.5  # two liveness windows


def test_drain_runs_what_crosses_it_then_deregisters_with_exit_0() -> None:
    net = Net()
    net.serving()
    net.deliver(Dispatch([sleep_task("s1")]))
    net.s.drain()
    assert net.pump() == [Drain("w1")]
    net.deliver(Dispatch([sleep_task("s2")]))  # sent before our DRAIN arrived: run it
    assert sorted(t.task_id for t in net.s.take_started()) == ["s1", "s2"]
    for task_id in ("s1", "s2"):
        net.s.finished(TaskResult(task_id, 1, True))
        net.s.flush_results()
        net.s.tick()
    sent = net.pump()
    assert [type(m) for m in sent] == [Results, Results, Deregister]  # results first
    assert net.s.phase is Phase.DONE and net.s.exit_code == 0


def test_a_drain_that_times_out_hands_the_tasks_back_with_exit_4() -> None:
    net = Net(drain_timeout_s=2.0)
    net.serving()
    net.deliver(Dispatch([sleep_task("s1", 600_000)]))
    net.s.drain()
    net.advance(1.9, beats=True)
    assert not net.s.over
    assert of(Deregister, net.advance(0.2, beats=True)) == [Deregister("w1")]
    assert net.s.phase is Phase.DONE and net.s.exit_code == 4


def test_a_second_signal_hands_back_at_once_with_exit_4() -> None:
    net = Net()
    net.serving()
    net.deliver(Dispatch([sleep_task("s1")]))
    net.s.drain()
    net.s.drain()
    assert net.pump() == [Drain("w1"), Deregister("w1")]
    assert net.s.exit_code == 4 and "second signal" in net.said[-1]


def test_a_re_registration_while_draining_sends_drain_again() -> None:
    net = Net()
    net.serving()
    net.deliver(Dispatch([sleep_task("s1")]))
    net.s.drain()
    net.pump()
    net.deliver(Reset("expired"))
    assert of(Drain, net.welcome()) == [Drain("w1")]  # the coordinator forgot the first


def test_lost_while_draining_with_nothing_held_stops_without_reconnecting() -> None:
    net = Net()
    net.serving()
    net.advance(1.6)
    net.s.drain()
    assert net.s.reconnect_delay() is None
    assert net.s.phase is Phase.DONE and net.s.exit_code == 0


def test_backoff_is_equal_jitter_and_restarts_on_welcome() -> None:
    net = Net()
    delays = [net.s.reconnect_delay() for _ in range(6)]
    ceilings = [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    for delay, ceiling in zip(delays, ceilings):
        assert delay is not None and ceiling / 2 <= delay <= ceiling
    net.serving()
    first = net.s.reconnect_delay()
    assert first is not None and first <= 0.25


def test_messages_a_worker_never_receives_are_refused() -> None:
    net = Net()
    for message in (Accepted(["t"]), Drain("w1"), Heartbeat("w1", 0, [], 0, 0, 0)):
        assert net.s.receive(message) is False
    assert net.s.receive(CoordinatorHeartbeat("coord-1")) is True


def test_a_drain_before_welcome_ends_with_deregister_on_the_same_connection() -> None:
    net = Net()
    net.s.connected()
    net.pump()
    net.s.drain()  # nothing held, no WELCOME yet: stop now, but undo the pending REGISTER
    assert net.pump() == [Deregister("w1")]
    assert net.s.phase is Phase.DONE and net.s.exit_code == 0
