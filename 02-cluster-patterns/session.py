"""What the worker's and the client's protocol state machines share: routing and an outbox.

A session is pure logic: it never touches a socket or a clock of its own. The process
around it passes every decoded message to ``receive``, which calls the session's
``do_<Message>`` method (protocol.handler_table), and sends what ``take_outbox`` returns.
See worker_session.py and client_session.py; the coordinator's Dispatcher routes the same
way, with the sender's routing id and the time as extra arguments.
"""

from __future__ import annotations

from cluster_patterns.protocol import Message, decode, handler_table
from cluster_patterns.transport import BadInput, decode_single


class Session:
    """Routes messages to ``do_<Message>`` handlers and collects what they send."""

    role = "peer"  # for log lines: "... is not sent to a worker"

    def __init__(self) -> None:
        self._outbox: list[Message] = []
        self._handlers = handler_table(self)

    def heard(self) -> None:
        """Any frame from the coordinator arrived (each role keeps its own clock of it)."""

    def deliver(self, frames: list[bytes], bad: BadInput) -> None:
        """One message as the socket gave it: it proves the coordinator alive, then it is
        decoded and routed; whatever is not a valid message for this role is counted."""
        self.heard()
        message = decode_single(frames, decode, bad, "the coordinator")
        if message is not None and not self.receive(message):
            bad.record(f"{type(message).__name__} is not sent to a {self.role}")

    def receive(self, message: Message) -> bool:
        """Apply one decoded message; False if this role never receives that type."""
        handler = self._handlers.get(type(message))
        if handler is None:
            return False
        handler(message)
        return True

    def take_outbox(self) -> list[Message]:
        """What to send, in order, since the last call."""
        outbox, self._outbox = self._outbox, []
        return outbox
