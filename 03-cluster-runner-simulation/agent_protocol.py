"""Wire protocol of the ZeroMQ node agent: message types, one codec, validation.

Nothing here binds or connects. The agent (``zmq_node_agent.py``, a ROUTER) and
the executor (``zmq_node_executor.py``, a DEALER) both speak it; the full spec,
written so that a client in another language can be built from it, is
docs/agent-protocol.md.

Every message is one ZeroMQ multipart message of one or two frames:

    frame 0  header: a UTF-8 JSON object {"v": 2, "type": "<type>", "id": "<request id>", ...}
    frame 1  body:   raw bytes, present only on ``output`` messages (a chunk of stdout/stderr)

Requests (client -> agent) are dispatched ONLY if their type is in
``REQUEST_TYPES``: an explicit allow-list, so that no message can reach a
method that was never meant to be remote (the lesson of Salt's CVE-2020-11651).
Everything that fails validation raises ``ProtocolError`` with a one-line reason
that names the field, and nothing else escapes ``decode``: huge integers,
non-finite numbers, booleans where numbers belong, lone surrogates and bytes that
are not UTF-8 are all refused here, before any of it can reach a subprocess call.
``error_reply`` turns such an error into the reply the agent sends.

Version 2 added flow control: the client grants ``credit`` for the reply bytes it
has read, and the agent sends at most CREDIT_WINDOW_BYTES beyond that.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from cluster_runner_simulation.protocols import GpuInfo, SystemConfiguration

PROTOCOL_VERSION = 2
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
# Flow control: reply bytes (headers and bodies) the agent may send to one connection
# beyond what the client has credited back; a client credits at least every batch.
CREDIT_WINDOW_BYTES = 8 * 1024 * 1024
CREDIT_BATCH_BYTES = 1024 * 1024
MAX_CREDIT_BYTES = 2**53  # the largest integer every JSON parser holds exactly
MAX_TIMEOUT_S = 365 * 24 * 3600.0
MAX_INT_DIGITS = 19  # integers longer than this are out of range for every field
INT64_RANGE = range(-(2**63), 2**63)
MAX_ERROR_MESSAGE_CHARS = 1024
MAX_CWD_CHARS = 4096

ENV_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")  # \Z: no trailing newline, unlike $


class ProtocolError(ValueError):
    """A message that does not follow this protocol.

    ``request_id`` is the id of the offending request when it could be read, else "".
    """

    def __init__(self, reason: str, request_id: str = "") -> None:
        super().__init__(reason)
        self.request_id = request_id


class TypeNotAllowed(ProtocolError):
    """A well-formed message whose type is not on the receiver's allow-list."""


class MsgType(str, Enum):
    # requests: client -> agent
    RUN = "run"
    CANCEL = "cancel"
    FACTS = "facts"
    PING = "ping"
    CREDIT = "credit"
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
    {MsgType.RUN, MsgType.CANCEL, MsgType.FACTS, MsgType.PING, MsgType.CREDIT}
)
REPLY_TYPES: frozenset[MsgType] = frozenset(set(MsgType) - REQUEST_TYPES)


class ErrorCode(str, Enum):
    BAD_REQUEST = "bad_request"
    NOT_ALLOWED = "not_allowed"
    BUSY = "busy"
    DUPLICATE_ID = "duplicate_id"
    UNKNOWN_ID = "unknown_id"
    INTERNAL_ERROR = "internal_error"


# Messages whose ``id`` may be "": heartbeats and credits concern the connection, and an
# error answers a request whose id could not be read.
EMPTY_ID_TYPES: frozenset[MsgType] = frozenset({MsgType.HEARTBEAT, MsgType.CREDIT, MsgType.ERROR})


# --- Field validation -------------------------------------------------------------------------


class _OutOfRange:
    """What the header parser returns for an integer with more than MAX_INT_DIGITS digits.

    Parsing it would cost time quadratic in its length (and Python refuses past 4300
    digits); no field can hold it anyway, so the field validators refuse it by name.
    """

    def __repr__(self) -> str:
        return "<number out of range>"


