"""Socket plumbing shared by the coordinator, worker and client: safe options, bad-input log.

Every socket made here gets LINGER (so closing never hangs) and, when it faces the
network, MAXMSGSIZE (so a peer cannot make us allocate a huge frame). ``BadInput`` counts
what peers send that the codec or the state machine refuses, and logs it at most once per
second, so a flood of garbage neither kills a daemon nor fills its log.

This module binds and connects nothing by itself; see coordinator.py and worker.py.
"""

from __future__ import annotations

import ipaddress
import math
import sys
import time
from typing import Callable, Final, TextIO, TypeVar

import zmq

from cluster_patterns.protocol import (
    SOCKET_MAX_MESSAGE_BYTES,
    Message,
    ProtocolError,
    decode,
    describe,
)

LINGER_MS: Final = 200
LOG_EVERY_S: Final = 1.0
# High-water marks in messages; batches carry up to MAX_BATCH tasks, so this is plenty.
HWM: Final = 10_000
# libzmq monitor events that mean "a peer spoke something that is not ZMTP".
HANDSHAKE_FAILURES: Final = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)

S = TypeVar("S", bound=zmq.Socket)  # type: ignore[type-arg]


def configure(
    sock: S,
    *,
    network: bool = True,
    routing_id: bytes | None = None,
    max_message_bytes: int = SOCKET_MAX_MESSAGE_BYTES,
    linger_ms: int = LINGER_MS,
    sndhwm: int = HWM,
    rcvhwm: int = HWM,
) -> S:
    """Apply the options every socket of this project needs; returns the socket.

    The keyword defaults are the cluster's; another protocol passes its own frame limit
    (``max_message_bytes``) and, where it bounds memory otherwise, its own high-water marks
    (0 is unbounded: the node agent's credit window bounds its queue instead).
    """
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    if network:
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    return sock


def endpoint(host: str, port: int) -> str:
    """tcp://HOST:PORT, with IPv6 literals bracketed."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ::1 (brackets allowed)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class RateLimitedLog:
    """Emits the first line at once, then at most one line per ``every_s``, saying how many
    were suppressed in between: a flood of bad input can neither fill a log nor slow a loop.
    """

    def __init__(
        self,
        emit: Callable[[str], None],
        every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emit = emit
        self._every_s = every_s
        self._clock = clock
        self._last = -math.inf
        self._suppressed = 0

    def __call__(self, text: str) -> None:
        now = self._clock()
        if now - self._last < self._every_s:
            self._suppressed += 1
            return
        more = f" (+{self._suppressed} more suppressed)" if self._suppressed else ""
        self._emit(f"{text}{more}")
        self._last = now
        self._suppressed = 0


def print_to(stream: TextIO | None) -> Callable[[str], None]:
    """An ``emit`` for RateLimitedLog that prints one line (stderr when ``stream`` is None)."""

    def emit(line: str) -> None:
        print(line, file=stream or sys.stderr, flush=True)

    return emit


class BadInput:
    """Counts refused input and logs it, rate-limited, on one line per event."""

    def __init__(self, who: str, stream: TextIO | None = None) -> None:
        self.who = who
        self.count = 0
        self._log = RateLimitedLog(print_to(stream))

    def record(self, what: str) -> None:
        self.count += 1
        self._log(f"{self.who}: bad message #{self.count} dropped: {what}")


def decode_from_coordinator(frames: list[bytes], bad: BadInput) -> Message | None:
    """The one message a DEALER got from the coordinator, or None (counted in ``bad``)."""
    if len(frames) != 1:
        bad.record(f"{len(frames)} frames from the coordinator (expected 1)")
        return None
    try:
        return decode(frames[0])
    except ProtocolError as exc:
        bad.record(f"{exc} in {describe(frames[0])}")
        return None
