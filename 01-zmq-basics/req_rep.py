"""Lesson 1: REQ/REP, the request-reply pattern, with a Lazy Pirate client.

What it binds and connects
    server  binds a REP socket on tcp://HOST:PORT          (default 127.0.0.1:5555)
    client  connects a REQ socket to tcp://HOST:PORT       (default localhost:5555)

What flows
    client -> server   [sequence number, text]          two frames
    server -> client   [sequence number, "echo: text"]  two frames

REQ and REP are lock-step: a REQ socket must receive a reply before it may send
again, and a REP socket must reply before it may receive again. If the server
dies while a request is in flight, a plain REQ client waits forever. The client
here is a "Lazy Pirate": it polls with a timeout, and when no reply comes it
throws its socket away (the only way to reset REQ's state machine), opens a
new one and sends the request again, giving up after --retries attempts.

How to run it (from the repository root)
    # Terminal 1
    python 01-zmq-basics/req_rep.py server
    # Terminal 2
    python 01-zmq-basics/req_rep.py client localhost 5555 "Hello ZeroMQ"
    python 01-zmq-basics/req_rep.py client localhost 5555 "ping" --count 1000
    # Everything at once, in one process (server thread + client), with figures:
    python 01-zmq-basics/req_rep.py demo

    # Lazy Pirate giving up: no server on port 5599
    python 01-zmq-basics/req_rep.py client localhost 5599 "anyone?" --timeout 500 --retries 3
    # A server that "crashes" after 3 requests; restart it while the client retries
    python 01-zmq-basics/req_rep.py server --crash-after 3
    python 01-zmq-basics/req_rep.py client localhost 5555 "tick" --count 10

Exit codes: 0 done, 1 no reply / port in use, 2 bad arguments.
"""

from __future__ import annotations

import argparse
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
DEFAULT_PORT = 5555
DEFAULT_TIMEOUT_MS = 2500  # how long the client waits for each reply
DEFAULT_RETRIES = 3  # attempts per request before the client gives up
DEMO_REQUESTS = 2000  # round trips the demo measures
DEMO_DEAD_PORT_TIMEOUT_MS = 200  # the demo also shows a Lazy Pirate giving up, quickly
LINGER_MS = 0  # on close, drop unsent messages instead of blocking
MAX_MESSAGE_BYTES = 1 << 20  # a peer cannot make us allocate more than 1 MiB per message
LOG_FIRST_N = 5  # print the first requests, then only every LOG_EVERY-th one
LOG_EVERY = 1000

# pyzmq's classes are generic in what recv() returns; these names keep the hints short.
Socket = zmq.Socket[bytes]
Context = zmq.Context[Socket]


class NoReply(Exception):
    """The server did not answer within timeout x retries."""


def log(role: str, text: str) -> None:
    # One write per line, so lines from several threads do not interleave.
    sys.stdout.write(f"[{role}] {text}\n")
    sys.stdout.flush()


def tune(sock: Socket) -> Socket:
    """Options every network socket in this course gets."""
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    return sock


