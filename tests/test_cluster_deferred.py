"""The coordinator's replies to a client whose queue is full wait a turn, within two caps.

A client that never reads must not take every waiting place from the others. The
coordinator is real (its loop's send step and its sockets, never bound); only its ROUTER is
replaced by a stand-in that says "queue full" for the clients the test names.
"""

from __future__ import annotations

from typing import Any

import pytest
import zmq

from cluster_patterns import coordinator as coordinator_module
from cluster_patterns.coordinator import MAX_DEFERRED_PER_PEER, Coordinator, CoordinatorConfig
from cluster_patterns.protocol import Accepted, Message

STUCK = b"client:stuck"
HEALTHY = b"client:healthy"


class FullFor:
    """A ROUTER stand-in: sends to the ``full`` routing ids fail with EAGAIN."""

    def __init__(self, full: set[bytes]) -> None:
        self.full = full
        self.sent: list[bytes] = []

    def send_multipart(self, frames: list[bytes], flags: int = 0) -> None:
        if frames[0] in self.full:
            raise zmq.Again()
        self.sent.append(frames[0])


@pytest.fixture
def coordinator() -> Any:
    built = Coordinator(CoordinatorConfig())
    real = built.router
    yield built
    built.router = real
    built.close()
    built.ctx.term()


def replies(identity: bytes, count: int) -> list[tuple[bytes, Message]]:
    return [(identity, Accepted(task_ids=[f"t{n}"])) for n in range(count)]


def test_a_client_that_never_reads_holds_at_most_its_share(coordinator: Any) -> None:
    coordinator.router = FullFor({STUCK})
    for _turn in range(3):
        coordinator._send(replies(STUCK, 3 * MAX_DEFERRED_PER_PEER), 0.0)
    assert len(coordinator.deferred) == MAX_DEFERRED_PER_PEER
    # Another client whose queue fills for a moment still gets its place...
    coordinator.router = FullFor({STUCK, HEALTHY})
    coordinator._send(replies(HEALTHY, 5), 0.0)
    waiting = [identity for identity, _ in coordinator.deferred]
    assert waiting.count(HEALTHY) == 5 and waiting.count(STUCK) == MAX_DEFERRED_PER_PEER
    # ...and once it reads again, what waited for it is delivered first.
    router = FullFor({STUCK})
    coordinator.router = router
    coordinator._send(replies(HEALTHY, 1), 0.0)
    assert router.sent == [HEALTHY] * 6


def test_the_cap_on_all_waiting_replies_still_holds(
    coordinator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coordinator_module, "MAX_DEFERRED", 150)
    clients = {b"client:%d" % n for n in range(4)}
    coordinator.router = FullFor(clients)
    coordinator._send([r for c in sorted(clients) for r in replies(c, 60)], 0.0)
    assert len(coordinator.deferred) == 150
