"""The ZeroMQ journal collector and writer: acks, duplicates, garbage, flow control, CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from cluster_patterns.curve import fingerprint, load_public
from cluster_runner_simulation.agent_keys import generate_keys
from cluster_runner_simulation.journal_collector import CollectorConfig
from cluster_runner_simulation.journal_format import scan_journal
from cluster_runner_simulation.journal_record import canonical_body
from cluster_runner_simulation.protocols import JournalError, PerfTestResult
from cluster_runner_simulation.journal_protocol import (
    Ack,
    JournalProtocolError,
    Nack,
    decode_reply,
    decode_write,
    encode_reply,
    encode_write,
)
from cluster_runner_simulation.journal_writer import ZmqJournalWriter

JOURNAL = "03-cluster-runner-simulation/zmq_journal.py"
BENCH = "03-cluster-runner-simulation/journal_bench.py"


def result(record_id: str) -> PerfTestResult:
    return PerfTestResult(record_id, "all", "t", ("n0",), 0, "line", 1.0, 2.0)


def start(spawn: Any, path: Path, port: int, *extra: str) -> Any:
    proc = spawn(JOURNAL, "collector", "--path", str(path), "--port", str(port), *extra)
    proc.wait_for("listening on", timeout=30)
    return proc


def test_codec_round_trip_and_rejections() -> None:
    records = [("a", b"{}"), ("b", b'{"x":1}')]
    index, bodies = encode_write(records)
    assert json.loads(index) == {"type": "WRITE", "v": 2, "ids": ["a", "b"], "sizes": [2, 7]}
    decoded = decode_write([index, bodies])
    assert list(zip(decoded.ids, decoded.bodies)) == records
    for reply in (Ack(ids=["a", "b"]), Nack(id="a", reason="why")):
        assert decode_reply(encode_reply(reply)) == reply
    v1 = [b"ZJ1", b"WRITE", b"2 a", b"{}"]
    wrong = {
        "version 1": v1,
        "2 frames": [index],
        "covers 9 bytes": [index, bodies + b"ab"],
        "2 ids but 1 sizes": [b'{"type":"WRITE","v":2,"ids":["a","b"],"sizes":[1]}', b"{"],
        "unsupported protocol version": [index.replace(b'"v":2', b'"v":1'), bodies],
        "$.type": [encode_reply(Ack(ids=["a"]))[0], b""],
    }
    for says, frames in wrong.items():
        with pytest.raises(JournalProtocolError, match=re.escape(says)):
            decode_write(frames)
    with pytest.raises(JournalProtocolError, match=r"\$\.type"):
        decode_reply([index])


@pytest.mark.parametrize("mode", [[], ["--fsync-each"]])
async def test_concurrent_writers_are_all_durable(
    tmp_path: Path, spawn: Any, port: int, mode: list[str]
) -> None:
    path = tmp_path / "j.jsonl"
    collector = start(spawn, path, port, *mode)
    writers = [ZmqJournalWriter(f"tcp://127.0.0.1:{port}") for _ in range(4)]
    ids = [f"w{w}-{i}" for w in range(4) for i in range(50)]
    await asyncio.gather(*(writers[int(r[1])].write(result(r)) for r in ids))
    # The same ids again, from other writers: acknowledged, stored once.
    await asyncio.gather(*(writers[(int(r[1]) + 1) % 4].write(result(r)) for r in ids[:20]))
    for writer in writers:
        await writer.close()
    assert sorted(scan_journal(path).record_ids) == sorted(ids)
    collector.stop()
    counts = re.search(r"stored (\d+), duplicates (\d+)", collector.stdout())
    assert counts is not None
    # Re-sends after a slow fsync are duplicates too, so at least the 20 sent on purpose.
    assert int(counts[1]) == 200 and int(counts[2]) >= 20


async def test_garbage_is_counted_and_the_collector_keeps_serving(
    tmp_path: Path, spawn: Any, port: int
) -> None:
    path = tmp_path / "j.jsonl"
    collector = start(spawn, path, port)
    ctx = zmq.asyncio.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(f"tcp://127.0.0.1:{port}")
    try:
        await raw.send_multipart([b"garbage"])
        await raw.send_multipart([b"ZJ1", b"ACK", b"x"])
        await raw.send_multipart([b'{"type":"WRITE","v":2,"ids":["\xff\xfe"],"sizes":[2]}', b"{}"])
        bad_body = canonical_body({"record_id": "other"})
        await raw.send_multipart(encode_write([("mine", bad_body), ("nl", b'{"a":\n1}')]))
        replies = [decode_reply(await asyncio.wait_for(raw.recv_multipart(), 10)) for _ in "ab"]
        assert {r.id for r in replies if isinstance(r, Nack)} == {"mine", "nl"}
        writer = ZmqJournalWriter(f"tcp://127.0.0.1:{port}")
        await writer.write(result("good"))
        await writer.close()
    finally:
        raw.close()
        ctx.term()
    assert scan_journal(path).record_ids == ["good"]
    collector.stop()
    assert "bad messages 5" in collector.stdout()
    assert "bad message #1" in collector.stderr()


async def test_no_collector_means_a_clear_error_after_the_timeout(free_port: Any) -> None:
    writer = ZmqJournalWriter(f"tcp://127.0.0.1:{free_port()}", timeout=0.5, retry_interval=0.1)
    started = time.monotonic()
    with pytest.raises(JournalError, match=r"not durable after 0s|collector slow or gone"):
        await writer.write(result("lost"))
    assert time.monotonic() - started < 5
    await writer.close()


async def test_flow_control_blocks_then_raises(free_port: Any) -> None:
    writer = ZmqJournalWriter(f"tcp://127.0.0.1:{free_port()}", timeout=0.5, max_inflight=2)
    outcomes = await asyncio.gather(
        *(writer.write(result(f"r{i}")) for i in range(3)), return_exceptions=True
    )
    await writer.close()
    messages = [str(o) for o in outcomes]
    assert all(isinstance(o, JournalError) for o in outcomes)
    assert sum("already wait for the collector" in m for m in messages) == 1


def test_sigterm_stops_the_collector_cleanly(tmp_path: Path, spawn: Any, port: int) -> None:
    collector = start(spawn, tmp_path / "j.jsonl", port)
    collector.signal(signal.SIGTERM)
    assert collector.wait() == 0
    assert "Traceback" not in collector.output() and "stored 0" in collector.stdout()


def test_collector_and_bench_argument_errors(run: Any, tmp_path: Path) -> None:
    bad_port = run(JOURNAL, "collector", "--path", str(tmp_path / "j"), "--port", "70000")
    assert bad_port.returncode == 2 and "not a TCP port (1-65535)" in bad_port.stderr
    bad_bench = run(JOURNAL, "bench", "--writers", "0")
    assert bad_bench.returncode == 2 and "--writers: must be >= 1" in bad_bench.stderr


def test_bench_prints_both_figures(run: Any, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--writers", "2", "--records", "200", "--repeat", "1", "--dir", str(tmp_path)]
    args += ["--json", str(out)]
    proc = run(JOURNAL, "bench", *args)
    assert proc.returncode == 0, proc.stderr
    for label in ("zmq group commit", "zmq fsync per record", "in-process file"):
        assert label in proc.stdout
    assert "group commit / zmq fsync per record" in proc.stdout
    record = json.loads(out.read_text())
    assert {"date", "machine"} <= set(record["meta"]) and record["writers"] == 2
    assert record["records_per_s"]["zmq group commit"] > 0


async def test_curve_collector_admits_only_authorized_writers(
    tmp_path: Path, spawn: Any, port: int
) -> None:
    keys, stranger = tmp_path / "keys", tmp_path / "stranger"
    generate_keys(keys)
    generate_keys(stranger)  # a valid keypair, but not in keys/authorized_clients
    (stranger / "agent.key").write_bytes((keys / "agent.key").read_bytes())
    path = tmp_path / "j.jsonl"
    collector = start(spawn, path, port, "--keys", str(keys))
    assert "CURVE" in collector.stdout()
    endpoint = f"tcp://127.0.0.1:{port}"
    intruders = [ZmqJournalWriter(endpoint, timeout=1.5, keys_dir=k) for k in (None, stranger)]
    for intruder in intruders:
        with pytest.raises(JournalError, match="not durable"):
            await intruder.write(result("intruder"))
        await intruder.close()
    writer = ZmqJournalWriter(endpoint, keys_dir=keys)
    await writer.write(result("trusted"))
    await writer.close()
    assert scan_journal(path).record_ids == ["trusted"]
    stranger_key = fingerprint(load_public(stranger / "client.key"))
    collector.wait_for(rf"collector: denied handshake #\d+ from 127\.0\.0\.1 key {stranger_key}")


def test_collector_refuses_non_loopback_without_keys_and_bad_keys(tmp_path: Path, run: Any) -> None:
    exposed = run(JOURNAL, "collector", "--path", str(tmp_path / "j"), "--bind", "0.0.0.0")
    assert exposed.returncode == 2 and "writers must be authenticated (--keys)" in exposed.stderr
    keys = tmp_path / "keys"
    generate_keys(keys)
    (keys / "agent.key_secret").chmod(0o644)
    loose = run(JOURNAL, "collector", "--path", str(tmp_path / "j"), "--keys", str(keys))
    assert loose.returncode == 2 and "refusing to use it" in loose.stderr
    assert not (tmp_path / "j").exists()
    with pytest.raises(ValueError, match="not loopback"):
        CollectorConfig(tmp_path / "j", bind="0.0.0.0")  # the class refuses it too


async def test_close_fails_writes_still_waiting(free_port: Any) -> None:
    writer = ZmqJournalWriter(f"tcp://127.0.0.1:{free_port()}")
    waiting = asyncio.create_task(writer.write(result("never")))
    await asyncio.sleep(0.1)
    await writer.close()
    with pytest.raises(JournalError, match="writer closed before 'never' was durable"):
        await waiting
    with pytest.raises(JournalError, match="closed"):
        await writer.write(result("after"))


async def test_collector_on_ipv6_loopback_and_a_kernel_chosen_port(
    tmp_path: Path, spawn: Any
) -> None:
    path = tmp_path / "j.jsonl"
    collector = spawn(JOURNAL, "collector", "--path", str(path), "--bind", "::1", "--port", "0")
    collector.wait_for("listening on", timeout=30)
    found = re.search(r"listening on (tcp://\[::1\]:\d+) ", collector.stdout())
    assert found, collector.stdout()
    writer = ZmqJournalWriter(found[1])
    await writer.write(result("over-ipv6"))
    await writer.close()
    assert scan_journal(path).record_ids == ["over-ipv6"]


def option_entries(help_text: str) -> list[str]:
    """Each option's entry in an argparse --help, continuation lines joined."""
    entries: list[str] = []
    for line in help_text.split("options:", 1)[1].splitlines():
        if line.startswith("  -"):
            entries.append(line.strip())
        elif entries and line.startswith("    "):
            entries[-1] += " " + line.strip()
    return entries


