"""Lesson 1: REQ/REP, request and reply, with a Lazy Pirate client.

Binds     server  REP on tcp://127.0.0.1:PORT (PORT defaults to 5555)
Connects  client  REQ to tcp://HOST:PORT
Frames    request [request id, text], reply [request id, "echo: " + text]

REQ and REP are lock-step: REQ must get a reply before it may send again, so a plain
REQ client waits forever for a dead server. This client is a Lazy Pirate (Guide ch. 4):
it polls with a timeout, and on silence it closes its socket, opens a new one and sends
the same request again. A resend is at-least-once delivery: the server may do a request
twice, so it must be idempotent (doing it twice has the effect of doing it once).

    # Terminal 1 (blocks until Ctrl-C)
    python 01-zmq-basics/req_rep.py server
    # Terminal 2
    python 01-zmq-basics/req_rep.py client localhost 5555 "Hello ZeroMQ"
    python 01-zmq-basics/req_rep.py client localhost 5555 ping --count 1000
Experiments: labs.py retry. Exits 0 done, 1 no reply/port in use, 2 bad arguments.
"""

import argparse
import os
import signal
import statistics
import sys
import time

import zmq

PORT = 5555
BIND_HOST = "127.0.0.1"  # --host 0.0.0.0 accepts other machines
TIMEOUT_MS = 2500  # how long the client waits for each reply
RETRIES = 3  # tries per request before the client gives up
MAX_MESSAGE_BYTES = 1 << 20  # a peer cannot make us allocate more than this per message
SHOW_FIRST = 3  # requests printed in full; after that, every 1000th
Context = zmq.Context[zmq.Socket[bytes]]  # pyzmq's types are generic in what recv() returns


def serve(ctx: Context, host: str, port: int, work_ms: int) -> None:
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    try:
        sock.bind(f"tcp://{host}:{port}")
    except zmq.ZMQError as exc:
        sys.exit(f"error: cannot bind tcp://{host}:{port}: {exc.strerror}")
    print(f"[server] REP bound to tcp://{host}:{port}; Ctrl-C stops it", flush=True)
    served = 0
    # --8<-- [start:server-loop]
    while True:
        frames = sock.recv_multipart()  # blocks until a whole request has arrived
        if len(frames) != 2:
            # REP must answer every request, or it can never receive again.
            sock.send_multipart([b"?", b"error: expected [request id, text]"])
            continue
        request_id, text = frames
        served += 1
        if served <= SHOW_FIRST or served % 1000 == 0:
            print(f"[server] request {request_id.decode(errors='replace')}: {text!r}", flush=True)
        time.sleep(work_ms / 1000)  # the "work"; labs.py retry makes it slower than a timeout
        sock.send_multipart([request_id, b"echo: " + text])
    # --8<-- [end:server-loop]


class LazyPirate:  # a REQ client that survives a dead or restarted server
    def __init__(self, ctx: Context, endpoint: str, timeout_ms: int, retries: int) -> None:
        self.ctx, self.endpoint = ctx, endpoint
        self.timeout_ms, self.retries = timeout_ms, retries
        self.sock = self.open()

    def open(self) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(zmq.REQ)
        sock.connect(self.endpoint)  # succeeds with no server: ZeroMQ connects in the background
        return sock

    # --8<-- [start:lazy-pirate]
    def request(self, request_id: bytes, text: bytes) -> bytes:
        for attempt in range(1, self.retries + 1):
            self.sock.send_multipart([request_id, text])
            if self.sock.poll(self.timeout_ms, zmq.POLLIN):  # never a bare recv()
                frames = self.sock.recv_multipart()
                if len(frames) != 2 or frames[0] != request_id:
                    sys.exit(f"error: the server answered {frames!r:.60} to {request_id!r}")
                return frames[1]
            print(f"[client] no reply in {self.timeout_ms} ms (attempt {attempt}/{self.retries})")
            # This REQ now waits for a reply that may never come and refuses to send:
            # throw it away (LINGER 0 drops the request) and resend, same id, on a new one.
            self.sock.close()
            self.sock = self.open()
        sys.exit(f"error: no reply from {self.endpoint} after {self.retries} tries; is it running?")
        # --8<-- [end:lazy-pirate]


def run_client(ctx: Context, args: argparse.Namespace) -> None:
    client = LazyPirate(ctx, f"tcp://{args.host}:{args.port}", args.timeout, args.retries)
    round_trips_us = []
    for number in range(1, args.count + 1):
        sent = time.perf_counter()
        request_id = f"{os.getpid()}-{number}".encode()  # unique, so a server can spot resends
        reply = client.request(request_id, args.message.encode())
        round_trips_us.append((time.perf_counter() - sent) * 1e6)
        if number <= SHOW_FIRST or number % 1000 == 0 or number == args.count:
            print(f"[client] reply {number}/{args.count}: {reply.decode(errors='replace')!r}")
    median, rate = statistics.median(round_trips_us), len(round_trips_us) / sum(round_trips_us)
    print(
        f"[client] {args.count} round trip(s): median {median:.0f} µs, {rate * 1e6:,.0f} requests/s"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="REQ/REP: an echo server, a Lazy Pirate client")
    roles = parser.add_subparsers(dest="role", required=True)
    server = roles.add_parser("server", help="bind REP and echo every request")
    server.add_argument("--host", default=BIND_HOST, help="interface to bind (%(default)s)")
    server.add_argument("--port", type=int, default=PORT, help="port (%(default)s)")
    server.add_argument("--work-ms", type=int, default=0, help="time per request (%(default)s)")
    client = roles.add_parser("client", help="send requests, retrying Lazy Pirate style")
    client.add_argument("host", nargs="?", default="localhost", help="server (%(default)s)")
    client.add_argument("port", nargs="?", type=int, default=PORT, help="(%(default)s)")
    client.add_argument("message", nargs="?", default="Hello ZeroMQ", help="(%(default)s)")
    client.add_argument("--count", type=int, default=1, help="requests (%(default)s)")
    client.add_argument("--timeout", type=int, default=TIMEOUT_MS, help="ms (%(default)s)")
    client.add_argument("--retries", type=int, default=RETRIES, help="tries (%(default)s)")
    args = parser.parse_args()
    numbers = [args.work_ms] if args.role == "server" else [args.count, args.timeout, args.retries]
    if not 1 <= args.port <= 65535 or min(numbers) < (0 if args.role == "server" else 1):
        parser.error("the port must be in 1-65535, --work-ms at least 0, the others at least 1")
    return args


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: the Ctrl-C path
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with "&"
    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)  # for every socket: close() never waits for a gone peer
    try:
        if args.role == "server":
            serve(ctx, args.host, args.port, args.work_ms)
        else:
            run_client(ctx, args)
    except KeyboardInterrupt:
        print(f"[{args.role}] interrupted, exiting", flush=True)
        return 130 if args.role == "client" else 0
    finally:
        ctx.destroy()  # closes every socket, then terminates the context
    return 0


if __name__ == "__main__":
    sys.exit(main())
