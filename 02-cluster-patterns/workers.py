"""The coordinator's worker table: who holds which worker id, and what STATUS says of them.

Pure bookkeeping, no sockets and no clock of its own: the Dispatcher owns one table and
decides who may register (dispatcher.py). The table keeps

  * one ``WorkerRecord`` per worker id, with the routing id of the peer that holds it, its
    capacity, its liveness verdict and the tasks it holds (credit);
  * the reverse map routing id -> worker id;
  * a bound: the workers' share of a STATUS frame stays under STATUS_NODES_BUDGET_BYTES,
    forgetting dead and departed workers (longest silent first) to make room.

Run the unit tests:  python -m pytest tests/test_cluster_dispatcher.py -q
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

import msgspec

from cluster_patterns.heartbeat import Liveness
from cluster_patterns.protocol import MAX_MESSAGE_BYTES, NodeState, NodeStatus, Register

# The workers' share of one STATUS frame (which must stay below MAX_MESSAGE_BYTES). A typical
# worker is counted as about 370 bytes, so this admits some 2,100 workers.
STATUS_NODES_BUDGET_BYTES: Final = MAX_MESSAGE_BYTES * 3 // 4
# What one NodeStatus takes besides its id, capabilities and capacity: field names, the state
# and the widest numbers a heartbeat can put there.
NODE_STATUS_OVERHEAD_BYTES: Final = 320
SERVING: Final = (NodeState.ALIVE, NodeState.SUSPECT)
GONE: Final = (NodeState.DEAD, NodeState.LEFT)


@dataclass(slots=True)
class WorkerRecord:
    worker_id: str
    identity: bytes
    capacity: int
    capabilities: frozenset[str]
    liveness: Liveness
    assigned: set[str] = field(default_factory=set)
    # Tasks the worker still runs that we no longer count as assigned to it (timed out,
    # requeued, or from before it re-registered): they still occupy its credit.
    orphans: set[str] = field(default_factory=set)
    draining: bool = False
    last_dispatch: float = 0.0
    done: int = 0
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    load1: float = 0.0
    status_bytes: int = 0

    @property
    def in_flight(self) -> int:
        return len(self.assigned) + len(self.orphans)

    @property
    def free(self) -> int:
        if self.draining or self.liveness.state not in SERVING:
            return 0
        return max(0, self.capacity - self.in_flight)

    def node_status(self, now: float) -> NodeStatus:
        state = self.liveness.state
        return NodeStatus(
            node_id=self.worker_id,
            state=state,
            last_seen_age_s=round(self.liveness.age(now), 3),
            in_flight=self.in_flight if state is not NodeState.DEAD else 0,
            capacity=self.capacity,
            capabilities=sorted(self.capabilities),
            cpu_percent=self.cpu_percent,
            memory_percent=self.memory_percent,
            load1=self.load1,
            done=self.done,
        )


def status_bytes(msg: Register) -> int:
    """An upper bound of what this worker takes in a STATUS frame (JSON escapes included)."""
    text = msgspec.json.encode([msg.worker_id, msg.capabilities])  # the codec's own bytes
    return NODE_STATUS_OVERHEAD_BYTES + len(text) + 2 * len(str(msg.capacity))


class WorkerTable:
    """Worker records by worker id and by routing id, within the STATUS budget."""

    def __init__(self) -> None:
        self.records: dict[str, WorkerRecord] = {}
        self.by_identity: dict[bytes, str] = {}
        self.used_bytes = 0

    def __iter__(self) -> Iterator[WorkerRecord]:
        return iter(self.records.values())

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, worker_id: str) -> WorkerRecord:
        return self.records[worker_id]

    def get(self, worker_id: str) -> WorkerRecord | None:
        return self.records.get(worker_id)

    def of_identity(self, identity: bytes) -> WorkerRecord | None:
        return self.records.get(self.by_identity.get(identity, ""))

    def held_by(self, identity: bytes, worker_id: str) -> WorkerRecord | None:
        """The record of ``worker_id`` if the peer ``identity`` holds it, alive or not."""
        record = self.records.get(worker_id)
        return record if record is not None and record.identity == identity else None

    def make_room(self, msg: Register) -> bool:
        """Forget dead and departed workers, longest silent first, until ``msg``'s worker
        fits in the STATUS budget; False if the live workers alone fill it."""
        record = self.records.get(msg.worker_id)
        needed = status_bytes(msg) - (record.status_bytes if record else 0)
        while self.used_bytes + needed > STATUS_NODES_BUDGET_BYTES:
            gone = [w for w in self if w.worker_id != msg.worker_id and w.liveness.state in GONE]
            if not gone:
                return False
            self._forget(min(gone, key=lambda w: w.liveness.last_heard))
        return True

    def _forget(self, record: WorkerRecord) -> None:
        del self.records[record.worker_id]
        if self.by_identity.get(record.identity) == record.worker_id:
            del self.by_identity[record.identity]
        self.used_bytes -= record.status_bytes

    def bind(self, record: WorkerRecord, identity: bytes, msg: Register) -> None:
        """Give ``record`` to the peer ``identity`` with what its REGISTER announced."""
        if record.identity != identity and self.by_identity.get(record.identity) == msg.worker_id:
            del self.by_identity[record.identity]
        needed = status_bytes(msg)
        self.used_bytes += needed - record.status_bytes
        record.status_bytes = needed
        record.identity = identity
        record.capacity = msg.capacity
        record.capabilities = frozenset(msg.capabilities)
        self.records[msg.worker_id] = record
        self.by_identity[identity] = msg.worker_id

    def serving(self) -> Iterator[WorkerRecord]:
        """Workers that are alive or suspect: they get COORDINATOR_HEARTBEAT and tasks."""
        return (w for w in self.records.values() if w.liveness.state in SERVING)

    def node_statuses(self, now: float) -> list[NodeStatus]:
        return [w.node_status(now) for w in self.records.values()]
