"""A worker: DEALER connects to the coordinator's ROUTER (5570), runs tasks up to --capacity.

    worker --REGISTER(capacity, capabilities, running)-->  coordinator
           <--WELCOME(heartbeat interval, liveness: adopted from here on)--
           <--DISPATCH(tasks, never more than the free credit)--
           --RESULTS(batched; each result returns one credit)-->
           --HEARTBEAT(cpu %, memory %, load1, running ids) every interval-->
           <--COORDINATOR_HEARTBEAT every interval--

The protocol decisions are WorkerSession's (worker_session.py, pure logic); this file is the
process around it: the socket, the tasks that take time, the machine's load, signals. When
the coordinator is silent for interval * liveness, the worker closes its socket (LINGER 0:
what it queued is stale) and connects a new one after a backoff, then registers again,
listing what it still holds. SIGTERM or Ctrl-C drains: DRAIN, finish what is in flight and
deliver the results, DEREGISTER, exit 0; after --drain-timeout, or on a second signal, it
hands back what it holds with DEREGISTER and exits 4.

Its routing id is ``worker:<16 random hex digits>:<id>`` (cut at libzmq's 255 bytes), fixed
for the life of the process: a reconnect takes over its own stale connection
(ROUTER_HANDOVER), while a second process started with the same --id is another peer to the
coordinator. That one gets REFUSED; it retries while the id may yet fall free (the holder
silent for a liveness window, say after a crash), and gives up with exit code 3 once the
holder stayed alive for two windows. Exit code 3 also means the coordinator refused this
worker's CURVE handshake (--keys).

Run it (after coordinator.py):
    python 02-cluster-patterns/worker.py --id w1
    python 02-cluster-patterns/worker.py --id w2 --coordinator 127.0.0.1 --capacity 16
    python 02-cluster-patterns/worker.py --id w3 --keys /tmp/keys    # CURVE, see cluster_keys.py
Exit codes: 0 drained, 1 socket error, 2 bad arguments or key files, 3 refused, 4 drain
incomplete (tasks handed back).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import psutil
import zmq
import zmq.asyncio

from cluster_patterns import defaults
from cluster_patterns.cli_args import add_heartbeat_options, bounded, config_from, identifier
from cluster_patterns.cli_args import make_parser
from cluster_patterns.cli_args import port_number, positive_float
from cluster_patterns.cluster_keys import ClientKeys, add_keys_option, keys_or_exit
from cluster_patterns.cluster_keys import load_client_keys, refusal_hint, secure_client
from cluster_patterns.heartbeat import BACKOFF_MAX_S
from cluster_patterns.protocol import MAX_CAPACITY
from cluster_patterns.protocol import Assignment, TaskResult, encode
from cluster_patterns.tasks import run
from cluster_patterns.transport import LINGER_MS, BadInput, HandshakeWatch, PeerFault
from cluster_patterns.transport import RateLimitedLog, configure, endpoint, print_to
from cluster_patterns.transport import robust_console
from cluster_patterns.wire import MAX_ID_CHARS
from cluster_patterns.worker_session import DEFAULT_DRAIN_TIMEOUT_S, Load, Phase
from cluster_patterns.worker_session import WorkerConfig, WorkerSession

# How often the session loop wakes up, as a fraction of the heartbeat interval.
WAKEUPS_PER_INTERVAL: Final = 5
MAX_ROUTING_ID_BYTES: Final = 255  # libzmq's limit


def routing_id(worker_id: str) -> bytes:
    """Unique per process (the random incarnation comes first), readable in logs."""
    return f"worker:{secrets.token_hex(8)}:{worker_id}".encode()[:MAX_ROUTING_ID_BYTES]


def machine_load() -> Load:
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = 0.0
    return Load(psutil.cpu_percent(None), psutil.virtual_memory().percent, load1)


def say(line: str) -> None:
    print(line, flush=True)


class Worker:
    """One worker process: a socket per connection around one WorkerSession."""

    def __init__(
        self,
        config: WorkerConfig,
        keys: ClientKeys | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.keys = keys
        self.clock = clock
        self.session = WorkerSession(
            config, clock=clock, load=machine_load, pid=os.getpid(), say=say
        )
        self.name = self.session.name
        self.routing_id = routing_id(config.worker_id)
        self.endpoint = endpoint(config.coordinator, config.port)
        self.ctx = zmq.asyncio.Context()
        self.sock: zmq.asyncio.Socket | None = None
        self.watch: HandshakeWatch | None = None
        self.handshake_log = RateLimitedLog(print_to(None), every_s=5.0)
        self.bad = BadInput(self.name)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.executor = ThreadPoolExecutor(max_workers=config.capacity)
        self.wake = asyncio.Event()
        self.flush_scheduled = False

    def on_signal(self) -> None:
        self.session.drain()
        self._send_outbox()
        self.wake.set()

    async def run(self) -> int:
        psutil.cpu_percent(None)  # the first call only primes the counter
        session = self.session
        # --8<-- [start:reconnect]
        while True:
            self._connect()
            await self._serve()
            self._disconnect(linger_ms=0 if session.phase is Phase.LOST else LINGER_MS)
            if session.phase is not Phase.LOST:
                break
            delay = session.reconnect_delay()
            if delay is None:
                break
            say(f"{self.name}: coordinator lost; reconnecting in {delay:.2f}s")
            await self._pause(delay)
            if session.over or (session.draining and not session.holding()):
                break  # a signal came while we waited, and there is nothing to deliver
        # --8<-- [end:reconnect]
        if session.failure:
            print(f"{self.name}: error: {session.failure}", file=sys.stderr, flush=True)
        for task in self.tasks.values():
            task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.ctx.term()
        say(f"worker {self.config.worker_id} stopped")
        return session.exit_code

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, but wake up at once for a signal."""
        self.wake.clear()
        try:
            await asyncio.wait_for(self.wake.wait(), delay)
        except asyncio.TimeoutError:
            pass

    # --8<-- [start:connect]
    def _connect(self) -> None:
        sock = configure(self.ctx.socket(zmq.DEALER), routing_id=self.routing_id)
        secure_client(sock, self.keys)
        self.watch = HandshakeWatch(sock, connecting=True)
        sock.connect(self.endpoint)
        self.sock = sock
        if not self.session.welcomed_once:
            say(f"worker {self.config.worker_id} ready: connected to {self.endpoint}")
        self.session.connected()
        self._send_outbox()

    # --8<-- [end:connect]

    def _disconnect(self, linger_ms: int) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        if self.sock is not None:
            self.sock.close(linger=linger_ms)
            self.sock = None

    async def _serve(self) -> None:
        """Talk to the coordinator on this socket until it is lost or we are done."""
        assert self.sock is not None
        receiver = asyncio.create_task(self._receive(self.sock))
        session = self.session
        try:
            while not session.over and session.phase is not Phase.LOST:
                if receiver.done():
                    session.phase = Phase.LOST  # the socket failed under us
                    break
                self._check_handshakes()
                session.tick()
                self._send_outbox()
                self.wake.clear()
                try:
                    await asyncio.wait_for(
                        self.wake.wait(), session.interval_s / WAKEUPS_PER_INTERVAL
                    )
                except asyncio.TimeoutError:
                    pass
        finally:
            receiver.cancel()
            try:
                await receiver
            except (asyncio.CancelledError, zmq.ZMQError):
                pass

    async def _receive(self, sock: zmq.asyncio.Socket) -> None:
        session = self.session
        while True:
            session.deliver(await sock.recv_multipart(), self.bad)
            for task in session.take_started():
                self.tasks[task.task_id] = asyncio.create_task(self._run_one(task))
            self._send_outbox()
            if session.over:
                self.wake.set()

    async def _run_one(self, task: Assignment) -> None:
        try:
            result = await run(task, self.executor)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a task must never take the worker down
            result = TaskResult(task.task_id, task.attempt, False, "", f"worker error: {exc}")
        self.tasks.pop(task.task_id, None)
        self.session.finished(result)
        if not self.flush_scheduled:  # results finishing together share one RESULTS frame
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        self.session.flush_results()
        self._send_outbox()
        if self.session.draining:
            self.wake.set()  # the drain may be complete now

    def _check_handshakes(self) -> None:
        if self.watch is None:
            return
        for failure in self.watch.failures():
            if failure.fault is PeerFault.DENIED_HANDSHAKE:
                self.session.fail(
                    f"the coordinator at {self.endpoint} refused the connection: "
                    f"{failure.reason}; {refusal_hint(self.keys)}"
                )
                return
            self.handshake_log(
                f"{self.name}: warning: handshake with {self.endpoint} failed: "
                f"{failure.reason}; is it the coordinator's task port"
                + (" and DIR/coordinator.key its public key?" if self.keys else "?")
            )

    def _send_outbox(self) -> None:
        outbox = self.session.take_outbox()
        if self.sock is None:
            return  # between connections nothing is sent; the session holds what matters
        for message in outbox:
            sent = asyncio.ensure_future(self.sock.send(encode(message), zmq.NOBLOCK))
            sent.add_done_callback(self._check_sent)

    def _check_sent(self, sent: asyncio.Future[Any]) -> None:
        exc = None if sent.cancelled() else sent.exception()
        if exc is not None:
            # Queue full or socket closing: the coordinator's timeouts recover the tasks.
            self.bad.record(f"could not send: {exc}")


