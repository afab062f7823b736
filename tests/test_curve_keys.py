"""The shared CURVE key files and ZAP allow-list (cluster_patterns.curve): files, policy, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import zmq
import zmq.utils.z85

from cluster_patterns.curve import (
    AUTHORIZED_DIR,
    KeyFileError,
    ZapPolicy,
    curve_client,
    curve_server,
    fingerprint,
    generate_keys,
    load_allowed_keys,
    load_keypair,
    server_policy,
    ZapThread,
)
from conftest import REPO

CURVE_PY = REPO / "02-cluster-patterns" / "curve.py"
AGENT_KEYS_PY = REPO / "03-cluster-runner-simulation" / "agent_keys.py"


def zap_request(key: bytes, mechanism: bytes = b"CURVE") -> list[bytes]:
    return [b"1.0", b"7", b"global", b"192.0.2.1", b"", mechanism, key]


def test_policy_admits_listed_keys_and_logs_denials_with_fingerprint(tmp_path: Path) -> None:
    generate_keys(tmp_path, "coordinator")
    lines: list[str] = []
    policy = server_policy(tmp_path, "test", lines.append)
    client = load_keypair(tmp_path / "client.key_secret")
    raw = zmq.utils.z85.decode(client.public)
    assert policy.reply(zap_request(raw))[2:5] == [b"200", b"OK", b"client"]
    stranger = zmq.utils.z85.decode(zmq.curve_keypair()[0])
    denied = policy.reply(zap_request(stranger))
    assert denied[2] == b"400"
    assert policy.admitted == 1 and policy.denied == 1
    assert "192.0.2.1" in lines[0] and fingerprint(stranger) in lines[0]


def test_policy_refuses_other_mechanisms_and_garbage() -> None:
    policy = ZapPolicy({}, "test", lambda line: None)
    assert policy.reply(zap_request(b"", b"NULL"))[2] == b"400"
    assert policy.reply([b"junk"])[2] == b"500"
    assert policy.reply([])[2] == b"500"
    assert policy.denied == 3


def test_denials_are_rate_limited() -> None:
    lines: list[str] = []
    policy = ZapPolicy({}, "test", lines.append)
    for _ in range(100):
        policy.reply(zap_request(b"x" * 32))
    assert policy.denied == 100
    assert len(lines) == 1


def test_an_unparsable_key_file_in_the_allow_list_is_named(tmp_path: Path) -> None:
    generate_keys(tmp_path, "agent")
    bad = tmp_path / AUTHORIZED_DIR / "broken.key"
    bad.write_bytes(b"\xff\xfe not a certificate")
    with pytest.raises(KeyFileError, match="broken.key"):
        load_allowed_keys(tmp_path / AUTHORIZED_DIR)


def test_an_empty_allow_list_is_refused(tmp_path: Path) -> None:
    (tmp_path / AUTHORIZED_DIR).mkdir()
    with pytest.raises(KeyFileError, match="nobody could connect"):
        load_allowed_keys(tmp_path / AUTHORIZED_DIR)


def test_curve_round_trip_through_the_zap_thread(tmp_path: Path) -> None:
    generate_keys(tmp_path, "coordinator")
    server_pair = load_keypair(tmp_path / "coordinator.key_secret")
    client_pair = load_keypair(tmp_path / "client.key_secret")
    ctx = zmq.Context()
    zap = ZapThread(ctx, server_policy(tmp_path, "test", lambda line: None))
    zap.start()
    server = ctx.socket(zmq.REP)
    client = ctx.socket(zmq.REQ)
    try:
        for sock in (server, client):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 5000)
        curve_server(server, server_pair)
        port = server.bind_to_random_port("tcp://127.0.0.1")
        curve_client(client, server_pair.public, client_pair)
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send(b"ping")
        assert server.recv() == b"ping"
        server.send(b"pong")
        assert client.recv() == b"pong"
        assert zap.policy.admitted == 1
    finally:
        server.close()
        client.close()
        zap.stop()
        ctx.term()


@pytest.mark.parametrize("script", [CURVE_PY, AGENT_KEYS_PY], ids=["curve", "agent_keys"])
def test_key_tools_print_usage_and_generate(script: Path, tmp_path: Path) -> None:
    usage = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0
    assert "generate" in usage.stdout and "authorize" in usage.stdout
    made = subprocess.run(
        [sys.executable, str(script), "generate", str(tmp_path / "k")],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "k" / AUTHORIZED_DIR / "client.key").is_file()
    wrong = subprocess.run(
        [sys.executable, str(script), "fingerprint", str(tmp_path / "missing.key")],
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 2 and "missing.key" in wrong.stderr
    assert "Traceback" not in wrong.stderr
