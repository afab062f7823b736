"""Week 3, exercise 1, a reference solution: is my key authorized, and which key was refused?

The agent's CURVE handshake tells a refused client nothing: its ZAP handler answers "400",
libzmq closes the connection, and the client's socket (with ZMQ_IMMEDIATE) just never gets
a connection to send on. So the executor's ping fails with NodeUnreachable after its connect
timeout, exactly as for an agent that is down. What the operator can do is match keys: this
probe prints the fingerprint of the client key it used, and the agent's log names the same
fingerprint in its "denied handshake" line.

Connects  DEALER to tcp://HOST:PORT (the agent's ROUTER), CURVE with KEYS/agent.key and
          KEYS/client.key_secret
Prints    "authorized: ping 0.42 ms with client key SHA256:..." (exit 0), or
          "not authorized (or down): no answer to client key SHA256:... within 2 s" (exit 1)

    python docs/solutions/week3/probe.py 127.0.0.1 5580 /tmp/other-keys
Check it: python 01-zmq-basics/labs.py check unknown-key docs/solutions/week3/probe.py
"""

import argparse
import asyncio
import sys
from pathlib import Path

from cluster_patterns.curve import KeyFileError, fingerprint, load_public
from cluster_runner_simulation.protocols import NodeUnreachable
from cluster_runner_simulation.zmq_node_executor import ZmqNodeExecutor

CONNECT_TIMEOUT_S = 2.0  # a refused key and a dead agent look the same: silence


async def ping(host: str, port: int, keys: Path) -> float:
    executor = ZmqNodeExecutor.from_keys_dir(
        "probe", host, port, keys, connect_timeout=CONNECT_TIMEOUT_S
    )
    async with executor:
        return await executor.ping()


def main() -> int:
    parser = argparse.ArgumentParser(description="ping a node agent with a keys directory")
    parser.add_argument("host", help="the agent's address")
    parser.add_argument("port", type=int, help="its port (5580 by default)")
    parser.add_argument("keys", type=Path, help="a directory made by `keys generate`")
    args = parser.parse_args()
    try:
        ours = fingerprint(load_public(args.keys / "client.key"))
        seconds = asyncio.run(ping(args.host, args.port, args.keys))
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NodeUnreachable:
        print(
            f"not authorized (or down): no answer to client key {ours} within"
            f" {CONNECT_TIMEOUT_S:g} s; compare it with the agent's 'denied handshake' lines"
        )
        return 1
    print(f"authorized: ping {seconds * 1000:.2f} ms with client key {ours}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
