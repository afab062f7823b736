"""Lesson 9: the ROUTER envelope, frame by frame.

Binds     ROUTER on tcp://127.0.0.1:* (any free port)
Connects  REQ "alice" (identity set), an anonymous REQ, and DEALER "bob"; one thread

A ROUTER talks to many peers over one socket. Every message it receives gets the
sender's identity pushed in front; every message it sends goes to the peer its first
frame names, and that frame is taken off on the way out. The identity is the one the
peer set with IDENTITY before connecting, or else 5 bytes that ROUTER makes up (first
byte 0). Identity, then the empty delimiter frame: that is the envelope. REQ adds the
delimiter when it sends and checks and strips it when it receives; DEALER adds and
strips nothing. A message to an unknown identity is dropped without a word, unless
ROUTER_MANDATORY is set: then send() fails with EHOSTUNREACH.

    python 01-zmq-basics/envelope.py
"""

import argparse
import sys
import time

import zmq

TIMEOUT_MS = 5000


def shown(frames: list[bytes]) -> str:
    """Frames as a list, with a made-up identity described instead of printed."""
    first = frames[0]
    if first[:1] == b"\x00" and len(first) == 5:
        return str([f"<{len(first)} bytes made up by ROUTER>", *frames[1:]])
    return str(frames)


def main() -> int:
    argparse.ArgumentParser(
        description="the ROUTER envelope, frame by frame (no options)"
    ).parse_args()
    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    ctx.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # report unroutable messages (step 3)
    router.bind("tcp://127.0.0.1:*")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    alice, anonymous, bob = ctx.socket(zmq.REQ), ctx.socket(zmq.REQ), ctx.socket(zmq.DEALER)
    alice.setsockopt(zmq.IDENTITY, b"alice")  # before connect(): it travels in the handshake
    bob.setsockopt(zmq.IDENTITY, b"bob")
    for peer in (alice, anonymous, bob):
        peer.connect(endpoint)
    # --8<-- [start:what-router-sees]
    print("1. what the ROUTER receives: the sender's identity, then what the sender sent")
    envelopes = []
    for peer, name in ((alice, b"alice"), (anonymous, b"nobody"), (bob, b"bob")):
        if peer is bob:
            peer.send_multipart([b"", b"hello from bob"])  # DEALER writes the delimiter itself
        else:
            peer.send(b"hello from " + name)  # REQ sends [b"", body]
        frames = router.recv_multipart()
        print(f"   {shown(frames)}")
        envelopes.append(frames[:-1])  # the identity and the delimiter: the way back
    # --8<-- [end:what-router-sees]
    # --8<-- [start:reply]
    for envelope, name in zip(envelopes, (b"alice", b"nobody", b"bob")):
        router.send_multipart(envelope + [b"reply to " + name])  # the envelope, then a body
    print("2. what each peer receives back: ROUTER took the identity off")
    print(f"   alice (REQ) gets {alice.recv_multipart()}: REQ took the delimiter off too")
    print(f"   the anonymous REQ gets {anonymous.recv_multipart()}")
    print(f"   bob (DEALER) gets {bob.recv_multipart()}: DEALER leaves the delimiter to you")
    # --8<-- [end:reply]
    # --8<-- [start:unroutable]
    try:
        router.send_multipart([b"carol", b"", b"anyone there?"])
        print("3. a message to an unknown identity was dropped without a word")
    except zmq.ZMQError as exc:  # zmq.EHOSTUNREACH, thanks to ROUTER_MANDATORY
        print(f"3. with ROUTER_MANDATORY, a message to 'carol' fails: {exc.strerror}")
    # --8<-- [end:unroutable]
    time.sleep(0.05)
    ctx.destroy()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except zmq.Again:
        sys.exit(f"error: no message within {TIMEOUT_MS} ms")
    except KeyboardInterrupt:
        sys.exit(130)
