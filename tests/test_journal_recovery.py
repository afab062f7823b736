"""The journal's recovery rules and the repair command, driven through the CLI as a user would.

Rules (docs/journal-and-context.md, "Recovery rules"):
  * only an unterminated last line is a torn append: its bytes are cut, and the count is printed;
  * a complete line that fails any check is corruption wherever it is: exit 3, the line number
    and byte offset are named, and the file is not touched;
  * ``zmq_journal.py repair PATH`` keeps the valid prefix and moves the rest to a fsynced copy.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cluster_runner_simulation.journal_format import (
    FileJournalWriter,
    JournalCorruption,
    scan_journal,
)
from cluster_runner_simulation.journal_record import canonical_body, encode_line
from cluster_runner_simulation.protocols import PerfTestResult

JOURNAL = "03-cluster-runner-simulation/zmq_journal.py"
START_TIMEOUT_S = 20  # a collector that should refuse must exit well before this
LIMIT = 1 << 20  # the documented limit on one line


def result(record_id: str, line: str = "128 32 float sum -1 1.0 2.0 3.0 0") -> PerfTestResult:
    return PerfTestResult(record_id, "all", "all_reduce_perf", ("n0",), 0, line, 1.0, 2.0)


def line_for(record_id: str, **kw: Any) -> bytes:
    return encode_line(record_id, canonical_body(result(record_id, **kw).to_record()))


def flip_bit(line: bytes) -> bytes:
    """The same line with one bit of its body flipped (the newline stays)."""
    index = line.index(b"all_reduce_perf")
    return line[:index] + bytes([line[index] ^ 0x01]) + line[index + 1 :]


BAD_LAST_LINES = {
    "flipped-bit": lambda lines: flip_bit(line_for("r3")),
    "garbage": lambda lines: b"\x00" * 40 + b"\n",
    "duplicate-id": lambda lines: lines[1],
    "over-the-limit": lambda lines: line_for("r3", line="x" * (LIMIT + 10)),
}


def journal_with_bad_last_line(path: Path, kind: str) -> tuple[bytes, int]:
    """Three good records, then a complete (newline-terminated) bad line; returns data, offset."""
    lines = [line_for(f"r{i}") for i in range(3)]
    bad = BAD_LAST_LINES[kind](lines)
    assert bad.endswith(b"\n")
    good = b"".join(lines)
    path.write_bytes(good + bad)
    return good + bad, len(good)


def collector(run: Any, path: Path, port: int) -> Any:
    """Run a collector that is expected to refuse to start (a timeout means it started)."""
    args = ["collector", "--path", str(path), "--port", str(port)]
    return run(JOURNAL, *args, timeout=START_TIMEOUT_S)


@pytest.mark.parametrize("kind", sorted(BAD_LAST_LINES))
def test_complete_bad_last_line_refuses_to_start_and_touches_nothing(
    tmp_path: Path, run: Any, port: int, kind: str
) -> None:
    path = tmp_path / "j.jsonl"
    data, offset = journal_with_bad_last_line(path, kind)
    refused = collector(run, path, port)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert f"line 4 (byte offset {offset})" in refused.stderr
    assert "repair" in refused.stderr and "Traceback" not in refused.stderr
    assert path.read_bytes() == data  # nothing cut, nothing lost


@pytest.mark.parametrize("kind", sorted(BAD_LAST_LINES))
def test_file_writer_and_reader_refuse_a_bad_last_line(tmp_path: Path, run: Any, kind: str) -> None:
    path = tmp_path / "j.jsonl"
    data, offset = journal_with_bad_last_line(path, kind)
    with pytest.raises(JournalCorruption) as info:
        FileJournalWriter(path)
    assert (info.value.line_no, getattr(info.value, "offset", None)) == (4, offset)
    read = run(JOURNAL, "read", str(path))
    assert read.returncode == 3 and f"line 4 (byte offset {offset})" in read.stderr
    assert path.read_bytes() == data


def test_corrupt_middle_line_names_line_and_byte_offset(
    tmp_path: Path, run: Any, port: int
) -> None:
    path = tmp_path / "j.jsonl"
    lines = [line_for(f"r{i}") for i in range(5)]
    lines[2] = flip_bit(lines[2])
    path.write_bytes(b"".join(lines))
    offset = len(lines[0]) + len(lines[1])
    refused = collector(run, path, port)
    assert refused.returncode == 3
    assert f"line 3 (byte offset {offset}): checksum mismatch" in refused.stderr


def test_only_an_unterminated_tail_is_cut_and_the_count_is_printed(
    tmp_path: Path, spawn: Any, port: int
) -> None:
    path = tmp_path / "j.jsonl"
    good = b"".join(line_for(f"r{i}") for i in range(3))
    torn = line_for("r3")[:-1]  # all of it but the newline: never acknowledged
    path.write_bytes(good + torn)
    started = spawn(JOURNAL, "collector", "--path", str(path), "--port", str(port))
    started.wait_for("listening on")
    assert f"cut {len(torn)} bytes of a torn last line" in started.stdout()
    assert "3 records" in started.stdout()
    assert path.read_bytes() == good


# --- repair -------------------------------------------------------------------------------------

COPY_NAME = re.compile(r"j\.jsonl\.corrupt-\d{8}T\d{6}Z(-\d+)?$")


def copies(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if COPY_NAME.match(p.name))


def test_repair_keeps_the_valid_prefix_and_moves_the_rest_to_a_copy(
    tmp_path: Path, run: Any, spawn: Any, port: int
) -> None:
    path = tmp_path / "j.jsonl"
    lines = [line_for(f"r{i}") for i in range(6)]
    lines[2] = flip_bit(lines[2])
    data = b"".join(lines)
    path.write_bytes(data)
    kept = b"".join(lines[:2])
    repaired = run(JOURNAL, "repair", str(path))
    assert repaired.returncode == 0, repaired.stderr
    (copy,) = copies(path)
    assert path.read_bytes() == kept and copy.read_bytes() == data[len(kept) :]
    out = repaired.stdout
    assert f"kept 2 records ({len(kept)} bytes)" in out
    moved = f"moved {len(data) - len(kept)} bytes (4 lines, 3 of them valid records) to {copy}"
    assert moved in out
    assert f"line 3 (byte offset {len(kept)}): checksum mismatch" in out
    started = spawn(JOURNAL, "collector", "--path", str(path), "--port", str(port))
    started.wait_for("listening on")
    assert "2 records" in started.stdout()


def test_repair_moves_a_torn_tail_to_a_copy_as_well(tmp_path: Path, run: Any) -> None:
    path = tmp_path / "j.jsonl"
    good = line_for("r0") + line_for("r1")
    path.write_bytes(good + b'{"v":1,"id":"r')
    repaired = run(JOURNAL, "repair", str(path))
    assert repaired.returncode == 0, repaired.stderr
    (copy,) = copies(path)
    assert path.read_bytes() == good and copy.read_bytes() == b'{"v":1,"id":"r'
    assert "kept 2 records" in repaired.stdout and "moved 14 bytes" in repaired.stdout


def test_repair_of_a_healthy_journal_changes_nothing(tmp_path: Path, run: Any) -> None:
    path = tmp_path / "j.jsonl"
    data = line_for("r0") + line_for("r1")
    path.write_bytes(data)
    repaired = run(JOURNAL, "repair", str(path))
    assert repaired.returncode == 0, repaired.stderr
    assert "nothing to repair: 2 records" in repaired.stdout
    assert path.read_bytes() == data and copies(path) == []


def test_two_repairs_never_overwrite_an_earlier_copy(tmp_path: Path, run: Any) -> None:
    path = tmp_path / "j.jsonl"
    for round_no in range(2):
        path.write_bytes(line_for("r0") + b"garbage %d\n" % round_no)
        assert run(JOURNAL, "repair", str(path)).returncode == 0
    assert sorted(c.read_bytes() for c in copies(path)) == [b"garbage 0\n", b"garbage 1\n"]
    assert scan_journal(path).record_ids == ["r0"]


def test_repair_errors_are_one_clear_line(tmp_path: Path, run: Any) -> None:
    missing = run(JOURNAL, "repair", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "no such journal" in missing.stderr
    directory = run(JOURNAL, "repair", str(tmp_path))
    assert directory.returncode == 2 and "directory" in directory.stderr.lower()
    usage = run(JOURNAL, "repair")
    assert usage.returncode == 2 and "usage:" in usage.stderr
    for proc in (missing, directory):
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


# --- The repair shown in docs/journal-and-context.md is what the CLI prints -------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "journal-and-context.md"
SCRIPT = Path(__file__).resolve().parent.parent / JOURNAL
NCCL_LINE = "   134217728      33554432     float     sum      -1   1042.7  128.72  225.27      0"


def docs_journal(path: Path) -> None:
    """The journal of the docs' example: 5 records, one changed byte in the third."""
    lines = []
    for i in range(5):
        record_id = f"run1/all/all_reduce_perf/node0{i}"
        nodes = (f"node0{i}",)
        metrics = {"busbw_gbps": 225.27}
        record = PerfTestResult(
            record_id, "all", "all_reduce_perf", nodes, 0, NCCL_LINE, 1.0, 2.0, metrics
        )
        lines.append(encode_line(record_id, canonical_body(record.to_record())))
    lines[2] = lines[2].replace(b"225.27", b"225.28", 1)
    path.write_bytes(b"".join(lines))


def test_the_docs_show_the_collector_and_repair_output_as_printed(tmp_path: Path) -> None:
    text = DOCS.read_text()
    block = text[text.index("```console\n$ python 03-cluster-runner-simulation/zmq_journal.py r") :]
    block = block[len("```console\n") : block.index("\n```")]
    refusal = next(ln for ln in text.splitlines() if ln.strip().startswith("collector: error:"))
    docs_journal(tmp_path / "J.jsonl")

    def run_in_tmp(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, str(SCRIPT), *args]
        return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    refused = run_in_tmp("collector", "--path", "J.jsonl", "--port", "1")
    assert refused.returncode == 3 and refused.stderr.strip() == refusal.strip()
    printed = []
    for command in (ln for ln in block.splitlines() if ln.startswith("$ ")):
        printed += [command, *run_in_tmp(*command.split()[3:]).stdout.splitlines()]
    stamp = re.compile(r"corrupt-\d{8}T\d{6}Z")
    assert [stamp.sub("corrupt-T", ln) for ln in printed] == [
        stamp.sub("corrupt-T", ln) for ln in block.splitlines()
    ]
