"""Lesson 3: PUB/SUB, broadcast with topic filters, and the slow joiner.

Binds     publisher   PUB on tcp://127.0.0.1:PORT (PORT defaults to 5561)
Connects  subscriber  SUB to tcp://HOST:PORT, subscribed to the TOPIC prefixes given
Frames    [topic, sequence, text] per message; [topic, 0, last sequence] at the end

Each topic (status, metrics, alerts) numbers its messages 1, 2, 3..., so a gap is a
message that never arrived. PUB never waits for anyone, so it loses messages:
  - at the start: a subscription takes a few ms to reach the publisher, and what was
    published before it arrived is gone. This is the slow joiner, and it strikes even
    when the subscriber was started first. sync_pub_sub.py cures it;
  - in the middle: a subscriber that reads more slowly than the publisher sends fills
    its queue up to the high-water mark, and PUB drops what does not fit (labs.py hwm).

    # Terminal 1 and Terminal 2 (each prints its report when the publisher is done)
    python 01-zmq-basics/pub_sub.py subscriber
    python 01-zmq-basics/pub_sub.py subscriber alerts
    # Terminal 3
    python 01-zmq-basics/pub_sub.py publisher
    # Or both in one process: a subscriber thread, then a publisher
    python 01-zmq-basics/pub_sub.py demo
Experiments: labs.py slow-joiner. Exits 0 done, 1 port in use, 2 usage.
"""

import argparse
import contextlib
import signal
import sys
import threading
import time

import zmq

PORT = 5561
TOPICS = [b"status", b"metrics", b"alerts"]
COUNT = 3000  # messages in all, spread over the topics
RATE = 3000  # messages per second; 0 = as fast as possible
END_REPEATS = 3  # PUB may drop END like any other message, so it goes out a few times
IDLE_MS = 3000  # a subscriber that hears nothing for this long reports anyway
Context = zmq.Context[zmq.Socket[bytes]]


def publish(ctx: Context, args: argparse.Namespace) -> None:
    with ctx.socket(zmq.PUB) as pub:
        try:
            pub.bind(f"tcp://127.0.0.1:{args.port}")
        except zmq.ZMQError as exc:
            sys.exit(f"error: cannot bind port {args.port}: {exc.strerror}")
        print(f"[publisher] PUB bound to tcp://127.0.0.1:{args.port}", flush=True)
        # --8<-- [start:publish]
        last = dict.fromkeys(TOPICS, 0)
        started = time.perf_counter()
        for number in range(args.count):
            topic = TOPICS[number % len(TOPICS)]
            last[topic] += 1
            pub.send_multipart([topic, b"%d" % last[topic], b"update %d" % last[topic]])
            if args.rate:  # pace the stream: message n leaves at n / rate seconds
                time.sleep(max(0.0, started + number / args.rate - time.perf_counter()))
        # --8<-- [end:publish]
        print(f"[publisher] published {args.count} messages", flush=True)
        for _ in range(END_REPEATS):
            for topic in TOPICS:  # END: sequence 0, and the last sequence as its text
                pub.send_multipart([topic, b"0", b"%d" % last[topic]])
            time.sleep(0.2)


def subscribe(ctx: Context, args: argparse.Namespace) -> None:
    with ctx.socket(zmq.SUB) as sub, contextlib.suppress(zmq.ContextTerminated):
        sub.connect(f"tcp://{args.host}:{args.port}")
        # --8<-- [start:subscribe]
        for topic in args.topics or [""]:
            sub.setsockopt_string(zmq.SUBSCRIBE, topic)  # a prefix of frame 1; "" = all
        shown = " ".join(args.topics) or "all"
        print(f"[subscriber] SUB connected to port {args.port}, topics: {shown}", flush=True)
        first: dict[bytes, int] = {}  # topic -> first sequence seen
        last: dict[bytes, int] = {}  # topic -> last sequence seen
        ended: dict[bytes, int] = {}  # topic -> last sequence published, from its END
        received = gaps = 0
        while sub.poll(IDLE_MS if received else None):
            try:  # [topic, sequence, text]; sequence 0 is END, and its text the last sequence
                topic, sequence, text = sub.recv_multipart()
                number = int(sequence)
                ended.update({topic: int(text)} if number == 0 else {})
            except ValueError:
                continue  # not one of ours: a subscriber must survive a stranger's garbage
            if number == 0 and set(ended) >= set(last):
                break  # every topic we heard from has ended
            if number > 0:
                first.setdefault(topic, number)
                gaps += number - last.get(topic, number - 1) - 1  # skipped since the last one
                last[topic] = number
                received += 1
        # --8<-- [end:subscribe]
        for topic in sorted(last):
            total = ended.get(topic, "?")
            name = topic.decode(errors="replace")
            print(f"[subscriber]   {name}: {first[topic]}..{last[topic]} of {total}")
        at_start = sum(n - 1 for n in first.values())
        print(f"[subscriber] received {received}, missed {at_start} at the start", end=" ")
        print(f"(slow joiner) and {gaps} in gaps", flush=True)


def demo(ctx: Context, args: argparse.Namespace) -> None:
    """A subscriber thread connects first, as if in another terminal; then we publish."""
    subscriber = threading.Thread(target=subscribe, args=(ctx, args))
    subscriber.start()
    time.sleep(0.2)  # the subscriber is connecting and retrying: nobody is bound yet
    publish(ctx, args)
    subscriber.join()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="PUB/SUB: topics, sequence numbers, losses")
    roles = parser.add_subparsers(dest="role", required=True)
    pub = roles.add_parser("publisher", help="bind PUB and publish numbered messages")
    sub = roles.add_parser("subscriber", help="connect SUB and report what was missed")
    sub.add_argument("topics", nargs="*", metavar="TOPIC", help="prefixes (default: all)")
    demo_parser = roles.add_parser("demo", help="a subscriber thread and a publisher")
    for role in (pub, demo_parser):
        role.add_argument("--count", type=int, default=COUNT, help="messages (%(default)s)")
        role.add_argument("--rate", type=int, default=RATE, help="per s, 0 = max (%(default)s)")
    for role in (pub, sub, demo_parser):
        role.add_argument("--port", type=int, default=PORT, help="(%(default)s)")
        role.add_argument("--host", default="localhost", help="to connect to (%(default)s)")
    args = parser.parse_args()
    if not 1 <= args.port <= 65535 or min(getattr(args, "count", 0), getattr(args, "rate", 0)) < 0:
        parser.error("the port must be in 1-65535, --count and --rate at least 0")
    args.topics = getattr(args, "topics", [])
    return args


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: the Ctrl-C path
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with "&"
    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)  # close() drops unsent messages instead of waiting
    ctx.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)  # no peer makes us allocate more than this
    try:
        {"publisher": publish, "subscriber": subscribe, "demo": demo}[args.role](ctx, args)
    except KeyboardInterrupt:
        print(f"[{args.role}] interrupted, exiting", flush=True)
    finally:
        ctx.term()  # every socket was closed by its `with` block, so this returns
    return 0


if __name__ == "__main__":
    sys.exit(main())
