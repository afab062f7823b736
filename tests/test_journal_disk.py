"""Unusable journal paths, for real: a directory, a read-only file system, a full disk.

Each gives one clear line and exit 2 from the CLIs, and ``JournalError`` from the writer APIs;
nothing acknowledged is lost. The read-only file system and the full disk are tiny tmpfs mounts
made for the test (root is needed, as in CI: chmod 0444 would not stop root, a read-only mount
does). Off CI, a machine where mounting is impossible skips these tests and says why.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster_patterns.journal import FileJournal, StateLogError, SubmitEntry, replay
from cluster_patterns.line_journal import AppendFailed, Appender
from cluster_patterns.protocol import TaskSpec
from cluster_runner_simulation.journal_format import FileJournalWriter, scan_journal
from cluster_runner_simulation.journal_record import canonical_body, encode_line
from cluster_runner_simulation.protocols import JournalError, PerfTestResult
from cluster_runner_simulation.journal_writer import ZmqJournalWriter

JOURNAL = "03-cluster-runner-simulation/zmq_journal.py"
IN_CI = bool(os.environ.get("CI"))
NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"


def result(record_id: str) -> PerfTestResult:
    return PerfTestResult(record_id, "all", "t", ("n0",), 0, "x" * 200, 1.0, 2.0)


def line_for(record_id: str) -> bytes:
    return encode_line(record_id, canonical_body(result(record_id).to_record()))


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` for the duration of the block."""
    where.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        failure = done.stderr.strip() if done.returncode else ""
    except FileNotFoundError:
        failure = "no mount command"
    if failure:
        reason = f"cannot mount a tmpfs for the test ({failure}); run as root"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def remount_read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)


