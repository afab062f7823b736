"""The monitor's picture of the cluster: a pure state model, no sockets, no HTTP.

The monitor SUBscribes to the coordinator's status channel (tcp://COORDINATOR:5571);
status_follower.py decodes every frame and routes the message, as the protocol's own type,
to one of these:

    Status     -> do_Status     full snapshot: nodes + cumulative totals; also the
                                coordinator's heartbeat to its monitors
    NodeEvent  -> do_NodeEvent  joined/suspect/dead/alive/left, with detection latency
                                and partition-recovery time
    TaskStats  -> do_TaskStats  latencies of tasks finished since the previous batch

The HTTP layer then reads health(), snapshot() (the /api/cluster document) and the
properties the Prometheus collector needs. Time comes from an injected monotonic clock, so
tests drive the model with a fake clock and messages built with the protocol's classes:

    view = ClusterView(clock=fake_clock)
    view.do_Status(Status(coordinator_id="c1", seq=1, ...))
    assert view.health()[0]
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cluster_patterns import defaults
from cluster_patterns.protocol import NodeEvent, NodeStatus, Status, TaskStats  # messages
from cluster_patterns.protocol import NodeEventKind, NodeState  # their closed value sets
from cluster_patterns.stats import percentile

# Tunables ---------------------------------------------------------------------------------
RATE_WINDOW_S: Final = 5.0  # task rates are averaged over this many seconds of STATUS history
# STATUS comes once per heartbeat interval; a coordinator publishing far faster must not grow
# the rate window's history: past this many points the window just gets shorter.
TOTALS_HISTORY_POINTS: Final = 1000
LATENCY_HISTORY_S: Final = 120.0  # the dashboard's latency chart keeps this much history
LATENCY_HISTORY_POINTS: Final = 600
EVENT_LOG_SIZE: Final = 50  # most recent NODE_EVENTs kept for the dashboard

# The state a node is in right after each NODE_EVENT.
EVENT_STATES: Final = {
    NodeEventKind.JOINED: NodeState.ALIVE,
    NodeEventKind.ALIVE: NodeState.ALIVE,
    NodeEventKind.SUSPECT: NodeState.SUSPECT,
    NodeEventKind.DEAD: NodeState.DEAD,
    NodeEventKind.LEFT: NodeState.LEFT,
}
# The fields of STATUS's totals, in the order /api/cluster lists them.
TOTAL_FIELDS: Final = (
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
    "refused_tasks",
    "pending",
    "in_flight",
)
RATE_FIELDS: Final = ("submitted", "done", "failed", "retried", "requeued")

Clock = Callable[[], float]


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
    """A node as the monitor shows it: the latest STATUS entry, with the verdict of any
    NODE_EVENT since, aged by the time since it came."""

    status: NodeStatus
    state: NodeState
    age_s: float  # the coordinator's age of the node's last message, at received_at
    received_at: float

    @property
    def node_id(self) -> str:
        return str(self.status.node_id)

    def last_seen_age_s(self, now: float) -> float:
        # The coordinator measured the age when it sent the snapshot; time has passed since.
        return self.age_s + max(0.0, now - self.received_at)

    def as_json(self, now: float) -> dict[str, object]:
        s = self.status
        return {
            "id": s.node_id,
            "state": self.state.value,
            "last_seen_age_s": round(self.last_seen_age_s(now), 3),
            "in_flight": s.in_flight,
            "capacity": s.capacity,
            "cpu_percent": s.cpu_percent,
            "memory_percent": s.memory_percent,
            "load1": s.load1,
            "done": s.done,
            "capabilities": list(s.capabilities),
        }


@dataclass(frozen=True)
class LatencyPoint:
    """One TASK_STATS batch summarised for the dashboard's chart."""

    at: float
    count: int
    p50_s: float
    p99_s: float
    max_s: float


@dataclass(frozen=True)
class EventEntry:
    """A NODE_EVENT as the dashboard's event list shows it."""

    received_at: float
    kind: NodeEventKind
    event: NodeEvent


