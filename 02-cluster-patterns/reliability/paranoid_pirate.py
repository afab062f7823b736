"""Paranoid Pirate (Guide ch. 4): a queue and workers that watch each other with heartbeats.

Binds     queue   ROUTER on tcp://127.0.0.1:PORT (clients) and PORT+1 (workers); PORT 5603
Connects  worker  DEALER to PORT+1;  clients: simple_pirate.py client --port 5603
Frames    worker -> queue  [READY] once, [HEARTBEAT], or a reply [client, "", id, body]
          queue -> worker  [HEARTBEAT], or a request [client, "", id, body]

Simple Pirate's queue cannot tell a dead worker from a slow one. Here both sides send a
HEARTBEAT every HEARTBEAT_S seconds when they have nothing else to say, and any message
counts as a sign of life. The queue forgets a worker that has been silent for LIVENESS
intervals, so it stops routing requests into the void. A worker that has not heard from
the queue for LIVENESS intervals assumes the queue died: it closes its socket, waits,
and reconnects with a fresh one, doubling the wait each time up to MAX_BACKOFF_S so that
a restarted queue is not hit by every worker at once. Clients are Lazy Pirates, as in
simple_pirate.py, and the same at-least-once rule holds: a resent request may run twice.

    # Terminal 1 (blocks until Ctrl-C)
    python 02-cluster-patterns/reliability/paranoid_pirate.py queue
    # Terminal 2
    python 02-cluster-patterns/reliability/paranoid_pirate.py worker &
    # Terminal 3
    python 02-cluster-patterns/reliability/simple_pirate.py client --port 5603 --count 10
Experiment (kill a worker, then the queue): python 01-zmq-basics/labs.py paranoid-pirate
"""

import argparse
import collections
import os
import signal
import sys
import time

import zmq

PORT = 5603  # clients on PORT, workers on PORT + 1
HEARTBEAT_S = 1.0  # both sides send a heartbeat this often when idle
LIVENESS = 3  # heartbeats missed before the peer counts as dead
MAX_BACKOFF_S = 32.0  # a worker's reconnect wait doubles from HEARTBEAT_S up to this
READY, HEARTBEAT = b"\x01", b"\x02"
Context = zmq.Context[zmq.Socket[bytes]]


def run_queue(ctx: Context, port: int) -> None:
    frontend, backend = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    backend.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a worker reconnecting under its name wins
    try:
        frontend.bind(f"tcp://127.0.0.1:{port}")
        backend.bind(f"tcp://127.0.0.1:{port + 1}")
    except zmq.ZMQError as exc:
        sys.exit(f"error: cannot bind port {port} or {port + 1}: {exc.strerror}")
    print(f"[queue] clients on port {port}, workers on port {port + 1}", flush=True)
    idle: collections.OrderedDict[bytes, float] = collections.OrderedDict()  # worker: expiry
    poller = zmq.Poller()
    poller.register(backend, zmq.POLLIN)
    next_heartbeat = time.monotonic() + HEARTBEAT_S
    # --8<-- [start:queue]
    while True:
        poller.register(frontend, zmq.POLLIN if idle else 0)
        ready = dict(poller.poll(int(HEARTBEAT_S * 1000)))
        now = time.monotonic()
        if backend in ready:
            frames = backend.recv_multipart()  # [worker, READY | HEARTBEAT | reply...]
            if frames[1:] == [READY]:
                print(f"[queue] {frames[0].decode(errors='replace')} is ready", flush=True)
            if frames[1:] in ([READY], [HEARTBEAT]) or len(frames) == 5 and frames[2] == b"":
                idle.pop(frames[0], None)  # a sign of life, and idle now: newest at the end
                idle[frames[0]] = now + HEARTBEAT_S * LIVENESS
            if len(frames) == 5 and frames[2] == b"":
                frontend.send_multipart(frames[1:])  # the reply, to its client
        if frontend in ready:
            request = frontend.recv_multipart()  # [client, "", id, body]
            if len(request) == 4 and request[1] == b"":
                worker, _ = idle.popitem(last=False)  # the one idle longest
                backend.send_multipart([worker, *request])
        if now >= next_heartbeat:
            for worker in idle:
                backend.send_multipart([worker, HEARTBEAT])
            next_heartbeat = now + HEARTBEAT_S
        for worker, expiry in list(idle.items()):
            if expiry < now:  # silent for LIVENESS intervals: dead, or cut off
                print(f"[queue] {worker.decode(errors='replace')} expired", flush=True)
                del idle[worker]
    # --8<-- [end:queue]


def connect(ctx: Context, port: int, name: str) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, name.encode())
    sock.connect(f"tcp://localhost:{port + 1}")
    sock.send(READY)
    return sock


def run_worker(ctx: Context, port: int, work_ms: int) -> None:
    name = f"worker-{os.getpid()}"
    sock = connect(ctx, port, name)
    print(f"[{name}] DEALER connected to port {port + 1}, READY", flush=True)
    liveness, backoff_s = LIVENESS, HEARTBEAT_S
    next_heartbeat = time.monotonic() + HEARTBEAT_S
    # --8<-- [start:worker]
    while True:
        if sock.poll(int(HEARTBEAT_S * 1000)):
            frames = sock.recv_multipart()
            liveness, backoff_s = LIVENESS, HEARTBEAT_S  # the queue is alive
            if len(frames) == 4:  # [client, "", id, body]: a request
                time.sleep(work_ms / 1000)
                sock.send_multipart(frames[:3] + [frames[3] + b" done by " + name.encode()])
        else:
            liveness -= 1
            if liveness == 0:  # the queue is dead or unreachable: start over, politely
                print(f"[{name}] queue silent; reconnecting in {backoff_s:.0f} s", flush=True)
                time.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
                sock.close()
                sock = connect(ctx, port, name)
                liveness = LIVENESS
        if time.monotonic() >= next_heartbeat:
            sock.send(HEARTBEAT)
            next_heartbeat = time.monotonic() + HEARTBEAT_S
    # --8<-- [end:worker]


def main() -> int:
    parser = argparse.ArgumentParser(description="Paranoid Pirate: queue and worker")
    parser.add_argument("role", choices=["queue", "worker"], help="what to run")
    parser.add_argument("--port", type=int, default=PORT, help="PORT+1 too (%(default)s)")
    parser.add_argument("--work-ms", type=int, default=100, help="worker ms/request (100)")
    args = parser.parse_args()
    if not 1 <= args.port <= 65534 or args.work_ms < 0:
        parser.error("PORT must be in 1-65534 and --work-ms at least 0")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: the Ctrl-C path
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with "&"
    ctx: Context = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    ctx.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
    try:
        if args.role == "queue":
            run_queue(ctx, args.port)
        else:
            run_worker(ctx, args.port, args.work_ms)
    except KeyboardInterrupt:
        print(f"[{args.role}] interrupted, exiting", flush=True)
    finally:
        ctx.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
