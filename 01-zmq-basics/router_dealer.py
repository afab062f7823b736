"""Lesson 4: ROUTER and DEALER, a load-balancing broker with visible envelopes.

What it binds and connects (PORT defaults to 5559)
    broker  binds ROUTER on tcp://HOST:PORT    (frontend: clients)
            binds ROUTER on tcp://HOST:PORT+1  (backend: workers)
    client  connects REQ to PORT, with identity "client-ID"
    worker  connects DEALER to PORT+1, with identity "worker-ID"

What flows (each [...] is one multipart message; b"" is the empty delimiter frame)
    worker -> broker    [worker-ID, b"", READY]                 "I am free"
    client -> broker    [client-ID, b"", request]               ROUTER adds the identity
    broker -> worker    [worker-ID, b"", client-ID, b"", request]
    worker -> broker    [worker-ID, b"", client-ID, b"", worker-ID, reply]
    broker -> client    [client-ID, b"", worker-ID, reply]      ROUTER strips the identity

A ROUTER socket prefixes every message it receives with the sender's identity,
and sends every message to the peer named by the first frame. That is how the
broker remembers who asked: the client's identity travels with the request as
an "envelope" and comes back with the reply. A REQ socket adds and removes the
empty delimiter by itself; the DEALER worker writes it by hand, so you can see it.

The broker hands each request to the worker that has been idle the longest
(workers say READY when they start and again with every reply), and reads from
clients only while a worker is idle. One client asking one question at a time
keeps at most one worker busy, so the workers simply take turns. Under load
(several clients at once) a slow worker is rarely the idle one and so gets fewer
requests instead of a growing queue: that is load balancing, unlike PUSH's blind
round-robin.

How to run it (from the repository root)
    # Terminal 1
    python 01-zmq-basics/router_dealer.py broker
    # Terminal 2
    python 01-zmq-basics/router_dealer.py worker 1 &
    python 01-zmq-basics/router_dealer.py worker 2 &
    # Terminal 3
    python 01-zmq-basics/router_dealer.py client 1 --count 10
    # Under load, a slow worker gets fewer requests:
    python 01-zmq-basics/router_dealer.py worker 3 --work-ms 50 &
    python 01-zmq-basics/router_dealer.py client 2 --count 100 &
    python 01-zmq-basics/router_dealer.py client 3 --count 100
    # Everything in one process, with figures:
    python 01-zmq-basics/router_dealer.py demo

Exit codes: 0 done, 1 no reply / port in use, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import collections
import signal
import socket
import statistics
import sys
import threading
import time

import zmq

# --- Tunables ----------------------------------------------------------------------------
DEFAULT_BIND_HOST = "127.0.0.1"  # use --host 0.0.0.0 to accept other machines
DEFAULT_CONNECT_HOST = "localhost"
DEFAULT_PORT = 5559  # clients on PORT, workers on PORT + 1
READY = b"READY"
DEFAULT_COUNT = 10
DEFAULT_TIMEOUT_MS = 2500
DEFAULT_WORK_MS = 1
LINGER_MS = 0
MAX_MESSAGE_BYTES = 64 * 1024
LOG_FIRST_N = 4  # envelopes printed in full
LOG_EVERY = 1000
DEMO_WORKERS = 3
DEMO_CLIENTS = 2
DEMO_REQUESTS = 500  # per client

Socket = zmq.Socket[bytes]
Context = zmq.Context[Socket]


def log(role: str, text: str) -> None:
    # One write per line, so lines from several threads do not interleave.
    sys.stdout.write(f"[{role}] {text}\n")
    sys.stdout.flush()


def tune(sock: Socket, identity: str | None = None) -> Socket:
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    if identity:
        sock.setsockopt(zmq.IDENTITY, identity.encode())  # must be set before connect
    return sock


def bind_or_explain(sock: Socket, endpoint: str) -> None:
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EADDRINUSE:
            raise SystemExit(
                f"error: cannot bind {endpoint}: address already in use "
                "(another broker running? pick another --port)"
            ) from None
        raise SystemExit(f"error: cannot bind {endpoint}: {exc}") from None


class NoReply(Exception):
    """The broker did not answer in time."""


# --- Broker ------------------------------------------------------------------------------
class Broker:
    """Least-recently-used routing of client requests to idle workers."""

    def __init__(self, ctx: Context, frontend_endpoint: str, backend_endpoint: str) -> None:
        self.frontend = tune(ctx.socket(zmq.ROUTER))
        self.backend = tune(ctx.socket(zmq.ROUTER))
        # Sending to a worker that has gone raises EHOSTUNREACH instead of a silent drop.
        self.backend.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.frontend_endpoint = frontend_endpoint
        self.backend_endpoint = backend_endpoint
        self.idle: collections.deque[bytes] = collections.deque()
        self.pending: collections.deque[list[bytes]] = collections.deque()
        self.served: collections.Counter[str] = collections.Counter()
        self.routed = self.bad = 0
        self.bound = False

    def run(self) -> None:
        try:
            bind_or_explain(self.frontend, self.frontend_endpoint)
            bind_or_explain(self.backend, self.backend_endpoint)
            self.bound = True
            log("broker", f"clients -> ROUTER {self.frontend_endpoint}")
            log("broker", f"workers -> ROUTER {self.backend_endpoint} (Ctrl-C stops)")
            poller = zmq.Poller()
            poller.register(self.backend, zmq.POLLIN)
            while True:
                # Read clients only when a worker can take the request: the rest wait
                # in the clients' own queues, not in the broker's memory.
                wants_clients = bool(self.idle) and not self.pending
                poller.register(self.frontend, zmq.POLLIN if wants_clients else 0)
                events = dict(poller.poll())
                if self.backend in events:
                    self.on_worker(self.backend.recv_multipart())
                if self.frontend in events:
                    self.on_client(self.frontend.recv_multipart())
                self.dispatch()
        except zmq.ContextTerminated:
            pass
        finally:
            self.frontend.close()
            self.backend.close()
            if self.bound:
                self.summary()

    def on_worker(self, frames: list[bytes]) -> None:
        if len(frames) == 3 and frames[1] == b"" and frames[2] == READY:
            worker = frames[0]
            log("broker", f"{worker.decode(errors='replace')} is ready: {frames}")
        elif len(frames) == 6 and frames[1] == b"" and frames[3] == b"":
            worker, client, served_by, text = frames[0], frames[2], frames[4], frames[5]
            reply = [client, b"", served_by, text]
            self.served[served_by.decode(errors="replace")] += 1
            self.routed += 1
            if self.routed <= LOG_FIRST_N:
                log("broker", f"backend in:   {frames}")
                log("broker", f"frontend out: {reply}")
            elif self.routed % LOG_EVERY == 0:
                log("broker", f"{self.routed} replies routed")
            self.frontend.send_multipart(reply)
        else:
            self.bad += 1
            log("broker", f"ignored malformed worker message #{self.bad}: {len(frames)} frames")
            return
        if worker not in self.idle:
            self.idle.append(worker)

    def on_client(self, frames: list[bytes]) -> None:
        if len(frames) != 3 or frames[1] != b"":
            self.bad += 1
            log("broker", f"ignored malformed client message #{self.bad}: {len(frames)} frames")
            return
        if self.routed < LOG_FIRST_N:
            log("broker", f"frontend in:  {frames}")
        self.pending.append(frames)

    def dispatch(self) -> None:
        while self.pending and self.idle:
            client, _, request = self.pending[0]
            worker = self.idle.popleft()
            try:
                self.backend.send_multipart([worker, b"", client, b"", request])
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                log("broker", f"{worker.decode(errors='replace')} has gone; trying the next")
                continue
            self.pending.popleft()

    def summary(self) -> None:
        spread = ", ".join(f"{w}: {n}" for w, n in sorted(self.served.items())) or "none"
        log("broker", f"routed {self.routed} requests; per worker: {spread}")


# --- Worker (DEALER: writes its envelope by hand) ----------------------------------------
def run_worker(ctx: Context, endpoint: str, worker_id: str, work_ms: int) -> None:
    name = f"worker-{worker_id}"
    sock = tune(ctx.socket(zmq.DEALER), identity=name)
    done = 0
    try:
        sock.connect(endpoint)
        sock.send_multipart([b"", READY])  # the b"" is what a REQ socket would add
        log(name, f"DEALER connected to {endpoint}, sent READY")
        while True:
            frames = sock.recv_multipart()
            if len(frames) != 4 or frames[0] != b"" or frames[2] != b"":
                log(name, f"ignored malformed request ({len(frames)} frames)")
                continue
            _, client, _, request = frames
            if work_ms:
                time.sleep(work_ms / 1000)
            done += 1
            if done <= LOG_FIRST_N or done % LOG_EVERY == 0:
                log(name, f"serving {client.decode(errors='replace')}: {request!r}")
            sock.send_multipart([b"", client, b"", name.encode(), b"done: " + request])
    except zmq.ContextTerminated:
        pass
    finally:
        sock.close()
        log(name, f"stopping after {done} requests")


# --- Client (REQ: the envelope is handled for it) ----------------------------------------
def run_client(
    ctx: Context, endpoint: str, client_id: str, count: int, timeout_ms: int
) -> tuple[collections.Counter[str], list[float]]:
    """Send ``count`` requests; return who served them and the round trips in µs."""
    name = f"client-{client_id}"
    sock = tune(ctx.socket(zmq.REQ), identity=name)
    served_by: collections.Counter[str] = collections.Counter()
    round_trips_us: list[float] = []
    try:
        sock.connect(endpoint)
        for number in range(1, count + 1):
            started = time.perf_counter()
            sock.send(f"request {number}".encode())
            if not sock.poll(timeout_ms, zmq.POLLIN):
                raise NoReply(
                    f"{name}: no reply in {timeout_ms} ms from {endpoint} "
                    "- is the broker running, with at least one worker?"
                )
            worker, reply = sock.recv_multipart()
            round_trips_us.append((time.perf_counter() - started) * 1e6)
            served_by[worker.decode(errors="replace")] += 1
            if number <= LOG_FIRST_N or number % LOG_EVERY == 0 or number == count:
                log(name, f"{reply.decode(errors='replace')!r} served by {worker.decode()}")
    finally:
        sock.close()
    return served_by, round_trips_us


def client_summary(name: str, served_by: collections.Counter[str], trips: list[float]) -> None:
    spread = ", ".join(f"{w}: {n}" for w, n in sorted(served_by.items()))
    log(name, f"{len(trips)} replies; served by {len(served_by)} worker(s): {spread}")
    log(
        name,
        f"round trip via the broker: median {statistics.median(trips):.0f} µs, "
        f"max {max(trips):.0f} µs",
    )


# --- Demo: a broker, workers and clients as threads in one process -----------------------
def unused_port(host: str) -> int:
    """A plain socket, because a ZeroMQ socket's close() is asynchronous."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def demo(ctx: Context, host: str, port: int) -> None:
    frontend = f"tcp://{host}:{port or unused_port(host)}"
    backend = f"tcp://{host}:{port + 1 if port else unused_port(host)}"
    broker = threading.Thread(target=Broker(ctx, frontend, backend).run, daemon=True)
    broker.start()
    for number in range(1, DEMO_WORKERS + 1):
        threading.Thread(
            target=run_worker, args=(ctx, backend, str(number), 0), daemon=True
        ).start()
    time.sleep(0.3)  # let the workers say READY, or the first client does all the waiting

    results: dict[str, tuple[collections.Counter[str], list[float]]] = {}

    def one_client(client_id: str) -> None:
        results[client_id] = run_client(ctx, frontend, client_id, DEMO_REQUESTS, 5000)

    clients = [
        threading.Thread(target=one_client, args=(str(n),)) for n in range(1, DEMO_CLIENTS + 1)
    ]
    started = time.perf_counter()
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    elapsed = time.perf_counter() - started
    all_trips = []
    for client_id, (served_by, trips) in sorted(results.items()):
        client_summary(f"client-{client_id}", served_by, trips)
        all_trips.extend(trips)
    log(
        "demo",
        f"{len(all_trips)} requests through the broker in {elapsed:.2f} s: "
        f"{len(all_trips) / elapsed:,.0f} requests/s",
    )
    log("demo", "what to see: the envelopes above, and every client served by every worker.")


