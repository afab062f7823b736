"""``transport.queued_multipart``: what is waiting, never a wait, at most ``limit`` a turn.

Real sockets (a ROUTER and a DEALER over inproc), as the coordinator's loop reads them.
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from cluster_patterns.transport import queued_multipart

MESSAGES = 5


def wait_until_waiting(sock: Any, count: int) -> None:
    """inproc delivers at once, but POLLIN says so only once the first frame is in."""
    deadline = time.monotonic() + 5.0
    while not sock.poll(0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sock.poll(0), f"none of {count} messages arrived"


def test_a_limit_leaves_the_rest_for_the_next_turn(ctx: Any) -> None:
    router = ctx.socket(zmq.ROUTER)
    router.bind("inproc://queued")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect("inproc://queued")
    for number in range(MESSAGES):
        dealer.send(b"%d" % number)
    wait_until_waiting(router, MESSAGES)
    first = [frames[1] for frames in queued_multipart(router, limit=3)]
    rest = [frames[1] for frames in queued_multipart(router)]
    assert first == [b"0", b"1", b"2"] and rest == [b"3", b"4"]
    started = time.monotonic()
    assert list(queued_multipart(router)) == []  # nothing waits: no blocking, no error
    assert time.monotonic() - started < 1.0
