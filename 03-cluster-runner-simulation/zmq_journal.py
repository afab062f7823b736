"""A durable journal over ZeroMQ: writers send results, one collector fsyncs them.

    writers (DEALER, connect) --WRITE id,body...--> collector (ROUTER, bind :5590)
    writers                   <--ACK id...-------- collector, after fsync

The collector owns the journal file (format and recovery: ``journal_format.py``).
It drains every WRITE that has arrived, appends all new records with one write()
and ONE fsync (group commit), then acknowledges them. The fsync runs in a commit
thread, so the next batch is collected meanwhile. A writer's ``write()`` returns
only after that acknowledgement, so an acknowledged record is on disk.

  * Duplicates: a record id already in the journal is acknowledged, not stored again.
  * Validation: a record is checked exactly as every later start will check its line
    (``journal_format.checked_line``); one that could not be read back gets a NACK and a
    reason. Writers refuse an oversized or non-finite record before sending it.
  * Retries: a writer re-sends an unacknowledged record (same id) every
    ``RETRY_INTERVAL_S`` until ``WRITE_TIMEOUT_S``, so a collector restart loses nothing.
  * Flow control: at most ``MAX_INFLIGHT`` writes wait per writer; the next one
    blocks, and raises ``JournalError`` after the timeout. Nothing is dropped silently.
  * Crash safety: on start the collector cuts a torn (unterminated) last line and refuses to
    start (exit 3, naming the line and byte offset) if any complete line fails its check;
    ``repair PATH`` then keeps the valid prefix and moves the rest to a copy.
  * Unusable journal path (a directory, read-only, full disk, locked): one line, exit 2; a
    failed commit is cut back, its records get a NACK with the reason, and the collector stops.
  * Hostile peers: a bad message is counted and logged rate-limited, an unexpected error
    while handling one is counted apart; neither ends the loop. Queues are bounded (HWMs,
    ``MAX_MSG_BYTES``, ``MAX_BATCH_BYTES``).
  * Security: without --keys the collector binds loopback only. With --keys DIR (made by
    ``zmq_node_agent.py keys generate DIR``) it speaks CURVE, using DIR/agent.key_secret, and
    a ZAP handler admits only the writer keys in DIR/authorized_clients/.

Default port 5590 (outside the course's 5570-5572). Run:

    python 03-cluster-runner-simulation/zmq_journal.py collector --path J.jsonl [--port 5590]
    python 03-cluster-runner-simulation/zmq_journal.py collector --path J.jsonl \\
        --bind 0.0.0.0 --keys /etc/cluster-keys          # writers: ZmqJournalWriter(..., keys_dir=)
    python 03-cluster-runner-simulation/zmq_journal.py read J.jsonl --format table
    python 03-cluster-runner-simulation/zmq_journal.py repair J.jsonl
    python 03-cluster-runner-simulation/zmq_journal.py bench --writers 16 --records 20000

Exit codes: 0 done; 1 cannot bind; 2 bad arguments, bad keys, or an unusable journal path;
3 the journal is corrupt (nothing was changed); 130 interrupted.

From code: ``journal = ZmqJournalWriter("tcp://127.0.0.1:5590")``;
``await journal.write(result)``; ``await journal.close()``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import enum
import ipaddress
import json
import logging
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import zmq
import zmq.asyncio
from zmq.auth.thread import ThreadAuthenticator

from cluster_runner_simulation.agent_keys import AGENT_NAME, AUTHORIZED_DIR, CLIENT_NAME
from cluster_runner_simulation.agent_keys import KeyFileError, load_keypair, load_public
from cluster_runner_simulation.journal_format import (
    MAX_ID_CHARS,
    AppendOnlyFile,
    FileJournalWriter,
    JournalCorruption,
    JournalFileError,
    RecordRejected,
    checked_line,
    encode_record,
    repair_journal,
    scan_journal,
)
from cluster_runner_simulation.protocols import (
    AsyncJournalWriterProtocol,
    JournalError,
    PerfTestResult,
)

DEFAULT_PORT = 5590
DEFAULT_BIND = "127.0.0.1"
PROTOCOL = b"ZJ1"
MAX_MSG_BYTES = 8 << 20  # bigger frames are garbage; ZeroMQ drops the peer
MAX_BATCH = 4096  # records one group commit takes at most (and one WRITE carries at most)
MAX_BATCH_BYTES = 64 << 20  # bytes of lines one group commit holds at most
MAX_LENGTH_DIGITS = len(str(MAX_MSG_BYTES))  # a body length in the WRITE index
HWM = 100  # messages queued per peer and direction before ZeroMQ pushes back or drops
CLOSE_LINGER_MS = 500  # the last ACKs and NACKs get this long to leave on close
POLL_MS = 200  # how often the collector looks at its stop flag
WRITE_TIMEOUT_S = 30.0  # a write() that is not durable by then raises JournalError
RETRY_INTERVAL_S = 1.0  # re-send an unacknowledged record after this long
MAX_INFLIGHT = 1024  # writes one writer lets wait for acknowledgement
MAX_RECORDS_PER_MESSAGE = 512  # records a writer packs into one WRITE
MAX_BODIES_PER_MESSAGE = 4 << 20  # bytes of bodies a writer packs into one WRITE (and 1 more)
BAD_MESSAGE_LOG_EVERY_S = 5.0  # rate limit for "bad message" log lines
COMMIT_DONE_ENDPOINT = "inproc://journal-commit-done"

log = logging.getLogger("zmq_journal")


# --- Wire protocol: message types, one codec --------------------------------------------------


class MsgType(bytes, enum.Enum):
    WRITE = b"WRITE"  # frames: index ("<len> <id>" lines), all bodies concatenated
    ACK = b"ACK"  # frames: id, id, ... (durable, or already stored)
    NACK = b"NACK"  # frames: id, reason (the record is invalid; retrying will not help)


class ProtocolError(ValueError):
    """A message that does not follow the journal protocol."""


@dataclass(frozen=True)
class WriteMsg:
    records: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class AckMsg:
    record_ids: tuple[str, ...]


@dataclass(frozen=True)
class NackMsg:
    record_id: str
    reason: str


JournalMsg = WriteMsg | AckMsg | NackMsg


def encode(msg: JournalMsg) -> list[bytes]:
    if isinstance(msg, WriteMsg):
        # Two frames for the whole batch, whatever its size: ZeroMQ costs per frame, and a
        # frame per id and per body was most of a writer's CPU time.
        index = "\n".join(f"{len(body)} {record_id}" for record_id, body in msg.records)
        return [PROTOCOL, MsgType.WRITE.value, index.encode(), b"".join(b for _, b in msg.records)]
    if isinstance(msg, AckMsg):
        # One frame: a frame per id would cost the collector a send() call per record.
        return [PROTOCOL, MsgType.ACK.value, "\n".join(msg.record_ids).encode()]
    return [PROTOCOL, MsgType.NACK.value, msg.record_id.encode(), msg.reason.encode()]


def decode(frames: Sequence[bytes]) -> JournalMsg:
    """The one codec's decoder: ``ProtocolError`` is the only error it raises."""
    if len(frames) < 2 or frames[0] != PROTOCOL:
        raise ProtocolError("not a journal message (bad protocol frame)")
    try:
        kind = MsgType(bytes(frames[1]))
    except ValueError:
        raise ProtocolError(f"unknown message type {bytes(frames[1])[:16]!r}") from None
    parts = [bytes(f) for f in frames[2:]]
    try:
        if kind is MsgType.WRITE:
            if len(parts) != 2:
                raise ProtocolError("WRITE needs an index frame and a bodies frame")
            return WriteMsg(split_bodies(parts[0].decode(), parts[1]))
        if kind is MsgType.ACK:
            if len(parts) != 1:
                raise ProtocolError("ACK carries one frame of ids")
            return AckMsg(tuple(parts[0].decode().split("\n")) if parts[0] else ())
        if len(parts) != 2:
            raise ProtocolError("NACK needs id and reason")
        return NackMsg(parts[0].decode(), parts[1].decode(errors="replace"))
    except UnicodeDecodeError:
        raise ProtocolError("record id is not UTF-8") from None


