"""Week 1, exercise 2, a reference solution: a broker client that survives a lost worker.

The lesson's client (01-zmq-basics/router_dealer.py) gives up when a reply does not come:
the worker holding its request may have been killed, and the broker never resends. This
client is a Lazy Pirate: after TIMEOUT_MS it closes its REQ socket, opens a new one and
sends the same request again; the broker hands it to a live worker. The new socket gets
a new identity (client-1, then client-1.2...): while the broker's ROUTER still holds the
old connection it would refuse a newcomer with the same identity (unless the broker set
ROUTER_HANDOVER), and the resend would be lost as well.

Connects  REQ to tcp://localhost:PORT, the broker's frontend (PORT defaults to 5559)

    python 01-zmq-basics/router_dealer.py broker                      # Terminal 1
    python 01-zmq-basics/router_dealer.py worker 1 &                  # Terminal 2
    python 01-zmq-basics/router_dealer.py worker 2 --work-ms 3000 &
    python docs/solutions/week1/lost_worker_client.py client 1 --count 20   # Terminal 3
    kill -9 %2    # in Terminal 2, while the client waits for worker-2
Check it: python 01-zmq-basics/labs.py check lost-worker docs/solutions/week1/lost_worker_client.py
"""

import argparse
import collections
import sys

import zmq

PORT = 5559
TIMEOUT_MS = 1000  # shorter than the lesson's 2500: a lost request costs this much
RETRIES = 5


def request(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, name: str, body: bytes) -> bytes:
    """Send `body` until a reply comes, each try on a fresh REQ with a fresh identity."""
    for attempt in range(1, RETRIES + 1):
        with ctx.socket(zmq.REQ) as sock:
            sock.setsockopt(zmq.IDENTITY, (name if attempt == 1 else f"{name}.{attempt}").encode())
            sock.connect(endpoint)
            sock.send(body)
            if sock.poll(TIMEOUT_MS):
                worker, _reply = sock.recv_multipart()
                return worker
        print(f"[{name}] no reply to {body.decode()!r} in {TIMEOUT_MS} ms; sending it again")
    sys.exit(f"error: {name}: no reply after {RETRIES} tries; are the broker and a worker up?")


def main() -> int:
    parser = argparse.ArgumentParser(description="a broker client that retries lost requests")
    parser.add_argument("role", choices=["client"], help="the only role here")
    parser.add_argument("id", help="the client's id, e.g. 1")
    parser.add_argument("--count", type=int, default=10, help="requests (%(default)s)")
    parser.add_argument("--port", type=int, default=PORT, help="the broker's (%(default)s)")
    args = parser.parse_args()
    if args.count < 1 or not 0 < args.port < 65536:
        parser.error("--count must be at least 1 and the port in 1-65535")
    name = f"client-{args.id}"
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)  # a dropped request must not keep close() waiting
    served_by: collections.Counter[str] = collections.Counter()
    try:
        for number in range(1, args.count + 1):
            worker = request(ctx, f"tcp://localhost:{args.port}", name, b"request %d" % number)
            served_by[worker.decode(errors="replace")] += 1
    except KeyboardInterrupt:
        return 130
    finally:
        ctx.destroy()
    print(f"[{name}] {served_by.total()} replies, served by {dict(sorted(served_by.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
