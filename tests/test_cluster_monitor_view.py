"""Unit tests of the monitor's pure parts: ClusterView, the Prometheus collector, and the
status channel's routing.

No sockets and no processes: messages built with the protocol's own classes (and codec
frames of them) and a fake clock drive the model, so every timing rule is checked exactly.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster_patterns.cluster_metrics import ClusterMetrics
from cluster_patterns.cluster_view import (
    RATE_WINDOW_S,
    TOTAL_FIELDS,
    TOTALS_HISTORY_POINTS,
    ClusterView,
)
from cluster_patterns.protocol import (
    Drain,
    NodeEvent,
    NodeEventKind,
    NodeState,
    NodeStatus,
    Status,
    TaskStats,
    Totals,
    encode,
)
from cluster_patterns.stats import percentile
from cluster_patterns.status_follower import StatusChannel


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def node(
    node_id: str, state: NodeState = NodeState.ALIVE, age: float = 0.1, done: int = 0
) -> NodeStatus:
    return NodeStatus(
        node_id=node_id,
        state=state,
        last_seen_age_s=age,
        in_flight=1,
        capacity=4,
        capabilities=["echo"],
        cpu_percent=25.0,
        memory_percent=50.0,
        load1=0.5,
        done=done,
    )


def status(*nodes: NodeStatus, seq: int = 1, coordinator: str = "c1", **totals: int) -> Status:
    return Status(
        coordinator_id=coordinator,
        seq=seq,
        heartbeat_interval_s=0.5,
        liveness=3,
        nodes=list(nodes),
        totals=Totals(**totals),
    )


def event(
    node_id: str,
    kind: NodeEventKind,
    at: float,
    detection: float | None = None,
    recovery: float | None = None,
) -> NodeEvent:
    return NodeEvent(
        node_id=node_id, event=kind, at=at, detection_latency_s=detection, recovery_s=recovery
    )


def task_stats(*latencies: float, done: int = 0, failed: int = 0) -> TaskStats:
    return TaskStats(latencies_s=list(latencies), done=done, failed=failed)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def view(clock: FakeClock) -> ClusterView:
    return ClusterView(heartbeat_interval_s=1.0, liveness=2, clock=clock)


def test_never_seen_coordinator_is_unhealthy(view: ClusterView) -> None:
    healthy, body = view.health()
    assert not healthy
    assert body["status"] == "unavailable" and body["coordinator"] == "never seen"
    snap = view.snapshot()
    assert snap["coordinator"] == {
        "seen": False,
        "id": None,
        "last_seen_age_s": None,
        "seq": None,
        "heartbeat_interval_s": 1.0,
        "liveness": 2,
    }
    assert snap["nodes"] == []


def test_status_makes_healthy_until_interval_times_liveness_plus_one(
    view: ClusterView, clock: FakeClock
) -> None:
    view.do_Status(status(node("w1")))
    # The STATUS announces 0.5 s x 3, which replaces the 1.0 s x 2 we started with.
    assert view.dead_after_s == pytest.approx(2.0)
    assert view.health() == (True, view.health()[1])
    assert view.health()[1]["coordinator"] == "seen"
    clock.advance(1.99)
    assert view.coordinator_seen()
    clock.advance(0.02)
    healthy, body = view.health()
    assert not healthy and body["coordinator"] == "lost"
    view.do_Status(status(node("w1"), seq=2))
    assert view.health()[0]


def test_nodes_are_listed_sorted_with_aged_last_seen(view: ClusterView, clock: FakeClock) -> None:
    view.do_Status(status(node("w2", NodeState.DEAD, age=2.5), node("w1", age=0.2)))
    clock.advance(0.3)
    nodes = view.snapshot()["nodes"]
    assert isinstance(nodes, list)
    assert [n["id"] for n in nodes] == ["w1", "w2"]
    assert nodes[0]["last_seen_age_s"] == pytest.approx(0.5)
    assert nodes[1]["state"] == "dead"
    assert set(nodes[0]) >= {
        "id",
        "state",
        "last_seen_age_s",
        "in_flight",
        "capacity",
        "cpu_percent",
        "memory_percent",
        "load1",
        "done",
    }
    assert view.node_counts() == {"alive": 1, "suspect": 0, "dead": 1, "left": 0}
    assert view.snapshot()["node_counts"] == {"alive": 1, "suspect": 0, "dead": 1, "left": 0}


def test_a_node_missing_from_the_next_status_disappears(view: ClusterView) -> None:
    view.do_Status(status(node("w1"), node("w2")))
    view.do_Status(status(node("w1"), seq=2))
    assert [n.node_id for n in view.nodes()] == ["w1"]


def test_totals_and_rates(view: ClusterView, clock: FakeClock) -> None:
    view.do_Status(status(node("w1"), submitted=100, done=50))
    clock.advance(1.0)
    view.do_Status(status(node("w1"), submitted=300, done=150, failed=2))
    assert view.totals["submitted"] == 300 and view.totals["failed"] == 2
    rates = view.rates()
    assert rates["submitted"] == pytest.approx(200.0)
    assert rates["done"] == pytest.approx(100.0)
    # Old samples leave the window, so the rate follows the recent past.
    for _ in range(int(RATE_WINDOW_S) + 2):
        clock.advance(1.0)
        view.do_Status(status(node("w1"), submitted=300, done=150, failed=2))
    assert view.rates()["done"] == pytest.approx(0.0)


def test_a_status_flood_keeps_the_rate_history_bounded(view: ClusterView, clock: FakeClock) -> None:
    """STATUS far faster than the heartbeat (a misbehaving publisher): bounded, rates sane."""
    for number in range(TOTALS_HISTORY_POINTS * 5):
        clock.advance(0.0001)
        view.do_Status(status(node("w1"), seq=number, submitted=number, done=number))
    assert len(view._totals_history) == TOTALS_HISTORY_POINTS
    assert view.rates()["done"] == pytest.approx(10_000.0)


def test_restarted_coordinator_resets_rates_instead_of_going_negative(
    view: ClusterView, clock: FakeClock
) -> None:
    view.do_Status(status(submitted=1000, done=1000))
    clock.advance(1.0)
    view.do_Status(status(submitted=10, done=5))
    assert view.rates()["done"] == 0.0
    clock.advance(1.0)
    view.do_Status(status(submitted=20, done=15))
    assert view.rates()["done"] == pytest.approx(10.0)


def test_node_events_feed_detection_and_recovery(view: ClusterView) -> None:
    view.do_NodeEvent(event("w1", NodeEventKind.JOINED, 1.0))
    view.do_NodeEvent(event("w1", NodeEventKind.SUSPECT, 2.0))
    view.do_NodeEvent(event("w1", NodeEventKind.DEAD, 3.0, detection=1.6))
    view.do_NodeEvent(event("w1", NodeEventKind.ALIVE, 9.0, recovery=6.0))
    view.do_NodeEvent(event("w2", NodeEventKind.DEAD, 10.0, detection=1.8))
    snap = view.snapshot()
    assert snap["failure_detection"] == {"last_s": 1.8, "count": 2}
    assert snap["partition_recovery"] == {"last_s": 6.0, "count": 1}
    assert view.node_events[NodeEventKind.DEAD] == 2
    assert view.node_events[NodeEventKind.JOINED] == 1
    events = snap["events"]
    assert isinstance(events, list)
    assert [e["event"] for e in events][:2] == ["dead", "alive"]  # newest first


def test_node_event_updates_the_node_before_the_next_status(
    view: ClusterView, clock: FakeClock
) -> None:
    view.do_Status(status(node("w1", age=0.2), node("w2")))
    clock.advance(0.3)
    view.do_NodeEvent(event("w1", NodeEventKind.DEAD, 5.0, detection=1.5))
    view.do_NodeEvent(event("w9", NodeEventKind.DEAD, 5.0, detection=1.5))  # unknown
    by_id = {n.node_id: n for n in view.nodes()}
    assert by_id["w1"].state is NodeState.DEAD
    assert view.node_age_s(by_id["w1"]) == pytest.approx(0.5)
    assert "w9" not in by_id
    view.do_NodeEvent(event("w1", NodeEventKind.ALIVE, 6.0, recovery=1.0))
    assert view.nodes()[0].state is NodeState.ALIVE
    assert view.node_age_s(view.nodes()[0]) == pytest.approx(0.0)
    view.do_Status(
        status(node("w1", NodeState.SUSPECT), node("w2"), seq=2)
    )  # STATUS has the last word
    assert view.nodes()[0].state is NodeState.SUSPECT


def test_alive_without_recovery_time_is_not_a_recovery(view: ClusterView) -> None:
    view.do_NodeEvent(event("w1", NodeEventKind.ALIVE, 1.0))
    assert view.partition_recovery.count == 0


def test_task_stats_make_latency_points(view: ClusterView, clock: FakeClock) -> None:
    view.do_TaskStats(task_stats(0.001, 0.002, 0.003, 0.100, done=4))
    view.do_TaskStats(task_stats())  # an empty batch draws nothing
    clock.advance(2.0)
    latency = view.snapshot()["latency"]
    assert isinstance(latency, list) and len(latency) == 1
    point = latency[0]
    assert point["count"] == 4
    assert point["p50_ms"] == pytest.approx(2.0)
    assert point["p99_ms"] == pytest.approx(100.0)
    assert point["age_s"] == pytest.approx(2.0)
    clock.advance(1000.0)
    view.do_TaskStats(task_stats(0.5, done=1))
    assert len(view.snapshot()["latency"]) == 1  # type: ignore[arg-type]


def test_percentile_nearest_rank() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile(range(1, 101), 0.99) == 99
    assert percentile([7.0], 0.99) == 7.0


def test_snapshot_is_json_with_contract_keys(view: ClusterView) -> None:
    view.do_Status(status(node("w1"), submitted=3))
    doc = json.loads(json.dumps(view.snapshot()))
    assert {"coordinator", "nodes", "totals", "failure_detection", "partition_recovery"} <= set(doc)
    # Every counter of the wire's Totals (test_every_total_of_status_reaches_the_view), in order.
    assert list(doc["totals"]) == list(TOTAL_FIELDS)
    assert {"aborted_handshakes", "denied_handshakes", "refused_registrations"} <= set(
        doc["totals"]
    )
    assert set(doc["monitor"]) >= {"bad_messages", "bad_http_requests", "uptime_s"}


# --- metrics ---------------------------------------------------------------------------------


def samples(metrics: ClusterMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_follow_the_view(view: ClusterView) -> None:
    metrics = ClusterMetrics(view)
    view.do_Status(
        status(
            node("w1"),
            node("w2", NodeState.DEAD),
            submitted=10,
            done=7,
            failed=1,
            retried=2,
            requeued=3,
            duplicates=4,
            bad_messages=5,
        )
    )
    view.on_bad_message()
    view.on_bad_http_request()
    metrics.do_TaskStats(task_stats(0.01, 0.02, done=2))
    metrics.do_NodeEvent(event("w2", NodeEventKind.DEAD, 1.0, detection=1.7))
    metrics.do_NodeEvent(event("w2", NodeEventKind.ALIVE, 2.0, recovery=12.0))
    metrics.do_NodeEvent(event("w3", NodeEventKind.ALIVE, 2.0))  # joined again: no recovery
    got = samples(metrics)
    assert got[("cluster_coordinator_up", ())] == 1.0
    assert got[("cluster_nodes", (("state", "alive"),))] == 1.0
    assert got[("cluster_nodes", (("state", "dead"),))] == 1.0
    assert got[("cluster_node_state", (("node", "w2"), ("state", "dead")))] == 1.0
    assert got[("cluster_node_state", (("node", "w2"), ("state", "alive")))] == 0.0
    assert got[("cluster_node_in_flight", (("node", "w1"),))] == 1.0
    assert got[("cluster_node_cpu_percent", (("node", "w1"),))] == 25.0
    assert got[("cluster_node_memory_percent", (("node", "w1"),))] == 50.0
    assert got[("cluster_tasks_submitted_total", ())] == 10.0
    assert got[("cluster_tasks_done_total", ())] == 7.0
    assert got[("cluster_tasks_failed_total", ())] == 1.0
    assert got[("cluster_tasks_retried_total", ())] == 2.0
    assert got[("cluster_tasks_requeued_total", ())] == 3.0
    assert got[("cluster_tasks_duplicate_results_total", ())] == 4.0
    assert got[("cluster_bad_messages_total", ())] == 5.0
    assert got[("cluster_monitor_bad_messages_total", ())] == 1.0
    assert got[("cluster_monitor_bad_http_requests_total", ())] == 1.0
    assert got[("cluster_task_latency_seconds_count", ())] == 2.0
    assert got[("cluster_failure_detection_seconds_count", ())] == 1.0
    assert got[("cluster_failure_detection_seconds_bucket", (("le", "1.75"),))] == 1.0
    assert got[("cluster_failure_detection_seconds_bucket", (("le", "1.5"),))] == 0.0
    assert got[("cluster_partition_recovery_seconds_sum", ())] == 12.0
    assert got[("cluster_partition_recovery_seconds_count", ())] == 1.0


def test_peer_counters_are_kept_apart_from_bad_messages(view: ClusterView) -> None:
    """Probes, security refusals and refused registrations each have their own counter."""
    metrics = ClusterMetrics(view)
    counters = {"aborted_handshakes": 35, "denied_handshakes": 2, "refused_registrations": 1}
    view.do_Status(status(node("w1"), bad_messages=0, **counters))
    assert {k: view.snapshot()["totals"][k] for k in counters} == counters  # type: ignore[index]
    got = samples(metrics)
    assert got[("cluster_bad_messages_total", ())] == 0.0
    assert got[("cluster_aborted_handshakes_total", ())] == 35.0
    assert got[("cluster_denied_handshakes_total", ())] == 2.0
    assert got[("cluster_refused_registrations_total", ())] == 1.0


def test_metrics_pass_promtool(view: ClusterView) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus')")
    metrics = ClusterMetrics(view)
    view.do_Status(status(node("w1"), node("w2", NodeState.SUSPECT), submitted=1))
    metrics.do_TaskStats(task_stats(0.004, done=1))
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=metrics.exposition(),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the status channel: codec frames in, view and metrics updated ---------------------------


@pytest.fixture
def channel(view: ClusterView, clock: FakeClock) -> StatusChannel:
    return StatusChannel(view, ClusterMetrics(view), clock)


def test_the_channel_routes_codec_frames(channel: StatusChannel) -> None:
    st = Status(
        coordinator_id="c9",
        seq=4,
        heartbeat_interval_s=0.25,
        liveness=2,
        nodes=[node("w1", done=42)],
        totals=Totals(submitted=5, done=4),
    )
    channel.handle([encode(st)])
    channel.handle([encode(event("w1", NodeEventKind.DEAD, 1.0, detection=0.9))])
    channel.handle([encode(task_stats(0.01, 0.02, done=2))])
    view = channel.view
    assert view.coordinator_id == "c9" and view.dead_after_s == pytest.approx(0.75)
    assert view.totals["done"] == 4
    assert view.failure_detection.last_s == 0.9
    assert view.nodes()[0].state is NodeState.DEAD
    assert view.task_stats_done == 2
    assert view.monitor_bad_messages == 0
    got = samples(channel.metrics)
    assert got[("cluster_task_latency_seconds_count", ())] == 2.0
    assert got[("cluster_failure_detection_seconds_count", ())] == 1.0


def test_every_total_of_status_reaches_the_view(channel: StatusChannel) -> None:
    """TOTAL_FIELDS lists the fields of the protocol's Totals: none left out, none extra."""
    frame = encode(status(node("w1")))
    assert set(json.loads(frame)["totals"]) == set(TOTAL_FIELDS)
    values = {name: i + 1 for i, name in enumerate(TOTAL_FIELDS)}
    channel.handle([encode(status(node("w1"), **values))])
    assert channel.view.totals == values