def split_bodies(index: str, bodies: bytes) -> tuple[tuple[str, bytes], ...]:
    """Cut the bodies frame along the index frame's ``<length> <id>`` lines."""
    if index.count("\n") >= MAX_BATCH:
        raise ProtocolError(f"a WRITE carries at most {MAX_BATCH} records")
    records = []
    offset = 0
    for entry in index.split("\n"):
        length, _, record_id = entry.partition(" ")
        if not (0 < len(length) <= MAX_LENGTH_DIGITS and length.isascii() and length.isdigit()):
            raise ProtocolError(
                f"WRITE index lines are '<length of 1-{MAX_LENGTH_DIGITS} digits> <id>'"
            )
        if not 0 < len(record_id) <= MAX_ID_CHARS:
            raise ProtocolError(f"WRITE index lines are '<length> <id of 1-{MAX_ID_CHARS} chars>'")
        end = offset + int(length)
        records.append((record_id, bodies[offset:end]))
        offset = end
    if offset != len(bodies):
        raise ProtocolError(
            f"WRITE index covers {offset} bytes, the bodies frame has {len(bodies)}"
        )
    return tuple(records)


def validate_body(record_id: str, body: bytes) -> bytes:
    """The collector's boundary check; returns the journal line, or raises ``ProtocolError``.

    It is the check every later start applies to the line (``journal_format.checked_line``),
    so a record that passes here can always be read back.
    """
    try:
        return checked_line(record_id, body)
    except RecordRejected as exc:
        raise ProtocolError(exc.reason) from None