def bind_or_explain(sock: Socket, endpoint: str) -> None:
    """Bind, turning 'address already in use' into a one-line error for the user."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EADDRINUSE:
            raise SystemExit(
                f"error: cannot bind {endpoint}: address already in use "
                "(another server running? pick another --port)"
            ) from None
        raise SystemExit(f"error: cannot bind {endpoint}: {exc}") from None


# --- Server ------------------------------------------------------------------------------
def serve(ctx: Context, endpoint: str, crash_after: int = 0) -> int:
    """Answer requests until interrupted; return how many were answered."""
    sock = tune(ctx.socket(zmq.REP))
    answered = bad = 0
    try:
        bind_or_explain(sock, endpoint)
        log("server", f"REP bound to {endpoint}; waiting for requests (Ctrl-C stops)")
        while True:
            frames = sock.recv_multipart()  # blocks; Ctrl-C raises KeyboardInterrupt here
            if crash_after and answered >= crash_after:
                # Simulate a crash with a request in flight: the client never gets a reply.
                log("server", f"simulating a crash after {answered} replies")
                return answered
            if len(frames) != 2:
                # REP must still answer, or it could never receive again.
                bad += 1
                log("server", f"bad request #{bad}: {len(frames)} frames, expected 2")
                sock.send_multipart([b"?", b"error: expected [sequence, text]"])
                continue
            sequence, text = frames
            answered += 1
            if answered <= LOG_FIRST_N or answered % LOG_EVERY == 0:
                log("server", f"request #{answered}: {text.decode(errors='replace')!r}")
            if answered == LOG_FIRST_N:
                log("server", f"(from now on printing every {LOG_EVERY}th request)")
            sock.send_multipart([sequence, b"echo: " + text])
    except zmq.ContextTerminated:  # the demo stops its server thread this way
        return answered
    finally:
        sock.close()


# --- Lazy Pirate client ------------------------------------------------------------------
class LazyPirateClient:
    """A REQ client that survives a dead or restarted server by reopening its socket."""

    def __init__(self, ctx: Context, endpoint: str, timeout_ms: int, retries: int) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.sequence = 0
        self.sock = self._open()

    def _open(self) -> Socket:
        sock = tune(self.ctx.socket(zmq.REQ))
        sock.connect(self.endpoint)  # connect never fails for a missing server: it retries
        return sock

    def request(self, text: bytes) -> bytes:
        """Send ``text``, return the reply text, or raise NoReply after all retries."""
        self.sequence += 1
        sequence = str(self.sequence).encode()
        for attempt in range(1, self.retries + 1):
            self.sock.send_multipart([sequence, text])
            if self.sock.poll(self.timeout_ms, zmq.POLLIN):
                frames = self.sock.recv_multipart()
                if len(frames) == 2 and frames[0] == sequence:
                    return frames[1]
                raise NoReply(f"unexpected reply to request {self.sequence}: {frames!r:.80}")
            # No reply: this REQ socket now waits for a reply that may never come and
            # refuses to send. Close it (LINGER 0 drops the pending request) and reopen.
            log("client", f"no reply in {self.timeout_ms} ms (attempt {attempt}/{self.retries})")
            self.sock.close()
            self.sock = self._open()
        raise NoReply(
            f"no reply from {self.endpoint} after {self.retries} attempts of "
            f"{self.timeout_ms} ms - is the server running?"
        )

    def close(self) -> None:
        self.sock.close()


def run_client(
    ctx: Context, endpoint: str, text: str, count: int, timeout_ms: int, retries: int
) -> list[float]:
    """Send ``count`` requests; return the round trips in microseconds."""
    client = LazyPirateClient(ctx, endpoint, timeout_ms, retries)
    round_trips_us: list[float] = []
    try:
        for number in range(1, count + 1):
            started = time.perf_counter()
            reply = client.request(text.encode())
            round_trips_us.append((time.perf_counter() - started) * 1e6)
            if number <= LOG_FIRST_N or number % LOG_EVERY == 0 or number == count:
                us = round_trips_us[-1]
                log("client", f"reply {number}/{count} in {us:.0f} µs: {reply.decode()!r}")
    finally:
        client.close()
    return round_trips_us


def summarize(round_trips_us: list[float], elapsed_s: float) -> str:
    ordered = sorted(round_trips_us)
    if len(ordered) == 1:
        return f"1 round trip: {ordered[0]:.0f} µs (includes connecting; try --count 1000)"
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"{len(ordered)} round trips: min {ordered[0]:.0f} µs, "
        f"median {statistics.median(ordered):.0f} µs, p99 {p99:.0f} µs, "
        f"max {ordered[-1]:.0f} µs; {len(ordered) / elapsed_s:,.0f} requests/s"
    )


# --- Demo: server in a thread, client in the main thread ---------------------------------
def unused_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago. A plain socket, because a ZeroMQ socket's
    close() is asynchronous: its listener may hold the port for a little while longer."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def demo(ctx: Context, host: str, port: int) -> None:
    # Port 0 means "any free port", so the demo never collides with a running server.
    chosen = port or unused_port(host)
    endpoint = f"tcp://{host}:{chosen}"
    server = threading.Thread(target=serve, args=(ctx, endpoint), name="server", daemon=True)
    server.start()  # the server thread creates and owns its socket; we never touch it

    log("demo", f"1) {DEMO_REQUESTS} requests to a server thread at {endpoint}")
    started = time.perf_counter()
    round_trips = run_client(
        ctx, f"tcp://localhost:{chosen}", "Hello ZeroMQ", DEMO_REQUESTS, DEFAULT_TIMEOUT_MS, 3
    )
    log("demo", "REQ/REP " + summarize(round_trips, time.perf_counter() - started))

    dead = f"tcp://127.0.0.1:{unused_port()}"
    log("demo", f"2) the same client against {dead}, where nobody listens")
    started = time.perf_counter()
    try:
        run_client(ctx, dead, "anyone?", 1, DEMO_DEAD_PORT_TIMEOUT_MS, 2)
    except NoReply as exc:
        log("demo", f"Lazy Pirate gave up after {time.perf_counter() - started:.2f} s: {exc}")
    log("demo", "what to see: REQ/REP costs one network round trip per request (tens of µs")
    log("demo", "on loopback), and a client with a timeout never hangs on a dead server.")


# --- Command line ------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="REQ/REP lesson: an echo server and a Lazy Pirate client."
    )
    roles = parser.add_subparsers(dest="role", required=True, metavar="ROLE")

    server = roles.add_parser("server", help="bind a REP socket and echo every request")
    server.add_argument("--host", default=DEFAULT_BIND_HOST, help="interface to bind (%(default)s)")
    server.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (%(default)s)")
    server.add_argument(
        "--crash-after", type=int, default=0, metavar="N", help="exit after N replies (test aid)"
    )

    client = roles.add_parser("client", help="send requests, Lazy Pirate style")
    client.add_argument("host_arg", nargs="?", metavar="HOST", help="server host (localhost)")
    client.add_argument("port_arg", nargs="?", type=int, metavar="PORT", help="server port (5555)")
    client.add_argument(
        "message", nargs="?", default="Hello ZeroMQ", metavar="MESSAGE", help="(%(default)s)"
    )
    client.add_argument("--host", help="same as HOST")
    client.add_argument("--port", type=int, help="same as PORT")
    client.add_argument("--count", type=int, default=1, help="requests to send (%(default)s)")
    client.add_argument(
        "--timeout",
        type=int,
        default=DEFAULT_TIMEOUT_MS,
        metavar="MS",
        help="per try (%(default)s)",
    )
    client.add_argument(
        "--retries", type=int, default=DEFAULT_RETRIES, help="tries per request (%(default)s)"
    )

    demo_parser = roles.add_parser("demo", help="run server and client together, print figures")
    demo_parser.add_argument("--host", default="127.0.0.1", help="interface (%(default)s)")
    demo_parser.add_argument("--port", type=int, default=0, help="port, 0 = any free (0)")

    args = parser.parse_args(argv)
    if args.role == "client":
        options_given = args.host is not None or args.port is not None
        if options_given and args.host_arg is not None and args.port_arg is None:
            # `client --port 5555 "Hello"`: with --host/--port, a lone positional is MESSAGE.
            args.message, args.host_arg = args.host_arg, None
        for option, positional in (("host", "host_arg"), ("port", "port_arg")):
            given, extra = getattr(args, option), getattr(args, positional)
            if given is not None and extra is not None and given != extra:
                parser.error(f"--{option} {given} contradicts {option.upper()} {extra}")
        args.host = args.host or args.host_arg or DEFAULT_CONNECT_HOST
        args.port = args.port or args.port_arg or DEFAULT_PORT
        if args.count < 1 or args.timeout < 1 or args.retries < 1:
            parser.error("--count, --timeout and --retries must be at least 1")
    if not 0 <= args.port <= 65535:
        parser.error(f"port {args.port} is not in 0-65535")
    return args


def raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM takes the same clean path as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with "&"
    ctx = zmq.Context()
    try:
        if args.role == "server":
            serve(ctx, f"tcp://{args.host}:{args.port}", args.crash_after)
        elif args.role == "client":
            endpoint = f"tcp://{args.host}:{args.port}"
            started = time.perf_counter()
            round_trips = run_client(
                ctx, endpoint, args.message, args.count, args.timeout, args.retries
            )
            log("client", summarize(round_trips, time.perf_counter() - started))
        else:
            demo(ctx, args.host, args.port)
    except NoReply as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        log(args.role, "interrupted, exiting")
        return 0 if args.role == "server" else 130
    finally:
        # term() waits until every socket is closed; sockets blocked in other threads get
        # ContextTerminated, close themselves, and so let term() return.
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
