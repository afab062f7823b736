"""Lesson 10: an XSUB/XPUB proxy with zmq.proxy, and what an XPUB socket hears.

Binds     proxy  XSUB on tcp://127.0.0.1:PORT (publishers), XPUB on PORT+1 (subscribers)
Connects  publisher  PUB to PORT;  subscriber  SUB to PORT+1;  PORT defaults to 5564
Frames    downstream [topic, text]; upstream one frame per subscription change:
          b"\\x01" + topic to subscribe, b"\\x00" + topic to unsubscribe

A proxy lets publishers and subscribers that come and go meet at one stable address.
XSUB and XPUB are PUB and SUB with the subscriptions exposed as messages: a SUB sends
"\\x01topic" upstream, XPUB hands it to the proxy, which passes it on to XSUB and so to
every publisher (which filters at its side). zmq.proxy(frontend, backend, capture)
shuttles messages both ways and copies each one to capture. An XPUB reports a topic's
first subscriber and its last unsubscriber (all of them with XPUB_VERBOSE), and any
other frame a peer sends it: the week-2 coordinator binds XPUB, not PUB, on 5571 to
read those frames and count the ones that are not subscriptions as bad input, where a
PUB would silently drop them.

    # Terminal 1 (blocks until Ctrl-C; prints every subscription it sees)
    python 01-zmq-basics/proxy.py proxy
    # Terminal 2 (blocks; prints what arrives)
    python 01-zmq-basics/proxy.py subscriber alerts
    # Terminal 3
    python 01-zmq-basics/proxy.py publisher
    # Or all of them as threads of one process:
    python 01-zmq-basics/proxy.py demo
"""

import argparse
import contextlib
import signal
import sys
import threading
import time

import zmq

PORT = 5564  # XSUB for publishers on PORT, XPUB for subscribers on PORT + 1
MESSAGES = [(b"status", b"all good"), (b"alerts", b"disk full"), (b"status", b"still good")]
Context = zmq.Context[zmq.Socket[bytes]]


def say(line: str) -> None:
    sys.stdout.write(line + "\n")  # one write per line: the demo's threads do not mix lines
    sys.stdout.flush()


def run_proxy(ctx: Context, port: int) -> None:
    xsub, xpub, capture = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB), ctx.socket(zmq.PUSH)
    try:
        xsub.bind(f"tcp://127.0.0.1:{port}")
        xpub.bind(f"tcp://127.0.0.1:{port + 1}")
    except zmq.ZMQError as exc:
        print(f"error: cannot bind port {port} or {port + 1}: {exc.strerror}", file=sys.stderr)
        raise SystemExit(1)
    capture.bind("inproc://capture")
    threading.Thread(target=show_subscriptions, args=(ctx,), daemon=True).start()
    say(f"[proxy] publishers -> XSUB port {port}, XPUB port {port + 1} -> subscribers")
    # --8<-- [start:proxy]
    try:
        zmq.proxy(xsub, xpub, capture)  # runs until the context ends
    except zmq.ContextTerminated:
        pass
    finally:
        for sock in (xsub, xpub, capture):
            sock.close()
    # --8<-- [end:proxy]


def show_subscriptions(ctx: Context) -> None:
    with ctx.socket(zmq.PULL) as copies, contextlib.suppress(zmq.ContextTerminated):
        copies.connect("inproc://capture")
        while True:
            frames = copies.recv_multipart()  # everything the proxy forwarded, both ways
            if len(frames) == 1 and frames[0][:1] in (b"\x00", b"\x01"):
                what = "subscribe" if frames[0][0] else "unsubscribe"
                say(f"[proxy] upstream: {frames[0]!r}, {what} {frames[0][1:]!r}")


def subscriber(ctx: Context, port: int, topic: str, wanted: int = 0) -> None:
    with ctx.socket(zmq.SUB) as sub:
        sub.connect(f"tcp://localhost:{port + 1}")
        sub.setsockopt_string(zmq.SUBSCRIBE, topic)  # travels to the proxy as "\x01" + topic
        say(f"[subscriber {topic or '*'}] SUB connected to port {port + 1}")
        received = 0
        while received < wanted or not wanted:  # wanted 0: until Ctrl-C
            say(f"[subscriber {topic or '*'}] got {sub.recv_multipart()}")
            received += 1


def publisher(ctx: Context, port: int) -> None:
    with ctx.socket(zmq.PUB) as pub:
        pub.connect(f"tcp://localhost:{port}")  # publishers connect too: the proxy is stable
        time.sleep(0.5)  # the slow joiner: the proxy passes the subscriptions on to us
        for message in MESSAGES:
            pub.send_multipart(message)
        say(f"[publisher] published {len(MESSAGES)} messages")
        time.sleep(0.2)  # LINGER is 0: give them time to leave before close()


def demo(ctx: Context, port: int) -> None:
    threading.Thread(target=run_proxy, args=(ctx, port)).start()
    listeners = [
        threading.Thread(target=subscriber, args=(ctx, port, topic, wanted))
        for topic, wanted in (("alerts", 1), ("", 3))
    ]
    for thread in listeners:
        thread.start()
    time.sleep(0.3)  # both subscriptions reach the proxy before the publisher connects
    publisher(ctx, port)
    for thread in listeners:
        thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description="XSUB/XPUB proxy with zmq.proxy")
    parser.add_argument("role", choices=["proxy", "publisher", "subscriber", "demo"])
    parser.add_argument("topic", nargs="?", default="", help="subscriber's prefix (all)")
    parser.add_argument("--port", type=int, default=PORT, help="PORT+1 too (%(default)s)")
    args = parser.parse_args()
    if not 1 <= args.port <= 65534:
        parser.error("PORT must be in 1-65534 (PORT+1 is used too)")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: the Ctrl-C path
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with "&"
    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    ctx.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
    try:
        if args.role == "proxy":
            run_proxy(ctx, args.port)
        elif args.role == "publisher":
            publisher(ctx, args.port)
        elif args.role == "subscriber":
            subscriber(ctx, args.port, args.topic)
        else:
            demo(ctx, args.port)
    except KeyboardInterrupt:
        print(f"[{args.role}] interrupted, exiting", flush=True)
    finally:
        ctx.term()  # each thread closes its own sockets; term() waits for them
    return 0


if __name__ == "__main__":
    sys.exit(main())
