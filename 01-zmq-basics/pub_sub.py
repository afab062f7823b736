"""Lesson 3: PUB/SUB, broadcasting with topic filters, and what gets lost.

What it binds and connects (PORT defaults to 5561)
    publisher   binds PUB on tcp://HOST:PORT, and with --sync a REP on PORT+1
    subscriber  connects SUB to PORT, and with --sync a REQ to PORT+1

What flows
    publisher -> subscribers   [topic, sequence, sent at (ns), text]   per message
                               [topic, END, last sequence]             when done
    subscriber -> publisher    READY (only with --sync, over REQ/REP)

Topics are "status", "metrics" and "alerts"; each has its own sequence numbers
1, 2, 3... A SUB socket receives only topics it subscribed to (prefix match,
filtered on the publisher's side), and a gap in the sequence numbers is a
message that never arrived. PUB never waits for anyone, so messages are lost:
  * at the start: a subscriber needs a few ms to connect and send its
    subscription; everything published before that is gone (the "slow joiner");
  * in the middle: when a subscriber reads slower than the publisher sends,
    the publisher's queue for it fills to the high-water mark (--hwm) and PUB
    drops what does not fit.
--sync fixes the first: the publisher sends probe messages until each of
--subscribers subscribers has seen one and said READY over REQ/REP, and only
then publishes. Nothing fixes the second except reading faster or a bigger HWM.

How to run it (from the repository root)
    # Terminal 1 and 2: subscribers (no topic = all topics)
    python 01-zmq-basics/pub_sub.py subscriber
    python 01-zmq-basics/pub_sub.py subscriber alerts
    # Terminal 3: publish 3000 messages at 3000/s; subscribers report what they missed
    python 01-zmq-basics/pub_sub.py publisher
    # The start-up handshake: nothing missed
    python 01-zmq-basics/pub_sub.py subscriber --sync
    python 01-zmq-basics/pub_sub.py publisher --sync --subscribers 1
    # High-water-mark drops: a slow subscriber and a fast publisher
    # (the kernel's TCP buffers queue a lot too; shrink them to see the HWM act sooner)
    python 01-zmq-basics/pub_sub.py subscriber --sync --hwm 100 --work-us 100 --kernel-buffer 16384
    python 01-zmq-basics/pub_sub.py publisher --sync --hwm 100 --rate 0 --count 20000 \\
        --kernel-buffer 16384
    # Everything in one process, with figures:
    python 01-zmq-basics/pub_sub.py demo

Exit codes: 0 done, 1 sync timed out / port in use, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

import zmq

# --- Tunables ----------------------------------------------------------------------------
DEFAULT_BIND_HOST = "127.0.0.1"  # use --host 0.0.0.0 to accept other machines
DEFAULT_CONNECT_HOST = "localhost"
DEFAULT_PORT = 5561  # PUB on PORT, sync REP on PORT + 1
TOPICS = (b"status", b"metrics", b"alerts")
SYNC_TOPIC = b"\x00sync"  # probe messages; no real topic starts with a NUL byte
END = b"END"
DEFAULT_COUNT = 3000  # messages in total, spread over the topics
DEFAULT_RATE = 3000  # messages per second; 0 = as fast as possible
DEFAULT_HWM = 1000  # libzmq's default high-water mark, in messages
DEFAULT_WAIT_S = 60.0  # how long --sync waits for the other side
DEFAULT_IDLE_S = 5.0  # a subscriber reports after this long without messages
END_REPEATS = 4  # END is sent a few times, spread out: PUB drops it like any other message
END_GAP_S = 0.25  # when a slow subscriber's queue is full
PROBE_INTERVAL_MS = 50
LINGER_MS = 0
MAX_MESSAGE_BYTES = 64 * 1024
LOG_FIRST_N = 3
DEMO_COUNT = 3000
DEMO_FLOOD_COUNT = 20_000
DEMO_FLOOD_HWM = 100
DEMO_FLOOD_WORK_US = 100
DEMO_FLOOD_KERNEL_BUFFER = 16 * 1024  # small, so the HWM and not the kernel decides

Socket = zmq.Socket[bytes]
Context = zmq.Context[Socket]


def log(role: str, text: str) -> None:
    # One write per line, so lines from several threads do not interleave.
    sys.stdout.write(f"[{role}] {text}\n")
    sys.stdout.flush()


def tune(sock: Socket, hwm: int = DEFAULT_HWM, kernel_buffer: int = 0) -> Socket:
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    if kernel_buffer:  # the kernel's TCP buffers are a second, bigger queue behind the HWM
        sock.setsockopt(zmq.SNDBUF, kernel_buffer)
        sock.setsockopt(zmq.RCVBUF, kernel_buffer)
    return sock


def bind_or_explain(sock: Socket, endpoint: str) -> None:
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EADDRINUSE:
            raise SystemExit(
                f"error: cannot bind {endpoint}: address already in use "
                "(another publisher running? pick another --port)"
            ) from None
        raise SystemExit(f"error: cannot bind {endpoint}: {exc}") from None


class Fail(Exception):
    """A role cannot go on; the message says why."""


# --- Publisher ---------------------------------------------------------------------------
def wait_for_subscribers(pub: Socket, sync: Socket, expected: int, wait_s: float) -> None:
    """Probe until ``expected`` subscribers have seen a probe and said READY.

    A READY alone is not enough: it travels on its own connection and may arrive
    before that subscriber's subscriptions reach the PUB socket. A subscriber
    that has received a probe is provably subscribed, so it says READY only then.
    """
    deadline = time.monotonic() + wait_s
    ready = 0
    while ready < expected:
        if time.monotonic() > deadline:
            raise Fail(f"only {ready} of {expected} subscribers synced within {wait_s:.0f} s")
        pub.send(SYNC_TOPIC)
        if sync.poll(PROBE_INTERVAL_MS, zmq.POLLIN):
            sync.recv()
            sync.send(b"GO")
            ready += 1
            log("publisher", f"subscriber {ready}/{expected} is ready")


def run_publisher(
    ctx: Context,
    endpoint: str,
    sync_endpoint: str | None,
    subscribers: int,
    count: int,
    rate: int,
    hwm: int,
    wait_s: float = DEFAULT_WAIT_S,
    kernel_buffer: int = 0,
) -> None:
    pub = tune(ctx.socket(zmq.PUB), hwm, kernel_buffer)
    sync = tune(ctx.socket(zmq.REP))
    try:
        bind_or_explain(pub, endpoint)
        log("publisher", f"PUB bound to {endpoint} (HWM {hwm})")
        if sync_endpoint:
            bind_or_explain(sync, sync_endpoint)
            log("publisher", f"waiting for {subscribers} subscriber(s) on {sync_endpoint}")
            wait_for_subscribers(pub, sync, subscribers, wait_s)
        sequences = dict.fromkeys(TOPICS, 0)
        interval = 1 / rate if rate else 0.0
        started = next_at = time.perf_counter()
        sent = 0
        while count == 0 or sent < count:
            topic = TOPICS[sent % len(TOPICS)]
            sequences[topic] += 1
            seq = sequences[topic]
            text = f"{topic.decode()} update {seq}".encode()
            pub.send_multipart([topic, str(seq).encode(), str(time.time_ns()).encode(), text])
            sent += 1
            if interval:
                next_at += interval
                delay = next_at - time.perf_counter()
                if delay > 0.001:  # sleep in >= 1 ms steps; short sleeps overshoot a lot
                    time.sleep(delay)
        elapsed = time.perf_counter() - started
        log("publisher", f"published {sent} messages in {elapsed:.2f} s: {sent / elapsed:,.0f}/s")
        for _ in range(END_REPEATS):
            for topic in TOPICS:
                pub.send_multipart([topic, END, str(sequences[topic]).encode()])
            time.sleep(END_GAP_S)
    except zmq.ContextTerminated:
        pass
    finally:
        pub.close()
        sync.close()


# --- Subscriber --------------------------------------------------------------------------
@dataclass
class TopicStats:
    received: int = 0
    first: int = 0  # first sequence number seen
    last: int = 0  # last sequence number seen
    gaps: int = 0  # messages missing between first and last
    published: int | None = None  # the publisher's last sequence, from END


@dataclass
class Report:
    topics: dict[str, TopicStats] = field(default_factory=dict)
    latency_us_total: float = 0.0
    elapsed_s: float = 0.0

    @property
    def received(self) -> int:
        return sum(t.received for t in self.topics.values())

    @property
    def missed_at_start(self) -> int:
        return sum(t.first - 1 for t in self.topics.values() if t.received)

    @property
    def missed_in_gaps(self) -> int:
        return sum(t.gaps for t in self.topics.values())

    @property
    def missed_at_end(self) -> int:
        return sum(t.published - t.last for t in self.topics.values() if t.published is not None)


def sync_with_publisher(ctx: Context, sub: Socket, sync_endpoint: str, wait_s: float) -> None:
    """The start-up handshake: see a probe (so we are subscribed), then say READY."""
    sub.setsockopt(zmq.SUBSCRIBE, SYNC_TOPIC)  # after the real topics: they arrive first
    deadline = time.monotonic() + wait_s
    while True:
        if not sub.poll(max(1, int((deadline - time.monotonic()) * 1000)), zmq.POLLIN):
            raise Fail(
                f"no publisher probe within {wait_s:.0f} s - is a publisher running with --sync?"
            )
        if sub.recv_multipart()[0] == SYNC_TOPIC:
            break
    req = tune(ctx.socket(zmq.REQ))
    try:
        req.connect(sync_endpoint)
        req.send(b"READY")
        if not req.poll(int(wait_s * 1000), zmq.POLLIN):
            raise Fail(f"publisher did not answer READY on {sync_endpoint}")
        req.recv()
    finally:
        req.close()
    sub.setsockopt(zmq.UNSUBSCRIBE, SYNC_TOPIC)


def run_subscriber(
    ctx: Context,
    endpoint: str,
    sync_endpoint: str | None,
    topics: list[str],
    hwm: int,
    work_us: int,
    idle_s: float,
    wait_s: float = DEFAULT_WAIT_S,
    kernel_buffer: int = 0,
    name: str = "subscriber",
) -> Report:
    sub = tune(ctx.socket(zmq.SUB), hwm, kernel_buffer)
    report = Report()
    try:
        sub.connect(endpoint)
        for topic in topics or [""]:
            sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        shown = ", ".join(topics) if topics else "all topics"
        log(name, f"SUB connected to {endpoint}, subscribed to {shown} (HWM {hwm})")
        if sync_endpoint:
            sync_with_publisher(ctx, sub, sync_endpoint, wait_s)
            log(name, "synced with the publisher")
        receive(sub, report, work_us, idle_s, name)
    except KeyboardInterrupt:
        log(name, "interrupted")
    except zmq.ContextTerminated:
        pass
    finally:
        sub.close()
    print_report(report, name)
    return report


def receive(sub: Socket, report: Report, work_us: int, idle_s: float, name: str) -> None:
    """Read until every topic seen has ended, or nothing came for ``idle_s`` seconds."""
    started: float | None = None
    last_at = 0.0
    ended: set[str] = set()
    bad = 0
    while True:
        waited = idle_s if started is not None and idle_s > 0 else None
        if not sub.poll(None if waited is None else int(waited * 1000), zmq.POLLIN):
            log(name, f"nothing for {idle_s:.1f} s and no END (dropped too?), stopping")
            break
        frames = sub.recv_multipart()
        now_ns = time.time_ns()
        if frames[0] == SYNC_TOPIC:
            continue  # a left-over probe
        if len(frames) == 3 and frames[1] == END and frames[2].isdigit():
            stats = report.topics.setdefault(frames[0].decode(errors="replace"), TopicStats())
            stats.published = int(frames[2])
            ended.add(frames[0].decode(errors="replace"))
            if ended >= set(report.topics):
                break
            continue
        if len(frames) != 4 or not frames[1].isdigit() or not frames[2].isdigit():
            bad += 1
            log(name, f"ignored malformed message #{bad} ({len(frames)} frames)")
            continue
        last_at = time.perf_counter()
        if started is None:
            started = last_at
        topic, seq = frames[0].decode(errors="replace"), int(frames[1])
        record(report.topics.setdefault(topic, TopicStats()), seq)
        report.latency_us_total += (now_ns - int(frames[2])) / 1000
        if report.received <= LOG_FIRST_N:
            log(name, f"got {topic} #{seq}: {frames[3].decode(errors='replace')!r}")
        if work_us:
            time.sleep(work_us / 1e6)  # a slow reader makes the publisher's queue fill up
    if started is not None:
        report.elapsed_s = last_at - started


def record(stats: TopicStats, seq: int) -> None:
    if stats.received == 0:
        stats.first = seq
    elif seq > stats.last + 1:
        stats.gaps += seq - stats.last - 1
    stats.last = max(stats.last, seq)
    stats.received += 1


def print_report(report: Report, name: str) -> None:
    if report.received == 0:
        log(name, "received nothing")
        return
    for topic, stats in sorted(report.topics.items()):
        log(
            name,
            f"  {topic}: received {stats.received}, sequence {stats.first}..{stats.last}"
            + (f" of {stats.published}" if stats.published else ""),
        )
    rate = report.received / report.elapsed_s if report.elapsed_s else 0.0
    mean_latency = report.latency_us_total / report.received
    log(
        name,
        f"received {report.received} messages ({rate:,.0f}/s, mean latency "
        f"{mean_latency:,.0f} µs); missed {report.missed_at_start} at the start "
        f"(slow joiner), {report.missed_in_gaps} in gaps and {report.missed_at_end} "
        "at the end (high-water mark)",
    )


# --- Demo: publisher and subscriber threads, three runs ----------------------------------
def unused_port(host: str) -> int:
    """A port that was free a moment ago (a plain socket: its close() is immediate)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def demo_run(
    ctx: Context,
    host: str,
    sync: bool,
    count: int,
    rate: int,
    hwm: int,
    work_us: int,
    kernel_buffer: int = 0,
    port: int = 0,
) -> Report:
    """One publisher/subscriber run on PORT and PORT+1 (0: any free ports)."""
    endpoint = f"tcp://{host}:{port or unused_port(host)}"
    sync_endpoint = f"tcp://{host}:{port + 1 if port else unused_port(host)}" if sync else None
    reports: list[Report] = []
    subscriber = threading.Thread(
        target=lambda: reports.append(
            run_subscriber(
                ctx, endpoint, sync_endpoint, [], hwm, work_us, 2.0, kernel_buffer=kernel_buffer
            )
        ),
        daemon=True,
    )
    subscriber.start()  # it connects before the publisher binds, as in two terminals
    run_publisher(ctx, endpoint, sync_endpoint, 1, count, rate, hwm, kernel_buffer=kernel_buffer)
    subscriber.join(timeout=120)
    return reports[0] if reports else Report()


