"""Pure liveness logic: alive -> suspect -> dead on a monotonic clock, plus reconnect backoff.

No sockets and no clock of its own: every method takes ``now`` (seconds from
``time.monotonic()``), so tests drive it with a fake clock. The coordinator keeps one
``Liveness`` per worker, the worker keeps one for the coordinator, and the monitor can keep
one for the coordinator too. Any message from the peer counts as a heartbeat (``heard``).

    age = now - last heard
    age <= SUSPECT point                 -> alive
    SUSPECT point < age <= DEAD point    -> suspect   (heals on the next message)
    age > DEAD point                     -> dead      (verdict; only a new message revives)

    DEAD point    = interval * liveness                 (0.5 s * 3 = 1.5 s by default)
    SUSPECT point = interval * (liveness + 1) / 2       (1.0 s by default)

With the defaults a silent worker is declared dead 1.5 s after its last message, plus at
most one check period; the budget a monitor allows is interval * (liveness + 1) = 2.0 s.

Try it:  python -c "from cluster_patterns.heartbeat import *; l = Liveness(0.5, 3, 0.0); \\
                    print(l.check(1.2), l.check(1.6), l.heard(3.0))"
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

from cluster_patterns.protocol import NodeState

# Reconnect backoff of a worker that lost its coordinator.
BACKOFF_INITIAL_S: Final = 0.25
BACKOFF_FACTOR: Final = 2.0
BACKOFF_MAX_S: Final = 4.0


@dataclass(frozen=True)
class Transition:
    """A change of a peer's state, with the figures the status channel reports."""

    old: NodeState
    new: NodeState
    at: float
    detection_latency_s: float | None = None
    recovery_s: float | None = None


class Liveness:
    """Tracks one peer. ``heard`` on every message; ``check`` on a timer."""

    def __init__(self, interval_s: float, liveness: int, now: float) -> None:
        self.retune(interval_s, liveness)
        self.last_heard = now
        self.state = NodeState.ALIVE
        self.dead_since: float | None = None

    def retune(self, interval_s: float, liveness: int) -> None:
        """New settings (a worker adopting its coordinator's); the silence so far counts."""
        if interval_s <= 0 or liveness < 1:
            raise ValueError("interval must be > 0 and liveness >= 1")
        self.interval_s = interval_s
        self.liveness = liveness
        self.dead_after_s = interval_s * liveness
        self.suspect_after_s = interval_s * (liveness + 1) / 2

    def age(self, now: float) -> float:
        return max(0.0, now - self.last_heard)

    # --8<-- [start:liveness]
    def heard(self, now: float) -> Transition | None:
        """The peer sent something. Returns the transition if it was suspect or dead."""
        self.last_heard = max(self.last_heard, now)
        old = self.state
        if old is NodeState.ALIVE:
            return None
        self.state = NodeState.ALIVE
        recovery = None
        if old is NodeState.DEAD and self.dead_since is not None:
            recovery = now - self.dead_since
        self.dead_since = None
        return Transition(old, NodeState.ALIVE, now, recovery_s=recovery)

    def check(self, now: float) -> Transition | None:
        """Advance the verdict for the silence so far; returns the transition, if any."""
        if self.state in (NodeState.DEAD, NodeState.LEFT):
            return None
        age = self.age(now)
        if age > self.dead_after_s:
            old, self.state, self.dead_since = self.state, NodeState.DEAD, now
            return Transition(old, NodeState.DEAD, now, detection_latency_s=age)
        if age > self.suspect_after_s and self.state is NodeState.ALIVE:
            self.state = NodeState.SUSPECT
            return Transition(NodeState.ALIVE, NodeState.SUSPECT, now)
        return None

    # --8<-- [end:liveness]

    def leave(self, now: float) -> Transition | None:
        """The peer said goodbye: no more verdicts until it is heard again."""
        if self.state is NodeState.LEFT:
            return None
        old, self.state = self.state, NodeState.LEFT
        return Transition(old, NodeState.LEFT, now)


class Backoff:
    """Exponential backoff with "equal jitter" and a cap: each delay is drawn uniformly from
    [ceiling/2, ceiling], where the ceiling doubles per attempt up to ``maximum_s``; reset()
    (on WELCOME) starts again from ``initial_s``. Half of the wait is fixed, so a peer never
    retries at once; the random half keeps a crowd of peers from reconnecting in step."""

    def __init__(
        self,
        initial_s: float = BACKOFF_INITIAL_S,
        maximum_s: float = BACKOFF_MAX_S,
        factor: float = BACKOFF_FACTOR,
        rng: random.Random | None = None,
    ) -> None:
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.factor = factor
        self.attempt = 0
        self._rng = rng or random.Random()

    # --8<-- [start:backoff]
    def ceiling(self) -> float:
        return float(min(self.maximum_s, self.initial_s * self.factor**self.attempt))

    def delay(self) -> float:
        """The next wait: uniform in [ceiling/2, ceiling]."""
        top = self.ceiling()
        self.attempt += 1
        return top / 2 + self._rng.uniform(0, top / 2)

    # --8<-- [end:backoff]

    def reset(self) -> None:
        self.attempt = 0
