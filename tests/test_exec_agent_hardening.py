"""The node agent under hostile and unlucky input: bounded memory, an answer to every request.

Every test drives a real ``zmq_node_agent.py`` process over real sockets, speaking the wire
protocol by hand (docs/agent-protocol.md) through a raw DEALER, so it checks what a client in
any language would see:

* a client that never reads cannot grow the agent's memory, and other clients are served;
  a slow reader still gets every byte up to the output cap;
* malformed headers (huge integers, non-finite numbers, booleans for numbers, lone surrogates,
  deep nesting, bytes that are not UTF-8) get ``bad_request`` naming the field, with no
  traceback in the log and bad input logged at most about once a second;
* request types outside the allow-list get ``not_allowed``;
* an unparsable key file stops the agent at start-up; denied handshakes are logged with the
  peer's address and key fingerprint;
* a run's ``timeout`` counts from when the agent accepts it, time queued for a slot included;
* SIGTERM that arrives while the agent prints "ready" still stops it cleanly;
* a few thousand random and mutated frames, each answered, and a few hundred raw TCP
  connections of junk leave the agent serving within a memory bound (the codec's own
  property tests are in test_exec_agent_fuzz.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from cluster_patterns.curve import fingerprint
from cluster_runner_simulation.agent_keys import generate_keys, write_keypair
from cluster_runner_simulation.agent_protocol import (
    MAX_OUTPUT_BYTES,
    MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
    CancelRequest,
    FactsRequest,
    Message,
    PingRequest,
    RunRequest,
    encode,
)
from cluster_runner_simulation.testing import LocalAgents
from cluster_runner_simulation.testing.wire_client import (
    TERMINAL_TYPES,
    Ctx,
    WireClient,
    header,
    run_header,
)
from cluster_runner_simulation.protocols import CommandTimeout
from conftest import REPO

AGENT = "03-cluster-runner-simulation/zmq_node_agent.py"
MiB = 1024 * 1024
CREDIT_EVERY_BYTES = 1 * MiB  # how often the hand-written slow reader grants credit


@pytest.fixture
def agent() -> Iterator[LocalAgents]:
    with LocalAgents(1) as started:
        yield started


def agent_log(agents: LocalAgents) -> str:
    process = agents.agents[0]
    return process.log_path.read_bytes()[process.log_offset :].decode(errors="replace")


class RssSampler:
    """Samples a process's resident set size on a thread and keeps the peak."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        self.process = psutil.Process(pid)
        self.every_s = every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            self._stop.wait(self.every_s)


def running_heads(agent_pid: int) -> int:
    children = psutil.Process(agent_pid).children(recursive=True)
    return sum(1 for child in children if child.name() == "head")


# --- Row: a client that reads slowly or not at all ----------------------------------------------

STALLED_RUNS = 16
STALLED_BYTES = 200_000_000
STALLED_RSS_LIMIT = 256 * MiB
STALLED_OBSERVE_S = 8.0


def test_a_client_that_never_reads_cannot_grow_the_agent(ctx: Ctx, agent: LocalAgents) -> None:
    pid = agent.agents[0].proc.pid
    stalled = WireClient(ctx, agent)
    pinger = WireClient(ctx, agent)
    pongs = 0
    with RssSampler(pid) as rss:
        for i in range(STALLED_RUNS):
            stalled.send(
                run_header(f"flood-{i}", f"head -c {STALLED_BYTES} /dev/zero", timeout=120)
            )
        deadline = time.monotonic() + STALLED_OBSERVE_S
        while time.monotonic() < deadline:
            reply = pinger.request(header("ping", f"p{pongs}"))
            assert reply["type"] == "pong"
            pongs += 1
            time.sleep(0.2)
        heads = running_heads(pid)
    print(f"peak agent RSS with a stalled reader: {rss.peak / MiB:.1f} MiB, {pongs} pongs")
    assert rss.peak < STALLED_RSS_LIMIT, f"agent RSS reached {rss.peak / MiB:.0f} MiB"
    # The agent stopped reading the commands' pipes: they block on their own writes.
    assert heads == STALLED_RUNS
    stalled.close()
    pinger.close()