def demo(ctx: Context, host: str, port: int) -> None:
    # Each run gets its own two ports: a closed ZeroMQ listener may hold its port briefly.
    ports = [port + 2 * run if port else 0 for run in range(3)]
    log("demo", f"1) no sync: {DEMO_COUNT} messages at {DEFAULT_RATE}/s")
    first = demo_run(ctx, host, False, DEMO_COUNT, DEFAULT_RATE, DEFAULT_HWM, 0, port=ports[0])
    log("demo", f"2) the same with --sync: {DEMO_COUNT} messages at {DEFAULT_RATE}/s")
    second = demo_run(ctx, host, True, DEMO_COUNT, DEFAULT_RATE, DEFAULT_HWM, 0, port=ports[1])
    log(
        "demo",
        f"3) flood: {DEMO_FLOOD_COUNT} messages at full speed, HWM {DEMO_FLOOD_HWM}, "
        f"kernel buffers {DEMO_FLOOD_KERNEL_BUFFER // 1024} KiB, "
        f"a subscriber that takes {DEMO_FLOOD_WORK_US} µs per message",
    )
    third = demo_run(
        ctx,
        host,
        True,
        DEMO_FLOOD_COUNT,
        0,
        DEMO_FLOOD_HWM,
        DEMO_FLOOD_WORK_US,
        DEMO_FLOOD_KERNEL_BUFFER,
        port=ports[2],
    )
    flood_missed = third.missed_in_gaps + third.missed_at_end
    log("demo", f"slow joiner without --sync: {first.missed_at_start} messages missed")
    log("demo", f"with --sync: {second.missed_at_start + second.missed_in_gaps} missed")
    log("demo", f"flood past the high-water mark: {flood_missed} dropped by PUB")


