"""ZeroMQ-specific behaviour of the agent and executor, beyond the shared conformance suite.

Reconnect after an agent restart, a clear error when the agent dies mid-command,
the concurrency limit, the output cap, and the wire codec's round trip.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time

import psutil
import pytest

from cluster_runner_simulation.agent_protocol import (
    MAX_OUTPUT_BYTES,
    REPLIES,
    REQUESTS,
    Exit,
    Output,
    ProtocolError,
    RunRequest,
    Stream,
    encode,
)
from cluster_runner_simulation.testing import LocalAgents
from cluster_runner_simulation.protocols import NodeUnreachable


def test_codec_round_trip() -> None:
    run = RunRequest(id="r1", command="echo hi", timeout=2.5, env={"A": "b"}, cwd="/tmp")
    assert REQUESTS.decode_frames(encode(run)) == (run, None)
    out = Output(id="r1", stream=Stream.STDERR)
    assert REPLIES.decode_frames(encode(out, b"\x00\xff")) == (out, b"\x00\xff")
    done = Exit(id="r1", exit_status=None, exit_signal="KILL", timed_out=True)
    assert REPLIES.decode_frames(encode(done)) == (done, None)
    with pytest.raises(ProtocolError):
        REQUESTS.decode_frames(encode(out, b"x"))  # a reply type is not a request


# Property tests of the codec (random frames, odd headers, mutations): test_exec_agent_fuzz.py.


async def test_reconnects_after_an_agent_restart() -> None:
    with LocalAgents(1) as agents:
        executor = agents.executor(0, connect_timeout=10.0)
        assert (await executor.run("echo before")).stdout == b"before\n"
        agents.restart(0)
        assert (await executor.run("echo after")).stdout == b"after\n"
        await executor.close()


async def test_agent_death_mid_command_is_node_unreachable() -> None:
    with LocalAgents(1) as agents:
        executor = agents.executor(0, silence_timeout=2.0)
        task = asyncio.create_task(executor.run("sleep 30"))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        agents.stop_one(0, signal.SIGKILL)
        with pytest.raises(NodeUnreachable, match="silent"):
            await task
        assert time.monotonic() - started < 2.0 + 3.0
        await executor.close()


async def test_concurrency_limit_queues_the_rest() -> None:
    with LocalAgents(1, concurrency=2) as agents:
        executor = agents.executor(0)
        started = time.monotonic()
        results = await asyncio.gather(*(executor.run("sleep 0.5") for _ in range(4)))
        elapsed = time.monotonic() - started
        await executor.close()
    assert all(r.ok for r in results)
    assert elapsed >= 0.95  # two waves of two


async def test_output_beyond_the_cap_is_dropped_not_fatal() -> None:
    with LocalAgents(1) as agents:
        executor = agents.executor(0)
        extra = 1024 * 1024
        result = await executor.run(f"head -c {MAX_OUTPUT_BYTES + extra} /dev/zero; echo done >&2")
        await executor.close()
    assert result.exit_status == 0
    assert len(result.stdout) + len(result.stderr) == MAX_OUTPUT_BYTES


async def test_agent_shutdown_kills_running_commands() -> None:
    marker = f"{random.randint(1000, 9999)}.{random.randint(100, 999)}"
    with LocalAgents(1) as agents:
        executor = agents.executor(0, silence_timeout=2.0)
        task = asyncio.create_task(executor.run(f"sleep {marker} & sleep {marker}; wait"))
        deadline = time.monotonic() + 10
        while len(sleepers(marker)) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(sleepers(marker)) >= 2
        agents.stop_one(0)  # SIGTERM
        assert agents.agents[0].proc.returncode == 0
        with pytest.raises(NodeUnreachable):
            await task
        await executor.close()
    assert not sleepers(marker)


def sleepers(marker: str) -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline", "status"])
        if p.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(p.info["cmdline"] or [])
    ]
