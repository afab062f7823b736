"""Lesson 7: multipart messages, delivered all or nothing.

Binds     PULL and PUB on tcp://127.0.0.1:* (any free port; last_endpoint says which)
Connects  two PUSH to the PULL, one SUB to the PUB; all in one thread

A ZeroMQ message is a list of frames, each a length and bytes (empty and binary frames
are fine). The sender marks every frame but the last with SNDMORE, and the receiver
asks RCVMORE whether another frame follows. Delivery is atomic: a peer receives all the
frames of a message or none of them, never a part, never interleaved with another
sender's frames. Nothing leaves until the last frame is sent. And when a queue is full
and PUB drops, it drops whole messages: what arrives is always complete.

    python 01-zmq-basics/multipart.py
Exits 0 when every message arrived whole, 1 otherwise.
"""

import argparse
import sys
import time

import zmq

FLOOD = 20_000  # three-frame messages pushed at a slow subscriber
HWM = 10  # a tiny queue, so that PUB has to drop
TIMEOUT_MS = 5000


def bound(sock: zmq.Socket[bytes]) -> tuple[zmq.Socket[bytes], str]:
    sock.bind("tcp://127.0.0.1:*")  # "*": the OS picks a free port
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def main() -> int:
    argparse.ArgumentParser(
        description="multipart messages, whole or not at all (no options)"
    ).parse_args()
    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    ctx.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)  # a missing frame is an error, not a hang
    sink, sink_endpoint = bound(ctx.socket(zmq.PULL))
    first, second = ctx.socket(zmq.PUSH), ctx.socket(zmq.PUSH)
    for sender in (first, second):
        sender.connect(sink_endpoint)
    time.sleep(0.2)  # both connected: PULL reads them in turn
    # --8<-- [start:frames]
    first.send(b"job-7", zmq.SNDMORE)  # frame 1, more to come: nothing leaves yet
    first.send(b"", zmq.SNDMORE)  # frame 2: empty frames are fine
    print(f"1. two frames sent with SNDMORE; the PULL sees a message: {bool(sink.poll(200))}")
    first.send(bytes([0, 255, 10]))  # frame 3, the last: now the whole message goes
    frames = [sink.recv()]
    while sink.getsockopt(zmq.RCVMORE):  # "is another frame of this message coming?"
        frames.append(sink.recv())
    print(f"2. the last frame sent; the PULL got all {len(frames)} at once: {frames}")
    # --8<-- [end:frames]
    # --8<-- [start:no-interleaving]
    for number in range(3):  # two senders, frame by frame, in lockstep
        for name, sender in ((b"first", first), (b"second", second)):
            sender.send_multipart([name, b"part 1 of %d" % number, b"part 2 of %d" % number])
    messages = [sink.recv_multipart() for _ in range(6)]
    mixed = [m for m in messages if len({m[1][-1:], m[2][-1:]}) != 1 or len(m) != 3]
    senders = sorted(m[0].decode() for m in messages)
    print(f"3. six messages from {senders}, each whole: {len(mixed)} mixed up")
    # --8<-- [end:no-interleaving]
    # --8<-- [start:drop-whole]
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    for sock in (pub, sub):  # small queues, set before bind or connect: they count only then
        sock.setsockopt(zmq.SNDHWM if sock is pub else zmq.RCVHWM, HWM)
        sock.setsockopt(zmq.SNDBUF if sock is pub else zmq.RCVBUF, 4096)  # the kernel's
    pub, pub_endpoint = bound(pub)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pub_endpoint)
    time.sleep(0.2)  # the subscription must arrive first (the slow joiner)
    for number in range(FLOOD):  # far faster than anyone reads: PUB drops what does not fit
        pub.send_multipart([b"%d" % number, b"header", b"body %d" % number])
    received = broken = 0
    while sub.poll(500):  # until half a second of silence
        message = sub.recv_multipart()
        received += 1
        broken += len(message) != 3 or message[2] != b"body " + message[0]
    print(f"4. PUB flooded {FLOOD} messages past an HWM of {HWM}: {received} arrived,", end=" ")
    print(f"{FLOOD - received} were dropped, and {broken} arrived incomplete")
    # --8<-- [end:drop-whole]
    ctx.destroy()
    return 0 if frames == [b"job-7", b"", b"\x00\xff\n"] and not mixed and not broken else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except zmq.Again:
        sys.exit(f"error: no message within {TIMEOUT_MS} ms")
    except KeyboardInterrupt:
        sys.exit(130)
