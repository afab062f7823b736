"""The one transport module of 02 and 03: socket options, endpoints, bad-input counting,
and what a socket's handshake failures mean. It knows no message format (wire.py does).

Every socket configured here gets LINGER (so closing never hangs), high-water marks, and,
when it faces the network, MAXMSGSIZE (so a peer cannot make us allocate a huge frame).
``endpoint`` formats tcp:// addresses (IPv6 literals bracketed), ``is_loopback`` says whether
a bind address stays on this machine. ``RateLimitedLog`` is the one rate-limited logger;
``BadInput`` counts what peers send that a codec or a state machine refuses and logs it at
most once per second, so a flood of garbage neither kills a daemon nor fills its log.
CURVE lives in curve.py (cluster_keys.py for the cluster's roles).

libzmq reports failed handshakes on a socket monitor; ``classify`` sorts them three ways:

    ABORTED_HANDSHAKE  the peer closed before the handshake completed: a TCP health probe, a
                       socket closed while connecting. Normal traffic, not bad input.
    DENIED_HANDSHAKE   the security layer refused it: a CURVE key not on the allow-list,
                       one side with CURVE and the other without, a wrong server key.
    BAD_MESSAGE        a ZMTP protocol violation: counted with the malformed messages.

On a socket that connects, repeated aborted handshakes may hide a refusal: HandshakeWatch
then reads the server's greeting itself (``server_mechanism``).

A frame over MAXMSGSIZE is different: libzmq drops that peer's connection and reports only
an ordinary disconnect, so it cannot be counted (the peer's socket reconnects by itself).

This module binds and connects nothing by itself; see coordinator.py and worker.py.
"""

from __future__ import annotations

import enum
import ipaddress
import itertools
import math
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import Callable, Final, Iterator, TextIO, TypeVar

import zmq

from cluster_patterns.wire import WireError, describe

# How long close() may wait to hand queued messages to the kernel: a DEREGISTER or the last
# RESULTS still leave, and a peer that is gone never makes a close hang for long.
LINGER_MS: Final = 200
LOG_EVERY_S: Final = 1.0
# High-water marks, in messages, per peer and direction. Batches carry up to 128 tasks, so
# 10,000 messages are over a million tasks queued: a full pipe means a stuck peer.
HWM: Final = 10_000
# Sockets take frames up to this size, larger than any codec's limit, so a frame between the
# two still reaches the codec and is counted as bad; beyond it libzmq drops the connection.
SOCKET_MAX_MESSAGE_BYTES: Final = 4 << 20
# libzmq monitor events that mean "a peer spoke something that is not ZMTP".
HANDSHAKE_FAILURES: Final = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)

# A connecting socket whose server resets this many handshakes in a row, none completing,
# reads the server's greeting itself (see HandshakeWatch), at most once per PROBE_EVERY_S.
ABORTS_BEFORE_PROBE: Final = 2
PROBE_EVERY_S: Final = 5.0
PROBE_TIMEOUT_S: Final = 0.5
SUCCEEDED_EVENT_ID: Final = struct.pack("=H", zmq.EVENT_HANDSHAKE_SUCCEEDED)
# A ZMTP 3 greeting: signature, major version, then minor version, mechanism, as-server and
# filler. A server sends that rest once it has read the peer's signature and major version.
ZMTP_SIGNATURE: Final = b"\xff" + b"\x00" * 8 + b"\x7f"
ZMTP_MAJOR_VERSION: Final = b"\x03"
ZMTP_GREETING_BYTES: Final = 64
MECHANISM_NAMES: Final = {zmq.NULL: "NULL", zmq.PLAIN: "PLAIN", zmq.CURVE: "CURVE"}

# The class byte of libzmq's ZMTP security errors (CRYPTOGRAPHIC, MECHANISM_MISMATCH).
ZMTP_SECURITY_ERRORS: Final = 0x11000000
PROTOCOL_ERROR_NAMES: Final = {
    getattr(zmq, name): name.removeprefix("PROTOCOL_ERROR_")
    for name in dir(zmq)
    if name.startswith("PROTOCOL_ERROR_")
}