# --- Command line ------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="ROUTER/DEALER lesson: a load-balancing broker.")
    roles = parser.add_subparsers(dest="role", required=True, metavar="ROLE")

    def endpoint_options(sub: argparse.ArgumentParser, host: str) -> None:
        sub.add_argument("--host", default=host, help="host (%(default)s)")
        sub.add_argument(
            "--port", type=int, default=DEFAULT_PORT, help="clients' port; workers use PORT+1"
        )

    broker = roles.add_parser("broker", help="bind both ROUTER sockets and route")
    endpoint_options(broker, DEFAULT_BIND_HOST)

    worker = roles.add_parser("worker", help="serve requests until Ctrl-C")
    worker.add_argument("id", metavar="ID", help="worker name suffix, e.g. 1")
    endpoint_options(worker, DEFAULT_CONNECT_HOST)
    worker.add_argument("--work-ms", type=int, default=DEFAULT_WORK_MS, help="per request (1)")

    client = roles.add_parser("client", help="send requests, report who served them")
    client.add_argument("id", metavar="ID", help="client name suffix, e.g. 1")
    endpoint_options(client, DEFAULT_CONNECT_HOST)
    client.add_argument("--count", type=int, default=DEFAULT_COUNT, help="requests (10)")
    client.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT_MS, metavar="MS")

    demo_parser = roles.add_parser("demo", help="broker, workers and clients in one process")
    demo_parser.add_argument("--host", default="127.0.0.1", help="interface (%(default)s)")
    demo_parser.add_argument("--port", type=int, default=0, help="clients' port, 0 = any free")

    args = parser.parse_args(argv)
    if not (0 if args.role == "demo" else 1) <= args.port <= 65534:
        parser.error(f"port {args.port} is not in 1-65534 (PORT+1 is used too)")
    if args.role == "worker" and args.work_ms < 0:
        parser.error("--work-ms must be at least 0")
    if args.role == "client" and (args.count < 1 or args.timeout < 1):
        parser.error("--count and --timeout must be at least 1")
    return args


def raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM takes the same clean path as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with "&"
    ctx = zmq.Context()
    try:
        if args.role == "demo":
            demo(ctx, args.host, args.port)
            return 0
        frontend = f"tcp://{args.host}:{args.port}"
        backend = f"tcp://{args.host}:{args.port + 1}"
        if args.role == "broker":
            Broker(ctx, frontend, backend).run()
        elif args.role == "worker":
            run_worker(ctx, backend, args.id, args.work_ms)
        else:
            served_by, trips = run_client(ctx, frontend, args.id, args.count, args.timeout)
            client_summary(f"client-{args.id}", served_by, trips)
    except NoReply as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        name = f"{args.role}-{args.id}" if args.role in ("worker", "client") else args.role
        log(name, "interrupted, exiting")
        return 0 if args.role in ("broker", "worker") else 130
    finally:
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