OUT_OF_RANGE = _OutOfRange()


def _parse_int(text: str) -> int | _OutOfRange:
    return int(text) if len(text.lstrip("-")) <= MAX_INT_DIGITS else OUT_OF_RANGE


def _parse_constant(name: str) -> float:
    # NaN and Infinity are not JSON; parsed as floats so the field validators name the field.
    return float(name)


# Built once: json.loads(text, parse_int=...) would build a new decoder for every message.
_JSON = json.JSONDecoder(parse_int=_parse_int, parse_constant=_parse_constant)


def _shown(value: object) -> str:
    """A peer's value as it may appear in an error message: short, printable ASCII.

    Containers are named, not printed: printing one nested 990 deep would recurse.
    """
    if isinstance(value, (list, dict)):
        return "an array" if isinstance(value, list) else "an object"
    return ascii(value[:40] if isinstance(value, str) else value)[:42]


def _valid_text(value: str, what: str) -> str:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError(f"{what} is not valid Unicode (lone surrogate)") from None
    return value


def _req_str(header: dict[str, Any], key: str, max_chars: int, allow_empty: bool = False) -> str:
    value = header.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"field {key!r} must be a string")
    if len(value) > max_chars:
        raise ProtocolError(f"field {key!r} longer than {max_chars} characters")
    if not value and not allow_empty:
        raise ProtocolError(f"field {key!r} must not be empty")
    return _valid_text(value, f"field {key!r}")


def _opt_str(header: dict[str, Any], key: str, max_chars: int) -> str | None:
    if header.get(key) is None:
        return None
    return _req_str(header, key, max_chars)


def _no_nul(value: str, key: str) -> str:
    if "\0" in value:
        raise ProtocolError(f"field {key!r} contains a NUL character")
    return value


def _opt_timeout(header: dict[str, Any], key: str) -> float | None:
    value = header.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"field {key!r} must be a number, not {_shown(value)}")
    if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT_S:
        raise ProtocolError(f"field {key!r} must be a finite number in (0, {MAX_TIMEOUT_S:.0f}]")
    return float(value)


def _opt_int(header: dict[str, Any], key: str, allowed: range = INT64_RANGE) -> int | None:
    value = header.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"field {key!r} must be an integer, not {_shown(value)}")
    if value not in allowed:
        raise ProtocolError(f"field {key!r} is out of range")
    return value


def _int(header: dict[str, Any], key: str, allowed: range = INT64_RANGE) -> int:
    value = _opt_int(header, key, allowed)
    return 0 if value is None else value


