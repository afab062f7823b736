"""Ctrl-C, SIGTERM and hang-ups, and the undo that stops what a run started.

The rules, the same for every command:
- the first of SIGINT, SIGTERM or SIGHUP interrupts the run (``Interrupted``, exit 128+N),
  except where a command only wants to be told (the demo's loop: ``flag_only``);
- from that first signal on, all three are ignored, by this process and by every command it
  starts afterwards (they inherit the ignored disposition): a second Ctrl-C cannot cut short
  the stop that the first one began;
- while an ``Undo`` is armed (a start that has not finished, the demo's own cluster), the
  program runs it however the run ends: an error, an interrupt, or the normal end.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Final

INTERRUPTS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """The run was interrupted by a signal; not an Exception, so no `except Exception` eats it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


class Signals:
    """The one handler of the interrupting signals for the whole run."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.flag_only = False
        self._shielded = False
        self._deferring = 0

    def install(self) -> None:
        for signum in INTERRUPTS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            return
        self.received = signum
        ignore_interrupts()
        if not (self.flag_only or self._shielded or self._deferring):
            raise Interrupted(signum)

    @property
    def interrupted(self) -> bool:
        return self.received is not None

    def shield(self) -> None:
        """From now on nothing interrupts this run: it is stopping what it started."""
        self._shielded = True
        ignore_interrupts()

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A signal during the block interrupts at its end: a child is started and recorded
        (its pid written down) as one step, so an interrupt cannot leave it unrecorded."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        self.raise_if_interrupted()

    def raise_if_interrupted(self) -> None:
        if self.received is not None and not (self.flag_only or self._shielded):
            raise Interrupted(self.received)


def ignore_interrupts() -> None:
    for signum in INTERRUPTS:
        signal.signal(signum, signal.SIG_IGN)


def child_ignores_sigint() -> None:
    """preexec_fn for a Python child that installs its own Ctrl-C handler first thing: until
    then a Ctrl-C cannot end it with a traceback (this program has no threads)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Undo:
    """What to stop if the run ends now; at most one action, armed and disarmed by commands."""

    def __init__(self, signals: Signals) -> None:
        self._signals = signals
        self._action: Callable[[], None] | None = None
        self.description = ""
        # What a successful start arms next: nothing for `start`, the stop for the demo.
        self.after_start: tuple[Callable[[], None], str] | None = None

    @property
    def armed(self) -> bool:
        return self._action is not None

    def arm(self, action: Callable[[], None] | None, description: str = "") -> None:
        """``action`` runs if the run ends before ``arm(None)``; ``description`` says what it
        is about to do ("stopping what this run started")."""
        self._action = action
        self.description = description

    def started(self) -> None:
        """A start succeeded: from now on undo what the run asked for (``after_start``)."""
        self.arm(*(self.after_start or (None, "")))

    def run(self) -> None:
        """Run the armed action once, shielded from every further signal."""
        self._signals.shield()
        action, self._action = self._action, None
        if action is not None:
            action()
