"""The journal's wire protocol (version 2): its messages, declared once, and their one codec.

    writers (DEALER) --WRITE: index frame + bodies frame--> collector (ROUTER)
    writers          <--ACK: one frame, after the fsync----- collector
                     <--NACK: one frame, invalid record----- collector

Every frame but a WRITE's second is one JSON object of the shared wire layer
(``cluster_patterns.wire``): ``"type"`` names the message, ``"v"`` is 2. A WRITE is two frames,
whatever the number of records it carries (ZeroMQ costs per frame): the index (record ids and
body sizes) and the bodies back to back in index order, each a ``journal_record`` body.

Nothing here touches a socket. ``JournalProtocolError`` is the only error a decoder raises; its
message names the field (``... at $.sizes[3]``). Version 1 (frames ``ZJ1``, ``WRITE``, a text
index) is refused with a message that says so.

    python -c "from cluster_runner_simulation.journal_protocol import *; print(MAX_MSG_BYTES)"
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Final, Literal, Union

import msgspec
from msgspec import Meta

from cluster_patterns.wire import JsonCodec, WireError
from cluster_runner_simulation.journal_record import RecordId

VERSION: Final = 2
MAX_MSG_BYTES: Final = 8 << 20  # bigger frames are garbage; ZeroMQ drops the peer
MAX_RECORDS: Final = 4096  # records one WRITE (and one ACK) names at most
MAX_REASON_CHARS: Final = 1000
V1_PROTOCOL_FRAME: Final = b"ZJ1"

BodySize = Annotated[int, Meta(ge=0, le=MAX_MSG_BYTES)]
RecordIds = Annotated[list[RecordId], Meta(max_length=MAX_RECORDS)]


class JournalProtocolError(WireError):
    """A message that does not follow the journal protocol."""


class _Msg(msgspec.Struct, tag_field="type", kw_only=True):
    v: Literal[2] = VERSION


class Write(_Msg, tag="WRITE"):
    """The index frame of a WRITE: ``sizes[i]`` bytes of the bodies frame are record ``ids[i]``."""

    ids: Annotated[list[RecordId], Meta(min_length=1, max_length=MAX_RECORDS)]
    sizes: Annotated[list[BodySize], Meta(min_length=1, max_length=MAX_RECORDS)]

    def __post_init__(self) -> None:
        if len(self.sizes) != len(self.ids):  # msgspec reports this as a validation error
            raise ValueError(f"{len(self.ids)} ids but {len(self.sizes)} sizes")


class Ack(_Msg, tag="ACK"):
    """These records are durable (or were already stored)."""

    ids: RecordIds


class Nack(_Msg, tag="NACK"):
    """This record is invalid; retrying will not help."""

    id: RecordId
    reason: Annotated[str, Meta(max_length=MAX_REASON_CHARS)]


Reply = Union[Ack, Nack]

_INDEX: JsonCodec[Write] = JsonCodec(Write, JournalProtocolError, MAX_MSG_BYTES)
_REPLY: JsonCodec[Reply] = JsonCodec(Reply, JournalProtocolError, MAX_MSG_BYTES)


@dataclass(frozen=True)
class Records:
    """A decoded WRITE: record ids and their bodies, in index order."""

    ids: list[str]
    bodies: list[bytes]


def encode_write(records: Sequence[tuple[str, bytes]]) -> list[bytes]:
    """The two frames of a WRITE carrying ``records`` (id, body)."""
    ids = [record_id for record_id, _ in records]
    bodies = [body for _, body in records]
    index = _INDEX.encode(Write(ids=ids, sizes=[len(body) for body in bodies]))
    return [index, b"".join(bodies)]


def decode_write(frames: Sequence[bytes]) -> Records:
    """A WRITE's records, or ``JournalProtocolError`` (the collector accepts nothing else)."""
    if frames and frames[0] == V1_PROTOCOL_FRAME:
        raise JournalProtocolError(
            f"journal protocol version 1 (a {V1_PROTOCOL_FRAME.decode()} frame): "
            f"this collector speaks version {VERSION}; upgrade the writer"
        )
    if len(frames) != 2:
        raise JournalProtocolError(f"a WRITE is 2 frames (index, bodies), got {len(frames)}")
    index = _INDEX.decode(frames[0])
    bodies = frames[1]
    ends = list(itertools.accumulate(index.sizes))
    if ends[-1] != len(bodies):
        raise JournalProtocolError(
            f"the WRITE index covers {ends[-1]} bytes, the bodies frame has {len(bodies)}"
        )
    starts = [0, *ends[:-1]]
    return Records(index.ids, [bodies[start:end] for start, end in zip(starts, ends)])


def encode_reply(reply: Reply) -> list[bytes]:
    """The one frame of an ACK or a NACK."""
    return [_REPLY.encode(reply)]


def decode_reply(frames: Sequence[bytes]) -> Reply:
    """An ACK or a NACK, or ``JournalProtocolError`` (a writer accepts nothing else)."""
    if len(frames) != 1:
        raise JournalProtocolError(f"a reply is 1 frame, got {len(frames)}")
    return _REPLY.decode(frames[0])
