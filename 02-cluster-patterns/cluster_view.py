"""The monitor's picture of the cluster: a pure state model, no sockets, no HTTP.

The monitor (monitor.py) SUBscribes to the coordinator's status channel
(tcp://COORDINATOR:5571) and feeds every decoded message into a ClusterView:

    STATUS      -> on_status()      full snapshot: nodes + cumulative totals; also the
                                    coordinator's heartbeat to its monitors
    NODE_EVENT  -> on_node_event()  joined/suspect/dead/alive/left, with detection latency
                                    and partition-recovery time
    TASK_STATS  -> on_task_stats()  latencies of tasks finished since the previous batch
    garbage     -> on_bad_message()

The HTTP layer then reads health(), snapshot() (the /api/cluster document) and the
properties the Prometheus collector needs. Time comes from an injectable monotonic
clock, so tests drive the model with a fake clock and fabricated reports:

    view = ClusterView(clock=fake_clock)
    view.on_status(StatusReport(...))
    assert view.health()[0]

This module depends on nothing but the standard library; monitor.py adapts the wire
protocol's message classes into the small report types declared here.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

# Tunables ---------------------------------------------------------------------------------
DEFAULT_HEARTBEAT_INTERVAL_S = 0.5  # used until the first STATUS tells us the real one
DEFAULT_LIVENESS = 3
RATE_WINDOW_S = 5.0  # task rates are averaged over this many seconds of STATUS history
LATENCY_HISTORY_S = 120.0  # the dashboard's latency chart keeps this much history
LATENCY_HISTORY_POINTS = 600
EVENT_LOG_SIZE = 50  # most recent NODE_EVENTs kept for the dashboard

NODE_STATES = ("alive", "suspect", "dead", "left")
NODE_EVENTS = ("joined", "suspect", "dead", "alive", "left")
# The state a node is in right after each NODE_EVENT.
EVENT_STATES = {
    "joined": "alive",
    "alive": "alive",
    "suspect": "suspect",
    "dead": "dead",
    "left": "left",
}
TOTAL_FIELDS = (
    "submitted",
    "done",
    "failed",
    "retried",
    "requeued",
    "duplicates",
    "bad_messages",
    "aborted_handshakes",
    "denied_handshakes",
    "refused_registrations",
    "pending",
    "in_flight",
)

Clock = Callable[[], float]


# Inputs: what monitor.py hands over after decoding a status-channel message ---------------


@dataclass(frozen=True)
class NodeReport:
    """One node as a STATUS snapshot describes it."""

    node_id: str
    state: str
    last_seen_age_s: float
    in_flight: int = 0
    capacity: int = 0
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    load1: float = 0.0
    done: int = 0
    capabilities: tuple[str, ...] = ()


@dataclass(frozen=True)
class StatusReport:
    """A STATUS snapshot: the coordinator's heartbeat plus the whole cluster."""

    coordinator_id: str
    seq: int
    heartbeat_interval_s: float
    liveness: int
    nodes: tuple[NodeReport, ...]
    totals: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeEventReport:
    """A node changed state; `dead` carries detection latency, `alive` may carry recovery."""

    node_id: str
    event: str
    at: float
    detection_latency_s: float | None = None
    recovery_s: float | None = None


@dataclass(frozen=True)
class TaskStatsReport:
    """Latencies of the tasks that finished since the previous TASK_STATS."""

    latencies_s: tuple[float, ...]
    done: int
    failed: int


# State --------------------------------------------------------------------------------------


@dataclass
class DurationStat:
    """Last observed duration and how many were observed (detection, recovery)."""

    last_s: float | None = None
    count: int = 0

    def record(self, seconds: float) -> None:
        self.last_s = seconds
        self.count += 1

    def as_json(self) -> dict[str, object]:
        return {"last_s": self.last_s, "count": self.count}


@dataclass(frozen=True)
class NodeView:
    """A node as the monitor shows it: the latest report, aged by the time since it came."""

    report: NodeReport
    received_at: float

    def last_seen_age_s(self, now: float) -> float:
        # The coordinator measured the age when it sent the snapshot; time has passed since.
        return self.report.last_seen_age_s + max(0.0, now - self.received_at)

    def as_json(self, now: float) -> dict[str, object]:
        r = self.report
        return {
            "id": r.node_id,
            "state": r.state,
            "last_seen_age_s": round(self.last_seen_age_s(now), 3),
            "in_flight": r.in_flight,
            "capacity": r.capacity,
            "cpu_percent": r.cpu_percent,
            "memory_percent": r.memory_percent,
            "load1": r.load1,
            "done": r.done,
            "capabilities": list(r.capabilities),
        }


