"""The journal's line format, recovery rules, reader CLI and in-process file writer."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster_runner_simulation.journal_format import (
    AppendOnlyFile,
    FileJournalWriter,
    JournalCorruption,
    iter_results,
    recover_journal,
    scan_journal,
)
from cluster_runner_simulation.journal_record import (
    RecordBody,
    canonical_body,
    decode_line,
    encode_line,
    encode_record,
)
from cluster_runner_simulation.protocols import PerfTestResult

JOURNAL = "03-cluster-runner-simulation/zmq_journal.py"


def result(record_id: str, line: str = "128 32 float sum -1 1.0 2.0 3.0 0") -> PerfTestResult:
    return PerfTestResult(
        record_id, "all", "all_reduce_perf", ("n0", "n1"), 0, line, 1.5, 2.5, {"busbw_gbps": 3.0}
    )


def line_for(record_id: str, **kw: Any) -> bytes:
    return encode_line(record_id, canonical_body(result(record_id, **kw).to_record()))


def write_journal(path: Path, count: int) -> list[bytes]:
    lines = [line_for(f"r{i}") for i in range(count)]
    path.write_bytes(b"".join(lines))
    return lines


def test_line_round_trip_keeps_the_record() -> None:
    line = line_for('id with "quotes" and ,"body": inside')
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
    entry = decode_line(line[:-1])
    assert entry.result() == result('id with "quotes" and ,"body": inside')
    outer = json.loads(line)
    assert outer["len"] == len(canonical_body(entry.body)) and len(outer["crc"]) == 8


@pytest.mark.parametrize(
    "mangle, reason",
    [
        (lambda b: b.replace(b"float", b"flaot"), "checksum mismatch"),
        (lambda b: b.replace(b'"len":', b'"len":1'), "length"),
        (lambda b: b[:-9] + b"}", "not JSON"),
        (lambda b: b.replace(b'"v":1', b'"v":9'), "unknown format version"),
        (lambda b: b.replace(b'"id":"r1"', b'"id":"r2"'), "differ"),
    ],
)
def test_damaged_lines_are_rejected_with_a_reason(mangle: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode_line(mangle(line_for("r1")[:-1]))


def test_unterminated_last_line_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    lines = write_journal(path, 3)
    with path.open("ab") as handle:
        handle.write(line_for("r3")[:-1])  # complete but never got its newline: not acked
    scan = recover_journal(path)
    assert scan.record_ids == ["r0", "r1", "r2"] and scan.torn_bytes == len(lines[0]) - 1
    assert path.read_bytes() == b"".join(lines)
    assert recover_journal(path).torn_bytes == 0


def test_bad_terminated_last_line_is_corruption_not_a_torn_append(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    lines = write_journal(path, 2)
    with path.open("ab") as handle:
        handle.write(b"\x00" * 40 + b"\n")  # complete, so not a torn append: a human decides
    before = path.read_bytes()
    with pytest.raises(JournalCorruption, match=r"line 3 \(byte offset \d+\)") as info:
        recover_journal(path)
    assert getattr(info.value, "offset", None) == len(b"".join(lines))
    assert path.read_bytes() == before


def test_corruption_before_the_last_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    lines = write_journal(path, 4)
    lines[1] = lines[1].replace(b"float", b"FLOAT")
    path.write_bytes(b"".join(lines))
    before = path.read_bytes()
    offset = len(lines[0])
    with pytest.raises(
        JournalCorruption, match=rf"line 2 \(byte offset {offset}\): checksum"
    ) as info:
        recover_journal(path)
    assert info.value.line_no == 2
    assert path.read_bytes() == before  # nothing is modified


def test_duplicate_id_in_the_middle_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(line_for("a") + line_for("a") + line_for("b"))
    with pytest.raises(JournalCorruption, match=r"line 2 \(byte offset \d+\): duplicate record id"):
        scan_journal(path)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_any_truncation_recovers_to_a_valid_prefix(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cut.jsonl"
    lines = write_journal(path, 12)
    data = path.read_bytes()
    cut %= len(data) + 1
    path.write_bytes(data[:cut])
    scan = recover_journal(path)
    whole = 0
    while whole < len(lines) and len(b"".join(lines[: whole + 1])) <= cut:
        whole += 1
    assert scan.record_ids == [f"r{i}" for i in range(whole)]
    assert path.read_bytes() == b"".join(lines[:whole])


def test_append_only_file_fsyncs_and_remembers_ids(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "j.jsonl"
    journal = AppendOnlyFile(path)
    journal.append(line_for("x"))
    journal.close()
    assert AppendOnlyFile(path).ids == {"x"}


async def test_file_journal_writer_stores_duplicates_once(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    writer = FileJournalWriter(path)
    await writer.write(result("a"))
    await writer.write(result("a"))
    await writer.write(result("b"))
    await writer.close()
    again = FileJournalWriter(path)  # a restart recovers the id set
    await again.write(result("b"))
    await again.close()
    assert [r.record_id for r in iter_results(path)] == ["a", "b"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "table"])
def test_read_cli_prints_every_format(tmp_path: Path, run: Any, fmt: str) -> None:
    path = tmp_path / "j.jsonl"
    write_journal(path, 3)
    proc = run(JOURNAL, "read", str(path), "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("r1") == 1 and "all_reduce_perf" in proc.stdout
    if fmt == "jsonl":
        assert json.loads(proc.stdout.splitlines()[0])["record_id"] == "r0"
    if fmt == "csv":
        assert proc.stdout.startswith("record_id,schedule,test,nodes")


def test_read_cli_warns_about_a_torn_tail_and_leaves_it(tmp_path: Path, run: Any) -> None:
    path = tmp_path / "j.jsonl"
    write_journal(path, 2)
    with path.open("ab") as handle:
        handle.write(b'{"v":1,"id":"r')
    size = os.path.getsize(path)
    proc = run(JOURNAL, "read", str(path), "--format", "jsonl")
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 2
    assert "torn last line" in proc.stderr and os.path.getsize(path) == size


def test_read_cli_errors(tmp_path: Path, run: Any) -> None:
    missing = run(JOURNAL, "read", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "no such journal" in missing.stderr
    bad_format = run(JOURNAL, "read", str(tmp_path / "x"), "--format", "xml")
    assert bad_format.returncode == 2 and "usage:" in bad_format.stderr


WRITER_SCRIPT = """
import asyncio, sys
from cluster_runner_simulation.journal_format import FileJournalWriter
from cluster_runner_simulation.protocols import PerfTestResult

