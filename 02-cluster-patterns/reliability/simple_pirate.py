"""Simple Pirate (Guide ch. 4): a queue, workers that come and go, Lazy Pirate clients.

Binds     queue   ROUTER on tcp://127.0.0.1:PORT (clients) and PORT+1 (workers); PORT 5601
Connects  worker  REQ to PORT+1;  client  REQ to PORT
Frames    worker -> queue  READY once, then each reply: [client, "", request id, body]
          queue -> worker  [client, "", request id, body]   (the client's envelope)

The load-balancing broker of router_dealer.py, with REQ workers and a Lazy Pirate client
(req_rep.py): when a reply does not come in time, the client resends the same request on a
fresh socket, and the queue hands it to whichever worker is free. So a worker may crash,
or be killed, and its requests still get answered. What the queue cannot do is tell that
a worker has died: it keeps the dead worker's address among the idle ones and may send
it one more request, which only the client's timeout saves. Paranoid Pirate fixes that
with heartbeats. A resent request may run twice (at-least-once): keep workers idempotent.

    # Terminal 1 (blocks until Ctrl-C)
    python 02-cluster-patterns/reliability/simple_pirate.py queue
    # Terminal 2
    python 02-cluster-patterns/reliability/simple_pirate.py worker &
    python 02-cluster-patterns/reliability/simple_pirate.py worker &
    # Terminal 3
    python 02-cluster-patterns/reliability/simple_pirate.py client --count 10
Experiment (a worker killed mid-run): python 01-zmq-basics/labs.py simple-pirate
"""

import argparse
import collections
import os
import signal
import sys
import time

import zmq

PORT = 5601  # clients on PORT, workers on PORT + 1
TIMEOUT_MS = 1000  # the client's patience per try
RETRIES = 5  # tries per request before the client gives up
Context = zmq.Context[zmq.Socket[bytes]]


def run_queue(ctx: Context, port: int) -> None:
    frontend, backend = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    try:
        frontend.bind(f"tcp://127.0.0.1:{port}")
        backend.bind(f"tcp://127.0.0.1:{port + 1}")
    except zmq.ZMQError as exc:
        sys.exit(f"error: cannot bind port {port} or {port + 1}: {exc.strerror}")
    print(f"[queue] clients on port {port}, workers on port {port + 1}", flush=True)
    idle: collections.deque[bytes] = collections.deque()  # worker addresses, LRU first
    poller = zmq.Poller()
    poller.register(backend, zmq.POLLIN)
    # --8<-- [start:queue]
    while True:
        poller.register(frontend, zmq.POLLIN if idle else 0)  # clients only if a worker is free
        ready = dict(poller.poll())
        if backend in ready:
            frames = backend.recv_multipart()  # [worker, "", READY] or [worker, "", reply...]
            reply = len(frames) == 6 and frames[1] == frames[3] == b""
            if (reply or frames[1:] == [b"", b"READY"]) and frames[0] not in idle:
                idle.append(frames[0])  # READY or a reply: this worker is free again
            if reply:
                frontend.send_multipart(frames[2:])  # [client, "", id, body] to its client
        if frontend in ready:
            request = frontend.recv_multipart()  # [client, "", request id, body]
            if len(request) == 4 and request[1] == b"":  # anything else is not our client
                backend.send_multipart([idle.popleft(), b"", *request])
    # --8<-- [end:queue]


def run_worker(ctx: Context, port: int, work_ms: int) -> None:
    name = f"worker-{os.getpid()}"
    with ctx.socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.IDENTITY, name.encode())
        sock.connect(f"tcp://localhost:{port + 1}")
        sock.send(b"READY")
        print(f"[{name}] REQ connected to port {port + 1}, READY", flush=True)
        while True:
            frames = sock.recv_multipart()  # [client, "", request id, body]
            time.sleep(work_ms / 1000)
            print(f"[{name}] {frames[2:]}", flush=True)
            sock.send_multipart(frames[:-1] + [frames[-1] + b" done by " + name.encode()])


# --8<-- [start:client]
def run_client(ctx: Context, port: int, count: int) -> None:
    endpoint = f"tcp://localhost:{port}"
    sock = ctx.socket(zmq.REQ)
    sock.connect(endpoint)
    for number in range(1, count + 1):
        request_id = b"%d-%d" % (os.getpid(), number)  # the same id on every try
        for attempt in range(1, RETRIES + 1):
            sock.send_multipart([request_id, b"request %d" % number])
            if sock.poll(TIMEOUT_MS):
                print(f"[client] {sock.recv_multipart()[-1].decode(errors='replace')}", flush=True)
                break
            print(f"[client] no reply to {request_id.decode()} (try {attempt}), resending")
            sock.close()  # a REQ without its reply is stuck: replace it
            sock = ctx.socket(zmq.REQ)
            sock.connect(endpoint)
        else:
            sys.exit(f"error: no reply after {RETRIES} tries; is the queue running?")
    sock.close()
    print(f"[client] {count} replies", flush=True)


# --8<-- [end:client]


def main() -> int:
    parser = argparse.ArgumentParser(description="Simple Pirate: queue, worker, client")
    parser.add_argument("role", choices=["queue", "worker", "client"], help="what to run")
    parser.add_argument("--port", type=int, default=PORT, help="PORT+1 too (%(default)s)")
    parser.add_argument("--count", type=int, default=10, help="client requests (%(default)s)")
    parser.add_argument("--work-ms", type=int, default=100, help="worker ms/request (100)")
    args = parser.parse_args()
    if not 1 <= args.port <= 65534 or args.count < 1 or args.work_ms < 0:
        parser.error("PORT must be in 1-65534, --count at least 1, --work-ms at least 0")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: the Ctrl-C path
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with "&"
    ctx: Context = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    ctx.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
    try:
        if args.role == "queue":
            run_queue(ctx, args.port)
        elif args.role == "worker":
            run_worker(ctx, args.port, args.work_ms)
        else:
            run_client(ctx, args.port, args.count)
    except KeyboardInterrupt:
        print(f"[{args.role}] interrupted, exiting", flush=True)
    finally:
        ctx.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
