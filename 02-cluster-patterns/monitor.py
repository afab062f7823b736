"""Cluster monitor: follows the coordinator's status channel and serves it over HTTP.

Connects: SUB  tcp://COORDINATOR:5571  (STATUS every heartbeat interval, NODE_EVENT, TASK_STATS)
Binds:    HTTP http://BIND:5572         (127.0.0.1 unless --bind says otherwise)

    GET /             live dashboard (polls /api/cluster every 500 ms; works offline)
    GET /health       200 while a STATUS arrived within interval*(liveness+1), else 503
    GET /api/cluster  JSON: coordinator, nodes, totals, detection/recovery, rates, latency
    GET /metrics      Prometheus text format (see docs/monitoring.md for every metric)

Run it next to a coordinator:
    python 02-cluster-patterns/coordinator.py
    python 02-cluster-patterns/monitor.py --coordinator 127.0.0.1
    curl -s http://127.0.0.1:5572/api/cluster ; open http://127.0.0.1:5572/
With a CURVE coordinator (``--keys DIR`` on both; see cluster_keys.py):
    python 02-cluster-patterns/monitor.py --coordinator 10.0.0.5 --keys /tmp/keys

Anything on the SUB socket that the codec rejects is counted
(cluster_monitor_bad_messages_total), logged at most once per BAD_LOG_INTERVAL_S, and
dropped: a peer's garbage never takes the monitor down. Ctrl-C / SIGTERM exit 0; 1 when the
HTTP port cannot be bound; 2 bad arguments or key files; 3 the coordinator refused our
CURVE handshake.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

import zmq
import zmq.asyncio

from cluster_patterns.cli_args import port_number, positive_float, positive_int
from cluster_patterns.cluster_keys import (
    ClientKeys,
    add_keys_option,
    keys_or_exit,
    load_client_keys,
    refusal_hint,
    secure_client,
)
from cluster_patterns.cluster_metrics import ClusterMetrics
from cluster_patterns.cluster_view import (
    DEFAULT_HEARTBEAT_INTERVAL_S,
    DEFAULT_LIVENESS,
    ClusterView,
    NodeEventReport,
    NodeReport,
    StatusReport,
    TaskStatsReport,
)
from cluster_patterns.monitor_http import Handler, HttpServer, Request, Response
from cluster_patterns.protocol import (
    NodeEvent,
    ProtocolError,
    Status,
    TaskStats,
    decode,
    describe,
)
from cluster_patterns.transport import (
    SOCKET_MAX_MESSAGE_BYTES,
    HandshakeWatch,
    PeerFault,
    robust_console,
)

# Tunables ---------------------------------------------------------------------------------
DEFAULT_COORDINATOR = "127.0.0.1"
DEFAULT_STATUS_PORT = 5571
DEFAULT_HTTP_PORT = 5572
DEFAULT_BIND = "127.0.0.1"
BAD_LOG_INTERVAL_S = 5.0  # at most one log line per this many seconds about bad messages
RECONNECT_IVL_MS = 100  # SUB reconnects quickly after a coordinator restart...
RECONNECT_IVL_MAX_MS = 2000  # ...backing off to at most this
ZMQ_HEARTBEAT_IVL_MS = 1000  # ZMTP pings notice a half-open TCP connection to the coordinator
ZMQ_HEARTBEAT_TIMEOUT_MS = 3000
POLL_MS = 200  # how often the receive loop wakes up to check for a silent coordinator
RESUBSCRIBE_AFTER_LIVENESS = 2  # silent for 2 x interval*(liveness+1): new SUB socket
MIN_RESUBSCRIBE_S = 3.0
STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REFUSED_EXIT = 3

log = logging.getLogger("monitor")


# --- protocol -> view adapters ---------------------------------------------------------------


def status_report(msg: Status) -> StatusReport:
    nodes = tuple(
        NodeReport(
            node_id=n.node_id,
            state=n.state,
            last_seen_age_s=n.last_seen_age_s,
            in_flight=n.in_flight,
            capacity=n.capacity,
            cpu_percent=n.cpu_percent,
            memory_percent=n.memory_percent,
            load1=n.load1,
            done=n.done,
            capabilities=tuple(n.capabilities),
        )
        for n in msg.nodes
    )
    t = msg.totals
    totals = {
        "submitted": t.submitted,
        "done": t.done,
        "failed": t.failed,
        "retried": t.retried,
        "requeued": t.requeued,
        "duplicates": t.duplicates,
        "bad_messages": t.bad_messages,
        "aborted_handshakes": t.aborted_handshakes,
        "denied_handshakes": t.denied_handshakes,
        "refused_registrations": t.refused_registrations,
        "pending": t.pending,
        "in_flight": t.in_flight,
    }
    return StatusReport(
        msg.coordinator_id, msg.seq, msg.heartbeat_interval_s, msg.liveness, nodes, totals
    )


def node_event_report(msg: NodeEvent) -> NodeEventReport:
    return NodeEventReport(msg.node_id, msg.event, msg.at, msg.detection_latency_s, msg.recovery_s)


def task_stats_report(msg: TaskStats) -> TaskStatsReport:
    return TaskStatsReport(tuple(msg.latencies_s), msg.done, msg.failed)


# --- roles -----------------------------------------------------------------------------------


class RateLimitedLog:
    """Logs the first problem at once, then at most one summary line per interval."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._last_logged = -float("inf")
        self._suppressed = 0

    def warning(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last_logged < self._interval_s:
            self._suppressed += 1
            return
        extra = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        log.warning("%s%s", text, extra)
        self._last_logged = now
        self._suppressed = 0


class StatusRefused(Exception):
    """The coordinator refused the status channel's handshake (CURVE key or mechanism)."""


class StatusFollower:
    """Owns the SUB socket; decodes each message and dispatches it by type.

    libzmq reconnects a SUB by itself after a network error, but not after a protocol
    error (a frame beyond MAXMSGSIZE ends that session for good). So when no STATUS has
    arrived for RESUBSCRIBE_AFTER_LIVENESS coordinator-dead periods, the follower throws
    the socket away and connects a fresh one (counted as a resubscribe).
    """

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        view: ClusterView,
        keys: ClientKeys | None = None,
    ) -> None:
        self.view = view
        self.metrics = ClusterMetrics(view)
        self._ctx = ctx
        self._endpoint = endpoint
        self._keys = keys
        self._bad_log = RateLimitedLog(BAD_LOG_INTERVAL_S)
        self._sock, self._watch = self._connect()
        self._quiet_since = time.monotonic()

    def _connect(self) -> tuple[zmq.asyncio.Socket, HandshakeWatch]:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, SOCKET_MAX_MESSAGE_BYTES)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        sock.setsockopt(zmq.HEARTBEAT_IVL, ZMQ_HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMQ_HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        secure_client(sock, self._keys)
        watch = HandshakeWatch(sock)
        try:
            sock.connect(self._endpoint)
        except zmq.ZMQError:
            watch.close()
            sock.close(linger=0)  # or ctx.term() would wait for it forever
            raise
        return sock, watch

    def close(self) -> None:
        self._watch.close()
        self._sock.close(linger=0)

    async def run(self) -> None:
        while True:
            if await self._sock.poll(POLL_MS):
                frames = await self._sock.recv_multipart()
                self.handle(frames)
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
        now = time.monotonic()
        age = self.view.coordinator_age_s()
        quiet_for = now - self._quiet_since if age is None else min(age, now - self._quiet_since)
        limit = max(MIN_RESUBSCRIBE_S, self.view.dead_after_s * RESUBSCRIBE_AFTER_LIVENESS)
        if quiet_for < limit:
            return
        log.warning("no STATUS from %s for %.1f s: reconnecting", self._endpoint, quiet_for)
        self.close()
        self._sock, self._watch = self._connect()
        self._quiet_since = now
        self.view.on_resubscribe()

    def handle(self, frames: list[bytes]) -> None:
        if len(frames) != 1:
            self._bad(f"expected 1 frame, got {len(frames)}: {describe(b''.join(frames))}")
            return
        try:
            message = decode(frames[0])
        except ProtocolError as exc:
            self._bad(f"{exc}: {describe(frames[0])}")
            return
        if isinstance(message, Status):
            self.view.on_status(status_report(message))
        elif isinstance(message, NodeEvent):
            self._on_node_event(message)
        elif isinstance(message, TaskStats):
            self.view.on_task_stats(task_stats_report(message))
            self.metrics.observe_latencies(tuple(message.latencies_s))
        else:  # a valid message, but not one the status channel carries
            self._bad(f"unexpected {type(message).__name__} on the status channel")

    def _on_node_event(self, message: NodeEvent) -> None:
        self.view.on_node_event(node_event_report(message))
        if message.event == "dead" and message.detection_latency_s is not None:
            self.metrics.observe_detection(message.detection_latency_s)
        if message.event == "alive" and message.recovery_s is not None:
            self.metrics.observe_recovery(message.recovery_s)
        log.info("node %s %s", message.node_id, message.event)

    def _bad(self, text: str) -> None:
        self.view.on_bad_message()
        self._bad_log.warning(f"dropped bad status message: {text}")


# --- HTTP pages ------------------------------------------------------------------------------


def build_routes(follower: StatusFollower) -> dict[str, Handler]:
    view = follower.view

    def health(_: Request) -> Response:
        healthy, body = view.health()
        return Response.json(200 if healthy else 503, body)

    def cluster(_: Request) -> Response:
        return Response.json(200, view.snapshot())

    def metrics(_: Request) -> Response:
        return Response(200, follower.metrics.exposition(), METRICS_CONTENT_TYPE)

    routes: dict[str, Handler] = {"/health": health, "/api/cluster": cluster, "/metrics": metrics}
    for path, (name, content_type) in STATIC_FILES.items():
        routes[path] = static_page((STATIC_DIR / name).read_bytes(), content_type)
    return routes


def static_page(body: bytes, content_type: str) -> Handler:
    def page(_: Request) -> Response:
        return Response(200, body, content_type, (("Cache-Control", "no-cache"),))

    return page


# --- process ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="monitor.py",
        description="Follow the coordinator's status channel and serve a dashboard, "
        "JSON and Prometheus metrics over HTTP.",
    )
    parser.add_argument("--coordinator", default=DEFAULT_COORDINATOR, help="coordinator host")
    parser.add_argument("--status-port", type=port_number, default=DEFAULT_STATUS_PORT)
    parser.add_argument("--port", type=port_number, default=DEFAULT_HTTP_PORT, help="HTTP port")
    parser.add_argument("--bind", default=DEFAULT_BIND, help="HTTP listen address")
    parser.add_argument(
        "--heartbeat-interval",
        type=positive_float,
        default=DEFAULT_HEARTBEAT_INTERVAL_S,
        help="seconds; used until the first STATUS announces the coordinator's own",
    )
    parser.add_argument(
        "--liveness",
        type=positive_int,
        default=DEFAULT_LIVENESS,
        help="missed intervals before the coordinator counts as gone (until a STATUS says)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log every node event")
    add_keys_option(parser, server=False)
    return parser.parse_args(argv)


