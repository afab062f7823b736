"""Security of the ZeroMQ node agent, proven against a real agent subprocess.

* clients with an unknown key, the NULL mechanism or PLAIN never run anything
  (a marker file that the command would create never appears);
* garbage, truncated and oversized frames leave the agent serving;
* request types outside the allow-list are unreachable;
* a secret key readable by others is refused; --insecure warns and binds loopback only.
"""

from __future__ import annotations

import json
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from cluster_runner_simulation.agent_keys import write_keypair
from cluster_runner_simulation.agent_protocol import (
    MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    REPLY_TYPES,
    RunRequest,
    encode,
)
from cluster_runner_simulation.testing import LocalAgents
from cluster_runner_simulation.protocols import NodeUnreachable
from cluster_runner_simulation.agent_service import NodeAgent
from cluster_runner_simulation.zmq_node_executor import ZmqNodeExecutor

AGENT = "03-cluster-runner-simulation/zmq_node_agent.py"
SETTLE_S = 1.5  # long enough for a handshake and a command, had they been allowed
REPLY_TIMEOUT_MS = 5000


@pytest.fixture(scope="module")
def agents() -> Iterator[LocalAgents]:
    with LocalAgents(1) as started:
        yield started


def endpoint(agents: LocalAgents) -> str:
    return f"tcp://127.0.0.1:{agents.agents[0].port}"


def touch_request(marker: Path) -> list[bytes]:
    return encode(RunRequest(id="attack-1", command=f"touch {marker}"))


