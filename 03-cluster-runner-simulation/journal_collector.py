"""The journal collector: binds a ROUTER, group-commits every record it receives, then ACKs.

    writers (DEALER, connect) --WRITE--> collector (ROUTER, bind 127.0.0.1:5590)
    writers                   <--ACK---- collector, after the fsync

It drains every WRITE that has arrived, appends all new records with one write() and ONE
fsync (group commit), then acknowledges them. The fsync runs in a commit thread, so the next
batch is collected meanwhile. A record is acknowledged only once its line is durable.

  * Hot path: a WRITE whose records are all new is checked with ``checked_lines`` (one msgspec
    decode per body, the cheap checks once per frame) and acknowledged with one ACK per writer
    and commit; records one at a time only when something is wrong or already stored.
  * Duplicates: a record id already in the journal is acknowledged, not stored again.
  * Validation: a record is checked exactly as every later start checks its line; one that
    could not be read back gets a NACK and the reason.
  * An unusable journal (a directory, read-only, full, locked): the failed commit is cut back,
    its records get a NACK with the reason, and ``serve`` returns with ``failed`` set.
  * Hostile peers: a bad message is counted and logged rate-limited (``BadInput``), an
    unexpected error while handling one is counted apart; neither ends the loop. Queues are
    bounded (HWMs, ``MAX_MSG_BYTES``, ``MAX_BATCH_BYTES``).
  * CURVE: with ``keys_dir`` the ROUTER is a CURVE server with ``DIR/agent.key_secret``, and a
    ZAP thread admits only the writer keys in ``DIR/authorized_clients/`` (denials are logged
    with the key's fingerprint).

Run it through the CLI: ``python 03-cluster-runner-simulation/zmq_journal.py collector --path J``.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import zmq

from cluster_patterns import defaults
from cluster_patterns.curve import ZapThread, curve_server, load_keypair, server_policy
from cluster_patterns.transport import (
    BadInput,
    RateLimitedLog,
    configure,
    endpoint,
    is_loopback,
    print_to,
    queued_multipart,
)
from cluster_runner_simulation.agent_keys import AGENT_NAME
from cluster_runner_simulation.journal_format import AppendOnlyFile
from cluster_runner_simulation.journal_protocol import (
    MAX_MSG_BYTES,
    MAX_REASON_CHARS,
    MAX_RECORDS,
    Ack,
    JournalProtocolError,
    Nack,
    Reply,
    decode_write,
    encode_reply,
)
from cluster_runner_simulation.journal_record import RecordRejected, checked_line, checked_lines
from cluster_runner_simulation.protocols import JournalError

MAX_BATCH: Final = 4096  # records one group commit takes (a last WRITE may go past it)
MAX_BATCH_BYTES: Final = 64 << 20  # bytes of lines one group commit holds at most
HWM: Final = 100  # messages queued per peer and direction before ZeroMQ pushes back or drops
CLOSE_LINGER_MS: Final = 500  # the last ACKs and NACKs get this long to leave on close
POLL_MS: Final = 200  # how often the collector looks at its stop flag
COMMIT_DONE_ENDPOINT: Final = "inproc://journal-commit-done"


@dataclass(frozen=True)
class CollectorConfig:
    """Where the journal is, where to listen, and how to commit."""

    path: Path
    bind: str = defaults.LOOPBACK
    port: int = defaults.JOURNAL_PORT  # 0: any free port (``JournalCollector.endpoint`` says)
    group_commit: bool = True  # False: one fsync per record, the benchmark's baseline
    keys_dir: Path | None = None  # CURVE keys from ``keys generate``; None: plain TCP

    def __post_init__(self) -> None:
        if self.keys_dir is None and not is_loopback(self.bind):
            raise ValueError(f"{self.bind} is not loopback: writers must be authenticated (keys)")

    @property
    def endpoint(self) -> str:
        return endpoint(self.bind, self.port)


@dataclass
class _Batch:
    """Records of one group commit, and who to acknowledge once they are durable."""

    lines: list[bytes] = field(default_factory=list)
    line_ids: list[str] = field(default_factory=list)  # the record id of each line
    ids: set[str] = field(default_factory=set)
    acks: dict[bytes, list[str]] = field(default_factory=dict)
    records: int = 0  # taken into the batch: to be stored, or duplicates to acknowledge
    size: int = 0  # bytes of lines
    written: int = 0  # lines durable so far (fsync per record may fail half-way)
    error: JournalError | None = None

    @property
    def full(self) -> bool:
        return self.records >= MAX_BATCH or self.size >= MAX_BATCH_BYTES

    def add(self, peer: bytes, ids: list[str], lines: list[bytes]) -> None:
        self.records += len(ids)
        self.lines += lines
        self.line_ids += ids
        self.ids.update(ids)
        self.size += sum(map(len, lines))
        self.acks.setdefault(peer, []).extend(ids)


class JournalCollector:
    """Binds a ROUTER, group-commits incoming records to the journal, acknowledges them."""

    def __init__(self, config: CollectorConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        # Keys first: a bad key file must stop us before the journal is touched.
        keys = config.keys_dir
        server = load_keypair(keys / f"{AGENT_NAME}.key_secret") if keys else None
        policy = server_policy(keys, "collector") if keys else None
        # Recovers; raises JournalCorruption, or JournalFileError for an unusable path.
        self.file = AppendOnlyFile(config.path)
        self.ctx = zmq.Context()
        self.zap: ZapThread | None = None
        # The journal's own bounds: a WRITE may be megabytes, so far fewer of them queue.
        self.sock = configure(
            self.ctx.socket(zmq.ROUTER), max_message_bytes=MAX_MSG_BYTES, sndhwm=HWM, rcvhwm=HWM
        )
        self.sock.setsockopt(zmq.IPV6, ":" in config.bind)  # else 127.0.0.1 shows as ::ffff:
        try:
            if server is not None and policy is not None:
                self.zap = ZapThread(self.ctx, policy)  # before the CURVE server binds
                self.zap.start()
                curve_server(self.sock, server)
            self.sock.bind(config.endpoint)
        except BaseException:
            self.close()
            raise
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.bad = BadInput("collector")
        self.unexpected = RateLimitedLog(print_to(sys.stderr), clock=clock)
        self.errors = 0  # unexpected errors while handling a message (each survived, logged)
        self._next = _Batch()  # being collected
        self._in_flight: _Batch | None = None  # being fsynced by the commit thread
        self._commits: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self.failed: JournalError | None = None
        self.stored = 0
        self.duplicates = 0
        self.commits = 0
        self.stopping = False

    def serve(self) -> None:
        """Receive while the previous batch is being fsynced; acknowledge once it is durable.

        A single commit thread does write()+fsync() (both release the GIL) and reports
        each finished batch over an inproc PAIR. The main thread owns the ROUTER and
        keeps collecting the next batch meanwhile: that is what lets many writers
        share one fsync.
        """
        done_rx = configure(self.ctx.socket(zmq.PAIR), network=False)
        done_rx.bind(COMMIT_DONE_ENDPOINT)
        committer = threading.Thread(target=self._commit_thread, name="commit", daemon=True)
        committer.start()
        everything, commits_only = zmq.Poller(), zmq.Poller()
        everything.register(self.sock, zmq.POLLIN)
        for poller in (everything, commits_only):
            poller.register(done_rx, zmq.POLLIN)
        try:
            # --8<-- [start:serve-loop]
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
            # --8<-- [end:serve-loop]
        finally:
            self._commits.put(None)
            committer.join(timeout=30)
            done_rx.close(linger=0)

    def _drain(self) -> None:
        """Move every WRITE that has arrived (up to a full batch) into the next batch."""
        if self._next.full:  # the rest waits in the socket: the writers' own backpressure
            return
        for frames in queued_multipart(self.sock):
            peer = frames[0]
            try:
                self._handle(peer, frames[1:])
            except Exception as exc:  # a bug must cost one message, never the collector
                self.errors += 1
                self.unexpected(
                    f"collector: unexpected error #{self.errors} handling a message from peer "
                    f"{peer.hex()}: {type(exc).__name__}: {str(exc)[:300]}"
                )
            if self._next.full:
                return

    def _handle(self, peer: bytes, frames: list[bytes]) -> None:
        try:
            write = decode_write(frames)
        except JournalProtocolError as exc:
            self.bad.record(f"from peer {peer.hex()}: {exc}")
            return
        batch = self._next
        unique = set(write.ids)
        if len(unique) == len(write.ids) > 1 and self._all_new(unique):
            lines = checked_lines(write.ids, write.bodies)
            if lines is not None:  # the common case: several records, all new and valid
                batch.add(peer, write.ids, lines)
                return
        for record_id, body in zip(write.ids, write.bodies):
            self._take(peer, record_id, body)

    def _all_new(self, ids: set[str]) -> bool:
        in_flight = self._in_flight
        return (
            ids.isdisjoint(self.file.ids)
            and ids.isdisjoint(self._next.ids)
            and (in_flight is None or ids.isdisjoint(in_flight.ids))
        )

    # --8<-- [start:take]
    def _take(self, peer: bytes, record_id: str, body: bytes) -> None:
        """One record of a WRITE that is not all new and valid: stored, duplicate or NACKed."""
        batch = self._next
        if not self._all_new({record_id}):
            # Already durable, or will be before this batch is: acknowledge with this batch.
            self.duplicates += 1
            batch.records += 1
            batch.acks.setdefault(peer, []).append(record_id)
            return
        try:
            line = checked_line(record_id, body)
        except RecordRejected as exc:
            self.bad.record(f"from peer {peer.hex()}: record {record_id[:64]!r}: {exc.reason}")
            self._send(peer, Nack(id=record_id, reason=exc.reason[:MAX_REASON_CHARS]))
            return
        batch.add(peer, [record_id], [line])

    # --8<-- [end:take]

    # --8<-- [start:commits]
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
            self._acknowledge(peer, ids)

    # --8<-- [end:commits]

    def _fail(self, batch: _Batch, error: JournalError) -> None:
        """The journal cannot be written: say so to every waiting writer, then stop.

        The commit cut its partial append back, so the file is as it was before the batch
        (less any lines already fsynced one by one, which are acknowledged).
        """
        durable = set(batch.line_ids[: batch.written])
        self.file.ids |= durable
        self.stored += len(durable)
        lost = batch.ids - durable
        reason = f"the collector cannot write its journal and stops: {error}"[:MAX_REASON_CHARS]
        for pending, not_durable in ((batch, lost), (self._next, self._next.ids | lost)):
            for peer, ids in pending.acks.items():
                self._acknowledge(peer, [i for i in ids if i not in not_durable])
                for record_id in (i for i in ids if i in not_durable):
                    self._send(peer, Nack(id=record_id, reason=reason))
        self._next = _Batch()
        self.failed = error
        self.stopping = True

    # --8<-- [start:commit-thread]
    def _commit_thread(self) -> None:
        done_tx = configure(self.ctx.socket(zmq.PAIR), network=False)
        done_tx.connect(COMMIT_DONE_ENDPOINT)
        try:
            while (batch := self._commits.get()) is not None:
                try:
                    if self.config.group_commit:
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

    # --8<-- [end:commit-thread]

    def _acknowledge(self, peer: bytes, ids: list[str]) -> None:
        """ACK ``ids`` to ``peer``: one message per ``MAX_RECORDS`` ids, however they came."""
        for start in range(0, len(ids), MAX_RECORDS):
            self._send(peer, Ack(ids=ids[start : start + MAX_RECORDS]))

    def _send(self, peer: bytes, reply: Reply) -> None:
        try:
            self.sock.send_multipart([peer, *encode_reply(reply)], zmq.NOBLOCK)
        except zmq.Again:
            pass  # the writer is not reading; it re-sends and gets a duplicate ACK later
        except zmq.ZMQError as exc:
            self.errors += 1
            self.unexpected(f"collector: cannot answer peer {peer.hex()}: {exc}")

    def close(self) -> None:
        self.sock.close(linger=CLOSE_LINGER_MS)  # the last ACKs and NACKs may still leave
        if self.zap is not None:
            self.zap.stop()
        self.ctx.term()
        self.file.close()
