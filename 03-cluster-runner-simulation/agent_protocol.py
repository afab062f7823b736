"""Wire protocol of the ZeroMQ node agent: every message declared once, one codec per direction.

Nothing here binds or connects. The agent (``zmq_node_agent.py``, a ROUTER) and the
executor (``zmq_node_executor.py``, a DEALER) both speak it; the full spec, written so that
a client in another language can be built from it, is docs/agent-protocol.md.

Every message is one ZeroMQ multipart message of one or two frames:

    frame 0  header: a UTF-8 JSON object {"type": "<type>", "v": 3, "id": "<request id>", ...}
    frame 1  body:   raw bytes, present only on ``output`` and ``file_data`` (agent to client)
                     and ``data`` (client to agent: a run's stdin, a ``put``'s file contents)

Each message is a msgspec ``Struct`` (cluster_patterns.wire) whose field types carry their
limits. ``REQUESTS`` decodes what a client may send, and is the allow-list: a type outside
it is refused as ``TypeNotAllowed`` (answered ``not_allowed``) and reaches no code at all,
the lesson of Salt's CVE-2020-11651. ``REPLIES`` decodes what the agent sends. Whatever the
frames hold, ``decode`` raises only ``ProtocolError``, whose message names the field
(huge integers, NaN, booleans for numbers, lone surrogates, bytes that are not UTF-8, deep
nesting), and which carries the request's id when it could be read. ``error_reply`` turns
it into the answer the agent sends.

Version 2 added flow control: the client grants ``credit`` for the reply bytes it has read,
and the agent sends at most CREDIT_WINDOW_BYTES beyond that. Version 3 added input, flowing
the other way under the same kind of window: a run's stdin and ``put``/``get`` file
transfers (``data`` chunks that the agent grants with ``data_credit``).

Try it:
    python -c "from cluster_runner_simulation.agent_protocol import *; \\
print(encode(PingRequest(id='p1')))"
"""

from __future__ import annotations

import enum
import os
import re
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Generic, Literal, TypeVar
from typing import Union, get_args

import msgspec
from msgspec import Meta

from cluster_patterns import defaults
from cluster_patterns.wire import Count, Id, Integer, JsonCodec, Record, WireError

if TYPE_CHECKING:
    from cluster_runner_simulation.protocols import SystemConfiguration

PROTOCOL_VERSION: Final = 3
DEFAULT_PORT: Final = defaults.AGENT_PORT

MAX_HEADER_BYTES: Final = 256 * 1024  # a header holds a command line, env and cwd
MAX_COMMAND_CHARS: Final = 128 * 1024
MAX_ENV_ENTRIES: Final = 256
MAX_ID_CHARS: Final = 128
MAX_CWD_CHARS: Final = 4096
MAX_ERROR_MESSAGE_CHARS: Final = 1024
MAX_NAME_CHARS: Final = 256  # node ids, host names, GPU names, OS names
MAX_GPUS: Final = 1024
MAX_TIMEOUT_S: Final = 365 * 24 * 3600.0
OUTPUT_CHUNK_BYTES: Final = 256 * 1024  # the agent sends output in chunks of at most this
MAX_OUTPUT_BYTES: Final = 64 * 1024 * 1024  # per command, stdout + stderr; the rest is dropped
# Largest message either side accepts (zmq.MAXMSGSIZE); bigger frames drop the connection.
MAX_REQUEST_BYTES: Final = MAX_HEADER_BYTES
MAX_REPLY_BYTES: Final = OUTPUT_CHUNK_BYTES + MAX_HEADER_BYTES
# Flow control: reply bytes (headers and bodies) the agent may send to one connection
# beyond what the client has credited back; a client credits at least every batch.
CREDIT_WINDOW_BYTES: Final = 8 * 1024 * 1024
CREDIT_BATCH_BYTES: Final = 1024 * 1024
MAX_CREDIT_BYTES: Final = 2**53
# Input (stdin, put): the agent grants each request this many bytes ahead with data_credit,
# and more as it writes them out; a data chunk carries at most DATA_CHUNK_BYTES, half of
# MAX_REQUEST_BYTES: libzmq applies MAXMSGSIZE to the frame as CURVE wraps it, a few dozen
# bytes longer than the chunk, so a chunk of exactly the limit would drop the connection.
DATA_CHUNK_BYTES: Final = 128 * 1024
INPUT_WINDOW_BYTES: Final = 2 * 1024 * 1024
MAX_PATH_CHARS: Final = 4096
MAX_FILE_NAME_CHARS: Final = 255
MAX_FILE_BYTES: Final = 2**53 - 1
# A file being written by a put (on the node) or a get (on the client) is first a temporary
# file of this form beside its destination, so an interrupted transfer never leaves the final
# name; a crash can leave one behind, recognisable by its name.
TEMP_PREFIX: Final = ".zcp-"
TEMP_SUFFIX: Final = ".part"

