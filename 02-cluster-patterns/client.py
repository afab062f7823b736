"""Submit work to the cluster: an asyncio API (ClusterClient) and a command line.

    client (DEALER) --SUBMIT(batches of tasks with client-chosen ids)--> coordinator ROUTER :5570
                    <--ACCEPTED(task ids)-- <--COMPLETED(outcomes)-- <--COORDINATOR_HEARTBEAT--

Task ids are chosen here and are idempotency keys: when the coordinator goes silent for
interval * liveness (or a new coordinator incarnation shows up), the client re-submits
every task that has no outcome yet. The coordinator runs an unknown id, answers a finished
one with its recorded outcome, and ignores one it is still running. An outcome that arrives
twice is counted as a duplicate and ignored, so each task gets exactly one outcome here.

Run it (after coordinator.py and some worker.py):
    python 02-cluster-patterns/client.py --count 500 --kind echo
    python 02-cluster-patterns/client.py --count 50 --kind sleep --ms 200 --json /tmp/summary.json
    python 02-cluster-patterns/client.py --count 5 --kind fail        # exits 1: tasks failed
    python 02-cluster-patterns/client.py --count 9 --kind echo --keys /tmp/keys   # CURVE
Exit codes: 0 every task succeeded, 1 some failed or got no outcome, 2 bad arguments or key
files, 3 the coordinator refused the connection (CURVE), 130 interrupted.

From Python:
    async with ClusterClient("127.0.0.1", 5570) as client:
        summary = await client.run_batch("echo", 1000)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import zmq
import zmq.asyncio

from cluster_patterns.cli_args import non_negative_int, port_number, positive_float, positive_int
from cluster_patterns.cluster_keys import (
    ClientKeys,
    add_keys_option,
    keys_or_exit,
    load_client_keys,
    refusal_hint,
    secure_client,
)
from cluster_patterns.heartbeat import DEFAULT_INTERVAL_S, DEFAULT_LIVENESS
from cluster_patterns.protocol import (
    MAX_BATCH,
    MAX_PAYLOAD_CHARS,
    Accepted,
    Completed,
    CoordinatorHeartbeat,
    Submit,
    TaskKind,
    TaskOutcome,
    TaskSpec,
    encode,
)
from cluster_patterns.transport import (
    BadInput,
    HandshakeWatch,
    PeerFault,
    configure,
    decode_from_coordinator,
    endpoint,
    robust_console,
)

DEFAULT_COORDINATOR: Final = "127.0.0.1"
DEFAULT_PORT: Final = 5570
DEFAULT_TIMEOUT_S: Final = 120.0
# Tasks submitted but not finished at any time: bounds coordinator memory and keeps the
# measured latency about the cluster rather than about an ever-growing queue.
DEFAULT_WINDOW: Final = 4096
STALL_AFTER_S: Final = 10.0
REFUSED_EXIT: Final = 3


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


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (0.0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[rank]


class ClusterClient:
    """Submits tasks and collects exactly one outcome per task id."""

    def __init__(
        self,
        host: str = DEFAULT_COORDINATOR,
        port: int = DEFAULT_PORT,
        *,
        client_id: str | None = None,
        heartbeat_interval_s: float = DEFAULT_INTERVAL_S,
        liveness: int = DEFAULT_LIVENESS,
        keys: ClientKeys | None = None,
    ) -> None:
        self.client_id = client_id or f"client-{uuid.uuid4().hex[:12]}"
        self.keys = keys
        self.endpoint = endpoint(host, port)
        self.lost_after_s = heartbeat_interval_s * liveness
        self.interval_s = heartbeat_interval_s
        self.ctx = zmq.asyncio.Context()
        self.sock = configure(
            self.ctx.socket(zmq.DEALER), routing_id=f"client:{self.client_id}".encode()
        )
        secure_client(self.sock, keys)
        self.watch = HandshakeWatch(self.sock)
        self.refused: CoordinatorRefused | None = None
        self.futures: dict[str, asyncio.Future[TaskOutcome]] = {}
        self.unresolved: dict[str, TaskSpec] = {}
        self.sent_at: dict[str, float] = {}
        self.latencies: dict[str, float] = {}
        self.accepted: set[str] = set()
        self.duplicates = 0
        self.resubmissions = 0
        self.coordinator_id: str | None = None
        self.last_heard = time.monotonic()
        # No outcome at all for this long while tasks are unresolved: ask again (covers a
        # reply lost anywhere on the way; the coordinator answers known ids idempotently).
        self.stall_after_s = max(STALL_AFTER_S, self.lost_after_s * 2)
        self.last_progress = time.monotonic()
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
        self.last_heard = time.monotonic()
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
        return TaskSpec(task_id=uuid.uuid4().hex, kind=kind, ms=ms, payload=payload)

    def submit(self, specs: Sequence[TaskSpec]) -> list[asyncio.Future[TaskOutcome]]:
        """Send tasks (in batches); each future resolves with the task's single outcome."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures = []
        for spec in specs:
            future = self.futures.get(spec.task_id)
            if future is None:
                future = loop.create_future()
                self.futures[spec.task_id] = future
                self.unresolved[spec.task_id] = spec
                self.sent_at[spec.task_id] = now
            futures.append(future)
        self._send_specs(list(specs))
        return futures

    def _send_specs(self, specs: list[TaskSpec]) -> None:
        for start in range(0, len(specs), MAX_BATCH):
            frame = encode(Submit(self.client_id, specs[start : start + MAX_BATCH]))
            self.sock.send(frame)  # the asyncio socket queues it if the pipe is full

    def resubmit_unresolved(self) -> None:
        """Re-send every task without an outcome; harmless for ids the coordinator knows."""
        if self.unresolved:
            self.resubmissions += 1
            self._send_specs(list(self.unresolved.values()))

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
        started = time.monotonic()
        deadline = started + timeout
        specs = [self.new_task(kind, ms, payload) for _ in range(count)]
        futures: list[asyncio.Future[TaskOutcome]] = []
        next_index = 0
        while next_index < count and time.monotonic() < deadline:
            if self.refused is not None:
                raise self.refused
            room = window - len(self.unresolved)
            if room > 0:
                chunk = specs[next_index : next_index + min(room, window // 4 or 1)]
                futures.extend(self.submit(chunk))
                next_index += len(chunk)
                continue
            self.progress.clear()
            try:
                await asyncio.wait_for(self.progress.wait(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                break
        outcomes = await self.wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        elapsed = time.monotonic() - started
        return self.summarize(count, outcomes, elapsed)

    def summarize(
        self, submitted: int, outcomes: list[TaskOutcome], elapsed: float
    ) -> BatchSummary:
        latencies = [self.latencies[o.task_id] for o in outcomes if o.task_id in self.latencies]
        done = sum(1 for o in outcomes if o.ok)
        return BatchSummary(
            submitted=submitted,
            done=done,
            failed=len(outcomes) - done,
            retried=sum(1 for o in outcomes if o.tries > 1),
            duplicates=self.duplicates,
            lost=submitted - len(outcomes),
            p50_ms=round(percentile(latencies, 0.50) * 1000, 3),
            p99_ms=round(percentile(latencies, 0.99) * 1000, 3),
            tasks_per_s=round(len(outcomes) / elapsed, 1) if elapsed > 0 else 0.0,
            elapsed_s=round(elapsed, 3),
            resubmissions=self.resubmissions,
        )

    # --- Receiving ------------------------------------------------------------------------------

    async def _receive(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            self.last_heard = time.monotonic()
            message = decode_from_coordinator(frames, self.bad)
            if message is None:
                continue
            if isinstance(message, Completed):
                self._on_completed(message.outcomes)
            elif isinstance(message, Accepted):
                self.accepted.update(message.task_ids)
            elif isinstance(message, CoordinatorHeartbeat):
                self._on_coordinator(message.coordinator_id)
            else:
                self.bad.record(f"{type(message).__name__} is not sent to a client")

    def _on_completed(self, outcomes: list[TaskOutcome]) -> None:
        now = time.monotonic()
        for outcome in outcomes:
            future = self.futures.get(outcome.task_id)
            if future is None:
                continue  # not ours (a previous client with our id); nothing to resolve
            if future.done():
                self.duplicates += 1
                continue
            self.unresolved.pop(outcome.task_id, None)
            self.latencies[outcome.task_id] = now - self.sent_at.pop(outcome.task_id, now)
            future.set_result(outcome)
            self.progress.set()
            self.last_progress = now

    def _on_coordinator(self, coordinator_id: str) -> None:
        previous, self.coordinator_id = self.coordinator_id, coordinator_id
        if previous is not None and previous != coordinator_id:
            # A restarted coordinator: it may have lost what it had not committed.
            self.resubmit_unresolved()

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
        """Re-submit what is unresolved when the coordinator is silent or nothing finishes."""
        while True:
            await asyncio.sleep(self.interval_s)
            self._check_handshakes()
            if not self.unresolved:
                self.last_progress = time.monotonic()
                continue
            now = time.monotonic()
            silent = now - self.last_heard > self.lost_after_s
            stalled = now - self.last_progress > self.stall_after_s
            if silent or stalled:
                self.last_heard = self.last_progress = now  # at most once per period
                self.resubmit_unresolved()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Submit N tasks to the cluster and wait.")
    parser.add_argument("--count", type=positive_int, required=True)
    parser.add_argument("--kind", required=True, choices=[k.value for k in TaskKind])
    parser.add_argument("--ms", type=non_negative_int, default=0, help="for sleep and cpu")
    parser.add_argument("--payload", default="", help="for echo")
    parser.add_argument("--coordinator", default=DEFAULT_COORDINATOR)
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT)
    parser.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--window", type=positive_int, default=DEFAULT_WINDOW)
    parser.add_argument("--heartbeat-interval", type=positive_float, default=DEFAULT_INTERVAL_S)
    parser.add_argument("--liveness", type=positive_int, default=DEFAULT_LIVENESS)
    parser.add_argument("--json", type=Path, help="also write the summary as JSON here")
    add_keys_option(parser, server=False)
    args = parser.parse_args(argv)
    if len(args.payload) > MAX_PAYLOAD_CHARS:
        parser.error(f"--payload is longer than {MAX_PAYLOAD_CHARS} characters")
    return args


async def amain(args: argparse.Namespace, keys: ClientKeys | None = None) -> int:
    client = ClusterClient(
        args.coordinator,
        args.port,
        heartbeat_interval_s=args.heartbeat_interval,
        liveness=args.liveness,
        keys=keys,
    )
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
    args = parse_args(argv)
    keys = keys_or_exit(load_client_keys, args.keys, "client")
    try:
        return asyncio.run(amain(args, keys))
    except (OSError, zmq.ZMQError) as exc:
        print(f"client: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
