"""The coordinator: binds ROUTER 5570 (workers and clients) and XPUB 5571 (status channel).

    clients (DEALER) --SUBMIT-->  ROUTER :5570  --DISPATCH--> workers (DEALER)
            <--ACCEPTED/COMPLETED--         <--REGISTER/HEARTBEAT/RESULTS--
                                 XPUB :5571 --STATUS / NODE_EVENT / TASK_STATS--> monitors (SUB)

One thread, one poll loop: read everything that is waiting, let the Dispatcher (pure
logic) decide, commit the state log once (with --state-dir), then send. Every heartbeat
interval it publishes STATUS (which is also its heartbeat to monitors) and TASK_STATS, and
sends COORDINATOR_HEARTBEAT to each live worker and recent client. Its interval and liveness
are the cluster's: workers adopt them from WELCOME. Garbage from peers is counted
(``bad_messages`` in STATUS) and logged at most once per second; it never stops the loop.
Health probes and connections closed mid-handshake count apart (``aborted_handshakes``), and
so do handshakes CURVE refuses (``denied_handshakes``).

With ``--keys DIR`` both ports are CURVE servers: only clients whose public key is in
DIR/authorized_clients/ get in (the ZAP handler is answered in this same loop). Without it
they speak NULL, and binding anything but loopback prints a loud warning.

Run it:
    python 02-cluster-patterns/coordinator.py
    python 02-cluster-patterns/coordinator.py --bind 0.0.0.0 --keys /tmp/keys --state-dir /tmp/st
Then start workers (worker.py --id w1) and submit work (client.py --count 100 --kind echo).
Exit codes: 0 after Ctrl-C or SIGTERM, 1 a port cannot be bound, 2 bad arguments, key files
or an unusable --state-dir, 3 the state log is corrupt (nothing changed; journal.py repair).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Final

import msgspec
import zmq

from cluster_patterns import defaults
from cluster_patterns.cli_args import add_heartbeat_options, config_from, make_parser, port_number
from cluster_patterns.cli_args import positive_float, positive_int
from cluster_patterns.cluster_keys import ServerKeys, add_keys_option, keys_or_exit
from cluster_patterns.cluster_keys import load_server_keys
from cluster_patterns.curve import ZapPolicy, answer_zap, bind_zap, curve_server
from cluster_patterns.dispatcher import DEFAULT_MAX_TRIES, DEFAULT_TASK_TIMEOUT_S, Dispatcher
from cluster_patterns.journal import CORRUPT_EXIT, UNUSABLE_EXIT, FileJournal, JournalCorruption
from cluster_patterns.journal import ResultEntry, StateLogError
from cluster_patterns.protocol import Dispatch
from cluster_patterns.protocol import Message, NodeEvent, ProtocolError, Refused, TaskOutcome
from cluster_patterns.protocol import TaskSpec
from cluster_patterns.protocol import decode, describe, encode
from cluster_patterns.task_book import MAX_UNFINISHED
from cluster_patterns.transport import BadInput, HandshakeWatch, PeerFault, RateLimitedLog
from cluster_patterns.transport import configure, endpoint, is_loopback, print_to, printable
from cluster_patterns.transport import queued_multipart, robust_console

# Checks of liveness and timeouts per heartbeat interval (detection granularity).
TICKS_PER_INTERVAL: Final = 10
# Messages read per poll turn before the loop dispatches and sends (keeps latency bounded).
MAX_READS_PER_TURN: Final = 500
# Replies kept for the next turn when a client's queue is full, in all and per client
# (beyond: dropped, and the client's stall timer re-submits and gets them again). The cap
# per client keeps one that never reads from taking every place from the others.
MAX_DEFERRED: Final = 10_000
MAX_DEFERRED_PER_PEER: Final = 100
# The high-water mark of each peer's pipe on the task port, per direction: what a peer that
# never reads costs is its pipe, 1,000 messages (a tenth of a peer's own 10,000). Credit
# keeps a worker's DISPATCHes to its capacity, and a client gets about one reply per message
# it sent (at most MAX_READS_PER_TURN a turn), so a reading peer never comes near it; one
# that falls behind loses nothing (its replies wait a turn, then its stall timer gets them).
# The status port keeps the default: its PUB semantics drop what does not fit, and a burst
# of NODE_EVENTs (a thousand workers judged dead in one turn) must reach a subscriber that
# reads.
PEER_HWM: Final = 1_000


@dataclass(frozen=True)
class CoordinatorConfig:
    """Everything a coordinator is started with (coordinator.py --help builds one)."""

    bind: str = defaults.LOOPBACK
    port: int = defaults.TASK_PORT
    status_port: int = defaults.STATUS_PORT
    heartbeat_interval_s: float = defaults.HEARTBEAT_INTERVAL_S
    liveness: int = defaults.LIVENESS
    task_timeout_s: float = DEFAULT_TASK_TIMEOUT_S
    max_tries: int = DEFAULT_MAX_TRIES
    max_unfinished: int = MAX_UNFINISHED
    state_dir: Path | None = None


def new_coordinator_id() -> str:
    """Unique per incarnation, so that clients notice a restart."""
    return f"coord-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


class Coordinator:
    """Owns the sockets and the loop; all decisions are the Dispatcher's."""

    def __init__(
        self,
        config: CoordinatorConfig,
        keys: ServerKeys | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.keys = keys
        self.clock = clock
        self.coordinator_id = new_coordinator_id()
        # Opened (locked, recovered) before any socket: a corrupt log stops us first.
        self.journal = FileJournal(config.state_dir) if config.state_dir else None
        self.dispatcher = Dispatcher(
            self.coordinator_id,
            heartbeat_interval_s=config.heartbeat_interval_s,
            liveness=config.liveness,
            task_timeout_s=config.task_timeout_s,
            max_tries=config.max_tries,
            max_unfinished=config.max_unfinished,
            journal=self.journal,
            wall_clock=wall_clock,
        )
        self.bad = BadInput("coordinator")
        self.denied_log = RateLimitedLog(print_to(None))
        self.refusal_log = RateLimitedLog(print_to(None))
        self.full_log = RateLimitedLog(print_to(None))
        self.refused_tasks_logged = 0
        self.stopping = False
        self.ctx = zmq.Context()
        # The ZAP handler must exist before a CURVE socket binds, or libzmq asks nobody.
        self.zap = bind_zap(self.ctx) if keys else None
        self.zap_policy = ZapPolicy(keys.allowed, "coordinator") if keys else None
        # --8<-- [start:sockets]
        self.router = configure(self.ctx.socket(zmq.ROUTER), sndhwm=PEER_HWM, rcvhwm=PEER_HWM)
        # Route replies to an unreachable peer as an error we can act on, not a silent drop,
        # and let a reconnecting worker take over its routing id from a stale connection.
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.status = configure(self.ctx.socket(zmq.XPUB))
        if keys is not None:
            for sock in (self.router, self.status):
                curve_server(sock, keys.pair)
        # --8<-- [end:sockets]
        self.watches: list[HandshakeWatch] = []
        self.deferred: list[tuple[bytes, Message]] = []

    def restore(self) -> None:
        if self.journal is None:
            return
        if self.journal.torn_bytes:
            print(
                f"coordinator: {self.journal.path}: cut {self.journal.torn_bytes} bytes of a "
                "torn last line (a crash in the middle of a write)",
                flush=True,
            )
        now = self.clock()
        entries = self.journal.entries
        for entry in entries:
            if not isinstance(entry, ResultEntry):
                spec = TaskSpec(entry.task_id, entry.kind, entry.ms, entry.payload)
                self.dispatcher.restore_submitted(spec, entry.client.encode(), now)
        for entry in entries:
            if isinstance(entry, ResultEntry):  # as a plain outcome: COMPLETED carries it
                self.dispatcher.restore_recorded(TaskOutcome(*msgspec.structs.astuple(entry)), now)
        self.journal.entries = []  # the book holds them now; the log keeps appending
        totals = self.dispatcher.totals
        print(
            f"coordinator restored {totals.submitted} tasks "
            f"({totals.done + totals.failed} with results) from {self.config.state_dir}",
            flush=True,
        )

    def bind(self) -> None:
        config = self.config
        tasks = endpoint(config.bind, config.port)
        status = endpoint(config.bind, config.status_port)
        self.watches = [HandshakeWatch(sock) for sock in (self.router, self.status)]
        self.router.bind(tasks)
        self.status.bind(status)
        if self.keys is None and not is_loopback(config.bind):
            print(
                f"coordinator: WARNING: {tasks} and {status} are open to the network without "
                "encryption or authentication: anyone who reaches them can register workers, "
                "submit tasks and read the status. Start with --keys DIR "
                "(docs/wire-protocol.md, Security).",
                file=sys.stderr,
                flush=True,
            )
        if self.keys is None:
            security = "NULL, no encryption"
        else:
            security = f"CURVE, {len(self.keys.allowed)} authorized key(s)"
        print(f"coordinator ready: tasks {tasks}, status {status} ({security})", flush=True)

    def run(self) -> None:
        poller = zmq.Poller()
        for sock in (self.router, self.status, *(w.socket for w in self.watches)):
            poller.register(sock, zmq.POLLIN)
        if self.zap is not None:
            poller.register(self.zap, zmq.POLLIN)
        interval_s = self.config.heartbeat_interval_s
        tick_s = interval_s / TICKS_PER_INTERVAL
        next_tick = next_status = self.clock()
        # --8<-- [start:loop]
        while not self.stopping:
            timeout_ms = max(0.0, min(next_tick, next_status) - self.clock()) * 1000
            ready = dict(poller.poll(int(timeout_ms) + 1))
            now = self.clock()
            self._read_ready(ready, now)
            if now >= next_tick:
                self.dispatcher.tick(now)
                next_tick = now + tick_s
            if now >= next_status:
                self.dispatcher.heartbeats(now)
                self._publish(self.dispatcher.status(now))
                self._publish(self.dispatcher.task_stats())
                next_status = now + interval_s
            self.dispatcher.pump(now)
            self.dispatcher.flush_replies()
            if self.journal is not None:
                self.journal.flush()  # group commit: durable before anyone is told
            outbox, events = self.dispatcher.take_output()
            self._send(outbox, now)
            if events:
                self._publish_events(events)
                # A state change reaches monitors now, not up to one interval later.
                self._publish(self.dispatcher.status(now))
        # --8<-- [end:loop]

    def _read_ready(self, ready: dict[zmq.Socket[bytes], int], now: float) -> None:
        if self.router in ready:
            self._read_router(now)
            self._say_if_full()
        if self.status in ready:
            self._read_status_socket()
        if self.zap is not None and self.zap in ready and self.zap_policy is not None:
            answer_zap(self.zap, self.zap_policy)
        for watch in self.watches:
            if watch.socket in ready:
                self._read_handshakes(watch)

    def _say_if_full(self) -> None:
        refused = self.dispatcher.totals.refused_tasks
        if refused > self.refused_tasks_logged:
            self.refused_tasks_logged = refused
            self.full_log(
                f"coordinator: {self.config.max_unfinished} tasks are unfinished, the most it "
                f"holds: {refused} new tasks not accepted so far (their clients send them again)"
            )

    def _read_router(self, now: float) -> None:
        for frames in queued_multipart(self.router, MAX_READS_PER_TURN):
            if len(frames) != 2:
                self._bad(f"{len(frames)} frames from a peer (expected 1)")
                continue
            identity, frame = frames
            try:
                message = decode(frame)
            except ProtocolError as exc:
                self._bad(f"{exc} in {describe(frame)}")
                continue
            try:
                handled = self.dispatcher.handle(identity, message, now)
            except Exception as exc:  # a bug must cost one message, never the coordinator
                self._bad(f"{type(message).__name__} failed: {type(exc).__name__}: {exc}")
                continue
            if not handled:
                self._bad(f"{type(message).__name__} is not sent to a coordinator")

    # --8<-- [start:xpub]
    def _read_status_socket(self) -> None:
        """XPUB delivers subscriptions (first byte 0/1) and any other frame a peer sends."""
        for frames in queued_multipart(self.status, MAX_READS_PER_TURN):
            if len(frames) != 1 or not frames[0] or frames[0][0] not in (0, 1):
                self._bad(f"non-subscription frame on the status port: {describe(frames[0])}")

    # --8<-- [end:xpub]

    def _read_handshakes(self, watch: HandshakeWatch) -> None:
        for failure in watch.failures():
            if failure.fault is PeerFault.ABORTED_HANDSHAKE:
                self.dispatcher.count_aborted_handshake()  # probes: normal, not logged
            elif failure.fault is PeerFault.DENIED_HANDSHAKE:
                self.dispatcher.count_denied_handshake()
                if not failure.by_zap:
                    self.denied_log(
                        f"coordinator: denied handshake on {failure.endpoint}: {failure.reason}"
                    )
            else:
                self._bad(f"{failure.reason} on {failure.endpoint}")

    def _bad(self, what: str) -> None:
        self.dispatcher.count_bad()
        self.bad.record(what)

    def _send(self, outbox: list[tuple[bytes, Message]], now: float) -> None:
        deferred, self.deferred = self.deferred, []
        waiting: dict[bytes, int] = {}  # replies deferred per client in this turn
        for identity, message in deferred + outbox:
            if type(message) is Refused:
                self.refusal_log(
                    f"coordinator: refused REGISTER of {printable(message.worker_id)} "
                    f"from {identity!r} ({message.reason}): {message.detail}"
                )
            # --8<-- [start:send]
            try:
                self.router.send_multipart([identity, encode(message)], zmq.NOBLOCK)
            except zmq.Again:
                # The peer's queue is full. Tasks go back to pending at once; replies to a
                # client wait for the next turn (bounded: the client re-submits if stalled).
                if type(message) is Dispatch:
                    self.dispatcher.undeliverable(identity, message, now)
                elif self._may_defer(waiting, identity):
                    self.deferred.append((identity, message))
            except (zmq.ZMQError, ProtocolError):
                # The peer is gone (ROUTER_MANDATORY): a DISPATCH goes back to pending.
                self.dispatcher.undeliverable(identity, message, now)
            # --8<-- [end:send]

    def _may_defer(self, waiting: dict[bytes, int], identity: bytes) -> bool:
        """Whether a reply to ``identity`` may wait a turn: within both caps."""
        held = waiting.get(identity, 0)
        if held >= MAX_DEFERRED_PER_PEER or len(self.deferred) >= MAX_DEFERRED:
            return False
        waiting[identity] = held + 1
        return True

    def _publish(self, message: Message) -> None:
        try:
            self.status.send(encode(message), zmq.NOBLOCK)
        except (zmq.ZMQError, ProtocolError) as exc:
            self.bad.record(f"could not publish {type(message).__name__}: {exc}")

    def _publish_events(self, events: list[NodeEvent]) -> None:
        for event in events:
            extra = ""
            if event.detection_latency_s is not None:
                extra = f" after {event.detection_latency_s:.2f}s of silence"
            if event.recovery_s is not None:
                extra = f" (recovered after {event.recovery_s:.2f}s)"
            print(f"coordinator: node {printable(event.node_id)} {event.event}{extra}", flush=True)
            self._publish(event)

    def close(self) -> None:
        for sock in (self.router, self.status):
            sock.close()
        for watch in self.watches:
            watch.close()
        if self.zap is not None:
            self.zap.close(linger=0)
        if self.journal is not None:
            self.journal.close()
        self.ctx.term()


def parse_args(argv: list[str] | None = None) -> tuple[CoordinatorConfig, Path | None]:
    """The config and the --keys directory, from the command line."""
    parser = make_parser(description="Cluster coordinator (ROUTER 5570, XPUB 5571).")
    parser.add_argument("--bind", default=defaults.LOOPBACK, help="address to bind both ports")
    parser.add_argument(
        "--port", type=port_number, default=defaults.TASK_PORT, help="ROUTER port for peers"
    )
    parser.add_argument(
        "--status-port", type=port_number, default=defaults.STATUS_PORT, help="status channel port"
    )
    add_heartbeat_options(
        parser,
        interval_help="seconds between heartbeats; workers adopt it from WELCOME",
        liveness_help="silent intervals after which a worker is dead",
    )
    parser.add_argument(
        "--task-timeout",
        dest="task_timeout_s",
        metavar="S",
        type=positive_float,
        default=DEFAULT_TASK_TIMEOUT_S,
        help="seconds a dispatched task may take before it is retried",
    )
    parser.add_argument(
        "--max-tries", type=positive_int, default=DEFAULT_MAX_TRIES, help="dispatches per task"
    )
    parser.add_argument(
        "--max-unfinished",
        metavar="N",
        type=positive_int,
        default=MAX_UNFINISHED,
        help="tasks pending or in flight at most; new tasks beyond are not accepted (clients "
        "send them again)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="directory of the state log: accepted tasks and results survive a crash",
    )
    add_keys_option(parser, server=True)
    args = parser.parse_args(argv)
    if args.port == args.status_port:
        parser.error("--port and --status-port must differ")
    return config_from(CoordinatorConfig, args), args.keys


def main(argv: list[str] | None = None) -> int:
    robust_console()
    config, keys_dir = parse_args(argv)
    keys = keys_or_exit(load_server_keys, keys_dir, "coordinator")
    coordinator: Coordinator | None = None
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if coordinator is not None:
            coordinator.stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        coordinator = Coordinator(config, keys)
        coordinator.stopping = stopping
        coordinator.restore()
        coordinator.bind()
        coordinator.run()
    except JournalCorruption as exc:
        print(f"coordinator: error: {exc}", file=sys.stderr)
        return CORRUPT_EXIT
    except StateLogError as exc:
        print(f"coordinator: error: {exc}", file=sys.stderr)
        return UNUSABLE_EXIT
    except (zmq.ZMQError, OSError) as exc:
        print(f"coordinator: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if coordinator is not None:
            coordinator.close()
    print("coordinator stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
