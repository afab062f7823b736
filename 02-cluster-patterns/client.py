"""Submit work to the cluster: an asyncio API (ClusterClient) and a command line.

    client (DEALER) --SUBMIT(batches of tasks with client-chosen ids)--> coordinator ROUTER :5570
                    <--ACCEPTED(task ids)-- <--COMPLETED(outcomes)-- <--COORDINATOR_HEARTBEAT--

What to send and when to re-send is ClientSession's (client_session.py, pure logic): task ids
are idempotency keys, so every unresolved task is re-submitted when the coordinator goes
silent, restarts or stalls, and each task gets exactly one outcome. This file is the socket,
one future per task, and the command line.

Run it (after coordinator.py and some worker.py):
    python 02-cluster-patterns/client.py --count 500 --kind echo
    python 02-cluster-patterns/client.py --count 50 --kind sleep --ms 200 --json /tmp/summary.json
    python 02-cluster-patterns/client.py --count 5 --kind fail        # exits 1: tasks failed
    python 02-cluster-patterns/client.py --count 9 --kind echo --keys /tmp/keys   # CURVE
Exit codes: 0 every task succeeded, 1 some failed or got no outcome, 2 bad arguments or key
files, 3 the coordinator refused the connection (CURVE), 130 interrupted.

From Python:
    async with ClusterClient(ClientConfig(port=5570)) as client:
        summary = await client.run_batch("echo", 1000)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Final

import zmq
import zmq.asyncio

from cluster_patterns import defaults
from cluster_patterns.cli_args import (
    add_heartbeat_options,
    bounded,
    config_from,
    make_parser,
    output_file,
)
from cluster_patterns.cli_args import port_number
from cluster_patterns.cli_args import positive_float, positive_int
from cluster_patterns.client_session import ClientSession
from cluster_patterns.cluster_keys import ClientKeys, add_keys_option, keys_or_exit
from cluster_patterns.cluster_keys import load_client_keys, refusal_hint, secure_client
from cluster_patterns.protocol import MAX_PAYLOAD_CHARS, MAX_TASK_MS, TaskKind, TaskOutcome
from cluster_patterns.protocol import TaskSpec, encode
from cluster_patterns.stats import percentile
from cluster_patterns.transport import BadInput, HandshakeWatch, PeerFault, configure
from cluster_patterns.transport import endpoint, robust_console

DEFAULT_TIMEOUT_S: Final = 120.0
# Tasks submitted but not finished at any time: bounds coordinator memory and keeps the
# measured latency about the cluster rather than about an ever-growing queue.
DEFAULT_WINDOW: Final = 4096
REFUSED_EXIT: Final = 3


@dataclass(frozen=True)
class ClientConfig:
    """Where the coordinator is, and how long its silence may last before we re-submit."""

    coordinator: str = defaults.LOOPBACK
    port: int = defaults.TASK_PORT
    client_id: str = ""  # "" picks a random one
    # Until a COORDINATOR_HEARTBEAT announces the coordinator's own.
    heartbeat_interval_s: float = defaults.HEARTBEAT_INTERVAL_S
    liveness: int = defaults.LIVENESS


class CoordinatorRefused(Exception):
    """The coordinator refused this client's handshake (CURVE key or mechanism)."""


@dataclass
class BatchSummary:
    submitted: int
    done: int
    failed: int
    retried: int
    duplicates: int
    lost: int
    p50_ms: float
    p99_ms: float
    tasks_per_s: float
    elapsed_s: float
    resubmissions: int = 0

    @property
    def all_succeeded(self) -> bool:
        return self.done == self.submitted and self.submitted > 0

    def line(self) -> str:
        return (
            f"submitted {self.submitted}, done {self.done}, failed {self.failed}, "
            f"retried {self.retried}, duplicates {self.duplicates}, lost {self.lost}, "
            f"p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms, "
            f"{self.tasks_per_s:.0f} tasks/s in {self.elapsed_s:.2f} s"
        )


