"""The fake cluster (02-cluster-patterns/fake_cluster.py) behaves as the real one does.

It wires the real Dispatcher, WorkerSessions and ClientSession together, so these tests pin
the rules week 2 teaches with it: a killed worker's task is requeued and recorded once, a
frozen worker's late results are dropped as duplicates, a delayed link is slow but alive.
The same stories run with real processes in tests/test_cluster_invariants.py.
"""

from __future__ import annotations

import pytest

from cluster_patterns.fake_cluster import FakeCluster, Line
from cluster_patterns.protocol import NodeEventKind, TaskSpec


def events_of(cluster: FakeCluster, node: str) -> list[NodeEventKind]:
    return [event.event for event in cluster.events if event.node_id == node]


def sleep_tasks(count: int, ms: int, prefix: str = "t") -> list[TaskSpec]:
    return [TaskSpec(task_id=f"{prefix}{n}", kind="sleep", ms=ms) for n in range(count)]


def test_a_killed_workers_task_is_requeued_and_recorded_once() -> None:
    lines: list[Line] = []
    cluster = FakeCluster({"w1": 1, "w2": 1}, trace=lines.append)
    cluster.run_until(0.2)
    cluster.submit(sleep_tasks(1, 2000))
    cluster.run_until(0.9)
    cluster.kill("w1")
    cluster.run_until(5.0)
    assert [(o.task_id, o.tries, o.worker_id) for o in cluster.outcomes] == [("t0", 2, "w2")]
    assert events_of(cluster, "w1") == [
        NodeEventKind.JOINED,
        NodeEventKind.SUSPECT,
        NodeEventKind.DEAD,
    ]
    dead = next(e for e in cluster.events if e.event is NodeEventKind.DEAD)
    assert dead.detection_latency_s == pytest.approx(1.5, abs=0.06)  # the dead point + a tick
    assert cluster.dispatcher.totals.requeued == 1
    assert cluster.dispatcher.totals.duplicates == 0
    dispatched = [line for line in lines if type(line.message).__name__ == "Dispatch"]
    assert [line.target for line in dispatched] == ["w1", "w2"]


def test_a_frozen_workers_late_results_are_duplicates_not_outcomes() -> None:
    cluster = FakeCluster({"w1": 4, "w2": 4})
    cluster.run_until(0.2)
    cluster.submit(sleep_tasks(8, 500))
    cluster.run_until(0.4)
    cluster.freeze("w2")
    cluster.run_until(3.4)
    cluster.thaw("w2")
    cluster.run_until(6.0)
    assert sorted(o.task_id for o in cluster.outcomes) == [f"t{n}" for n in range(8)]
    assert events_of(cluster, "w2")[1:] == [
        NodeEventKind.SUSPECT,
        NodeEventKind.DEAD,
        NodeEventKind.ALIVE,
    ]
    assert cluster.dispatcher.totals.requeued == 4
    assert cluster.dispatcher.totals.duplicates == 4  # w2's four, after w1 ran them again
    assert cluster.client.duplicates == 0


def test_a_delay_below_the_suspect_point_is_slow_but_alive() -> None:
    cluster = FakeCluster({"w1": 2, "w2": 2})
    cluster.run_until(0.2)
    cluster.delay("w2", 0.3)
    cluster.run_until(0.5)
    cluster.submit(sleep_tasks(4, 100))
    cluster.run_until(3.0)
    assert events_of(cluster, "w2") == [NodeEventKind.JOINED]
    latency = {o.worker_id: o.latency_s for o in cluster.outcomes}
    assert latency["w2"] - latency["w1"] == pytest.approx(0.3, abs=0.02)  # one crossing


def test_a_delay_longer_than_the_dead_point_kills_at_its_onset_only() -> None:
    cluster = FakeCluster({"w1": 2, "w2": 2})
    cluster.run_until(0.2)
    cluster.delay("w2", 1.2)
    cluster.run_until(6.0)
    assert events_of(cluster, "w2") == [
        NodeEventKind.JOINED,
        NodeEventKind.SUSPECT,
        NodeEventKind.DEAD,
        NodeEventKind.ALIVE,
    ]


def test_what_the_coordinator_sends_a_killed_worker_is_undeliverable() -> None:
    cluster = FakeCluster({"w1": 1})
    cluster.run_until(0.2)
    cluster.kill("w1")
    cluster.submit(sleep_tasks(1, 100))
    cluster.run_until(1.0)
    # Dispatched, undeliverable (no pipe for its routing id), back in the queue: no try spent.
    task = cluster.dispatcher.tasks["t0"]
    assert task.tries == 0 and task.state.value == "pending"