# --- Command line ------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="PUB/SUB lesson: topics, sequence numbers, sync.")
    roles = parser.add_subparsers(dest="role", required=True, metavar="ROLE")

    def common(sub: argparse.ArgumentParser, host: str) -> None:
        sub.add_argument("--host", default=host, help="host (%(default)s)")
        sub.add_argument(
            "--port", type=int, default=DEFAULT_PORT, help="PUB port; --sync uses PORT+1 (5561)"
        )
        sub.add_argument("--sync", action="store_true", help="REQ/REP start-up handshake")
        sub.add_argument("--hwm", type=int, default=DEFAULT_HWM, help="high-water mark (1000)")
        sub.add_argument("--wait-s", type=float, default=DEFAULT_WAIT_S, help="sync wait (60)")
        sub.add_argument(
            "--kernel-buffer", type=int, default=0, metavar="BYTES", help="0 = OS default (0)"
        )

    publisher = roles.add_parser("publisher", help="bind PUB and publish numbered messages")
    common(publisher, DEFAULT_BIND_HOST)
    publisher.add_argument("--count", type=int, default=DEFAULT_COUNT, help="0 = forever (3000)")
    publisher.add_argument("--rate", type=int, default=DEFAULT_RATE, help="per s, 0 = max (3000)")
    publisher.add_argument("--subscribers", type=int, default=1, help="to wait for (--sync) (1)")

    subscriber = roles.add_parser("subscriber", help="connect SUB and report what was missed")
    subscriber.add_argument("topics", nargs="*", metavar="TOPIC", help="prefixes (default: all)")
    common(subscriber, DEFAULT_CONNECT_HOST)
    subscriber.add_argument("--work-us", type=int, default=0, help="time per message (0)")
    subscriber.add_argument("--idle-s", type=float, default=DEFAULT_IDLE_S, help="0 = never (5)")

    demo_parser = roles.add_parser("demo", help="three publisher/subscriber runs, with figures")
    demo_parser.add_argument("--host", default="127.0.0.1", help="interface (%(default)s)")
    demo_parser.add_argument(
        "--port", type=int, default=0, help="uses PORT..PORT+5; 0 = any free ports (0)"
    )

    args = parser.parse_args(argv)
    if args.role == "demo" and not 0 <= args.port <= 65530:
        parser.error(f"port {args.port} is not in 0-65530 (the demo uses PORT..PORT+5)")
    if args.role != "demo":
        if not 1 <= args.port <= 65534:
            parser.error(f"port {args.port} is not in 1-65534 (PORT+1 is used too)")
        if args.hwm < 0 or args.wait_s <= 0 or args.kernel_buffer < 0:
            parser.error("--hwm and --kernel-buffer must be at least 0, --wait-s above 0")
    if args.role == "publisher" and (args.count < 0 or args.rate < 0 or args.subscribers < 1):
        parser.error("--count and --rate must be at least 0, --subscribers at least 1")
    if args.role == "subscriber" and (args.work_us < 0 or args.idle_s < 0):
        parser.error("--work-us and --idle-s must be at least 0")
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
        endpoint = f"tcp://{args.host}:{args.port}"
        sync_endpoint = f"tcp://{args.host}:{args.port + 1}" if args.sync else None
        if args.role == "publisher":
            run_publisher(
                ctx,
                endpoint,
                sync_endpoint,
                args.subscribers,
                args.count,
                args.rate,
                args.hwm,
                args.wait_s,
                args.kernel_buffer,
            )
        else:
            run_subscriber(
                ctx,
                endpoint,
                sync_endpoint,
                args.topics,
                args.hwm,
                args.work_us,
                args.idle_s,
                args.wait_s,
                args.kernel_buffer,
            )
    except Fail as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        log(args.role, "interrupted, exiting")
    finally:
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
