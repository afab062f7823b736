"""Prometheus metrics for the monitor: a custom collector over a ClusterView, plus histograms.

The monitor (monitor.py) serves these at GET /metrics on port 5572; scrape them with

    curl -s http://127.0.0.1:5572/metrics
    curl -s http://127.0.0.1:5572/metrics | promtool check metrics

Two kinds of numbers live here:
  * Things the coordinator already counts (task totals, node states, CPU %) arrive as
    snapshots in every STATUS. Re-incrementing our own Counter objects would drift, so a
    custom collector reads the latest snapshot at scrape time and exposes the coordinator's
    cumulative totals as counters (a coordinator restart is a counter reset, which
    Prometheus' rate() already understands).
  * Things that are durations of individual events (task latency, failure detection,
    partition recovery) are observed into ordinary prometheus-client Histograms as the
    TASK_STATS / NODE_EVENT messages arrive.

Every metric is listed with its meaning in docs/monitoring.md.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cluster_patterns.cluster_view import ClusterView
from cluster_patterns.protocol import NodeEvent, NodeEventKind, NodeState, TaskStats

# Histogram buckets (seconds), chosen around this cluster's defaults: 0.5 s heartbeats,
# liveness 3, so a dead verdict lands between 1.5 s and 2 s after the last message.
TASK_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
FAILURE_DETECTION_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 5.0, 10.0)
PARTITION_RECOVERY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# Per-node gauges: metric name, help text, and the NodeStatus field (of the last STATUS).
NODE_GAUGES = (
    ("cluster_node_in_flight", "Tasks the node is running now.", "in_flight"),
    ("cluster_node_capacity", "Concurrent tasks the node announced it can run.", "capacity"),
    ("cluster_node_cpu_percent", "Node CPU use in percent (psutil).", "cpu_percent"),
    ("cluster_node_memory_percent", "Node memory use in percent (psutil).", "memory_percent"),
    ("cluster_node_load1", "Node 1-minute load average.", "load1"),
)

# STATUS totals field -> counter name (without the _total suffix the client library adds).
TOTAL_COUNTERS = (
    ("submitted", "cluster_tasks_submitted", "Tasks accepted by the coordinator."),
    ("done", "cluster_tasks_done", "Tasks whose result was recorded as a success."),
    ("failed", "cluster_tasks_failed", "Tasks recorded as failed (error or out of tries)."),
    ("retried", "cluster_tasks_retried", "Task attempts retried after a timeout or error."),
    ("requeued", "cluster_tasks_requeued", "Tasks taken back from a dead worker and requeued."),
    (
        "duplicates",
        "cluster_tasks_duplicate_results",
        "Results dropped because their task already had a recorded result.",
    ),
    (
        "bad_messages",
        "cluster_bad_messages",
        "Malformed or misdirected messages and ZMTP protocol violations the coordinator dropped.",
    ),
    (
        "aborted_handshakes",
        "cluster_aborted_handshakes",
        "Connections closed before their handshake completed (health probes, reconnects).",
    ),
    (
        "denied_handshakes",
        "cluster_denied_handshakes",
        "Handshakes the coordinator's security refused (CURVE key not allowed, no CURVE).",
    ),
    (
        "refused_registrations",
        "cluster_refused_registrations",
        "REGISTERs refused: the worker id was held by another live peer, or the table was full.",
    ),
    (
        "refused_tasks",
        "cluster_refused_tasks",
        "New tasks not accepted: the coordinator held its limit of unfinished tasks.",
    ),
)
TOTAL_GAUGES = (
    ("pending", "cluster_tasks_pending", "Tasks queued at the coordinator, not yet dispatched."),
    ("in_flight", "cluster_tasks_in_flight", "Tasks dispatched to a worker, result not yet in."),
)

# ClusterView attribute -> the monitor's own counters.
MONITOR_COUNTERS = (
    (
        "monitor_bad_messages",
        "cluster_monitor_bad_messages",
        "Undecodable or invalid messages the monitor received on the status channel.",
    ),
    (
        "bad_http_requests",
        "cluster_monitor_bad_http_requests",
        "HTTP requests the monitor refused (400): not HTTP, or over its size limits.",
    ),
    (
        "status_messages",
        "cluster_monitor_status_messages",
        "STATUS snapshots the monitor received.",
    ),
    (
        "resubscribes",
        "cluster_monitor_resubscribes",
        "Times the monitor replaced its SUB socket after the coordinator fell silent.",
    ),
)


def _one_sample(
    family: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    documentation: str,
    value: float,
) -> Metric:
    """A metric family with one unlabelled sample."""
    metric = family(name, documentation)
    metric.add_metric([], float(value))
    return metric


class ClusterCollector(Collector):
    """Reads the ClusterView at scrape time; no state of its own."""

    def __init__(self, view: ClusterView) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        yield from self._coordinator_metrics()
        yield from self._node_metrics()
        yield from self._task_metrics()
        yield from self._monitor_metrics()

    def _coordinator_metrics(self) -> Iterator[Metric]:
        view = self._view
        yield _one_sample(
            GaugeMetricFamily,
            "cluster_coordinator_up",
            "1 while a STATUS arrived within heartbeat_interval * (liveness + 1), else 0.",
            1.0 if view.coordinator_seen() else 0.0,
        )
        age = view.coordinator_age_s()
        if age is not None:
            yield _one_sample(
                GaugeMetricFamily,
                "cluster_coordinator_last_seen_age_seconds",
                "Seconds since the last STATUS from the coordinator.",
                age,
            )

    def _node_metrics(self) -> Iterator[Metric]:
        view = self._view
        counts = GaugeMetricFamily(
            "cluster_nodes", "Number of nodes in each state.", labels=["state"]
        )
        for state_name, count in view.node_counts().items():
            counts.add_metric([state_name.value], float(count))
        yield counts

        state = GaugeMetricFamily(
            "cluster_node_state",
            "1 for the node's current state, 0 for the other states.",
            labels=["node", "state"],
        )
        for node in view.nodes():
            for candidate in NodeState:
                value = 1.0 if node.state is candidate else 0.0
                state.add_metric([node.node_id, candidate.value], value)
        yield state
        for metric_name, documentation, field_name in NODE_GAUGES:
            gauge = GaugeMetricFamily(metric_name, documentation, labels=["node"])
            for node in view.nodes():
                gauge.add_metric([node.node_id], float(getattr(node.status, field_name)))
            yield gauge
        age = GaugeMetricFamily(
            "cluster_node_last_seen_age_seconds",
            "Seconds since the coordinator last heard from the node.",
            labels=["node"],
        )
        done = CounterMetricFamily(
            "cluster_node_tasks_done",
            "Tasks the node finished, as counted by the coordinator.",
            labels=["node"],
        )
        for node in view.nodes():
            age.add_metric([node.node_id], view.node_age_s(node))
            done.add_metric([node.node_id], float(node.status.done))
        yield age
        yield done

    def _task_metrics(self) -> Iterator[Metric]:
        totals = self._view.totals
        for field_name, metric_name, documentation in TOTAL_COUNTERS:
            yield _one_sample(CounterMetricFamily, metric_name, documentation, totals[field_name])
        for field_name, metric_name, documentation in TOTAL_GAUGES:
            yield _one_sample(GaugeMetricFamily, metric_name, documentation, totals[field_name])
        rates = GaugeMetricFamily(
            "cluster_task_rate_per_second",
            "Tasks per second over the monitor's rate window, by kind of total.",
            labels=["kind"],
        )
        for kind, value in self._view.rates().items():
            rates.add_metric([kind], value)
        yield rates

    def _monitor_metrics(self) -> Iterator[Metric]:
        view = self._view
        for attribute, metric_name, documentation in MONITOR_COUNTERS:
            yield _one_sample(
                CounterMetricFamily, metric_name, documentation, getattr(view, attribute)
            )
        events = CounterMetricFamily(
            "cluster_node_events", "NODE_EVENT messages received, by event.", labels=["event"]
        )
        for event, count in view.node_events.items():
            events.add_metric([event.value], float(count))
        yield events


class ClusterMetrics:
    """The monitor's registry: the collector above plus three histograms, fed by the
    status channel's ``do_NodeEvent`` and ``do_TaskStats`` (see status_follower.py)."""

    def __init__(self, view: ClusterView) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ClusterCollector(view))
        self.task_latency = Histogram(
            "cluster_task_latency_seconds",
            "Task latency from submission to recorded result (from TASK_STATS).",
            buckets=TASK_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.failure_detection = Histogram(
            "cluster_failure_detection_seconds",
            "From a node's last heard message to the coordinator's dead verdict.",
            buckets=FAILURE_DETECTION_BUCKETS,
            registry=self.registry,
        )
        self.partition_recovery = Histogram(
            "cluster_partition_recovery_seconds",
            "From a node's dead verdict to that node being alive again.",
            buckets=PARTITION_RECOVERY_BUCKETS,
            registry=self.registry,
        )

    def do_NodeEvent(self, msg: NodeEvent) -> None:
        if msg.event == NodeEventKind.DEAD and msg.detection_latency_s is not None:
            self.failure_detection.observe(msg.detection_latency_s)
        if msg.event == NodeEventKind.ALIVE and msg.recovery_s is not None:
            self.partition_recovery.observe(msg.recovery_s)

    def do_TaskStats(self, msg: TaskStats) -> None:
        for seconds in msg.latencies_s:
            self.task_latency.observe(seconds)

    def exposition(self) -> bytes:
        """The Prometheus text format for GET /metrics."""
        return generate_latest(self.registry)