SLOW_RUNS = 6
SLOW_BYTES = 70_000_000  # over the 64 MiB cap, so the cap is exercised too
SLOW_RSS_LIMIT = 256 * MiB


def test_a_slow_reader_gets_every_byte_up_to_the_cap(ctx: Ctx, agent: LocalAgents) -> None:
    pid = agent.agents[0].proc.pid
    reader = WireClient(ctx, agent, rcvhwm=8)
    received = {f"slow-{i}": 0 for i in range(SLOW_RUNS)}
    exits: dict[str, dict[str, Any]] = {}
    uncredited = 0
    with RssSampler(pid) as rss:
        for run_id in received:
            reader.send(run_header(run_id, f"head -c {SLOW_BYTES} /dev/zero", timeout=120))
        while len(exits) < SLOW_RUNS:
            frames = reader.sock.recv_multipart() if reader.sock.poll(20_000) else None
            assert frames is not None, f"stalled with {received} and exits {sorted(exits)}"
            uncredited += sum(len(frame) for frame in frames)
            reply = json.loads(frames[0])
            if reply["type"] == "output":
                assert reply["stream"] == "stdout"
                received[reply["id"]] += len(frames[1])
                time.sleep(0.001)  # a slow consumer
            elif reply["type"] == "exit":
                exits[reply["id"]] = reply
            if uncredited >= CREDIT_EVERY_BYTES:
                reader.credit(uncredited)
                uncredited = 0
    reader.close()
    print(f"peak agent RSS with a slow reader: {rss.peak / MiB:.1f} MiB")
    assert received == {run_id: MAX_OUTPUT_BYTES for run_id in received}
    for reply in exits.values():
        assert reply["exit_status"] == 0
        assert reply["dropped_bytes"] == SLOW_BYTES - MAX_OUTPUT_BYTES
    assert rss.peak < SLOW_RSS_LIMIT, f"agent RSS reached {rss.peak / MiB:.0f} MiB"


# --- Row: malformed headers ---------------------------------------------------------------------

HUGE = "9" * 400
MALFORMED: list[tuple[str, bytes, str]] = [
    # (case, raw header, a word the error message must contain: the field it names)
    (
        "400-digit timeout",
        b'{"v":V,"type":"run","id":"h1","command":"true","timeout":' + HUGE.encode() + b"}",
        "timeout",
    ),
    (
        "5000-digit timeout",
        b'{"v":V,"type":"run","id":"h2","command":"true","timeout":' + b"9" * 5000 + b"}",
        "timeout",
    ),
    ("400-digit version", b'{"v":' + HUGE.encode() + b',"type":"ping","id":"h3"}', "'v'"),
    ("NaN timeout", b'{"v":V,"type":"run","id":"n1","command":"true","timeout":NaN}', "timeout"),
    (
        "Infinity timeout",
        b'{"v":V,"type":"run","id":"n2","command":"true","timeout":Infinity}',
        "timeout",
    ),
    (
        "1e999 timeout",
        b'{"v":V,"type":"run","id":"n3","command":"true","timeout":1e999}',
        "timeout",
    ),
    (
        "boolean timeout",
        b'{"v":V,"type":"run","id":"b1","command":"true","timeout":true}',
        "timeout",
    ),
    ("boolean version", b'{"v":true,"type":"ping","id":"b2"}', "'v'"),
    ("float version", b'{"v":V.0,"type":"ping","id":"b3"}', "'v'"),
    ("surrogate in command", b'{"v":V,"type":"run","id":"s1","command":"echo \\ud800"}', "command"),
    (
        "surrogate in env value",
        b'{"v":V,"type":"run","id":"s2","command":"true","env":{"A":"\\udfff"}}',
        "env",
    ),
    (
        "surrogate in env name",
        b'{"v":V,"type":"run","id":"s3","command":"true","env":{"\\ud800":"x"}}',
        "env",
    ),
    (
        "surrogate in cwd",
        b'{"v":V,"type":"run","id":"s4","command":"true","cwd":"/tmp/\\ud800"}',
        "cwd",
    ),
    ("NUL in cwd", b'{"v":V,"type":"run","id":"s5","command":"true","cwd":"/tmp\\u0000x"}', "cwd"),
    ("surrogate in id", b'{"v":V,"type":"ping","id":"\\ud800"}', "'id'"),
    ("raw surrogate bytes", b'{"v":V,"type":"ping","id":"\xed\xa0\x80"}', "UTF-8"),
    ("invalid UTF-8", b'{"v":V,"type":"run","id":"u1","command":"\xff"}', "UTF-8"),
    (
        "UTF-16 header",
        f'{{"v":{PROTOCOL_VERSION},"type":"ping","id":"u2"}}'.encode("utf-16"),
        "UTF-8",
    ),
    ("type not a string", b'{"v":V,"type":["run"],"id":"t1"}', "'type'"),
    (
        "deep nesting",
        b'{"v":V,"type":"ping","id":"d1","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "nested",
    ),
    (
        "deep nesting in env",
        b'{"v":V,"type":"run","id":"d2","command":"true","env":{"A":'
        + b"[" * 500
        + b"]" * 500
        + b"}}",
        "env",
    ),
]


