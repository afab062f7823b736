"""Reliability exercise, a reference solution: a Majordomo broker that answers mmi.service.

The Guide's chapter 4 adds a service-discovery service to Majordomo: a client asks the
broker itself, with the service name "mmi.service" and another service's name as the
body, whether that service exists. The broker answers "200" when at least one worker
offers it and "404" otherwise, at once: a client can find out before it sends work
that would only wait. Names starting with "mmi." are the broker's own ("501": no such
one). Everything else is the lesson's broker, written here as a small class; the
frames and constants come from the lesson module, so both speak exactly the same MDP.

Binds     ROUTER on tcp://127.0.0.1:PORT for clients and workers (PORT defaults to 5605)

    python docs/solutions/reliability/mmi_broker.py broker                     # Terminal 1
    python 02-cluster-patterns/reliability/majordomo.py worker echo &           # Terminal 2
    python 02-cluster-patterns/reliability/majordomo.py client mmi.service echo     # 200
    python 02-cluster-patterns/reliability/majordomo.py client mmi.service upper    # 404
Check it: python 01-zmq-basics/labs.py check mmi docs/solutions/reliability/mmi_broker.py
"""

import argparse
import collections
import sys
import time

import zmq

from cluster_patterns.reliability.majordomo import (
    CLIENT,
    HEARTBEAT,
    HEARTBEAT_S,
    LIVENESS,
    PORT,
    READY,
    REPLY,
    REQUEST,
    WORKER,
)

MAX_WAITING = 1000  # requests held for services that have no free worker


class Broker:
    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self.sock = sock
        self.idle: dict[bytes, list[bytes]] = collections.defaultdict(list)
        self.queued: dict[bytes, list[tuple[bytes, bytes]]] = collections.defaultdict(list)
        self.offers: dict[bytes, bytes] = {}  # worker address -> its service
        self.expiry: dict[bytes, float] = {}  # worker address -> when it counts as gone

    def from_client(self, client: bytes, service: bytes, body: bytes) -> None:
        if service.startswith(b"mmi."):  # ours: answer now, no worker involved
            known = body in self.offers.values()
            code = (b"200" if known else b"404") if service == b"mmi.service" else b"501"
            self.sock.send_multipart([client, b"", CLIENT, service, code])
        elif sum(map(len, self.queued.values())) < MAX_WAITING:
            self.queued[service].append((client, body))
            self.match(service)

    def from_worker(self, worker: bytes, command: bytes, rest: list[bytes], now: float) -> None:
        if command == READY and rest:
            self.offers[worker] = rest[0]
        if worker not in self.offers:
            return  # it never said READY, or it expired: it has to say READY again
        service = self.offers[worker]
        self.expiry[worker] = now + HEARTBEAT_S * LIVENESS
        if command == REPLY and len(rest) == 3:  # [client, "", body]
            self.sock.send_multipart([rest[0], b"", CLIENT, service, rest[2]])
        if command in (READY, REPLY) and worker not in self.idle[service]:
            self.idle[service].append(worker)
        self.match(service)

    def match(self, service: bytes) -> None:
        while self.idle[service] and self.queued[service]:
            client, body = self.queued[service].pop(0)
            worker = self.idle[service].pop(0)
            self.sock.send_multipart([worker, b"", WORKER, REQUEST, client, b"", body])

    def beat(self, now: float) -> None:
        for worker, service in list(self.offers.items()):
            if self.expiry[worker] < now:
                del self.offers[worker], self.expiry[worker]
                self.idle[service] = [w for w in self.idle[service] if w != worker]
            elif worker in self.idle[service]:
                self.sock.send_multipart([worker, b"", WORKER, HEARTBEAT])

    def run(self) -> None:
        next_beat = time.monotonic() + HEARTBEAT_S
        while True:
            ready, now = self.sock.poll(int(HEARTBEAT_S * 1000)), time.monotonic()
            if ready:
                frames = self.sock.recv_multipart()  # [sender, "", header, ...]
                if len(frames) >= 5 and frames[1:3] == [b"", CLIENT]:
                    self.from_client(frames[0], frames[3], frames[4])
                elif len(frames) >= 4 and frames[1:3] == [b"", WORKER]:
                    self.from_worker(frames[0], frames[3], frames[4:], now)
            if now >= next_beat:
                self.beat(now)
                next_beat = now + HEARTBEAT_S


def main() -> int:
    parser = argparse.ArgumentParser(description="a Majordomo broker with mmi.service")
    parser.add_argument("role", choices=["broker"], help="the only role here")
    parser.add_argument("--port", type=int, default=PORT, help="(%(default)s)")
    args = parser.parse_args()
    if not 0 < args.port < 65536:
        parser.error("the port must be in 1-65535")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    ctx.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
    sock = ctx.socket(zmq.ROUTER)
    try:
        sock.bind(f"tcp://127.0.0.1:{args.port}")
        print(f"[broker] ROUTER on port {args.port}; mmi.service answers", flush=True)
        Broker(sock).run()
    except zmq.ZMQError as exc:
        print(f"error: {exc.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[broker] interrupted, exiting")
    finally:
        ctx.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