def fill(disk: Path) -> Path:
    """Write a filler file until the file system is full; return it (delete it to free space)."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as handle:
        for chunk in (65536, 4096, 1):
            try:
                while True:
                    handle.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


def one_clear_line(proc: Any, *needles: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]


def test_a_directory_as_journal_is_one_clear_line(tmp_path: Path, run: Any, port: int) -> None:
    (tmp_path / "sub").mkdir()
    for path in (tmp_path, tmp_path / "sub"):
        one_clear_line(
            run(JOURNAL, "collector", "--path", str(path), "--port", str(port)), "directory"
        )
        one_clear_line(run(JOURNAL, "read", str(path)), "directory")
        with pytest.raises(JournalError, match="(?i)directory"):
            FileJournalWriter(path)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    one_clear_line(
        run(JOURNAL, "collector", "--path", str(not_a_dir / "j.jsonl"), "--port", str(port)),
        "not a directory",
    )


def test_a_read_only_journal_is_one_clear_line_and_left_alone(
    tmp_path: Path, run: Any, port: int
) -> None:
    with tmpfs(tmp_path / "ro", "1m") as disk:
        path = disk / "j.jsonl"
        data = line_for("r0") + line_for("r1") + line_for("r2")[:50]  # with a torn tail
        path.write_bytes(data)
        remount_read_only(disk)
        refused = run(JOURNAL, "collector", "--path", str(path), "--port", str(port))
        one_clear_line(refused, str(path), "read-only file system")
        with pytest.raises(JournalError, match="Read-only file system"):
            FileJournalWriter(path)
        one_clear_line(run(JOURNAL, "repair", str(path)), "read-only file system")
        read = run(JOURNAL, "read", str(path), "--format", "jsonl")
        assert read.returncode == 0 and len(read.stdout.splitlines()) == 2
        assert path.read_bytes() == data


async def test_full_disk_nacks_the_batch_and_the_collector_exits_2(
    tmp_path: Path, spawn: Any, free_port: Any
) -> None:
    with tmpfs(tmp_path / "full", "256k") as disk:
        path = disk / "j.jsonl"
        port = free_port()
        collector = spawn(JOURNAL, "collector", "--path", str(path), "--port", str(port))
        collector.wait_for("listening on")
        writer = ZmqJournalWriter(f"tcp://127.0.0.1:{port}", timeout=20)
        acked = []
        for i in range(5):
            await writer.write(result(f"before-{i}"))
            acked.append(f"before-{i}")
        filler = fill(disk)
        started = time.monotonic()
        with pytest.raises(JournalError, match=NO_SPACE):
            for i in range(10_000):  # the journal's last page has some room left
                await writer.write(result(f"full-{i}"))
                acked.append(f"full-{i}")
        assert time.monotonic() - started < 10  # told at once, not after the timeout
        await writer.close()
        assert collector.wait(timeout=15) == 2
        errors = [line for line in collector.stderr().splitlines() if "error" in line]
        assert len(errors) == 1 and NO_SPACE in errors[0] and str(path) in errors[0]
        assert "Traceback" not in collector.output()
        filler.unlink()
        again = spawn(JOURNAL, "collector", "--path", str(path), "--port", str(free_port()))
        again.wait_for("listening on")  # the failed batch left no torn or corrupt line
        again.stop()
        assert scan_journal(path).record_ids == acked


async def test_full_disk_file_writer_raises_and_recovers_once_space_is_freed(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "full", "256k") as disk:
        path = disk / "j.jsonl"
        writer = FileJournalWriter(path)
        acked = []
        for i in range(3):
            await writer.write(result(f"a{i}"))
            acked.append(f"a{i}")
        filler = fill(disk)
        with pytest.raises(JournalError, match=NO_SPACE):
            for i in range(10_000):
                await writer.write(result(f"b{i}"))
                acked.append(f"b{i}")
        filler.unlink()
        for i in range(3):
            await writer.write(result(f"c{i}"))
            acked.append(f"c{i}")
        await writer.close()
        assert scan_journal(path).record_ids == acked  # no torn bytes glued to a later record
        FileJournalWriter(path)  # and a restart accepts the file


def test_full_disk_state_log_raises_cuts_back_and_keeps_every_commit(tmp_path: Path) -> None:
    """02's coordinator state log: the same append as 03's journal, the same guarantees."""
    with tmpfs(tmp_path / "full", "256k") as disk:
        journal = FileJournal(disk)
        committed = []
        for i in range(3):
            journal.submitted(TaskSpec(f"a{i}", "echo", payload="x" * 200), b"client:c1")
            journal.flush()
            committed.append(f"a{i}")
        filler = fill(disk)
        with pytest.raises(StateLogError, match=NO_SPACE):
            for i in range(10_000):
                journal.submitted(TaskSpec(f"b{i}", "echo", payload="x" * 200), b"client:c1")
                journal.flush()
                committed.append(f"b{i}")
        filler.unlink()
        journal.submitted(TaskSpec("c0", "echo"), b"client:c1")
        journal.close()
        assert [entry.task_id for entry in replay(disk)] == [*committed, "c0"]


def test_a_coordinator_whose_state_disk_fills_exits_2_and_keeps_what_it_acknowledged(
    tmp_path: Path, spawn: Any, run: Any, free_port: Any
) -> None:
    with tmpfs(tmp_path / "full", "256k") as disk:
        port, status_port = free_port(), free_port()
        coordinator = spawn(
            "02-cluster-patterns/coordinator.py", "--port", str(port),
            "--status-port", str(status_port), "--state-dir", str(disk),
        )  # fmt: skip
        coordinator.wait_for("coordinator ready")
        worker = spawn("02-cluster-patterns/worker.py", "--port", str(port), "--id", "w1")
        worker.wait_for("registered with")
        client = ["02-cluster-patterns/client.py", "--port", str(port), "--kind", "echo"]
        first = run(*client, "--count", "20", "--payload", "x" * 100, "--timeout", "20")
        assert first.returncode == 0, first.stdout + first.stderr
        fill(disk)
        second = run(*client, "--count", "2000", "--payload", "y" * 1000, "--timeout", "5")
        assert second.returncode != 0, second.stdout  # the coordinator went away
        assert coordinator.popen.wait(timeout=20) == 2, coordinator.output()
        assert NO_SPACE in coordinator.stderr() and "Traceback" not in coordinator.output()
        entries = list(replay(disk))  # every line whole: the failed append was cut back
        assert len({e.task_id for e in entries if isinstance(e, SubmitEntry)}) >= 20


def test_an_append_that_cannot_be_cut_back_refuses_every_later_one(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"one\n")
    fd = os.open(path, os.O_RDONLY)  # write() and ftruncate() both fail: nothing to cut back
    try:
        appender = Appender(fd, 4)
        with pytest.raises(AppendFailed) as first:
            appender.append(b"two\n")
        assert first.value.undo_error is not None and not first.value.repeated
        assert "could not be cut back" in str(first.value)
        with pytest.raises(AppendFailed) as later:
            appender.append(b"three\n")
        assert later.value.repeated and "restart to recover" in str(later.value)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"one\n"


def test_repair_on_a_full_disk_cuts_nothing(tmp_path: Path, run: Any) -> None:
    with tmpfs(tmp_path / "full", "256k") as disk:
        path = disk / "j.jsonl"
        data = b"".join(line_for(f"r{i}") for i in range(3)) + b"garbage\n"
        data += b"".join(line_for(f"s{i}") for i in range(30))
        path.write_bytes(data)
        fill(disk)
        refused = run(JOURNAL, "repair", str(path))
        one_clear_line(refused, NO_SPACE)
        assert path.read_bytes() == data  # the copy could not be written: nothing is cut
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "j.jsonl"]


def test_fill_really_fills(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "full", "64k") as disk:
        fill(disk)
        with pytest.raises(OSError, match=NO_SPACE):
            (disk / "more").write_bytes(b"x" * 8192)


@pytest.mark.parametrize("transport", ["ssh", "zmq"])
def test_run_schedules_with_a_directory_as_journal_exits_2(
    tmp_path: Path, run: Any, transport: str
) -> None:
    """The CLIs that drive the writers: the in-process FileJournalWriter, and a local collector."""
    args = ["--local", "1", "--transport", transport, "--journal", str(tmp_path)]
    proc = run("03-cluster-runner-simulation/run_schedules.py", *args, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(errors) == 1 and "Is a directory" in errors[0] and str(tmp_path) in errors[0]
    assert "Traceback" not in proc.stderr


def test_a_journal_in_use_is_refused(tmp_path: Path, spawn: Any, run: Any, free_port: Any) -> None:
    """Two appenders would interleave and store duplicates: the second one is refused."""
    path = tmp_path / "j.jsonl"
    first = spawn(JOURNAL, "collector", "--path", str(path), "--port", str(free_port()))
    first.wait_for("listening on")
    second = run(JOURNAL, "collector", "--path", str(path), "--port", str(free_port()))
    one_clear_line(second, str(path), "in use by another")
    one_clear_line(run(JOURNAL, "repair", str(path)), "in use by another")
    with pytest.raises(JournalError, match="in use by another"):
        FileJournalWriter(path)
    first.stop()
    assert run(JOURNAL, "repair", str(path)).returncode == 0
