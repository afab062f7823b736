"""``ZmqJournalWriter``: cluster_runner's ``AsyncJournalWriterProtocol`` over ZeroMQ.

    writer (DEALER, connect) --WRITE--> collector (ROUTER, bind 127.0.0.1:5590)
    writer                   <--ACK---- collector, after the fsync

``write()`` returns only once the collector has fsynced the record, so an acknowledged record
is on disk. One DEALER serves any number of concurrent ``write()`` calls: a sender task packs
waiting records into WRITE messages and re-sends unacknowledged ones; replies are read by a
reader callback on the socket's FD (``loop.add_reader``, as pyzmq's asyncio layer does, without
its Future per message), which resolves them as ACKs arrive.

  * The writer checks first: a record no journal line could hold (too big, not finite, a bad
    record id) raises ``RecordRejected`` before anything is sent.
  * Retries: an unacknowledged record is re-sent (same id) every ``retry_interval`` seconds
    until ``timeout``, so a collector restart loses nothing; the collector stores it once.
  * Flow control: at most ``max_inflight`` writes wait; the next one blocks, and raises
    ``JournalError`` after the timeout. Nothing is dropped silently.

From code (a collector must listen: ``zmq_journal.py collector --path J.jsonl``):

    journal = ZmqJournalWriter("tcp://127.0.0.1:5590")   # keys_dir=DIR for CURVE
    await journal.write(result)                           # durable when it returns
    await journal.close()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import zmq

from cluster_patterns.curve import curve_client
from cluster_patterns.transport import configure, queued_multipart
from cluster_runner_simulation.agent_keys import client_keys
from cluster_runner_simulation.journal_protocol import (
    MAX_MSG_BYTES,
    Ack,
    JournalProtocolError,
    Nack,
    Reply,
    decode_reply,
    encode_write,
)
from cluster_runner_simulation.journal_record import encode_record
from cluster_runner_simulation.protocols import JournalError, PerfTestResult

WRITE_TIMEOUT_S: Final = 30.0  # a write() that is not durable by then raises JournalError
RETRY_INTERVAL_S: Final = 1.0  # re-send an unacknowledged record after this long
MAX_INFLIGHT: Final = 1024  # writes one writer lets wait for acknowledgement
MAX_RECORDS_PER_MESSAGE: Final = 512  # records a writer packs into one WRITE
MAX_BODIES_PER_MESSAGE: Final = 4 << 20  # bytes of bodies a writer packs into one WRITE
HWM: Final = 100  # messages queued each way; past it a WRITE waits for the next sweep
RECONNECT_IVL_MS: Final = 100
RECONNECT_IVL_MAX_MS: Final = 1000

log = logging.getLogger("zmq_journal")


@dataclass
class _Pending:
    """One record waiting for its ACK, and every write() call waiting for it."""

    body: bytes
    waiters: dict[asyncio.Future[None], float]  # each waiting write() and its deadline
    sent_at: float = -1.0


class ZmqJournalWriter:
    """``AsyncJournalWriterProtocol`` client: ``write()`` returns once the collector fsync'd."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = WRITE_TIMEOUT_S,
        retry_interval: float = RETRY_INTERVAL_S,
        max_inflight: int = MAX_INFLIGHT,
        keys_dir: Path | str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``keys_dir`` (from ``keys generate``) turns on CURVE, as the collector's --keys."""
        self.endpoint = endpoint
        self.timeout = timeout
        self.retry_interval = retry_interval
        self._clock = clock
        # One shared context per process: its I/O thread serves every writer's socket.
        self._sock: zmq.Socket[bytes] = configure(
            zmq.Context.instance().socket(zmq.DEALER),
            max_message_bytes=MAX_MSG_BYTES,
            sndhwm=HWM,
            rcvhwm=HWM,
        )
        self._sock.setsockopt(zmq.IPV6, "[" in endpoint)  # tcp://[::1]:5590
        self._sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        try:
            if keys_dir is not None:
                curve_client(self._sock, *client_keys(Path(keys_dir)))
            self._sock.connect(endpoint)
        except BaseException:
            self._sock.close(linger=0)
            raise
        self._slots = asyncio.Semaphore(max_inflight)
        self._pending: dict[str, _Pending] = {}
        self._outbox: list[str] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = int(self._sock.getsockopt(zmq.FD))  # readable: look at the socket again
        self._closed = False
        self._sweep_due = False
        self.retries = 0
        self._handlers: dict[type[Reply], Callable[[Any], None]] = {
            Ack: self._do_ack,
            Nack: self._do_nack,
        }

    async def write(self, test_result: PerfTestResult) -> None:
        if self._closed:
            raise JournalError("journal writer is closed")
        # Refused here, before anything is sent: too big, not finite, or a bad record id.
        body = encode_record(test_result)
        if not self._tasks:
            self._start()
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
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending = self._pending.get(record_id)
        if pending is None:
            pending = _Pending(body, {})
            self._pending[record_id] = pending
            self._outbox.append(record_id)
            self._wake.set()
        # No timer per write: the send loop fails waiters whose deadline has passed.
        pending.waiters[waiter] = self._clock() + self.timeout
        try:
            await waiter
        finally:
            self._slots.release()
            pending.waiters.pop(waiter, None)
            if not pending.waiters and self._pending.get(record_id) is pending:
                del self._pending[record_id]

    def _start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="journal-send"),
            asyncio.create_task(self._tick_loop(), name="journal-tick"),
        ]
        # Replies are read in a reader callback on the socket's FD, not through a Future per
        # message: the FD only says "look again", so every look reads until EAGAIN.
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._receive)

    async def _tick_loop(self) -> None:
        """Wake the send loop for a sweep twice per retry interval (one timer, not one per send)."""
        while True:
            await asyncio.sleep(min(self.retry_interval, self.timeout) / 2)
            self._sweep_due = True
            self._wake.set()
            self._receive()  # a safety net: a missed FD edge costs at most one tick

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            now = self._clock()
            batch = self._outbox
            self._outbox = []
            if self._sweep_due:
                self._sweep_due = False
                overdue = self._sweep(now)
                self.retries += len(overdue)
                batch += overdue
            try:
                self._send(batch, now)
            except zmq.ZMQError as exc:  # the sweep above must go on, or writes would hang
                log.warning("cannot send to the collector at %s: %s", self.endpoint, exc)

    # --8<-- [start:sweep]
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

    # --8<-- [end:sweep]

    def _send(self, batch: list[str], now: float) -> None:
        for chunk in self._chunks(batch):
            for _, pending in chunk:
                pending.sent_at = now
            frames = encode_write([(rid, pending.body) for rid, pending in chunk])
            try:
                self._sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                pass  # no room towards the collector: the sweep re-sends it later
        self._receive()  # a send may have taken the FD's signal of a waiting reply

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
            size += len(pending.body) + 6 * len(rid) + 12  # and the id in the index, at worst
        if chunk:
            yield chunk

    def _receive(self) -> None:
        """Handle every reply that has arrived (the FD reader callback)."""
        if self._sock.closed:  # a callback queued before close() ran
            return
        for frames in queued_multipart(self._sock):
            try:
                reply = decode_reply(frames)
            except JournalProtocolError as exc:
                log.warning("ignoring a bad reply from the collector: %s", exc)
                continue
            self._handlers[type(reply)](reply)

    # --8<-- [start:resolve]
    def _do_ack(self, ack: Ack) -> None:
        for record_id in ack.ids:
            self._resolve(record_id, None)

    def _do_nack(self, nack: Nack) -> None:
        self._resolve(nack.id, JournalError(f"collector rejected {nack.id!r}: {nack.reason}"))

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

    # --8<-- [end:resolve]

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        for record_id, pending in self._pending.items():
            for waiter in pending.waiters:
                if not waiter.done():
                    waiter.set_exception(
                        JournalError(f"writer closed before {record_id!r} was durable")
                    )
        self._sock.close(linger=0)