class ClusterClient:
    """Submits tasks and collects exactly one outcome per task id."""

    def __init__(
        self,
        config: ClientConfig = ClientConfig(),
        keys: ClientKeys | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client_id = config.client_id or f"client-{secrets.token_hex(6)}"
        self.id_prefix = secrets.token_hex(8)  # 64 random bits: no other client has it
        self.task_numbers = itertools.count()
        self.keys = keys
        self.clock = clock
        self.endpoint = endpoint(config.coordinator, config.port)
        self.session = ClientSession(
            self.client_id,
            heartbeat_interval_s=config.heartbeat_interval_s,
            liveness=config.liveness,
            clock=clock,
        )
        self.ctx = zmq.asyncio.Context()
        self.sock = configure(
            self.ctx.socket(zmq.DEALER), routing_id=f"client:{self.client_id}".encode()
        )
        secure_client(self.sock, keys)
        self.watch = HandshakeWatch(self.sock, connecting=True)
        self.refused: CoordinatorRefused | None = None
        self.futures: dict[str, asyncio.Future[TaskOutcome]] = {}
        self.bad = BadInput(f"client {self.client_id}")
        self._tasks: list[asyncio.Task[None]] = []
        self.progress = asyncio.Event()  # set whenever an outcome arrives

    async def __aenter__(self) -> ClusterClient:
        self.connect()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def connect(self) -> None:
        self.sock.connect(self.endpoint)
        self.session.heard()  # the silence is counted from now
        self._tasks = [
            asyncio.create_task(self._receive()),
            asyncio.create_task(self._watch_coordinator()),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.watch.close()
        self.sock.close(linger=0)
        self.ctx.term()

    # --- Submitting -----------------------------------------------------------------------------

    def new_task(self, kind: str, ms: int = 0, payload: str = "") -> TaskSpec:
        """A task with a fresh id: this client's random prefix and a counter (unique)."""
        task_id = f"{self.id_prefix}-{next(self.task_numbers):x}"
        return TaskSpec(task_id=task_id, kind=kind, ms=ms, payload=payload)

    def submit(self, specs: Sequence[TaskSpec]) -> list[asyncio.Future[TaskOutcome]]:
        """Send tasks (in batches); each future resolves with the task's single outcome."""
        loop = asyncio.get_running_loop()
        futures = [self.futures.setdefault(s.task_id, loop.create_future()) for s in specs]
        self.session.submit(specs)
        self._send_outbox()
        return futures

    def _send_outbox(self) -> None:
        for message in self.session.take_outbox():
            self.sock.send(encode(message))  # the asyncio socket queues it if the pipe is full

    async def wait(
        self, futures: Sequence[asyncio.Future[TaskOutcome]], timeout: float | None = None
    ) -> list[TaskOutcome]:
        """The outcomes that arrived within ``timeout`` (the rest are lost)."""
        if futures:
            await asyncio.wait(futures, timeout=timeout)
        if self.refused is not None:
            raise self.refused
        return [f.result() for f in futures if f.done() and not f.cancelled()]

    async def run_batch(
        self,
        kind: str,
        count: int,
        ms: int = 0,
        payload: str = "",
        timeout: float = DEFAULT_TIMEOUT_S,
        window: int = DEFAULT_WINDOW,
    ) -> BatchSummary:
        """Submit ``count`` tasks (at most ``window`` unfinished at a time) and summarize."""
        started = self.clock()
        deadline = started + timeout
        futures: list[asyncio.Future[TaskOutcome]] = []
        ids: list[str] = []
        resolved = 0  # ids[:resolved] have their outcome (checked in order, so O(count) in all)
        unresolved = self.session.unresolved
        while self.clock() < deadline:
            if self.refused is not None:
                raise self.refused
            room = min(window - len(unresolved), window // 4 or 1, count - len(ids))
            if room > 0:
                chunk = [self.new_task(kind, ms, payload) for _ in range(room)]
                ids.extend(spec.task_id for spec in chunk)
                futures.extend(self.submit(chunk))
                continue
            while resolved < len(ids) and ids[resolved] not in unresolved:
                resolved += 1
            if resolved == count:
                break
            # No asyncio.wait on the futures: a callback on each would cost a loop turn each.
            self.progress.clear()
            try:
                await asyncio.wait_for(self.progress.wait(), deadline - self.clock())
            except asyncio.TimeoutError:
                break
        outcomes = [f.result() for f in futures if f.done() and not f.cancelled()]
        return self.summarize(count, outcomes, self.clock() - started)

    def summarize(
        self, submitted: int, outcomes: list[TaskOutcome], elapsed: float
    ) -> BatchSummary:
        latencies = self.session.latencies
        samples = [latencies[o.task_id] for o in outcomes if o.task_id in latencies]
        done = sum(1 for o in outcomes if o.ok)
        return BatchSummary(
            submitted=submitted,
            done=done,
            failed=len(outcomes) - done,
            retried=sum(1 for o in outcomes if o.tries > 1),
            duplicates=self.session.duplicates,
            lost=submitted - len(outcomes),
            p50_ms=round(percentile(samples, 0.50) * 1000, 3),
            p99_ms=round(percentile(samples, 0.99) * 1000, 3),
            tasks_per_s=round(len(outcomes) / elapsed, 1) if elapsed > 0 else 0.0,
            elapsed_s=round(elapsed, 3),
            resubmissions=self.session.resubmissions,
        )

    # --- Receiving ------------------------------------------------------------------------------

    async def _receive(self) -> None:
        session = self.session
        while True:
            session.deliver(await self.sock.recv_multipart(), self.bad)
            outcomes = session.take_outcomes()
            for outcome in outcomes:
                self.futures[outcome.task_id].set_result(outcome)
            if outcomes:
                self.progress.set()
            self._send_outbox()  # a new coordinator incarnation gets everything again

    def _check_handshakes(self) -> None:
        for failure in self.watch.failures():
            if failure.fault is PeerFault.DENIED_HANDSHAKE and self.refused is None:
                self.refused = CoordinatorRefused(
                    f"the coordinator at {self.endpoint} refused the connection: "
                    f"{failure.reason}; {refusal_hint(self.keys)}"
                )
                for future in self.futures.values():
                    future.cancel()  # nothing will come: wake up whoever waits
                self.progress.set()

    async def _watch_coordinator(self) -> None:
        while True:
            await asyncio.sleep(self.session.interval_s)
            self._check_handshakes()
            self.session.tick()
            self._send_outbox()


def parse_args(argv: list[str] | None = None) -> tuple[Any, ClientConfig]:
    """The parsed arguments and the client's config, from the command line."""
    parser = make_parser(description="Submit N tasks to the cluster and wait for them.")
    required: dict[str, Any] = {"required": True, "default": argparse.SUPPRESS}
    parser.add_argument("--count", type=positive_int, help="tasks to submit (required)", **required)
    parser.add_argument("--kind", choices=list(TaskKind), help="task kind (required)", **required)
    parser.add_argument(
        "--ms", type=bounded(0, MAX_TASK_MS), default=0, help="duration of sleep and cpu"
    )
    parser.add_argument("--payload", default="", help="text an echo task returns")
    parser.add_argument("--coordinator", default=defaults.LOOPBACK, help="coordinator host")
    parser.add_argument(
        "--port", type=port_number, default=defaults.TASK_PORT, help="coordinator task port"
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=DEFAULT_TIMEOUT_S, help="seconds to wait"
    )
    parser.add_argument(
        "--window", type=positive_int, default=DEFAULT_WINDOW, help="unfinished tasks at most"
    )
    add_heartbeat_options(
        parser,
        interval_help="seconds; until the coordinator's heartbeat announces its own",
        liveness_help="silent intervals before the client re-submits (until the coordinator says)",
    )
    parser.add_argument("--json", type=output_file, help="also write the summary as JSON here")
    add_keys_option(parser, server=False)
    args = parser.parse_args(argv)
    if len(args.payload) > MAX_PAYLOAD_CHARS:
        parser.error(f"--payload is longer than {MAX_PAYLOAD_CHARS} characters")
    return args, config_from(ClientConfig, args)


async def amain(args: Any, config: ClientConfig, keys: ClientKeys | None = None) -> int:
    client = ClusterClient(config, keys)
    loop = asyncio.get_running_loop()
    current = asyncio.current_task()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: current.cancel() if current else None)
    async with client:
        try:
            summary = await client.run_batch(
                args.kind, args.count, args.ms, args.payload, args.timeout, args.window
            )
        except asyncio.CancelledError:
            print("client: interrupted", file=sys.stderr)
            return 130
        except CoordinatorRefused as exc:
            print(f"client: error: {exc}", file=sys.stderr)
            return REFUSED_EXIT
    print(f"client: {summary.line()}", flush=True)
    if summary.lost == summary.submitted:
        print(
            f"client: no outcome from {client.endpoint} (is the coordinator up?)", file=sys.stderr
        )
    if args.json:
        payload: dict[str, Any] = asdict(summary)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0 if summary.all_succeeded else 1


def main(argv: list[str] | None = None) -> int:
    robust_console()
    args, config = parse_args(argv)
    keys = keys_or_exit(load_client_keys, args.keys, "client")
    try:
        return asyncio.run(amain(args, config, keys))
    except (OSError, zmq.ZMQError) as exc:
        print(f"client: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
