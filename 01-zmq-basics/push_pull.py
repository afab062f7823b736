"""Lesson 2: PUSH/PULL, a pipeline that spreads tasks over workers.

Binds     ventilator PUSH on tcp://127.0.0.1:PORT (5557), sink PULL on PORT+1 (5558)
Connects  worker PULL to PORT and PUSH to PORT+1; the ventilator PUSH to PORT+1 too
Frames    sink gets [batch, n] then [batch, worker, task]; workers get [batch, task, ms]

PUSH round-robins each task to the next connected worker (queueing up to the high-water
mark); PULL fair-queues over its peers. A worker that connects late (a "slow joiner")
finds the others holding the batch: the ventilator waits for one, then --settle-ms.

    # Terminal 1 (blocks until Ctrl-C)
    python 01-zmq-basics/push_pull.py sink
    # Terminal 2
    python 01-zmq-basics/push_pull.py worker 1 &
    python 01-zmq-basics/push_pull.py worker 2 &
    # Terminal 3
    python 01-zmq-basics/push_pull.py ventilator 50
Experiments: labs.py slow-joiner. Exits 0 done, 1 no sink/no worker/port in use, 2 usage.
"""

import argparse
import collections
import random
import signal
import sys
import time

import zmq

PORT = 5557  # tasks on PORT, results on PORT + 1
BIND_HOST = "127.0.0.1"  # "0.0.0.0" accepts other machines
MAX_WORK_MS = 100  # each task "works" a random 1..MAX_WORK_MS ms
SETTLE_MS = 500  # more than libzmq's 100 ms reconnect interval: late workers get in
WAIT_S = 10  # how long the ventilator waits for the sink and for a first worker
DELIVERY_LINGER_MS = 5000  # the ventilator's exit may wait this long to deliver tasks
Context = zmq.Context[zmq.Socket[bytes]]


def bind(sock: zmq.Socket[bytes], port: int, who: str) -> None:  # who: "[sink] PULL"
    try:
        sock.bind(f"tcp://{BIND_HOST}:{port}")
    except zmq.ZMQError as exc:
        sys.exit(f"error: cannot bind tcp://{BIND_HOST}:{port}: {exc.strerror}")
    print(f"{who} bound to tcp://{BIND_HOST}:{port}", flush=True)