ENV_NAME_PATTERN: Final = r"\A[A-Za-z_][A-Za-z0-9_]*\Z"  # \Z: no trailing newline, unlike $
ENV_NAME: Final = re.compile(ENV_NAME_PATTERN)
_NO_NUL: Final = r"\A[^\x00]*\Z"


def transfer_temp_name() -> str:
    """A fresh temporary name for a transfer's file: ``.zcp-<16 hex digits>.part``.

    ``os.urandom`` is what ``secrets.token_hex`` reads, without the import (hmac, base64)
    that would slow the start of zrun and zrsh, which import this module too."""
    return f"{TEMP_PREFIX}{os.urandom(8).hex()}{TEMP_SUFFIX}"


# --- Field types, with their limits -----------------------------------------------------------

AnyId = Annotated[str, Meta(max_length=MAX_ID_CHARS)]  # "" where a message concerns no request
Command = Annotated[str, Meta(min_length=1, max_length=MAX_COMMAND_CHARS, pattern=_NO_NUL)]
Cwd = Annotated[str, Meta(min_length=1, max_length=MAX_CWD_CHARS, pattern=_NO_NUL)]
FilePath = Annotated[str, Meta(min_length=1, max_length=MAX_PATH_CHARS, pattern=_NO_NUL)]
FileName = Annotated[
    str, Meta(min_length=1, max_length=MAX_FILE_NAME_CHARS, pattern=r"\A[^\x00/]*\Z")
]
FileMode = Annotated[int, Meta(ge=0, le=0o7777)]
Sha256 = Annotated[str, Meta(pattern=r"\A[0-9a-f]{64}\Z")]
EnvName = Annotated[str, Meta(pattern=ENV_NAME_PATTERN)]
EnvValue = Annotated[str, Meta(pattern=_NO_NUL)]
Env = Annotated[dict[EnvName, EnvValue], Meta(max_length=MAX_ENV_ENTRIES)]
Timeout = Annotated[float, Meta(gt=0.0, le=MAX_TIMEOUT_S)]
CreditBytes = Annotated[int, Meta(ge=1, le=MAX_CREDIT_BYTES)]
Running = Annotated[int, Meta(ge=0, le=2**31 - 1)]
SignalName = Annotated[str, Meta(max_length=32)]
Name = Annotated[str, Meta(max_length=MAX_NAME_CHARS)]
ErrorText = Annotated[str, Meta(max_length=MAX_ERROR_MESSAGE_CHARS)]


class ErrorCode(str, enum.Enum):
    BAD_REQUEST = "bad_request"
    NOT_ALLOWED = "not_allowed"
    BUSY = "busy"
    DUPLICATE_ID = "duplicate_id"
    UNKNOWN_ID = "unknown_id"
    INTERNAL_ERROR = "internal_error"
    PATH_REFUSED = "path_refused"  # outside --files-root, '..', a symlink out of it
    FILE_ERROR = "file_error"  # the file system said no (missing, not a directory, disk full)
    CHECKSUM_MISMATCH = "checksum_mismatch"  # a put whose bytes differ from what was sent


class Stream(str, enum.Enum):
    STDOUT = "stdout"
    STDERR = "stderr"