class ClusterView:
    """Everything the monitor knows, updated by status-channel messages."""

    def __init__(
        self,
        heartbeat_interval_s: float = defaults.HEARTBEAT_INTERVAL_S,
        liveness: int = defaults.LIVENESS,
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
        self.bad_http_requests = 0
        self.resubscribes = 0
        self.status_messages = 0
        self.node_events: dict[NodeEventKind, int] = {kind: 0 for kind in NodeEventKind}
        self.task_stats_done = 0
        self.task_stats_failed = 0
        self._totals_history: deque[tuple[float, dict[str, int]]] = deque(
            maxlen=TOTALS_HISTORY_POINTS
        )
        self._latency_history: deque[LatencyPoint] = deque(maxlen=LATENCY_HISTORY_POINTS)
        self._event_log: deque[EventEntry] = deque(maxlen=EVENT_LOG_SIZE)

    # --- inputs ----------------------------------------------------------------------------

    def do_Status(self, msg: Status) -> None:
        now = self._clock()
        if msg.coordinator_id != self.coordinator_id:
            # A new coordinator (or a restarted one) starts its counters afresh.
            self._totals_history.clear()
        self.coordinator_id = msg.coordinator_id
        self.last_seq = msg.seq
        self._coordinator_seen_at = now
        # The coordinator's own timing wins over our command-line defaults.
        if msg.heartbeat_interval_s > 0:
            self.heartbeat_interval_s = msg.heartbeat_interval_s
        if msg.liveness > 0:
            self.liveness = msg.liveness
        self._nodes = {
            n.node_id: NodeView(n, NodeState(n.state), n.last_seen_age_s, now) for n in msg.nodes
        }
        self.totals = {name: int(getattr(msg.totals, name)) for name in TOTAL_FIELDS}
        self._remember_totals(now)
        self.status_messages += 1

    def do_NodeEvent(self, msg: NodeEvent) -> None:
        now = self._clock()
        kind = NodeEventKind(msg.event)
        self.node_events[kind] += 1
        if kind is NodeEventKind.DEAD and msg.detection_latency_s is not None:
            self.failure_detection.record(msg.detection_latency_s)
        if kind is NodeEventKind.ALIVE and msg.recovery_s is not None:
            self.partition_recovery.record(msg.recovery_s)
        self._event_log.append(EventEntry(now, kind, msg))
        self._apply_event_state(msg.node_id, EVENT_STATES[kind], now)

    def do_TaskStats(self, msg: TaskStats) -> None:
        now = self._clock()
        self.task_stats_done += msg.done
        self.task_stats_failed += msg.failed
        latencies = msg.latencies_s
        if latencies:
            p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
            self._latency_history.append(
                LatencyPoint(now, len(latencies), p50, p99, max(latencies))
            )
        while self._latency_history and now - self._latency_history[0].at > LATENCY_HISTORY_S:
            self._latency_history.popleft()

    def on_bad_message(self) -> None:
        self.monitor_bad_messages += 1

    def on_bad_http_request(self) -> None:
        """The HTTP server refused a request it could not parse (or one over its limits)."""
        self.bad_http_requests += 1

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

    def node_counts(self) -> dict[NodeState, int]:
        counts = {state: 0 for state in NodeState}
        for view in self._nodes.values():
            counts[view.state] += 1
        return counts

    def rates(self) -> dict[str, float]:
        """Tasks per second over the last RATE_WINDOW_S, from cumulative STATUS totals."""
        if len(self._totals_history) < 2:
            return {name: 0.0 for name in RATE_FIELDS}
        (t0, first), (t1, last) = self._totals_history[0], self._totals_history[-1]
        span = t1 - t0
        if span <= 0:
            return {name: 0.0 for name in RATE_FIELDS}
        return {name: max(0.0, (last[name] - first[name]) / span) for name in RATE_FIELDS}

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
            "node_counts": {state.value: count for state, count in self.node_counts().items()},
            "totals": dict(self.totals),
            "rates": {name: round(value, 3) for name, value in self.rates().items()},
            "failure_detection": self.failure_detection.as_json(),
            "partition_recovery": self.partition_recovery.as_json(),
            "latency": [_latency_json(point, now) for point in self._latency_history],
            "events": [_event_json(entry, now) for entry in reversed(self._event_log)],
            "monitor": {
                "bad_messages": self.monitor_bad_messages,
                "bad_http_requests": self.bad_http_requests,
                "uptime_s": round(self.uptime_s(), 3),
                "status_messages": self.status_messages,
                "resubscribes": self.resubscribes,
            },
        }

    # --- helpers ----------------------------------------------------------------------------

    def _apply_event_state(self, node_id: str, state: NodeState, now: float) -> None:
        """Show a verdict at once instead of waiting up to one interval for the next STATUS."""
        view = self._nodes.get(node_id)
        if view is None or view.state is state:
            return
        age = 0.0 if state is NodeState.ALIVE else view.last_seen_age_s(now)  # alive: it spoke
        self._nodes[node_id] = NodeView(view.status, state, age, now)

    def _remember_totals(self, now: float) -> None:
        history = self._totals_history
        if history and any(self.totals[k] < history[-1][1][k] for k in ("submitted", "done")):
            history.clear()  # counters went backwards: the coordinator restarted without state
        history.append((now, dict(self.totals)))
        while len(history) > 2 and now - history[1][0] >= RATE_WINDOW_S:
            history.popleft()


def _latency_json(point: LatencyPoint, now: float) -> dict[str, object]:
    return {
        "age_s": round(now - point.at, 3),
        "count": point.count,
        "p50_ms": round(point.p50_s * 1000, 3),
        "p99_ms": round(point.p99_s * 1000, 3),
        "max_ms": round(point.max_s * 1000, 3),
    }


def _event_json(entry: EventEntry, now: float) -> dict[str, object]:
    return {
        "age_s": round(now - entry.received_at, 3),
        "node": entry.event.node_id,
        "event": entry.kind.value,
        "detection_latency_s": entry.event.detection_latency_s,
        "recovery_s": entry.event.recovery_s,
    }