def parse_args(argv: list[str] | None = None) -> tuple[WorkerConfig, Path | None]:
    """The config and the --keys directory, from the command line."""
    parser = make_parser(description="Cluster worker (DEALER to the coordinator's 5570).")
    parser.add_argument(
        "--id",
        dest="worker_id",
        metavar="ID",
        required=True,
        default=argparse.SUPPRESS,
        type=identifier(MAX_ID_CHARS),
        help="unique worker name (required)",
    )
    parser.add_argument("--coordinator", default=defaults.LOOPBACK, help="coordinator host")
    parser.add_argument(
        "--port", type=port_number, default=defaults.TASK_PORT, help="coordinator task port"
    )
    parser.add_argument(
        "--capacity",
        type=bounded(1, MAX_CAPACITY),
        default=defaults.WORKER_CAPACITY,
        help="tasks run at once",
    )
    add_heartbeat_options(
        parser,
        interval_help="seconds; only until WELCOME, which carries the coordinator's own",
        liveness_help="silent intervals before the coordinator counts as lost (until WELCOME)",
    )
    parser.add_argument(
        "--reconnect-max",
        dest="reconnect_max_s",
        metavar="S",
        type=positive_float,
        default=BACKOFF_MAX_S,
        help="longest wait before a reconnect (s)",
    )
    parser.add_argument(
        "--drain-timeout",
        dest="drain_timeout_s",
        metavar="S",
        type=positive_float,
        default=DEFAULT_DRAIN_TIMEOUT_S,
        help="seconds a drain may take before the worker hands its tasks back (exit 4)",
    )
    add_keys_option(parser, server=False)
    args = parser.parse_args(argv)
    return config_from(WorkerConfig, args), args.keys


async def amain(config: WorkerConfig, keys: ClientKeys | None = None) -> int:
    worker = Worker(config, keys)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, worker.on_signal)
    return await worker.run()


def main(argv: list[str] | None = None) -> int:
    robust_console()
    config, keys_dir = parse_args(argv)
    keys = keys_or_exit(load_client_keys, keys_dir, "worker")
    try:
        return asyncio.run(amain(config, keys))
    except zmq.ZMQError as exc:
        print(f"worker: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
