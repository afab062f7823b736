"""The cluster's wire protocol: every message type, one codec, validation at the boundary.

Nothing here touches a socket. Each message is a dataclass; ``encode`` turns one into a
single ZeroMQ frame (UTF-8 JSON object) and ``decode`` turns a frame back into a dataclass,
or raises ``ProtocolError`` - the only exception that ever leaves ``decode``, whatever the
bytes are (malformed, unknown type, wrong version, oversized, wrong field types).

Frame layout (one frame per message; ROUTER adds/strips the peer identity frame):

    {"v": 1, "type": "SUBMIT", "client_id": "...", "tasks": [...]}

Where the messages flow (see docs/wire-protocol.md for the full spec and state machines):

    worker  -> coordinator (5570): REGISTER, HEARTBEAT, RESULTS, DRAIN, DEREGISTER
    coordinator -> worker  (5570): WELCOME, DISPATCH, COORDINATOR_HEARTBEAT, RESET, REFUSED
    client  -> coordinator (5570): SUBMIT
    coordinator -> client  (5570): ACCEPTED, COMPLETED, COORDINATOR_HEARTBEAT
    coordinator -> monitors (PUB 5571): STATUS, NODE_EVENT, TASK_STATS

Try it:
    python -c "from cluster_patterns.protocol import *; \\
        print(decode(encode(Drain(worker_id='w1'))))"

Why JSON: any language decodes it with its standard library, so a worker in Go or Rust
needs no extra dependency; batching several tasks per frame keeps the per-task cost low
(figures in benchmark.py's output and the report).
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Final, Union

PROTOCOL_VERSION: Final = 1
# The codec refuses anything bigger than this; senders split batches to stay below it.
MAX_MESSAGE_BYTES: Final = 1 << 20
# Sockets get a larger MAXMSGSIZE so a frame between the two limits still reaches the codec
# and is counted as a bad message; beyond this libzmq drops the peer's connection outright.
SOCKET_MAX_MESSAGE_BYTES: Final = 4 << 20
# Bounds that keep any batch of MAX_BATCH tasks below MAX_MESSAGE_BYTES even when JSON
# escapes every character of a payload (6 bytes per char).
MAX_BATCH: Final = 128
MAX_PAYLOAD_CHARS: Final = 1024
MAX_TEXT_CHARS: Final = 1024


class ProtocolError(ValueError):
    """The frame is not a valid message of this protocol version (the codec's only error)."""


class MsgType(str, enum.Enum):
    """The ``type`` field of every frame."""

    REGISTER = "REGISTER"
    HEARTBEAT = "HEARTBEAT"
    RESULTS = "RESULTS"
    DRAIN = "DRAIN"
    DEREGISTER = "DEREGISTER"
    WELCOME = "WELCOME"
    DISPATCH = "DISPATCH"
    COORDINATOR_HEARTBEAT = "COORDINATOR_HEARTBEAT"
    RESET = "RESET"
    REFUSED = "REFUSED"
    SUBMIT = "SUBMIT"
    ACCEPTED = "ACCEPTED"
    COMPLETED = "COMPLETED"
    STATUS = "STATUS"
    NODE_EVENT = "NODE_EVENT"
    TASK_STATS = "TASK_STATS"


class TaskKind(str, enum.Enum):
    """Task kinds the reference worker implements (``kind`` stays a free string on the wire)."""

    ECHO = "echo"
    SLEEP = "sleep"
    CPU = "cpu"
    FAIL = "fail"


class NodeState(str, enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


class NodeEventKind(str, enum.Enum):
    JOINED = "joined"
    SUSPECT = "suspect"
    DEAD = "dead"
    ALIVE = "alive"
    LEFT = "left"


class RefusalReason(str, enum.Enum):
    """Why the coordinator refused a REGISTER (the ``reason`` of REFUSED)."""

    WORKER_ID_IN_USE = "worker_id_in_use"  # another peer holds the id and is alive
    CLUSTER_FULL = "cluster_full"  # the worker table (and so STATUS) is at its bound


# --- Nested records -------------------------------------------------------------------------


@dataclass(slots=True)
class TaskSpec:
    """A task as a client submits it. ``task_id`` is chosen by the client: idempotency key."""

    task_id: str
    kind: str
    ms: int = 0
    payload: str = ""


@dataclass(slots=True)
class Assignment:
    """A task as the coordinator hands it to a worker; ``attempt`` counts from 1."""

    task_id: str
    attempt: int
    kind: str
    ms: int = 0
    payload: str = ""


@dataclass(slots=True)
class TaskResult:
    """A worker's result for one assignment."""

    task_id: str
    attempt: int
    ok: bool
    output: str = ""
    error: str = ""
    duration_s: float = 0.0


@dataclass(slots=True)
class TaskOutcome:
    """The recorded result of a task, as the coordinator reports it to the client."""

    task_id: str
    ok: bool
    output: str = ""
    error: str = ""
    tries: int = 1
    worker_id: str = ""
    latency_s: float = 0.0


@dataclass(slots=True)
class NodeStatus:
    node_id: str
    state: str
    last_seen_age_s: float
    in_flight: int
    capacity: int
    capabilities: list[str]
    cpu_percent: float
    memory_percent: float
    load1: float
    done: int


@dataclass(slots=True)
class Totals:
    submitted: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    requeued: int = 0
    duplicates: int = 0
    bad_messages: int = 0
    # Connections that closed before their ZMTP handshake completed: health probes, sockets
    # closed while connecting. Not bad input, so not in bad_messages.
    aborted_handshakes: int = 0
    # Handshakes the security layer refused: a CURVE key not on the allow-list, a peer with
    # another security mechanism, a CURVE handshake that does not decrypt.
    denied_handshakes: int = 0
    # REGISTERs answered with REFUSED (worker id held by another live peer, table full).
    refused_registrations: int = 0
    pending: int = 0
    in_flight: int = 0


# --- Messages --------------------------------------------------------------------------------


@dataclass(slots=True)
class Register:
    """Worker -> coordinator: join (or re-join) with a capacity; ``running`` = tasks still busy."""

    TYPE: ClassVar[MsgType] = MsgType.REGISTER
    worker_id: str
    capacity: int
    capabilities: list[str]
    running: list[str] = field(default_factory=list)
    pid: int = 0


@dataclass(slots=True)
class Heartbeat:
    """Worker -> coordinator, every interval, with the machine's load."""

    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT
    worker_id: str
    in_flight: int
    running: list[str]
    cpu_percent: float
    memory_percent: float
    load1: float


@dataclass(slots=True)
class Results:
    """Worker -> coordinator: one or more finished assignments (each also returns a credit)."""

    TYPE: ClassVar[MsgType] = MsgType.RESULTS
    worker_id: str
    results: list[TaskResult]


@dataclass(slots=True)
class Drain:
    """Worker -> coordinator: send me nothing more; I finish what I hold, then DEREGISTER."""

    TYPE: ClassVar[MsgType] = MsgType.DRAIN
    worker_id: str


@dataclass(slots=True)
class Deregister:
    """Worker -> coordinator: I am leaving on purpose (state "left", nothing to requeue)."""

    TYPE: ClassVar[MsgType] = MsgType.DEREGISTER
    worker_id: str


@dataclass(slots=True)
class Welcome:
    """Coordinator -> worker: registration accepted; liveness settings of the coordinator."""

    TYPE: ClassVar[MsgType] = MsgType.WELCOME
    coordinator_id: str
    heartbeat_interval_s: float
    liveness: int


@dataclass(slots=True)
class Dispatch:
    """Coordinator -> worker: never more tasks than the worker's free credit."""

    TYPE: ClassVar[MsgType] = MsgType.DISPATCH
    tasks: list[Assignment]


@dataclass(slots=True)
class CoordinatorHeartbeat:
    """Coordinator -> every worker and client, every interval."""

    TYPE: ClassVar[MsgType] = MsgType.COORDINATOR_HEARTBEAT
    coordinator_id: str


@dataclass(slots=True)
class Reset:
    """Coordinator -> worker: you are not (or no longer) registered; send REGISTER."""

    TYPE: ClassVar[MsgType] = MsgType.RESET
    reason: str


@dataclass(slots=True)
class Refused:
    """Coordinator -> would-be worker: REGISTER refused. Do not send more than one REGISTER
    per ``retry_after_s``; ``reason`` says whether waiting can help (see wire-protocol.md)."""

    TYPE: ClassVar[MsgType] = MsgType.REFUSED
    worker_id: str
    reason: str
    detail: str
    retry_after_s: float


@dataclass(slots=True)
class Submit:
    """Client -> coordinator: tasks to run. Re-submitting a known task id is harmless."""

    TYPE: ClassVar[MsgType] = MsgType.SUBMIT
    client_id: str
    tasks: list[TaskSpec]


@dataclass(slots=True)
class Accepted:
    """Coordinator -> client: these task ids are recorded (and durable with --state-dir)."""

    TYPE: ClassVar[MsgType] = MsgType.ACCEPTED
    task_ids: list[str]


@dataclass(slots=True)
class Completed:
    """Coordinator -> client: recorded outcomes of the client's tasks."""

    TYPE: ClassVar[MsgType] = MsgType.COMPLETED
    outcomes: list[TaskOutcome]


@dataclass(slots=True)
class Status:
    """Coordinator PUB, every heartbeat interval: the whole cluster (also its heartbeat)."""

    TYPE: ClassVar[MsgType] = MsgType.STATUS
    coordinator_id: str
    seq: int
    heartbeat_interval_s: float
    liveness: int
    nodes: list[NodeStatus]
    totals: Totals


@dataclass(slots=True)
class NodeEvent:
    """Coordinator PUB: a node changed state."""

    TYPE: ClassVar[MsgType] = MsgType.NODE_EVENT
    node_id: str
    event: str
    at: float
    detection_latency_s: float | None = None
    recovery_s: float | None = None


@dataclass(slots=True)
class TaskStats:
    """Coordinator PUB, every interval: latencies of the tasks finished since the last one."""

    TYPE: ClassVar[MsgType] = MsgType.TASK_STATS
    latencies_s: list[float]
    done: int
    failed: int


Message = Union[
    Register,
    Heartbeat,
    Results,
    Drain,
    Deregister,
    Welcome,
    Dispatch,
    CoordinatorHeartbeat,
    Reset,
    Refused,
    Submit,
    Accepted,
    Completed,
    Status,
    NodeEvent,
    TaskStats,
]

# --- Validation ------------------------------------------------------------------------------

Check = Callable[[Any], Any]


def _is_str(value: Any) -> str:
    if type(value) is not str or len(value) > MAX_TEXT_CHARS:
        raise ProtocolError(f"expected a string of at most {MAX_TEXT_CHARS} chars")
    return value


def _is_id(value: Any) -> str:
    if type(value) is not str or not 0 < len(value) <= 128:
        raise ProtocolError("expected an id: a string of 1..128 chars")
    return value


def _is_payload(value: Any) -> str:
    if type(value) is not str or len(value) > MAX_PAYLOAD_CHARS:
        raise ProtocolError(f"expected a payload of at most {MAX_PAYLOAD_CHARS} chars")
    return value


def _is_count(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ProtocolError("expected a non-negative integer")
    return value


def _is_bool(value: Any) -> bool:
    if type(value) is not bool:
        raise ProtocolError("expected a boolean")
    return value


def _is_number(value: Any) -> float:
    # JSON has one number type: accept ints where floats are meant, never bools or NaN.
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:  # a JSON integer of hundreds of digits
            raise ProtocolError("expected a finite number") from None
    if type(value) is not float or not math.isfinite(value):
        raise ProtocolError("expected a finite number")
    return value


def _optional(check: Check) -> Check:
    def checked(value: Any) -> Any:
        return None if value is None else check(value)

    return checked


def _list_of(check: Check, max_items: int) -> Check:
    def checked(value: Any) -> list[Any]:
        if type(value) is not list or len(value) > max_items:
            raise ProtocolError(f"expected a list of at most {max_items} items")
        return [check(item) for item in value]

    return checked


def _one_of(allowed: type[enum.Enum]) -> Check:
    values = frozenset(member.value for member in allowed)

    def checked(value: Any) -> str:
        if type(value) is not str or value not in values:
            raise ProtocolError(f"expected one of {sorted(values)}")
        return value

    return checked


def _record(cls: type[Any], schema: dict[str, Check]) -> Check:
    """A checker for a JSON object that becomes ``cls``; unknown keys are ignored."""
    required = frozenset(f.name for f in fields(cls) if _has_no_default(f))

    def checked(value: Any) -> Any:
        if type(value) is not dict:
            raise ProtocolError(f"expected an object for {cls.__name__}")
        missing = required.difference(value)
        if missing:
            raise ProtocolError(f"{cls.__name__}: missing {sorted(missing)}")
        kwargs = {name: check(value[name]) for name, check in schema.items() if name in value}
        return cls(**kwargs)

    return checked


def _has_no_default(f: Any) -> bool:
    from dataclasses import MISSING

    return bool(f.default is MISSING and f.default_factory is MISSING)


_IDS = _list_of(_is_id, 100_000)
_CAPABILITIES = _list_of(_is_id, 64)

_TASK_SPEC_GENERIC = _record(
    TaskSpec, {"task_id": _is_id, "kind": _is_id, "ms": _is_count, "payload": _is_payload}
)
_ASSIGNMENT_GENERIC = _record(
    Assignment,
    {
        "task_id": _is_id,
        "attempt": _is_count,
        "kind": _is_id,
        "ms": _is_count,
        "payload": _is_payload,
    },
)
_TASK_RESULT_GENERIC = _record(
    TaskResult,
    {
        "task_id": _is_id,
        "attempt": _is_count,
        "ok": _is_bool,
        "output": _is_payload,
        "error": _is_str,
        "duration_s": _is_number,
    },
)
_TASK_OUTCOME_GENERIC = _record(
    TaskOutcome,
    {
        "task_id": _is_id,
        "ok": _is_bool,
        "output": _is_payload,
        "error": _is_str,
        "tries": _is_count,
        "worker_id": _is_str,
        "latency_s": _is_number,
    },
)

# The records that come by the hundred in every batch get hand-inlined checkers: the same
# rules as the generic ones above (tests compare both on fuzzed input), about twice as fast.


def _valid_id(value: Any) -> bool:
    return type(value) is str and 0 < len(value) <= 128


def _valid_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _valid_text(value: Any, limit: int) -> bool:
    return type(value) is str and len(value) <= limit


def _fields(value: Any, cls: type[Any], required: tuple[str, ...]) -> dict[str, Any]:
    if type(value) is not dict:
        raise ProtocolError(f"expected an object for {cls.__name__}")
    for name in required:
        if name not in value:
            raise ProtocolError(f"{cls.__name__}: missing {name}")
    return value


def _task_spec(value: Any) -> TaskSpec:
    v = _fields(value, TaskSpec, ("task_id", "kind"))
    task_id, kind, ms, payload = v["task_id"], v["kind"], v.get("ms", 0), v.get("payload", "")
    if not (
        _valid_id(task_id)
        and _valid_id(kind)
        and _valid_count(ms)
        and _valid_text(payload, MAX_PAYLOAD_CHARS)
    ):
        raise ProtocolError("TaskSpec: a field has the wrong type or size")
    return TaskSpec(task_id, kind, ms, payload)


def _assignment(value: Any) -> Assignment:
    v = _fields(value, Assignment, ("task_id", "attempt", "kind"))
    task_id, attempt, kind = v["task_id"], v["attempt"], v["kind"]
    ms, payload = v.get("ms", 0), v.get("payload", "")
    if not (
        _valid_id(task_id)
        and _valid_count(attempt)
        and _valid_id(kind)
        and _valid_count(ms)
        and _valid_text(payload, MAX_PAYLOAD_CHARS)
    ):
        raise ProtocolError("Assignment: a field has the wrong type or size")
    return Assignment(task_id, attempt, kind, ms, payload)


def _task_result(value: Any) -> TaskResult:
    v = _fields(value, TaskResult, ("task_id", "attempt", "ok"))
    task_id, attempt, ok = v["task_id"], v["attempt"], v["ok"]
    output, error = v.get("output", ""), v.get("error", "")
    if not (
        _valid_id(task_id)
        and _valid_count(attempt)
        and type(ok) is bool
        and _valid_text(output, MAX_PAYLOAD_CHARS)
        and _valid_text(error, MAX_TEXT_CHARS)
    ):
        raise ProtocolError("TaskResult: a field has the wrong type or size")
    duration = _is_number(v["duration_s"]) if "duration_s" in v else 0.0
    return TaskResult(task_id, attempt, ok, output, error, duration)


def _task_outcome(value: Any) -> TaskOutcome:
    v = _fields(value, TaskOutcome, ("task_id", "ok"))
    task_id, ok, output, error = v["task_id"], v["ok"], v.get("output", ""), v.get("error", "")
    tries, worker_id = v.get("tries", 1), v.get("worker_id", "")
    if not (
        _valid_id(task_id)
        and type(ok) is bool
        and _valid_text(output, MAX_PAYLOAD_CHARS)
        and _valid_text(error, MAX_TEXT_CHARS)
        and _valid_count(tries)
        and _valid_text(worker_id, MAX_TEXT_CHARS)
    ):
        raise ProtocolError("TaskOutcome: a field has the wrong type or size")
    latency = _is_number(v["latency_s"]) if "latency_s" in v else 0.0
    return TaskOutcome(task_id, ok, output, error, tries, worker_id, latency)


_TASK_SPEC: Check = _task_spec
_ASSIGNMENT: Check = _assignment
_TASK_RESULT: Check = _task_result
_TASK_OUTCOME: Check = _task_outcome
_NODE_STATUS = _record(
    NodeStatus,
    {
        "node_id": _is_id,
        "state": _one_of(NodeState),
        "last_seen_age_s": _is_number,
        "in_flight": _is_count,
        "capacity": _is_count,
        "capabilities": _CAPABILITIES,
        "cpu_percent": _is_number,
        "memory_percent": _is_number,
        "load1": _is_number,
        "done": _is_count,
    },
)
_TOTALS = _record(Totals, {f.name: _is_count for f in fields(Totals)})

_SCHEMAS: dict[MsgType, tuple[type[Any], dict[str, Check]]] = {
    MsgType.REGISTER: (
        Register,
        {
            "worker_id": _is_id,
            "capacity": _is_count,
            "capabilities": _CAPABILITIES,
            "running": _IDS,
            "pid": _is_count,
        },
    ),
    MsgType.HEARTBEAT: (
        Heartbeat,
        {
            "worker_id": _is_id,
            "in_flight": _is_count,
            "running": _IDS,
            "cpu_percent": _is_number,
            "memory_percent": _is_number,
            "load1": _is_number,
        },
    ),
    MsgType.RESULTS: (
        Results,
        {"worker_id": _is_id, "results": _list_of(_TASK_RESULT, MAX_BATCH)},
    ),
    MsgType.DRAIN: (Drain, {"worker_id": _is_id}),
    MsgType.DEREGISTER: (Deregister, {"worker_id": _is_id}),
    MsgType.WELCOME: (
        Welcome,
        {"coordinator_id": _is_id, "heartbeat_interval_s": _is_number, "liveness": _is_count},
    ),
    MsgType.DISPATCH: (Dispatch, {"tasks": _list_of(_ASSIGNMENT, MAX_BATCH)}),
    MsgType.COORDINATOR_HEARTBEAT: (CoordinatorHeartbeat, {"coordinator_id": _is_id}),
    MsgType.RESET: (Reset, {"reason": _is_str}),
    MsgType.REFUSED: (
        Refused,
        {
            "worker_id": _is_id,
            "reason": _one_of(RefusalReason),
            "detail": _is_str,
            "retry_after_s": _is_number,
        },
    ),
    MsgType.SUBMIT: (Submit, {"client_id": _is_id, "tasks": _list_of(_TASK_SPEC, MAX_BATCH)}),
    MsgType.ACCEPTED: (Accepted, {"task_ids": _IDS}),
    MsgType.COMPLETED: (Completed, {"outcomes": _list_of(_TASK_OUTCOME, MAX_BATCH)}),
    MsgType.STATUS: (
        Status,
        {
            "coordinator_id": _is_id,
            "seq": _is_count,
            "heartbeat_interval_s": _is_number,
            "liveness": _is_count,
            "nodes": _list_of(_NODE_STATUS, 10_000),
            "totals": _TOTALS,
        },
    ),
    MsgType.NODE_EVENT: (
        NodeEvent,
        {
            "node_id": _is_id,
            "event": _one_of(NodeEventKind),
            "at": _is_number,
            "detection_latency_s": _optional(_is_number),
            "recovery_s": _optional(_is_number),
        },
    ),
    MsgType.TASK_STATS: (
        TaskStats,
        {
            "latencies_s": _list_of(_is_number, 1_000_000),
            "done": _is_count,
            "failed": _is_count,
        },
    ),
}
_BY_NAME: dict[str, MsgType] = {t.value: t for t in MsgType}
_MESSAGE_CHECKS: dict[MsgType, Check] = {
    msg_type: _record(cls, schema) for msg_type, (cls, schema) in _SCHEMAS.items()
}

# --- Codec -----------------------------------------------------------------------------------

# ASCII-only output: any JSON parser reads it, and it is slightly faster to produce.
_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def _plain(message: Any) -> dict[str, Any]:
    """A message as a JSON-ready dict (dataclasses.asdict is slow for big batches)."""
    body: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": message.TYPE.value}
    for name in message.__slots__:
        value = getattr(message, name)
        if type(value) is list and value and hasattr(value[0], "__slots__"):
            value = [{slot: getattr(item, slot) for slot in item.__slots__} for item in value]
        elif hasattr(value, "__slots__"):
            value = {slot: getattr(value, slot) for slot in value.__slots__}
        body[name] = value
    return body


def encode(message: Message) -> bytes:
    """One frame for ``message``; ProtocolError if it would exceed MAX_MESSAGE_BYTES."""
    try:
        frame = _ENCODER.encode(_plain(message)).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"cannot encode {type(message).__name__}: {exc}") from None
    if len(frame) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"{type(message).__name__} is {len(frame)} bytes, over the limit")
    return frame


# A JSON escape of a UTF-16 surrogate (\\uD800-\\uDFFF). The parser joins a valid pair into
# one character; a lone one would become a str that cannot be encoded, printed or logged.
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")


def _text(frame: bytes) -> str:
    """The frame as text: strict UTF-8 (json.loads alone would let encoded surrogates in)."""
    try:
        return frame.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"not valid UTF-8 at byte {exc.start}") from None


def _refuse_lone_surrogates(body: Any) -> None:
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("a string holds a lone surrogate (not valid Unicode)") from None


def decode(frame: bytes) -> Message:
    """The message in ``frame``; ProtocolError for anything that is not a valid message."""
    if len(frame) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        body = json.loads(_text(frame))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise ProtocolError(f"not a JSON document: {str(exc)[:80]}") from None
    if _SURROGATE_ESCAPE.search(frame):  # rare: only then pay for a second look
        _refuse_lone_surrogates(body)
    if type(body) is not dict:
        raise ProtocolError("a message is a JSON object")
    version = body.get("v")
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise ProtocolError(f"unsupported protocol version {str(version)[:20]!r}")
    type_name = body.get("type")
    msg_type = _BY_NAME.get(type_name) if type(type_name) is str else None
    if msg_type is None:
        raise ProtocolError(f"unknown message type {str(type_name)[:40]!r}")
    message: Message = _MESSAGE_CHECKS[msg_type](body)
    return message


def describe(frame: bytes, limit: int = 60) -> str:
    """A short printable preview of a frame, for log lines about bad messages."""
    return repr(frame[:limit]) + ("..." if len(frame) > limit else "")
