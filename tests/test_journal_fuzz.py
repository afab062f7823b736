"""Fuzzing the journal: its WRITE decoder, the collector's record check, the file scanner.

Property tests (hypothesis; conftest.py makes them deterministic in CI):
  * only ``JournalProtocolError`` escapes the decoders, only ``RecordRejected`` the record
    check; a record the collector accepts can always be read back, and the bulk check of a
    whole WRITE (``checked_lines``) accepts exactly what the one-by-one check accepts;
  * a flipped bit in a complete line is always corruption, never a silently cut record;
  * the scanner never drops a complete valid record, and recovery never shrinks a file by more
    than the torn tail it reports; repair copies every byte it cuts.
One real-socket test sends thousands of random and mutated frames to a collector process, then
checks that it still stores a valid WRITE and that its memory stayed bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cluster_runner_simulation.journal_format import (
    JournalCorruption,
    recover_journal,
    scan_journal,
)
from cluster_runner_simulation.journal_protocol import (
    MAX_MSG_BYTES,
    JournalProtocolError,
    decode_reply,
    decode_write,
    encode_write,
)
from cluster_runner_simulation.journal_record import (
    RecordRejected,
    canonical_body,
    checked_line,
    checked_lines,
    decode_line,
    encode_line,
)
from cluster_runner_simulation.journal_writer import ZmqJournalWriter
from cluster_runner_simulation.protocols import PerfTestResult

JOURNAL = "03-cluster-runner-simulation/zmq_journal.py"
FUZZ_MESSAGES = 3000
FUZZ_SEED = 20261201
OVERSIZED_AT = (1000, 2000)  # messages that get the connection dropped
RSS_BOUND_MIB = 256  # the collector idles near 40 MiB; a leak or unbounded queue would show
DEEP = b'{"record_id":"h","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
HUGE_INT = b'{"record_id":"h","exit_status":' + b"9" * 5000 + b"}"
NAN = b'{"record_id":"h","started_at":NaN}'


def result(record_id: str) -> PerfTestResult:
    return PerfTestResult(record_id, "all", "all_reduce_perf", ("n0",), 0, "line", 1.0, 2.0)


def line_for(record_id: str) -> bytes:
    return encode_line(record_id, canonical_body(result(record_id).to_record()))


@contextlib.contextmanager
def journal_file(data: bytes) -> Iterator[Path]:
    """A fresh directory per example (hypothesis runs many in one test), holding ``data``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "j.jsonl"
        path.write_bytes(data)
        yield path


# --- The WRITE decoder and the collector's record check --------------------------------------

INDEXES = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["WRITE", "ACK", "NACK", "write", ""]),
        "v": st.sampled_from([2, 1, "2", None, 2.0]),
        "ids": st.lists(st.text(max_size=8), max_size=4) | st.text(max_size=4),
        "sizes": st.lists(st.sampled_from([0, 1, 5, -1, 2**53, 10**30]), max_size=4),
        "id": st.text(max_size=8),
        "reason": st.text(max_size=8),
    },
).map(lambda index: json.dumps(index).encode())
FRAMES = st.one_of(
    st.lists(st.binary(max_size=64), max_size=4),
    st.tuples(INDEXES, st.binary(max_size=16)).map(list),
    st.tuples(INDEXES).map(list),
)


@settings(max_examples=400, deadline=None)
@given(frames=FRAMES)
def test_only_protocol_errors_escape_the_decoders(frames: list[bytes]) -> None:
    for decode in (decode_write, decode_reply):
        try:
            decode(frames)
        except JournalProtocolError:
            pass


JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)
RECORD_FIELDS = ["schedule", "test", "nodes", "exit_status", "result_line", "started_at"]


@st.composite
def record_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """Record bodies that are mostly right, with a few fields swapped for arbitrary JSON."""
    record_id = draw(st.sampled_from(["r", "id with space", "é", "x" * 10]))
    record = result(record_id).to_record()
    for name in draw(st.lists(st.sampled_from([*RECORD_FIELDS, "metrics", "extra", "more"]))):
        record[name] = draw(JSON_VALUES)
    if draw(st.booleans()):
        record.pop(draw(st.sampled_from(RECORD_FIELDS)), None)
    try:
        body = canonical_body(record)
    except (ValueError, RecursionError):
        body = b"{}"
    return record_id, body


