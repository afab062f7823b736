"""A raw DEALER that speaks the node agent's protocol by hand (WireClient), for tests.

It holds the authorized client key of a LocalAgents and sends JSON headers (and body frames)
exactly as written, so tests check what a client in any language would see
(docs/agent-protocol.md), including what no well-behaved client would send. Test code only.

    client = WireClient(ctx, agents)
    reply = client.request(run_header("r1", "echo hi"))
"""

from __future__ import annotations

import json
import time
from typing import Any, Final

import zmq
import zmq.auth

from cluster_runner_simulation.agent_protocol import PROTOCOL_VERSION
from cluster_runner_simulation.testing.agents import LocalAgents

REPLY_TIMEOUT_S: Final = 5.0
TERMINAL_TYPES: Final = {"exit", "error", "pong", "facts_reply", "file_end"}

Ctx = zmq.Context[zmq.Socket[bytes]]


class WireClient:
    """A raw DEALER holding the authorized client key, speaking the protocol by hand."""

    def __init__(
        self, ctx: Ctx, agents: LocalAgents, rcvhwm: int | None = None, index: int = 0
    ) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if rcvhwm is not None:
            self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        keys = agents.keys_dir
        server_public, _ = zmq.auth.load_certificate(str(keys / "agent.key"))
        public, secret = zmq.auth.load_certificate(str(keys / "client.key_secret"))
        assert server_public is not None and secret is not None
        self.sock.curve_serverkey = server_public
        self.sock.curve_publickey = public
        self.sock.curve_secretkey = secret
        self.sock.connect(f"tcp://127.0.0.1:{agents.agents[index].port}")

    def send(self, header: dict[str, Any], body: bytes | None = None) -> None:
        frames = [json.dumps(header).encode()]
        self.sock.send_multipart(frames if body is None else [*frames, body])

    def send_raw(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def receive(self, timeout: float = REPLY_TIMEOUT_S) -> tuple[dict[str, Any], bytes | None]:
        """The next message that is not a heartbeat: (header, body or None)."""
        deadline = time.monotonic() + timeout
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not self.sock.poll(left_ms):
                raise AssertionError(f"no reply within {timeout}s")
            frames = self.sock.recv_multipart()
            header = json.loads(frames[0])
            if header.get("type") != "heartbeat":
                return header, frames[1] if len(frames) > 1 else None

    def request(self, header: dict[str, Any], timeout: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
        """Send ``header`` and return the reply that ends it (exit, error, pong, ...)."""
        self.send(header)
        return self.until_end(timeout)

    def until_end(self, timeout: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
        """Skip replies up to the one that ends a request (exit, error, pong, ...)."""
        deadline = time.monotonic() + timeout
        while True:
            reply, _ = self.receive(max(0.01, deadline - time.monotonic()))
            if reply.get("type") in TERMINAL_TYPES:
                return reply

    def credit(self, nbytes: int) -> None:
        self.send({"v": PROTOCOL_VERSION, "type": "credit", "id": "", "bytes": nbytes})

    def close(self) -> None:
        self.sock.close(linger=0)


def header(msg_type: str, msg_id: str, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "type": msg_type, "id": msg_id, **fields}


def run_header(msg_id: str, command: str, **fields: Any) -> dict[str, Any]:
    return header("run", msg_id, command=command, **fields)
