"""The lab runner's machinery: processes in "terminals", what they printed, and verdicts.

``01-zmq-basics/labs.py`` is the command a learner types; the experiments and exercise checks
of every week use what is here. A ``Lab`` starts programs exactly as the pages tell you to,
each in its own process group (its "terminal"), from the repository root, and prints the
command and what that terminal printed. Commands are printed with the pages' default ports
and paths; the processes really use free ports (``Lab.ports``) and a private temporary
directory (``Lab.alias`` shows a real path the way the page writes it), so a lab never
collides with a lesson you left running or with another lab.

Nothing here is needed to understand ZeroMQ: it is a tool, for the course only.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parents[2]
LESSONS: Final = Path("01-zmq-basics")
JOURNAL: Final = "03-cluster-runner-simulation/zmq_journal.py"
READY_TIMEOUT_S: Final = 20.0  # a process must print what we wait for within this
STEP_TIMEOUT_S: Final = 60.0  # no single step of an experiment may take longer


class LabError(Exception):
    """The experiment could not be carried out (not: it gave an unexpected result)."""


@dataclass
class Proc:
    terminal: str
    argv: list[str]
    command: str  # as printed: the default ports, no hidden options
    popen: subprocess.Popen[bytes]
    log: Path
    aliases: Mapping[str, str] = field(default_factory=dict)  # real text -> as printed
    printed: int = 0  # characters of output already shown

    def output(self) -> str:
        """Everything it printed so far (stdout and stderr), real paths as the page shows them."""
        text = self.log.read_text(errors="replace")
        for real, shown in self.aliases.items():
            text = text.replace(real, shown)
        return text

    def wait_for(self, pattern: str, timeout: float = READY_TIMEOUT_S) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.output())
            if match:
                return match
            if self.popen.poll() is not None or time.monotonic() > deadline:
                how = f"exited {self.popen.returncode}" if self.popen.poll() is not None else ""
                raise LabError(
                    f"`{self.command}` {how or 'timed out'} before printing {pattern!r}:\n"
                    + self.output()[-1500:]
                )
            time.sleep(0.05)

    def wait(self, timeout: float = STEP_TIMEOUT_S) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"`{self.command}` did not finish within {timeout:.0f} s") from None

    def running(self) -> bool:
        return self.popen.poll() is None

    def send(self, signum: int) -> None:
        """A signal to the whole process group, as the terminal's Ctrl-C (or kill) would."""
        if self.running():
            os.killpg(self.popen.pid, signum)

    def stop(self) -> None:
        """Ctrl-C, as a user would press it; SIGKILL if that does not end it."""
        if self.running():
            self.send(signal.SIGCONT)  # a frozen process cannot act on Ctrl-C
        self.send(signal.SIGINT)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            self.popen.wait(timeout=10)


