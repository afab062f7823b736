"""Hostile and oversized records against a real collector and both writers.

* every WRITE body that could not be read back (deep nesting, huge numbers, NaN, invalid UTF-8,
  wrong types, oversized) gets a NACK that says why, and the collector keeps serving;
* an unexpected error while handling one message is counted, logged once, and survived;
* the writers refuse a record over the line limit before anything acknowledges it, and a record
  right at the limit is acknowledged and read back after a restart.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from cluster_runner_simulation.journal_format import FileJournalWriter, scan_journal
from cluster_runner_simulation.journal_record import canonical_body, encode_line
from cluster_runner_simulation.protocols import JournalError, PerfTestResult
from cluster_runner_simulation.journal_collector import CollectorConfig, JournalCollector
from cluster_runner_simulation.journal_protocol import (
    Ack,
    JournalProtocolError,
    Nack,
    decode_reply,
    decode_write,
    encode_write,
)
from cluster_runner_simulation.journal_writer import ZmqJournalWriter

JOURNAL = "03-cluster-runner-simulation/zmq_journal.py"
LIMIT = 1 << 20  # the documented limit on one journal line
REPLY_TIMEOUT_S = 10
SILENCE_S = 1.5  # how long "no reply" is waited for; a reply would come in milliseconds


def result(record_id: str, **changes: Any) -> PerfTestResult:
    fields: dict[str, Any] = dict(
        record_id=record_id,
        schedule="all",
        test="all_reduce_perf",
        nodes=("n0",),
        exit_status=0,
        result_line="128 32 float sum -1 1.0 2.0 3.0 0",
        started_at=1.0,
        finished_at=2.0,
    )
    fields.update(changes)
    return PerfTestResult(**fields)


def body_with(record_id: str, field: str, raw_value: bytes) -> bytes:
    """A canonical record body whose ``field`` holds ``raw_value`` (raw JSON bytes)."""
    record = result(record_id).to_record()
    record[field] = "@@@"
    return canonical_body(record).replace(b'"@@@"', raw_value)


HOSTILE_BODIES: dict[str, tuple[bytes, str]] = {
    # case: (body, a regex the NACK's reason must match)
    "nested-100000-deep": (
        body_with("h", "extra", b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "nest",
    ),
    "5000-digit-integer": (body_with("h", "exit_status", b"9" * 5000), "digits|integer"),
    "nan": (body_with("h", "started_at", b"NaN"), "NaN|finite"),
    "infinity": (body_with("h", "finished_at", b"-Infinity"), "Infinity|finite"),
    "float-overflow": (body_with("h", "started_at", b"1e999"), "finite"),
    "invalid-utf8": (body_with("h", "result_line", b'"\xff\xfe"'), "UTF-8|ASCII"),
    "lone-surrogate": (body_with("h", "result_line", b'"\\ud800"'), "surrogate"),
    "exit-status-string": (body_with("h", "exit_status", b'"zero"'), "exit_status"),
    "exit-status-bool": (body_with("h", "exit_status", b"true"), "exit_status"),
    "nodes-not-a-list": (body_with("h", "nodes", b'"n0"'), "nodes"),
    "metric-not-a-number": (body_with("h", "metrics", b'{"busbw":"fast"}'), "metrics"),
    "missing-fields": (b'{"record_id":"h"}', "missing"),
    "not-an-object": (b'["h"]', "object"),
    "oversized": (canonical_body(result("h", result_line="x" * (LIMIT + 1)).to_record()), "limit"),
}


@pytest.fixture
def collector(spawn: Any, tmp_path: Path, port: int) -> Iterator[Any]:
    path = tmp_path / "j.jsonl"
    proc = spawn(JOURNAL, "collector", "--path", str(path), "--port", str(port))
    proc.wait_for("listening on", timeout=30)
    proc.path = path
    proc.endpoint = f"tcp://127.0.0.1:{port}"
    yield proc


async def send_raw(endpoint: str, frames: list[bytes], timeout: float = REPLY_TIMEOUT_S) -> Any:
    """Send one message from a bare DEALER and return the decoded reply (None: no reply)."""
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        await sock.send_multipart(frames)
        try:
            return decode_reply(await asyncio.wait_for(sock.recv_multipart(), timeout))
        except TimeoutError:
            return None
    finally:
        sock.close()
        ctx.term()


async def assert_still_serving(collector: Any, record_id: str = "good") -> None:
    assert collector.popen.poll() is None, f"the collector died:\n{collector.output()}"
    writer = ZmqJournalWriter(collector.endpoint, timeout=10)
    await writer.write(result(record_id))
    await writer.close()
    assert record_id in scan_journal(collector.path).record_ids


@pytest.mark.parametrize("case", sorted(HOSTILE_BODIES))
async def test_hostile_body_gets_a_nack_with_a_reason(collector: Any, case: str) -> None:
    body, reason = HOSTILE_BODIES[case]
    reply = await send_raw(collector.endpoint, encode_write([("h", body)]))
    assert isinstance(reply, Nack), f"{case}: expected a NACK, got {reply!r}"
    assert reply.id == "h" and re.search(reason, reply.reason), reply.reason
    await assert_still_serving(collector)
    assert scan_journal(collector.path).record_ids == ["good"]


async def test_write_index_with_a_huge_length_is_a_protocol_error(collector: Any) -> None:
    frames = [b'{"type":"WRITE","v":2,"ids":["id"],"sizes":[' + b"9" * 5000 + b"]}", b"{}"]
    with pytest.raises(JournalProtocolError, match=r"sizes\[0\]"):
        decode_write(frames)
    reply = await send_raw(collector.endpoint, frames, timeout=SILENCE_S)
    assert reply is None  # a message we cannot attribute to a record: counted, not answered
    await assert_still_serving(collector)


def test_bad_input_is_logged_rate_limited_without_tracebacks(collector: Any) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(collector.endpoint)
    deep = HOSTILE_BODIES["nested-100000-deep"][0]
    try:
        for i in range(300):
            sock.send_multipart([b"junk", str(i).encode()])
            sock.send_multipart(encode_write([("h", deep)]))
        # One peer's messages are handled in order: the 300th NACK means all 600 were seen.
        nacks = 0
        while nacks < 300 and sock.poll(REPLY_TIMEOUT_S * 1000):
            nacks += isinstance(decode_reply(sock.recv_multipart()), Nack)
        assert nacks == 300
        asyncio.run(assert_still_serving(collector))
    finally:
        sock.close()
        ctx.term()
    collector.stop()
    assert "bad messages 600" in collector.stdout()
    log = collector.stderr()
    assert "Traceback" not in log and len(re.findall("bad message", log)) <= 5


def test_an_unexpected_error_in_one_message_is_counted_and_survived(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = JournalCollector(CollectorConfig(tmp_path / "j.jsonl", port=0))
    endpoint = collector.endpoint
    real_handle = collector._handle
    calls = {"n": 0}

    def handle_but_fail_once(*args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug nobody foresaw")
        real_handle(*args)

    monkeypatch.setattr(collector, "_handle", handle_but_fail_once)
    server = threading.Thread(target=collector.serve, daemon=True)
    server.start()
    try:

        async def two_writes() -> None:
            writer = ZmqJournalWriter(endpoint, timeout=15, retry_interval=0.2)
            await writer.write(result("a"))  # the first attempt hits the bug; a retry succeeds
            await writer.write(result("b"))
            await writer.close()

        asyncio.run(two_writes())
        assert server.is_alive()
        assert getattr(collector, "errors", None) == 1
    finally:
        collector.stopping = True
        server.join(timeout=10)
        collector.close()
    assert scan_journal(tmp_path / "j.jsonl").record_ids == ["a", "b"]


# --- The limit on a record is enforced before the acknowledgement -------------------------------


def biggest_result(record_id: str) -> PerfTestResult:
    """The result whose journal line is exactly the limit (newline not counted)."""

    def line_length(chars: int) -> int:
        big = result(record_id, result_line="x" * chars)
        return len(encode_line(record_id, canonical_body(big.to_record()))) - 1

    chars = LIMIT - line_length(0)
    chars -= line_length(chars) - LIMIT  # the "len" field has more digits now
    assert line_length(chars) == LIMIT
    return result(record_id, result_line="x" * chars)


async def test_zmq_writer_refuses_an_oversized_record_before_any_ack(
    collector: Any, spawn: Any, free_port: Any
) -> None:
    writer = ZmqJournalWriter(collector.endpoint, timeout=10)
    too_big = result("too-big", result_line="x" * LIMIT)
    started = time.monotonic()
    with pytest.raises(JournalError, match="limit"):
        await writer.write(too_big)
    assert time.monotonic() - started < 5  # refused at once, not after a timeout
    at_limit = biggest_result("at-limit")
    await writer.write(at_limit)
    await writer.close()
    collector.stop()
    port = free_port()
    again = spawn(JOURNAL, "collector", "--path", str(collector.path), "--port", str(port))
    again.wait_for("listening on")  # every later start accepts the file
    assert "1 records" in again.stdout()
    (entry,) = scan_journal(collector.path).entries
    assert entry.result() == at_limit


async def test_file_writer_refuses_an_oversized_record_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    writer = FileJournalWriter(path)
    with pytest.raises(JournalError, match="limit"):
        await writer.write(result("too-big", result_line="x" * LIMIT))
    assert path.read_bytes() == b""
    await writer.write(biggest_result("at-limit"))
    await writer.close()
    assert scan_journal(path).record_ids == ["at-limit"]


@pytest.mark.parametrize(
    "bad, reason",
    [
        (result("nan", metrics={"busbw_gbps": float("nan")}), "finite|NaN"),
        (result("inf", started_at=float("inf")), "finite|Infinity"),
        (result("line\nbreak"), "line break"),
        (result("\ud800"), "surrogate|Unicode"),
        (result(""), "empty|id"),
        (result("x" * 5000), "id"),
    ],
    ids=["nan", "inf", "newline-id", "surrogate-id", "empty-id", "long-id"],
)
async def test_both_writers_refuse_what_could_not_be_read_back(
    collector: Any, tmp_path: Path, bad: PerfTestResult, reason: str
) -> None:
    zmq_writer = ZmqJournalWriter(collector.endpoint, timeout=10)
    file_writer = FileJournalWriter(tmp_path / "file.jsonl")
    for writer in (zmq_writer, file_writer):
        with pytest.raises(JournalError, match=reason):
            await writer.write(bad)
        await writer.write(result("fine"))  # the writer is still usable
        await writer.close()
    assert scan_journal(collector.path).record_ids == ["fine"]
    assert scan_journal(tmp_path / "file.jsonl").record_ids == ["fine"]


async def test_writer_packs_big_records_into_messages_the_collector_accepts(
    collector: Any,
) -> None:
    writer = ZmqJournalWriter(collector.endpoint, timeout=60)
    ids = [f"big-{i}" for i in range(40)]  # 40 x 900 KiB: far over one message's limit
    await asyncio.gather(*(writer.write(result(r, result_line="y" * 900_000)) for r in ids))
    await writer.close()
    assert sorted(scan_journal(collector.path).record_ids) == sorted(ids)


async def test_collector_answers_duplicates_of_rejected_records_with_nack_again(
    collector: Any,
) -> None:
    body, _ = HOSTILE_BODIES["nan"]
    for _ in range(2):  # a NACKed record is not remembered as stored
        reply = await send_raw(collector.endpoint, encode_write([("h", body)]))
        assert isinstance(reply, Nack)
    good = canonical_body(result("h").to_record())
    reply = await send_raw(collector.endpoint, encode_write([("h", good)]))
    assert reply == Ack(ids=["h"])
    assert scan_journal(collector.path).record_ids == ["h"]


async def test_thousands_of_rejected_records_do_not_stall_the_collector(collector: Any) -> None:
    # More NACKed records than one group commit takes: they must not fill the next batch.
    frames = encode_write([(f"bad-{i}", b"{}") for i in range(3000)])
    for _ in range(2):
        reply = await send_raw(collector.endpoint, frames)
        assert isinstance(reply, Nack)
    await assert_still_serving(collector)