CASES = st.one_of(record_bodies(), st.tuples(st.text(max_size=8), st.binary(max_size=64)))


@settings(max_examples=400, deadline=None)
@given(case=CASES)
@example(case=("h", DEEP))
@example(case=("h", HUGE_INT))
@example(case=("h", NAN))
@example(case=("w", b'{"record_id":"w"}'))
def test_the_record_check_raises_only_record_rejected_and_accepts_only_readable_records(
    case: tuple[str, bytes],
) -> None:
    record_id, body = case
    try:
        line = checked_line(record_id, body)
    except RecordRejected:
        return
    entry = decode_line(line[:-1])  # what every later start does with it
    assert entry.record_id == record_id
    entry.result()  # and what a reader does


@settings(max_examples=300, deadline=None)
@given(cases=st.lists(CASES, min_size=1, max_size=3))
def test_the_bulk_check_accepts_exactly_what_the_one_by_one_check_accepts(
    cases: list[tuple[str, bytes]],
) -> None:
    one_by_one: list[bytes] | None = []
    for record_id, body in cases:
        try:
            line = checked_line(record_id, body)
        except RecordRejected:
            one_by_one = None
            break
        assert one_by_one is not None
        one_by_one.append(line)
    ids, bodies = [c[0] for c in cases], [c[1] for c in cases]
    assert checked_lines(ids, bodies) == one_by_one


# --- The file scanner ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(where=st.integers(0, 2), position=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_a_flipped_bit_in_a_complete_line_is_always_corruption(
    where: int, position: int, bit: int
) -> None:
    lines = [line_for(f"r{i}") for i in range(3)]
    target = lines[where]
    position %= len(target) - 1  # any byte but the newline
    lines[where] = (
        target[:position] + bytes([target[position] ^ (1 << bit)]) + target[position + 1 :]
    )
    data = b"".join(lines)
    with journal_file(data) as path:
        with pytest.raises(JournalCorruption) as info:
            recover_journal(path)
        assert info.value.line_no == where + 1
        assert path.read_bytes() == data


PIECES = st.lists(
    st.one_of(
        st.integers(0, 20).map(lambda i: line_for(f"r{i}")),  # valid, sometimes a duplicate
        st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"") + b"\n"),  # garbage line
        st.integers(0, 20).map(lambda i: line_for(f"r{i}")[: i * 7]),  # a piece of a line
    ),
    max_size=8,
)


def complete_lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")[:-1]


