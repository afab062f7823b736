"""One way to declare a message, for every protocol in this repository.

Nothing here touches a socket. A protocol declares each of its messages once, as a msgspec
``Struct`` whose field types carry their limits (``Id``, ``Count``, ``Payload``...), and
gets one ``JsonCodec`` for the union of them. The codec validates at the boundary: whatever
the bytes are (malformed JSON, invalid UTF-8, a lone surrogate, a 5,000-digit integer, NaN,
``true`` where a number belongs, nesting 100,000 deep, an unknown type, a wrong version, a
frame over the size limit), ``decode`` raises the protocol's own ``WireError`` subclass with
a message that names the field (``... at $.tasks[3].ms``), and nothing else.

Conventions every protocol here follows (docs/wire-protocol.md states them for clients in
other languages):
- a frame is one UTF-8 JSON object; ``"type"`` names the message, ``"v"`` its version;
- unknown fields are ignored, so a newer peer may add optional ones;
- string lengths count Unicode code points (Python ``len``), not bytes or UTF-16 units;
- integers are at most 2**53 - 1, the largest that every JSON implementation reads exactly;
- numbers are finite; JSON has one number type, so an integer is accepted for a float.

Try it:
    python -c "from cluster_patterns.wire import *; print(MAX_SAFE_INTEGER)"
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Generic, TypeVar

import msgspec
from msgspec import Meta

MAX_SAFE_INTEGER: Final = 2**53 - 1
MAX_ID_CHARS: Final = 128
# Floats beyond this are nonsense for every quantity on these wires (seconds, percentages,
# loads); the bound also keeps a 1e999 that JSON parses as infinity out.
MAX_ABS_FLOAT: Final = 1e15

Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
Count = Annotated[int, Meta(ge=0, le=MAX_SAFE_INTEGER)]
Integer = Annotated[int, Meta(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)]
Number = Annotated[float, Meta(ge=-MAX_ABS_FLOAT, le=MAX_ABS_FLOAT)]
NonNegative = Annotated[float, Meta(ge=0.0, le=MAX_ABS_FLOAT)]
Positive = Annotated[float, Meta(gt=0.0, le=MAX_ABS_FLOAT)]


class WireError(ValueError):
    """A frame that is not a valid message; each protocol raises its own subclass."""


class Record(msgspec.Struct, forbid_unknown_fields=False):
    """A nested record inside a message (no tag, no version)."""


M = TypeVar("M")


class JsonCodec(Generic[M]):
    """Encodes messages to one JSON frame and decodes frames back, validating on the way in."""

    def __init__(self, message_type: Any, error: type[WireError], max_bytes: int) -> None:
        self._decoder: msgspec.json.Decoder[M] = msgspec.json.Decoder(message_type)
        self._encoder = msgspec.json.Encoder()
        self.error = error
        self.max_bytes = max_bytes

    def encode(self, message: msgspec.Struct) -> bytes:
        """One frame for ``message``; the protocol's error if it would exceed ``max_bytes``."""
        try:
            frame = self._encoder.encode(message)
        except (TypeError, ValueError, OverflowError) as exc:
            raise self.error(f"cannot encode {type(message).__name__}: {exc}") from None
        if len(frame) > self.max_bytes:
            raise self.error(
                f"{type(message).__name__} is {len(frame)} bytes, over the {self.max_bytes} limit"
            )
        return frame

    def decode(self, frame: bytes) -> M:
        """The message in ``frame``, or the protocol's error naming what is wrong."""
        if len(frame) > self.max_bytes:
            raise self.error(f"frame of {len(frame)} bytes exceeds {self.max_bytes}")
        if not frame.isascii():  # msgspec checks the strings it reads, not those it skips
            try:
                frame.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise self.error(f"not a JSON document: not UTF-8 at byte {exc.start}") from None
        try:
            return self._decoder.decode(frame)
        except msgspec.ValidationError as exc:
            raise self.error(_validation_message(str(exc))) from None
        except msgspec.DecodeError as exc:
            raise self.error(f"not a JSON document: {str(exc)[:120]}") from None
        except RecursionError:
            raise self.error("JSON nested too deeply") from None


def _validation_message(detail: str) -> str:
    if detail.endswith("at `$.v`"):
        return f"unsupported protocol version ({detail})"
    return detail[:200]


def describe(frame: bytes, limit: int = 60) -> str:
    """A short printable preview of a frame, for log lines about bad messages."""
    return repr(frame[:limit]) + ("..." if len(frame) > limit else "")