def _endpoint(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


async def serve(args: argparse.Namespace, keys: ClientKeys | None = None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    view = ClusterView(args.heartbeat_interval, args.liveness)
    ctx = zmq.asyncio.Context()
    endpoint = _endpoint(args.coordinator, args.status_port)
    try:
        follower = StatusFollower(ctx, endpoint, view, keys)
    except zmq.ZMQError as exc:
        print(f"monitor: error: cannot connect to {endpoint}: {exc}", file=sys.stderr)
        ctx.term()
        return 1
    http = HttpServer(build_routes(follower))
    try:
        host, port = await http.start(args.bind, args.port)
    except OSError as exc:
        print(
            f"monitor: error: cannot listen on {args.bind}:{args.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        follower.close()
        ctx.term()
        return 1

    shown = f"[{host}]" if ":" in host else host
    print(f"monitor ready: http://{shown}:{port}/ (following {endpoint})", flush=True)
    receiver = asyncio.create_task(follower.run())
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({receiver, stopper}, return_when=asyncio.FIRST_COMPLETED)
    receiver.cancel()
    stopper.cancel()
    await asyncio.gather(receiver, stopper, return_exceptions=True)
    await http.close()
    follower.close()
    ctx.term()
    failure = receiver.exception() if receiver in done else None
    if isinstance(failure, StatusRefused):
        print(f"monitor: error: {failure}", file=sys.stderr)
        return REFUSED_EXIT
    if failure is not None:
        print(f"monitor: error: status channel failed: {failure}", file=sys.stderr)
        return 1
    print("monitor stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    robust_console()
    args = parse_args(argv)
    keys = keys_or_exit(load_client_keys, args.keys, "monitor")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        return asyncio.run(serve(args, keys))
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down
        return 0


if __name__ == "__main__":
    sys.exit(main())