# --- Collector --------------------------------------------------------------------------------


class RateLimitedLog:
    """Counts events and logs at most one line per ``every_s`` (never a traceback)."""

    def __init__(self, every_s: float, what: str = "bad message") -> None:
        self.every_s = every_s
        self.what = what
        self.count = 0
        self._last = -every_s

    def bad(self, peer: bytes, reason: str) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            log.warning("%s #%d from peer %s: %s", self.what, self.count, peer.hex(), reason[:300])


@dataclass
class _Batch:
    """Records of one group commit, and who to acknowledge once they are durable."""

    lines: list[bytes] = field(default_factory=list)
    line_ids: list[str] = field(default_factory=list)  # the record id of each line
    ids: set[str] = field(default_factory=set)
    acks: dict[bytes, list[str]] = field(default_factory=dict)
    records: int = 0
    bytes: int = 0
    written: int = 0  # lines durable so far (fsync per record may fail half-way)
    error: JournalError | None = None

    @property
    def full(self) -> bool:
        return self.records >= MAX_BATCH or self.bytes >= MAX_BATCH_BYTES


class JournalCollector:
    """Binds a ROUTER, group-commits incoming records to the journal, acknowledges them."""

    def __init__(
        self,
        path: Path,
        endpoint: str,
        *,
        group_commit: bool = True,
        keys_dir: Path | None = None,
    ) -> None:
        # Keys first: a bad key file must stop us before the journal is touched.
        server = load_keypair(keys_dir / f"{AGENT_NAME}.key_secret") if keys_dir else None
        # Recovers; raises JournalCorruption, or JournalFileError for an unusable path.
        self.file = AppendOnlyFile(path)
        self.group_commit = group_commit
        self.ctx = zmq.Context()
        self.auth: ThreadAuthenticator | None = None
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_MSG_BYTES)
        self.sock.setsockopt(zmq.RCVHWM, HWM)
        self.sock.setsockopt(zmq.SNDHWM, HWM)
        try:
            if keys_dir is not None and server is not None:
                # CURVE, and a ZAP allow-list: only writers whose public key is authorized.
                self.auth = ThreadAuthenticator(self.ctx)
                self.auth.start()
                self.auth.configure_curve(domain="*", location=str(keys_dir / AUTHORIZED_DIR))
                self.sock.setsockopt(zmq.CURVE_SERVER, 1)
                self.sock.setsockopt(zmq.CURVE_PUBLICKEY, server.public)
                self.sock.setsockopt(zmq.CURVE_SECRETKEY, server.secret)
            self.sock.bind(endpoint)
        except BaseException:
            self.close()
            raise
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.bad = RateLimitedLog(BAD_MESSAGE_LOG_EVERY_S)
        self.unexpected = RateLimitedLog(BAD_MESSAGE_LOG_EVERY_S, "unexpected error")
        self._next = _Batch()  # being collected
        self._in_flight: _Batch | None = None  # being fsynced by the commit thread
        self._commits: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self.failed: JournalError | None = None
        self.stored = 0
        self.duplicates = 0
        self.commits = 0
        self.stopping = False

    @property
    def errors(self) -> int:
        """Unexpected errors while handling a message (each survived, counted, logged)."""
        return self.unexpected.count

    def serve(self) -> None:
        """Receive while the previous batch is being fsynced; acknowledge once it is durable.

        A single commit thread does write()+fsync() (both release the GIL) and reports
        each finished batch over an inproc PAIR. The main thread owns the ROUTER and
        keeps collecting the next batch meanwhile: that is what lets many writers
        share one fsync.
        """
        done_rx = self.ctx.socket(zmq.PAIR)
        done_rx.setsockopt(zmq.LINGER, 0)
        done_rx.bind(COMMIT_DONE_ENDPOINT)
        committer = threading.Thread(target=self._commit_thread, name="commit", daemon=True)
        committer.start()
        everything, commits_only = zmq.Poller(), zmq.Poller()
        everything.register(self.sock, zmq.POLLIN)
        for poller in (everything, commits_only):
            poller.register(done_rx, zmq.POLLIN)
        try:
            while not self.stopping or self._in_flight is not None:
                # A full next batch waits for the commit; the rest waits in ZeroMQ's queues.
                full = self.stopping or self._next.full
                events = dict((commits_only if full else everything).poll(POLL_MS))
                if self.sock in events:
                    self._drain()
                if done_rx in events:
                    done_rx.recv()
                    self._finish_commit()
                if self._in_flight is None and self._next.acks and self.failed is None:
                    self._start_commit()
        finally:
            self._commits.put(None)
            committer.join(timeout=30)
            done_rx.close(linger=0)

    def _drain(self) -> None:
        """Move every WRITE that has arrived (up to a full batch) into the next batch."""
        while not self._next.full:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            peer = frames[0]
            try:
                self._handle(peer, frames[1:])
            except Exception as exc:  # a bug must cost one message, never the collector
                self.unexpected.bad(peer, f"{type(exc).__name__}: {exc}")

    def _handle(self, peer: bytes, frames: list[bytes]) -> None:
        try:
            msg = decode(frames)
            if not isinstance(msg, WriteMsg):
                raise ProtocolError(f"collectors only accept WRITE, got {type(msg).__name__}")
        except ProtocolError as exc:
            self.bad.bad(peer, str(exc))
            return
        for record_id, record in msg.records:
            self._take(peer, record_id, record)

    def _take(self, peer: bytes, record_id: str, body: bytes) -> None:
        batch = self._next
        batch.records += 1
        known = record_id in self.file.ids or record_id in batch.ids
        if known or (self._in_flight is not None and record_id in self._in_flight.ids):
            # Already durable, or will be before this batch is: acknowledge with this batch.
            self.duplicates += 1
        else:
            try:
                line = validate_body(record_id, body)
            except ProtocolError as exc:
                self.bad.bad(peer, f"record {record_id[:64]!r}: {exc}")
                self._send(peer, NackMsg(record_id, str(exc)))
                return
            batch.lines.append(line)
            batch.line_ids.append(record_id)
            batch.ids.add(record_id)
            batch.bytes += len(line)
        batch.acks.setdefault(peer, []).append(record_id)

    def _start_commit(self) -> None:
        self._in_flight, self._next = self._next, _Batch()
        self._commits.put(self._in_flight)

    def _finish_commit(self) -> None:
        batch = self._in_flight
        assert batch is not None
        self._in_flight = None
        if batch.error is not None:
            self._fail(batch, batch.error)
            return
        self.file.ids |= batch.ids
        self.stored += len(batch.ids)
        for peer, ids in batch.acks.items():
            self._send(peer, AckMsg(tuple(ids)))

    def _fail(self, batch: _Batch, error: JournalError) -> None:
        """The journal cannot be written: say so to every waiting writer, then stop.

        The commit cut its partial append back, so the file is as it was before the batch
        (less any lines already fsynced one by one, which are acknowledged).
        """
        durable = set(batch.line_ids[: batch.written])
        self.file.ids |= durable
        self.stored += len(durable)
        lost = batch.ids - durable
        reason = f"the collector cannot write its journal and stops: {error}"
        for pending, not_durable in ((batch, lost), (self._next, self._next.ids | lost)):
            for peer, ids in pending.acks.items():
                if acked := tuple(i for i in ids if i not in not_durable):
                    self._send(peer, AckMsg(acked))
                for record_id in (i for i in ids if i in not_durable):
                    self._send(peer, NackMsg(record_id, reason))
        self._next = _Batch()
        self.failed = error
        self.stopping = True

    def _commit_thread(self) -> None:
        done_tx = self.ctx.socket(zmq.PAIR)
        done_tx.setsockopt(zmq.LINGER, 0)
        done_tx.connect(COMMIT_DONE_ENDPOINT)
        try:
            while (batch := self._commits.get()) is not None:
                try:
                    if self.group_commit:
                        self.file.append(b"".join(batch.lines))  # one write, one fsync
                        batch.written = len(batch.lines)
                        self.commits += 1 if batch.lines else 0
                    else:
                        for line in batch.lines:  # the fsync-per-record baseline
                            self.file.append(line)
                            batch.written += 1
                            self.commits += 1
                except JournalError as exc:
                    batch.error = exc
                except Exception as exc:  # reported like a write error, never a silent thread
                    batch.error = JournalError(f"{self.file.path}: commit failed: {exc!r}")
                done_tx.send(b"")
        finally:
            done_tx.close(linger=0)

    def _send(self, peer: bytes, msg: JournalMsg) -> None:
        try:
            self.sock.send_multipart([peer, *encode(msg)], zmq.NOBLOCK)
        except zmq.Again:
            pass  # the writer is not reading; it re-sends and gets a duplicate ACK later
        except zmq.ZMQError as exc:
            self.unexpected.bad(peer, f"cannot answer: {exc}")

    def close(self) -> None:
        self.sock.close(linger=CLOSE_LINGER_MS)  # the last ACKs and NACKs may still leave
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()
        self.file.close()