S = TypeVar("S", bound=zmq.Socket)  # type: ignore[type-arg]
M = TypeVar("M")


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
    """Whether binding ``host`` keeps a port on this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # "*", an interface name, a host name: reachable from elsewhere


def printable(text: str) -> str:
    """``text`` for a log line: control characters escaped, so a peer's id cannot forge lines."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def robust_console() -> None:
    """Make print() escape what the terminal's encoding cannot show instead of raising."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass  # a closed or unusual stream: keep it as it is


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


def decode_single(
    frames: list[bytes], decode: Callable[[bytes], M], bad: BadInput, sender: str
) -> M | None:
    """The one message in ``frames``, or None after counting it in ``bad`` (wrong number
    of frames, or a frame the codec refuses: any ``WireError``)."""
    if len(frames) != 1:
        bad.record(f"{len(frames)} frames from {sender} (expected 1)")
        return None
    try:
        return decode(frames[0])
    except WireError as exc:
        bad.record(f"{exc} in {describe(frames[0])}")
        return None


def queued_multipart(sock: zmq.Socket[bytes], limit: int | None = None) -> Iterator[list[bytes]]:
    """Each multipart message already waiting on ``sock``, without blocking: at most ``limit``
    (None: until nothing waits), so that a busy peer cannot keep a loop turn for itself."""
    received = 0
    while limit is None or received < limit:
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        received += 1
        yield frames


def queued_messages(
    sock: zmq.Socket[bytes], decode: Callable[[bytes], M]
) -> Iterator[tuple[bytes, M]]:
    """Each frame already queued on a synchronous single-frame socket (SUB, say) with its
    message, without waiting; a frame the codec refuses is skipped (an observer such as a
    status tap has no one to tell)."""
    while True:
        try:
            frame = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            message = decode(frame)
        except WireError:
            continue
        yield frame, message


# --- Handshake failures ------------------------------------------------------------------------


class PeerFault(enum.Enum):
    """What a failed handshake means for the counters in STATUS."""

    BAD_MESSAGE = "bad_message"
    ABORTED_HANDSHAKE = "aborted_handshake"
    DENIED_HANDSHAKE = "denied_handshake"


@dataclass(frozen=True)
class HandshakeFailure:
    fault: PeerFault
    endpoint: str
    reason: str
    # A ZAP refusal: the ZAP handler has logged it already, with address and key fingerprint.
    by_zap: bool = False


def classify(event: int, value: int, endpoint: str) -> HandshakeFailure | None:
    """One socket-monitor event as a HandshakeFailure (None for any other event)."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        why = "closed before the ZMTP handshake completed (a TCP probe or a peer giving up)"
        return HandshakeFailure(PeerFault.ABORTED_HANDSHAKE, endpoint, why)
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        why = f"the CURVE key was refused (ZAP status {value})"
        return HandshakeFailure(PeerFault.DENIED_HANDSHAKE, endpoint, why, by_zap=True)
    if event != zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return None
    name = PROTOCOL_ERROR_NAMES.get(value, hex(value))
    if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        why = "security mechanism mismatch: one side uses CURVE (--keys), the other does not"
        return HandshakeFailure(PeerFault.DENIED_HANDSHAKE, endpoint, why)
    if value & 0xFF000000 == ZMTP_SECURITY_ERRORS:
        why = f"the CURVE handshake failed ({name}): does the client have the right server key?"
        return HandshakeFailure(PeerFault.DENIED_HANDSHAKE, endpoint, why)
    return HandshakeFailure(PeerFault.BAD_MESSAGE, endpoint, f"ZMTP protocol error {name}")


def parse_monitor_event(frames: list[bytes]) -> HandshakeFailure | None:
    """A socket monitor's two frames (event id and value; endpoint) as a HandshakeFailure."""
    if len(frames) != 2 or len(frames[0]) != 6:
        return None
    event, value = struct.unpack("=HI", frames[0])
    return classify(event, value, frames[1].decode("utf-8", "replace"))


