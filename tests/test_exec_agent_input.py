"""A run's stdin on the wire: grants (data_credit), the window, and input that breaks the rules.

The bookkeeping (InputGrant) is tested on its own first; then a real ``zmq_node_agent.py``
is driven by hand through a raw DEALER (testing.wire_client), the way a client in another
language would talk to it (docs/agent-protocol.md, "Input").
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cluster_runner_simulation.agent_input import InputGrant, InputRefused
from cluster_runner_simulation.agent_protocol import DATA_CHUNK_BYTES, INPUT_WINDOW_BYTES
from cluster_runner_simulation.agent_protocol import DataCredit
from cluster_runner_simulation.testing import LocalAgents
from cluster_runner_simulation.testing.wire_client import Ctx, WireClient, header, run_header

MiB = 1024 * 1024
PIPE_ROOM_BYTES = 1 * MiB  # the most a pipe (enlarged or not) takes before its reader reads


# --- InputGrant, without sockets ----------------------------------------------------------


def test_grant_opens_one_window_and_regrants_what_was_written() -> None:
    sent: list[int] = []
    grant = InputGrant("r", lambda credit: sent.append(credit.nbytes), window=100)
    grant.open()
    grant.take(60, eof=False)
    grant.take(40, eof=False)
    with pytest.raises(InputRefused, match="beyond the 100 bytes granted"):
        grant.take(1, eof=False)
    grant.written(30)
    grant.take(30, eof=False)
    assert sent == [100, 30] and grant.granted - grant.consumed == 100


def test_nothing_is_granted_after_eof_and_input_after_it_is_refused() -> None:
    sent: list[DataCredit] = []
    grant = InputGrant("r", sent.append, window=10)
    grant.open()
    grant.take(5, eof=True)
    grant.written(5)
    assert [c.nbytes for c in sent] == [10]
    with pytest.raises(InputRefused, match="after its end"):
        grant.take(0, eof=False)


# --- A real agent ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent() -> Iterator[LocalAgents]:
    with LocalAgents(1, concurrency=1) as started:
        yield started


def data(msg_id: str, eof: bool = False) -> dict[str, Any]:
    return header("data", msg_id, eof=eof)


def send_input(client: WireClient, msg_id: str, size: int) -> None:
    """``size`` zero bytes in chunks that fit a frame (larger frames drop the connection)."""
    while size > 0:
        chunk = min(size, DATA_CHUNK_BYTES)
        client.send(data(msg_id), bytes(chunk))
        size -= chunk


def first_of(client: WireClient, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        reply, _ = client.receive(max(0.01, deadline - time.monotonic()))
        if reply["type"] == kind:
            return reply
        assert reply["type"] not in ("exit", "error"), reply


def test_stdin_flows_in_and_eof_ends_it(ctx: Ctx, agent: LocalAgents) -> None:
    client = WireClient(ctx, agent)
    client.send(run_header("cat1", "cat", stdin=True))
    credit = first_of(client, "data_credit")
    assert credit["bytes"] == INPUT_WINDOW_BYTES
    client.send(data("cat1"), b"hello ")
    client.send(data("cat1", eof=True), b"world")
    out = bytearray()
    while True:
        reply, body = client.receive()
        if reply["type"] == "output":
            out += body or b""
        if reply["type"] == "exit":
            break
    assert out == b"hello world" and reply["exit_status"] == 0
    client.close()


def test_input_for_unknown_ids_and_runs_without_stdin_is_refused(
    ctx: Ctx, agent: LocalAgents
) -> None:
    client = WireClient(ctx, agent)
    client.send(data("ghost"), b"x")
    reply = client.until_end()
    assert (reply["id"], reply["code"]) == ("ghost", "unknown_id")
    client.send(run_header("nostdin", "sleep 0.5"))
    client.send(data("nostdin"), b"x")
    reply = client.until_end()
    assert (reply["type"], reply["code"]) == ("error", "bad_request")
    assert "stdin" in reply["message"]
    assert client.until_end()["type"] == "exit"  # the run itself goes on
    client.send(header("data", "body-less"))
    assert client.until_end()["code"] == "bad_request"  # a data message needs its body frame
    client.close()


def test_input_beyond_the_grant_ends_the_run(ctx: Ctx, agent: LocalAgents) -> None:
    client = WireClient(ctx, agent)
    client.send(run_header("greedy", "sleep 30", stdin=True))
    granted = first_of(client, "data_credit")["bytes"]
    send_input(client, "greedy", granted + PIPE_ROOM_BYTES + 1)
    replies = []
    while not replies or replies[-1]["type"] != "exit":
        replies.append(client.receive()[0])
    errors = [r for r in replies if r["type"] == "error"]
    assert errors and "beyond the" in errors[0]["message"], replies
    assert replies[-1]["cancelled"] is True
    client.close()


def test_nothing_is_granted_before_the_command_starts(ctx: Ctx, agent: LocalAgents) -> None:
    """With the only slot busy, a queued stdin run gets no credit (nothing can pile up)."""
    client = WireClient(ctx, agent)
    client.send(run_header("busy", "sleep 1"))
    client.send(run_header("queued", "cat", stdin=True))
    order = []
    while not order or order[-1] != ("data_credit", "queued"):
        reply, _ = client.receive(timeout=10.0)
        order.append((reply["type"], reply["id"]))
    assert order.index(("exit", "busy")) < order.index(("data_credit", "queued")), order
    client.send(data("queued", eof=True), b"")
    assert client.until_end()["id"] == "queued"
    client.close()


def test_a_command_that_does_not_read_stops_the_grants(ctx: Ctx, agent: LocalAgents) -> None:
    """The agent holds at most one window plus what the pipe takes, whatever is offered."""
    client = WireClient(ctx, agent)
    client.send(run_header("deaf", "sleep 3", stdin=True))
    granted = first_of(client, "data_credit")["bytes"]
    sent = 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        if granted > sent:
            send_input(client, "deaf", granted - sent)
            sent = granted
        if client.sock.poll(100):  # a heartbeat, or more credit
            reply = json.loads(client.sock.recv_multipart()[0])
            if reply["type"] == "data_credit":
                granted += reply["bytes"]
    assert granted <= INPUT_WINDOW_BYTES + PIPE_ROOM_BYTES
    client.send(header("cancel", "deaf"))
    assert client.until_end()["cancelled"] is True
    client.close()