def _bool(header: dict[str, Any], key: str, default: bool = False) -> bool:
    value = header.get(key, default)
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
        if not ENV_NAME.fullmatch(name) or not isinstance(text, str) or "\0" in text:
            raise ProtocolError(f"field 'env': entry {_shown(name)} is not NAME=string")
        _valid_text(text, f"field 'env': the value of {name}")
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
        cwd = _opt_str(header, "cwd", MAX_CWD_CHARS)
        return cls(
            msg_id,
            command=_no_nul(_req_str(header, "command", MAX_COMMAND_CHARS), "command"),
            timeout=_opt_timeout(header, "timeout"),
            env=_env(header),
            cwd=None if cwd is None else _no_nul(cwd, "cwd"),
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
class Credit(Message):
    """The client has read ``nbytes`` more reply bytes (headers and bodies) on this connection."""

    TYPE = MsgType.CREDIT
    nbytes: int = 0

    def header_fields(self) -> dict[str, Any]:
        return {"bytes": self.nbytes}

    @classmethod
    def from_header(cls, msg_id: str, header: dict[str, Any], body: bytes | None) -> Message:
        if header.get("bytes") is None:
            raise ProtocolError("field 'bytes' is required")
        return cls(msg_id, nbytes=_int(header, "bytes", range(1, MAX_CREDIT_BYTES + 1)))


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
    # Output drained but not sent: beyond MAX_OUTPUT_BYTES, or unsendable when a timeout or
    # cancel killed a command whose client had stopped reading.
    dropped_bytes: int = 0
    started: bool = True  # false: the run ended (timeout, cancel) while queued for a slot

    def header_fields(self) -> dict[str, Any]:
        return {
            "exit_status": self.exit_status,
            "exit_signal": self.exit_signal,
            "timed_out": self.timed_out,
            "cancelled": self.cancelled,
            "dropped_bytes": self.dropped_bytes,
            "started": self.started,
        }

    @classmethod
    def from_header(cls, msg_id: str, header: dict[str, Any], body: bytes | None) -> Message:
        return cls(
            msg_id,
            exit_status=_opt_int(header, "exit_status"),
            exit_signal=_opt_str(header, "exit_signal", 32),
            timed_out=_bool(header, "timed_out"),
            cancelled=_bool(header, "cancelled"),
            dropped_bytes=_int(header, "dropped_bytes", range(2**63)),
            started=_bool(header, "started", default=True),
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
        return cls(msg_id, running=_int(header, "running", range(2**31)))


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
            message=_req_str(header, "message", MAX_ERROR_MESSAGE_CHARS, allow_empty=True),
        )


MESSAGE_CLASSES: dict[MsgType, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        RunRequest,
        CancelRequest,
        FactsRequest,
        PingRequest,
        Credit,
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
    """Frames as a message, or ``ProtocolError``; types outside ``allowed`` are refused.

    The error carries the request's id when the header got far enough to show one.
    """
    if not frames:
        raise ProtocolError("expected 1 or 2 frames, got 0")
    header = _parse_header(frames[0])
    try:
        return _decode_header(header, frames, allowed)
    except ProtocolError as exc:
        exc.request_id = _readable_id(header)
        raise


def _parse_header(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header larger than {MAX_HEADER_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("header is not valid UTF-8") from None
    try:
        header = _JSON.decode(text)
    except ValueError:
        raise ProtocolError("header is not JSON") from None
    except RecursionError:  # "[[[[..." nested deeper than the parser's stack
        raise ProtocolError("header is nested too deeply") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    return header


def _decode_header(
    header: dict[str, Any], frames: list[bytes], allowed: frozenset[MsgType]
) -> Message:
    if len(frames) > 2:
        raise ProtocolError(f"expected 1 or 2 frames, got {len(frames)}")
    version = header.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"field 'v': unsupported protocol version {_shown(version)}; "
            f"this side speaks {PROTOCOL_VERSION}"
        )
    type_name = header.get("type")
    if not isinstance(type_name, str):
        raise ProtocolError("field 'type' must be a string")
    try:
        msg_type = MsgType(type_name)
    except ValueError:
        msg_type = None
    if msg_type is None or msg_type not in allowed:
        raise TypeNotAllowed(f"message type {_shown(type_name)} is not allowed here")
    msg_id = _req_str(header, "id", MAX_ID_CHARS, allow_empty=msg_type in EMPTY_ID_TYPES)
    body = frames[1] if len(frames) == 2 else None
    if body is not None and msg_type is not MsgType.OUTPUT:
        raise ProtocolError(f"a {msg_type.value!r} message has no body frame")
    return MESSAGE_CLASSES[msg_type].from_header(msg_id, header, body)


def _readable_id(header: dict[str, Any]) -> str:
    value = header.get("id")
    if not isinstance(value, str) or len(value) > MAX_ID_CHARS:
        return ""
    try:
        return _valid_text(value, "id")
    except ProtocolError:
        return ""


def error_reply(exc: ProtocolError) -> ErrorReply:
    """The ``error`` reply for a request that failed to decode."""
    code = ErrorCode.NOT_ALLOWED if isinstance(exc, TypeNotAllowed) else ErrorCode.BAD_REQUEST
    return ErrorReply(exc.request_id, code.value, str(exc)[:MAX_ERROR_MESSAGE_CHARS])


def request_id_of(frames: list[bytes]) -> str:
    """Best effort: the id of a message that failed to decode, for the error reply."""
    try:
        return _readable_id(_parse_header(frames[0])) if frames else ""
    except ProtocolError:
        return ""


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
