"""Fuzzing the node agent's header codec, in process (hypothesis) and over real sockets.

In process, for any frames at all: only ``ProtocolError`` escapes ``decode``; every failure
maps to an ``error`` reply the agent can send (strict JSON, valid Unicode, decodable by a
client); and whatever does decode holds only valid Unicode, finite numbers and sane integers.
The conftest loads a derandomized hypothesis profile in CI.

Over real sockets: a few thousand random and mutated frames go, one at a time, to a real
``--insecure`` agent on loopback (so every frame reaches the codec), each must be answered,
and then the agent must still run a command and answer ``ping``; a few hundred raw TCP
connections send junk to a CURVE agent's port. The agent's RSS is sampled all along.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cluster_runner_simulation.agent_protocol import (
    MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
    REPLY_TYPES,
    REQUEST_TYPES,
    CancelRequest,
    ErrorReply,
    FactsRequest,
    Message,
    MsgType,
    PingRequest,
    ProtocolError,
    RunRequest,
    decode,
    encode,
)
from cluster_runner_simulation.local_sshd import LocalAgents
from conftest import REPO

MiB = 1024 * 1024
AGENT = str(REPO / "03-cluster-runner-simulation" / "zmq_node_agent.py")

# --- Strategies ----------------------------------------------------------------------------------

WEIRD_NUMBERS = st.sampled_from(
    [10**400, -(10**400), 2**63, 2**64 + 1, -1, 0, 1, 1.5, 1e308, -0.0, True, False]
) | st.sampled_from([math.nan, math.inf, -math.inf])
ANY_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=16)
SURROGATES = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1)
MIXED_TEXT = st.lists(st.sampled_from(["a", "\ud800", "\udfff", "\x00", "é", "/", " "])).map(
    "".join
)
JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | WEIRD_NUMBERS | ANY_TEXT
JSON_VALUES = st.recursive(
    JSON_LEAVES | SURROGATES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT | SURROGATES, inner),
    max_leaves=12,
)
HEADER_KEYS = ["v", "type", "id", "command", "timeout", "env", "cwd", "bytes", "stream", "code"]
TYPE_NAMES = [t.value for t in MsgType] + ["credit", "shutdown", "__init__", "", "RUN"]


def valid_requests() -> list[Message]:
    return [
        PingRequest("p-1"),
        FactsRequest("f-1"),
        CancelRequest("c-1"),
        RunRequest("r-1", command="true", timeout=5.0, env={"FUZZ": "1"}, cwd="/"),
        RunRequest("r-2", command="echo hi", timeout=None, env={}, cwd=None),
    ]


@st.composite
def mutated_frames(draw: st.DrawFn) -> list[bytes]:
    """A valid request's frames with a few bytes flipped, inserted, deleted or cut off."""
    raw = bytearray(encode(draw(st.sampled_from(valid_requests())))[0])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(0, len(raw) - 1)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip" and raw:
            raw[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete" and raw:
            del raw[at]
        elif action == "truncate":
            del raw[at:]
    return [bytes(raw)]


@st.composite
def weird_headers(draw: st.DrawFn) -> list[bytes]:
    """A JSON header with plausible keys holding arbitrary values (huge, NaN, surrogates...)."""
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": draw(st.sampled_from(TYPE_NAMES))}
    header.update(draw(st.dictionaries(st.sampled_from(HEADER_KEYS), JSON_VALUES, max_size=6)))
    frames = [json.dumps(header).encode()]
    if draw(st.booleans()):
        frames.append(draw(st.binary(max_size=16)))
    return frames


@st.composite
def one_odd_field(draw: st.DrawFn) -> list[bytes]:
    """A valid request with one field (or one env entry) replaced by an arbitrary value."""
    header = json.loads(encode(draw(st.sampled_from(valid_requests())))[0])
    field = draw(st.sampled_from(sorted(header) + ["env"]))
    value = draw(st.one_of(WEIRD_NUMBERS, SURROGATES, MIXED_TEXT, JSON_VALUES))
    if field == "env" and draw(st.booleans()):
        value = {draw(ANY_TEXT | SURROGATES): value}
    header[field] = value
    return [json.dumps(header).encode()]


ANY_FRAMES = st.one_of(
    st.lists(st.binary(max_size=64), max_size=5),
    mutated_frames(),
    weird_headers(),
    one_odd_field(),
    one_odd_field(),
)


# Inputs that once broke the decoder, always tried first (hypothesis ``@example``).
KNOWN_BAD: list[list[bytes]] = [
    [
        b'{"v":%d,"type":"run","id":"a","command":"true","timeout":%s}'
        % (PROTOCOL_VERSION, b"9" * 400)
    ],
    [
        b'{"v":%d,"type":"run","id":"b","command":"true","timeout":%s}'
        % (PROTOCOL_VERSION, b"9" * 5000)
    ],
    [b'{"v":%d,"type":"run","id":"c","command":"echo \\ud800"}' % PROTOCOL_VERSION],
    [b'{"v":%d,"type":"run","id":"d","command":"true","cwd":"/\\u0000"}' % PROTOCOL_VERSION],
    [b'{"v":true,"type":"ping","id":"e"}'],
    [b'{"v":%d,"type":"ping","id":"f"}' % PROTOCOL_VERSION, b"body", b"more"],
]


def with_known_bad(test: Any) -> Any:
    for frames in KNOWN_BAD:
        test = example(frames)(test)
    return test


def error_reply_for(exc: ProtocolError) -> ErrorReply:
    from cluster_runner_simulation.agent_protocol import error_reply

    reply = error_reply(exc)
    assert isinstance(reply, ErrorReply)
    return reply


def _refuse_constant(name: str) -> None:
    raise AssertionError(f"non-standard JSON constant {name} in a reply")


def assert_clean(value: object, where: str) -> None:
    """Valid Unicode, finite numbers and integers a 64-bit client can hold, all the way down."""
    if isinstance(value, str):
        value.encode("utf-8")  # raises on a lone surrogate
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        assert -(2**63) <= value < 2**63, where
    elif isinstance(value, float):
        assert math.isfinite(value), where
    elif isinstance(value, dict):
        for key, item in value.items():
            assert_clean(key, where)
            assert_clean(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for item in value:
            assert_clean(item, where)


# --- Properties ----------------------------------------------------------------------------------


@settings(max_examples=1000, deadline=None)
@given(ANY_FRAMES)
@with_known_bad
def test_only_the_protocol_error_escapes_the_decoder(frames: list[bytes]) -> None:
    for allowed in (REQUEST_TYPES, REPLY_TYPES):
        try:
            decode(frames, allowed)
        except ProtocolError:
            pass


@settings(max_examples=1000, deadline=None)
@given(ANY_FRAMES)
@with_known_bad
def test_every_decode_failure_maps_to_a_reply_the_agent_can_send(frames: list[bytes]) -> None:
    try:
        decode(frames, REQUEST_TYPES)
    except ProtocolError as exc:
        reply = error_reply_for(exc)
        wire = encode(reply)
        header = json.loads(wire[0].decode("utf-8"), parse_constant=_refuse_constant)
        assert_clean(header, "error reply")
        assert decode(wire, REPLY_TYPES) == reply
        assert reply.code in ("bad_request", "not_allowed")


@settings(max_examples=1000, deadline=None)
@given(ANY_FRAMES)
@with_known_bad
def test_whatever_decodes_is_clean_and_round_trips(frames: list[bytes]) -> None:
    try:
        message = decode(frames, REQUEST_TYPES)
    except ProtocolError:
        return
    assert_clean(dataclasses.asdict(message), message.TYPE.value)
    assert decode(encode(message), REQUEST_TYPES) == message


# --- Real sockets --------------------------------------------------------------------------------

FRAMES_SENT = 3000
HUGE_FRAMES = 20
JUNK_CONNECTIONS = 300
REPLY_WAIT_S = 15.0
RSS_LIMIT = 160 * MiB
TERMINAL_TYPES = {"exit", "error", "pong", "facts_reply"}


class RssPeak:
    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssPeak:
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
            self._stop.wait(0.05)


def random_frames(rng: random.Random) -> list[bytes]:
    """One fuzz case: random bytes, many frames, empty, or a mutated/odd valid header."""
    kind = rng.randrange(7)
    if kind == 0:
        return [rng.randbytes(rng.randrange(1, 200))]
    if kind == 1:
        return [rng.randbytes(rng.randrange(0, 40)) for _ in range(rng.randrange(3, 7))]
    if kind == 2:
        return [b""]
    if kind in (3, 4):
        request = rng.choice(valid_requests())
        raw = bytearray(encode(request)[0])
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(raw)) if raw else 0
            op = rng.randrange(3)
            if op == 0 and raw:
                raw[at] ^= 1 << rng.randrange(8)
            elif op == 1:
                raw[at:at] = rng.randbytes(rng.randrange(1, 4))
            elif raw:
                del raw[at:]
        return [bytes(raw)]
    if kind == 5:
        header = json.loads(encode(rng.choice(valid_requests()))[0])
        field = rng.choice(sorted(header))
        header[field] = rng.choice(
            [10**400, math.nan, math.inf, True, "\ud800", [[[[]]]], {"a": "\udfff"}, None, ""]
        )
        return [json.dumps(header).encode()]
    body_header = encode(rng.choice(valid_requests()))
    return [body_header[0], rng.randbytes(rng.randrange(0, 64))]


def is_credit(frames: list[bytes]) -> bool:
    """Credit grants are one-way: the agent answers only malformed ones."""
    try:
        header = json.loads(frames[0])
    except (ValueError, RecursionError, IndexError):
        return False
    return isinstance(header, dict) and header.get("type") == "credit"


def wait_terminal(sock: zmq.Socket[bytes], timeout: float = REPLY_WAIT_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        left = int((deadline - time.monotonic()) * 1000)
        assert left > 0 and sock.poll(left), "a fuzz frame got no answer"
        header = json.loads(sock.recv_multipart()[0])
        if header.get("type") in TERMINAL_TYPES:
            assert isinstance(header, dict)
            return header


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


def test_thousands_of_random_frames_leave_the_agent_serving(
    spawn: object, tmp_path: Path, ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    assert callable(spawn)
    agent = spawn(AGENT, "serve", "--insecure", "--port", "0", "--node-id", "fuzz", cwd=tmp_path)
    port = int(agent.wait_for(r"ready on tcp://127.0.0.1:(\d+)", timeout=30).group(1))
    endpoint = f"tcp://127.0.0.1:{port}"
    rng = random.Random(20240610)
    answered = one_way = 0
    with RssPeak(agent.pid) as rss:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        for _ in range(FRAMES_SENT):
            frames = random_frames(rng)
            sock.send_multipart(frames)
            if is_credit(frames):
                one_way += 1
                continue
            wait_terminal(sock)
            answered += 1
        for _ in range(HUGE_FRAMES):  # each one makes the agent drop that connection
            big = ctx.socket(zmq.DEALER)
            big.setsockopt(zmq.LINGER, 0)
            big.connect(endpoint)
            big.send(rng.randbytes(MAX_REQUEST_BYTES + rng.randrange(1, 4096)))
            time.sleep(0.02)
            big.close()
        sock.send(encode(RunRequest("final", command="echo still here", timeout=10.0))[0])
        final = wait_terminal(sock)
        sock.send(encode(PingRequest("final-ping"))[0])
        pong = wait_terminal(sock)
        sock.close()
    print(
        f"fuzz: {FRAMES_SENT} frames sent ({answered} answered, {one_way} one-way credits), "
        f"{HUGE_FRAMES} oversized; agent alive={agent.popen.poll() is None}; "
        f"peak RSS {rss.peak / MiB:.1f} MiB"
    )
    assert final["type"] == "exit" and final["exit_status"] == 0
    assert pong["type"] == "pong"
    assert agent.popen.poll() is None
    assert rss.peak < RSS_LIMIT
    assert "Traceback" not in agent.output()


def junk_payload(rng: random.Random) -> bytes:
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"CURVE".ljust(20, b"\x00")
    greeting += b"\x00" + b"\x00" * 31
    choice = rng.randrange(5)
    if choice == 0:
        return rng.randbytes(rng.randrange(1, 2048))
    if choice == 1:
        return greeting[: rng.randrange(1, len(greeting))]  # cut short
    if choice == 2:
        return greeting + rng.randbytes(rng.randrange(1, 512))  # garbage HELLO
    if choice == 3:
        return greeting + b"\x04\xc8\x05HELLO" + rng.randbytes(194)  # a HELLO of noise
    return b""  # connect and hang up


async def test_raw_tcp_junk_leaves_a_curve_agent_serving() -> None:
    rng = random.Random(7)
    with LocalAgents(1) as agents:
        process = agents.agents[0]
        with RssPeak(process.proc.pid) as rss:
            for _ in range(JUNK_CONNECTIONS):
                with socket.create_connection(("127.0.0.1", process.port), timeout=5) as raw:
                    payload = junk_payload(rng)
                    if payload:
                        raw.sendall(payload)
            executor = agents.executor(0)
            try:
                result = await executor.run("echo ok")
                await executor.ping()
            finally:
                await executor.close()
        alive = process.proc.poll() is None
    print(
        f"junk: {JUNK_CONNECTIONS} raw TCP connections; agent alive={alive}; "
        f"peak RSS {rss.peak / MiB:.1f} MiB"
    )
    assert result.stdout == b"ok\n"
    assert alive
    assert rss.peak < RSS_LIMIT