# --- Writer -----------------------------------------------------------------------------------


@dataclass
class _Pending:
    """One record waiting for its ACK, and every write() call waiting for it."""

    body: bytes
    waiters: dict[asyncio.Future[None], float]  # each waiting write() and its deadline
    sent_at: float = -1.0


class ZmqJournalWriter:
    """``AsyncJournalWriterProtocol`` client: ``write()`` returns once the collector fsync'd.

    One DEALER socket serves any number of concurrent ``write()`` calls. A sender task
    packs waiting records into WRITE messages and re-sends unacknowledged ones; a
    receiver task resolves them as ACKs arrive.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = WRITE_TIMEOUT_S,
        retry_interval: float = RETRY_INTERVAL_S,
        max_inflight: int = MAX_INFLIGHT,
        keys_dir: Path | str | None = None,
    ) -> None:
        """``keys_dir`` (from ``keys generate``) turns on CURVE, as the collector's --keys."""
        self.endpoint = endpoint
        self.timeout = timeout
        self.retry_interval = retry_interval
        # One shared context per process: its I/O thread serves every writer's socket.
        self._sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_MSG_BYTES)
        self._sock.setsockopt(zmq.SNDHWM, HWM)
        self._sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if keys_dir is not None:
            client = load_keypair(Path(keys_dir) / f"{CLIENT_NAME}.key_secret")
            self._sock.setsockopt(
                zmq.CURVE_SERVERKEY, load_public(Path(keys_dir) / f"{AGENT_NAME}.key")
            )
            self._sock.setsockopt(zmq.CURVE_PUBLICKEY, client.public)
            self._sock.setsockopt(zmq.CURVE_SECRETKEY, client.secret)
        self._sock.connect(endpoint)
        self._slots = asyncio.Semaphore(max_inflight)
        self._pending: dict[str, _Pending] = {}
        self._outbox: list[str] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.retries = 0

    async def write(self, test_result: PerfTestResult) -> None:
        if self._closed:
            raise JournalError("journal writer is closed")
        # Refused here, before anything is sent: too big, not finite, or a bad record id.
        body = encode_record(test_result)
        self._start()
        loop = asyncio.get_running_loop()
        record_id = test_result.record_id
        if self._slots.locked():  # flow control: wait for room, but not forever
            try:
                async with asyncio.timeout(self.timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise JournalError(
                    f"journal at {self.endpoint}: {len(self._pending)} writes already wait for "
                    f"the collector; {record_id!r} not accepted within {self.timeout:.0f}s"
                ) from None
        else:
            await self._slots.acquire()
        waiter: asyncio.Future[None] = loop.create_future()
        pending = self._pending.get(record_id)
        if pending is None:
            pending = _Pending(body, {})
            self._pending[record_id] = pending
            self._outbox.append(record_id)
            self._wake.set()
        # No timer per write: the send loop fails waiters whose deadline has passed.
        pending.waiters[waiter] = loop.time() + self.timeout
        try:
            await waiter
        finally:
            self._slots.release()
            pending.waiters.pop(waiter, None)
            if not pending.waiters and self._pending.get(record_id) is pending:
                del self._pending[record_id]

    def _start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._send_loop(), name="journal-send"),
                asyncio.create_task(self._recv_loop(), name="journal-recv"),
            ]

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        tick = min(self.retry_interval, self.timeout) / 2
        next_sweep = loop.time() + tick
        while True:
            try:
                async with asyncio.timeout(max(0.0, next_sweep - loop.time())):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            now = loop.time()
            batch = [rid for rid in self._outbox if rid in self._pending]
            self._outbox.clear()
            if now >= next_sweep:
                next_sweep = now + tick
                overdue = self._sweep(now)
                self.retries += len(overdue)
                batch += overdue
            try:
                await self._send(batch, now)
            except zmq.ZMQError as exc:  # the sweep above must go on, or writes would hang
                log.warning("cannot send to the collector at %s: %s", self.endpoint, exc)

    def _sweep(self, now: float) -> list[str]:
        """Fail waiters past their deadline; return the records due for a re-send."""
        overdue = []
        for record_id, pending in list(self._pending.items()):
            for waiter, deadline in list(pending.waiters.items()):
                if deadline <= now and not waiter.done():
                    waiter.set_exception(
                        JournalError(
                            f"journal at {self.endpoint}: record {record_id!r} not durable after "
                            f"{self.timeout:.0f}s (collector slow or gone)"
                        )
                    )
            if pending.sent_at >= 0 and now - pending.sent_at >= self.retry_interval:
                overdue.append(record_id)
        return overdue

    async def _send(self, batch: list[str], now: float) -> None:
        for chunk in self._chunks(batch):
            for _, pending in chunk:
                pending.sent_at = now
            msg = WriteMsg(tuple((rid, pending.body) for rid, pending in chunk))
            try:
                await self._sock.send_multipart(encode(msg), zmq.NOBLOCK)
            except zmq.Again:
                pass  # no room towards the collector: the sweep re-sends it later

    def _chunks(self, batch: list[str]) -> Iterator[list[tuple[str, _Pending]]]:
        """Waiting records in WRITEs of at most MAX_RECORDS_PER_MESSAGE records and about
        MAX_BODIES_PER_MESSAGE bytes, so that every message fits the collector's limit."""
        chunk: list[tuple[str, _Pending]] = []
        size = 0
        for rid in batch:
            pending = self._pending.get(rid)  # a timed-out write may have left meanwhile
            if pending is None:
                continue
            if chunk and (len(chunk) >= MAX_RECORDS_PER_MESSAGE or size >= MAX_BODIES_PER_MESSAGE):
                yield chunk
                chunk, size = [], 0
            chunk.append((rid, pending))
            size += len(pending.body) + 4 * len(rid) + 10  # the id's index line, at worst
        if chunk:
            yield chunk

    async def _recv_loop(self) -> None:
        while True:
            frames = await self._sock.recv_multipart()
            try:
                msg = decode(frames)
            except ProtocolError as exc:
                log.warning("ignoring a bad reply from the collector: %s", exc)
                continue
            if isinstance(msg, AckMsg):
                for rid in msg.record_ids:
                    self._resolve(rid, None)
            elif isinstance(msg, NackMsg):
                error = JournalError(f"collector rejected {msg.record_id!r}: {msg.reason}")
                self._resolve(msg.record_id, error)

    def _resolve(self, record_id: str, error: JournalError | None) -> None:
        pending = self._pending.pop(record_id, None)
        if pending is None:
            return  # a duplicate ACK for a retried record
        for waiter in pending.waiters:
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for record_id, pending in self._pending.items():
            for waiter in pending.waiters:
                if not waiter.done():
                    waiter.set_exception(
                        JournalError(f"writer closed before {record_id!r} was durable")
                    )
        self._sock.close(linger=0)


