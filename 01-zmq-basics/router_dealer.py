"""Lesson 5: ROUTER and DEALER, a load-balancing broker.

Binds     broker  ROUTER on tcp://127.0.0.1:PORT (clients) and PORT+1 (workers); PORT 5559
Connects  client  REQ to PORT as "client-ID";  worker  DEALER to PORT+1 as "worker-ID"
Frames    worker -> broker  [worker-ID, "", READY]        (ROUTER adds the first frame)
          client -> broker  [client-ID, "", request]
          broker -> worker  [worker-ID, "", client-ID, "", request]
          worker -> broker  [worker-ID, "", client-ID, "", worker-ID, reply]
          broker -> client  [client-ID, "", worker-ID, reply]
ROUTER prefixes each message with its sender's identity and sends each one to the peer
that frame 1 names: this envelope is how a reply finds its client (envelope.py). Workers
say READY at start and with every reply; the broker gives each request to the worker
idle longest: a slow worker gets few requests (unlike with PUSH). Threads print with one
sys.stdout.write per line: print() makes two writes, which threads can mix up.

    # Terminal 1 (blocks until Ctrl-C; prints its totals whenever the traffic stops)
    python 01-zmq-basics/router_dealer.py broker
    # Terminal 2
    python 01-zmq-basics/router_dealer.py worker 1 &
    python 01-zmq-basics/router_dealer.py worker 2 &
    # Terminal 3
    python 01-zmq-basics/router_dealer.py client 1 --count 10
    python 01-zmq-basics/router_dealer.py demo   # or all of them as threads of one process
Experiments: labs.py broker. Exits 0 done, 1 no reply/port in use, 2 usage.
"""

import argparse
import collections
import contextlib
import signal
import sys
import threading
import time

import zmq

PORT = 5559  # clients on PORT, workers on PORT + 1
TIMEOUT_MS = 2500  # a client gives up after this long without a reply
QUIET_MS = 1000  # after this long without traffic the broker prints its totals
Context = zmq.Context[zmq.Socket[bytes]]


def broker(ctx: Context, port: int) -> None:
    frontend, backend = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    with frontend, backend, contextlib.suppress(zmq.ContextTerminated):  # how the demo ends
        try:
            frontend.bind(f"tcp://127.0.0.1:{port}")
            backend.bind(f"tcp://127.0.0.1:{port + 1}")
        except zmq.ZMQError as exc:
            print(f"error: cannot bind port {port} or {port + 1}: {exc.strerror}", file=sys.stderr)
            raise SystemExit(1)  # sys.exit(message) would not print it from the demo's thread
        print(f"[broker] clients: ROUTER on port {port}, workers: ROUTER on port {port + 1}")
        idle, served, reported = collections.deque[bytes](), collections.Counter[str](), 0
        # --8<-- [start:broker-loop]
        poller = zmq.Poller()
        poller.register(backend, zmq.POLLIN)
        while True:  # read clients only while a worker is idle and can take a request at once
            poller.register(frontend, zmq.POLLIN if idle else 0)
            ready = dict(poller.poll(QUIET_MS))
            if backend in ready:
                frames = backend.recv_multipart()
                reply = len(frames) == 6 and frames[1] == frames[3] == b""
                if reply:  # strip the worker's address and pass the rest on
                    frontend.send_multipart(frames[2:])
                    served[frames[4].decode(errors="replace")] += 1
                    if served.total() == 1:  # show the first reply's envelopes
                        print(f"[broker] backend in: {frames}\n[broker] frontend out: {frames[2:]}")
                if reply or frames[1:] == [b"", b"READY"]:  # either way it is idle now
                    idle.append(frames[0])
            if frontend in ready:
                frames = frontend.recv_multipart()  # [client, "", request] from a REQ
                if len(frames) == 3 and frames[1] == b"":
                    backend.send_multipart([idle.popleft(), b"", frames[0], b"", frames[2]])
            if not ready and served.total() != reported:  # a quiet moment: say what was done
                reported = served.total()
                print(f"[broker] routed {reported} requests so far: {dict(sorted(served.items()))}")
        # --8<-- [end:broker-loop]


