"""One conformance suite, run against every NodeExecutorProtocol implementation.

``zmq``: ZmqNodeExecutor against a real zmq_node_agent.py subprocess (CURVE).
``asyncssh``: AsyncSSHExecutor against a real private sshd on loopback.
Both must behave the same: exit codes, binary and 10 MB output, env and cwd,
timeouts and cancellation that kill the remote process group (checked with
psutil), and a clear NodeUnreachable within the connect timeout; and ``stream()``:
live output, stdin (bytes or an async iterable, flow-controlled), leaving early kills.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from cluster_runner_simulation.testing import (
    LocalAgents,
    LocalSshd,
    processes_with,
    sshd_unavailable_reason,
    unique_sleep,
)
from cluster_runner_simulation.protocols import (
    CommandExit,
    CommandTimeout,
    NodeExecutorProtocol,
    NodeUnreachable,
    OutputChunk,
    OutputStream,
    StreamEvent,
)
from cluster_runner_simulation.ssh_executor import AsyncSSHExecutor
from cluster_runner_simulation.zmq_node_executor import ZmqNodeExecutor

KINDS = ["zmq", "asyncssh"]
TEN_MB = 10 * 1024 * 1024
ORPHAN_WAIT_S = 5.0


@pytest.fixture(scope="module")
def sshd() -> Iterator[LocalSshd]:
    reason = sshd_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with LocalSshd() as server:
        yield server


@pytest.fixture(scope="module")
def agents() -> Iterator[LocalAgents]:
    with LocalAgents(1) as started:
        yield started


def make_executor(kind: str, request: pytest.FixtureRequest) -> NodeExecutorProtocol:
    if kind == "zmq":
        agents: LocalAgents = request.getfixturevalue("agents")
        return agents.executor(0)
    sshd: LocalSshd = request.getfixturevalue("sshd")
    return sshd.executor("ssh0")


@pytest.fixture(params=KINDS)
async def executor(request: pytest.FixtureRequest) -> AsyncIterator[NodeExecutorProtocol]:
    chosen = make_executor(request.param, request)
    assert isinstance(chosen, NodeExecutorProtocol)
    yield chosen
    await chosen.close()


async def wait_until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_exit_codes(executor: NodeExecutorProtocol) -> None:
    assert (await executor.run("true")).exit_status == 0
    assert (await executor.run("exit 3")).exit_status == 3
    assert (await executor.run("false")).returncode == 1


async def test_stdout_and_stderr_stay_apart(executor: NodeExecutorProtocol) -> None:
    result = await executor.run("echo out; echo err >&2")
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"
    assert result.ok and result.stdout_text == "out\n"


async def test_killed_by_signal(executor: NodeExecutorProtocol) -> None:
    result = await executor.run("kill -9 $$")
    assert result.exit_status is None
    assert result.exit_signal == "KILL"


async def test_binary_output_is_intact(executor: NodeExecutorProtocol, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 64 + b"\x00\r\n\xff"
    (tmp_path / "blob").write_bytes(payload)
    result = await executor.run(f"cat {tmp_path / 'blob'}; cat {tmp_path / 'blob'} >&2")
    assert result.stdout == payload
    assert result.stderr == payload


async def test_ten_megabytes_of_stdout(executor: NodeExecutorProtocol, tmp_path: Path) -> None:
    payload = os.urandom(TEN_MB)
    (tmp_path / "big").write_bytes(payload)
    result = await executor.run(f"cat {tmp_path / 'big'}")
    assert result.exit_status == 0
    assert len(result.stdout) == TEN_MB
    assert result.stdout == payload


async def test_env_and_cwd(executor: NodeExecutorProtocol, tmp_path: Path) -> None:
    result = await executor.run(
        'printf "%s|" "$GREETING"; pwd', env={"GREETING": "hello 'world' $x"}, cwd=str(tmp_path)
    )
    assert result.stdout_text == f"hello 'world' $x|{tmp_path}\n"


async def test_missing_cwd_fails_the_command(executor: NodeExecutorProtocol) -> None:
    result = await executor.run("true", cwd="/nonexistent/dir/for/sure")
    assert result.exit_status not in (0, None)


async def test_many_concurrent_commands(executor: NodeExecutorProtocol) -> None:
    results = await asyncio.gather(*(executor.run(f"echo {i}") for i in range(16)))
    assert [r.stdout_text for r in results] == [f"{i}\n" for i in range(16)]


async def test_timeout_kills_the_whole_process_group(executor: NodeExecutorProtocol) -> None:
    marker = unique_sleep()
    started = time.monotonic()
    with pytest.raises(CommandTimeout):
        await executor.run(f"sleep {marker} & sleep {marker}; wait", timeout=1.0)
    assert time.monotonic() - started < 1.0 + 4.0
    assert await wait_until(lambda: not processes_with(marker), ORPHAN_WAIT_S), processes_with(
        marker
    )
    assert (await executor.run("echo still-works")).stdout == b"still-works\n"


async def test_cancellation_kills_the_remote_process(executor: NodeExecutorProtocol) -> None:
    marker = unique_sleep()
    task = asyncio.create_task(executor.run(f"sleep {marker} & sleep {marker}; wait"))
    assert await wait_until(lambda: len(processes_with(marker)) >= 2, 10.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_until(lambda: not processes_with(marker), ORPHAN_WAIT_S), processes_with(
        marker
    )
    assert (await executor.run("echo still-works")).stdout == b"still-works\n"


async def test_cancellation_at_any_moment_leaves_nothing_behind(
    executor: NodeExecutorProtocol,
) -> None:
    """Cancelled while the request is in flight or the process is being spawned."""
    await executor.run("true")  # connected, so the early delays hit the spawn itself
    markers = []
    for delay in (0.0, 0.0005, 0.002, 0.01, 0.03):
        marker = unique_sleep()
        markers.append(marker)
        task = asyncio.create_task(executor.run(f"sleep {marker}"))
        await asyncio.sleep(delay)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.sleep(1.0)  # a process spawned late would show up by now

    def leftovers() -> list[psutil.Process]:
        return [p for m in markers for p in processes_with(m)]

    assert await wait_until(lambda: not leftovers(), ORPHAN_WAIT_S), leftovers()


async def test_system_facts(executor: NodeExecutorProtocol) -> None:
    facts = await executor.system_facts()
    assert facts.node_id == executor.node_id
    assert facts.hostname == socket.gethostname()
    assert facts.cpu_count == os.cpu_count()
    assert facts.memory_total_bytes > 0
    assert facts.python_version.count(".") == 2


@pytest.mark.parametrize("kind", KINDS)
async def test_unreachable_node_fails_fast_and_clearly(kind: str, free_port: object) -> None:
    assert callable(free_port)
    dead_port = free_port()
    if kind == "zmq":
        agents_keys = LocalAgents(0)
        agents_keys.start()
        try:
            executor: NodeExecutorProtocol = ZmqNodeExecutor.from_keys_dir(
                "ghost", "127.0.0.1", dead_port, agents_keys.keys_dir, connect_timeout=1.0
            )
        finally:
            agents_keys.stop()
    else:
        executor = AsyncSSHExecutor("ghost", "127.0.0.1", dead_port, connect_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(NodeUnreachable) as caught:
        await executor.run("true")
    elapsed = time.monotonic() - started
    await executor.close()
    assert elapsed < 1.0 + 1.5
    assert "ghost" in str(caught.value)
    assert str(dead_port) in str(caught.value)


# --- stream(): live output, stdin, early exit ---------------------------------------------


async def collect(events: AsyncIterator[StreamEvent]) -> tuple[bytes, bytes, CommandExit]:
    """stdout, stderr and the exit of a stream; the exit must come last, exactly once."""
    out, err, ends = bytearray(), bytearray(), []
    async for event in events:
        assert not ends, f"an event after the exit: {event}"
        if isinstance(event, CommandExit):
            ends.append(event)
        else:
            (out if event.stream is OutputStream.STDOUT else err).extend(event.data)
    assert len(ends) == 1
    return bytes(out), bytes(err), ends[0]


async def test_stream_gives_what_run_gives(executor: NodeExecutorProtocol) -> None:
    command = "echo out; echo err >&2; exit 4"
    out, err, end = await collect(executor.stream(command))
    result = await executor.run(command)
    assert (out, err, end.exit_status) == (result.stdout, result.stderr, result.exit_status)
    assert (out, err, end.exit_status, end.ok) == (b"out\n", b"err\n", 4, False)


async def test_stream_is_live(executor: NodeExecutorProtocol) -> None:
    """The first line arrives while the command still runs."""
    marker = unique_sleep()
    events = executor.stream(f"echo first; sleep {marker} & wait")
    first = await anext(events)
    assert isinstance(first, OutputChunk) and first.data == b"first\n"
    assert await wait_until(lambda: processes_with(marker), 10.0)
    await events.aclose()  # type: ignore[attr-defined]


async def test_stream_stdin_bytes_reach_the_command(
    executor: NodeExecutorProtocol, tmp_path: Path
) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)  # more than one grant window, odd-sized
    out, _, end = await collect(executor.stream("sha256sum; echo done >&2", stdin=payload))
    assert end.exit_status == 0
    assert out.split()[0].decode() == hashlib.sha256(payload).hexdigest()


async def test_stream_stdin_async_iterable_then_eof(executor: NodeExecutorProtocol) -> None:
    async def lines() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"line {i}\n".encode()
            await asyncio.sleep(0.01)
        yield b""  # an empty chunk is not an EOF

    out, _, end = await collect(executor.stream("cat; echo eof-seen", stdin=lines()))
    assert out == b"".join(f"line {i}\n".encode() for i in range(5)) + b"eof-seen\n"
    assert end.ok


async def test_stream_empty_stdin_is_eof_at_once(executor: NodeExecutorProtocol) -> None:
    out, _, end = await collect(executor.stream("wc -c", stdin=b""))
    assert out.strip() == b"0" and end.ok


async def test_stream_command_that_ignores_stdin_still_ends(
    executor: NodeExecutorProtocol,
) -> None:
    """20 MB offered to a command that reads 10 bytes: flow control holds the rest, no hang."""
    out, _, end = await collect(
        executor.stream("head -c 10 >/dev/null; echo read-ten", stdin=bytes(20 * 1024 * 1024))
    )
    assert out == b"read-ten\n" and end.ok


async def test_stream_early_exit_kills_the_process_group(executor: NodeExecutorProtocol) -> None:
    marker = unique_sleep()
    events = executor.stream(f"echo started; sleep {marker} & sleep {marker}; wait")
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        async for event in events:
            assert isinstance(event, OutputChunk)
            assert await wait_until(lambda: len(processes_with(marker)) >= 2, 10.0)
            break
    assert await wait_until(lambda: not processes_with(marker), ORPHAN_WAIT_S), processes_with(
        marker
    )
    assert (await executor.run("echo still-works")).stdout == b"still-works\n"


async def test_stream_timeout_after_the_output_that_came(executor: NodeExecutorProtocol) -> None:
    marker = unique_sleep()
    seen = bytearray()
    with pytest.raises(CommandTimeout):
        async for event in executor.stream(f"echo early; sleep {marker}", timeout=1.0):
            if isinstance(event, OutputChunk):
                seen += event.data
    assert seen == b"early\n"
    assert await wait_until(lambda: not processes_with(marker), ORPHAN_WAIT_S)


async def test_stream_failing_stdin_raises_and_kills(executor: NodeExecutorProtocol) -> None:
    marker = unique_sleep()

    async def broken() -> AsyncIterator[bytes]:
        yield b"some input\n"
        await asyncio.sleep(0.3)
        raise OSError("the source file vanished")

    with pytest.raises(OSError, match="vanished"):
        await collect(executor.stream(f"cat >/dev/null & sleep {marker}; wait", stdin=broken()))
    assert await wait_until(lambda: not processes_with(marker), ORPHAN_WAIT_S)