@pytest.fixture(scope="module")
def shared_agent() -> Iterator[LocalAgents]:
    with LocalAgents(1) as started:
        yield started


@pytest.mark.parametrize(
    "raw, field", [(raw, word) for _, raw, word in MALFORMED], ids=[c for c, _, _ in MALFORMED]
)
def test_every_malformed_header_gets_bad_request_naming_the_field(
    ctx: Ctx, shared_agent: LocalAgents, raw: bytes, field: str
) -> None:
    client = WireClient(ctx, shared_agent)
    client.send_raw(raw.replace(b'"v":V', f'"v":{PROTOCOL_VERSION}'.encode()))
    reply, _ = client.receive()
    assert (reply["type"], reply.get("code")) == ("error", "bad_request"), reply
    assert field in reply["message"], reply
    # The reply itself is strict, valid JSON and Unicode whatever the request held.
    reply["id"].encode("utf-8")  # "" when the header could not be read that far
    assert client.request(header("ping", "after"))["type"] == "pong"
    client.close()


def test_bad_input_is_counted_and_logged_without_tracebacks(ctx: Ctx, agent: LocalAgents) -> None:
    client = WireClient(ctx, agent)
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < 2.5:
        for _, raw, _ in MALFORMED:
            client.send_raw(raw.replace(b'"v":V', f'"v":{PROTOCOL_VERSION}'.encode()))
            sent += 1
        time.sleep(0.05)
    # Every bad message got its own reply ...
    for _ in range(sent):
        reply, _ = client.receive()
        assert reply["type"] == "error"
    elapsed = time.monotonic() - started
    assert client.request(header("ping", "alive"))["type"] == "pong"
    client.close()
    log = agent_log(agent)
    assert "Traceback" not in log, log[-3000:]
    assert "Task exception was never retrieved" not in log
    # ... and the log says so at most about once a second, with a count.
    bad_lines = [line for line in log.splitlines() if "bad message" in line]
    assert 1 <= len(bad_lines) <= elapsed + 2, bad_lines
    assert any("suppressed" in line for line in bad_lines), bad_lines


# --- Row: unlisted request types ----------------------------------------------------------------


@pytest.mark.parametrize(
    "msg_type", ["shutdown", "__init__", "exec", "RUN", "exit", "output", "pong", "x" * 500]
)
def test_unlisted_request_types_get_not_allowed(
    ctx: Ctx, shared_agent: LocalAgents, msg_type: str, tmp_path: Path
) -> None:
    marker = tmp_path / "reached"
    client = WireClient(ctx, shared_agent)
    client.send(header(msg_type, "evil", command=f"touch {marker}"))
    reply, _ = client.receive()
    assert (reply["type"], reply["code"], reply["id"]) == ("error", "not_allowed", "evil"), reply
    client.close()
    assert not marker.exists()


# --- Row: key files and denied handshakes -------------------------------------------------------


