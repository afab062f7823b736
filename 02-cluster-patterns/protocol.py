"""The cluster's wire protocol: every message declared once, typed, with its limits.

Nothing here touches a socket. Each message is a msgspec ``Struct`` (see wire.py) whose
field types carry their limits; ``encode`` turns one into a single ZeroMQ frame (a UTF-8
JSON object) and ``decode`` turns a frame back into a message, or raises ``ProtocolError``
naming the field (``... at $.tasks[3].ms``) - the only exception that ever leaves
``decode``, whatever the bytes are.

Frame layout (one frame per message; ROUTER adds/strips the peer identity frame):

    {"v": 1, "type": "SUBMIT", "client_id": "...", "tasks": [...]}

Where the messages flow (docs/wire-protocol.md is the full spec, with the state machines):

    worker  -> coordinator (5570): REGISTER, HEARTBEAT, RESULTS, DRAIN, DEREGISTER
    coordinator -> worker  (5570): WELCOME, DISPATCH, COORDINATOR_HEARTBEAT, RESET, REFUSED
    client  -> coordinator (5570): SUBMIT
    coordinator -> client  (5570): ACCEPTED, COMPLETED, COORDINATOR_HEARTBEAT
    coordinator -> monitors (XPUB 5571): STATUS, NODE_EVENT, TASK_STATS

Try it:
    python -c "from cluster_patterns.protocol import *; \\
        print(decode(encode(Drain(worker_id='w1'))))"

Why JSON: any language decodes it with its standard library, so a worker in Go or Rust
needs no extra dependency; batching several tasks per frame keeps the per-task cost low
(figures in benchmark.py's output and docs/results/cluster-benchmark.md).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal, Union, get_args

import msgspec
from msgspec import Meta

from cluster_patterns.defaults import MAX_INTERVAL_S, MAX_LIVENESS, MIN_INTERVAL_S
from cluster_patterns.wire import MAX_ID_CHARS, MAX_SAFE_INTEGER, Count, Id, JsonCodec, NonNegative
from cluster_patterns.wire import Number, Record, WireError
from cluster_patterns.wire import describe as describe  # noqa: F401 (for decode's callers)

PROTOCOL_VERSION: Final = 1
# The codec refuses anything bigger than this; senders split batches to stay below it.
MAX_MESSAGE_BYTES: Final = 1 << 20
# Items in tasks, results, outcomes and task_ids. With the text limits below, any batch stays
# under MAX_MESSAGE_BYTES even when JSON escapes every character (6 bytes per char).
MAX_BATCH: Final = 128
MAX_PAYLOAD_CHARS: Final = 1024
MAX_TEXT_CHARS: Final = 1024
# Longest sleep/cpu task: a task cannot pin a worker for more than ten minutes.
MAX_TASK_MS: Final = 600_000
# Tasks one worker may hold at once, and ids in its ``running`` list: what it runs plus the
# finished results it has not sent yet, which together stay within its capacity.
MAX_CAPACITY: Final = 512
MAX_RUNNING: Final = 2 * MAX_CAPACITY
MAX_CAPABILITIES: Final = 64
MAX_NODES: Final = 10_000
MAX_LATENCIES: Final = 10_000


class ProtocolError(WireError):
    """The frame is not a valid message of this protocol version (the codec's only error)."""


class MsgType(enum.StrEnum):
    """The ``type`` field of every frame (each message class takes its tag from here)."""

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


class TaskKind(enum.StrEnum):
    """Task kinds the reference worker implements (``kind`` stays an open id on the wire:
    a worker may announce other capabilities)."""

    ECHO = "echo"
    SLEEP = "sleep"
    CPU = "cpu"
    FAIL = "fail"


class NodeState(enum.StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


class NodeEventKind(enum.StrEnum):
    JOINED = "joined"
    SUSPECT = "suspect"
    DEAD = "dead"
    ALIVE = "alive"
    LEFT = "left"


class RefusalReason(enum.StrEnum):
    """Why the coordinator refused a REGISTER (the ``reason`` of REFUSED)."""

    WORKER_ID_IN_USE = "worker_id_in_use"  # another peer holds the id and is alive
    CLUSTER_FULL = "cluster_full"  # the worker table (and so STATUS) is at its bound


# --- Field types: the limits sit beside the fields that use them -----------------------------

Text = Annotated[str, Meta(max_length=MAX_TEXT_CHARS)]
Payload = Annotated[str, Meta(max_length=MAX_PAYLOAD_CHARS)]
MaybeId = Annotated[str, Meta(max_length=MAX_ID_CHARS)]  # an id, or "" for none
Attempt = Annotated[int, Meta(ge=1, le=MAX_SAFE_INTEGER)]
TaskMs = Annotated[int, Meta(ge=0, le=MAX_TASK_MS)]
Capacity = Annotated[int, Meta(ge=1, le=MAX_CAPACITY)]
Percent = Annotated[float, Meta(ge=0.0, le=100.0)]
Interval = Annotated[float, Meta(ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S)]
Liveness = Annotated[int, Meta(ge=1, le=MAX_LIVENESS)]
Capabilities = Annotated[list[Id], Meta(max_length=MAX_CAPABILITIES)]
RunningIds = Annotated[list[Id], Meta(max_length=MAX_RUNNING)]
BatchIds = Annotated[list[Id], Meta(max_length=MAX_BATCH)]


# --- Nested records -------------------------------------------------------------------------


class TaskSpec(Record, gc=False):
    """A task as a client submits it. ``task_id`` is chosen by the client: idempotency key."""

    task_id: Id
    kind: Id
    ms: TaskMs = 0
    payload: Payload = ""


class Assignment(Record, gc=False):
    """A task as the coordinator hands it to a worker; ``attempt`` counts from 1."""

    task_id: Id
    attempt: Attempt
    kind: Id
    ms: TaskMs = 0
    payload: Payload = ""


class TaskResult(Record, gc=False):
    """A worker's result for one assignment (``attempt`` copied from it)."""

    task_id: Id
    attempt: Attempt
    ok: bool
    output: Payload = ""
    error: Text = ""
    duration_s: NonNegative = 0.0


class TaskOutcome(Record, gc=False):
    """The recorded result of a task, as the coordinator reports it to the client."""

    task_id: Id
    ok: bool
    output: Payload = ""
    error: Text = ""
    tries: Count = 1
    worker_id: MaybeId = ""
    latency_s: NonNegative = 0.0


class NodeStatus(Record):
    node_id: Id
    state: NodeState
    last_seen_age_s: NonNegative
    in_flight: Count
    capacity: Count
    capabilities: Capabilities
    cpu_percent: Percent
    memory_percent: Percent
    load1: NonNegative
    done: Count


class Totals(Record, gc=False):
    submitted: Count = 0
    done: Count = 0
    failed: Count = 0
    retried: Count = 0
    requeued: Count = 0
    duplicates: Count = 0
    bad_messages: Count = 0
    # Connections that closed before their ZMTP handshake completed: health probes, sockets
    # closed while connecting. Not bad input, so not in bad_messages.
    aborted_handshakes: Count = 0
    # Handshakes the security layer refused: a CURVE key not on the allow-list, a peer with
    # another security mechanism, a CURVE handshake that does not decrypt.
    denied_handshakes: Count = 0
    # REGISTERs answered with REFUSED (worker id held by another live peer, table full).
    refused_registrations: Count = 0
    # New task ids not ACCEPTED because MAX_UNFINISHED tasks were unfinished (task_book.py).
    refused_tasks: Count = 0
    pending: Count = 0
    in_flight: Count = 0


# --- Messages --------------------------------------------------------------------------------


class _Msg(msgspec.Struct, tag_field="type", kw_only=True):
    v: Literal[1] = PROTOCOL_VERSION


class Register(_Msg, tag=MsgType.REGISTER.value):
    """Worker -> coordinator: join (or re-join). ``running`` = every task it holds: those
    still executing AND those finished whose RESULTS it has not sent yet."""

    worker_id: Id
    capacity: Capacity
    capabilities: Capabilities
    running: RunningIds = msgspec.field(default_factory=list)
    pid: Count = 0


class Heartbeat(_Msg, tag=MsgType.HEARTBEAT.value):
    """Worker -> coordinator, every interval once welcomed, with the machine's load.
    ``cpu_percent`` and ``memory_percent`` are of the whole machine, 0-100."""

    worker_id: Id
    in_flight: Count
    running: RunningIds
    cpu_percent: Percent
    memory_percent: Percent
    load1: NonNegative


class Results(_Msg, tag=MsgType.RESULTS.value):
    """Worker -> coordinator: one or more finished assignments (each also returns a credit)."""

    worker_id: Id
    results: Annotated[list[TaskResult], Meta(max_length=MAX_BATCH)]


class Drain(_Msg, tag=MsgType.DRAIN.value):
    """Worker -> coordinator: send me nothing more; I finish what I hold, then DEREGISTER."""

    worker_id: Id


class Deregister(_Msg, tag=MsgType.DEREGISTER.value):
    """Worker -> coordinator: I am leaving on purpose (state "left"; what I held is requeued)."""

    worker_id: Id


class Welcome(_Msg, tag=MsgType.WELCOME.value):
    """Coordinator -> worker: registration accepted. The worker adopts these settings."""

    coordinator_id: Id
    heartbeat_interval_s: Interval
    liveness: Liveness


class Dispatch(_Msg, tag=MsgType.DISPATCH.value):
    """Coordinator -> worker: never more tasks than the worker's free credit."""

    tasks: Annotated[list[Assignment], Meta(max_length=MAX_BATCH)]


class CoordinatorHeartbeat(_Msg, tag=MsgType.COORDINATOR_HEARTBEAT.value):
    """Coordinator -> every live worker and every recent client, every interval. The
    settings are optional (a coordinator written from an older spec leaves them out)."""

    coordinator_id: Id
    heartbeat_interval_s: Interval | None = None
    liveness: Liveness | None = None


class Reset(_Msg, tag=MsgType.RESET.value):
    """Coordinator -> worker: you are not (or no longer) registered; send REGISTER."""

    reason: Text


class Refused(_Msg, tag=MsgType.REFUSED.value):
    """Coordinator -> would-be worker: REGISTER refused. Do not send more than one REGISTER
    per ``retry_after_s``; ``reason`` says whether waiting can help (see wire-protocol.md)."""

    worker_id: Id
    reason: RefusalReason
    detail: Text
    retry_after_s: NonNegative


class Submit(_Msg, tag=MsgType.SUBMIT.value):
    """Client -> coordinator: tasks to run. Re-submitting a known task id is harmless."""

    client_id: Id
    tasks: Annotated[list[TaskSpec], Meta(max_length=MAX_BATCH)]


class Accepted(_Msg, tag=MsgType.ACCEPTED.value):
    """Coordinator -> client: these task ids are recorded (and durable with --state-dir)."""

    task_ids: BatchIds


class Completed(_Msg, tag=MsgType.COMPLETED.value):
    """Coordinator -> client: recorded outcomes of the client's tasks."""

    outcomes: Annotated[list[TaskOutcome], Meta(max_length=MAX_BATCH)]


class Status(_Msg, tag=MsgType.STATUS.value):
    """Coordinator XPUB, every heartbeat interval: the whole cluster (also its heartbeat)."""

    coordinator_id: Id
    seq: Count
    heartbeat_interval_s: Interval
    liveness: Liveness
    nodes: Annotated[list[NodeStatus], Meta(max_length=MAX_NODES)]
    totals: Totals


class NodeEvent(_Msg, tag=MsgType.NODE_EVENT.value):
    """Coordinator XPUB: a node changed state. ``at`` is wall-clock (Unix) time."""

    node_id: Id
    event: NodeEventKind
    at: Number
    detection_latency_s: NonNegative | None = None
    recovery_s: NonNegative | None = None


class TaskStats(_Msg, tag=MsgType.TASK_STATS.value):
    """Coordinator XPUB, every interval: latencies of the tasks finished since the last one."""

    latencies_s: Annotated[list[NonNegative], Meta(max_length=MAX_LATENCIES)]
    done: Count
    failed: Count


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

MESSAGE_CLASSES: Final[dict[MsgType, type[Message]]] = {
    MsgType(str(cls.__struct_config__.tag)): cls for cls in get_args(Message)
}
assert set(MESSAGE_CLASSES) == set(MsgType), "every MsgType needs exactly one message class"
_TYPE_OF: Final[dict[type[Message], MsgType]] = {c: t for t, c in MESSAGE_CLASSES.items()}

_CODEC: Final[JsonCodec[Message]] = JsonCodec(Message, ProtocolError, MAX_MESSAGE_BYTES)


def handler_table(role: object) -> dict[type[Message], Callable[..., Any]]:
    """A role's routing, built once: its ``do_<MessageClass>`` methods by message class.
    A message without a handler is one the role never receives (a bad message)."""
    names = {cls: f"do_{cls.__name__}" for cls in get_args(Message)}
    return {cls: getattr(role, name) for cls, name in names.items() if hasattr(role, name)}


def message_type(message: Message) -> MsgType:
    """The ``type`` a message goes on the wire with."""
    return _TYPE_OF[type(message)]


def encode(message: Message) -> bytes:
    """One frame for ``message``; ProtocolError if it would exceed MAX_MESSAGE_BYTES."""
    return _CODEC.encode(message)


def decode(frame: bytes) -> Message:
    """The message in ``frame``; ProtocolError for anything that is not a valid message."""
    return _CODEC.decode(frame)
