"""Benchmark of the cluster (a script, not a test): throughput, dispatch latency, detection.

It starts its own coordinator and workers as subprocesses on free loopback ports and
measures, side by side in one run:

  * raw pyzmq ROUTER/DEALER echo throughput between two processes (the ceiling: one small
    message per round trip, no protocol, no logic);
  * no-op (echo) task throughput through coordinator and workers, with 1 and 4 workers;
  * dispatch latency: one task at a time, submit -> outcome, p50/p99, with 1 and 4 workers;
  * failure-detection latency over N SIGKILLed workers: kill -> "dead" on the status
    channel, p50/p99 (target p99 <= interval * (liveness + 1));
  * the codec: encode+decode microseconds per message, JSON vs msgpack (if installed).

Run it:
    python 02-cluster-patterns/benchmark.py              # full run, about a minute
    python 02-cluster-patterns/benchmark.py --quick      # a few seconds
    python 02-cluster-patterns/benchmark.py --json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import zmq

from cluster_patterns.cli_args import ErrorExit, make_parser, output_file, run_interruptible
from cluster_patterns.client import ClientConfig, ClusterClient
from cluster_patterns.defaults import HEARTBEAT_INTERVAL_S, LIVENESS, LOOPBACK
from cluster_patterns.protocol import MAX_BATCH, Assignment, Dispatch, NodeEvent, NodeEventKind
from cluster_patterns.protocol import NodeState, ProtocolError, Status, decode, encode
from cluster_patterns.stats import percentile
from cluster_patterns.transport import endpoint
from cluster_runner_simulation.testing import free_port  # the loopback harness: scripts only

HERE: Final = Path(__file__).resolve().parent
REPO: Final = HERE.parent
FULL: Final = {"tasks": 100_000, "echo_msgs": 200_000, "latency_tasks": 1000, "kills": 20}
QUICK: Final = {"tasks": 20_000, "echo_msgs": 50_000, "latency_tasks": 200, "kills": 5}
WORKER_CAPACITY: Final = 256
ECHO_WINDOW: Final = 200
KILLS_IN_PARALLEL: Final = 5


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )


def wait_line(proc: subprocess.Popen[bytes], needle: bytes, timeout: float = 20.0) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if needle in line:
            return
        if not line and proc.poll() is not None:
            break
    raise RuntimeError(f"{proc.args!r} never printed {needle!r}")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- Raw pyzmq ceiling -------------------------------------------------------------------------


def echo_server(port: int) -> None:
    """ROUTER that sends back every message it gets (runs in a subprocess)."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    # Block instead of silently dropping replies when the reply pipe is full.
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.SNDHWM, 0)
    router.bind(endpoint(LOOPBACK, port))
    print("echo ready", flush=True)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    while True:
        router.send_multipart(router.recv_multipart())


def raw_echo_throughput(count: int) -> float:
    port = free_port()
    server = spawn(str(Path(__file__)), "--echo-server", str(port))
    try:
        wait_line(server, b"echo ready")
        ctx = zmq.Context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(endpoint(LOOPBACK, port))
        payload = b"x" * 64
        started = time.perf_counter()
        sent = received = 0
        while received < count:
            while sent < count and sent - received < ECHO_WINDOW:
                dealer.send(payload)
                sent += 1
            dealer.recv()
            received += 1
        elapsed = time.perf_counter() - started
        dealer.close()
        ctx.term()
        return count / elapsed
    finally:
        server.kill()
        server.wait()


# --- The cluster ------------------------------------------------------------------------------


@contextmanager
def cluster(workers: int, capacity: int = WORKER_CAPACITY) -> Iterator[tuple[int, int]]:
    port, status_port = free_port(), free_port()
    coordinator = spawn(
        "02-cluster-patterns/coordinator.py", "--port", str(port), "--status-port", str(status_port)
    )
    procs = [coordinator]
    try:
        wait_line(coordinator, b"coordinator ready")
        for i in range(workers):
            worker = spawn(
                "02-cluster-patterns/worker.py",
                *("--id", f"bench-w{i}", "--port", str(port), "--capacity", str(capacity)),
            )
            procs.append(worker)
        for worker in procs[1:]:
            wait_line(worker, b"registered with")
        yield port, status_port
    finally:
        stop(procs[1:])
        stop(procs[:1])