def raw_dealer(ctx: zmq.Context[zmq.Socket[bytes]], agents: LocalAgents) -> zmq.Socket[bytes]:
    """A DEALER holding the authorized client key: the agent's legitimate peer."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, REPLY_TIMEOUT_MS)
    keys = agents.keys_dir
    server_public, _ = zmq.auth.load_certificate(str(keys / "agent.key"))
    public, secret = zmq.auth.load_certificate(str(keys / "client.key_secret"))
    assert server_public is not None and secret is not None
    sock.curve_serverkey = server_public
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.connect(endpoint(agents))
    return sock


def reply_header(sock: zmq.Socket[bytes]) -> dict[str, object]:
    header = json.loads(sock.recv_multipart()[0])
    assert isinstance(header, dict)
    return header


def ping_ok(ctx: zmq.Context[zmq.Socket[bytes]], agents: LocalAgents) -> bool:
    sock = raw_dealer(ctx, agents)
    try:
        sock.send(json.dumps({"v": PROTOCOL_VERSION, "type": "ping", "id": "alive"}).encode())
        return reply_header(sock)["type"] == "pong"
    finally:
        sock.close()


# --- Who may run commands ---------------------------------------------------------------------


def test_authorized_client_can_run(
    ctx: zmq.Context[zmq.Socket[bytes]], agents: LocalAgents, tmp_path: Path
) -> None:
    marker = tmp_path / "allowed"
    sock = raw_dealer(ctx, agents)
    sock.send_multipart(touch_request(marker))
    assert reply_header(sock)["type"] == "exit"  # a short run needs no "accepted"
    assert marker.exists()  # the control case: the same request works with the right key
    sock.close()


def test_unknown_key_runs_nothing(
    ctx: zmq.Context[zmq.Socket[bytes]], agents: LocalAgents, tmp_path: Path
) -> None:
    marker = tmp_path / "unknown-key"
    stranger = write_keypair(tmp_path / "stranger", "client")
    server_public, _ = zmq.auth.load_certificate(str(agents.keys_dir / "agent.key"))
    assert server_public is not None
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_serverkey = server_public
    sock.curve_publickey = stranger.public
    sock.curve_secretkey = stranger.secret
    sock.connect(endpoint(agents))
    sock.send_multipart(touch_request(marker))
    time.sleep(SETTLE_S)
    assert not marker.exists()
    assert sock.poll(100) == 0  # and no reply either
    assert ping_ok(ctx, agents)


async def test_unknown_key_executor_gets_node_unreachable(
    agents: LocalAgents, tmp_path: Path
) -> None:
    marker = tmp_path / "unknown-key-executor"
    stranger = write_keypair(tmp_path / "stranger", "client")
    server_public, _ = zmq.auth.load_certificate(str(agents.keys_dir / "agent.key"))
    assert server_public is not None
    executor = ZmqNodeExecutor(
        "n",
        "127.0.0.1",
        agents.agents[0].port,
        server_public_key=server_public,
        client_keys=stranger,
        connect_timeout=1.0,
    )
    with pytest.raises(NodeUnreachable, match="not authorized"):
        await executor.run(f"touch {marker}")
    await executor.close()
    assert not marker.exists()


@pytest.mark.parametrize("mechanism", ["null", "plain"])
def test_null_and_plain_clients_run_nothing(
    ctx: zmq.Context[zmq.Socket[bytes]], agents: LocalAgents, tmp_path: Path, mechanism: str
) -> None:
    marker = tmp_path / mechanism
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if mechanism == "plain":
        sock.plain_username = b"admin"
        sock.plain_password = b"admin"
    sock.connect(endpoint(agents))
    sock.send_multipart(touch_request(marker))
    time.sleep(SETTLE_S)
    assert not marker.exists()
    assert sock.poll(100) == 0
    assert ping_ok(ctx, agents)


# --- Bad input never kills the agent ----------------------------------------------------------

_GARBAGE: list[list[bytes]] = [
    [b"\xff\xfe\x00garbage"],
    [b"not json at all"],
    [b"[1, 2, 3]"],
    [b'{"v": 99, "type": "ping", "id": "x"}'],
    [b'{"v": V, "type": "ping"}'],
    [b'{"v": V, "type": "run", "id": "x"}'],
    [b'{"v": V, "type": "run", "id": "x", "command": 42}'],
    [b'{"v": V, "type": "run", "id": "x", "command": "true", "timeout": -1}'],
    [b'{"v": V, "type": "run", "id": "x", "command": "true", "env": {"A B": "c"}}'],
    [b'{"v": V, "type": "run", "id": "x", "command": "true"}', b"unexpected body"],
    [b'{"v": V, "type": "ping", "id": "x"}', b"a", b"b"],
    [b""],
    [b"[" * 100_000],  # deeper than json's recursion limit
    [b'{"v": V, "type": "ping", "id": "x", "pad": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"],
]
# "V" stands for the current protocol version, so each case fails on what it means to test.
GARBAGE = [
    [frame.replace(b'"v": V', f'"v": {PROTOCOL_VERSION}'.encode()) for frame in frames]
    for frames in _GARBAGE
]


def test_garbage_gets_an_error_reply_and_the_agent_keeps_serving(
    ctx: zmq.Context[zmq.Socket[bytes]], agents: LocalAgents
) -> None:
    sock = raw_dealer(ctx, agents)
    for frames in GARBAGE:
        sock.send_multipart(frames)
        header = reply_header(sock)
        assert header["type"] == "error", frames
        assert header["code"] == "bad_request", frames
    sock.close()
    assert ping_ok(ctx, agents)


def test_oversized_frame_drops_only_that_connection(
    ctx: zmq.Context[zmq.Socket[bytes]], agents: LocalAgents, tmp_path: Path
) -> None:
    marker = tmp_path / "oversized"
    sock = raw_dealer(ctx, agents)
    command = f"touch {marker}; : " + "x" * (MAX_REQUEST_BYTES + 1024)
    # By hand: the codec itself refuses to encode a header over the limit.
    header = {"v": PROTOCOL_VERSION, "type": "run", "id": "big", "command": command}
    sock.send(json.dumps(header).encode())
    assert sock.poll(int(SETTLE_S * 1000)) == 0  # the agent hung up instead of answering
    sock.close()
    assert not marker.exists()
    assert ping_ok(ctx, agents)


def test_truncated_and_random_tcp_bytes_leave_the_agent_serving(
    ctx: zmq.Context[zmq.Socket[bytes]], agents: LocalAgents
) -> None:
    port = agents.agents[0].port
    junk = [
        b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f",  # the start of a ZMTP greeting, then silence
        b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f\x03\x00CURVE" + b"\x00" * 10,  # cut short
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        bytes(range(256)) * 40,
    ]
    for payload in junk:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(payload)
            time.sleep(0.1)
    assert ping_ok(ctx, agents)


# --- The allow-list ---------------------------------------------------------------------------


def test_handler_table_is_exactly_the_allow_list() -> None:
    assert REQUEST_TYPES == {"run", "cancel", "facts", "ping", "credit", "data", "put", "get"}
    # NodeAgent asserts at construction that its handlers equal REQUEST_TYPES.
    assert "handlers" in NodeAgent.__init__.__code__.co_names


@pytest.mark.parametrize(
    "msg_type",
    sorted(REPLY_TYPES) + ["exec", "shell", "_prep_auth_info", "__init__", "send_multipart", "RUN"],
)
def test_types_outside_the_allow_list_are_unreachable(
    msg_type: str, ctx: zmq.Context[zmq.Socket[bytes]], agents: LocalAgents, tmp_path: Path
) -> None:
    marker = tmp_path / "outside"
    sock = raw_dealer(ctx, agents)
    header = {"v": PROTOCOL_VERSION, "type": msg_type, "id": "evil", "command": f"touch {marker}"}
    frames = [json.dumps(header).encode()]
    if msg_type == "output":
        frames.append(b"body")
    sock.send_multipart(frames)
    reply = reply_header(sock)
    assert reply["type"] == "error"
    assert reply["code"] in ("not_allowed", "bad_request")
    sock.close()
    time.sleep(0.2)
    assert not marker.exists()


# --- Key files and --insecure -----------------------------------------------------------------


def test_keys_generate_writes_private_secret_files(run: object, tmp_path: Path) -> None:
    assert callable(run)
    result = run(AGENT, "keys", "generate", str(tmp_path / "k"))
    assert result.returncode == 0, result.stderr
    for name in ("agent.key_secret", "client.key_secret"):
        assert stat.S_IMODE((tmp_path / "k" / name).stat().st_mode) == 0o600
    assert (tmp_path / "k" / "authorized_clients" / "client.key").exists()


def test_world_readable_secret_key_is_refused(run: object, tmp_path: Path) -> None:
    assert callable(run)
    keys = tmp_path / "k"
    assert run(AGENT, "keys", "generate", str(keys)).returncode == 0
    (keys / "agent.key_secret").chmod(0o644)
    result = run(AGENT, "serve", "--bind", "127.0.0.1", "--port", "0", "--keys", str(keys))
    assert result.returncode == 2
    assert "refusing" in result.stderr and "chmod 600" in result.stderr
    assert "Traceback" not in result.stderr


def test_insecure_refuses_a_non_loopback_bind(run: object) -> None:
    assert callable(run)
    result = run(AGENT, "serve", "--insecure", "--bind", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert "loopback only" in result.stderr


async def test_insecure_warns_and_binds_loopback(spawn: object) -> None:
    assert callable(spawn)
    agent = spawn(AGENT, "serve", "--insecure", "--port", "0", "--node-id", "lesson")
    ready = agent.wait_for(r"ready on tcp://([0-9.]+):(\d+)", timeout=30)
    assert ready.group(1) == "127.0.0.1"
    assert "INSECURE" in agent.stderr()
    executor = ZmqNodeExecutor(
        "lesson", "127.0.0.1", int(ready.group(2)), server_public_key=None, client_keys=None
    )
    assert (await executor.run("echo plain")).stdout == b"plain\n"
    await executor.close()


def test_sigterm_stops_the_agent_cleanly(spawn: object, tmp_path: Path, run: object) -> None:
    assert callable(spawn) and callable(run)
    keys = tmp_path / "k"
    assert run(AGENT, "keys", "generate", str(keys)).returncode == 0
    agent = spawn(AGENT, "serve", "--bind", "127.0.0.1", "--port", "0", "--keys", str(keys))
    agent.wait_for("ready", timeout=30)
    agent.signal(15)
    assert agent.wait(timeout=15) == 0
    assert "Traceback" not in agent.output()


async def test_keys_authorize_admits_a_new_client(
    spawn: object, run: object, tmp_path: Path
) -> None:
    assert callable(spawn) and callable(run)
    keys = tmp_path / "k"
    assert run(AGENT, "keys", "generate", str(keys)).returncode == 0
    newcomer = write_keypair(tmp_path / "newcomer", "ops")
    result = run(AGENT, "keys", "authorize", str(keys), str(tmp_path / "newcomer" / "ops.key"))
    assert result.returncode == 0, result.stderr
    agent = spawn(AGENT, "serve", "--bind", "127.0.0.1", "--port", "0", "--keys", str(keys))
    port = int(agent.wait_for(r"ready on tcp://127.0.0.1:(\d+)", timeout=30).group(1))
    server_public, _ = zmq.auth.load_certificate(str(keys / "agent.key"))
    assert server_public is not None
    executor = ZmqNodeExecutor(
        "n", "127.0.0.1", port, server_public_key=server_public, client_keys=newcomer
    )
    assert (await executor.run("echo welcome")).stdout == b"welcome\n"
    await executor.close()