class ProtocolError(WireError):
    """Frames that are not a valid message of this protocol.

    ``request_id`` is the id of the offending request when it could be read, else "".
    """

    def __init__(self, reason: str, request_id: str = "") -> None:
        super().__init__(reason)
        self.request_id = request_id


class TypeNotAllowed(ProtocolError):
    """A well-formed message whose type is not on the receiver's allow-list."""


# --- Messages ---------------------------------------------------------------------------------


class Message(msgspec.Struct, tag_field="type", kw_only=True):
    """Base of every message: ``id`` ties replies to the request they answer.

    Each subclass names its ``type`` once, as its tag; the unions below are the closed sets.
    """

    HAS_BODY: ClassVar[bool] = False  # only ``output``, ``file_data`` and ``data`` carry a body
    v: Literal[3] = 3
    id: Id


class RunRequest(Message, tag="run", kw_only=True):
    """Run ``command`` with /bin/sh; ``timeout`` counts from when the agent accepts it.

    ``stdin``: the command reads a pipe fed by this run's ``data`` messages (else /dev/null).
    """

    command: Command
    timeout: Timeout | None = None
    env: Env = {}
    cwd: Cwd | None = None
    stdin: bool = False


class CancelRequest(Message, tag="cancel"):
    """Kill the process group of the run with this id (from the same connection)."""


class FactsRequest(Message, tag="facts"):
    pass


class PingRequest(Message, tag="ping"):
    pass


class DataChunk(Message, tag="data", kw_only=True):
    """Input for request ``id`` (a run's stdin, a put's contents); the bytes are the body.

    At most what the agent granted with ``data_credit``. ``eof`` ends the input: the stdin
    pipe is closed, or the put is checked against ``sha256`` (of all its bytes) and committed.
    """

    HAS_BODY: ClassVar[bool] = True
    eof: bool = False
    sha256: Sha256 | None = None


class PutRequest(Message, tag="put", kw_only=True):
    """Write a file of ``size`` bytes below the agent's --files-root, from ``data`` chunks.

    ``path`` is absolute (inside the root) or relative to the root. When ``name`` is given
    and ``path`` is a directory, the file is ``path/name``, as ``scp FILE host:DIR`` does;
    with ``directory`` it must be one.
    """

    path: FilePath
    name: FileName | None = None
    directory: bool = False  # ``path`` must be a directory (several files go into it)
    mode: FileMode = 0o644
    size: Annotated[int, Meta(ge=0, le=MAX_FILE_BYTES)]


class GetRequest(Message, tag="get", kw_only=True):
    """Send the file at ``path`` (below the agent's --files-root) as ``file_data`` chunks."""

    path: FilePath


class Credit(Message, tag="credit", kw_only=True):
    """The client has read ``nbytes`` more reply bytes (headers and bodies) on this connection."""

    id: AnyId = ""
    nbytes: CreditBytes = msgspec.field(name="bytes")


class Accepted(Message, tag="accepted"):
    """The run is queued or running and has been silent for a moment."""


class Output(Message, tag="output", kw_only=True):
    """A chunk of a command's output; the bytes travel in the body frame."""

    HAS_BODY: ClassVar[bool] = True
    stream: Stream


class Exit(Message, tag="exit", kw_only=True):
    """The last message of a run."""

    exit_status: Integer | None = None
    exit_signal: SignalName | None = None
    timed_out: bool = False
    cancelled: bool = False
    # Output drained but not sent: beyond MAX_OUTPUT_BYTES, or unsendable when a timeout or
    # cancel killed a command whose client had stopped reading.
    dropped_bytes: Count = 0
    started: bool = True  # false: the run ended (timeout, cancel) while queued for a slot


class DataCredit(Message, tag="data_credit", kw_only=True):
    """The client may send ``nbytes`` more input bytes for request ``id``."""

    nbytes: CreditBytes = msgspec.field(name="bytes")


class FileData(Message, tag="file_data"):
    """A chunk of the file a ``get`` asked for; the bytes travel in the body frame."""

    HAS_BODY: ClassVar[bool] = True