def worker(ctx: Context, port: int, name: str, work_ms: int) -> None:
    with ctx.socket(zmq.DEALER) as sock, contextlib.suppress(zmq.ContextTerminated):
        sock.setsockopt(zmq.IDENTITY, name.encode())  # before connect(); ROUTER shows it
        sock.connect(f"tcp://localhost:{port + 1}")
        # --8<-- [start:worker]
        sock.send_multipart([b"", b"READY"])  # the b"" is what a REQ socket would add
        sys.stdout.write(f"[{name}] DEALER connected to port {port + 1}, sent READY\n")
        while True:
            frames = sock.recv_multipart()  # ["", client, "", request]
            if len(frames) == 4:  # anything else is not from our broker
                time.sleep(work_ms / 1000)
                sock.send_multipart([b"", frames[1], b"", name.encode(), b"done: " + frames[3]])
        # --8<-- [end:worker]


def client(ctx: Context, port: int, name: str, count: int) -> None:
    served_by: collections.Counter[str] = collections.Counter()
    with ctx.socket(zmq.REQ) as sock, contextlib.suppress(zmq.ContextTerminated):
        sock.setsockopt(zmq.IDENTITY, name.encode())
        sock.connect(f"tcp://localhost:{port}")
        for number in range(1, count + 1):
            sock.send(b"request %d" % number)
            if not sock.poll(TIMEOUT_MS):
                sys.exit(f"error: {name}: no reply in {TIMEOUT_MS} ms; broker and worker up?")
            served_by[sock.recv_multipart()[0].decode(errors="replace")] += 1  # [worker, reply]
    spread = dict(sorted(served_by.items()))
    sys.stdout.write(f"[{name}] {served_by.total()} replies, served by {spread}\n")


def demo(ctx: Context, port: int) -> None:
    threading.Thread(target=broker, args=(ctx, port)).start()  # main's ctx.term() ends it
    for number in (1, 2, 3):  # every thread makes, uses and closes its own sockets
        threading.Thread(target=worker, args=(ctx, port, f"worker-{number}", 0)).start()
    other = threading.Thread(target=client, args=(ctx, port, "client-2", 500))
    other.start()
    client(ctx, port, "client-1", 500)
    other.join()


def main() -> int:
    parser = argparse.ArgumentParser(description="ROUTER/DEALER: a load-balancing broker")
    parser.add_argument("role", choices=["broker", "worker", "client", "demo"], help="the role")
    parser.add_argument("id", nargs="?", default="1", help="worker or client id (%(default)s)")
    parser.add_argument("--port", type=int, default=PORT, help="PORT+1 too (%(default)s)")
    parser.add_argument("--count", type=int, default=10, help="client requests (%(default)s)")
    parser.add_argument("--work-ms", type=int, default=1, help="worker ms per request (1)")
    args = parser.parse_args()
    if not 1 <= args.port <= 65534 or args.count < 1 or args.work_ms < 0:
        parser.error("PORT must be in 1-65534, --count at least 1, --work-ms at least 0")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: the Ctrl-C path
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with "&"
    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)  # close() drops unsent messages instead of waiting
    ctx.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)  # no peer makes us allocate more than this
    try:
        roles = {
            "broker": lambda: broker(ctx, args.port),
            "worker": lambda: worker(ctx, args.port, f"worker-{args.id}", args.work_ms),
            "client": lambda: client(ctx, args.port, f"client-{args.id}", args.count),
            "demo": lambda: demo(ctx, args.port),
        }
        roles[args.role]()
    except KeyboardInterrupt:
        print(f"[{args.role}] interrupted, exiting", flush=True)
    finally:
        ctx.term()  # threads blocked in a socket call get ContextTerminated and close it
    return 0


if __name__ == "__main__":
    sys.exit(main())
