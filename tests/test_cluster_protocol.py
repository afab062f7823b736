"""The wire codec: every message round-trips, the limits of docs/wire-protocol.md hold, and no
input makes decode raise anything but ProtocolError (hypothesis fuzz)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster_patterns.protocol import MAX_BATCH, MAX_CAPABILITIES, MAX_CAPACITY, MAX_MESSAGE_BYTES
from cluster_patterns.protocol import MAX_RUNNING, MAX_TASK_MS, PROTOCOL_VERSION, Accepted
from cluster_patterns.protocol import Assignment, Completed, CoordinatorHeartbeat, Deregister
from cluster_patterns.protocol import Dispatch, Drain, Heartbeat, Message, MsgType, NodeEvent
from cluster_patterns.protocol import NodeStatus, ProtocolError, Register, Reset, Results, Status
from cluster_patterns.protocol import Submit, TaskOutcome, TaskResult, TaskSpec, TaskStats, Totals
from cluster_patterns.protocol import Welcome, decode, encode, message_type

EXAMPLES: list[Message] = [
    Register("w1", 4, ["echo", "sleep"], ["t1"], 1234),
    Heartbeat("w1", 1, ["t1"], 12.5, 40.0, 0.3),
    Results("w1", [TaskResult("t1", 1, True, "out", "", 0.01), TaskResult("t2", 2, False)]),
    Drain("w1"),
    Deregister("w1"),
    Welcome("coord-1", 0.5, 3),
    Dispatch([Assignment("t1", 1, "sleep", 20, ""), Assignment("t2", 1, "echo", 0, "hé")]),
    CoordinatorHeartbeat("coord-1"),
    Reset("unknown worker"),
    decode(
        b'{"v":1,"type":"REFUSED","worker_id":"w1","reason":"worker_id_in_use",'
        b'"detail":"held by a live peer","retry_after_s":1.5}'
    ),
    Submit("c1", [TaskSpec("t1", "echo", 0, "x"), TaskSpec("t2", "cpu", 5)]),
    Accepted(["t1", "t2"]),
    Completed([TaskOutcome("t1", True, "x", "", 1, "w1", 0.002)]),
    Status(
        "coord-1",
        7,
        0.5,
        3,
        [NodeStatus("w1", "suspect", 1.1, 2, 4, ["echo"], 10.0, 20.0, 0.5, 99)],
        Totals(submitted=3, done=2, failed=1),
    ),
    NodeEvent("w1", "dead", 1700000000.5, detection_latency_s=1.55),
    NodeEvent("w1", "alive", 1700000003.0, recovery_s=2.4),
    TaskStats([0.001, 0.002], 2, 0),
]


def test_every_message_type_has_an_example() -> None:
    assert {message_type(m) for m in EXAMPLES} == set(MsgType)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    frame = encode(message)
    body = json.loads(frame)
    assert body["v"] == PROTOCOL_VERSION and body["type"] == message_type(message)
    assert decode(frame) == message


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'"x"',
        b"{}",
        b'{"v":2,"type":"DRAIN","worker_id":"w"}',
        b'{"v":true,"type":"DRAIN","worker_id":"w"}',
        b'{"v":1,"type":"NOPE"}',
        b'{"v":1,"type":"DRAIN"}',
        b'{"v":1,"type":"DRAIN","worker_id":""}',
        b'{"v":1,"type":"DRAIN","worker_id":5}',
        b'{"v":1,"type":"WELCOME","coordinator_id":"c","heartbeat_interval_s":NaN,"liveness":3}',
        b'{"v":1,"type":"WELCOME","coordinator_id":"c","heartbeat_interval_s":1,"liveness":true}',
        b'{"v":1,"type":"DISPATCH","tasks":[{"task_id":"t"}]}',
        b'{"v":1,"type":"NODE_EVENT","node_id":"w","event":"exploded","at":1}',
        b"[" * 100_000,
        b'{"v":1,"type":"RESET","reason":"' + b"x" * MAX_MESSAGE_BYTES + b'"}',
    ],
)
def test_bad_frames_raise_protocol_error(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(frame)


def test_encode_refuses_oversized_messages() -> None:
    tasks = [TaskSpec(f"t{i}", "echo", 0, "\x00" * 1024) for i in range(400)]
    with pytest.raises(ProtocolError):
        encode(Submit("c1", tasks))


def _frame(body: dict[str, object]) -> bytes:
    return json.dumps({"v": 1, **body}, ensure_ascii=False).encode()


def _dispatch(**task: object) -> bytes:
    return _frame({"type": "DISPATCH", "tasks": [{"task_id": "t", "attempt": 1, **task}]})


def _register(**fields: object) -> bytes:
    body = {"type": "REGISTER", "worker_id": "w1", "capacity": 1, "capabilities": ["echo"]}
    return _frame({**body, **fields})


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        (_dispatch(kind="sleep", ms=MAX_TASK_MS + 1), "$.tasks[0].ms"),
        (_dispatch(kind="sleep", ms=-1), "$.tasks[0].ms"),
        (_dispatch(kind="echo", attempt=0), "$.tasks[0].attempt"),
        (_dispatch(kind="x" * 129), "$.tasks[0].kind"),
        (_dispatch(kind="echo", payload="\U0001f600" * 1025), "$.tasks[0].payload"),
        (_register(worker_id="\U0001f600" * 129), "$.worker_id"),
        (_register(capacity=0), "$.capacity"),
        (_register(capacity=MAX_CAPACITY + 1), "$.capacity"),
        (_register(capabilities=["k"] * (MAX_CAPABILITIES + 1)), "$.capabilities"),
        (_register(running=[f"t{i}" for i in range(MAX_RUNNING + 1)]), "$.running"),
        (
            _frame(
                {"type": "HEARTBEAT", "worker_id": "w", "in_flight": 0, "running": [],
                 "cpu_percent": 100.5, "memory_percent": 1, "load1": 0}
            ),
            "$.cpu_percent",
        ),
        (
            _frame(
                {"type": "WELCOME", "coordinator_id": "c", "heartbeat_interval_s": 0,
                 "liveness": 3}
            ),
            "$.heartbeat_interval_s",
        ),
        (
            _frame({"type": "ACCEPTED", "task_ids": [f"t{i}" for i in range(MAX_BATCH + 1)]}),
            "$.task_ids",
        ),
        (_frame({"type": "NODE_EVENT", "node_id": "w", "event": "exploded", "at": 1}), "$.event"),
    ],
)  # fmt: skip
def test_limits_are_enforced_by_the_codec_and_named(frame: bytes, field: str) -> None:
    with pytest.raises(ProtocolError, match=field.replace("$", r"\$").replace("[", r"\[")):
        decode(frame)


def test_lengths_count_code_points_not_bytes_or_utf16_units() -> None:
    # 128 emoji: 512 bytes of UTF-8 and 256 UTF-16 units, but 128 code points: an id.
    emoji_id = "\U0001f600" * 128
    message = decode(_register(worker_id=emoji_id))
    assert isinstance(message, Register) and message.worker_id == emoji_id
    task = decode(_dispatch(kind="sleep", ms=MAX_TASK_MS, payload="\u00e9" * 1024))
    assert isinstance(task, Dispatch) and task.tasks[0].ms == MAX_TASK_MS


def test_enum_fields_decode_as_their_enums() -> None:
    from cluster_patterns.protocol import NodeEventKind, NodeState

    event = decode(_frame({"type": "NODE_EVENT", "node_id": "w", "event": "dead", "at": 1}))
    assert isinstance(event, NodeEvent) and event.event is NodeEventKind.DEAD
    status = decode(encode(EXAMPLES[13]))
    assert isinstance(status, Status) and status.nodes[0].state is NodeState.SUSPECT


def test_a_frame_without_v_is_version_1_and_other_versions_are_refused() -> None:
    assert decode(b'{"type":"DRAIN","worker_id":"w"}') == Drain("w")
    with pytest.raises(ProtocolError, match="unsupported protocol version"):
        decode(b'{"type":"DRAIN","worker_id":"w","v":2}')


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(frame: bytes) -> None:
    try:
        decode(frame)
    except ProtocolError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([t.value for t in MsgType] + ["BOGUS"]),
    st.sampled_from([PROTOCOL_VERSION, PROTOCOL_VERSION, 0, 2, "1", None]),
    st.dictionaries(
        st.sampled_from(
            [
                "worker_id",
                "capacity",
                "capabilities",
                "running",
                "tasks",
                "results",
                "nodes",
                "totals",
                "task_ids",
                "outcomes",
                "latencies_s",
                "done",
                "failed",
                "node_id",
                "event",
                "at",
                "reason",
                "client_id",
                "coordinator_id",
                "seq",
                "liveness",
                "heartbeat_interval_s",
                "in_flight",
                "cpu_percent",
                "memory_percent",
                "load1",
            ]
        ),
        json_values,
    ),
)
def test_fuzz_structured_messages(
    type_name: str, version: object, fields: dict[str, object]
) -> None:
    frame = json.dumps({"v": version, "type": type_name, **fields}).encode()
    try:
        message = decode(frame)
    except ProtocolError:
        return
    assert decode(encode(message)) == message  # whatever is accepted re-encodes cleanly


# --- Hostile values at every place of every message (issue 10) -------------------------------
# A frame is built from a valid example with one value replaced by raw JSON text, so the
# nasty value sits exactly where a real decoder meets it. Invariants: only ProtocolError
# escapes decode; whatever decode accepts re-encodes, and every string in it is valid Unicode
# (so a daemon can print or log it without crashing).

PLACEHOLDER = "\x00PLACEHOLDER\x00"
NASTY_JSON: list[bytes] = [
    b"9" * 5000,  # a 5,000-digit integer
    b"-" + b"9" * 400,
    b"1" + b"0" * 400 + b".5",
    b"1e999",  # parses as inf
    b"-1e999",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"[" * 100_000 + b"]" * 100_000,
    b"{" + b'"a":{' * 50_000 + b"}" * 50_001,
    b"[" * 1000 + b"]" * 1000,
    b'"\xff\xfe"',  # not UTF-8
    b'"\xc0\x80"',  # overlong NUL
    b'"\xed\xa0\x80"',  # a UTF-8 encoded surrogate
    b'"\\ud800"',  # a lone surrogate, escaped
    b'"x\\udfff"',
    b'"\\ud83d\\ude00"',  # a valid pair (an emoji): fine
    b"true",
    b"false",
    b"null",
    b"-1",
    b"0",
    b"1.5",
    b'""',
    b'"w"',
    b"[]",
    b"{}",
    b'["\\ud800"]',
    b'[{"task_id":"\\udc00","kind":"echo"}]',
]


def _paths(value: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Every place in a JSON document where a value sits."""
    found: list[tuple[object, ...]] = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found.extend(_paths(child, (*prefix, key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.extend(_paths(child, (*prefix, index)))
    return found


def _replace(document: object, path: tuple[object, ...], new: object) -> object:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(document, dict):
        return {k: (_replace(v, rest, new) if k == head else v) for k, v in document.items()}
    assert isinstance(document, list)
    return [(_replace(v, rest, new) if i == head else v) for i, v in enumerate(document)]


def _all_strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in _all_strings(item)]
    if hasattr(value, "__struct_fields__"):
        fields = value.__struct_fields__
        return [s for name in fields for s in _all_strings(getattr(value, name))]
    return []


def assert_decodes_safely(frame: bytes) -> None:
    """Only ProtocolError may escape, and anything accepted is printable and re-encodable."""
    try:
        message = decode(frame)
    except ProtocolError:
        return
    for text in _all_strings(message):
        text.encode("utf-8")  # UnicodeEncodeError: a lone surrogate got through
    assert decode(encode(message)) == message


@st.composite
def hostile_frames(draw: st.DrawFn) -> bytes:
    example = draw(st.sampled_from(EXAMPLES))
    document = json.loads(encode(example))
    path = draw(st.sampled_from(_paths(document)))
    text = json.dumps(_replace(document, path, PLACEHOLDER))
    raw = draw(st.sampled_from(NASTY_JSON))
    return text.encode().replace(json.dumps(PLACEHOLDER).encode(), raw)


@settings(max_examples=600, deadline=None)
@given(hostile_frames())
def test_fuzz_hostile_values_in_every_field(frame: bytes) -> None:
    assert_decodes_safely(frame)


def test_every_hostile_value_in_every_place_of_every_message() -> None:
    """The exhaustive version of the fuzz test above: each value at each place, once."""
    hole = json.dumps(PLACEHOLDER).encode()
    tried = 0
    for example in EXAMPLES:
        document = json.loads(encode(example))
        for path in _paths(document):
            text = json.dumps(_replace(document, path, PLACEHOLDER)).encode()
            for raw in NASTY_JSON:
                assert_decodes_safely(text.replace(hole, raw))
                tried += 1
    assert tried > 2000


@pytest.mark.parametrize("raw", NASTY_JSON, ids=lambda r: repr(r[:12]))
def test_hostile_values_as_worker_id_of_a_register(raw: bytes) -> None:
    frame = b'{"v":1,"type":"REGISTER","capacity":1,"capabilities":["echo"],"worker_id":' + raw
    assert_decodes_safely(frame + b"}")


@pytest.mark.parametrize(
    "frame",
    [
        b'{"v":1,"type":"REGISTER","worker_id":"w\\ud800","capacity":1,"capabilities":["echo"]}',
        b'{"v":1,"type":"DRAIN","worker_id":"\xed\xa0\x80"}',
        b'{"v":1,"type":"SUBMIT","client_id":"c","tasks":[{"task_id":"t","kind":"echo",'
        b'"payload":"\\udc00"}]}',
        b'{"v":1,"type":"RESET","reason":"\xff"}',
    ],
)
def test_strings_that_are_not_valid_unicode_are_refused(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(frame)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(encode(draw(st.sampled_from(EXAMPLES))))
    for _ in range(draw(st.integers(1, 4))):
        if not frame:
            break
        at = draw(st.integers(0, len(frame) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "repeat"]))
        if action == "flip":
            frame[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            frame[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del frame[at : at + draw(st.integers(1, 8))]
        elif action == "truncate":
            del frame[at:]
        else:
            frame[at:at] = frame[at : at + draw(st.integers(1, 64))] * draw(st.integers(2, 50))
    return bytes(frame)


@settings(max_examples=600, deadline=None)
@given(mutated_frames())
def test_fuzz_mutated_valid_frames(frame: bytes) -> None:
    assert_decodes_safely(frame)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512), st.integers(0, 200))
def test_describe_never_fails(frame: bytes, limit: int) -> None:
    from cluster_patterns.protocol import describe

    text = describe(frame, limit)
    assert isinstance(text, str) and text.isprintable()


def test_each_role_handles_exactly_the_messages_sent_to_it() -> None:
    """The do_<Message> tables: a misspelt handler would silently make a message 'bad'."""
    from cluster_patterns import protocol as p
    from cluster_patterns.client_session import ClientSession
    from cluster_patterns.dispatcher import Dispatcher
    from cluster_patterns.worker_session import WorkerConfig, WorkerSession

    coordinator = Dispatcher("c", heartbeat_interval_s=0.5, liveness=3)
    worker = WorkerSession(WorkerConfig("w1"))
    client = ClientSession("c1", heartbeat_interval_s=0.5, liveness=3)
    assert set(p.handler_table(coordinator)) == {
        p.Register, p.Heartbeat, p.Results, p.Drain, p.Deregister, p.Submit,
    }  # fmt: skip
    assert set(p.handler_table(worker)) == {
        p.Welcome, p.Dispatch, p.CoordinatorHeartbeat, p.Reset, p.Refused,
    }  # fmt: skip
    assert set(p.handler_table(client)) == {p.Accepted, p.Completed, p.CoordinatorHeartbeat}
    for role in (coordinator, worker, client):
        stray = [n for n in dir(role) if n.startswith("do_")]
        assert len(stray) == len(p.handler_table(role)), stray