# --- CLI: collector ---------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run_collector(args: argparse.Namespace) -> int:
    endpoint = f"tcp://{args.bind}:{args.port}"
    keys = Path(args.keys) if args.keys else None
    try:
        collector = JournalCollector(
            Path(args.path), endpoint, group_commit=not args.fsync_each, keys_dir=keys
        )
    except JournalError as exc:
        return journal_failure("collector", exc)
    except KeyFileError as exc:
        return journal_failure("collector", str(exc))
    except zmq.ZMQError as exc:
        print(f"collector: error: cannot bind {endpoint}: {exc}", file=sys.stderr)
        return 1
    recovery = collector.file.recovery
    if recovery.torn_bytes:
        print(
            f"collector: cut {recovery.torn_bytes} bytes of a torn last line "
            f"({recovery.torn_reason})"
        )

    def stop(signum: int, frame: FrameType | None) -> None:
        collector.stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    mode = "group commit" if collector.group_commit else "fsync per record"
    mode += ", CURVE" if keys else ", no encryption: loopback only"
    print(
        f"collector: {recovery.records} records in {args.path}; "
        f"listening on {collector.endpoint} ({mode})",
        flush=True,
    )
    try:
        collector.serve()
        if collector.failed is not None:
            return journal_failure("collector", collector.failed)
    finally:
        print(
            f"collector: stored {collector.stored}, duplicates {collector.duplicates}, "
            f"fsyncs {collector.commits}, bad messages {collector.bad.count}, "
            f"unexpected errors {collector.errors}",
            flush=True,
        )
        collector.close()
    return 0


