"""Lesson 2: PUSH/PULL, a pipeline that spreads work over workers.

What it binds and connects (PORT defaults to 5557)
    ventilator  binds PUSH on tcp://HOST:PORT      (tasks out)
                connects PUSH to tcp://HOST:PORT+1 (tells the sink a batch starts)
    worker      connects PULL to PORT              (tasks in)
                connects PUSH to PORT+1            (results out)
    sink        binds PULL on tcp://HOST:PORT+1    (results in)

What flows
    ventilator -> sink     [BATCH, batch id, number of tasks]
    ventilator -> worker   [TASK, batch id, task number, work in ms]
    worker -> sink         [RESULT, batch id, worker id, task number]

PUSH round-robins: each message goes to the next connected PULL peer, one at a
time, and queues up to its high-water mark for each peer. That is fair only if
every worker is connected before the first task is sent. A worker that connects
late (a "slow joiner") finds the others already holding queued tasks, so it gets
a small share; with no pause at all the first worker to connect can take the
whole batch. The ventilator therefore waits for the sink, then for a worker,
then pauses --settle-ms so the other workers' reconnects land too.

How to run it (from the repository root)
    # Terminal 1
    python 01-zmq-basics/push_pull.py sink
    # Terminal 2
    python 01-zmq-basics/push_pull.py worker 1 &
    python 01-zmq-basics/push_pull.py worker 2 &
    # Terminal 3
    python 01-zmq-basics/push_pull.py ventilator 50
    # The sink prints the results per worker for each batch. The slow joiner:
    python 01-zmq-basics/push_pull.py ventilator 50 --settle-ms 0
    # Stop the workers with: kill %1 %2   (and the sink with Ctrl-C)
    # Everything in one process, with figures (tasks/s, msgs/s):
    python 01-zmq-basics/push_pull.py demo

Exit codes: 0 done, 1 no sink / no worker / port in use, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import collections
import random
import signal
import socket
import sys
import threading
import time
import uuid

import zmq

# --- Tunables ----------------------------------------------------------------------------
DEFAULT_BIND_HOST = "127.0.0.1"  # use --host 0.0.0.0 to accept other machines
DEFAULT_CONNECT_HOST = "localhost"
DEFAULT_PORT = 5557  # tasks on PORT, results on PORT + 1
DEFAULT_MAX_WORK_MS = 100  # each task "works" a random 1..max ms
DEFAULT_SETTLE_MS = 500  # > libzmq's 100 ms reconnect interval: late workers get to join
DEFAULT_WAIT_S = 10.0  # how long the ventilator waits for a sink and a first worker
DELIVERY_LINGER_MS = 5000  # the ventilator's close may wait this long to flush its queue
LINGER_MS = 0  # everyone else drops unsent messages on close
MAX_MESSAGE_BYTES = 64 * 1024
LOG_FIRST_N = 3
LOG_EVERY = 10_000
DEMO_TASKS = 50
DEMO_THROUGHPUT_TASKS = 50_000  # zero-work tasks, to measure the pipeline itself

Socket = zmq.Socket[bytes]
Context = zmq.Context[Socket]


def log(role: str, text: str) -> None:
    # One write per line, so lines from several threads do not interleave.
    sys.stdout.write(f"[{role}] {text}\n")
    sys.stdout.flush()


def tune(sock: Socket, linger_ms: int = LINGER_MS) -> Socket:
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    return sock


def bind_or_explain(sock: Socket, endpoint: str) -> None:
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EADDRINUSE:
            raise SystemExit(
                f"error: cannot bind {endpoint}: address already in use "
                "(is one already running? pick another --port)"
            ) from None
        raise SystemExit(f"error: cannot bind {endpoint}: {exc}") from None


class Fail(Exception):
    """A role cannot go on; the message says why."""


# --- Sink: collects results and shows who did the work -----------------------------------
def run_sink(
    ctx: Context, endpoint: str, batches: int, finished: threading.Semaphore | None = None
) -> None:
    """Report ``batches`` batches (0 = forever); release ``finished`` after each one."""
    sock = tune(ctx.socket(zmq.PULL))
    expected: dict[bytes, int] = {}  # batch id -> number of tasks, from the ventilator
    started: dict[bytes, float] = {}
    per_worker: dict[bytes, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    reported = bad = 0
    try:
        bind_or_explain(sock, endpoint)
        log("sink", f"PULL bound to {endpoint}; waiting for a batch (Ctrl-C stops)")
        while batches == 0 or reported < batches:
            frames = sock.recv_multipart()
            now = time.perf_counter()
            if len(frames) == 3 and frames[0] == b"BATCH" and frames[2].isdigit():
                batch = frames[1]
                expected[batch] = int(frames[2])
                started[batch] = now
                log("sink", f"batch {batch.decode()} announced: {expected[batch]} tasks")
            elif len(frames) == 4 and frames[0] == b"RESULT":
                # A result may overtake its BATCH message: they travel on different
                # connections. Count it anyway; the batch completes once both are in.
                batch, worker = frames[1], frames[2].decode(errors="replace")
                per_worker[batch][worker] += 1
            else:
                bad += 1
                log("sink", f"ignored malformed message #{bad} ({len(frames)} frames)")
                continue
            if batch in expected and sum(per_worker[batch].values()) >= expected[batch]:
                report(batch, per_worker.pop(batch), now - started.pop(batch))
                del expected[batch]
                reported += 1
                if finished is not None:
                    finished.release()
    except zmq.ContextTerminated:
        pass
    finally:
        sock.close()
        for batch, n_tasks in expected.items():
            got = sum(per_worker[batch].values())
            log("sink", f"batch {batch.decode()} incomplete: {got} of {n_tasks} results")


def report(batch: bytes, per_worker: collections.Counter[str], elapsed_s: float) -> None:
    total = sum(per_worker.values())
    log("sink", f"batch {batch.decode()}: {total} results in {elapsed_s:.2f} s")
    log("sink", f"  throughput: {total / max(elapsed_s, 1e-9):,.0f} tasks/s")
    for worker, count in sorted(per_worker.items()):
        bar = "#" * round(40 * count / total)
        log("sink", f"  worker {worker}: {count:6d} tasks {bar}")
    busiest = max(per_worker.values())
    if len(per_worker) == 1:
        log("sink", "  one worker did everything: it was the only one connected, or the")
        log("sink", "  first (slow joiner: the others were still connecting; see --settle-ms)")
    elif busiest > 0.7 * total:
        log("sink", "  unfair share: one worker connected first and PUSH queued tasks to it")
        log("sink", "  before the others joined (slow joiner); try a longer --settle-ms")
    else:
        log("sink", f"  {len(per_worker)} workers shared the batch: PUSH round-robins tasks")


# --- Worker: does the tasks ---------------------------------------------------------------
def run_worker(ctx: Context, tasks_endpoint: str, results_endpoint: str, worker_id: str) -> None:
    tasks = tune(ctx.socket(zmq.PULL))
    results = tune(ctx.socket(zmq.PUSH))
    done = bad = 0
    try:
        tasks.connect(tasks_endpoint)
        results.connect(results_endpoint)
        log(f"worker {worker_id}", f"PULL from {tasks_endpoint}, PUSH to {results_endpoint}")
        while True:
            frames = tasks.recv_multipart()
            if len(frames) != 4 or frames[0] != b"TASK" or not frames[3].isdigit():
                bad += 1
                log(f"worker {worker_id}", f"ignored malformed task #{bad}")
                continue
            _, batch, task_number, work_ms = frames
            if int(work_ms):
                time.sleep(int(work_ms) / 1000)  # the "work"
            results.send_multipart([b"RESULT", batch, worker_id.encode(), task_number])
            done += 1
            if done <= LOG_FIRST_N or done % LOG_EVERY == 0:
                log(f"worker {worker_id}", f"task {task_number.decode()} done ({done} so far)")
    except zmq.ContextTerminated:
        pass
    finally:
        log(f"worker {worker_id}", f"stopping after {done} tasks")
        tasks.close()
        results.close()


# --- Ventilator: hands out one batch of tasks ---------------------------------------------
def run_ventilator(
    ctx: Context,
    tasks_endpoint: str,
    sink_endpoint: str,
    n_tasks: int,
    max_work_ms: int,
    settle_ms: int,
    wait_s: float,
) -> None:
    # LINGER > 0 here: close() right after the last send must not throw tasks away.
    tasks = tune(ctx.socket(zmq.PUSH), DELIVERY_LINGER_MS)
    sink = tune(ctx.socket(zmq.PUSH), DELIVERY_LINGER_MS)
    # IMMEDIATE: queue only to finished connections, so POLLOUT means "the sink is there".
    sink.setsockopt(zmq.IMMEDIATE, 1)
    try:
        bind_or_explain(tasks, tasks_endpoint)
        sink.connect(sink_endpoint)
        log("ventilator", f"waiting for the sink at {sink_endpoint}")
        if not sink.poll(int(wait_s * 1000), zmq.POLLOUT):
            raise Fail(f"no sink at {sink_endpoint} after {wait_s:.0f} s - start the sink first")
        log("ventilator", f"waiting for a worker to connect to {tasks_endpoint}")
        if not tasks.poll(int(wait_s * 1000), zmq.POLLOUT):
            raise Fail(f"no worker connected to {tasks_endpoint} after {wait_s:.0f} s")
        # One worker is here; give the others one reconnect interval or more to arrive.
        time.sleep(settle_ms / 1000)

        batch = uuid.uuid4().hex[:8].encode()
        sink.send_multipart([b"BATCH", batch, str(n_tasks).encode()])
        work = [random.randint(1, max_work_ms) if max_work_ms else 0 for _ in range(n_tasks)]
        started = time.perf_counter()
        for number, work_ms in enumerate(work, start=1):
            tasks.send_multipart([b"TASK", batch, str(number).encode(), str(work_ms).encode()])
        elapsed = time.perf_counter() - started
        log(
            "ventilator",
            f"sent {n_tasks} tasks (batch {batch.decode()}, {sum(work)} ms of work in total) "
            f"in {elapsed * 1000:.1f} ms: {n_tasks / max(elapsed, 1e-9):,.0f} msgs/s",
        )
    except KeyboardInterrupt:
        tasks.setsockopt(zmq.LINGER, 0)  # interrupted: do not wait to deliver the rest
        sink.setsockopt(zmq.LINGER, 0)
        raise
    finally:
        tasks.close()  # waits up to DELIVERY_LINGER_MS for queued tasks to leave
        sink.close()


# --- Demo: everything in one process -----------------------------------------------------
def unused_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago. A plain socket, because a ZeroMQ socket's
    close() is asynchronous: its listener may hold the port for a little while longer."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def demo(ctx: Context, host: str, port: int) -> None:
    tasks_ep = f"tcp://{host}:{port or unused_port(host)}"
    results_ep = f"tcp://{host}:{port + 1 if port else unused_port(host)}"
    # Each role runs in its own thread and owns its sockets; only the Context is shared.
    finished = threading.Semaphore(0)
    sink = threading.Thread(target=run_sink, args=(ctx, results_ep, 2, finished), daemon=True)
    sink.start()
    for worker_id in ("1", "2"):
        threading.Thread(
            target=run_worker, args=(ctx, tasks_ep, results_ep, worker_id), daemon=True
        ).start()

    log("demo", f"1) {DEMO_TASKS} tasks of 1-{DEFAULT_MAX_WORK_MS} ms for two workers")
    run_ventilator(
        ctx, tasks_ep, results_ep, DEMO_TASKS, DEFAULT_MAX_WORK_MS, DEFAULT_SETTLE_MS, 10
    )
    finished.acquire(timeout=60)  # the sink has reported batch 1
    log("demo", f"2) {DEMO_THROUGHPUT_TASKS} zero-work tasks: what the pipeline itself costs")
    run_ventilator(ctx, tasks_ep, results_ep, DEMO_THROUGHPUT_TASKS, 0, 0, 10)
    sink.join(timeout=120)
    log("demo", "what to see: both workers got work (round-robin); the zero-work batch shows")
    log("demo", "how many small messages per second one PUSH/PULL pipeline moves here.")


# --- Command line ------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="PUSH/PULL lesson: ventilator, workers, sink.")
    roles = parser.add_subparsers(dest="role", required=True, metavar="ROLE")

    def endpoint_options(sub: argparse.ArgumentParser, host: str) -> None:
        sub.add_argument("--host", default=host, help="host (%(default)s)")
        sub.add_argument(
            "--port", type=int, default=DEFAULT_PORT, help="tasks port; results use PORT+1 (5557)"
        )

    sink = roles.add_parser("sink", help="bind PULL on PORT+1 and collect results")
    endpoint_options(sink, DEFAULT_BIND_HOST)
    sink.add_argument("--batches", type=int, default=0, help="exit after N batches; 0 = never")

    worker = roles.add_parser("worker", help="connect and do tasks until Ctrl-C")
    worker.add_argument("id", metavar="ID", help="a name for this worker, e.g. 1")
    endpoint_options(worker, DEFAULT_CONNECT_HOST)

    ventilator = roles.add_parser("ventilator", help="bind PUSH on PORT and send N_TASKS tasks")
    ventilator.add_argument("n_tasks", type=int, metavar="N_TASKS", help="tasks to send")
    endpoint_options(ventilator, DEFAULT_BIND_HOST)
    ventilator.add_argument("--sink-host", default=DEFAULT_CONNECT_HOST, help="(%(default)s)")
    ventilator.add_argument(
        "--max-work-ms", type=int, default=DEFAULT_MAX_WORK_MS, help="(%(default)s)"
    )
    ventilator.add_argument("--settle-ms", type=int, default=DEFAULT_SETTLE_MS, help="(500)")
    ventilator.add_argument("--wait-s", type=float, default=DEFAULT_WAIT_S, help="(%(default)s)")

    demo_parser = roles.add_parser("demo", help="run every role in one process, print figures")
    demo_parser.add_argument("--host", default="127.0.0.1", help="interface (%(default)s)")
    demo_parser.add_argument("--port", type=int, default=0, help="tasks port, 0 = any free (0)")

    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65534:
        parser.error(f"port {args.port} is not in 0-65534 (PORT+1 is used too)")
    if args.role == "sink" and args.batches < 0:
        parser.error("--batches must be at least 0")
    if args.role == "ventilator" and (args.n_tasks < 1 or args.max_work_ms < 0):
        parser.error("N_TASKS must be at least 1 and --max-work-ms at least 0")
    return args


def raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM takes the same clean path as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with "&"
    tasks_ep = f"tcp://{args.host}:{args.port}"
    results_ep = f"tcp://{args.host}:{args.port + 1}"
    ctx = zmq.Context()
    try:
        if args.role == "sink":
            run_sink(ctx, results_ep, args.batches)
        elif args.role == "worker":
            run_worker(ctx, tasks_ep, results_ep, args.id)
        elif args.role == "ventilator":
            sink_ep = f"tcp://{args.sink_host}:{args.port + 1}"
            run_ventilator(
                ctx,
                tasks_ep,
                sink_ep,
                args.n_tasks,
                args.max_work_ms,
                args.settle_ms,
                args.wait_s,
            )
        else:
            demo(ctx, args.host, args.port)
    except Fail as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        name = f"{args.role} {args.id}" if args.role in ("worker", "client") else args.role
        log(name, "interrupted, exiting")
    finally:
        ctx.term()  # returns once every thread has closed its sockets
    return 0


if __name__ == "__main__":
    sys.exit(main())
