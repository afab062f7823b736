"""Wire protocol of the ZeroMQ node agent: message types, one codec, validation.

Nothing here binds or connects. The agent (``zmq_node_agent.py``, a ROUTER) and
the executor (``zmq_node_executor.py``, a DEALER) both speak it; the full spec,
written so that a client in another language can be built from it, is
docs/agent-protocol.md.

Every message is one ZeroMQ multipart message of one or two frames:

    frame 0  header: a UTF-8 JSON object {"v": 1, "type": "<type>", "id": "<request id>", ...}
    frame 1  body:   raw bytes, present only on ``output`` messages (a chunk of stdout/stderr)

Requests (client -> agent) are dispatched ONLY if their type is in
``REQUEST_TYPES``: an explicit allow-list, so that no message can reach a
method that was never meant to be remote (the lesson of Salt's CVE-2020-11651).
Everything that fails validation raises ``ProtocolError`` with a one-line reason.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from cluster_runner_simulation.protocols import GpuInfo, SystemConfiguration

PROTOCOL_VERSION = 1
DEFAULT_PORT = 5580

MAX_HEADER_BYTES = 256 * 1024  # a header holds a command line, env and cwd
MAX_COMMAND_CHARS = 128 * 1024
MAX_ENV_ENTRIES = 256
MAX_ID_CHARS = 128
OUTPUT_CHUNK_BYTES = 256 * 1024  # the agent sends output in chunks of at most this
MAX_OUTPUT_BYTES = 64 * 1024 * 1024  # per command, stdout + stderr; the rest is drained and dropped
# Largest message either side accepts (zmq.MAXMSGSIZE); bigger frames drop the connection.
MAX_REQUEST_BYTES = MAX_HEADER_BYTES
MAX_REPLY_BYTES = OUTPUT_CHUNK_BYTES + MAX_HEADER_BYTES

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ProtocolError(ValueError):
    """A message that does not follow this protocol."""


class TypeNotAllowed(ProtocolError):
    """A well-formed message whose type is not on the receiver's allow-list."""


class MsgType(str, Enum):
    # requests: client -> agent
    RUN = "run"
    CANCEL = "cancel"
    FACTS = "facts"
    PING = "ping"
    # replies: agent -> client
    ACCEPTED = "accepted"
    OUTPUT = "output"
    EXIT = "exit"
    FACTS_REPLY = "facts_reply"
    PONG = "pong"
    HEARTBEAT = "heartbeat"
    ERROR = "error"


# The allow-list: the only message types the agent will ever dispatch.
REQUEST_TYPES: frozenset[MsgType] = frozenset(
    {MsgType.RUN, MsgType.CANCEL, MsgType.FACTS, MsgType.PING}
)
REPLY_TYPES: frozenset[MsgType] = frozenset(set(MsgType) - REQUEST_TYPES)


class ErrorCode(str, Enum):
    BAD_REQUEST = "bad_request"
    NOT_ALLOWED = "not_allowed"
    BUSY = "busy"
    DUPLICATE_ID = "duplicate_id"
    UNKNOWN_ID = "unknown_id"


# --- Field validation -------------------------------------------------------------------------


def _req_str(header: dict[str, Any], key: str, max_chars: int, allow_empty: bool = False) -> str:
    value = header.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"field {key!r} must be a string")
    if len(value) > max_chars:
        raise ProtocolError(f"field {key!r} longer than {max_chars} characters")
    if not value and not allow_empty:
        raise ProtocolError(f"field {key!r} must not be empty")
    return value


def _opt_str(header: dict[str, Any], key: str, max_chars: int) -> str | None:
    if header.get(key) is None:
        return None
    return _req_str(header, key, max_chars)


def _opt_positive_float(header: dict[str, Any], key: str) -> float | None:
    value = header.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"field {key!r} must be a number")
    if not math.isfinite(value) or value <= 0:
        raise ProtocolError(f"field {key!r} must be a positive finite number")
    return float(value)


def _opt_int(header: dict[str, Any], key: str) -> int | None:
    value = header.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"field {key!r} must be an integer")
    return value


def _int(header: dict[str, Any], key: str) -> int:
    value = _opt_int(header, key)
    return 0 if value is None else value


def _bool(header: dict[str, Any], key: str) -> bool:
    value = header.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError(f"field {key!r} must be true or false")
    return value


