"""The coordinator's Dispatcher with a fake network (no sockets) and a fake clock."""

from __future__ import annotations

from cluster_patterns.dispatcher import Dispatcher, TaskState
from cluster_patterns.protocol import (
    Accepted,
    Completed,
    Deregister,
    Dispatch,
    Drain,
    Heartbeat,
    Message,
    NodeEvent,
    Register,
    Reset,
    Results,
    Submit,
    TaskOutcome,
    TaskResult,
    TaskSpec,
    Welcome,
)

CLIENT = b"client:c1"
KINDS = ["echo", "sleep", "cpu", "fail"]


class FakeNet:
    """Drives a Dispatcher and keeps what it 'sent', per peer."""

    def __init__(self, **kwargs: object) -> None:
        options: dict[str, object] = {"heartbeat_interval_s": 0.5, "liveness": 3}
        options.update(kwargs)
        self.d = Dispatcher("coord-test", **options)  # type: ignore[arg-type]
        self.now = 0.0
        self.sent: list[tuple[bytes, Message]] = []

    def deliver(self, identity: bytes, message: Message) -> None:
        assert self.d.handle(identity, message, self.now)
        self.turn()

    def turn(self) -> None:
        self.d.pump(self.now)
        self.d.flush_replies()
        self.sent.extend(self.d.outbox)
        self.d.outbox = []

    def advance(self, seconds: float, beat: tuple[str, ...] = ()) -> None:
        """Move the clock in small steps; workers in ``beat`` keep heartbeating."""
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + 0.05, 6)
            for wid in beat:
                self.d.handle(ident(wid), Heartbeat(wid, 0, [], 0.0, 0.0, 0.0), self.now)
            self.d.tick(self.now)
            self.turn()

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
    net = FakeNet()
    net.register("w1", 2)
    assert any(isinstance(m, Welcome) for _, m in net.sent)
    net.submit(3)
    accepted = [t for m in net.of_type(Accepted) for t in m.task_ids]  # type: ignore[attr-defined]
    assert accepted == ["t0", "t1", "t2"]


def test_never_more_in_flight_than_capacity() -> None:
    net = FakeNet()
    net.register("w1", 2)
    net.register("w2", 3)
    net.submit(20)
    first1, first2 = net.take("w1"), net.take("w2")
    assert (len(first1), len(first2)) == (2, 3)
    net.finish("w1", first1[:1])
    assert len(net.take("w1")) == 1 and net.take("w2") == []  # one credit back, one task out
    assert net.d.workers["w1"].in_flight == 2 and net.d.workers["w2"].in_flight == 3


def test_least_loaded_worker_first() -> None:
    net = FakeNet()
    net.register("w1", 4)
    net.register("w2", 4)
    net.submit(2, prefix="a")
    assert len(net.take("w1")) + len(net.take("w2")) == 2
    assert net.d.workers["w1"].in_flight == 1 and net.d.workers["w2"].in_flight == 1
    net.submit(1, prefix="b")  # equal load: the least recently used one gets it
    got = net.take("w1") + net.take("w2")
    assert got == ["b0"]


def test_exactly_once_and_duplicates_counted() -> None:
    net = FakeNet()
    net.register("w1", 4)
    net.submit(2)
    tasks = net.take("w1")
    net.finish("w1", tasks)
    net.finish("w1", tasks)  # the same results again
    assert sorted(o.task_id for o in net.outcomes()) == ["t0", "t1"]
    assert net.d.totals.done == 2 and net.d.totals.duplicates == 2


def test_resubmission_is_idempotent_and_returns_the_recorded_outcome() -> None:
    net = FakeNet()
    net.register("w1", 4)
    net.submit(1)
    net.finish("w1", net.take("w1"))
    net.sent.clear()
    net.submit(1)
    assert net.take("w1") == []  # not run again
    assert [o.task_id for o in net.outcomes()] == ["t0"] and net.d.totals.submitted == 1


def test_dead_worker_tasks_are_requeued_and_late_results_deduplicated() -> None:
    net = FakeNet()
    net.register("w1", 2)
    net.register("w2", 2)
    net.submit(4)
    held1, held2 = net.take("w1"), net.take("w2")
    net.advance(2.0, beat=("w2",))  # w1 falls silent
    dead = [m for m in net.d.events if isinstance(m, NodeEvent) and m.event == "dead"]
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
    alive = [m for m in net.d.events if isinstance(m, NodeEvent) and m.event == "alive"]
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
    net = FakeNet()
    net.register("w1", 1)
    net.submit(1, kind="fail")
    [tid] = net.take("w1")
    net.deliver(ident("w1"), Results("w1", [TaskResult(tid, 1, False, "", "boom")]))
    assert net.d.totals.failed == 1 and net.d.totals.retried == 0


def test_drain_stops_dispatch_and_deregister_requeues() -> None:
    net = FakeNet()
    net.register("w1", 2)
    net.register("w2", 2)
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
    net = FakeNet()
    net.register("w1", 2)
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
    net = FakeNet()
    net.register("w1", 2)
    net.submit(3)
    status = net.d.status(net.now)
    assert status.totals.submitted == 3 and status.totals.in_flight == 2
    assert status.totals.pending == 1
    [node] = status.nodes
    assert node.node_id == "w1" and node.state == "alive" and node.in_flight == 2