@pytest.mark.parametrize(
    "frames",
    [
        [b""],
        [b"\xff\xfe garbage"],
        [b'{"v": 99, "type": "STATUS"}'],
        [b'{"v": 1, "type": "NOPE"}'],
        [b'{"v": 1, "type": "STATUS", "coordinator_id": "c"}'],
        [b'{"v":1,"type":"NODE_EVENT","node_id":"w1","event":"exploded","at":1}'],
        [encode(Drain(worker_id="w1"))],  # valid, but not a status message
        [b"a", b"b"],
        [b"[" * 100_000],
        [b"x" * (2 << 20)],
    ],
)
def test_the_channel_counts_garbage(channel: StatusChannel, frames: list[bytes]) -> None:
    channel.handle(frames)
    assert channel.view.monitor_bad_messages == 1
    assert channel.view.coordinator_id is None


def test_bad_input_is_logged_at_most_once_per_interval(
    channel: StatusChannel, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="monitor")
    for _ in range(100):
        channel.handle([b"garbage"])
    clock.advance(5.0)
    channel.handle([b"\x1b[2J" + b"garbage"])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and channel.view.monitor_bad_messages == 101
    assert "dropped bad status message" in lines[0]
    assert "99 more suppressed" in lines[1] and "\x1b" not in lines[1]  # escaped, not raw