@dataclass(frozen=True)
class LatencyPoint:
    """One TASK_STATS batch summarised for the dashboard's chart."""

    at: float
    count: int
    p50_s: float
    p99_s: float
    max_s: float


def percentile(values: Iterable[float], fraction: float) -> float:
    """Nearest-rank percentile; 0.0 for no values. `fraction` is in [0, 1]."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class ClusterView:
    """Everything the monitor knows, updated by status-channel messages."""

    def __init__(
        self,
        heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S,
        liveness: int = DEFAULT_LIVENESS,
        clock: Clock = time.monotonic,
    ) -> None:
        self._clock = clock
        self._started_at = clock()
        self.heartbeat_interval_s = heartbeat_interval_s
        self.liveness = liveness
        self.coordinator_id: str | None = None
        self.last_seq: int | None = None
        self._coordinator_seen_at: float | None = None
        self._nodes: dict[str, NodeView] = {}
        self.totals: dict[str, int] = {name: 0 for name in TOTAL_FIELDS}
        self.failure_detection = DurationStat()
        self.partition_recovery = DurationStat()
        self.monitor_bad_messages = 0
        self.resubscribes = 0
        self.status_messages = 0
        self.node_events: dict[str, int] = {name: 0 for name in NODE_EVENTS}
        self.task_stats_done = 0
        self.task_stats_failed = 0
        self._totals_history: deque[tuple[float, dict[str, int]]] = deque()
        self._latency_history: deque[LatencyPoint] = deque(maxlen=LATENCY_HISTORY_POINTS)
        self._event_log: deque[tuple[float, NodeEventReport]] = deque(maxlen=EVENT_LOG_SIZE)

    # --- inputs ----------------------------------------------------------------------------

    def on_status(self, report: StatusReport) -> None:
        now = self._clock()
        if report.coordinator_id != self.coordinator_id:
            # A new coordinator (or a restarted one) starts its counters afresh.
            self._totals_history.clear()
        self.coordinator_id = report.coordinator_id
        self.last_seq = report.seq
        self._coordinator_seen_at = now
        # The coordinator's own timing wins over our command-line defaults.
        if report.heartbeat_interval_s > 0:
            self.heartbeat_interval_s = report.heartbeat_interval_s
        if report.liveness > 0:
            self.liveness = report.liveness
        self._nodes = {n.node_id: NodeView(n, now) for n in report.nodes}
        self.totals = {name: int(report.totals.get(name, 0)) for name in TOTAL_FIELDS}
        self._remember_totals(now)
        self.status_messages += 1

    def on_node_event(self, report: NodeEventReport) -> None:
        now = self._clock()
        if report.event in self.node_events:
            self.node_events[report.event] += 1
        if report.event == "dead" and report.detection_latency_s is not None:
            self.failure_detection.record(report.detection_latency_s)
        if report.event == "alive" and report.recovery_s is not None:
            self.partition_recovery.record(report.recovery_s)
        self._event_log.append((now, report))
        self._apply_event_state(report, now)

    def on_task_stats(self, report: TaskStatsReport) -> None:
        now = self._clock()
        self.task_stats_done += report.done
        self.task_stats_failed += report.failed
        if report.latencies_s:
            lat = report.latencies_s
            point = LatencyPoint(
                now, len(lat), percentile(lat, 0.50), percentile(lat, 0.99), max(lat)
            )
            self._latency_history.append(point)
        while self._latency_history and now - self._latency_history[0].at > LATENCY_HISTORY_S:
            self._latency_history.popleft()

    def on_bad_message(self) -> None:
        self.monitor_bad_messages += 1

    def on_resubscribe(self) -> None:
        """The monitor replaced its SUB socket after a long silence."""
        self.resubscribes += 1

    # --- derived state ----------------------------------------------------------------------

    @property
    def dead_after_s(self) -> float:
        """How long without a STATUS before the coordinator counts as gone."""
        return self.heartbeat_interval_s * (self.liveness + 1)

    def coordinator_age_s(self) -> float | None:
        if self._coordinator_seen_at is None:
            return None
        return self._clock() - self._coordinator_seen_at

    def coordinator_seen(self) -> bool:
        age = self.coordinator_age_s()
        return age is not None and age <= self.dead_after_s

    def nodes(self) -> list[NodeView]:
        return [self._nodes[key] for key in sorted(self._nodes)]

    def node_age_s(self, node: NodeView) -> float:
        return node.last_seen_age_s(self._clock())

    def node_counts(self) -> dict[str, int]:
        counts = {state: 0 for state in NODE_STATES}
        for view in self._nodes.values():
            counts[view.report.state] = counts.get(view.report.state, 0) + 1
        return counts

    def rates(self) -> dict[str, float]:
        """Tasks per second over the last RATE_WINDOW_S, from cumulative STATUS totals."""
        names = ("submitted", "done", "failed", "retried", "requeued")
        if len(self._totals_history) < 2:
            return {name: 0.0 for name in names}
        (t0, first), (t1, last) = self._totals_history[0], self._totals_history[-1]
        span = t1 - t0
        if span <= 0:
            return {name: 0.0 for name in names}
        return {name: max(0.0, (last[name] - first[name]) / span) for name in names}

    def uptime_s(self) -> float:
        return self._clock() - self._started_at

    # --- outputs ----------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, object]]:
        """(healthy, JSON body) for GET /health."""
        seen = self.coordinator_seen()
        age = self.coordinator_age_s()
        body: dict[str, object] = {
            "status": "ok" if seen else "unavailable",
            "coordinator": "seen" if seen else ("lost" if age is not None else "never seen"),
            "coordinator_id": self.coordinator_id,
            "last_seen_age_s": None if age is None else round(age, 3),
            "dead_after_s": self.dead_after_s,
        }
        return seen, body

    def snapshot(self) -> dict[str, object]:
        """The /api/cluster document (the contract's fields plus dashboard extras)."""
        now = self._clock()
        age = self.coordinator_age_s()
        return {
            "coordinator": {
                "seen": self.coordinator_seen(),
                "id": self.coordinator_id,
                "last_seen_age_s": None if age is None else round(age, 3),
                "seq": self.last_seq,
                "heartbeat_interval_s": self.heartbeat_interval_s,
                "liveness": self.liveness,
            },
            "nodes": [view.as_json(now) for view in self.nodes()],
            "node_counts": self.node_counts(),
            "totals": dict(self.totals),
            "rates": {name: round(value, 3) for name, value in self.rates().items()},
            "failure_detection": self.failure_detection.as_json(),
            "partition_recovery": self.partition_recovery.as_json(),
            "latency": [
                {
                    "age_s": round(now - p.at, 3),
                    "count": p.count,
                    "p50_ms": round(p.p50_s * 1000, 3),
                    "p99_ms": round(p.p99_s * 1000, 3),
                    "max_ms": round(p.max_s * 1000, 3),
                }
                for p in self._latency_history
            ],
            "events": [
                {
                    "age_s": round(now - received, 3),
                    "node": ev.node_id,
                    "event": ev.event,
                    "detection_latency_s": ev.detection_latency_s,
                    "recovery_s": ev.recovery_s,
                }
                for received, ev in reversed(self._event_log)
            ],
            "monitor": {
                "bad_messages": self.monitor_bad_messages,
                "uptime_s": round(self.uptime_s(), 3),
                "status_messages": self.status_messages,
                "resubscribes": self.resubscribes,
            },
        }

    # --- helpers ----------------------------------------------------------------------------

    def _apply_event_state(self, report: NodeEventReport, now: float) -> None:
        """Show a verdict at once instead of waiting up to one interval for the next STATUS."""
        view = self._nodes.get(report.node_id)
        state = EVENT_STATES.get(report.event)
        if view is None or state is None or view.report.state == state:
            return
        age = view.last_seen_age_s(now)
        if state == "alive":
            age = 0.0  # it just spoke
        self._nodes[report.node_id] = NodeView(
            replace(view.report, state=state, last_seen_age_s=age), now
        )

    def _remember_totals(self, now: float) -> None:
        history = self._totals_history
        if history and any(self.totals[k] < history[-1][1][k] for k in ("submitted", "done")):
            history.clear()  # counters went backwards: the coordinator restarted without state
        history.append((now, dict(self.totals)))
        while len(history) > 2 and now - history[1][0] >= RATE_WINDOW_S:
            history.popleft()