async def throughput(port: int, count: int) -> dict[str, float]:
    async with ClusterClient(ClientConfig(port=port)) as client:
        await client.run_batch("echo", min(2000, count))  # warm up
        summary = await client.run_batch("echo", count, window=16_384)
    if not summary.all_succeeded:
        raise RuntimeError(f"benchmark batch did not complete: {summary.line()}")
    return {"tasks_per_s": summary.tasks_per_s, "p50_ms": summary.p50_ms, "p99_ms": summary.p99_ms}


async def dispatch_latency(port: int, count: int) -> dict[str, float]:
    """One task in flight at a time: the cost of a full round trip through the cluster."""
    async with ClusterClient(ClientConfig(port=port)) as client:
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            [future] = client.submit([client.new_task("echo")])
            await future
            samples.append(time.perf_counter() - started)
    return {
        "p50_ms": round(percentile(samples, 0.5) * 1000, 3),
        "p99_ms": round(percentile(samples, 0.99) * 1000, 3),
    }


def detection_latency(kills: int) -> dict[str, float]:
    """SIGKILL workers (a few at a time) and time kill -> "dead" on the status channel."""
    from_kill: list[float] = []
    from_silence: list[float] = []
    with cluster(0) as (port, status_port):
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoint(LOOPBACK, status_port))
        round_no = 0
        while len(from_kill) < kills:
            round_no += 1
            batch = min(KILLS_IN_PARALLEL, kills - len(from_kill))
            names = [f"victim-{round_no}-{i}" for i in range(batch)]
            victims = {
                name: spawn("02-cluster-patterns/worker.py", "--id", name, "--port", str(port))
                for name in names
            }
            for proc in victims.values():
                wait_line(proc, b"registered with")
            time.sleep(HEARTBEAT_INTERVAL_S * 2)  # let them heartbeat normally first
            killed_at: dict[str, float] = {}
            for name, proc in victims.items():
                proc.kill()
                killed_at[name] = time.monotonic()
                time.sleep(0.05)
            seen: set[str] = set()
            deadline = time.monotonic() + 15
            while seen != set(names) and time.monotonic() < deadline:
                if not sub.poll(100):
                    continue
                now = time.monotonic()
                try:
                    msg = decode(sub.recv())
                except ProtocolError:
                    continue
                if isinstance(msg, Status):
                    for node in msg.nodes:
                        if node.node_id in killed_at and node.state is NodeState.DEAD:
                            if node.node_id not in seen:
                                seen.add(node.node_id)
                                from_kill.append(now - killed_at[node.node_id])
                elif isinstance(msg, NodeEvent) and msg.event is NodeEventKind.DEAD:
                    if msg.node_id in killed_at and msg.detection_latency_s is not None:
                        from_silence.append(msg.detection_latency_s)
            for proc in victims.values():
                proc.wait()
        sub.close()
        ctx.term()
    return {
        "kills": len(from_kill),
        "p50_s": round(percentile(from_kill, 0.5), 3),
        "p99_s": round(percentile(from_kill, 0.99), 3),
        "max_s": round(max(from_kill), 3),
        "silence_p50_s": round(percentile(from_silence, 0.5), 3),
        "silence_p99_s": round(percentile(from_silence, 0.99), 3),
        "budget_s": HEARTBEAT_INTERVAL_S * (LIVENESS + 1),
    }


# --- The codec ----------------------------------------------------------------------------------


def time_per_call(fn: Callable[[], object], seconds: float = 0.3) -> float:
    calls = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(100):
            fn()
        calls += 100
    return (time.perf_counter() - started) / calls * 1e6


def codec_costs() -> dict[str, float | None]:
    single = Dispatch([Assignment("0123456789abcdef0123456789abcdef", 1, "echo", 0, "")])
    batch = Dispatch([Assignment(f"{i:032x}", 1, "echo", 0, "") for i in range(MAX_BATCH)])
    costs: dict[str, float | None] = {
        "json_us_per_message": time_per_call(lambda: decode(encode(single))),
        "json_us_per_task_in_batch": time_per_call(lambda: decode(encode(batch))) / MAX_BATCH,
        "msgpack_us_per_message": None,
        "msgpack_us_per_task_in_batch": None,
    }
    try:
        msgpack: Any = importlib.import_module("msgpack")
    except ImportError:
        return costs

    def as_dict(message: Dispatch) -> dict[str, Any]:
        return json.loads(encode(message))  # type: ignore[no-any-return]

    plain_single, plain_batch = as_dict(single), as_dict(batch)
    # Same object shape, no validation: the floor a msgpack codec could reach.
    costs["msgpack_us_per_message"] = time_per_call(
        lambda: msgpack.unpackb(msgpack.packb(plain_single))
    )
    costs["msgpack_us_per_task_in_batch"] = (
        time_per_call(lambda: msgpack.unpackb(msgpack.packb(plain_batch))) / MAX_BATCH
    )
    costs["json_raw_us_per_message"] = time_per_call(lambda: json.loads(json.dumps(plain_single)))
    return costs


