"""The agent's put and get on the wire: only below --files-root, atomic, checked, mode kept.

A real ``zmq_node_agent.py`` with ``--files-root`` is driven by hand through a raw DEALER
(testing.wire_client), as a client in another language would (docs/agent-protocol.md,
"Files"): paths with ``..``, absolute paths outside the root and symlinks out of it are
refused; a put lands under its name only after every byte came and the SHA-256 matched;
a put that is cut (cancel, silence, a wrong checksum, too many bytes) leaves no file under
its final name and removes its temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster_runner_simulation.agent_protocol import DATA_CHUNK_BYTES
from cluster_runner_simulation.testing import LocalAgents
from cluster_runner_simulation.testing.wire_client import Ctx, WireClient, header

IDLE_S = 1.5  # the agent's --transfer-idle-s here


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("files-root")


@pytest.fixture(scope="module")
def agent(root: Path) -> Iterator[LocalAgents]:
    args = ["--files-root", str(root), "--transfer-idle-s", str(IDLE_S)]
    with LocalAgents(1, extra_args=args) as started:
        yield started


def put(
    client: WireClient, msg_id: str, path: str, payload: bytes, *, sha256: str | None = None,
    cut_after: int | None = None, **fields: Any,
) -> dict[str, Any]:  # fmt: skip
    """Put ``payload`` as the protocol says (within the grants); the reply that ends it."""
    client.send(header("put", msg_id, path=path, size=len(payload), **fields))
    granted, offset = 0, 0
    digest = sha256 or hashlib.sha256(payload).hexdigest()
    while True:
        reply, _ = client.receive()
        if reply["type"] != "data_credit":
            return reply
        granted += reply["bytes"]
        while offset < len(payload) and offset + DATA_CHUNK_BYTES <= granted + DATA_CHUNK_BYTES:
            chunk = payload[offset : min(offset + DATA_CHUNK_BYTES, granted)]
            if not chunk:
                break
            if cut_after is not None and offset >= cut_after:
                return {"type": "cut"}
            offset += len(chunk)
            last = offset == len(payload)
            client.send(header("data", msg_id, eof=last, sha256=digest if last else None), chunk)
        if not payload:
            client.send(header("data", msg_id, eof=True, sha256=digest), b"")


def receive_file(client: WireClient, timeout: float = 10.0) -> tuple[bytes, dict[str, Any]]:
    """A get's file_data bodies, and the reply that ended them."""
    received = bytearray()
    while True:
        reply, body = client.receive(timeout=timeout)
        if reply["type"] != "file_data":
            return bytes(received), reply
        received += body or b""


def open_files(pid: int) -> list[str]:
    """What the process's descriptors point at (one closed meanwhile is left out)."""
    paths = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            paths.append(os.readlink(fd))
    return paths


def leftovers(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.startswith(".zcp-"))


def test_a_put_lands_with_its_mode_and_checksum(ctx: Ctx, agent: LocalAgents, root: Path) -> None:
    client = WireClient(ctx, agent)
    payload = os.urandom(3 * 1024 * 1024 + 5)
    reply = put(client, "p1", str(root / "tool.sh"), payload, mode=0o751)
    assert reply["type"] == "file_end", reply
    assert reply["path"] == str(root / "tool.sh") and reply["size"] == len(payload)
    assert reply["sha256"] == hashlib.sha256(payload).hexdigest()
    assert (root / "tool.sh").read_bytes() == payload
    assert (root / "tool.sh").stat().st_mode & 0o7777 == 0o751
    assert not leftovers(root)
    client.close()


def test_relative_paths_names_and_directories(ctx: Ctx, agent: LocalAgents, root: Path) -> None:
    client = WireClient(ctx, agent)
    (root / "sub").mkdir()
    assert put(client, "r1", "sub", b"a", name="one.txt")["path"] == str(root / "sub" / "one.txt")
    assert put(client, "r2", "sub/two.txt", b"b", name="ignored")["path"] == str(
        root / "sub" / "two.txt"
    )
    refused = put(client, "r3", "sub/two.txt", b"c", name="x", directory=True)
    assert refused["code"] == "file_error" and "not a directory" in refused["message"]
    assert put(client, "r4", "empty", b"")["size"] == 0 and (root / "empty").read_bytes() == b""
    missing = put(client, "r5", "nowhere/file", b"d")
    assert missing["code"] == "file_error" and "No such file or directory" in missing["message"]
    client.close()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../escape", "'..' is not allowed"),
        ("sub/../../escape", "'..' is not allowed"),
        ("/etc/passwd-zcp-test", "outside the agent's files root"),
        ("/", "outside the agent's files root"),
    ],
)
def test_paths_outside_the_root_are_refused(
    ctx: Ctx, agent: LocalAgents, path: str, message: str
) -> None:
    client = WireClient(ctx, agent)
    reply = put(client, "bad", path, b"x")
    assert reply["code"] == "path_refused" and message in reply["message"]
    client.send(header("get", "bad-get", path=path))
    reply = client.until_end()
    assert reply["code"] == "path_refused" and message in reply["message"]
    client.close()