def test_an_unparsable_client_key_stops_the_agent_at_start_up(run: object, tmp_path: Path) -> None:
    assert callable(run)
    keys = tmp_path / "k"
    generate_keys(keys)
    bad = keys / "authorized_clients" / "broken.key"
    bad.write_text("this is not a ZeroMQ certificate\n")
    result = run(AGENT, "serve", "--bind", "127.0.0.1", "--port", "0", "--keys", str(keys))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "broken.key" in result.stderr
    assert "ready" not in result.stdout
    assert "Traceback" not in result.stderr


def test_denied_handshakes_are_logged_with_address_and_fingerprint(
    ctx: Ctx, agent: LocalAgents, tmp_path: Path
) -> None:
    stranger = write_keypair(tmp_path / "stranger", "client")
    server_public, _ = zmq.auth.load_certificate(str(agent.keys_dir / "agent.key"))
    assert server_public is not None
    attempts = 20
    for _ in range(attempts):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.curve_serverkey = server_public
        sock.curve_publickey = stranger.public
        sock.curve_secretkey = stranger.secret
        sock.connect(f"tcp://127.0.0.1:{agent.agents[0].port}")
        sock.send(json.dumps(header("ping", "stranger")).encode())
        assert sock.poll(100) == 0
        sock.close(linger=0)
    good = WireClient(ctx, agent)
    assert good.request(header("ping", "friend"))["type"] == "pong"
    good.close()
    deadline = time.monotonic() + 5
    while "denied" not in agent_log(agent) and time.monotonic() < deadline:
        time.sleep(0.05)
    denied = [line for line in agent_log(agent).splitlines() if "denied" in line]
    assert denied, agent_log(agent)
    assert "127.0.0.1" in denied[0] and fingerprint(stranger.public) in denied[0], denied
    assert len(denied) < attempts / 2, denied  # rate-limited, not one line per attempt


# --- Row: the run's timeout counts queue time ----------------------------------------------------


def test_timeout_counts_from_acceptance_including_the_queue(ctx: Ctx) -> None:
    with LocalAgents(1, concurrency=2) as agents:
        hog = WireClient(ctx, agents)
        for i in range(2):
            hog.send(run_header(f"hog-{i}", "sleep 30"))
        deadline = time.monotonic() + 10
        while len(psutil.Process(agents.agents[0].proc.pid).children()) < 2:
            assert time.monotonic() < deadline, "the slot-holding commands never started"
            time.sleep(0.05)
        client = WireClient(ctx, agents)
        started = time.monotonic()
        reply = client.request(run_header("quick", "echo hi", timeout=1), timeout=8.0)
        waited = time.monotonic() - started
        assert reply["type"] == "exit", reply
        assert reply["timed_out"] is True and reply["started"] is False, reply
        assert waited < 1 + 3, f"answered after {waited:.1f}s"
        for i in range(2):
            hog.send(header("cancel", f"hog-{i}"))
        hog.close()
        client.close()


async def test_the_executor_says_when_a_run_never_started() -> None:
    with LocalAgents(1, concurrency=1) as agents:
        executor = agents.executor(0)
        hog = asyncio.create_task(executor.run("sleep 30"))
        deadline = time.monotonic() + 10
        while not psutil.Process(agents.agents[0].proc.pid).children():
            assert time.monotonic() < deadline, "the slot-holding command never started"
            await asyncio.sleep(0.05)
        with pytest.raises(CommandTimeout, match="never started"):
            await executor.run("echo hi", timeout=1.0)
        hog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hog
        await executor.close()


# --- Row: SIGTERM while the agent prints "ready" ------------------------------------------------


