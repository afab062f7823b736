"""Wire-level worker emulation for the scale benchmark: N workers' heartbeats from one process.

Beyond a few hundred real worker processes a 2-core machine measures its own saturation (each
idle worker process costs about a percent of a core), not the coordinator. This process
speaks the workers' side of the protocol for N ids at once: one DEALER per id, with the
routing id a worker uses, REGISTER once, then a HEARTBEAT per id every interval, spread
evenly over the interval as independent workers are; it reads and drops what the
coordinator sends (WELCOME, COORDINATOR_HEARTBEAT, REFUSED, which it counts). It runs no
tasks: what it loads the coordinator with is heartbeats alone.

    python -m cluster_simulator.scale_emulate --port 5570 --workers 1000 --seconds 20

It runs for --seconds or until SIGTERM, and then prints one JSON line: {"workers": N,
"sent": ..., "refused": ..., "late": ..., "max_lag_ms": ...} ("late": heartbeats sent more
than a tenth of an interval behind their schedule; a lag beyond interval * liveness would
make the coordinator right to call them dead).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from typing import Final

import zmq

from cluster_patterns import defaults
from cluster_patterns.cli_args import port_number, positive_float, positive_int
from cluster_patterns.protocol import Heartbeat, Refused, Register, decode, encode
from cluster_patterns.tasks import CAPABILITIES
from cluster_patterns.transport import configure, endpoint, queued_messages

SOCKETS_SPARE: Final = 64
CAPACITY: Final = 8


def emulate(
    port: int, workers: int, seconds: float, interval: float, prefix: str
) -> dict[str, int]:
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, workers + SOCKETS_SPARE)  # a context option, before any socket
    ids = [f"{prefix}{index:05d}" for index in range(workers)]
    sockets = []
    for worker_id in ids:
        routing_id = f"worker:{worker_id}:{uuid.uuid4().hex[:8]}".encode()
        sock = configure(ctx.socket(zmq.DEALER), routing_id=routing_id)
        sock.connect(endpoint(defaults.LOOPBACK, port))
        register = Register(
            worker_id=worker_id, capacity=CAPACITY, capabilities=list(CAPABILITIES), pid=os.getpid()
        )
        sock.send(encode(register))
        sockets.append(sock)
    poller = zmq.Poller()
    for sock in sockets:
        poller.register(sock, zmq.POLLIN)
    counts = {"workers": workers, "sent": 0, "refused": 0, "late": 0, "max_lag_ms": 0}
    started = time.monotonic()
    step = interval / workers
    slot = 0  # the next heartbeat due: worker slot % workers, at started + slot * step
    # An idle worker's heartbeat never changes: encode each once, so that the loop that has to
    # keep to the schedule only sends.
    beats = [
        encode(
            Heartbeat(
                worker_id=worker_id,
                in_flight=0,
                running=[],
                cpu_percent=0.0,
                memory_percent=0.0,
                load1=0.0,
            )
        )
        for worker_id in ids
    ]
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    try:
        while time.monotonic() - started < seconds and not stopping:
            due = started + slot * step
            now = time.monotonic()
            if now >= due:
                index = slot % workers
                try:
                    sockets[index].send(beats[index], zmq.NOBLOCK)
                    counts["sent"] += 1
                except zmq.Again:
                    pass
                counts["late"] += now - due > interval / 10
                counts["max_lag_ms"] = max(counts["max_lag_ms"], int((now - due) * 1000))
                slot += 1
                continue
            for sock, _ in poller.poll(max(0, int((due - now) * 1000))):
                drain(sock, counts)
    finally:
        for sock in sockets:
            sock.close(linger=0)
        ctx.term()
    return counts


def drain(sock: zmq.Socket[bytes], counts: dict[str, int]) -> None:
    for _, message in queued_messages(sock, decode):
        counts["refused"] += isinstance(message, Refused)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Heartbeats of N emulated workers from one process (scale benchmark).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--port", type=port_number, required=True, help="coordinator port")
    parser.add_argument("--workers", type=positive_int, required=True, help="how many ids")
    parser.add_argument("--seconds", type=positive_float, default=20.0, help="how long")
    parser.add_argument(
        "--heartbeat-interval",
        type=positive_float,
        default=defaults.HEARTBEAT_INTERVAL_S,
        help="seconds between one id's heartbeats",
    )
    parser.add_argument("--prefix", default="e", help="ids are PREFIX00000, PREFIX00001, ...")
    args = parser.parse_args(argv)
    try:
        counts = emulate(
            args.port, args.workers, args.seconds, args.heartbeat_interval, args.prefix
        )
    except KeyboardInterrupt:
        return 130
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
