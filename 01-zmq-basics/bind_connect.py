"""Lesson 6: bind and connect. Either side may do either; bind the one that stays put.

Binds     two PUSH "servers" on tcp://127.0.0.1:PORT and PORT+1 (PORT defaults to 5567)
Connects  one PULL "client" to both of them, before either is bound, and a second PULL

In plain TCP a server must listen before a client can connect. A ZeroMQ connect() to
an endpoint where nobody listens succeeds at once: the socket retries in the background
every RECONNECT_IVL ms, so the start order stops mattering, and it reconnects by itself
when a server restarts. One endpoint has one binder (a second bind fails), but any
number of sockets may connect to it, and one socket may bind or connect to many
endpoints. Rule of thumb: the side with a stable, known address binds (a broker, a
server); the side that comes and goes connects (workers, clients).

The steps run one after the other in one thread and print what happens:
    python 01-zmq-basics/bind_connect.py
Exits 0 when every step behaved as described above, 1 if one did not or a port is taken.
"""

import argparse
import sys
import time

import zmq

PORT = 5567
RECONNECT_IVL_MS = 100  # libzmq's default: how often a connecting socket tries again
TIMEOUT_MS = 5000  # no step may wait longer than this for a message


def step(number: int, text: str) -> None:
    print(f"{number}. {text}", flush=True)


def main() -> int:
    argparse.ArgumentParser(description="bind and connect, step by step (no options)").parse_args()
    ctx = zmq.Context()
    for option, value in ((zmq.LINGER, 0), (zmq.RCVTIMEO, TIMEOUT_MS), (zmq.SNDTIMEO, TIMEOUT_MS)):
        ctx.setsockopt(option, value)  # defaults for every socket made below
    ctx.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    endpoints = [f"tcp://127.0.0.1:{PORT}", f"tcp://127.0.0.1:{PORT + 1}"]
    client, other = ctx.socket(zmq.PULL), ctx.socket(zmq.PULL)
    servers = [ctx.socket(zmq.PUSH), ctx.socket(zmq.PUSH)]
    try:
        # --8<-- [start:connect-first]
        for endpoint in endpoints:
            client.connect(endpoint)  # nobody listens yet: no error, it retries meanwhile
        step(1, f"PULL connected to {' and '.join(endpoints)}; nobody is bound there yet")
        for server, endpoint in zip(servers, endpoints):
            server.bind(endpoint)
        for number in range(1, 3):
            for name, server in zip("AB", servers):
                server.send_string(f"{name}{number}")  # blocks until the PULL has connected
        got = [client.recv_string() for _ in range(4)]
        step(2, f"both PUSH bound later; the PULL got {sorted(got)}, fair-queued from both")
        # --8<-- [end:connect-first]
        # --8<-- [start:one-binder]
        try:
            ctx.socket(zmq.PUSH).bind(endpoints[0])
            return fail("a second bind on the same endpoint succeeded")
        except zmq.ZMQError as exc:
            step(3, f"a second bind on {endpoints[0]} fails: {exc.strerror}")
        other.connect(endpoints[0])  # but any number of sockets may connect to it
        time.sleep(0.3)  # let it connect, or PUSH would hand everything to the first PULL
        for number in range(1, 5):
            servers[0].send_string(f"A{number + 2}")
        first, second = [client.recv_string() for _ in "12"], [other.recv_string() for _ in "12"]
        step(4, f"a second PULL connected there too; PUSH round-robins: {first} and {second}")
        # --8<-- [end:one-binder]
        # --8<-- [start:restart]
        other.close()
        servers[0].close()  # the "server" goes away...
        step(5, "server A closed; the PULL keeps its connect() and retries every 100 ms")
        servers[0] = ctx.socket(zmq.PUSH)
        while True:  # ...and comes back; its old listener may linger for a moment
            try:
                servers[0].bind(endpoints[0])
                break
            except zmq.ZMQError:
                time.sleep(0.05)
        servers[0].send_string("A after the restart")
        step(
            6,
            f"server A bound again; without a new connect() the PULL got {client.recv_string()!r}",
        )
        # --8<-- [end:restart]
    except zmq.Again:
        return fail(f"nothing arrived within {TIMEOUT_MS} ms")
    except zmq.ZMQError as exc:
        return fail(f"{exc} (is another copy of this lesson running?)")
    finally:
        ctx.destroy()
    return 0


def fail(text: str) -> int:
    print(f"error: {text}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
