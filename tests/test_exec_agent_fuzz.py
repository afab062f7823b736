"""Fuzzing the node agent's header codec in process (hypothesis), in both directions.

For any frames at all (random bytes and frame counts, JSON headers with odd values, valid
requests with a field replaced or bytes flipped, and inputs that once broke it): only
``ProtocolError`` escapes ``decode``; every failure maps to an ``error`` reply the agent can
send (strict JSON, valid Unicode, decodable by a client); and whatever does decode holds only
valid Unicode, finite numbers and sane integers, and survives a round trip. The conftest
loads a derandomized hypothesis profile in CI.

The same kinds of frames sent to a real agent over real sockets:
test_exec_agent_hardening.py (the fuzz section).
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cluster_runner_simulation.agent_protocol import (
    PROTOCOL_VERSION,
    REPLIES,
    REQUESTS,
    CancelRequest,
    ErrorReply,
    FactsRequest,
    Message,
    REPLY_TYPES,
    REQUEST_TYPES,
    PingRequest,
    ProtocolError,
    RunRequest,
    encode,
    error_reply,
    request_id_of,
)

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
TYPE_NAMES = sorted(REQUEST_TYPES | REPLY_TYPES) + ["credit", "shutdown", "__init__", "", "RUN"]


def valid_requests() -> list[Message]:
    return [
        PingRequest(id="p-1"),
        FactsRequest(id="f-1"),
        CancelRequest(id="c-1"),
        RunRequest(id="r-1", command="true", timeout=5.0, env={"FUZZ": "1"}, cwd="/"),
        RunRequest(id="r-2", command="echo hi", timeout=None, env={}, cwd=None),
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
    assert isinstance(request_id_of(frames), str)
    for codec in (REQUESTS, REPLIES):
        try:
            codec.decode_frames(frames)
        except ProtocolError:
            pass


@settings(max_examples=1000, deadline=None)
@given(ANY_FRAMES)
@with_known_bad
def test_every_decode_failure_maps_to_a_reply_the_agent_can_send(frames: list[bytes]) -> None:
    try:
        REQUESTS.decode_frames(frames)
    except ProtocolError as exc:
        reply = error_reply_for(exc)
        wire = encode(reply)
        header = json.loads(wire[0].decode("utf-8"), parse_constant=_refuse_constant)
        assert_clean(header, "error reply")
        assert REPLIES.decode_frames(wire) == (reply, None)
        assert reply.code in ("bad_request", "not_allowed")


@settings(max_examples=1000, deadline=None)
@given(ANY_FRAMES)
@with_known_bad
def test_whatever_decodes_is_clean_and_round_trips(frames: list[bytes]) -> None:
    for codec in (REQUESTS, REPLIES):
        try:
            message, body = codec.decode_frames(frames)
        except ProtocolError:
            continue
        assert_clean(msgspec.to_builtins(message), type(message).__name__)
        assert codec.decode_frames(encode(message, body)) == (message, body)
