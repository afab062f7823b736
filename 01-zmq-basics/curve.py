"""Lesson 13: CURVE security, the Ironhouse pattern: encryption plus an allow-list.

Binds     a CURVE REP server on tcp://127.0.0.1:*, the ZAP handler's REP on
          inproc://zeromq.zap.01, and a second REP server set up in the wrong order
Connects  REQ clients: alice (on the allow-list), mallory (not on it), eve (no CURVE)

Plain ZeroMQ sends frames in the clear and accepts anyone. With CURVE, every socket has
a key pair; a client must know the server's public key, the handshake proves that the
server holds the matching secret key, and every frame is encrypted. Who may connect is
decided by a ZAP handler: for each client's handshake, libzmq sends a request to the REP
socket bound on inproc://zeromq.zap.01 in the server's context, with the mechanism and
the client's public key, and the handler answers 200 (welcome) or 400 (refused).
Options apply to bind() and connect() calls made after they are set: CURVE_SERVER must
come before bind(), or that endpoint stays plain text. The week-3 node agent and journal
use this pattern, with pyzmq's zmq.auth as their ZAP handler.

    python 01-zmq-basics/curve.py
Exits 0 when the servers let in exactly whom this text says, 1 otherwise.
"""

import argparse
import queue
import sys
import threading

import zmq
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

WAIT_MS = 1000  # a refused client hears nothing; this is how long it listens
Context = zmq.Context[zmq.Socket[bytes]]
KeyPair = tuple[bytes, bytes]  # (public, secret), 40 characters of Z85 text each


# --8<-- [start:zap]
def zap_handler(ctx: Context, allowed: dict[bytes, str]) -> None:
    """Answer libzmq's authentication requests: only the public keys in `allowed` get in."""
    with ctx.socket(zmq.REP) as zap:
        zap.bind("inproc://zeromq.zap.01")  # the address libzmq asks, in this context
        try:
            while True:
                version, request_id, _domain, _address, _id, mechanism, *credentials = (
                    zap.recv_multipart()
                )
                key = z85.encode(credentials[0]) if credentials else b""  # 32 bytes, as text
                ok = mechanism == b"CURVE" and key in allowed
                status = [b"200", b"OK"] if ok else [b"400", b"not on the allow-list"]
                whose = f"{allowed[key]}'s key" if ok else "a key not on the list"
                print(f"   ZAP: {mechanism.decode()}, {whose} -> {status[0].decode()}")
                zap.send_multipart([version, request_id, *status, b"", b""])  # user id, metadata
        except zmq.ContextTerminated:
            pass


# --8<-- [end:zap]


def make_curve_server(server: zmq.Socket[bytes], keys: KeyPair) -> None:
    server.curve_publickey, server.curve_secretkey = keys
    server.curve_server = True


def serve(
    ctx: Context, keys: KeyPair, in_order: bool, bound: "queue.Queue[tuple[bool, str]]"
) -> None:
    with ctx.socket(zmq.REP) as server:
        # --8<-- [start:server]
        if in_order:  # keys and CURVE_SERVER first, then bind()
            make_curve_server(server, keys)
        server.bind("tcp://127.0.0.1:*")  # the listener copies the options set until now
        if not in_order:  # too late: this endpoint stays plain text
            make_curve_server(server, keys)
        # --8<-- [end:server]
        bound.put((in_order, server.getsockopt_string(zmq.LAST_ENDPOINT)))
        try:
            while True:
                server.send(b"welcome, " + server.recv().split()[-1])
        except zmq.ContextTerminated:
            pass


def ask(ctx: Context, name: str, endpoint: str, keys: KeyPair | None, server_key: bytes) -> bool:
    """One request from client `name`; True if it got a reply."""
    with ctx.socket(zmq.REQ) as client:
        # --8<-- [start:client]
        if keys:  # a CURVE client: its own key pair, and the server's public key
            client.curve_publickey, client.curve_secretkey = keys
            client.curve_serverkey = server_key
        # --8<-- [end:client]
        monitor = client.get_monitor_socket()
        client.connect(endpoint)
        client.send(b"hello from " + name.encode())
        answered = bool(client.poll(WAIT_MS))
        events = []
        while monitor.poll(0):
            events.append(str(zmq.Event(recv_monitor_message(monitor)["event"]).name))
        failed = [event for event in events if "FAILED" in event]
        print(f"   {name}: {client.recv()!r}" if answered else f"   {name}: no reply, {failed}")
        client.disable_monitor()
        monitor.close()
        return answered


def main() -> int:
    argparse.ArgumentParser(description="CURVE and a ZAP allow-list (no options)").parse_args()
    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    server_keys, alice, mallory = zmq.curve_keypair(), zmq.curve_keypair(), zmq.curve_keypair()
    threading.Thread(target=zap_handler, args=(ctx, {alice[0]: "alice"})).start()
    endpoints: "queue.Queue[tuple[bool, str]]" = queue.Queue()
    for in_order in (True, False):
        threading.Thread(target=serve, args=(ctx, server_keys, in_order, endpoints)).start()
    secure, careless = [endpoint for _, endpoint in sorted([endpoints.get(), endpoints.get()])][
        ::-1
    ]
    print(f"1. CURVE server (CURVE_SERVER set before bind) on {secure}:")
    got_in = [
        ask(ctx, name, secure, keys, server_keys[0])
        for name, keys in (("alice", alice), ("mallory", mallory), ("eve", None))
    ]
    print(f"2. a server that set CURVE_SERVER after bind(), on {careless}:")
    eve_got_in = ask(ctx, "eve", careless, None, server_keys[0])
    ctx.term()  # the server and ZAP threads get ContextTerminated and close their sockets
    return 0 if got_in == [True, False, False] and eve_got_in else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
