"""The agent's spawn path (agent_spawn.py): what a command finds when it starts, and the pipes.

In this process, ``SpawnedShell`` is driven directly (output, pause and resume, cwd, a
missing cwd, env, stdin); through a real agent, a command sees only fds 0-2, leads its own
session and process group, and has SIGPIPE at its default, so ``yes | head -1`` ends.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cluster_runner_simulation.agent_spawn import SpawnedShell
from cluster_runner_simulation.testing import LocalAgents
from cluster_runner_simulation.zmq_node_executor import ZmqNodeExecutor


class Recorder:
    """ShellEvents that keep everything, and say when the command is wholly done."""

    def __init__(self) -> None:
        self.output: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self.eofs: list[int] = []
        self.done = asyncio.get_running_loop().create_future()
        self.exited = False

    def data_received(self, fd: int, data: bytes) -> None:
        self.output[fd] += data

    def eof_received(self, fd: int) -> None:
        self.eofs.append(fd)
        self._check()

    def process_exited(self) -> None:
        self.exited = True
        self._check()

    def _check(self) -> None:
        if self.exited and len(self.eofs) == 2 and not self.done.done():
            self.done.set_result(None)


async def finished(command: str, **options: object) -> tuple[SpawnedShell, Recorder]:
    recorder = Recorder()
    shell = SpawnedShell(command, recorder, **options)  # type: ignore[arg-type]
    await asyncio.wait_for(recorder.done, 20)
    shell.close()
    return shell, recorder


async def test_output_status_and_signals() -> None:
    shell, seen = await finished("echo out; echo err >&2; exit 5")
    assert (bytes(seen.output[1]), bytes(seen.output[2]), shell.returncode) == (
        b"out\n", b"err\n", 5,
    )  # fmt: skip
    shell, _ = await finished("kill -TERM $$")
    assert shell.returncode == -signal.SIGTERM


async def test_a_command_that_closes_its_outputs_and_runs_on() -> None:
    """Both pipes close first; the exit (and its status) still comes when it ends."""
    shell, seen = await finished("exec >&- 2>&-; sleep 0.3; exit 4")
    assert shell.returncode == 4 and sorted(seen.eofs) == [1, 2]


async def test_cwd_env_and_a_missing_cwd(tmp_path: Path) -> None:
    shell, seen = await finished("pwd; echo $ONLY_HERE", cwd=str(tmp_path), env={"ONLY_HERE": "x"})
    assert bytes(seen.output[1]) == f"{tmp_path}\nx\n".encode() and shell.returncode == 0
    shell, seen = await finished("true", cwd=str(tmp_path / "missing"))
    assert shell.returncode == 2 and b"can't cd" in bytes(seen.output[2])


async def test_pause_holds_the_output_in_the_pipe() -> None:
    recorder = Recorder()
    shell = SpawnedShell("head -c 300000 /dev/zero", recorder)
    shell.pause_reading()
    await asyncio.sleep(0.3)
    assert not recorder.output[1]  # not read, so the command waits on its full pipe
    shell.resume_reading()
    await asyncio.wait_for(recorder.done, 20)
    assert len(recorder.output[1]) == 300000 and shell.returncode == 0
    shell.close()


async def test_stdin_pipe() -> None:
    class Stdin:
        def __init__(self) -> None:
            self.drains = 0

        def drained(self) -> None:
            self.drains += 1

        def lost(self) -> None:
            pass

    recorder = Recorder()
    shell = SpawnedShell("tr a-z A-Z", recorder, stdin=True)
    transport = await shell.connect_stdin(Stdin())
    transport.write(b"hello\n")
    transport.close()
    await asyncio.wait_for(recorder.done, 20)
    assert bytes(recorder.output[1]) == b"HELLO\n"
    shell.close()


async def test_a_shell_that_cannot_start_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cluster_runner_simulation.agent_spawn.SHELL", "/nonexistent/sh")
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError):
        SpawnedShell("true", Recorder())
    assert len(os.listdir("/proc/self/fd")) == before  # no pipe left open


@pytest.fixture(scope="module")
def agents() -> Iterator[LocalAgents]:
    with LocalAgents(1) as started:
        yield started


@pytest.fixture
async def executor(agents: LocalAgents) -> AsyncIterator[ZmqNodeExecutor]:
    chosen = agents.executor(0)
    yield chosen
    await chosen.close()


async def test_a_command_sees_only_its_three_fds(executor: ZmqNodeExecutor) -> None:
    result = await executor.run("ls /proc/$$/fd")
    assert result.stdout.split() == [b"0", b"1", b"2"]


async def test_a_command_leads_its_own_session_and_group(executor: ZmqNodeExecutor) -> None:
    pid, pgid, sid = (await executor.run("ps -o pid=,pgid=,sid= -p $$")).stdout.split()
    assert pid == pgid == sid


async def test_sigpipe_is_at_its_default(executor: ZmqNodeExecutor) -> None:
    result = await executor.run("yes | head -1", timeout=10)
    assert result.stdout == b"y\n" and result.exit_status == 0