def _full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is already full, so the next write to it blocks."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        while True:
            os.write(write_end, b"\0" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(write_end, True)
    return read_end, write_end


def _blocked_writing_a_pipe(pid: int) -> bool:
    try:
        return "pipe_write" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


def _read_to_eof(fd: int, into: bytearray) -> None:
    while chunk := os.read(fd, 1 << 20):
        into += chunk


def test_sigterm_during_the_ready_line_stops_the_agent_cleanly(tmp_path: Path) -> None:
    """The agent is held inside print("ready") (its stdout pipe is full) when SIGTERM comes."""
    read_end, write_end = _full_pipe()
    stderr_path = tmp_path / "agent.err"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-u", AGENT, "serve", "--insecure", "--port", "0"],
            cwd=REPO,
            stdout=write_end,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    os.close(write_end)
    drainer: threading.Thread | None = None
    try:
        deadline = time.monotonic() + 30
        while not _blocked_writing_a_pipe(proc.pid):
            assert proc.poll() is None, stderr_path.read_text()
            assert time.monotonic() < deadline, "the agent never reached its ready line"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGTERM)
        time.sleep(0.2)
        drained = bytearray()
        drainer = threading.Thread(target=_read_to_eof, args=(read_end, drained), daemon=True)
        drainer.start()
        status = proc.wait(timeout=15)
        assert status == 0, f"exit {status}: {stderr_path.read_text()}"
        drainer.join(timeout=5)
        assert re.search(rb"ready on tcp://", drained)
        assert "Traceback" not in stderr_path.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if drainer is not None:
            drainer.join(timeout=5)
        os.close(read_end)


# --- Row: fuzzing over real sockets --------------------------------------------------------------

FUZZ_FRAMES = 3000
FUZZ_HUGE_FRAMES = 20
FUZZ_JUNK_CONNECTIONS = 300
FUZZ_REPLY_WAIT_S = 15.0
FUZZ_RSS_LIMIT = 160 * MiB


def fuzz_bases(cwd: Path) -> list[Message]:
    """The valid requests that fuzz cases are mutated from; runs are harmless and short."""
    return [
        PingRequest(id="p-1"),
        FactsRequest(id="f-1"),
        CancelRequest(id="c-1"),
        RunRequest(id="r-1", command="true", timeout=5.0, env={"FUZZ": "1"}, cwd=str(cwd)),
    ]


def random_frames(rng: random.Random, bases: list[Message]) -> list[bytes]:
    """One fuzz case: random bytes, many frames, empty, or a mutated or odd valid header."""
    kind = rng.randrange(7)
    if kind == 0:
        return [rng.randbytes(rng.randrange(1, 200))]
    if kind == 1:
        return [rng.randbytes(rng.randrange(0, 40)) for _ in range(rng.randrange(3, 7))]
    if kind == 2:
        return [b""]
    if kind in (3, 4):  # a few bytes flipped, inserted, or cut off
        raw = bytearray(encode(rng.choice(bases))[0])
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(raw)) if raw else 0
            operation = rng.randrange(3)
            if operation == 0 and raw:
                raw[at] ^= 1 << rng.randrange(8)
            elif operation == 1:
                raw[at:at] = rng.randbytes(rng.randrange(1, 4))
            elif raw:
                del raw[at:]
        return [bytes(raw)]
    if kind == 5:  # one field replaced by an odd value
        fields = json.loads(encode(rng.choice(bases))[0])
        name = rng.choice(sorted(fields))
        odd: list[Any] = [10**400, math.nan, math.inf, True, "\ud800", [[[[]]]], {"a": "\udfff"}]
        fields[name] = rng.choice([*odd, None, ""])
        return [json.dumps(fields).encode()]
    return [encode(rng.choice(bases))[0], rng.randbytes(rng.randrange(0, 64))]  # a stray body


def is_credit(frames: list[bytes]) -> bool:
    """Credit grants are one-way: the agent answers only malformed ones."""
    try:
        parsed = json.loads(frames[0])
    except (ValueError, RecursionError, IndexError):
        return False
    return isinstance(parsed, dict) and parsed.get("type") == "credit"