def test_every_flag_shows_its_default(run: Any) -> None:
    for argv in ([JOURNAL, "collector"], [JOURNAL, "bench"], [JOURNAL, "read"], [BENCH]):
        shown = run(*argv, "--help")
        assert shown.returncode == 0, shown.stderr
        entries = [e for e in option_entries(shown.stdout) if not e.startswith("-h")]
        assert entries and all("(default: " in e for e in entries), entries


def _collectors_under(folder: Path) -> list[int]:
    """Pids of the processes whose command line names ``folder`` (the bench's collectors)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue  # gone meanwhile, or not a process
        named = any(str(folder).encode() in arg for arg in argv)
        if entry.name.isdigit() and named and b"collector" in argv:
            found.append(int(entry.name))
    return found


def test_sigterm_stops_the_bench_with_its_collector_and_journals(tmp_path: Path) -> None:
    work = tmp_path / "bench"
    argv = [sys.executable, BENCH, "--records", "2000000", "--repeat", "1", "--dir", str(work)]
    bench = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _collectors_under(work):  # the first collector is up and being written to
        assert bench.poll() is None and time.monotonic() < deadline, bench.communicate()
        time.sleep(0.05)
    bench.send_signal(signal.SIGTERM)
    out, err = bench.communicate(timeout=60)
    assert bench.returncode == 130 and err.strip() == "bench: interrupted", (out, err)
    assert _collectors_under(work) == [] and list(work.iterdir()) == []  # nothing left behind


def test_a_journal_folder_that_cannot_be_made_is_one_line(run: Any) -> None:
    done = run(JOURNAL, "bench", "--dir", "/proc/no-such-folder/bench")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr == "bench: error: /proc/no-such-folder: No such file or directory\n"