def _env(header: dict[str, Any]) -> dict[str, str]:
    value = header.get("env")
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_ENV_ENTRIES:
        raise ProtocolError(f"field 'env' must be an object of at most {MAX_ENV_ENTRIES} strings")
    for name, text in value.items():
        if not ENV_NAME.match(name) or not isinstance(text, str) or "\0" in text:
            raise ProtocolError(f"env entry {name!r} is not NAME=string")
    return dict(value)


# --- Messages ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """Base of every message: ``id`` ties replies to the request they answer."""

    TYPE: ClassVar[MsgType]
    id: str

    def header_fields(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_header(cls, msg_id: str, header: dict[str, Any], body: bytes | None) -> Message:
        return cls(msg_id)


@dataclass(frozen=True)
class RunRequest(Message):
    TYPE = MsgType.RUN
    command: str = ""
    timeout: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None

    def header_fields(self) -> dict[str, Any]:
        return {"command": self.command, "timeout": self.timeout, "env": self.env, "cwd": self.cwd}

    @classmethod
    def from_header(cls, msg_id: str, header: dict[str, Any], body: bytes | None) -> Message:
        command = _req_str(header, "command", MAX_COMMAND_CHARS)
        if "\0" in command:
            raise ProtocolError("field 'command' contains a NUL character")
        return cls(
            msg_id,
            command=command,
            timeout=_opt_positive_float(header, "timeout"),
            env=_env(header),
            cwd=_opt_str(header, "cwd", 4096),
        )


@dataclass(frozen=True)
class CancelRequest(Message):
    TYPE = MsgType.CANCEL


@dataclass(frozen=True)
class FactsRequest(Message):
    TYPE = MsgType.FACTS


@dataclass(frozen=True)
class PingRequest(Message):
    TYPE = MsgType.PING


@dataclass(frozen=True)
class Accepted(Message):
    TYPE = MsgType.ACCEPTED


@dataclass(frozen=True)
class Output(Message):
    TYPE = MsgType.OUTPUT
    stream: str = "stdout"
    data: bytes = b""

    def header_fields(self) -> dict[str, Any]:
        return {"stream": self.stream}

    @classmethod
    def from_header(cls, msg_id: str, header: dict[str, Any], body: bytes | None) -> Message:
        stream = header.get("stream")
        if stream not in ("stdout", "stderr"):
            raise ProtocolError("field 'stream' must be 'stdout' or 'stderr'")
        if body is None:
            raise ProtocolError("an output message needs a body frame")
        return cls(msg_id, stream=str(stream), data=body)


@dataclass(frozen=True)
class Exit(Message):
    TYPE = MsgType.EXIT
    exit_status: int | None = None
    exit_signal: str | None = None
    timed_out: bool = False
    cancelled: bool = False
    dropped_bytes: int = 0  # output beyond MAX_OUTPUT_BYTES, drained but not sent

    def header_fields(self) -> dict[str, Any]:
        return {
            "exit_status": self.exit_status,
            "exit_signal": self.exit_signal,
            "timed_out": self.timed_out,
            "cancelled": self.cancelled,
            "dropped_bytes": self.dropped_bytes,
        }

    @classmethod
    def from_header(cls, msg_id: str, header: dict[str, Any], body: bytes | None) -> Message:
        return cls(
            msg_id,
            exit_status=_opt_int(header, "exit_status"),
            exit_signal=_opt_str(header, "exit_signal", 32),
            timed_out=_bool(header, "timed_out"),
            cancelled=_bool(header, "cancelled"),
            dropped_bytes=_int(header, "dropped_bytes"),
        )


@dataclass(frozen=True)
class FactsReply(Message):
    TYPE = MsgType.FACTS_REPLY
    facts: dict[str, Any] = field(default_factory=dict)

    def header_fields(self) -> dict[str, Any]:
        return {"facts": self.facts}

    @classmethod
    def from_header(cls, msg_id: str, header: dict[str, Any], body: bytes | None) -> Message:
        facts = header.get("facts")
        if not isinstance(facts, dict):
            raise ProtocolError("field 'facts' must be an object")
        return cls(msg_id, facts=facts)


@dataclass(frozen=True)
class Pong(Message):
    TYPE = MsgType.PONG
    node_id: str = ""

    def header_fields(self) -> dict[str, Any]:
        return {"node_id": self.node_id}

    @classmethod
    def from_header(cls, msg_id: str, header: dict[str, Any], body: bytes | None) -> Message:
        return cls(msg_id, node_id=_req_str(header, "node_id", 256, allow_empty=True))


@dataclass(frozen=True)
class Heartbeat(Message):
    TYPE = MsgType.HEARTBEAT
    running: int = 0

    def header_fields(self) -> dict[str, Any]:
        return {"running": self.running}

    @classmethod
    def from_header(cls, msg_id: str, header: dict[str, Any], body: bytes | None) -> Message:
        return cls(msg_id, running=_int(header, "running"))


@dataclass(frozen=True)
class ErrorReply(Message):
    TYPE = MsgType.ERROR
    code: str = ErrorCode.BAD_REQUEST.value
    message: str = ""

    def header_fields(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_header(cls, msg_id: str, header: dict[str, Any], body: bytes | None) -> Message:
        return cls(
            msg_id,
            code=_req_str(header, "code", 64),
            message=_req_str(header, "message", 4096, allow_empty=True),
        )


MESSAGE_CLASSES: dict[MsgType, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        RunRequest,
        CancelRequest,
        FactsRequest,
        PingRequest,
        Accepted,
        Output,
        Exit,
        FactsReply,
        Pong,
        Heartbeat,
        ErrorReply,
    )
}


# --- The codec --------------------------------------------------------------------------------


def encode(message: Message) -> list[bytes]:
    """A message as the frames to send."""
    header = {"v": PROTOCOL_VERSION, "type": message.TYPE.value, "id": message.id}
    header.update(message.header_fields())
    frames = [json.dumps(header, separators=(",", ":")).encode()]
    if isinstance(message, Output):
        frames.append(message.data)
    return frames


def decode(frames: list[bytes], allowed: frozenset[MsgType]) -> Message:
    """Frames as a message, or ``ProtocolError``; types outside ``allowed`` are refused."""
    if not 1 <= len(frames) <= 2:
        raise ProtocolError(f"expected 1 or 2 frames, got {len(frames)}")
    raw = frames[0]
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header larger than {MAX_HEADER_BYTES} bytes")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ProtocolError("header is not UTF-8 JSON") from None
    except RecursionError:  # "[[[[..." nested deeper than the parser's stack
        raise ProtocolError("header is nested too deeply") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {header.get('v')!r}")
    try:
        msg_type = MsgType(header.get("type"))
    except ValueError:
        raise ProtocolError(f"unknown message type {str(header.get('type'))[:40]!r}") from None
    if msg_type not in allowed:
        raise TypeNotAllowed(f"message type {msg_type.value!r} is not allowed here")
    msg_id = _req_str(header, "id", MAX_ID_CHARS, allow_empty=msg_type is MsgType.HEARTBEAT)
    body = frames[1] if len(frames) == 2 else None
    if body is not None and msg_type is not MsgType.OUTPUT:
        raise ProtocolError(f"a {msg_type.value!r} message has no body frame")
    return MESSAGE_CLASSES[msg_type].from_header(msg_id, header, body)


def request_id_of(frames: list[bytes]) -> str:
    """Best effort: the id of a message that failed to decode, for the error reply."""
    try:
        header = json.loads(frames[0])
        value = header.get("id") if isinstance(header, dict) else None
    except (ValueError, IndexError, RecursionError):
        return ""
    return value if isinstance(value, str) and len(value) <= MAX_ID_CHARS else ""


# --- Facts ------------------------------------------------------------------------------------


def system_config_from_facts(node_id: str, facts: dict[str, Any]) -> SystemConfiguration:
    """A ``facts_reply`` body (also what ssh_executor's remote script prints) as a value."""
    try:
        gpus = tuple(
            GpuInfo(int(g["index"]), str(g["name"]), int(g["memory_total_mib"]))
            for g in facts.get("gpus", [])
        )
        return SystemConfiguration(
            node_id=node_id,
            hostname=str(facts["hostname"]),
            cpu_count=int(facts["cpu_count"]),
            memory_total_bytes=int(facts["memory_total_bytes"]),
            python_version=str(facts["python_version"]),
            os_release=str(facts.get("os_release", "")),
            gpus=gpus,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed system facts: {exc!r}") from None
