"""Week 3, exercise 3, a reference solution: a client that withholds credit, then grants it.

The agent's ROUTER cannot see how far behind one client is, so the protocol (version 2) has
a credit window: the agent sends at most 8 MiB of replies beyond what the client has
credited back (docs/agent-protocol.md, "Flow control"). This client asks for a lot of
output and reads for two seconds without granting any credit: the output stops at the
window, and the command blocks on its own write. Then it grants credit for every byte it
reads, and the rest flows.

Connects  DEALER to tcp://HOST:PORT (an agent started with --insecure: no keys, loopback)
Prints    "before credit: 8388608 bytes", then "after credit: 20000000 bytes, exit status 0"

    python 03-cluster-runner-simulation/zmq_node_agent.py serve --insecure --port 5580
    python docs/solutions/week3/stalled_client.py 127.0.0.1 5580
Check it: python 01-zmq-basics/labs.py check credit docs/solutions/week3/stalled_client.py
"""

import argparse
import sys
import time

import zmq

from cluster_runner_simulation.agent_protocol import CREDIT_BATCH_BYTES, REPLIES, Credit
from cluster_runner_simulation.agent_protocol import Exit, Output, RunRequest, encode

STALL_S = 2.0  # how long it reads without granting credit
DONE_TIMEOUT_S = 60.0


class Reader:
    """Counts output bytes, and the reply bytes (every frame) not credited back yet."""

    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self.sock = sock
        self.output = 0
        self.uncredited = 0
        self.exit: Exit | None = None

    def read(self, timeout_s: float) -> bool:
        """One reply, if one comes within ``timeout_s``."""
        if not self.sock.poll(int(timeout_s * 1000)):
            return False
        frames = self.sock.recv_multipart()
        self.uncredited += sum(len(frame) for frame in frames)  # the agent counts them all
        message, body = REPLIES.decode_frames(frames)
        if isinstance(message, Output) and body is not None:
            self.output += len(body)
        elif isinstance(message, Exit):
            self.exit = message
        return True

    def grant(self) -> None:
        self.sock.send_multipart(encode(Credit(nbytes=self.uncredited)))
        self.uncredited = 0


def main() -> int:
    parser = argparse.ArgumentParser(description="stall a node agent's output, then resume it")
    parser.add_argument("host", help="the agent's address")
    parser.add_argument("port", type=int, help="its port")
    parser.add_argument("--bytes", type=int, default=20_000_000, help="output to ask for")
    args = parser.parse_args()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)  # we bound our queue by credit, as the executor does
    sock.connect(f"tcp://{args.host}:{args.port}")
    reader = Reader(sock)
    try:
        sock.send_multipart(encode(RunRequest(id="big", command=f"head -c {args.bytes} /dev/zero")))
        deadline = time.monotonic() + STALL_S
        while (left := deadline - time.monotonic()) > 0:
            reader.read(left)
        print(f"before credit: {reader.output} bytes", flush=True)
        reader.grant()
        deadline = time.monotonic() + DONE_TIMEOUT_S
        while reader.exit is None and time.monotonic() < deadline:
            if reader.read(1.0) and reader.uncredited >= CREDIT_BATCH_BYTES:
                reader.grant()
    finally:
        sock.close()
        ctx.term()
    if reader.exit is None:
        print("error: no exit within 60 s", file=sys.stderr)
        return 1
    print(f"after credit: {reader.output} bytes, exit status {reader.exit.exit_status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