async def main(path, prefix):
    journal = FileJournalWriter(path)
    async def lane(n):
        for seq in range(10**9):
            rid = f"{prefix}-{n}-{seq}"
            await journal.write(PerfTestResult(rid, "s", "t", ("n0",), 0, "x" * 300, 1.0, 2.0))
            print(rid, flush=True)
    await asyncio.gather(*(lane(n) for n in range(8)))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_sigkilled_file_writer_process_leaves_a_prefix_with_every_acked_record(
    tmp_path: Path, spawn: Any
) -> None:
    path = tmp_path / "j.jsonl"
    acked: set[str] = set()
    for round_no in range(5):
        proc = spawn("-c", WRITER_SCRIPT, str(path), f"k{round_no}")
        proc.wait_for(r"(k\d+-\d+-\d+\n){30}", timeout=60)  # heavy writing is under way
        proc.signal(signal.SIGKILL)
        proc.wait()
        printed = proc.stdout().split("\n")[:-1]  # the last piece may be a torn print
        acked |= set(printed)
        scan = recover_journal(path)  # raises on damage before the last line
        missing = acked - set(scan.record_ids)
        assert not missing, f"round {round_no}: acknowledged but lost: {sorted(missing)[:5]}"
    assert len(acked) >= 150


def test_the_record_schema_is_the_perf_test_results_fields() -> None:
    names = tuple(f.name for f in dataclasses.fields(PerfTestResult))
    assert RecordBody.__struct_fields__ == names


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"exit_status": None},  # null in the body: the exact encoder's path
        {"result_line": "résultat ✓"},  # not ASCII: \\u escapes
        {"nodes": ["n0"], "metrics": {"b": 1, "a": 2.5}, "extra": {"errors": ["x"]}},
    ],
)
def test_a_records_body_is_its_canonical_record(changes: dict[str, Any]) -> None:
    record = dataclasses.replace(result("r1"), **changes)
    body = encode_record(record)
    assert body == canonical_body(record.to_record()) and body.isascii()
    assert decode_line(encode_line("r1", body)[:-1]).result() == dataclasses.replace(
        record, nodes=tuple(record.nodes)
    )