def test_thousands_of_random_frames_leave_the_agent_serving(
    spawn: object, tmp_path: Path, ctx: Ctx
) -> None:
    assert callable(spawn)
    agent_script = str(REPO / AGENT)
    agent = spawn(
        agent_script, "serve", "--insecure", "--port", "0", "--node-id", "fuzz", cwd=tmp_path
    )
    port = int(agent.wait_for(r"ready on tcp://127.0.0.1:(\d+)", timeout=30).group(1))
    endpoint = f"tcp://127.0.0.1:{port}"
    rng = random.Random(20240610)
    bases = fuzz_bases(tmp_path)
    answered = one_way = 0
    with RssSampler(agent.pid) as rss:
        client = ctx.socket(zmq.DEALER)  # NULL mechanism: every frame reaches the codec
        client.setsockopt(zmq.LINGER, 0)
        client.connect(endpoint)
        for _ in range(FUZZ_FRAMES):
            frames = random_frames(rng, bases)
            client.send_multipart(frames)
            if is_credit(frames):
                one_way += 1
                continue
            answer_to(client)  # one at a time: every case must be answered
            answered += 1
        for _ in range(FUZZ_HUGE_FRAMES):  # each makes libzmq drop that connection
            big = ctx.socket(zmq.DEALER)
            big.setsockopt(zmq.LINGER, 0)
            big.connect(endpoint)
            big.send(rng.randbytes(MAX_REQUEST_BYTES + rng.randrange(1, 4096)))
            time.sleep(0.02)
            big.close()
        client.send(encode(RunRequest(id="final", command="echo still here", timeout=10.0))[0])
        final = answer_to(client)
        client.send(encode(PingRequest(id="final-ping"))[0])
        pong = answer_to(client)
        client.close()
    alive = agent.popen.poll() is None
    print(
        f"fuzz: {FUZZ_FRAMES} frames sent ({answered} answered, {one_way} one-way credits), "
        f"{FUZZ_HUGE_FRAMES} oversized; agent alive={alive}; peak RSS {rss.peak / MiB:.1f} MiB"
    )
    assert final["type"] == "exit" and final["exit_status"] == 0
    assert pong["type"] == "pong"
    assert alive
    assert rss.peak < FUZZ_RSS_LIMIT
    assert "Traceback" not in agent.output()


def answer_to(sock: zmq.Socket[bytes]) -> dict[str, Any]:
    """The reply that ends the request just sent (skipping accepted, output, heartbeat)."""
    deadline = time.monotonic() + FUZZ_REPLY_WAIT_S
    while True:
        left_ms = int((deadline - time.monotonic()) * 1000)
        assert left_ms > 0 and sock.poll(left_ms), "a fuzz frame got no answer"
        reply = json.loads(sock.recv_multipart()[0])
        if reply.get("type") in TERMINAL_TYPES:
            assert isinstance(reply, dict)
            return reply


def junk_payload(rng: random.Random) -> bytes:
    """Bytes that are not a CURVE handshake: noise, a greeting cut short, a bad HELLO."""
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"CURVE".ljust(20, b"\x00")
    greeting += b"\x00" * 32
    choice = rng.randrange(5)
    if choice == 0:
        return rng.randbytes(rng.randrange(1, 2048))
    if choice == 1:
        return greeting[: rng.randrange(1, len(greeting))]
    if choice == 2:
        return greeting + rng.randbytes(rng.randrange(1, 512))
    if choice == 3:
        return greeting + b"\x04\xc8\x05HELLO" + rng.randbytes(194)  # a HELLO of noise
    return b""  # connect and hang up


async def test_raw_tcp_junk_leaves_a_curve_agent_serving(agent: LocalAgents) -> None:
    rng = random.Random(7)
    process = agent.agents[0]
    with RssSampler(process.proc.pid) as rss:
        for _ in range(FUZZ_JUNK_CONNECTIONS):
            with socket.create_connection(("127.0.0.1", process.port), timeout=5) as raw:
                if payload := junk_payload(rng):
                    raw.sendall(payload)
        executor = agent.executor(0)
        try:
            result = await executor.run("echo ok")
            await executor.ping()
        finally:
            await executor.close()
    alive = process.proc.poll() is None
    print(
        f"junk: {FUZZ_JUNK_CONNECTIONS} raw TCP connections; agent alive={alive}; "
        f"peak RSS {rss.peak / MiB:.1f} MiB"
    )
    assert result.stdout == b"ok\n"
    assert alive
    assert rss.peak < FUZZ_RSS_LIMIT
