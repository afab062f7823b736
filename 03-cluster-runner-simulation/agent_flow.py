"""Flow control of the node agent: one credit window per client connection.

Nothing here binds, connects or reads a pipe: this is the bookkeeping the agent
(``zmq_node_agent.py``) consults before it sends a reply, tested on its own.

Why: the agent's ROUTER cannot tell how far behind one client is, and dropping
output at a high-water mark would lose it. So every client grants ``credit`` for
the reply bytes it has read (docs/agent-protocol.md, "Flow control"), and the
agent keeps the bytes it sent but has not been credited for ``in_flight``:

* below the window (CREDIT_WINDOW_BYTES, 8 MiB), output flows;
* at the window, output stops: each of that connection's commands stops reading
  its pipes and so blocks on its own write, as it would over SSH. A credit that
  reopens the window resumes them, oldest first;
* replies other than output (accepted, exit, error, pong, ...) are small and one
  per request, so they are always sent; at twice the window the connection is
  *saturated*, and the agent drops its new requests (counted) until it reads.

The client's routing id can vanish (ROUTER_MANDATORY says EHOSTUNREACH): then the
window is ``gone``, never blocks, and the agent sends nothing more to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from cluster_runner_simulation.agent_protocol import CREDIT_WINDOW_BYTES

SATURATION_FACTOR = 2  # requests are dropped past this many windows of unread replies


class Resumable(Protocol):
    """A producer that stopped for credit; the window calls ``resume`` when it reopens."""

    def resume(self) -> None: ...


@dataclass(eq=False)
class ConnectionWindow:
    """The credit state of one client connection."""

    window: int = CREDIT_WINDOW_BYTES
    in_flight: int = 0  # reply bytes sent and not yet credited
    gone: bool = False  # the ROUTER reported the peer unreachable
    last_sent: float = 0.0  # when the agent last sent it anything (its clock)
    _waiting: dict[Resumable, None] = field(default_factory=dict)  # an ordered set

    # --8<-- [start:window]
    @property
    def is_open(self) -> bool:
        """May output be sent now?"""
        return self.gone or self.in_flight < self.window

    @property
    def saturated(self) -> bool:
        """Has the client left so much unread that its new requests must be dropped?"""
        return not self.gone and self.in_flight >= SATURATION_FACTOR * self.window

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def sent(self, nbytes: int, now: float) -> None:
        self.in_flight += nbytes
        self.last_sent = now

    def credit(self, nbytes: int) -> None:
        """The client read ``nbytes`` more; never below zero, whatever it claims."""
        self.in_flight = max(0, self.in_flight - nbytes)
        self._wake()

    # --8<-- [end:window]

    def wait(self, producer: Resumable) -> None:
        """``producer`` stopped because the window is closed; resume it when it opens."""
        self._waiting[producer] = None

    def forget(self, producer: Resumable) -> None:
        self._waiting.pop(producer, None)

    def lost(self) -> None:
        """The peer is unreachable: nothing will be delivered, so nothing waits."""
        self.gone = True
        self._wake()

    def heard_from(self) -> None:
        """The peer sent something, so it is reachable (again, if it reuses its routing id)."""
        self.gone = False

    # --8<-- [start:wake]
    def _wake(self) -> None:
        while self._waiting and self.is_open:
            producer = next(iter(self._waiting))
            del self._waiting[producer]
            producer.resume()  # may send output, close the window and wait again

    # --8<-- [end:wake]
