"""The week-2 cluster over CURVE (``--keys DIR``): real processes on loopback.

Keys come from the shared tool, ``curve.py generate DIR --server coordinator``: the coordinator
reads DIR/coordinator.key_secret and DIR/authorized_clients/, every worker, client and monitor
reads DIR/client.key_secret and DIR/coordinator.key.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from cluster_patterns.curve import fingerprint, load_public
from cluster_patterns.transport import (
    ZMTP_SIGNATURE,
    HandshakeFailure,
    HandshakeWatch,
    PeerFault,
    configure,
    server_mechanism,
)
from conftest import REPO

INTERVAL = 0.5
LIVENESS = 3
TIMING = ("--heartbeat-interval", str(INTERVAL), "--liveness", str(LIVENESS))
COORDINATOR = "02-cluster-patterns/coordinator.py"
WORKER = "02-cluster-patterns/worker.py"
CLIENT = "02-cluster-patterns/client.py"
MONITOR = "02-cluster-patterns/monitor.py"
CURVE_PY = "02-cluster-patterns/curve.py"
REFUSED_EXIT = 3


def generate(run: Any, directory: Path) -> Path:
    made = run(CURVE_PY, "generate", str(directory), "--server", "coordinator")
    assert made.returncode == 0, made.stderr
    return directory


@pytest.fixture
def keys(tmp_path: Path, run: Any) -> Path:
    return generate(run, tmp_path / "keys")


def start_coordinator(
    spawn: Any, free_port: Callable[[], int], keys: Path | None
) -> tuple[Any, int, int]:
    port, status_port = free_port(), free_port()
    security = ("--keys", str(keys)) if keys else ()
    proc = spawn(
        COORDINATOR, "--port", str(port), "--status-port", str(status_port), *TIMING, *security
    )  # fmt: skip
    proc.wait_for("coordinator ready")
    return proc, port, status_port


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


def test_an_encrypted_cluster_end_to_end(
    spawn: Any, free_port: Callable[[], int], run: Any, keys: Path, status_tap: Any, tmp_path: Path
) -> None:
    coordinator, port, status_port = start_coordinator(spawn, free_port, keys)
    assert "CURVE" in coordinator.stdout()
    worker = spawn(WORKER, "--id", "w1", "--port", str(port), "--keys", str(keys), *TIMING)
    worker.wait_for("registered with")
    http_port = free_port()
    monitor = spawn(
        MONITOR, "--status-port", str(status_port), "--port", str(http_port),
        "--keys", str(keys), *TIMING,
    )  # fmt: skip
    monitor.wait_for("monitor ready")
    summary_path = tmp_path / "summary.json"
    client = run(
        CLIENT, "--port", str(port), "--keys", str(keys), "--count", "50", "--kind", "echo",
        "--json", str(summary_path), timeout=60,
    )  # fmt: skip
    assert client.returncode == 0, client.stdout + client.stderr
    assert json.loads(summary_path.read_text())["done"] == 50
    base = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 10
    while True:
        doc = json.loads(get(base + "/api/cluster"))
        if doc["totals"]["done"] >= 50 and [n["state"] for n in doc["nodes"]] == ["alive"]:
            break
        assert time.monotonic() < deadline, doc
        time.sleep(0.1)
    assert b'id="nodes"' in get(base + "/")  # the dashboard page and the data it polls
    assert b"cluster_tasks_done_total 50.0" in get(base + "/metrics")
    tap = status_tap(status_port, keys)
    assert tap.wait_for()["totals"]["denied_handshakes"] == 0
    # Without keys, the status channel tells an eavesdropper nothing.
    plain = status_tap(status_port)
    with pytest.raises(AssertionError, match="no matching STATUS"):
        plain.wait_for(timeout=2 * INTERVAL * LIVENESS)
    for proc in (coordinator, worker, monitor):
        assert "Traceback" not in proc.output()
        assert "WARNING" not in proc.output()


def refusal_of_echo_client(run: Any, port: int, keys: Path) -> str:
    """One echo task submitted with ``keys``: the client must exit REFUSED_EXIT, saying why in
    exactly one stderr line, which is returned."""
    client = run(
        CLIENT, "--port", str(port), "--keys", str(keys), "--count", "1", "--kind", "echo",
        timeout=60,
    )  # fmt: skip
    assert client.returncode == REFUSED_EXIT, client.stdout + client.stderr
    [line] = client.stderr.strip().splitlines()
    return line


def test_a_client_without_keys_is_refused(
    spawn: Any, free_port: Callable[[], int], run: Any, keys: Path, status_tap: Any
) -> None:
    coordinator, port, status_port = start_coordinator(spawn, free_port, keys)
    started = time.monotonic()
    client = run(CLIENT, "--port", str(port), "--count", "1", "--kind", "echo", timeout=60)
    assert client.returncode == REFUSED_EXIT, client.stdout + client.stderr
    assert time.monotonic() - started < 20
    [line] = client.stderr.strip().splitlines()
    assert "CURVE" in line and "--keys" in line
    tap = status_tap(status_port, keys)
    # The coordinator sees a mechanism mismatch only if it reads the client's greeting before
    # the client, which gave up, resets the connection; otherwise it sees an aborted handshake.
    # Either way it is not counted as a bad message, and nothing was submitted.
    status = tap.wait_for(
        lambda s: s["totals"]["denied_handshakes"] + s["totals"]["aborted_handshakes"] >= 1
    )
    assert status["totals"]["submitted"] == 0 and status["totals"]["bad_messages"] == 0
    if status["totals"]["denied_handshakes"]:
        assert "denied handshake" in coordinator.stderr()


def test_a_client_with_an_unlisted_key_is_refused_and_logged_with_its_fingerprint(
    spawn: Any, free_port: Callable[[], int], run: Any, keys: Path, status_tap: Any, tmp_path: Path
) -> None:
    coordinator, port, status_port = start_coordinator(spawn, free_port, keys)
    stranger = generate(run, tmp_path / "stranger")
    shutil.copy(keys / "coordinator.key", stranger / "coordinator.key")  # trusts the server
    stranger_print = fingerprint(load_public(stranger / "client.key"))
    line = refusal_of_echo_client(run, port, stranger)
    assert "refused" in line and stranger_print in line
    worker = spawn(WORKER, "--id", "w9", "--port", str(port), "--keys", str(stranger), *TIMING)
    assert worker.wait(timeout=30) == REFUSED_EXIT, worker.output()
    coordinator.wait_for(f"denied handshake.*{stranger_print}")
    assert "127.0.0.1" in coordinator.stderr()
    tap = status_tap(status_port, keys)
    status = tap.wait_for(lambda s: s["totals"]["denied_handshakes"] >= 2)
    assert status["nodes"] == [] and status["totals"]["submitted"] == 0


def _break(keys: Path, defect: str) -> str:
    """Damage the keys directory; returns the file name the error must mention."""
    if defect == "missing":
        shutil.rmtree(keys)
        return "coordinator.key"
    if defect == "garbage-secret":
        for name in ("coordinator.key_secret", "client.key_secret"):
            (keys / name).write_bytes(b"\xff\xfe this is not a certificate")
        return "key_secret"
    if defect == "readable-secret":
        for name in ("coordinator.key_secret", "client.key_secret"):
            os.chmod(keys / name, 0o644)
        return "key_secret"
    if defect == "garbage-public":
        (keys / "coordinator.key").write_text("nothing here\n")
        (keys / "authorized_clients" / "client.key").write_text("nothing here\n")
        return "client.key"  # the coordinator's allow-list entry
    raise AssertionError(defect)


ROLES = {
    "coordinator": (COORDINATOR, "--port", "1", "--status-port", "2"),
    "worker": (WORKER, "--id", "w1", "--port", "1"),
    "client": (CLIENT, "--count", "1", "--kind", "echo", "--port", "1"),
    "monitor": (MONITOR, "--status-port", "1", "--port", "3"),
}


@pytest.mark.parametrize(
    "defect", ["missing", "garbage-secret", "readable-secret", "garbage-public"]
)
@pytest.mark.parametrize("role", sorted(ROLES))
def test_bad_key_files_are_a_one_line_error_and_exit_2(
    role: str, defect: str, keys: Path, run: Any
) -> None:
    expected = _break(keys, defect)
    if role != "coordinator":  # the others read their own keypair, then the server's key
        expected = {"missing": "client.key_secret", "garbage-public": "coordinator.key"}.get(
            defect, expected
        )
    done = run(*ROLES[role], "--keys", str(keys), timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert expected in line and "error" in line, line
    assert "Traceback" not in done.stderr


def test_an_unparsable_key_in_the_allow_list_stops_the_coordinator(keys: Path, run: Any) -> None:
    (keys / "authorized_clients" / "broken.key").write_bytes(b"\x00\x01 garbage")
    done = run(*ROLES["coordinator"], "--keys", str(keys), timeout=30)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "broken.key" in line


def _in_own_network_namespace(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run a coordinator in a fresh network namespace (only a down loopback: reaches nobody),
    bound on every address, and stop it once it is ready."""
    script = (
        "import subprocess, sys, time, signal\n"
        "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE,"
        " text=True)\n"
        "time.sleep(3)\n"
        "p.send_signal(signal.SIGINT)\n"
        "out, err = p.communicate(timeout=20)\n"
        "print(out); print(err, file=sys.stderr); sys.exit(p.returncode)\n"
    )
    return subprocess.run(
        ["unshare", "--net", sys.executable, "-c", script, sys.executable, "-u", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_null_coordinator_bound_off_loopback_warns_loudly(keys: Path) -> None:
    plain = _in_own_network_namespace(COORDINATOR, "--bind", "0.0.0.0")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "coordinator ready" in plain.stdout
    warning = [line for line in plain.stderr.splitlines() if "WARNING" in line]
    assert warning and "--keys" in warning[0] and "0.0.0.0" in warning[0], plain.stderr
    secure = _in_own_network_namespace(COORDINATOR, "--bind", "0.0.0.0", "--keys", str(keys))
    assert secure.returncode == 0, secure.stdout + secure.stderr
    assert "WARNING" not in secure.stderr and "CURVE" in secure.stdout


def test_keys_on_one_side_only_is_a_clear_refusal(
    spawn: Any, free_port: Callable[[], int], run: Any, keys: Path
) -> None:
    """A CURVE client meeting a NULL coordinator gives up with a clear line too."""
    _, port, _ = start_coordinator(spawn, free_port, None)
    line = refusal_of_echo_client(run, port, keys)
    assert "CURVE" in line


def test_zmq_has_curve() -> None:
    assert zmq.has("curve"), "libzmq without CURVE: the cluster's --keys cannot work"


# --- A connecting socket's view of a refusal (transport.HandshakeWatch) -----------------------

CURVE_GREETING = ZMTP_SIGNATURE + b"\x03\x00" + b"CURVE".ljust(20, b"\x00") + b"\x01" + b"\x00" * 31
GREETING_BYTES = len(CURVE_GREETING)


def serve_connections(listener: socket.socket, answer: Callable[[socket.socket], None]) -> None:
    """``answer`` every connection until the listener is closed or times out."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:  # closed, or timed out: the dealer has stopped connecting
            return
        with conn:
            answer(conn)


def reset_without_greeting(conn: socket.socket) -> None:
    """What a TCP proxy with no server behind it does."""
    conn.recv(len(ZMTP_SIGNATURE))
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def close_as_a_curve_server(conn: socket.socket) -> None:
    """What libzmq's CURVE server does: its signature at once, the rest of its greeting once
    the peer's signature and major version came, and a close once the peer's mechanism is
    not CURVE (a reset, when the peer's READY is left unread)."""
    signature = len(ZMTP_SIGNATURE)
    received = b""
    with contextlib.suppress(OSError):
        conn.sendall(CURVE_GREETING[:signature])
        while len(received) < signature + 1 and (chunk := conn.recv(GREETING_BYTES)):
            received += chunk
        conn.sendall(CURVE_GREETING[signature:])
        while len(received) < GREETING_BYTES and (chunk := conn.recv(GREETING_BYTES)):
            received += chunk


def watch_a_dealer(port: int, seconds: float) -> list[HandshakeFailure]:
    ctx = zmq.Context()
    dealer = configure(ctx.socket(zmq.DEALER))
    watch = HandshakeWatch(dealer, connecting=True)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    found: list[HandshakeFailure] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and PeerFault.DENIED_HANDSHAKE not in {
        f.fault for f in found
    }:
        time.sleep(0.05)
        found += watch.failures()
    watch.close()
    dealer.close()
    ctx.term()
    return found


def served(answer: Callable[[socket.socket], None]) -> tuple[socket.socket, int]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    threading.Thread(target=serve_connections, args=(listener, answer), daemon=True).start()
    return listener, listener.getsockname()[1]


def test_resets_without_a_greeting_are_no_refusal() -> None:
    """A proxy whose coordinator is down, say: keep reconnecting, as ZeroMQ does."""
    listener, port = served(reset_without_greeting)
    found = watch_a_dealer(port, seconds=3)
    listener.close()
    faults = {f.fault for f in found}
    assert faults == {PeerFault.ABORTED_HANDSHAKE} and len(found) >= 5, found


def test_another_mechanism_is_a_refusal_however_the_server_closes() -> None:
    listener, port = served(close_as_a_curve_server)
    found = watch_a_dealer(port, seconds=10)
    listener.close()
    assert found and found[-1].fault is PeerFault.DENIED_HANDSHAKE, found
    assert "mechanism mismatch" in found[-1].reason and "CURVE" in found[-1].reason


def test_server_mechanism_reads_a_real_greeting(keys: Path, free_port: Callable[[], int]) -> None:
    ctx = zmq.Context()
    plain, secure = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    secure.curve_secretkey = zmq.curve_keypair()[1]
    secure.curve_server = True  # before bind, or the socket serves NULL
    ports = free_port(), free_port()
    for sock, port in zip((plain, secure), ports):
        sock.bind(f"tcp://127.0.0.1:{port}")
    try:
        assert server_mechanism(f"tcp://127.0.0.1:{ports[0]}") == "NULL"
        assert server_mechanism(f"tcp://127.0.0.1:{ports[1]}") == "CURVE"
        assert server_mechanism(f"tcp://127.0.0.1:{free_port()}") is None  # nothing listens
    finally:
        plain.close(0)
        secure.close(0)
        ctx.term()
