"""Binary Star (Guide ch. 4): a primary and a backup server, and clients that fail over.

Binds     primary  ROUTER for clients on tcp://127.0.0.1:PORT, PUB for its state on PORT+2
          backup   ROUTER for clients on PORT+1, PUB on PORT+3              (PORT: 5606)
Connects  each server SUB to the other's PUB;  client  REQ to PORT, to PORT+1 after a timeout
Frames    server -> server  [state number] every HEARTBEAT_S;  client <-> server  [sequence, text]

Two servers, one active at a time. Each publishes its state (PRIMARY, BACKUP, ACTIVE,
PASSIVE) to the other, and a small table says how the peer's state changes one's own:
the primary ends up serving, the backup PASSIVE. When the primary falls silent, the
backup does not take over by itself but when a client turns up: a client that gave up
on the primary proves that the primary is gone for the clients too. So a cut between
the servers alone cannot make both active (split brain). Clients are Lazy Pirates that
switch server after each timeout. A returning primary sees an ACTIVE backup: PASSIVE.

    # Terminal 1 and Terminal 2 (each blocks until Ctrl-C)
    python 02-cluster-patterns/reliability/binary_star.py primary
    python 02-cluster-patterns/reliability/binary_star.py backup
    # Terminal 3; then stop the primary (Ctrl-C in Terminal 1) and watch the failover
    python 02-cluster-patterns/reliability/binary_star.py client --count 20
Experiment (kill the primary mid-run, then restart it): python 01-zmq-basics/labs.py binary-star
"""

import argparse
import signal
import sys
import time

import zmq

PORT = 5606  # primary's clients; PORT+1 the backup's; PORT+2, PORT+3 their state PUBs
HEARTBEAT_S = 0.5  # each server publishes its state this often
PEER_TIMEOUT_S = 2 * HEARTBEAT_S  # silence after which the peer counts as gone
TIMEOUT_MS = 2000  # the client's patience per try, longer than PEER_TIMEOUT_S
TRIES = 6  # per request, alternating between the servers, before the client gives up
STATES = ["PRIMARY", "BACKUP", "ACTIVE", "PASSIVE"]  # sent as 1..4
# --8<-- [start:table]
ON_PEER = {  # (my state, the peer's state) -> my new state
    ("PRIMARY", "BACKUP"): "ACTIVE",  # we both started: the primary serves
    ("PRIMARY", "ACTIVE"): "PASSIVE",  # the backup took over while we were away
    ("BACKUP", "ACTIVE"): "PASSIVE",  # the primary serves: stand by
    ("PASSIVE", "PRIMARY"): "ACTIVE",  # the peer restarted: keep serving, it will stand by
    ("PASSIVE", "BACKUP"): "ACTIVE",
    ("ACTIVE", "ACTIVE"): "FATAL",  # two actives: split brain
    ("PASSIVE", "PASSIVE"): "FATAL",  # two passives: nobody serves
}
# --8<-- [end:table]
Context = zmq.Context[zmq.Socket[bytes]]


# --8<-- [start:client-request]
def may_serve(state: str, peer_gone: bool) -> str | None:
    """The state after a client request, or None if this server must not answer it."""
    if state == "ACTIVE" or state in ("PRIMARY", "PASSIVE") and peer_gone:
        return "ACTIVE"  # active already, or the client's visit proves that the peer is gone
    return None  # the backup at start-up, or a passive server whose peer is still alive


# --8<-- [end:client-request]


def run_server(ctx: Context, role: str, port: int) -> None:
    other, mine = ("backup", port) if role == "primary" else ("primary", port + 1)
    frontend, state_out, state_in = (ctx.socket(t) for t in (zmq.ROUTER, zmq.PUB, zmq.SUB))
    try:
        frontend.bind(f"tcp://127.0.0.1:{mine}")
        state_out.bind(f"tcp://127.0.0.1:{mine + 2}")
    except zmq.ZMQError as exc:
        sys.exit(f"error: cannot bind port {mine} or {mine + 2}: {exc.strerror}")
    state_in.connect(f"tcp://localhost:{port + 2 if other == 'primary' else port + 3}")
    state_in.setsockopt(zmq.SUBSCRIBE, b"")
    state, peer_expiry, next_heartbeat = role.upper(), time.monotonic() + PEER_TIMEOUT_S, 0.0
    print(f"[{role}] {state}: clients on port {mine}", flush=True)
    poller = zmq.Poller()
    poller.register(frontend, zmq.POLLIN)
    poller.register(state_in, zmq.POLLIN)
    while True:
        ready = dict(poller.poll(int(HEARTBEAT_S * 1000)))
        now, before = time.monotonic(), state
        if state_in in ready:  # the peer's state: a heartbeat and an event at once
            frame = state_in.recv()
            if frame.isdigit() and 1 <= int(frame) <= len(STATES):
                peer_expiry = now + PEER_TIMEOUT_S
                state = ON_PEER.get((state, STATES[int(frame) - 1]), state)
                if state == "FATAL":
                    sys.exit(f"error: {role} and {other} are both {before}: fix and restart")
        if frontend in ready:
            request = frontend.recv_multipart()  # [client, "", sequence, text]
            if (served := may_serve(state, peer_gone=now >= peer_expiry)) and len(request) == 4:
                state = served
                frontend.send_multipart(request[:3] + [request[3] + f" by {role}".encode()])
        if state != before:
            print(f"[{role}] {before} -> {state}", flush=True)
        if now >= next_heartbeat:
            state_out.send(b"%d" % (STATES.index(state) + 1))
            next_heartbeat = now + HEARTBEAT_S


# --8<-- [start:client]
def run_client(ctx: Context, port: int, count: int) -> None:
    servers, current = ["primary", "backup"], 0  # at port and port + 1
    sock = ctx.socket(zmq.REQ)
    sock.connect(f"tcp://localhost:{port}")
    for number in range(1, count + 1):
        for _ in range(TRIES):
            sock.send_multipart([b"%d" % number, b"request %d" % number])
            if sock.poll(TIMEOUT_MS):
                print(f"[client] {sock.recv_multipart()[-1].decode(errors='replace')}")
                break
            current = 1 - current  # no reply: the other server, on a fresh socket
            print(f"[client] no reply; trying the {servers[current]}", flush=True)
            sock.close()
            sock = ctx.socket(zmq.REQ)
            sock.connect(f"tcp://localhost:{port + current}")
        else:
            sys.exit(f"error: neither server answered request {number} in {TRIES} tries")
        time.sleep(0.1)  # a request every 100 ms, so a failover happens mid-run
    sock.close()


# --8<-- [end:client]


def main() -> int:
    parser = argparse.ArgumentParser(description="Binary Star: primary, backup and client")
    parser.add_argument("role", choices=["primary", "backup", "client"], help="what to run")
    parser.add_argument("--count", type=int, default=20, help="client requests (%(default)s)")
    parser.add_argument("--port", type=int, default=PORT, help="..PORT+3 (%(default)s)")
    args = parser.parse_args()
    if not 1 <= args.port <= 65532 or args.count < 1:
        parser.error("PORT must be in 1-65532 (PORT+3 is used too), --count at least 1")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: the Ctrl-C path
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with "&"
    ctx: Context = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    ctx.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
    try:
        if args.role == "client":
            run_client(ctx, args.port, args.count)
        else:
            run_server(ctx, args.role, args.port)
    except KeyboardInterrupt:
        print(f"[{args.role}] interrupted, exiting", flush=True)
    finally:
        ctx.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
