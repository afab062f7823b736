"""Week 2, exercise 1, a reference solution: follow the status channel and print its verdicts.

The coordinator publishes on its XPUB (port 5571) a STATUS snapshot every heartbeat
interval and a NODE_EVENT whenever a worker changes state. This SUB prints one line per
NODE_EVENT, as the coordinator logs it, and when it stops (Ctrl-C or SIGTERM) the
``duplicates`` total of the last STATUS: results that arrived for tasks already recorded,
which the coordinator counted and dropped.

Connects SUB to tcp://HOST:5571 (subscribes to everything: the coordinator sends no topics)
Prints    "w3 joined", "w3 suspect", "w3 dead after 1.52 s of silence",
          "w3 alive (recovered after 1.74 s)", "w3 left"; at the end "duplicates N"

    python docs/solutions/week2/node_events.py                 # Terminal 5, after the cluster
Check it: python 01-zmq-basics/labs.py check freeze docs/solutions/week2/node_events.py
"""

import argparse
import signal
import sys
from types import FrameType

import zmq

from cluster_patterns.protocol import NodeEvent, ProtocolError, Status, decode

STATUS_PORT = 5571
POLL_MS = 200  # how often the loop looks up to see whether it was told to stop


def line(event: NodeEvent) -> str:
    if event.detection_latency_s is not None:
        return f"{event.node_id} {event.event} after {event.detection_latency_s:.2f} s of silence"
    if event.recovery_s is not None:
        return f"{event.node_id} {event.event} (recovered after {event.recovery_s:.2f} s)"
    return f"{event.node_id} {event.event}"


def follow(sock: zmq.Socket[bytes], stopping: list[bool]) -> int:
    """Print every NODE_EVENT until told to stop; the last STATUS's duplicates total."""
    duplicates = 0
    while not stopping:
        if not sock.poll(POLL_MS):
            continue
        try:
            message = decode(sock.recv())
        except ProtocolError as exc:  # a newer coordinator's message, or garbage: skip it
            print(f"skipped a frame: {exc}", file=sys.stderr)
            continue
        if isinstance(message, NodeEvent):
            print(line(message), flush=True)
        elif isinstance(message, Status):
            duplicates = message.totals.duplicates
    return duplicates


def main() -> int:
    parser = argparse.ArgumentParser(description="print the coordinator's node events")
    parser.add_argument("--coordinator", default="127.0.0.1", help="host (127.0.0.1)")
    parser.add_argument("--status-port", type=int, default=STATUS_PORT, help="port (5571)")
    args = parser.parse_args()
    stopping: list[bool] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(True)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")  # before connect: no message slips by unsubscribed
    endpoint = f"tcp://{args.coordinator}:{args.status_port}"
    sock.connect(endpoint)
    print(f"following {endpoint}", flush=True)
    try:
        duplicates = follow(sock, stopping)
    finally:
        sock.close()
        ctx.term()
    print(f"duplicates {duplicates}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
