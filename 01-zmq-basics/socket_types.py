"""Lesson 11: which socket types can talk to which, found by trying every pair.

Binds     one socket of each type in turn on tcp://127.0.0.1:* (any free port)
Connects  one socket of each type to it, and watches the handshake with a monitor

Peers exchange their socket types in the ZMTP handshake, and a pair that makes no sense
(PUSH to SUB, REQ to REQ) is refused: no error reaches your code, the connection simply
never carries a message. So a wrong pairing looks like a peer that says nothing. The
valid pairs (Guide ch. 2): PUB-SUB, REQ-REP, REQ-ROUTER, DEALER-REP, DEALER-ROUTER,
DEALER-DEALER, ROUTER-ROUTER, PUSH-PULL, PAIR-PAIR, and XPUB/XSUB wherever PUB/SUB fit.
Which side binds does not matter to the check, so the table comes out symmetric.

    python 01-zmq-basics/socket_types.py
Exits 0 when the table matches the Guide's list, 1 otherwise.
"""

import argparse
import sys

import zmq
from zmq.utils.monitor import recv_monitor_message

TYPES = ["PAIR", "PUB", "SUB", "REQ", "REP", "DEALER", "ROUTER", "PULL", "PUSH", "XPUB", "XSUB"]
VALID = {
    frozenset(pair.split("-"))
    for pair in "PUB-SUB PUB-XSUB XPUB-SUB XPUB-XSUB REQ-REP REQ-ROUTER DEALER-REP "
    "DEALER-ROUTER DEALER-DEALER ROUTER-ROUTER PUSH-PULL PAIR-PAIR".split()
}
WAIT_MS = 2000  # a handshake on loopback takes well under a millisecond


# --8<-- [start:handshake]
def handshake_ok(ctx: zmq.Context[zmq.Socket[bytes]], binder: str, connecter: str) -> bool:
    """Does a `connecter` socket complete the handshake with a `binder` socket?"""
    with ctx.socket(getattr(zmq, binder)) as server, ctx.socket(getattr(zmq, connecter)) as client:
        server.bind("tcp://127.0.0.1:*")
        events = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED  # refused: cut off
        with client.get_monitor_socket(events) as monitor:
            client.connect(server.getsockopt_string(zmq.LAST_ENDPOINT))
            if not monitor.poll(WAIT_MS):
                raise SystemExit(f"error: no handshake event for {binder}-{connecter}")
            event = recv_monitor_message(monitor)["event"]
            client.disable_monitor()
        return bool(event == zmq.EVENT_HANDSHAKE_SUCCEEDED)


# --8<-- [end:handshake]


def main() -> int:
    argparse.ArgumentParser(
        description="which socket types can talk to which (no options)"
    ).parse_args()
    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    print("bind \\ connect " + " ".join(name.ljust(6) for name in TYPES))
    wrong = []
    for binder in TYPES:
        cells = []
        for connecter in TYPES:
            ok = handshake_ok(ctx, binder, connecter)
            cells.append(("ok" if ok else ".").ljust(6))
            if ok != (frozenset((binder, connecter)) in VALID):
                wrong.append(f"{binder}-{connecter}")
        print(f"{binder:<14} " + " ".join(cells))
    ctx.term()
    if wrong:
        print(f"error: these pairs disagree with the Guide: {', '.join(wrong)}", file=sys.stderr)
        return 1
    print("every pair agrees with the Guide's list of valid socket combinations")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