# --- Report -----------------------------------------------------------------------------------


def run(sizes: dict[str, int]) -> dict[str, Any]:
    results: dict[str, Any] = {"cpu_count": os.cpu_count(), "sizes": sizes}
    print("measuring raw pyzmq ROUTER/DEALER echo ...", flush=True)
    results["raw_echo_msgs_per_s"] = round(raw_echo_throughput(sizes["echo_msgs"]))
    for workers in (1, 4):
        print(f"measuring the cluster with {workers} worker(s) ...", flush=True)
        with cluster(workers) as (port, _):
            results[f"throughput_{workers}w"] = asyncio.run(throughput(port, sizes["tasks"]))
            results[f"latency_{workers}w"] = asyncio.run(
                dispatch_latency(port, sizes["latency_tasks"])
            )
    print(f"measuring failure detection over {sizes['kills']} kills ...", flush=True)
    results["detection"] = detection_latency(sizes["kills"])
    results["codec"] = codec_costs()
    return results


def table(r: dict[str, Any]) -> str:
    det, codec = r["detection"], r["codec"]
    raw = r["raw_echo_msgs_per_s"]
    rows = [
        "| measure | 1 worker | 4 workers |",
        "| --- | ---: | ---: |",
        f"| raw pyzmq ROUTER/DEALER echo (msgs/s, ceiling) | {raw:,} | {raw:,} |",
        "| no-op tasks/s through the cluster | "
        f"{r['throughput_1w']['tasks_per_s']:,.0f} | {r['throughput_4w']['tasks_per_s']:,.0f} |",
        "| ... as % of the raw echo | "
        f"{100 * r['throughput_1w']['tasks_per_s'] / raw:.0f}% | "
        f"{100 * r['throughput_4w']['tasks_per_s'] / raw:.0f}% |",
        "| dispatch latency p50 / p99 (ms, 1 task in flight) | "
        f"{r['latency_1w']['p50_ms']:.2f} / {r['latency_1w']['p99_ms']:.2f} | "
        f"{r['latency_4w']['p50_ms']:.2f} / {r['latency_4w']['p99_ms']:.2f} |",
        "",
        "| failure detection | value |",
        "| --- | ---: |",
        f"| kills | {det['kills']} |",
        f"| kill -> dead on status channel p50 / p99 / max (s) | "
        f"{det['p50_s']:.2f} / {det['p99_s']:.2f} / {det['max_s']:.2f} |",
        f"| last message -> dead verdict p50 / p99 (s) | "
        f"{det['silence_p50_s']:.2f} / {det['silence_p99_s']:.2f} |",
        f"| budget interval*(liveness+1) (s) | {det['budget_s']:.2f} |",
        "",
        "| codec (encode+decode) | JSON (validated) | msgpack (unvalidated) |",
        "| --- | ---: | ---: |",
        f"| µs per single-task message | {codec['json_us_per_message']:.1f} | "
        f"{_fmt(codec['msgpack_us_per_message'])} |",
        f"| µs per task in a {MAX_BATCH}-task batch | {codec['json_us_per_task_in_batch']:.2f} | "
        f"{_fmt(codec['msgpack_us_per_task_in_batch'])} |",
    ]
    return "\n".join(rows)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(description="Benchmark the cluster on loopback.")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, a few seconds")
    parser.add_argument("--json", type=output_file, help="also write the figures as JSON here")
    parser.add_argument("--echo-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.echo_server:
        try:
            echo_server(args.echo_server)
        except KeyboardInterrupt:
            pass
        return 0
    return run_interruptible("benchmark", lambda: measure(args), [ErrorExit(RuntimeError, 1)])


def measure(args: argparse.Namespace) -> int:
    results = run(QUICK if args.quick else FULL)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
