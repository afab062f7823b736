"""Lesson 4: PUB/SUB with a synchronised start, and the loss that sync cannot fix.

Binds     publisher   PUB on tcp://127.0.0.1:PORT and REP on PORT+1 (PORT defaults to 5562)
Connects  subscriber  SUB to PORT and REQ to PORT+1
Frames    PUB: [SYNC] probes, then [sequence] per message, then [END, last sequence];
          REQ/REP: READY -> GO

Node coordination (Guide ch. 2): the publisher waits until --subscribers subscribers
are ready, so none misses the start. Ready means subscribed, not just connected: a
READY sent over REQ travels on its own connection and can overtake the subscription.
So the publisher sends probes on PUB, and a subscriber says READY only once it has
received one. Sync cannot stop the other loss: a subscriber that is slower than the
publisher fills its queue up to the high-water mark (--hwm, on both sockets), and PUB
drops the rest. The kernel's TCP buffers are a second queue (--kernel-buffer BYTES).

    # Terminal 1 (prints its report and exits when the publisher is done)
    python 01-zmq-basics/sync_pub_sub.py subscriber
    # Terminal 2
    python 01-zmq-basics/sync_pub_sub.py publisher --subscribers 1
Experiments: labs.py slow-joiner, labs.py hwm. Exits 0 done, 1 timeout/port in use, 2 usage.
"""

import argparse
import signal
import sys
import time

import zmq

PORT = 5562  # PUB on PORT, the REP for READY on PORT + 1
COUNT = 3000  # messages to publish
RATE = 3000  # per second; 0 = as fast as possible
HWM = 1000  # libzmq's default high-water mark, in messages
WAIT_S = 30  # how long either side waits for the other
PROBE_MS = 50  # one probe this often until every subscriber is ready
Context = zmq.Context[zmq.Socket[bytes]]


def queues(sock: zmq.Socket[bytes], args: argparse.Namespace) -> zmq.Socket[bytes]:
    sock.setsockopt(zmq.SNDHWM, args.hwm)  # messages queued per peer before PUB drops
    sock.setsockopt(zmq.RCVHWM, args.hwm)
    if args.kernel_buffer:  # behind the HWM sit the kernel's socket buffers
        sock.setsockopt(zmq.SNDBUF, args.kernel_buffer)
        sock.setsockopt(zmq.RCVBUF, args.kernel_buffer)
    return sock


def publish(ctx: Context, args: argparse.Namespace) -> None:
    with queues(ctx.socket(zmq.PUB), args) as pub, ctx.socket(zmq.REP) as sync:
        try:
            pub.bind(f"tcp://127.0.0.1:{args.port}")
            sync.bind(f"tcp://127.0.0.1:{args.port + 1}")
        except zmq.ZMQError as exc:
            sys.exit(f"error: cannot bind port {args.port} or {args.port + 1}: {exc.strerror}")
        print(f"[publisher] PUB on port {args.port}, waiting for {args.subscribers} READY")
        # --8<-- [start:wait-for-subscribers]
        ready, deadline = 0, time.monotonic() + WAIT_S
        while ready < args.subscribers:
            if time.monotonic() > deadline:
                sys.exit(f"error: {ready} of {args.subscribers} subscribers ready in {WAIT_S} s")
            pub.send(b"SYNC")  # a probe; whoever receives one is provably subscribed
            if sync.poll(PROBE_MS):
                sync.recv()  # READY
                sync.send(b"GO")
                ready += 1
        # --8<-- [end:wait-for-subscribers]
        print(f"[publisher] {ready} subscriber(s) ready; publishing {args.count}", flush=True)
        started = time.perf_counter()
        for number in range(1, args.count + 1):
            pub.send(b"%d" % number)
            if args.rate:
                time.sleep(max(0.0, started + number / args.rate - time.perf_counter()))
        elapsed = time.perf_counter() - started
        print(f"[publisher] published {args.count} in {elapsed:.2f} s", flush=True)
        for _ in range(3):  # END may be dropped like any other message: send it thrice
            pub.send_multipart([b"END", b"%d" % args.count])
            time.sleep(0.2)


def subscribe(ctx: Context, args: argparse.Namespace) -> None:
    with queues(ctx.socket(zmq.SUB), args) as sub, ctx.socket(zmq.REQ) as req:
        sub.connect(f"tcp://{args.host}:{args.port}")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        print(f"[subscriber] SUB connected to port {args.port}; waiting for a probe", flush=True)
        # --8<-- [start:say-ready]
        if not sub.poll(WAIT_S * 1000):
            sys.exit(f"error: no probe from a publisher in {WAIT_S} s")
        req.connect(f"tcp://{args.host}:{args.port + 1}")
        req.send(b"READY")  # only now: a probe arrived, so our subscription is in place
        if not req.poll(WAIT_S * 1000):
            sys.exit("error: the publisher did not answer READY")
        req.recv()  # GO
        # --8<-- [end:say-ready]
        first = last = received = gaps = published = 0
        while sub.poll(WAIT_S * 1000):
            frames = sub.recv_multipart()
            if frames[0] == b"END" and len(frames) == 2 and frames[1].isdigit():
                published = int(frames[1])
                break
            if len(frames) != 1 or not frames[0].isdigit():
                continue  # a left-over probe, or garbage from a stranger
            number = int(frames[0])
            first, gaps, last = first or number, gaps + max(0, number - last - 1), number
            received += 1
            time.sleep(args.work_us / 1e6)  # a slow reader: the publisher's queue fills up
        print(f"[subscriber] received {received} of {published or '?'}; missed", end=" ")
        print(f"{max(0, first - 1)} at the start, {gaps} in gaps and", end=" ")
        print(f"{max(0, published - last)} at the end (high-water mark)", flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="PUB/SUB with a start-up handshake")
    roles = parser.add_subparsers(dest="role", required=True)
    pub = roles.add_parser("publisher", help="wait for subscribers, then publish")
    pub.add_argument("--subscribers", type=int, default=1, help="to wait for (%(default)s)")
    pub.add_argument("--count", type=int, default=COUNT, help="messages (%(default)s)")
    pub.add_argument("--rate", type=int, default=RATE, help="per s, 0 = max (%(default)s)")
    sub = roles.add_parser("subscriber", help="say READY, then count what arrives")
    sub.add_argument("--host", default="localhost", help="publisher (%(default)s)")
    sub.add_argument("--work-us", type=int, default=0, help="µs per message (%(default)s)")
    for role in (pub, sub):
        role.add_argument("--port", type=int, default=PORT, help="PORT+1 too (%(default)s)")
        role.add_argument("--hwm", type=int, default=HWM, help="high-water mark (%(default)s)")
        role.add_argument("--kernel-buffer", type=int, default=0, help="bytes; 0 = the OS's")
    args = parser.parse_args()
    numbers = [v for k, v in vars(args).items() if isinstance(v, int) and k != "port"]
    if not 1 <= args.port <= 65534 or min(numbers) < 0 or getattr(args, "subscribers", 1) < 1:
        parser.error("PORT must be in 1-65534, --subscribers at least 1, the rest at least 0")
    return args


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: the Ctrl-C path
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with "&"
    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)  # close() drops unsent messages instead of waiting
    ctx.setsockopt(zmq.MAXMSGSIZE, 1024)  # our messages are tiny; refuse big ones
    try:
        (publish if args.role == "publisher" else subscribe)(ctx, args)
    except KeyboardInterrupt:
        print(f"[{args.role}] interrupted, exiting", flush=True)
    finally:
        ctx.term()  # the `with` blocks closed every socket
    return 0


if __name__ == "__main__":
    sys.exit(main())
