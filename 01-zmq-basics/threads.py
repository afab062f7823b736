"""Lesson 12: contexts and threads: inproc, PAIR signals, a multithreaded server.

Binds     step 1: PAIR on inproc://step2 and inproc://step3 (one per relay stage)
          step 2: ROUTER on tcp://127.0.0.1:* for clients, DEALER on inproc://workers
Connects  the PAIRs of the next stage; REP worker threads to inproc://workers; REQ clients

One context per process, shared by all its threads; it is thread-safe. Sockets are not:
each thread makes, uses and closes its own, and threads talk to each other through
sockets, not shared variables. inproc:// connects sockets of one context, in memory,
with no I/O thread and no TCP (a socket of another context cannot reach it). A PAIR
on inproc is the way to signal "I am ready" from one thread to the next. A server can
use threads as workers: a ROUTER faces the network, a DEALER faces the REP worker threads,
and zmq.proxy() between them spreads the requests. ctx.term() is the clean stop: every
blocked call in every thread raises ContextTerminated, and each thread closes its socket.

    python 01-zmq-basics/threads.py
"""

import argparse
import sys
import threading

import zmq

WORKERS = 3  # REP threads behind the proxy
CLIENTS = 6  # requests, each from its own REQ socket
Context = zmq.Context[zmq.Socket[bytes]]


# --8<-- [start:relay]
def stage(ctx: Context, number: int) -> None:
    """Stage N waits for N-1's signal (if any), then signals N+1 over a PAIR."""
    with ctx.socket(zmq.PAIR) as signal_out:
        signal_out.connect(f"inproc://step{number + 1}")
        if number > 1:
            with ctx.socket(zmq.PAIR) as signal_in:
                signal_in.bind(f"inproc://step{number}")
                threading.Thread(target=stage, args=(ctx, number - 1)).start()
                signal_in.recv()  # blocks until the stage before us is done
        print(f"1. stage {number} is ready, signalling stage {number + 1}", flush=True)
        signal_out.send(b"READY")


# --8<-- [end:relay]


# --8<-- [start:workers]
def worker(ctx: Context, number: int) -> None:
    with ctx.socket(zmq.REP) as sock:
        sock.connect("inproc://workers")
        try:
            while True:
                request = sock.recv()
                sock.send(request + b" answered by thread %d" % number)
        except zmq.ContextTerminated:
            pass  # ctx.term() in the main thread: time to close this socket and go


def serve(ctx: Context, frontend: zmq.Socket[bytes], backend: zmq.Socket[bytes]) -> None:
    try:
        zmq.proxy(frontend, backend)  # ROUTER <-> DEALER: requests out, replies back
    except zmq.ContextTerminated:
        frontend.close()
        backend.close()


# --8<-- [end:workers]


def main() -> int:
    argparse.ArgumentParser(description="inproc, PAIR, a threaded server (no options)").parse_args()
    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    with ctx.socket(zmq.PAIR) as done:
        done.bind("inproc://step4")
        threading.Thread(target=stage, args=(ctx, 3)).start()  # it starts 2, which starts 1
        done.recv()
    print("   the relay is done: stage 3 signalled the main thread")
    frontend, backend = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    frontend.bind("tcp://127.0.0.1:*")
    backend.bind("inproc://workers")  # inproc: bind before the workers connect (libzmq < 4)
    endpoint = frontend.getsockopt_string(zmq.LAST_ENDPOINT)
    threading.Thread(target=serve, args=(ctx, frontend, backend)).start()
    for number in range(1, WORKERS + 1):
        threading.Thread(target=worker, args=(ctx, number)).start()
    print(f"2. {WORKERS} worker threads behind ROUTER {endpoint} and DEALER inproc://workers")
    clients = [ctx.socket(zmq.REQ) for _ in range(CLIENTS)]
    for number, client in enumerate(clients, start=1):
        client.connect(endpoint)
        client.send(b"request %d" % number)
    answered_by = set()
    for client in clients:
        reply = client.recv()
        answered_by.add(reply.rsplit(b" ", 1)[1])
        print(f"   {reply.decode()}")
        client.close()
    other = zmq.Context()  # a second context: inproc endpoints of the first are not there
    with other.socket(zmq.REQ) as stranger:
        stranger.connect("inproc://workers")
        stranger.send(b"hello?")
        print(f"3. from another context, inproc://workers answers: {bool(stranger.poll(300))}")
    other.term()
    ctx.term()  # every thread blocked in a socket call gets ContextTerminated and closes
    print(f"   {len(answered_by)} of {WORKERS} threads answered; all threads have stopped")
    return 0 if len(answered_by) > 1 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