def test_symlinks_out_of_the_root_are_refused(
    ctx: Ctx, agent: LocalAgents, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not yours")
    (root / "door").symlink_to(outside)
    (root / "secret-link").symlink_to(outside / "secret")
    client = WireClient(ctx, agent)
    reply = put(client, "s1", "door/planted", b"x")
    assert reply["code"] == "path_refused" and "leads outside the files root" in reply["message"]
    assert not (outside / "planted").exists()
    for path in ("secret-link", "door/secret"):
        client.send(header("get", f"g-{path}", path=path))
        reply = client.until_end()
        assert reply["code"] == "path_refused", reply
    client.close()


def test_a_get_sends_the_file_and_its_checksum(ctx: Ctx, agent: LocalAgents, root: Path) -> None:
    payload = os.urandom(2 * 1024 * 1024 + 1)
    (root / "log.bin").write_bytes(payload)
    os.chmod(root / "log.bin", 0o640)
    client = WireClient(ctx, agent)
    client.send(header("get", "g1", path="log.bin"))
    received, reply = receive_file(client)
    assert reply["type"] == "file_end" and received == payload
    assert (reply["size"], reply["mode"]) == (len(payload), 0o640)
    assert reply["sha256"] == hashlib.sha256(payload).hexdigest()
    client.send(header("get", "g2", path="no-such-file"))
    assert client.until_end()["code"] == "file_error"
    client.send(header("get", "g3", path="."))
    assert "not a regular file" in client.until_end()["message"]
    client.close()


def test_a_wrong_checksum_or_size_leaves_nothing(ctx: Ctx, agent: LocalAgents, root: Path) -> None:
    client = WireClient(ctx, agent)
    reply = put(client, "c1", "checked", b"payload", sha256="0" * 64)
    assert reply["code"] == "checksum_mismatch"
    assert not (root / "checked").exists() and not leftovers(root)
    client.send(header("put", "c2", path="sized", size=2))
    assert client.receive()[0]["type"] == "data_credit"
    client.send(header("data", "c2", eof=True, sha256="0" * 64), b"three")
    reply = client.until_end()
    assert reply["code"] == "bad_request" and "more than the 2 bytes announced" in reply["message"]
    assert not (root / "sized").exists() and not leftovers(root)
    client.close()


def test_a_cut_transfer_leaves_no_file_under_its_name(
    ctx: Ctx, agent: LocalAgents, root: Path
) -> None:
    (root / "kept").write_bytes(b"the old version")
    client = WireClient(ctx, agent)
    assert put(client, "cut1", "kept", os.urandom(4 * 1024 * 1024), cut_after=1024 * 1024) == {
        "type": "cut"
    }
    assert leftovers(root)  # half-written, under a temporary name only
    assert (root / "kept").read_bytes() == b"the old version"
    client.send(header("cancel", "cut1"))
    assert client.until_end()["message"] == "transfer cancelled"
    assert not leftovers(root)
    # A client that just goes silent: the agent cuts the transfer after --transfer-idle-s.
    assert put(client, "cut2", "new", os.urandom(1024 * 1024), cut_after=256 * 1024) == {
        "type": "cut"
    }
    reply = client.until_end(timeout=IDLE_S + 5)
    assert reply["code"] == "file_error" and "no data for" in reply["message"]
    assert not (root / "new").exists() and not leftovers(root)
    client.close()


def test_a_get_whose_client_stops_reading_is_cut_and_lets_go_of_the_file(
    ctx: Ctx, agent: LocalAgents, root: Path
) -> None:
    """The client never grants credit: once the window is full and --transfer-idle-s passed,
    the agent answers file_error and closes the file (no descriptor, no transfer slot held)."""
    payload = os.urandom(24 * 1024 * 1024)  # more than the credit window
    (root / "big.bin").write_bytes(payload)
    client = WireClient(ctx, agent)
    client.send(header("get", "stall", path="big.bin"))
    received, reply = receive_file(client, timeout=IDLE_S + 10)  # and never grant credit
    assert reply["code"] == "file_error" and "nothing read for" in reply["message"], reply
    assert 0 < len(received) < len(payload)
    assert not any(path.endswith("big.bin") for path in open_files(agent.agents[0].proc.pid))
    client.close()


def test_without_a_files_root_transfers_are_off(ctx: Ctx) -> None:
    with LocalAgents(1) as plain:
        client = WireClient(ctx, plain)
        client.send(header("put", "p", path="x", size=1))
        reply = client.until_end()
        assert reply["code"] == "not_allowed" and "--files-root" in reply["message"]
        client.close()


def test_an_agent_stopped_mid_put_removes_the_temporary_file(ctx: Ctx, tmp_path: Path) -> None:
    with LocalAgents(1, extra_args=["--files-root", str(tmp_path)]) as single:
        client = WireClient(ctx, single)
        payload = os.urandom(2 * 1024 * 1024)
        assert put(client, "s", "f", payload, cut_after=512 * 1024) == {"type": "cut"}
        deadline = time.monotonic() + 5
        while not leftovers(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        single.stop_one(0)  # SIGTERM: a clean stop
        client.close()
    assert not leftovers(tmp_path) and not (tmp_path / "f").exists()