def run_sink(ctx: Context, port: int) -> None:
    results = ctx.socket(zmq.PULL)
    bind(results, port + 1, "[sink] PULL")
    batches: dict[bytes, tuple[int, float]] = {}  # batch -> (tasks, when it was announced)
    done: dict[bytes, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    # --8<-- [start:sink-loop]
    while True:
        frames = results.recv_multipart()
        if len(frames) == 2 and (frames[0] + frames[1]).isdigit():  # [batch, n]: it starts
            batches[frames[0]] = int(frames[1]), time.perf_counter()
        elif len(frames) == 3 and frames[0].isdigit():  # a result, maybe before its batch
            done[frames[0]][frames[1].decode(errors="replace")] += 1
        else:
            print(f"[sink] ignored a malformed message of {len(frames)} frames", flush=True)
            continue
        batch = frames[0]
        if batch in batches and sum(done[batch].values()) == batches[batch][0]:
            tasks, announced = batches.pop(batch)
            elapsed = time.perf_counter() - announced
            shares = ", ".join(f"worker {w}: {n}" for w, n in sorted(done.pop(batch).items()))
            print(f"[sink] batch {batch.decode()}: {tasks} results in {elapsed:.2f} s; {shares}")
    # --8<-- [end:sink-loop]


def run_worker(ctx: Context, port: int, host: str, name: str) -> None:
    tasks, results = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    tasks.connect(f"tcp://{host}:{port}")
    results.connect(f"tcp://{host}:{port + 1}")
    print(f"[worker {name}] PULL from tcp://{host}:{port}, PUSH to port {port + 1}", flush=True)
    while True:
        frames = tasks.recv_multipart()
        if len(frames) != 3 or not frames[2].isdigit():
            print(f"[worker {name}] ignored a malformed task", flush=True)
            continue
        time.sleep(int(frames[2]) / 1000)  # the "work"
        results.send_multipart([frames[0], name.encode(), frames[1]])  # [batch, worker, task]


def run_ventilator(ctx: Context, args: argparse.Namespace) -> None:
    tasks, sink = ctx.socket(zmq.PUSH), ctx.socket(zmq.PUSH)
    for sock in (tasks, sink):  # exiting right after the last send must not drop tasks
        sock.setsockopt(zmq.LINGER, DELIVERY_LINGER_MS)
    # --8<-- [start:ventilator-wait]
    bind(tasks, args.port, "[ventilator] PUSH")
    sink.setsockopt(zmq.IMMEDIATE, 1)  # queue only on a finished connection, so that...
    sink.connect(f"tcp://{args.host}:{args.port + 1}")
    if not sink.poll(WAIT_S * 1000, zmq.POLLOUT):  # ...POLLOUT means "the sink is there"
        sys.exit(f"error: no sink on port {args.port + 1} after {WAIT_S} s; start it first")
    if not tasks.poll(WAIT_S * 1000, zmq.POLLOUT):  # a PUSH is writable once a peer is in
        sys.exit(f"error: no worker connected to port {args.port} after {WAIT_S} s")
    time.sleep(args.settle_ms / 1000)  # a guess: give the other workers time to connect
    # --8<-- [end:ventilator-wait]
    batch = str(random.randrange(1000, 10000)).encode()
    sink.send_multipart([batch, str(args.tasks).encode()])
    for task in range(1, args.tasks + 1):
        work_ms = random.randint(min(1, args.max_work_ms), args.max_work_ms)
        tasks.send_multipart([batch, str(task).encode(), str(work_ms).encode()])
    print(f"[ventilator] sent {args.tasks} tasks in batch {batch.decode()}", flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="PUSH/PULL: ventilator, workers and a sink")
    roles = parser.add_subparsers(dest="role", required=True)
    sink = roles.add_parser("sink", help="bind PULL on PORT+1 and report each batch")
    worker = roles.add_parser("worker", help="do tasks until Ctrl-C")
    worker.add_argument("name", help="a name for this worker, e.g. 1")
    vent = roles.add_parser("ventilator", help="bind PUSH on PORT and send one batch")
    vent.add_argument("tasks", type=int, help="how many tasks, at least 1")
    vent.add_argument("--max-work-ms", type=int, default=MAX_WORK_MS, help="(%(default)s)")
    vent.add_argument("--settle-ms", type=int, default=SETTLE_MS, help="(%(default)s)")
    for sub in (sink, worker, vent):
        sub.add_argument("--port", type=int, default=PORT, help="PORT+1 too (%(default)s)")
        sub.add_argument("--host", default="localhost", help="to connect to (%(default)s)")
    args = parser.parse_args()
    bad = args.role == "ventilator" and min(args.tasks - 1, args.max_work_ms, args.settle_ms) < 0
    if bad or not 1 <= args.port <= 65534:
        parser.error("PORT must be in 1-65534 (PORT+1 too), TASKS >= 1, the others >= 0")
    return args


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: the Ctrl-C path
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with "&"
    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)  # defaults for every socket: close() drops unsent messages,
    ctx.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)  # and no peer makes us allocate more than this
    try:
        if args.role == "sink":
            run_sink(ctx, args.port)
        elif args.role == "worker":
            run_worker(ctx, args.port, args.host, args.name)
        else:
            run_ventilator(ctx, args)
    except KeyboardInterrupt:
        print(f"[{args.role} {getattr(args, 'name', '')}".strip() + "] interrupted", flush=True)
        ctx.destroy(linger=0)  # interrupted: do not wait to deliver the rest
    finally:
        ctx.destroy()  # closes the sockets; term() waits for LINGER, then ends
    return 0


if __name__ == "__main__":
    sys.exit(main())
