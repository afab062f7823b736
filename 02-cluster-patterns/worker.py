"""A worker: DEALER connects to the coordinator's ROUTER (5570), runs tasks up to --capacity.

    worker --REGISTER(capacity, capabilities)-->  coordinator
           <--WELCOME--
           <--DISPATCH(tasks, never more than the free credit)--
           --RESULTS(batched; each result returns one credit)-->
           --HEARTBEAT(cpu %, memory %, load1, running ids) every interval-->
           <--COORDINATOR_HEARTBEAT every interval--

Any message from the coordinator counts as its heartbeat. When nothing arrives for
interval * liveness, the worker drops its socket and reconnects with exponential backoff,
jitter and a cap, then registers again (reporting the tasks it still runs). SIGTERM or
Ctrl-C drains: DRAIN (no new tasks), finish what is in flight, DEREGISTER, exit 0; a second
signal exits at once.

Its routing id is ``worker:<id>:<8 random hex digits>``, fixed for the life of the process:
a reconnect takes over its own stale connection (ROUTER_HANDOVER), while a second process
started with the same --id is another peer to the coordinator. That one gets REFUSED; it
retries while the id may yet fall free (the holder silent for a liveness window, say after a
crash), and gives up with exit code 3 once the holder stayed alive for two windows. Exit
code 3 also means the coordinator refused this worker's CURVE handshake (--keys).

Run it (after coordinator.py):
    python 02-cluster-patterns/worker.py --id w1
    python 02-cluster-patterns/worker.py --id w2 --coordinator 127.0.0.1 --capacity 16
    python 02-cluster-patterns/worker.py --id w3 --keys /tmp/keys    # CURVE, see cluster_keys.py
Exit codes: 0 after a drain, 1 socket error, 2 bad arguments or key files, 3 refused.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import psutil
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
from cluster_patterns.heartbeat import (
    BACKOFF_MAX_S,
    DEFAULT_INTERVAL_S,
    DEFAULT_LIVENESS,
    Backoff,
    Liveness,
)
from cluster_patterns.protocol import (
    MAX_BATCH,
    Assignment,
    CoordinatorHeartbeat,
    Deregister,
    Dispatch,
    Drain,
    Heartbeat,
    Message,
    RefusalReason,
    Refused,
    Register,
    Reset,
    Results,
    TaskResult,
    Welcome,
    encode,
)
from cluster_patterns.tasks import CAPABILITIES, run, run_quick
from cluster_patterns.transport import (
    BadInput,
    HandshakeWatch,
    PeerFault,
    RateLimitedLog,
    configure,
    decode_from_coordinator,
    endpoint,
    print_to,
    robust_console,
)

DEFAULT_CAPACITY: Final = 8
DEFAULT_COORDINATOR: Final = "127.0.0.1"
DEFAULT_PORT: Final = 5570
# How often the session loop wakes up, as a fraction of the heartbeat interval.
WAKEUPS_PER_INTERVAL: Final = 5
# A refused worker gives up when the coordinator still refuses it this many liveness
# windows after the first refusal (one window is enough for a crashed holder to expire).
REFUSED_GIVE_UP_WINDOWS: Final = 2
REFUSED_EXIT: Final = 3


class Worker:
    """One worker process: a session per connection, reconnecting until told to stop."""

    def __init__(self, args: argparse.Namespace, keys: ClientKeys | None = None) -> None:
        self.worker_id: str = args.id
        self.keys = keys
        self.routing_id = f"worker:{self.worker_id}:{uuid.uuid4().hex[:8]}".encode()
        self.capacity: int = args.capacity
        self.interval_s: float = args.heartbeat_interval
        self.liveness: int = args.liveness
        self.endpoint = endpoint(args.coordinator, args.port)
        self.ctx = zmq.asyncio.Context()
        self.sock: zmq.asyncio.Socket | None = None
        self.watch: HandshakeWatch | None = None
        self.handshake_log = RateLimitedLog(print_to(None), every_s=5.0)
        self.exit_code = 0
        self.refused_since: float | None = None
        self.next_register_at: float | None = None
        self.running: dict[str, asyncio.Task[None]] = {}
        self.outbox: list[TaskResult] = []
        self.flush_scheduled = False
        self.draining = False
        self.stop_now = asyncio.Event()
        self.bad = BadInput(f"worker {self.worker_id}")
        self.backoff = Backoff(maximum_s=args.reconnect_max)
        self.executor = ThreadPoolExecutor(max_workers=self.capacity)
        self.registered_once = False
        self.welcomed = False
        self.registered_at = 0.0

    # --- Lifecycle ----------------------------------------------------------------------------

    def on_signal(self) -> None:
        if self.draining:
            print(f"worker {self.worker_id}: second signal, exiting now", flush=True)
            self.stop_now.set()
            return
        print(f"worker {self.worker_id}: draining {len(self.running)} task(s)", flush=True)
        self.draining = True
        self._send(Drain(self.worker_id))

    async def run(self) -> int:
        psutil.cpu_percent(None)  # the first call only primes the counter
        while not self.stop_now.is_set():
            self._connect()
            outcome = await self._session()
            self._disconnect()
            if outcome != "lost":
                break
            if self.draining and not self.running:
                break  # nothing left to hand back to a coordinator we cannot reach
            delay = self.backoff.delay()
            print(
                f"worker {self.worker_id}: coordinator lost; reconnecting in {delay:.2f}s",
                flush=True,
            )
            await self._pause(delay)
            if self.draining and not self.running:
                break
        for task in self.running.values():
            task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.ctx.term()
        print(f"worker {self.worker_id} stopped", flush=True)
        return self.exit_code

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, but wake up at once for a signal."""
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not self.stop_now.is_set() and not self.draining:
            await asyncio.sleep(min(0.05, deadline - time.monotonic()))

    def _connect(self) -> None:
        sock = configure(self.ctx.socket(zmq.DEALER), routing_id=self.routing_id)
        secure_client(sock, self.keys)
        self.watch = HandshakeWatch(sock)
        sock.connect(self.endpoint)
        self.sock = sock
        if not self.registered_once:
            print(f"worker {self.worker_id} ready: connected to {self.endpoint}", flush=True)

    def _disconnect(self) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        if self.sock is not None:
            self.sock.close(linger=0 if self.stop_now.is_set() else None)
            self.sock = None

    # --- One connection -------------------------------------------------------------------------

    async def _session(self) -> str:
        """Talk to the coordinator until it is lost ("lost") or we are done ("done")."""
        coordinator = Liveness(self.interval_s, self.liveness, time.monotonic())
        self.welcomed = False
        self._register()
        receiver = asyncio.create_task(self._receive(coordinator))
        next_beat = time.monotonic()
        try:
            while not self.stop_now.is_set():
                now = time.monotonic()
                if receiver.done():
                    return "lost"
                if coordinator.check(now) is not None and coordinator.state.value == "dead":
                    return "lost"
                if self.draining and not self.running and not self.outbox:
                    self._send(Deregister(self.worker_id))
                    return "done"
                self._check_handshakes()
                if self.next_register_at is not None and now >= self.next_register_at:
                    self.next_register_at = None
                    self._register()
                if now >= next_beat and self.refused_since is None:
                    self._send(self._heartbeat())
                    next_beat = now + self.interval_s
                try:
                    await asyncio.wait_for(
                        self.stop_now.wait(), self.interval_s / WAKEUPS_PER_INTERVAL
                    )
                except asyncio.TimeoutError:
                    pass
            return "done"
        finally:
            receiver.cancel()
            try:
                await receiver
            except asyncio.CancelledError:
                pass

    def _register(self) -> None:
        self.registered_at = time.monotonic()
        self._send(
            Register(
                worker_id=self.worker_id,
                capacity=self.capacity,
                capabilities=list(CAPABILITIES),
                running=list(self.running),
                pid=os.getpid(),
            )
        )

    def _heartbeat(self) -> Heartbeat:
        try:
            load1 = os.getloadavg()[0]
        except OSError:
            load1 = 0.0
        return Heartbeat(
            worker_id=self.worker_id,
            in_flight=len(self.running),
            running=list(self.running),
            cpu_percent=psutil.cpu_percent(None),
            memory_percent=psutil.virtual_memory().percent,
            load1=load1,
        )

    async def _receive(self, coordinator: Liveness) -> None:
        assert self.sock is not None
        sock = self.sock
        while True:
            frames = await sock.recv_multipart()
            coordinator.heard(time.monotonic())
            message = decode_from_coordinator(frames, self.bad)
            if message is not None:
                self._handle(message)

    def _handle(self, message: Message) -> None:
        if isinstance(message, Dispatch):
            self._start(message.tasks)
        elif isinstance(message, CoordinatorHeartbeat):
            pass
        elif isinstance(message, Welcome):
            self._on_welcome(message)
        elif isinstance(message, Refused):
            self._on_refused(message)
        elif isinstance(message, Reset):
            if self.refused_since is not None:
                pass  # we register again on the schedule the refusal set
            elif self.welcomed or time.monotonic() - self.registered_at > self.interval_s:
                print(f"worker {self.worker_id}: {message.reason}; registering again", flush=True)
                self.welcomed = False
                self._register()
        else:
            self.bad.record(f"{type(message).__name__} is not sent to a worker")

    def _on_refused(self, message: Refused) -> None:
        now = time.monotonic()
        window = self.interval_s * self.liveness
        self.welcomed = False
        if self.refused_since is None:
            self.refused_since = now
            print(
                f"worker {self.worker_id}: registration refused ({message.reason}): "
                f"{message.detail}; trying again",
                flush=True,
            )
        if now - self.refused_since >= REFUSED_GIVE_UP_WINDOWS * window:
            if message.reason == RefusalReason.WORKER_ID_IN_USE.value:
                self._fail(
                    f"worker id {self.worker_id!r} is in use by another live worker "
                    f"({message.detail}); start this one with another --id"
                )
            else:
                self._fail(f"the coordinator refused to register this worker: {message.detail}")
            return
        # Ask again when the holder may have expired, but often enough that the replies
        # keep proving the coordinator alive.
        wait = max(self.interval_s, min(message.retry_after_s, window / 2))
        self.next_register_at = now + wait

    def _check_handshakes(self) -> None:
        if self.watch is None:
            return
        for failure in self.watch.failures():
            if failure.fault is PeerFault.DENIED_HANDSHAKE:
                self._fail(
                    f"the coordinator at {self.endpoint} refused the connection: "
                    f"{failure.reason}; {refusal_hint(self.keys)}"
                )
                return
            self.handshake_log(
                f"worker {self.worker_id}: warning: handshake with {self.endpoint} failed: "
                f"{failure.reason}; is it the coordinator's task port"
                + (" and DIR/coordinator.key its public key?" if self.keys else "?")
            )

    def _fail(self, reason: str) -> None:
        """Give up for good: one line, exit code 3 (nothing a retry could fix)."""
        print(f"worker {self.worker_id}: error: {reason}", file=sys.stderr, flush=True)
        self.exit_code = REFUSED_EXIT
        self.stop_now.set()

    def _on_welcome(self, message: Welcome) -> None:
        self.backoff.reset()
        self.welcomed = True
        self.refused_since = self.next_register_at = None
        verb = "registered" if not self.registered_once else "registered again"
        self.registered_once = True
        print(f"worker {self.worker_id} {verb} with {message.coordinator_id}", flush=True)
        if self.draining:
            self._send(Drain(self.worker_id))
        if self.outbox:
            self._flush()

    # --- Tasks ----------------------------------------------------------------------------------

    def _start(self, tasks: list[Assignment]) -> None:
        for task in tasks:
            if task.task_id in self.running:
                continue  # already running it (a re-dispatch raced with our re-registration)
            quick = run_quick(task)
            if quick is not None:
                self.outbox.append(quick)
            else:
                self.running[task.task_id] = asyncio.create_task(self._run_one(task))
        if self.outbox:
            self._flush()

    async def _run_one(self, task: Assignment) -> None:
        try:
            result = await run(task, self.executor)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a task must never take the worker down
            result = TaskResult(task.task_id, task.attempt, False, "", f"worker error: {exc}")
        self.running.pop(task.task_id, None)
        self.outbox.append(result)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Send finished results, MAX_BATCH per frame."""
        self.flush_scheduled = False
        if self.sock is None:
            return  # kept for the next connection
        outbox, self.outbox = self.outbox, []
        for start in range(0, len(outbox), MAX_BATCH):
            self._send(Results(self.worker_id, outbox[start : start + MAX_BATCH]))

    def _send(self, message: Message) -> None:
        if self.sock is None:
            return
        sent = asyncio.ensure_future(self.sock.send(encode(message), zmq.NOBLOCK))
        sent.add_done_callback(self._check_sent)

    def _check_sent(self, sent: asyncio.Future[Any]) -> None:
        exc = None if sent.cancelled() else sent.exception()
        if exc is not None:
            # Queue full or socket closing: the coordinator's timeouts recover the tasks.
            self.bad.record(f"could not send: {exc}")


def worker_id(text: str) -> str:
    if not 0 < len(text) <= 64 or not text.isprintable() or " " in text:
        raise argparse.ArgumentTypeError(f"not a usable worker id: {text!r}")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Cluster worker (DEALER to coordinator 5570).")
    parser.add_argument("--id", required=True, type=worker_id, help="unique worker name")
    parser.add_argument("--coordinator", default=DEFAULT_COORDINATOR, help="coordinator host")
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT)
    parser.add_argument("--capacity", type=positive_int, default=DEFAULT_CAPACITY)
    parser.add_argument("--heartbeat-interval", type=positive_float, default=DEFAULT_INTERVAL_S)
    parser.add_argument("--liveness", type=positive_int, default=DEFAULT_LIVENESS)
    parser.add_argument(
        "--reconnect-max", type=positive_float, default=BACKOFF_MAX_S, help="backoff cap (s)"
    )
    add_keys_option(parser, server=False)
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace, keys: ClientKeys | None = None) -> int:
    worker = Worker(args, keys)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, worker.on_signal)
    return await worker.run()


def main(argv: list[str] | None = None) -> int:
    robust_console()
    args = parse_args(argv)
    keys = keys_or_exit(load_client_keys, args.keys, "worker")
    try:
        return asyncio.run(amain(args, keys))
    except zmq.ZMQError as exc:
        print(f"worker: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