@settings(max_examples=300, deadline=None)
@given(pieces=PIECES)
def test_the_scanner_never_drops_a_complete_valid_record(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    with journal_file(data) as path:
        ends = data.rfind(b"\n") + 1
        try:
            scan = scan_journal(path)
        except JournalCorruption as exc:
            # The bad line is complete, everything before it is valid and is what a repair keeps.
            offset = getattr(exc, "offset")
            assert offset < ends and data[:offset].count(b"\n") == exc.line_no - 1
            assert offset == 0 or data[offset - 1 : offset] == b"\n"
            path.write_bytes(data[:offset])
            assert len(scan_journal(path).entries) == exc.line_no - 1
            return
        # Accepted: every complete line is one of its records, in order; only the tail is torn.
        assert [encode_line(e.record_id, canonical_body(e.body)) for e in scan.entries] == [
            line + b"\n" for line in complete_lines(data)
        ]
        assert (scan.valid_bytes, scan.torn_bytes) == (ends, len(data) - ends)


@settings(max_examples=300, deadline=None)
@given(pieces=PIECES)
def test_recovery_shrinks_a_file_by_at_most_the_torn_tail_it_reports(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    with journal_file(data) as path:
        unterminated = len(data) - (data.rfind(b"\n") + 1)
        try:
            scan = recover_journal(path)
        except JournalCorruption:
            assert path.read_bytes() == data  # refused: touched nothing
            return
        assert scan.torn_bytes == unterminated
        assert path.read_bytes() == data[: len(data) - scan.torn_bytes]


@settings(max_examples=150, deadline=None)
@given(pieces=PIECES)
def test_repair_keeps_the_valid_prefix_and_copies_every_cut_byte(pieces: list[bytes]) -> None:
    from cluster_runner_simulation.journal_format import repair_journal

    data = b"".join(pieces)
    with journal_file(data) as path:
        report = repair_journal(path)
        kept = path.read_bytes()
        copied = report.copy_path.read_bytes() if report.copy_path else b""
        assert kept + copied == data
        assert len(scan_journal(path).entries) == report.kept_records == kept.count(b"\n")
        assert scan_journal(path).torn_bytes == 0


# --- A real collector under a stream of garbage -----------------------------------------------


def record(record_id: str) -> tuple[str, bytes]:
    return record_id, canonical_body(result(record_id).to_record())


def fuzz_message(rng: random.Random, valid: list[list[bytes]]) -> list[bytes]:
    """One random or mutated message: most look almost right, a few are large."""
    roll = rng.random()
    if roll < 0.25:
        return [rng.randbytes(rng.randint(0, 48)) for _ in range(rng.randint(1, 5))]
    if roll < 0.30:
        body = rng.choice([DEEP, HUGE_INT, NAN])  # each used to kill or fool the collector
        return encode_write([("h", body)])
    if roll < 0.31:
        body = rng.randbytes(rng.randint(1, 4) << 20)  # 1-4 MiB of noise in one record
        return encode_write([("big", body)])
    frames = [bytearray(f) for f in rng.choice(valid)]
    for _ in range(rng.randint(1, 4)):
        frame = rng.choice(frames)
        action = rng.random()
        if action < 0.5 and frame:
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        elif action < 0.7:
            del frame[rng.randrange(len(frame) + 1) :]
        elif action < 0.85:
            frame.extend(rng.randbytes(rng.randint(1, 16)))
        else:
            frames.insert(rng.randrange(len(frames) + 1), bytearray(rng.randbytes(8)))
    return [bytes(f) for f in frames]


def test_collector_survives_thousands_of_random_and_mutated_frames(
    tmp_path: Path, spawn: Any, port: int
) -> None:
    path = tmp_path / "j.jsonl"
    collector = spawn(JOURNAL, "collector", "--path", str(path), "--port", str(port))
    collector.wait_for("listening on")
    watched = psutil.Process(collector.pid)
    rng = random.Random(FUZZ_SEED)
    valid = [encode_write([record(f"v{i}-{j}") for j in range(3)]) for i in range(20)]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 10_000)
    sock.connect(f"tcp://127.0.0.1:{port}")
    messages_sent = frames_sent = replies = 0
    peak_rss = watched.memory_info().rss
    try:
        for count in range(FUZZ_MESSAGES):
            message = fuzz_message(rng, valid)
            if count in OVERSIZED_AT:  # over MAXMSGSIZE: ZeroMQ drops us, and we reconnect
                message = [encode_write([("h", b"x")])[0], bytes(MAX_MSG_BYTES + 1)]
            try:
                sock.send_multipart(message)
            except zmq.Again:
                break  # nobody has read for 10 s: the collector is dead or stuck
            frames_sent += len(message)
            messages_sent += 1
            while sock.poll(0):
                sock.recv_multipart()
                replies += 1
            if count % 50 == 0:
                peak_rss = max(peak_rss, watched.memory_info().rss)
        while sock.poll(1000):
            sock.recv_multipart()
            replies += 1
        peak_rss = max(peak_rss, watched.memory_info().rss)
    finally:
        sock.close()
        ctx.term()
    alive = collector.popen.poll() is None
    print(
        f"\njournal fuzz: {messages_sent} messages, {frames_sent} frames sent, {replies} replies, "
        f"collector alive: {alive}, peak RSS {peak_rss / 2**20:.0f} MiB"
    )
    assert alive and messages_sent == FUZZ_MESSAGES, collector.output()[-3000:]

    async def one_valid_write() -> None:
        writer = ZmqJournalWriter(f"tcp://127.0.0.1:{port}", timeout=15)
        await writer.write(result("after-the-fuzz"))
        await writer.close()

    asyncio.run(one_valid_write())
    assert "after-the-fuzz" in scan_journal(path).record_ids
    assert peak_rss < RSS_BOUND_MIB << 20, f"peak RSS {peak_rss / 2**20:.0f} MiB"
    collector.stop()
    assert "Traceback" not in collector.output()