def server_mechanism(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """The mechanism a ZMTP 3 server at tcp://HOST:PORT names in its greeting, or None if it
    sends none in time (nothing listens, a proxy with nothing behind it, not ZMTP).

    We send only the first 11 bytes of a greeting, which is all a server waits for before it
    sends its whole one, and never our mechanism: a server that read a whole greeting with
    the wrong mechanism would close before sending its own (libzmq does), and that is the
    race a connecting libzmq socket loses. Our half-greeting costs the server one aborted
    handshake.
    """
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as conn:
            conn.sendall(ZMTP_SIGNATURE + ZMTP_MAJOR_VERSION)
            greeting = b""
            while len(greeting) < ZMTP_GREETING_BYTES:
                chunk = conn.recv(ZMTP_GREETING_BYTES - len(greeting))
                if not chunk:
                    return None
                greeting += chunk
    except (OSError, ValueError):
        return None
    if greeting[0] != 0xFF or greeting[9] != 0x7F or greeting[10] < 3:
        return None
    return greeting[12:32].rstrip(b"\x00").decode("ascii", "replace")


_watch_ids = itertools.count()


class HandshakeWatch:
    """Reports the failed handshakes of one socket, for a loop that polls now and then.

    The monitor's PAIR socket lives in a synchronous view of the watched socket's context, so
    the same class serves asyncio sockets (worker, client, monitor) and plain ones; it is read
    without blocking, from the thread that owns the watched socket.

    ``connecting=True`` is for a socket that connects to one server. When the two sides
    disagree on CURVE, the server closes as soon as it reads our greeting, and whether our
    libzmq reads the server's greeting first (MECHANISM_MISMATCH, after which it stops
    reconnecting) or only sees the connection reset (NO_DETAIL, and it tries again) is a
    race: measured here, about two starts in three ended in resets, some 40 in a row. A reset
    alone proves nothing (a proxy with no server behind it resets too), so after
    ABORTS_BEFORE_PROBE resets in a row the watch reads the server's greeting over a plain
    TCP connection (``server_mechanism``): a mechanism other than ours is the refusal.
    """

    def __init__(
        self,
        sock: zmq.Socket,  # type: ignore[type-arg]
        *,
        connecting: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._watched = sock
        self._connecting = connecting
        self._clock = clock
        self._aborts_in_a_row = 0
        self._probed_at = -math.inf
        address = f"inproc://handshakes-{os.getpid()}-{next(_watch_ids)}"
        events = HANDSHAKE_FAILURES | (zmq.EVENT_HANDSHAKE_SUCCEEDED if connecting else 0)
        sock.monitor(address, events)
        self.socket: zmq.Socket[bytes] = zmq.Context.shadow(sock.context.underlying).socket(
            zmq.PAIR
        )
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address)

    def failures(self) -> list[HandshakeFailure]:
        """Every failure reported since the last call (never blocks)."""
        found: list[HandshakeFailure] = []
        for frames in queued_multipart(self.socket):
            if self._connecting and frames and frames[0][:2] == SUCCEEDED_EVENT_ID:
                self._aborts_in_a_row = 0
                continue
            failure = parse_monitor_event(frames)
            if failure is not None:
                found.append(failure)
                found.extend(self._refusal_behind(failure))
        return found

    def _refusal_behind(self, failure: HandshakeFailure) -> list[HandshakeFailure]:
        """The refusal that repeated resets of a connecting socket hide (or nothing)."""
        if not self._connecting or failure.fault is not PeerFault.ABORTED_HANDSHAKE:
            return []
        self._aborts_in_a_row += 1
        now = self._clock()
        if self._aborts_in_a_row < ABORTS_BEFORE_PROBE or now - self._probed_at < PROBE_EVERY_S:
            return []
        self._probed_at = now
        theirs = server_mechanism(failure.endpoint)
        mechanism = self._watched.getsockopt(zmq.MECHANISM)
        ours = MECHANISM_NAMES.get(zmq.SecurityMechanism(int(mechanism)), "?")
        if theirs is None or theirs == ours:
            return []  # no greeting (a proxy, a stalled server) or the same: keep trying
        why = f"security mechanism mismatch: the server uses {theirs}, this side {ours}"
        return [HandshakeFailure(PeerFault.DENIED_HANDSHAKE, failure.endpoint, why)]

    def close(self) -> None:
        if not self._watched.closed:
            self._watched.disable_monitor()
        self.socket.close(linger=0)
