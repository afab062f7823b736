"""Week 1, exercise 1, a reference solution: a ventilator that counts its workers.

The lesson's ventilator (01-zmq-basics/push_pull.py) waits for one worker and then sleeps
--settle-ms, hoping the others connect meanwhile. This one watches its PUSH socket with a
monitor and sends only once --workers ZMTP handshakes have completed. EVENT_ACCEPTED would
fire earlier, when the TCP connection is accepted but before the handshake: PUSH cannot
deliver to that peer yet, so counting it could still hand the batch to too few workers.

Binds     PUSH on tcp://127.0.0.1:PORT (tasks); connects PUSH to the sink on PORT+1
Speaks    the lesson's frames: [batch, n] to the sink, [batch, task, ms] to the workers

    python 01-zmq-basics/push_pull.py sink                     # Terminal 1 (blocks)
    python 01-zmq-basics/push_pull.py worker 1 &               # Terminal 2
    python docs/solutions/week1/handshake_ventilator.py ventilator 30 --workers 3
    python 01-zmq-basics/push_pull.py worker 2 &               # ...it waits until
    python 01-zmq-basics/push_pull.py worker 3 &               # the third one is in
Check it: python 01-zmq-basics/labs.py check handshake docs/solutions/week1/handshake_ventilator.py
"""

import argparse
import random
import sys
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

PORT = 5557
WAIT_S = 30  # how long to wait for the sink and for all the workers
DELIVERY_LINGER_MS = 5000


def wait_for_workers(tasks: zmq.Socket[bytes], wanted: int) -> None:
    """Block until `wanted` peers have completed the handshake with `tasks`."""
    events = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
    monitor = tasks.get_monitor_socket(events)
    connected, deadline = 0, time.monotonic() + WAIT_S
    while connected < wanted:
        if not monitor.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            sys.exit(f"error: {connected} of {wanted} workers connected in {WAIT_S} s")
        event = recv_monitor_message(monitor)["event"]
        connected += 1 if event == zmq.EVENT_HANDSHAKE_SUCCEEDED else -1  # one left: uncount
        print(f"[ventilator] {connected} of {wanted} workers connected", flush=True)
    tasks.disable_monitor()
    monitor.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="a ventilator that waits for N workers")
    roles = parser.add_subparsers(dest="role", required=True)
    vent = roles.add_parser("ventilator", help="send one batch once --workers are connected")
    vent.add_argument("tasks", type=int, help="how many tasks, at least 1")
    vent.add_argument("--workers", type=int, default=2, help="workers to wait for (%(default)s)")
    vent.add_argument("--max-work-ms", type=int, default=100, help="(%(default)s)")
    vent.add_argument("--port", type=int, default=PORT, help="PORT+1 is the sink (%(default)s)")
    vent.add_argument("--host", default="localhost", help="the sink's host (%(default)s)")
    args = parser.parse_args()
    if min(args.tasks, args.workers) < 1 or args.max_work_ms < 0 or not 0 < args.port < 65535:
        parser.error("TASKS and --workers must be at least 1, --max-work-ms at least 0")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    tasks, sink = ctx.socket(zmq.PUSH), ctx.socket(zmq.PUSH)
    try:
        for sock in (tasks, sink):
            sock.setsockopt(zmq.LINGER, DELIVERY_LINGER_MS)
        sink.setsockopt(zmq.IMMEDIATE, 1)
        sink.connect(f"tcp://{args.host}:{args.port + 1}")
        tasks.bind(f"tcp://127.0.0.1:{args.port}")
        if not sink.poll(WAIT_S * 1000, zmq.POLLOUT):
            sys.exit(f"error: no sink on port {args.port + 1} after {WAIT_S} s")
        wait_for_workers(tasks, args.workers)
        batch = str(random.randrange(1000, 10000)).encode()
        sink.send_multipart([batch, str(args.tasks).encode()])
        for task in range(1, args.tasks + 1):
            work_ms = random.randint(min(1, args.max_work_ms), args.max_work_ms)
            tasks.send_multipart([batch, str(task).encode(), str(work_ms).encode()])
        print(f"[ventilator] sent {args.tasks} tasks in batch {batch.decode()}", flush=True)
    except zmq.ZMQError as exc:
        sys.exit(f"error: {exc.strerror}")
    except KeyboardInterrupt:
        ctx.destroy(linger=0)
        return 130
    finally:
        ctx.destroy()  # waits up to DELIVERY_LINGER_MS for the queued tasks to leave
    return 0


if __name__ == "__main__":
    sys.exit(main())
