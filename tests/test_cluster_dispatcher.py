"""The coordinator's Dispatcher with a fake network (no sockets) and a fake clock."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cluster_patterns import task_book
from cluster_patterns.dispatcher import Dispatcher
from cluster_patterns.task_book import DONE_RETENTION_S, TaskState
from cluster_patterns.protocol import Accepted, Completed, CoordinatorHeartbeat, Deregister
from cluster_patterns.protocol import Dispatch, Drain, Heartbeat, Message, NodeEvent, NodeEventKind
from cluster_patterns.protocol import Register, Reset, Results, Submit, TaskOutcome, TaskResult
from cluster_patterns.protocol import TaskSpec, Welcome, encode

CLIENT = b"client:c1"
KINDS = ["echo", "sleep", "cpu", "fail"]


class FakeNet:
    """Drives a Dispatcher and keeps what it 'sent', per peer."""

    def __init__(self, **kwargs: object) -> None:
        options: dict[str, object] = {"heartbeat_interval_s": 0.5, "liveness": 3}
        options.update(kwargs)
        self.d = Dispatcher("coord-test", **options)
        self.now = 0.0
        self.sent: list[tuple[bytes, Message]] = []
        self.events: list[NodeEvent] = []

    def deliver(self, identity: bytes, message: Message) -> None:
        assert self.d.handle(identity, message, self.now)
        self.turn()

    def turn(self) -> None:
        self.d.pump(self.now)
        self.d.flush_replies()
        outbox, events = self.d.take_output()
        self.sent.extend(outbox)
        self.events.extend(events)

    def advance(self, seconds: float, beat: tuple[str, ...] = ()) -> None:
        """Move the clock in small steps; workers in ``beat`` keep heartbeating."""
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + 0.05, 6)
            for wid in beat:
                self.d.handle(ident(wid), Heartbeat(wid, 0, [], 0.0, 0.0, 0.0), self.now)
            self.d.tick(self.now)
            self.turn()

    @classmethod
    def with_workers(cls, **capacities: int) -> FakeNet:
        """A FakeNet on which each worker (id=capacity) has registered, in the order given."""
        net = cls()
        for wid, capacity in capacities.items():
            net.register(wid, capacity)
        return net

    def register(self, wid: str, capacity: int, kinds: list[str] = KINDS) -> None:
        self.deliver(ident(wid), Register(wid, capacity, kinds))

    def submit(self, n: int, kind: str = "sleep", prefix: str = "t") -> list[str]:
        ids = [f"{prefix}{i}" for i in range(n)]
        self.deliver(CLIENT, Submit("c1", [TaskSpec(t, kind, 10) for t in ids]))
        return ids

    def take(self, wid: str) -> list[str]:
        """Task ids dispatched to ``wid`` since the last call."""
        got, keep = [], []
        for identity, msg in self.sent:
            if identity == ident(wid) and isinstance(msg, Dispatch):
                got.extend(a.task_id for a in msg.tasks)
            else:
                keep.append((identity, msg))
        self.sent = keep
        return got

    def finish(self, wid: str, task_ids: list[str], attempt: int = 1) -> None:
        results = [TaskResult(t, attempt, True, "ok") for t in task_ids]
        self.deliver(ident(wid), Results(wid, results))

    def outcomes(self) -> list[TaskOutcome]:
        return [
            o for i, m in self.sent if i == CLIENT and isinstance(m, Completed) for o in m.outcomes
        ]

    def of_type(self, kind: type) -> list[Message]:
        return [m for _, m in self.sent if isinstance(m, kind)]


def ident(wid: str) -> bytes:
    return f"worker:{wid}".encode()


def test_register_is_welcomed_and_submit_acknowledged() -> None:
    net = FakeNet.with_workers(w1=2)
    assert any(isinstance(m, Welcome) for _, m in net.sent)
    net.submit(3)
    accepted = [t for m in net.of_type(Accepted) for t in m.task_ids]  # type: ignore[attr-defined]
    assert accepted == ["t0", "t1", "t2"]


def test_never_more_in_flight_than_capacity() -> None:
    net = FakeNet.with_workers(w1=2, w2=3)
    net.submit(20)
    first1, first2 = net.take("w1"), net.take("w2")
    assert (len(first1), len(first2)) == (2, 3)
    net.finish("w1", first1[:1])
    assert len(net.take("w1")) == 1 and net.take("w2") == []  # one credit back, one task out
    assert net.d.workers["w1"].in_flight == 2 and net.d.workers["w2"].in_flight == 3


def test_least_loaded_worker_first() -> None:
    net = FakeNet.with_workers(w1=4, w2=4)
    net.submit(2, prefix="a")
    assert len(net.take("w1")) + len(net.take("w2")) == 2
    assert net.d.workers["w1"].in_flight == 1 and net.d.workers["w2"].in_flight == 1
    net.submit(1, prefix="b")  # equal load: the least recently used one gets it
    got = net.take("w1") + net.take("w2")
    assert got == ["b0"]


def test_exactly_once_and_duplicates_counted() -> None:
    net = FakeNet.with_workers(w1=4)
    net.submit(2)
    tasks = net.take("w1")
    net.finish("w1", tasks)
    net.finish("w1", tasks)  # the same results again
    assert sorted(o.task_id for o in net.outcomes()) == ["t0", "t1"]
    assert net.d.totals.done == 2 and net.d.totals.duplicates == 2


def test_resubmission_is_idempotent_and_returns_the_recorded_outcome() -> None:
    net = FakeNet.with_workers(w1=4)
    net.submit(1)
    net.finish("w1", net.take("w1"))
    net.sent.clear()
    net.submit(1)
    assert net.take("w1") == []  # not run again
    assert [o.task_id for o in net.outcomes()] == ["t0"] and net.d.totals.submitted == 1


def test_dead_worker_tasks_are_requeued_and_late_results_deduplicated() -> None:
    net = FakeNet.with_workers(w1=2, w2=2)
    net.submit(4)
    held1, held2 = net.take("w1"), net.take("w2")
    net.advance(2.0, beat=("w2",))  # w1 falls silent
    dead = [m for m in net.events if isinstance(m, NodeEvent) and m.event == "dead"]
    assert [e.node_id for e in dead] == ["w1"] and dead[0].detection_latency_s is not None
    assert dead[0].detection_latency_s <= 0.5 * (3 + 1)
    assert net.d.totals.requeued == 2
    net.finish("w2", held2)
    again = net.take("w2")
    assert sorted(again) == sorted(held1)
    net.finish("w2", again, attempt=2)
    net.finish("w1", held1)  # w1 comes back with late results
    assert net.d.totals.duplicates == 2
    assert any(isinstance(m, Reset) for i, m in net.sent if i == ident("w1"))
    assert sorted(o.task_id for o in net.outcomes()) == ["t0", "t1", "t2", "t3"]
    net.register("w1", 2)  # re-registers: alive again, with recovery time
    alive = [m for m in net.events if isinstance(m, NodeEvent) and m.event == "alive"]
    assert alive and alive[-1].recovery_s is not None


def test_timeout_retries_then_records_failure() -> None:
    net = FakeNet(task_timeout_s=1.0, max_tries=2)
    net.register("w1", 1)
    net.submit(1)
    assert net.take("w1") == ["t0"]
    net.advance(1.1, beat=("w1",))
    # The timed-out attempt still occupies the credit while w1 reports it running.
    net.d.handle(ident("w1"), Heartbeat("w1", 1, ["t0"], 0, 0, 0), net.now)
    net.turn()
    net.d.handle(ident("w1"), Heartbeat("w1", 0, [], 0, 0, 0), net.now)
    net.turn()
    assert net.take("w1") == ["t0"] and net.d.totals.retried == 1
    net.advance(1.1, beat=("w1",))
    [outcome] = net.outcomes()
    assert not outcome.ok and "timed out" in outcome.error and outcome.tries == 2
    assert net.d.totals.failed == 1


def test_task_failure_is_recorded_not_retried() -> None:
    net = FakeNet.with_workers(w1=1)
    net.submit(1, kind="fail")
    [tid] = net.take("w1")
    net.deliver(ident("w1"), Results("w1", [TaskResult(tid, 1, False, "", "boom")]))
    assert net.d.totals.failed == 1 and net.d.totals.retried == 0


def test_drain_stops_dispatch_and_deregister_requeues() -> None:
    net = FakeNet.with_workers(w1=2, w2=2)
    net.deliver(ident("w2"), Drain("w2"))
    net.submit(3)
    assert len(net.take("w1")) == 2 and net.take("w2") == []
    net.deliver(ident("w2"), Deregister("w2"))
    assert net.d.workers["w2"].liveness.state.value == "left"


def test_capabilities_route_tasks() -> None:
    net = FakeNet()
    net.register("echoer", 4, ["echo"])
    net.register("sleeper", 4, ["sleep"])
    net.deliver(CLIENT, Submit("c1", [TaskSpec("e", "echo"), TaskSpec("s", "sleep", 5)]))
    assert net.take("echoer") == ["e"] and net.take("sleeper") == ["s"]


def test_reregistration_keeps_running_tasks_as_credit() -> None:
    net = FakeNet.with_workers(w1=2)
    net.submit(2)
    held = net.take("w1")
    net.deliver(ident("w1"), Register("w1", 2, KINDS, running=held[:1]))
    record = net.d.workers["w1"]
    assert record.in_flight == 2  # one still assigned + one given back and re-dispatched
    assert net.d.tasks[held[0]].state is TaskState.ASSIGNED


def test_unknown_worker_heartbeat_gets_reset() -> None:
    net = FakeNet()
    net.deliver(ident("ghost"), Heartbeat("ghost", 0, [], 0, 0, 0))
    assert isinstance(net.sent[-1][1], Reset)


def test_status_snapshot_has_contract_fields() -> None:
    net = FakeNet.with_workers(w1=2)
    net.submit(3)
    status = net.d.status(net.now)
    assert status.totals.submitted == 3 and status.totals.in_flight == 2
    assert status.totals.pending == 1
    [node] = status.nodes
    assert node.node_id == "w1" and node.state == "alive" and node.in_flight == 2


# --- Who holds a worker id (issue 10) ---------------------------------------------------------
# Replies are read as they go on the wire (their JSON), so these tests do not depend on the
# Python class that carries a refusal.


def wire(message: Message) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(encode(message))
    return body


def replies_to(net: FakeNet, identity: bytes) -> list[dict[str, Any]]:
    return [wire(m) for i, m in net.sent if i == identity]


IMPOSTOR = b"worker:w1:another-process"


def test_a_second_peer_cannot_take_the_id_of_a_live_worker() -> None:
    net = FakeNet.with_workers(w1=2)
    net.submit(2)
    held = net.take("w1")
    net.deliver(IMPOSTOR, Register("w1", 8, KINDS))
    [refusal] = replies_to(net, IMPOSTOR)
    assert refusal["type"] == "REFUSED" and refusal["worker_id"] == "w1"
    assert refusal["reason"] == "worker_id_in_use"
    assert 0 < float(refusal["retry_after_s"]) <= 0.5 * 3
    # The real worker is untouched: no RESET, its tasks and its capacity stay.
    net.deliver(ident("w1"), Heartbeat("w1", 2, held, 0, 0, 0))
    assert [m["type"] for m in replies_to(net, ident("w1"))] == ["WELCOME"]  # no RESET
    [node] = net.d.status(net.now).nodes
    assert (node.capacity, node.in_flight, node.state) == (2, 2, "alive")
    net.finish("w1", held)
    assert sorted(o.task_id for o in net.outcomes()) == sorted(held)
    assert net.d.status(net.now).totals.refused_registrations == 1


def test_the_id_is_taken_over_after_a_full_liveness_window_of_silence() -> None:
    net = FakeNet.with_workers(w1=2)
    net.submit(2)
    held = net.take("w1")
    net.advance(1.0)  # silent for 1 s: suspect, not yet dead (dead after 0.5 s * 3)
    net.deliver(IMPOSTOR, Register("w1", 2, KINDS))
    [refusal] = replies_to(net, IMPOSTOR)
    assert refusal["type"] == "REFUSED"
    assert float(refusal["retry_after_s"]) <= 0.5 + 0.05
    net.advance(0.6)  # now silent for more than the window
    net.sent.clear()
    net.deliver(IMPOSTOR, Register("w1", 2, KINDS))
    welcome, dispatch = replies_to(net, IMPOSTOR)
    assert welcome["type"] == "WELCOME" and dispatch["type"] == "DISPATCH"
    # The tasks the silent holder had were requeued and now go to the new holder.
    assert sorted(t["task_id"] for t in dispatch["tasks"]) == sorted(held)
    # The old holder comes back: RESET for its heartbeat, and its REGISTER is refused.
    net.deliver(ident("w1"), Heartbeat("w1", 0, [], 0, 0, 0))
    net.deliver(ident("w1"), Register("w1", 2, KINDS))
    assert [m["type"] for m in replies_to(net, ident("w1"))] == ["RESET", "REFUSED"]


def test_a_worker_that_left_can_be_replaced_at_once() -> None:
    net = FakeNet.with_workers(w1=2)
    net.deliver(ident("w1"), Deregister("w1"))
    net.deliver(IMPOSTOR, Register("w1", 4, KINDS))
    assert [m["type"] for m in replies_to(net, IMPOSTOR)] == ["WELCOME"]


def test_refusals_are_rate_limited_per_peer() -> None:
    net = FakeNet.with_workers(w1=2)
    for _ in range(50):
        net.deliver(IMPOSTOR, Register("w1", 2, KINDS))
    assert len(replies_to(net, IMPOSTOR)) == 1
    net.advance(0.6, beat=("w1",))
    net.deliver(IMPOSTOR, Register("w1", 2, KINDS))
    assert [m["type"] for m in replies_to(net, IMPOSTOR)] == ["REFUSED", "REFUSED"]


def test_the_worker_table_is_bounded_and_status_stays_encodable() -> None:
    """Thousands of REGISTERs with new, long ids: STATUS must still fit in one frame."""
    net = FakeNet()
    capabilities = [f"{i:03d}" + "k" * 125 for i in range(64)]
    for i in range(3000):
        net.d.handle(f"p{i}".encode(), Register(f"{i:04d}" + "x" * 124, 1, capabilities), net.now)
    net.turn()
    encode(net.d.status(net.now))  # raises ProtocolError when STATUS outgrows a frame
    reasons = {m["reason"] for _, msg in net.sent if (m := wire(msg))["type"] == "REFUSED"}
    assert reasons == {"cluster_full"}
    net.advance(2.0)  # every phantom is dead now: a real worker finds room
    net.sent.clear()
    net.register("real", 2)
    assert [m["type"] for m in replies_to(net, ident("real"))] == ["WELCOME"]
    encode(net.d.status(net.now))


def test_tasks_nobody_can_run_do_not_block_the_queue() -> None:
    net = FakeNet()
    net.register("w1", 4, ["echo"])
    net.deliver(CLIENT, Submit("c1", [TaskSpec(f"n{i}", "nobody") for i in range(100)]))
    for batch in range(6):
        net.deliver(CLIENT, Submit("c1", [TaskSpec(f"m{batch}-{i}", "nobody") for i in range(100)]))
    net.deliver(CLIENT, Submit("c1", [TaskSpec("e", "echo")]))
    for _ in range(5):
        net.turn()
    assert "e" in net.take("w1")


# --- Seams (issue 11): injected clocks, the handler table, take_output ----------------------


def test_node_events_take_their_time_from_the_injected_wall_clock() -> None:
    net = FakeNet(wall_clock=lambda: 1_700_000_000.25)
    net.register("w1", 2)
    net.advance(2.0)
    assert [(e.event, e.at) for e in net.events] == [
        ("joined", 1_700_000_000.25),
        ("suspect", 1_700_000_000.25),
        ("dead", 1_700_000_000.25),
    ]
    assert all(isinstance(e.event, NodeEventKind) for e in net.events)


def test_messages_a_coordinator_never_receives_are_refused_by_the_handler_table() -> None:
    net = FakeNet()
    for message in (Welcome("c", 0.5, 3), Reset("x"), Accepted(["t"]), Dispatch([])):
        assert net.d.handle(ident("w1"), message, net.now) is False
    assert net.d.take_output() == ([], [])


def test_take_output_hands_over_each_reply_once() -> None:
    net = FakeNet()
    net.d.handle(ident("w1"), Register("w1", 1, KINDS), net.now)
    first = net.d.take_output()
    assert [type(m) for _, m in first.outbox] == [Welcome]
    assert [e.event for e in first.events] == ["joined"]
    assert net.d.take_output() == ([], [])


def test_coordinator_heartbeats_announce_the_interval_to_serving_workers_and_clients() -> None:
    net = FakeNet(heartbeat_interval_s=0.2, liveness=5)
    net.register("w1", 1)
    net.register("w2", 1)
    net.submit(1)
    net.advance(1.2, beat=("w1",))  # w2 is dead by now: it gets no heartbeat
    net.sent.clear()
    net.d.heartbeats(net.now)
    net.turn()
    beats = {i: m for i, m in net.sent if isinstance(m, CoordinatorHeartbeat)}
    assert set(beats) == {ident("w1"), CLIENT}
    assert {(b.heartbeat_interval_s, b.liveness) for b in beats.values()} == {(0.2, 5)}


def test_a_new_registration_clears_a_drain() -> None:
    net = FakeNet.with_workers(w1=2)
    net.deliver(ident("w1"), Drain("w1"))
    net.submit(1)
    assert net.take("w1") == []
    net.register("w1", 2)  # after a reconnect the worker must send DRAIN again
    assert net.take("w1") == ["t0"]


def test_deregister_hands_back_what_the_worker_still_held() -> None:
    net = FakeNet.with_workers(w1=2, w2=2)
    net.deliver(ident("w2"), Drain("w2"))
    net.submit(2)
    held = net.take("w1")
    net.deliver(ident("w1"), Deregister("w1"))  # a drain that timed out
    assert net.d.totals.requeued == 2
    net.deliver(ident("w2"), Register("w2", 2, KINDS))
    assert sorted(net.take("w2")) == sorted(held)


# --- Memory bounds, whatever peers send -------------------------------------------------------


def test_registration_cycles_never_grow_the_queue_past_the_tasks() -> None:
    """A worker that re-registers claiming every task, then none, over and over: each task
    keeps at most one entry in the queue (there was one more per task and cycle)."""
    net = FakeNet(max_tries=10_000)  # tries count each adoption: no giving up here
    net.register("w1", 1)
    ids = net.submit(128)
    for _ in range(300):
        net.deliver(ident("w1"), Register("w1", 1, KINDS, running=ids))
        net.deliver(ident("w1"), Register("w1", 1, KINDS, running=[]))
    assert len(net.d.pending) <= len(ids)
    assert net.d.book.pending_count() == len(ids) - 1  # one is dispatched to w1


def test_a_queue_entry_of_a_forgotten_task_is_harmless() -> None:
    """A task requeued, then taken back by its worker and finished, leaves an entry in the
    queue; after DONE_RETENTION_S the task is forgotten, and the entry must not crash the
    status or the dispatch when it comes up."""
    net = FakeNet.with_workers(w1=1)
    [held] = net.submit(1)
    assert net.take("w1") == [held]
    net.advance(2.0)  # w1 falls silent and is dead: the task is requeued, nobody takes it
    net.deliver(ident("w1"), Register("w1", 1, KINDS, running=[held]))  # adopted back
    net.deliver(ident("w1"), Drain("w1"))  # so no pump takes the entry when w1 finishes
    net.finish("w1", [held])
    assert net.d.tasks[held].state is TaskState.DONE and held in net.d.pending
    net.d.book.forget_old(net.now + DONE_RETENTION_S + 1)
    assert held not in net.d.tasks and net.d.status(net.now).totals.pending == 0
    net.register("w2", 1)
    [fresh] = net.submit(1, prefix="new")
    assert net.take("w2") == [fresh] and not net.d.pending


def test_new_tasks_past_the_unfinished_limit_are_not_accepted() -> None:
    net = FakeNet(max_unfinished=3)
    net.register("w1", 1)
    net.submit(5)
    accepted = [t for m in net.of_type(Accepted) for t in m.task_ids]  # type: ignore[attr-defined]
    assert accepted == ["t0", "t1", "t2"] and net.d.totals.refused_tasks == 2
    assert net.d.totals.submitted == 3 and sorted(net.d.tasks) == ["t0", "t1", "t2"]
    net.finish("w1", net.take("w1"))  # one finishes: room for one more
    net.sent.clear()
    net.submit(5)  # the client re-submits what was not accepted
    accepted = [t for m in net.of_type(Accepted) for t in m.task_ids]  # type: ignore[attr-defined]
    assert accepted == ["t0", "t1", "t2", "t3"] and net.d.totals.refused_tasks == 3


def test_finished_tasks_beyond_the_remembered_limit_are_forgotten_oldest_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(task_book, "MAX_FINISHED_REMEMBERED", 4)
    net = FakeNet.with_workers(w1=10)
    ids = net.submit(10)
    net.finish("w1", net.take("w1"))
    assert sorted(net.d.tasks) == sorted(ids[-4:])
    assert net.d.totals.done == 10


def test_restored_results_are_forgotten_like_any_other() -> None:
    dispatcher = Dispatcher("coord-test", heartbeat_interval_s=0.5, liveness=3)
    spec = TaskSpec("old", "echo")
    dispatcher.restore_submitted(spec, CLIENT, now=0.0)
    dispatcher.restore_recorded(TaskOutcome("old", True, "", 1, "w1", 0.1), now=0.0)
    assert dispatcher.book.unfinished == 0
    dispatcher.book.forget_old(DONE_RETENTION_S + 1)
    assert "old" not in dispatcher.tasks