# --- CLI: read --------------------------------------------------------------------------------

COLUMNS = ("record_id", "schedule", "test", "nodes", "exit_status", "busbw", "result_line")


def _row(body: dict[str, object]) -> list[str]:
    nodes = body.get("nodes")
    metrics = body.get("metrics")
    busbw = metrics.get("busbw_gbps", "") if isinstance(metrics, dict) else ""
    return [
        str(body.get("record_id", "")),
        str(body.get("schedule", "")),
        str(body.get("test", "")),
        " ".join(str(n) for n in nodes) if isinstance(nodes, list) else "",
        str(body.get("exit_status", "")),
        str(busbw),
        str(body.get("result_line", "")).strip(),
    ]


def journal_failure(command: str, error: JournalError | str) -> int:
    """One line on stderr; the exit code: 3 for a corrupt journal, 2 for an unusable path."""
    print(f"{command}: error: {error}", file=sys.stderr)
    return 3 if isinstance(error, JournalCorruption) else 2


def existing(path: Path) -> Path:
    """``path``, if there is a journal there (an empty journal is not made up for a typo)."""
    if not path.exists():
        raise JournalFileError(f"{path}: no such journal", path)
    return path


def run_read(args: argparse.Namespace) -> int:
    try:
        scan = scan_journal(existing(Path(args.path)))
    except JournalError as exc:
        return journal_failure("read", exc)
    bodies = [e.body for e in scan.entries]
    if args.format == "jsonl":
        for body in bodies:
            print(json.dumps(body, sort_keys=True))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(COLUMNS)
        writer.writerows(_row(b) for b in bodies)
    else:
        rows = [list(COLUMNS), *(_row(b) for b in bodies)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
        for row in rows:
            cells = [c.ljust(w) for c, w in zip(row, widths)] + [row[-1]]
            print("  ".join(cells))
    if scan.torn_bytes:
        print(f"read: warning: torn last line ignored ({scan.torn_reason})", file=sys.stderr)
    return 0


# --- CLI: repair ------------------------------------------------------------------------------


def run_repair(args: argparse.Namespace) -> int:
    """Keep the valid records before the first bad line; move the rest to a fsynced copy."""
    path = Path(args.path)
    try:
        report = repair_journal(existing(path))
    except JournalError as exc:
        return journal_failure("repair", exc)
    if report.copy_path is None:
        print(f"repair: nothing to repair: {report.kept_records} records in {path}, all valid")
        return 0
    if report.bad is not None:
        print(f"repair: {path}: first bad line: {report.bad}")
    else:
        print(f"repair: {path}: torn last line: {report.torn_bytes} bytes without a newline")
    print(f"repair: kept {report.kept_records} records ({report.kept_bytes} bytes) in {path}")
    print(
        f"repair: moved {report.moved_bytes} bytes ({report.moved_lines} lines, "
        f"{report.moved_valid} of them valid records) to {report.copy_path}"
    )
    return 0


# --- CLI: bench -------------------------------------------------------------------------------


def bench_result(writer_no: int, seq: int, run: str) -> PerfTestResult:
    now = time.time()
    return PerfTestResult(
        record_id=f"{run}-w{writer_no}-{seq}",
        schedule="bench",
        test="all_reduce_perf",
        nodes=(f"node-{writer_no:02d}",),
        exit_status=0,
        result_line="   134217728    33554432  float  sum  -1  1200.0  111.85  209.72  0",
        started_at=now,
        finished_at=now,
        metrics={"busbw_gbps": 209.72},
    )


async def _drive(make_writer: object, writers: int, per_writer: int, inflight: int) -> float:
    """Run ``writers`` writers, each with ``inflight`` concurrent writes; return records/s."""
    assert callable(make_writer)
    run = f"{os.getpid()}-{time.monotonic_ns()}"
    instances = [make_writer() for _ in range(writers)]

    async def one_lane(w: int, lane: int) -> None:
        for seq in range(lane, per_writer, inflight):
            await instances[w].write(bench_result(w, seq, run))

    start = time.perf_counter()
    await asyncio.gather(*(one_lane(w, lane) for w in range(writers) for lane in range(inflight)))
    elapsed = time.perf_counter() - start
    for instance in instances:
        await instance.close()
    return writers * per_writer / elapsed


def _start_collector(path: Path, port: int, fsync_each: bool) -> subprocess.Popen[str]:
    argv = [sys.executable, "-u", __file__, "collector", "--path", str(path), "--port", str(port)]
    proc = subprocess.Popen(
        argv + (["--fsync-each"] if fsync_each else []), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening" not in line:
        proc.kill()
        raise SystemExit(f"bench: collector did not start: {line.strip()}")
    return proc


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((DEFAULT_BIND, 0))
        return int(sock.getsockname()[1])


def _bench_collector(tmp: Path, args: argparse.Namespace, per_writer: int, each: bool) -> float:
    port = _free_port()
    path = tmp / f"{'each' if each else 'group'}-{time.monotonic_ns()}.jsonl"
    proc = _start_collector(path, port, each)
    try:
        endpoint = f"tcp://{DEFAULT_BIND}:{port}"
        rate = asyncio.run(
            _drive(lambda: ZmqJournalWriter(endpoint), args.writers, per_writer, args.inflight)
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    stored = len(scan_journal(path).entries)
    if stored != args.writers * per_writer:
        raise SystemExit(f"bench: error: the collector stored {stored} records, not all")
    return rate


def _bench_file(tmp: Path, args: argparse.Namespace, per_writer: int) -> float:
    shared = FileJournalWriter(tmp / f"local-{time.monotonic_ns()}.jsonl")

    class _Shared:
        """All writers share one file journal, as cluster_runner's tasks would."""

        async def write(self, result: PerfTestResult) -> None:
            await shared.write(result)

        async def close(self) -> None:
            pass

    rate = asyncio.run(_drive(_Shared, args.writers, per_writer, args.inflight))
    asyncio.run(shared.close())
    return rate


def run_bench(args: argparse.Namespace) -> int:
    per_writer = max(1, args.records // args.writers)
    runs: dict[str, list[float]] = {
        "zmq group commit": [],
        "zmq fsync per record": [],
        "in-process file, fsync per record": [],
    }
    with tempfile.TemporaryDirectory(prefix="journal-bench-", dir=args.dir) as tmp:
        # Interleaved rounds, so that a noisy neighbour hurts every variant alike.
        for _ in range(args.repeat):
            runs["zmq group commit"].append(_bench_collector(Path(tmp), args, per_writer, False))
            runs["zmq fsync per record"].append(_bench_collector(Path(tmp), args, per_writer, True))
            runs["in-process file, fsync per record"].append(
                _bench_file(Path(tmp), args, per_writer)
            )
    figures = {label: statistics.median(rates) for label, rates in runs.items()}
    print(
        f"journal bench: {args.writers} writers x {per_writer} records, "
        f"{args.inflight} in flight per writer, durable records/s "
        f"(median of {args.repeat} interleaved run(s))"
    )
    for label, rate in figures.items():
        print(f"  {label:<36} {rate:>10,.0f}")
    group = figures["zmq group commit"]
    print(
        f"  group commit / zmq fsync per record:   {group / figures['zmq fsync per record']:.1f}x"
    )
    per = figures["in-process file, fsync per record"]
    print(f"  group commit / in-process per record:  {group / per:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(bench_record(args, per_writer, figures), indent=2))
    return 0


def bench_record(
    args: argparse.Namespace, per_writer: int, figures: dict[str, float]
) -> dict[str, object]:
    """The figures plus where and when they were measured, for docs/results/."""
    group = figures["zmq group commit"]
    return {
        "meta": {
            "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
            "load_average_1m": round(os.getloadavg()[0], 2),
            "command": " ".join(["zmq_journal.py", *sys.argv[1:]]),
        },
        "writers": args.writers,
        "records_per_writer": per_writer,
        "inflight_per_writer": args.inflight,
        "repeat": args.repeat,
        "records_per_s": {label: round(rate) for label, rate in figures.items()},
        "group_vs_zmq_fsync_per_record": round(group / figures["zmq fsync per record"], 1),
        "group_vs_in_process_per_record": round(
            group / figures["in-process file, fsync per record"], 1
        ),
    }


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Durable ZeroMQ journal: collector, reader, repair, bench"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    col = sub.add_parser("collector", help="bind a ROUTER and write the journal")
    col.add_argument("--path", required=True, help="journal file (JSONL), created if missing")
    col.add_argument(
        "--bind", default=DEFAULT_BIND, help=f"address to bind (default {DEFAULT_BIND})"
    )
    col.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    col.add_argument("--fsync-each", action="store_true", help="fsync per record (baseline)")
    col.add_argument("--keys", help="CURVE keys dir ('zmq_node_agent.py keys generate DIR')")
    read = sub.add_parser("read", help="print or export a journal")
    read.add_argument("path", help="journal file (JSONL)")
    read.add_argument(
        "--format", choices=("jsonl", "csv", "table"), default="table", help="default table"
    )
    repair = sub.add_parser(
        "repair", help="keep the valid records, move the damaged rest to PATH.corrupt-<UTC time>"
    )
    repair.add_argument("path", help="journal file (JSONL) that the collector refused")
    bench = sub.add_parser("bench", help="group commit vs fsync per record, in one run")
    bench.add_argument("--writers", type=int, default=16)
    bench.add_argument("--records", type=int, default=20_000, help="total records per variant")
    bench.add_argument("--inflight", type=int, default=8, help="concurrent writes per writer")
    bench.add_argument("--repeat", type=int, default=3, help="interleaved rounds; medians shown")
    bench.add_argument("--dir", default=None, help="where the bench journals go (default: TMPDIR)")
    bench.add_argument("--json", help="also write the figures, date and machine to this file")
    args = parser.parse_args(argv)
    if args.command == "collector" and not 0 < args.port < 65536:
        parser.error("--port must be 1-65535")
    if args.command == "collector" and not args.keys and not is_loopback(args.bind):
        parser.error(f"--bind {args.bind} is not loopback: writers must be authenticated (--keys)")
    if args.command == "bench" and min(args.writers, args.records, args.inflight, args.repeat) < 1:
        parser.error("--writers, --records, --inflight and --repeat must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    handlers = {
        "collector": run_collector,
        "read": run_read,
        "repair": run_repair,
        "bench": run_bench,
    }
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130


def _satisfies_protocol(
    zmq_writer: ZmqJournalWriter, file_writer: FileJournalWriter
) -> tuple[AsyncJournalWriterProtocol, AsyncJournalWriterProtocol]:
    """Never called: mypy proves here that both journals are AsyncJournalWriterProtocols."""
    return zmq_writer, file_writer


if __name__ == "__main__":
    sys.exit(main())
