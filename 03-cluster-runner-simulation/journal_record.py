"""One journal record and its line: the body's schema, encoding, and the checks of a line.

Nothing here touches a file or the network; ``journal_format.py`` is the file (scan, recovery,
repair, appends), the collector and both writers use these checks.

Line layout (UTF-8, ASCII-only JSON, ``\\n`` terminated, ``body`` always last):

    {"v":1,"id":"<record id>","len":<bytes of body>,"crc":"<crc32 of body, 8 hex>","body":{...}}

``body`` is ``PerfTestResult.to_record()`` serialised canonically (sorted keys, no
spaces). Its exact bytes are the last ``len`` bytes before the closing brace, so the
checksum is verified over the bytes as written, not over a re-serialisation.

A body is decoded into ``RecordBody``, the ``PerfTestResult`` record declared once with its
limits beside its fields (msgspec; unknown fields refused). Every line is checked the same way
wherever it comes from (``decode_line``): at most ``MAX_LINE_BYTES``, ASCII JSON (so no invalid
UTF-8), no NaN or Infinity, no lone surrogates, integers within 64 bits, nesting of at most
``MAX_DEPTH`` levels, the length and checksum, and the body's fields and types. The writers and
the collector run the same check before they acknowledge a record (``checked_line``, or
``checked_lines`` for a whole WRITE), so an acknowledged record can always be read back.

    python -c "from cluster_runner_simulation.journal_record import *; print(MAX_LINE_BYTES)"
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, TypeVar

import msgspec
from msgspec import Meta

from cluster_runner_simulation.protocols import JournalError, PerfTestResult

S = TypeVar("S")

FORMAT_VERSION: Final = 1
BODY_KEY: Final = b',"body":'
MAX_LINE_BYTES: Final = 1 << 20  # a perf-test result is tiny; a megabyte line means garbage
MAX_ID_CHARS: Final = 4096
MAX_DEPTH: Final = 32  # nesting levels of a line, its own object included; deeper is an attack
MAX_EXIT_STATUS: Final = 1 << 31  # |exit_status| is below this
# The line's object and the body's hold ``extra``; its own level is the third.
EXTRA_LEVELS: Final = MAX_DEPTH - 2

RecordId = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
ExitStatus = Annotated[int, Meta(gt=-MAX_EXIT_STATUS, lt=MAX_EXIT_STATUS)]


class RecordBody(msgspec.Struct, forbid_unknown_fields=True):
    """A journal line's body: ``PerfTestResult.to_record()``, declared once with its limits.

    Numbers are finite (JSON has no NaN), integers fit 64 bits; a float field takes an integer.
    """

    record_id: RecordId
    schedule: str
    test: str
    nodes: list[str]
    exit_status: ExitStatus | None
    result_line: str
    started_at: float
    finished_at: float
    metrics: dict[str, float] = {}
    extra: dict[str, Any] = {}


class _Line(msgspec.Struct):
    """The wrapper around a body; ``body`` is kept raw, its checksum is over those bytes."""

    v: Any
    id: Any
    len: Any
    crc: Any
    body: msgspec.Raw


_BODY: Final = msgspec.json.Decoder(RecordBody)
_LINE: Final = msgspec.json.Decoder(_Line)
_FAST_ENCODER: Final = msgspec.json.Encoder(order="sorted")
# The exact encoders for what msgspec writes differently: it emits UTF-8 (a line is ASCII)
# and writes NaN and Infinity as null (a writer must refuse them).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)
_STRICT_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)


class RecordRejected(JournalError):
    """A record no journal line could hold; ``reason`` says why (retrying will not help)."""

    def __init__(self, record_id: object, reason: str) -> None:
        shown = repr(record_id)
        shown = shown if len(shown) <= 64 else shown[:60] + "...'"
        super().__init__(f"record {shown} rejected: {reason}")
        self.reason = reason


# --- Encoding ---------------------------------------------------------------------------------


def _encode_body(record: Mapping[str, Any], exact: json.JSONEncoder) -> bytes:
    body = _FAST_ENCODER.encode(record)
    if body.isascii() and b"null" not in body:  # no \u escape needed, no NaN turned into null
        return body
    return exact.encode(record).encode()


def _encode_result(result: PerfTestResult) -> bytes:
    """``canonical_body(result.to_record())``, but refusing NaN; the dataclass is encoded as it
    is when that gives the same bytes (its fields are the record's keys), saving the dict."""
    plain = type(result) is PerfTestResult
    if plain and type(result.metrics) is dict and type(result.extra) is dict:
        body = _FAST_ENCODER.encode(result)
        if body.isascii() and b"null" not in body:
            return body
    return _encode_body(result.to_record(), _STRICT_CANONICAL)


def canonical_body(record: Mapping[str, Any]) -> bytes:
    """The bytes a record body is stored as: sorted keys, compact, ASCII only."""
    return _encode_body(record, _CANONICAL)


def _quoted_id(record_id: str) -> bytes:
    quoted = _FAST_ENCODER.encode(record_id)
    return quoted if quoted.isascii() else json.dumps(record_id).encode()


def _line(record_id: str, body: bytes) -> bytes:
    crc = zlib.crc32(body)
    head = b'{"v":%d,"id":%s,"len":%d,"crc":"%08x"' % (
        FORMAT_VERSION,
        _quoted_id(record_id),
        len(body),
        crc,
    )
    return head + BODY_KEY + body + b"}\n"


def encode_line(record_id: str, body: bytes) -> bytes:
    """One journal line for ``body`` (already canonical JSON bytes without newlines)."""
    if b"\n" in body or b"\r" in body:
        raise ValueError("a record body must not contain line breaks")
    return _line(record_id, body)


def encode_record(result: PerfTestResult) -> bytes:
    """The canonical body of ``result``; ``RecordRejected`` if no journal line could hold it.

    The writers call this before anything is sent or stored, so a record that is too big,
    not finite or badly named fails at once with the reason instead of being acknowledged.
    """
    record_id = result.record_id
    try:
        check_record_id(record_id)
        body = _encode_result(result)
    except RecursionError:
        raise RecordRejected(record_id, f"nested deeper than {MAX_DEPTH} levels") from None
    except (TypeError, ValueError, OverflowError) as exc:
        reason = str(exc)
        if "Out of range float" in reason:
            reason = "a number is NaN or infinite, which JSON cannot carry (not finite)"
        raise RecordRejected(record_id, reason) from None
    if len(body) + 6 * len(record_id) + 100 > MAX_LINE_BYTES:  # near the limit: measure
        size = len(encode_line(record_id, body)) - 1
        if size > MAX_LINE_BYTES:
            reason = f"its journal line would be {size} bytes, over the {MAX_LINE_BYTES}-byte limit"
            raise RecordRejected(record_id, reason)
    return body


# --- Checking ---------------------------------------------------------------------------------

# msgspec's wording, and what it means for a journal record.
_EXPLAINED = (
    ("Integer value out of range", "an integer out of range (integers must fit 64 bits)"),
    ("Number out of range", "a number out of range (not finite)"),
    ("Expected `int` <", f"exit_status must be null or an integer below {MAX_EXIT_STATUS}"),
    ("Expected `int` >", f"exit_status must be null or an integer above -{MAX_EXIT_STATUS}"),
)
_AT_BYTE = re.compile(r"\(byte (\d+)\)")
_NOT_FINITE = (b"NaN", b"Infinity", b"-Infinity")


def _explain(error: msgspec.DecodeError, data: bytes, schema: str) -> str:
    """A reason that says what is wrong with ``data`` (meant to be ``schema``) in a journal's
    terms."""
    detail = str(error)
    if not isinstance(error, msgspec.ValidationError):
        where = _AT_BYTE.search(detail)
        token = data[int(where[1]) :] if where else b""
        for constant in _NOT_FINITE:
            if token.startswith(constant):
                return f"{constant.decode()} is not a finite number (JSON has no such value)"
        return f"not JSON ({detail})"
    for phrase, meaning in _EXPLAINED:
        if detail.startswith(phrase):
            return f"{meaning}: {detail}"
    return f"{schema}: {detail}"


def _depth(value: Any) -> int:
    """Nesting depth of decoded JSON, without recursion (only called for a non-empty extra)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _too_deep() -> ValueError:
    return ValueError(f"nested deeper than {MAX_DEPTH} levels (the journal line included)")


def _strict_decode(decoder: msgspec.json.Decoder[S], data: bytes, what: str, schema: str) -> S:
    """``data`` decoded, after the checks every line gets; ``ValueError`` says what is wrong."""
    if len(data) > MAX_LINE_BYTES:
        raise ValueError(f"{what} is {len(data)} bytes, over the {MAX_LINE_BYTES}-byte limit")
    if not data.isascii():
        raise ValueError("not ASCII JSON (other characters must be \\u escapes; invalid UTF-8?)")
    try:
        return decoder.decode(data)
    except RecursionError:
        raise _too_deep() from None
    except msgspec.DecodeError as exc:
        raise ValueError(_explain(exc, data, schema)) from None


def check_record_id(record_id: object) -> str:
    """A record id is 1-MAX_ID_CHARS characters of valid Unicode without a line break."""
    if not isinstance(record_id, str) or not record_id:
        raise ValueError("the record id is missing or empty")
    if len(record_id) > MAX_ID_CHARS:
        raise ValueError(f"the record id is {len(record_id)} characters (at most {MAX_ID_CHARS})")
    if "\n" in record_id or "\r" in record_id:
        raise ValueError("the record id contains a line break")
    try:
        record_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            "the record id holds a lone surrogate, which is not valid Unicode"
        ) from None
    return record_id


def check_body(record_id: str, body: bytes | memoryview) -> RecordBody:
    """Decode and check one record body; ``ValueError`` says what is wrong with it."""
    data = bytes(body)
    if b"\n" in data or b"\r" in data:
        raise ValueError("a record body must not contain line breaks")
    record = _strict_decode(_BODY, data, "the body", "the body is not a PerfTestResult record")
    if record.record_id != record_id:
        raise ValueError("record id of the line and of its body differ")
    if record.extra and _depth(record.extra) > EXTRA_LEVELS:
        raise _too_deep()
    return record


def checked_line(record_id: str, body: bytes) -> bytes:
    """The journal line for a record, checked as every later start will check it.

    This is ``FileJournalWriter``'s boundary, and the collector's for a record that
    ``checked_lines`` could not take in bulk. ``RecordRejected`` says why not.
    """
    try:
        check_record_id(record_id)
        check_body(record_id, body)
        line = _line(record_id, body)
        if len(line) - 1 > MAX_LINE_BYTES:
            raise ValueError(f"line is {len(line) - 1} bytes, over the {MAX_LINE_BYTES}-byte limit")
    except ValueError as exc:
        raise RecordRejected(record_id, str(exc)) from None
    return line


def checked_lines(ids: Sequence[str], bodies: Sequence[bytes]) -> list[bytes] | None:
    """The journal lines of a whole WRITE if every record passes ``checked_line``, else None.

    The collector's hot path: the checks that are cheap per frame run once over all records
    (ASCII, no line breaks, small enough), the rest is one msgspec decode per body. None means
    some record fails; the caller then runs ``checked_line`` on each to learn which and why.
    """
    joined_ids = "".join(ids)
    if "\n" in joined_ids or "\r" in joined_ids:
        return None
    lines = []
    for record_id, body in zip(ids, bodies):
        if len(body) + len(record_id) * 6 + 100 > MAX_LINE_BYTES or not body.isascii():
            return None  # near the limit or not ASCII: measured precisely, one by one
        if b"\n" in body or b"\r" in body:
            return None
        try:
            record = _BODY.decode(body)
        except (msgspec.DecodeError, RecursionError):
            return None
        if record.record_id != record_id or (record.extra and _depth(record.extra) > EXTRA_LEVELS):
            return None
        lines.append(_line(record_id, body))
    return lines


# --- Decoding ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JournalEntry:
    line_no: int
    record_id: str
    body: dict[str, Any]

    @classmethod
    def of(cls, record_id: str, record: RecordBody, line_no: int = 0) -> JournalEntry:
        return cls(line_no, record_id, msgspec.structs.asdict(record))

    def result(self) -> PerfTestResult:
        return PerfTestResult.from_record(self.body)


def decode_record(line: bytes) -> tuple[str, RecordBody]:
    """Parse and verify one line (without its newline); ``ValueError`` says what is wrong."""
    outer = _strict_decode(_LINE, line, "line", "not a journal line")
    if outer.v != FORMAT_VERSION or isinstance(outer.v, bool):
        raise ValueError(f"unknown format version {repr(outer.v)[:40]}")
    record_id = check_record_id(outer.id)
    length, crc = outer.len, outer.crc
    if not isinstance(length, int) or isinstance(length, bool) or not isinstance(crc, str):
        raise ValueError("missing len or crc")
    raw = line[-(length + 1) : -1] if length >= 0 else b""
    if len(raw) != length or line[-(length + 1 + len(BODY_KEY)) : -(length + 1)] != BODY_KEY:
        raise ValueError(f"body length does not match len={length}")
    if f"{zlib.crc32(raw):08x}" != crc:
        raise ValueError(f"checksum mismatch (stored {crc[:16]}, computed {zlib.crc32(raw):08x})")
    return record_id, check_body(record_id, raw)


def decode_line(line: bytes) -> JournalEntry:
    """Parse and verify one line (without its newline); ``ValueError`` says what is wrong."""
    return JournalEntry.of(*decode_record(line))