class FileEnd(Message, tag="file_end", kw_only=True):
    """The last message of a put (the file is durable under its name) or a get (all sent)."""

    path: FilePath
    size: Annotated[int, Meta(ge=0, le=MAX_FILE_BYTES)]
    mode: FileMode
    sha256: Sha256


class GpuFacts(Record, kw_only=True):
    index: Count
    name: Name
    memory_total_mib: Count


class NodeFacts(Record, kw_only=True):
    """What node_facts.py gathers, as it travels (in ``facts_reply``, or printed over SSH)."""

    node_id: Name
    hostname: Name
    cpu_count: Annotated[int, Meta(ge=1, le=2**31 - 1)]
    memory_total_bytes: Count
    python_version: Annotated[str, Meta(max_length=64)]
    os_release: Name = ""
    gpus: Annotated[list[GpuFacts], Meta(max_length=MAX_GPUS)] = []


class FactsReply(Message, tag="facts_reply", kw_only=True):
    facts: NodeFacts


class Pong(Message, tag="pong", kw_only=True):
    node_id: Name


class Heartbeat(Message, tag="heartbeat", kw_only=True):
    """Sent while a connection has runs in flight (and as a probe of idle ones that owe)."""

    id: AnyId = ""
    running: Running = 0


class ErrorReply(Message, tag="error", kw_only=True):
    id: AnyId = ""  # "" when the request's id could not be read
    code: ErrorCode
    message: ErrorText = ""


Request = Union[
    RunRequest, CancelRequest, FactsRequest, PingRequest, Credit, DataChunk, PutRequest, GetRequest
]
Reply = Union[
    Accepted, Output, Exit, FactsReply, Pong, Heartbeat, ErrorReply, DataCredit, FileData, FileEnd
]


def _types(union: Any) -> frozenset[str]:
    """The ``type`` tags of a union's messages: each message type is named once, on its class."""
    return frozenset(str(cls.__struct_config__.tag) for cls in get_args(union))


# The allow-list: the only message types the agent will ever dispatch.
REQUEST_TYPES: Final = _types(Request)
REPLY_TYPES: Final = _types(Reply)

# --- The codec --------------------------------------------------------------------------------

M = TypeVar("M", bound=Message)


class _IdOnly(msgspec.Struct):
    id: AnyId = ""


class AgentCodec(JsonCodec[M], Generic[M]):
    """The frames of one direction's messages: a JSON header, and a body for ``output``."""

    def __init__(self, union: Any) -> None:
        super().__init__(union, ProtocolError, MAX_HEADER_BYTES)
        self.types = _types(union)
        self._ids = msgspec.json.Decoder(_IdOnly)

    def frames(self, message: Message, body: bytes | None = None) -> list[bytes]:
        """The frames to send for ``message`` (``body``: the output chunk of an ``output``)."""
        header = self.encode(message)
        return [header] if body is None else [header, body]

    def decode_frames(self, frames: list[bytes]) -> tuple[M, bytes | None]:
        """The message in ``frames`` and its body (None without one), or ``ProtocolError``."""
        if not 1 <= len(frames) <= 2:
            header_id = self.request_id(frames[0]) if frames else ""
            raise ProtocolError(f"expected 1 or 2 frames, got {len(frames)}", header_id)
        header = frames[0]
        if len(header) > MAX_HEADER_BYTES:
            raise ProtocolError(f"header larger than {MAX_HEADER_BYTES} bytes")
        try:
            message = self._decoder.decode(header)
        except msgspec.ValidationError as exc:
            raise self._invalid(str(exc), header) from None
        except (msgspec.DecodeError, RecursionError):
            raise _unreadable(header) from None
        body = frames[1] if len(frames) == 2 else None
        if message.HAS_BODY != (body is not None):
            tag = type(message).__struct_config__.tag
            need = "needs a body frame" if body is None else "has no body frame"
            raise ProtocolError(f"a {tag!r} message {need}", message.id)
        return message, body

    def request_id(self, header: bytes) -> str:
        """Best effort: the id in a header that failed to decode, "" if it cannot be read."""
        try:
            return self._ids.decode(header).id
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            return ""

    def _invalid(self, detail: str, header: bytes) -> ProtocolError:
        """msgspec's ``Expected ... - at `$.timeout``` as the protocol's field-named error."""
        request_id = self.request_id(header)
        where = _AT.search(detail)
        what = detail[: where.start()] if where else detail
        field = where.group(2) if where else ""
        if missing := _MISSING.search(what):
            return ProtocolError(f"field {missing.group(1)!r} is required", request_id)
        if field == "type" and what.startswith("Invalid"):
            shown = _shown_type(header)
            return TypeNotAllowed(f"message type {shown} is not allowed here", request_id)
        if field == "v":
            reason = f"unsupported protocol version ({what}); this side speaks {PROTOCOL_VERSION}"
            return ProtocolError(f"field 'v': {reason}", request_id)
        if not field:
            return ProtocolError(f"header: {what}", request_id)
        key = " (a key)" if where and where.group(1) else ""
        return ProtocolError(f"field {field!r}{key}: {what}", request_id)


