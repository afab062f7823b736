"""Week 1, exercise 3, a reference solution: a REP server that is safe to retry against.

A Lazy Pirate client resends a request when the reply is late, so a slow server gets the
same request twice and does the work twice (labs.py retry shows it). Doing a request
twice must have the effect of doing it once: this server remembers the replies it sent,
by request id, and answers a repeated id from that memory instead of working again. The
lesson's client makes the ids unique ("<pid>-<number>"), so two clients never collide.
The memory is bounded: the oldest CACHE_SIZE-th reply is forgotten first.

Binds     REP on tcp://127.0.0.1:PORT (PORT defaults to 5555)
Frames    the lesson's: [request id, text] -> [request id, "echo: " + text]

    python docs/solutions/week1/idempotent_server.py server --work-ms 600    # Terminal 1
    python 01-zmq-basics/req_rep.py client localhost 5555 "pay 10" --timeout 400 --count 3
Check it: python 01-zmq-basics/labs.py check idempotent docs/solutions/week1/idempotent_server.py
"""

import argparse
import collections
import sys
import time

import zmq

PORT = 5555
CACHE_SIZE = 10_000  # replies remembered, newest last


def serve(sock: zmq.Socket[bytes], work_ms: int) -> None:
    done: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
    while True:
        frames = sock.recv_multipart()
        if len(frames) != 2:
            sock.send_multipart([b"?", b"error: expected [request id, text]"])
            continue
        request_id, text = frames
        if request_id in done:  # a resend: the work is done, only the reply got lost
            print(f"[server] resent request {request_id.decode(errors='replace')}: from memory")
            sock.send_multipart([request_id, done[request_id]])
            continue
        print(f"[server] request {request_id.decode(errors='replace')}: {text!r}", flush=True)
        time.sleep(work_ms / 1000)  # the work, done once per request id
        done[request_id] = b"echo: " + text
        if len(done) > CACHE_SIZE:
            done.popitem(last=False)
        sock.send_multipart([request_id, done[request_id]])


def main() -> int:
    parser = argparse.ArgumentParser(description="an echo server that answers resends once")
    parser.add_argument("role", choices=["server"], help="the only role here")
    parser.add_argument("--port", type=int, default=PORT, help="(%(default)s)")
    parser.add_argument("--work-ms", type=int, default=0, help="per request (%(default)s)")
    args = parser.parse_args()
    if args.work_ms < 0 or not 0 < args.port < 65536:
        parser.error("--work-ms must be at least 0 and the port in 1-65535")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    ctx.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
    sock = ctx.socket(zmq.REP)
    try:
        sock.bind(f"tcp://127.0.0.1:{args.port}")
        print(f"[server] REP bound to tcp://127.0.0.1:{args.port}; Ctrl-C stops it", flush=True)
        serve(sock, args.work_ms)
    except zmq.ZMQError as exc:
        print(f"error: {exc.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[server] interrupted, exiting")
    finally:
        ctx.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
