"""The monitor's end of the status channel: decode each frame, count what is bad, route the rest.

Connects: SUB tcp://COORDINATOR:5571 (subscribed to everything; the monitor binds nothing
on the ZeroMQ side and never sends, so any number of monitors can follow one coordinator).

Two classes, so the logic is testable without a socket:

    StatusChannel   pure: frames in -> ClusterView and ClusterMetrics updated, through a
                    do_<Message> table; anything the codec refuses, or a valid message the
                    channel does not carry, is counted and logged (rate-limited)
    StatusFollower  owns the SUB socket: receives, watches handshakes (a coordinator that
                    refuses our CURVE key ends the monitor), and reconnects after a long
                    silence

    channel = StatusChannel(view, metrics)
    channel.handle([encode(status)])  # what the follower does with every message
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

import zmq
import zmq.asyncio

from cluster_patterns.cluster_keys import ClientKeys, refusal_hint, secure_client
from cluster_patterns.cluster_metrics import ClusterMetrics
from cluster_patterns.cluster_view import ClusterView
from cluster_patterns.protocol import (
    NodeEvent,
    NodeEventKind,
    ProtocolError,
    Status,
    TaskStats,
    decode,
    describe,
    handler_table,
)
from cluster_patterns.transport import (
    HandshakeWatch,
    PeerFault,
    RateLimitedLog,
    configure,
    printable,
)

# Tunables ---------------------------------------------------------------------------------
BAD_LOG_INTERVAL_S: Final = 5.0  # at most one log line per this many seconds about bad input
RECONNECT_IVL_MS: Final = 100  # SUB reconnects quickly after a coordinator restart...
RECONNECT_IVL_MAX_MS: Final = 2000  # ...backing off to at most this
ZMQ_HEARTBEAT_IVL_MS: Final = 1000  # ZMTP pings notice a half-open TCP connection
ZMQ_HEARTBEAT_TIMEOUT_MS: Final = 3000
POLL_MS: Final = 200  # how often the receive loop wakes up to check for a silent coordinator
RESUBSCRIBE_AFTER_LIVENESS: Final = 2  # silent for 2 x interval*(liveness+1): new SUB socket
MIN_RESUBSCRIBE_S: Final = 3.0

Clock = Callable[[], float]
log = logging.getLogger("monitor")


class StatusChannel:
    """Routes each status-channel message to the view and the metrics; counts the rest."""

    def __init__(
        self, view: ClusterView, metrics: ClusterMetrics, clock: Clock = time.monotonic
    ) -> None:
        self.view = view
        self.metrics = metrics
        self._bad_log = RateLimitedLog(log.warning, BAD_LOG_INTERVAL_S, clock)
        self._handlers = handler_table(self)

    def handle(self, frames: list[bytes]) -> None:
        if len(frames) != 1:
            self._bad(f"expected 1 frame, got {len(frames)}: {describe(b''.join(frames))}")
            return
        try:
            message = decode(frames[0])
        except ProtocolError as exc:
            self._bad(f"{exc}: {describe(frames[0])}")
            return
        handler = self._handlers.get(type(message))
        if handler is None:  # a valid message, but not one the status channel carries
            self._bad(f"unexpected {type(message).__name__} on the status channel")
            return
        handler(message)

    def do_Status(self, msg: Status) -> None:
        self.view.do_Status(msg)

    def do_NodeEvent(self, msg: NodeEvent) -> None:
        self.view.do_NodeEvent(msg)
        self.metrics.do_NodeEvent(msg)
        log.info("node %s %s", printable(msg.node_id), NodeEventKind(msg.event).value)

    def do_TaskStats(self, msg: TaskStats) -> None:
        self.view.do_TaskStats(msg)
        self.metrics.do_TaskStats(msg)

    def _bad(self, text: str) -> None:
        self.view.on_bad_message()
        self._bad_log(f"dropped bad status message: {printable(text)}")


class StatusRefused(Exception):
    """The coordinator refused the status channel's handshake (CURVE key or mechanism)."""


class StatusFollower:
    """Owns the SUB socket and feeds every message it receives to a StatusChannel.

    libzmq reconnects a SUB by itself after a network error, but not after a protocol
    error (a frame beyond MAXMSGSIZE ends that session for good). So when no STATUS has
    arrived for RESUBSCRIBE_AFTER_LIVENESS coordinator-dead periods, the follower throws
    the socket away and connects a fresh one (counted as a resubscribe).
    """

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        channel: StatusChannel,
        keys: ClientKeys | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.channel = channel
        self._view = channel.view
        self._ctx = ctx
        self._endpoint = endpoint
        self._keys = keys
        self._clock = clock
        self._sock, self._watch = self._connect()
        self._quiet_since = clock()

    # --8<-- [start:connect]
    def _connect(self) -> tuple[zmq.asyncio.Socket, HandshakeWatch]:
        sock = configure(self._ctx.socket(zmq.SUB))  # LINGER, HWMs, MAXMSGSIZE
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        sock.setsockopt(zmq.HEARTBEAT_IVL, ZMQ_HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMQ_HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        secure_client(sock, self._keys)  # CURVE options go before connect
        watch = HandshakeWatch(sock, connecting=True)
        try:
            sock.connect(self._endpoint)
        except zmq.ZMQError:
            watch.close()
            sock.close(linger=0)  # or ctx.term() would wait for it forever
            raise
        return sock, watch

    # --8<-- [end:connect]

    def close(self) -> None:
        self._watch.close()
        self._sock.close(linger=0)

    async def run(self) -> None:
        while True:
            if await self._sock.poll(POLL_MS):
                self.channel.handle(await self._sock.recv_multipart())
            self._check_handshakes()
            self._resubscribe_if_quiet()

    def _check_handshakes(self) -> None:
        for failure in self._watch.failures():
            if failure.fault is PeerFault.DENIED_HANDSHAKE:
                raise StatusRefused(
                    f"the coordinator at {self._endpoint} refused the status channel: "
                    f"{failure.reason}; {refusal_hint(self._keys)}"
                )

    def _resubscribe_if_quiet(self) -> None:
        now = self._clock()
        age = self._view.coordinator_age_s()
        quiet_for = now - self._quiet_since if age is None else min(age, now - self._quiet_since)
        limit = max(MIN_RESUBSCRIBE_S, self._view.dead_after_s * RESUBSCRIBE_AFTER_LIVENESS)
        if quiet_for < limit:
            return
        log.warning("no STATUS from %s for %.1f s: reconnecting", self._endpoint, quiet_for)
        self.close()
        self._sock, self._watch = self._connect()
        self._quiet_since = now
        self._view.on_resubscribe()