@dataclass
class Lab:
    workdir: Path
    default_ports: bool = False
    procs: list[Proc] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    taken: set[int] = field(default_factory=set)
    aliases: dict[str, str] = field(default_factory=dict)

    def ports(self, default: int, span: int = 1) -> int:
        """The first of `span` consecutive ports: the lesson's default, or free ones."""
        if self.default_ports:
            return default
        for _ in range(200):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                first = int(probe.getsockname()[1])
            wanted = range(first, first + span)
            if first + span < 65536 and not self.taken & set(wanted) and all(map(free, wanted)):
                self.taken.update(wanted)
                return first
        raise LabError(f"found no {span} consecutive free ports")

    def alias(self, name: str, shown: str) -> Path:
        """A private path ``workdir/name`` that commands and output show as ``shown``."""
        real = self.workdir / name
        self.aliases[str(real)] = shown
        return real

    def spawn(
        self, terminal: str, argv: list[str], command: str, env: Mapping[str, str] | None = None
    ) -> Proc:
        """Start ``argv`` from the repository root in a process group of its own; ``command``
        is what the terminal shows (a page's command line)."""
        log = self.workdir / f"proc{len(self.procs)}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                start_new_session=True,
            )
        for real, shown in self.aliases.items():
            command = command.replace(real, shown)
        proc = Proc(terminal, argv, command, popen, log, self.aliases)
        self.procs.append(proc)
        return proc

    def start(
        self,
        terminal: str,
        script: Path | str,
        command: str = "",
        port: int = 0,
        shown_port: int = 0,
        env: Mapping[str, str] | None = None,
        hidden: Sequence[str] = (),
    ) -> Proc:
        """Start `python SCRIPT COMMAND` as a user would. A `{port}` in COMMAND runs as `port`
        and is printed as `shown_port`; without one, `--port PORT` is added, unprinted, and so
        are the `hidden` arguments (the free ports of a cluster's other roles, say).
        A bare SCRIPT name is a week-1 lesson."""
        path = Path(script) if "/" in str(script) else LESSONS / script
        words = shlex.split(command)
        actual = [word.replace("{port}", str(port)) for word in words]
        shown = [word.replace("{port}", str(shown_port)) for word in words]
        extra = ["--port", str(port)] if port and "{port}" not in command else []
        printed = " ".join(["python", str(path), *(quote(a) for a in shown)])
        argv = [sys.executable, "-u", str(path), *actual, *extra, *hidden]
        return self.spawn(terminal, argv, printed, env)

    def run(
        self,
        terminal: str,
        script: Path | str,
        command: str = "",
        port: int = 0,
        shown_port: int = 0,
        hidden: Sequence[str] = (),
    ) -> Proc:
        """Start a command, like start(), and wait until it exits (a client, a publisher...)."""
        proc = self.start(terminal, script, command, port, shown_port, hidden=hidden)
        proc.wait()
        return proc

    def group(
        self, terminal: str, script: str, first: str, later: list[str], ready: str, port: int
    ) -> tuple[Proc, list[Proc]]:
        """A process that binds (`first`, in `terminal`), then the ones that connect to it,
        each once it has printed `ready`: the sink and its workers, a broker and its workers."""
        hub = self.start(terminal, script, first, port=port)
        hub.wait_for(r"bound|ROUTER on port")
        where = "Terminal 2 &" if terminal.startswith("Terminal") else "worker"
        others = [self.start(where, script, command, port=port) for command in later]
        for other in others:
            other.wait_for(ready)
        return hub, others

    def show(self, *procs: Proc) -> None:
        """Print each process's command (once) and what it printed since the last show."""
        for proc in procs:
            text = proc.output()
            new = text[proc.printed :].splitlines()
            if proc.printed == 0:
                background = " &" if proc.terminal.endswith("&") else ""
                print(f"{proc.terminal.rstrip(' &')} $ {proc.command}{background}")
            elif new:
                print(f"{proc.terminal.rstrip(' &')}, later:")
            for line in new:
                print(f"    {line}")
            proc.printed = len(text)
        sys.stdout.flush()

    def look(self, text: str) -> None:
        print(f"Look: {text}", flush=True)

    def expect(self, ok: bool, text: str) -> None:
        if not ok:
            self.unexpected.append(text)
            print(f"Unexpected: {text}", flush=True)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def quote(arg: str) -> str:
    return f'"{arg}"' if not re.fullmatch(r"[\w./:=,+-]+", arg) else arg


def number(pattern: str, text: str) -> int:
    """The first integer group of `pattern` in `text` (commas allowed)."""
    match = re.search(pattern, text)
    if not match:
        raise LabError(f"expected output matching {pattern!r}, got:\n{text[-1500:]}")
    return int(match.group(1).replace(",", ""))


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


@contextmanager
def lab_session(default_ports: bool) -> Iterator[Lab]:
    with tempfile.TemporaryDirectory(prefix="zmq-labs-") as workdir:
        lab = Lab(Path(workdir), default_ports)
        try:
            yield lab
        finally:
            lab.stop_all()


# --- exercise checks -------------------------------------------------------------------------


@dataclass
class Verdicts:
    results: list[tuple[bool, str]] = field(default_factory=list)

    def judge(self, ok: bool, passed: str, failed: str) -> bool:
        self.results.append((ok, passed if ok else failed))
        print(f"  {'PASS' if ok else 'FAIL'}  {passed if ok else failed}", flush=True)
        return ok


def usage_ok(verdicts: Verdicts, proc: Proc, command: str) -> bool:
    proc.popen.poll()
    rejected = proc.popen.returncode == 2 or "usage:" in proc.output()
    return verdicts.judge(
        not rejected,
        f"it accepts `{command}`",
        f"it does not accept `{command}`, which the exercise asks for:\n{indent(proc.output())}",
    )


def indent(text: str) -> str:
    return "\n".join(f"        {line}" for line in text.strip().splitlines()[-12:])


def journal_bodies(lab: Lab, path: Path) -> list[dict[str, Any]]:
    """Every record of the journal at ``path``, in order, as `zmq_journal.py read` gives them
    (a helper process, left out of what the lab shows)."""
    reading = lab.start("reader", JOURNAL, f"read {path} --format jsonl")
    reading.wait()
    lab.procs.remove(reading)
    return [json.loads(line) for line in reading.output().splitlines()]
