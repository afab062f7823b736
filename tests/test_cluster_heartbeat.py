"""heartbeat.py with a fake clock: alive -> suspect -> dead, healing, recovery time, backoff."""

from __future__ import annotations

import random

import pytest

from cluster_patterns.heartbeat import Backoff, Liveness
from cluster_patterns.protocol import NodeState


def test_silence_walks_alive_suspect_dead() -> None:
    live = Liveness(0.5, 3, now=100.0)
    assert live.check(100.9) is None and live.state is NodeState.ALIVE
    suspect = live.check(101.01)
    assert suspect is not None and suspect.new is NodeState.SUSPECT
    assert live.check(101.4) is None
    dead = live.check(101.6)
    assert dead is not None and dead.new is NodeState.DEAD
    assert dead.detection_latency_s == pytest.approx(1.6)
    assert live.check(150.0) is None  # a verdict is given once


def test_default_detection_is_under_two_seconds() -> None:
    live = Liveness(0.5, 3, now=0.0)
    t = 0.0
    while live.state is not NodeState.DEAD:
        t += 0.05  # the coordinator checks ten times per interval
        live.check(t)
    assert t < 2.0


def test_suspect_heals_on_any_traffic() -> None:
    live = Liveness(0.5, 3, now=0.0)
    live.check(1.2)
    assert live.state is NodeState.SUSPECT
    healed = live.heard(1.3)
    assert healed is not None and healed.new is NodeState.ALIVE and healed.recovery_s is None
    assert live.check(2.2) is None and live.state is NodeState.ALIVE


def test_dead_comes_back_with_recovery_time() -> None:
    live = Liveness(1.0, 2, now=0.0)
    live.check(2.5)
    assert live.state is NodeState.DEAD
    back = live.heard(6.0)
    assert back is not None and back.old is NodeState.DEAD
    assert back.recovery_s == pytest.approx(3.5)


def test_heard_keeps_alive_and_clock_never_goes_back() -> None:
    live = Liveness(0.5, 3, now=10.0)
    assert live.heard(11.0) is None
    live.heard(10.5)  # an out-of-order timestamp does not rewind last_heard
    assert live.age(11.2) == pytest.approx(0.2)


def test_left_is_final_until_heard() -> None:
    live = Liveness(0.5, 3, now=0.0)
    left = live.leave(0.1)
    assert left is not None and left.new is NodeState.LEFT
    assert live.check(100.0) is None and live.state is NodeState.LEFT


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Liveness(0, 3, 0.0)
    with pytest.raises(ValueError):
        Liveness(0.5, 0, 0.0)


def test_backoff_grows_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(initial_s=0.1, maximum_s=1.0, rng=random.Random(7))
    delays = [backoff.delay() for _ in range(8)]
    ceilings = [min(1.0, 0.1 * 2**i) for i in range(8)]
    for delay, top in zip(delays, ceilings):
        assert top / 2 <= delay <= top
    assert max(delays) <= 1.0
    backoff.reset()
    assert backoff.delay() <= 0.1
