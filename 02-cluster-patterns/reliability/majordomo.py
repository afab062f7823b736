"""Majordomo (Guide ch. 4): a service-oriented broker; clients ask for a service by name.

Binds     broker  ROUTER on tcp://127.0.0.1:PORT (5605); workers (DEALER), clients (REQ) connect
Frames    client <-> broker  [MDPC01, service, body]
          worker -> broker  ["", MDPW01, READY, service], [.., REPLY, client, "", body], HEARTBEAT
          broker -> worker  ["", MDPW01, REQUEST, client, "", body] or ["", MDPW01, HEARTBEAT]

Paranoid Pirate with names: each worker offers one service ("echo", "upper"); the broker
matches, per service, waiting workers with waiting requests. The frame after the delimiter
says who talks (MDPC01 a client, MDPW01 a worker), so one ROUTER serves both. The broker
forgets silent workers; a worker that stops hearing the broker says READY again, so a
restarted broker relearns its services. A request for a service without workers waits
(up to 1000 of them), so clients keep a timeout. The full spec: rfc.zeromq.org/spec/7

    # Terminal 1 (blocks until Ctrl-C)
    python 02-cluster-patterns/reliability/majordomo.py broker
    # Terminal 2
    python 02-cluster-patterns/reliability/majordomo.py worker echo &
    python 02-cluster-patterns/reliability/majordomo.py worker upper &
    # Terminal 3: ask the "upper" service
    python 02-cluster-patterns/reliability/majordomo.py client upper "hello majordomo"
"""

import argparse
import collections
import signal
import sys
import time

import zmq

PORT = 5605
HEARTBEAT_S = 1.0  # the broker sends idle workers a heartbeat this often; they answer
LIVENESS = 3  # intervals of silence after which a peer counts as gone
TIMEOUT_MS = 2500  # the client's patience per try, 3 tries
CLIENT, WORKER = b"MDPC01", b"MDPW01"
READY, REQUEST, REPLY, HEARTBEAT = b"\x01", b"\x02", b"\x03", b"\x04"
SERVICES = {b"echo": lambda body: body, b"upper": lambda body: body.upper()}
Context = zmq.Context[zmq.Socket[bytes]]


def run_broker(ctx: Context, port: int) -> None:
    sock = ctx.socket(zmq.ROUTER)
    try:
        sock.bind(f"tcp://127.0.0.1:{port}")
    except zmq.ZMQError as exc:
        sys.exit(f"error: cannot bind port {port}: {exc.strerror}")
    print(f"[broker] ROUTER on port {port} for clients and workers", flush=True)
    waiting: dict[bytes, list[bytes]] = collections.defaultdict(list)  # service -> workers
    requests: dict[bytes, list[list[bytes]]] = collections.defaultdict(list)  # [client, body]
    workers: dict[bytes, tuple[bytes, float]] = {}  # address -> (service, expiry)
    next_heartbeat = time.monotonic() + HEARTBEAT_S
    while True:
        ready, now = sock.poll(int(HEARTBEAT_S * 1000)), time.monotonic()
        if ready:
            # --8<-- [start:broker]
            sender, _, header, *rest = sock.recv_multipart() + [b""] * 3  # pad: no IndexError
            service = b""  # whose queues to match, once we know
            if header == CLIENT and sum(map(len, requests.values())) < 1000:  # bounded memory
                service = rest[0]  # [service, body]: queue it for that service
                requests[service].append([sender, rest[1]])
            elif header == WORKER and (rest[0] == READY or sender in workers):
                service = rest[1] if rest[0] == READY else workers[sender][0]
                if rest[0] == READY:
                    print(f"[broker] a worker for {service.decode(errors='replace')!r}")
                workers[sender] = (service, now + HEARTBEAT_S * LIVENESS)  # a sign of life
                if rest[0] == REPLY:  # [REPLY, client, "", body]: pass it on
                    sock.send_multipart([rest[1], b"", CLIENT, service, rest[3]])
                if rest[0] in (READY, REPLY) and sender not in waiting[service]:
                    waiting[service].append(sender)  # free for the next request
            while waiting[service] and requests[service]:  # match workers and requests
                client, body = requests[service].pop(0)
                worker = waiting[service].pop(0)
                sock.send_multipart([worker, b"", WORKER, REQUEST, client, b"", body])
            # --8<-- [end:broker]
        if now >= next_heartbeat:
            for address, (service, expiry) in list(workers.items()):
                if expiry < now:  # silent too long: forget it
                    print(f"[broker] the {service!r} worker expired", flush=True)
                    del workers[address]
                    waiting[service] = [w for w in waiting[service] if w != address]
                elif address in waiting[service]:
                    sock.send_multipart([address, b"", WORKER, HEARTBEAT])
            next_heartbeat = now + HEARTBEAT_S


def run_worker(ctx: Context, port: int, service: bytes) -> None:
    with ctx.socket(zmq.DEALER) as sock:
        sock.connect(f"tcp://localhost:{port}")
        print(f"[worker {service.decode()}] DEALER connected to port {port}", flush=True)
        silent = LIVENESS  # so that the loop starts with READY
        # --8<-- [start:worker]
        while True:
            if silent >= LIVENESS:  # first time, or the broker went quiet: (re)register
                sock.send_multipart([b"", WORKER, READY, service])
                silent = 0
            ready = sock.poll(int(HEARTBEAT_S * 1000))
            silent = 0 if ready else silent + 1
            if ready:
                frames = sock.recv_multipart()  # ["", MDPW01, REQUEST, client, "", body]
                if len(frames) == 6 and frames[2] == REQUEST:
                    reply = SERVICES[service](frames[5])
                    sock.send_multipart([b"", WORKER, REPLY, frames[3], b"", reply])
                elif frames[2:] == [HEARTBEAT]:  # answer the broker's heartbeat with ours
                    sock.send_multipart([b"", WORKER, HEARTBEAT])
        # --8<-- [end:worker]


def run_client(ctx: Context, port: int, service: bytes, body: bytes) -> None:
    for _ in range(3):
        with ctx.socket(zmq.REQ) as sock:  # a fresh socket per try: Lazy Pirate
            sock.connect(f"tcp://localhost:{port}")
            sock.send_multipart([CLIENT, service, body])
            if sock.poll(TIMEOUT_MS):
                _, replied_by, reply = sock.recv_multipart()
                print(f"[client] {replied_by.decode()}: {reply.decode(errors='replace')}")
                return
    sys.exit(f"error: no {service.decode()!r} reply in 3 tries; broker up, with such a worker?")


def main() -> int:
    parser = argparse.ArgumentParser(description="Majordomo: a service-oriented broker")
    parser.add_argument("role", choices=["broker", "worker", "client"], help="what to run")
    parser.add_argument("service", nargs="?", default="echo", help="echo or upper (echo)")
    parser.add_argument("text", nargs="?", default="hello", help="client's request (hello)")
    parser.add_argument("--port", type=int, default=PORT, help="(%(default)s)")
    args = parser.parse_args()
    if args.role == "worker" and args.service.encode() not in SERVICES or not 0 < args.port < 65536:
        parser.error("the port must be in 1-65535; a worker offers echo or upper")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: the Ctrl-C path
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with "&"
    ctx: Context = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    ctx.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
    try:
        if args.role == "broker":
            run_broker(ctx, args.port)
        elif args.role == "worker":
            run_worker(ctx, args.port, args.service.encode())
        else:
            run_client(ctx, args.port, args.service.encode(), args.text.encode())
    except KeyboardInterrupt:
        print(f"[{args.role}] interrupted, exiting", flush=True)
    finally:
        ctx.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
