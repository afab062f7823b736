"""The client's protocol state machine with a fake clock and a fake network (no sockets)."""

from __future__ import annotations

import pytest

from cluster_patterns import client_session
from cluster_patterns.client_session import STALL_AFTER_S, ClientSession
from cluster_patterns.protocol import MAX_BATCH, Accepted, Completed, CoordinatorHeartbeat, Submit
from cluster_patterns.protocol import TaskOutcome, TaskSpec, Welcome


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def session(clock: Clock, interval: float = 0.5, liveness: int = 3) -> ClientSession:
    return ClientSession("c1", heartbeat_interval_s=interval, liveness=liveness, clock=clock)


def specs(n: int, prefix: str = "t") -> list[TaskSpec]:
    return [TaskSpec(f"{prefix}{i}", "echo") for i in range(n)]


def submitted_ids(messages: list[object]) -> list[str]:
    return [t.task_id for m in messages if isinstance(m, Submit) for t in m.tasks]


def test_submit_goes_out_in_batches_and_each_task_gets_one_outcome() -> None:
    clock = Clock()
    s = session(clock)
    s.submit(specs(300))
    out = s.take_outbox()
    assert [len(m.tasks) for m in out if isinstance(m, Submit)] == [MAX_BATCH, MAX_BATCH, 44]
    s.receive(Accepted(["t0", "t1", "not-ours"]))
    clock.now += 0.25
    outcome = TaskOutcome("t0", True, "x")
    s.receive(Completed([outcome, outcome, TaskOutcome("not-ours", True)]))
    assert s.take_outcomes() == [outcome]
    assert s.duplicates == 1 and s.accepted == 2
    assert s.latencies["t0"] == 0.25 and len(s.unresolved) == 299
    s.receive(Completed([outcome]))
    assert s.take_outcomes() == [] and s.duplicates == 2


def test_a_silent_coordinator_gets_the_unresolved_tasks_again_once_per_window() -> None:
    clock = Clock()
    s = session(clock)
    s.submit(specs(3))
    s.take_outbox()
    s.receive(Completed([TaskOutcome("t0", True)]))
    clock.now += 1.4
    s.tick()
    assert s.take_outbox() == []
    clock.now += 0.2  # silent for 1.6 s > 0.5 * 3
    s.tick()
    assert sorted(submitted_ids(s.take_outbox())) == ["t1", "t2"] and s.resubmissions == 1
    clock.now += 0.5
    s.tick()
    assert s.take_outbox() == []  # not again before another window


def test_a_new_coordinator_incarnation_gets_everything_unresolved_at_once() -> None:
    clock = Clock()
    s = session(clock)
    s.receive(CoordinatorHeartbeat("coord-a"))
    s.submit(specs(2))
    s.take_outbox()
    s.receive(CoordinatorHeartbeat("coord-a"))
    assert s.take_outbox() == []
    s.receive(CoordinatorHeartbeat("coord-b"))
    assert submitted_ids(s.take_outbox()) == ["t0", "t1"]


def test_a_stall_with_a_live_coordinator_re_submits_after_the_stall_time() -> None:
    clock = Clock()
    s = session(clock)
    s.submit(specs(1))
    s.take_outbox()
    while clock.now < 50.0 + STALL_AFTER_S - 0.5:
        clock.now += 0.5
        s.heard()  # heartbeats keep coming, outcomes do not
        s.tick()
        assert s.take_outbox() == []
    clock.now += 1.0
    s.heard()
    s.tick()
    assert submitted_ids(s.take_outbox()) == ["t0"]


def test_the_coordinators_announced_interval_replaces_the_configured_one() -> None:
    clock = Clock()
    s = session(clock)
    s.receive(CoordinatorHeartbeat("coord-a", 2.0, 3))
    s.submit(specs(1))
    s.take_outbox()
    clock.now += 5.0  # silent for 5 s: lost after 0.5 * 3, but the coordinator said 2.0 * 3
    s.tick()
    assert s.take_outbox() == [] and s.interval_s == 2.0
    clock.now += 1.5
    s.tick()
    assert submitted_ids(s.take_outbox()) == ["t0"]


def test_an_old_coordinator_without_settings_keeps_the_configured_ones() -> None:
    s = session(Clock())
    s.receive(CoordinatorHeartbeat("coord-a"))
    assert s.lost_after_s == 1.5


def test_messages_a_client_never_receives_are_refused() -> None:
    s = session(Clock())
    assert s.receive(Welcome("c", 0.5, 3)) is False
    assert s.receive(Submit("c1", [])) is False


def test_memory_stays_bounded_for_a_long_lived_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_session, "MAX_REMEMBERED", 10)
    s = session(Clock())
    s.submit(specs(25))
    s.receive(Accepted([f"foreign-{i}" for i in range(10_000)]))  # a peer's garbage
    assert s.accepted == 0
    outcomes = [TaskOutcome(f"t{i}", True) for i in range(25)]
    s.receive(Completed(outcomes))
    assert s.take_outcomes() == outcomes  # every task resolved, once
    assert list(s.resolved) == [f"t{i}" for i in range(15, 25)]  # the newest 10
    assert set(s.latencies) == set(s.resolved)
    s.receive(Completed([outcomes[-1], outcomes[0]]))  # late: one remembered, one forgotten
    assert s.take_outcomes() == [] and s.duplicates == 1