# msgspec's "... - at `$.env.A`", or "... - at `key` in `$.env`" when an object key is wrong.
_AT: Final = re.compile(r" - at (`key` in )?`\$\.?([^`]*)`$")
_MISSING: Final = re.compile(r"missing required field `([^`]*)`")


def _unreadable(header: bytes) -> ProtocolError:
    """Why msgspec could not parse ``header`` at all, naming the field where one is to blame."""
    from cluster_runner_simulation.agent_diagnose import diagnose  # the error path only

    reason, request_id = diagnose(header, MAX_ID_CHARS)
    return ProtocolError(reason, request_id)


def _shown_type(header: bytes) -> str:
    from cluster_runner_simulation.agent_diagnose import shown_type

    return shown_type(header)


REQUESTS: Final = AgentCodec[Request](Request)  # what the agent decodes: the allow-list
REPLIES: Final = AgentCodec[Reply](Reply)  # what a client decodes


def encode(message: Message, body: bytes | None = None) -> list[bytes]:
    """The frames to send for ``message``; either codec encodes every message alike."""
    return REQUESTS.frames(message, body)


def error_reply(exc: ProtocolError) -> ErrorReply:
    """The ``error`` reply for a request that failed to decode."""
    code = ErrorCode.NOT_ALLOWED if isinstance(exc, TypeNotAllowed) else ErrorCode.BAD_REQUEST
    return ErrorReply(id=exc.request_id, code=code, message=str(exc)[:MAX_ERROR_MESSAGE_CHARS])


def request_id_of(frames: list[bytes]) -> str:
    """Best effort: the id of a message that failed to decode, for the error reply."""
    return REQUESTS.request_id(frames[0]) if frames else ""


# --- Facts ------------------------------------------------------------------------------------

_FACTS: Final = msgspec.json.Decoder(NodeFacts)


def decode_facts(raw: bytes) -> NodeFacts:
    """The JSON object node_facts.py prints, validated; ``ProtocolError`` naming the field."""
    try:
        return _FACTS.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        raise ProtocolError(f"malformed system facts: {str(exc)[:200]}") from None


def convert_facts(gathered: dict[str, Any]) -> NodeFacts:
    """What node_facts.gather returns, validated as it will travel."""
    try:
        return msgspec.convert(gathered, NodeFacts)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"malformed system facts: {str(exc)[:200]}") from None


def system_config_from_facts(facts: NodeFacts, node_id: str | None = None) -> SystemConfiguration:
    """A node's facts as cluster_runner's value; ``node_id`` names it as the caller knows it."""
    # Imported here: the command-line clients never need it, and start faster without it.
    from cluster_runner_simulation.protocols import GpuInfo, SystemConfiguration

    return SystemConfiguration(
        node_id=facts.node_id if node_id is None else node_id,
        hostname=facts.hostname,
        cpu_count=facts.cpu_count,
        memory_total_bytes=facts.memory_total_bytes,
        python_version=facts.python_version,
        os_release=facts.os_release,
        gpus=tuple(GpuInfo(g.index, g.name, g.memory_total_mib) for g in facts.gpus),
    )
