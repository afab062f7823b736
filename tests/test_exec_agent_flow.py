"""The agent's credit window (agent_flow.py), NodeAgent over a fake socket, and its config.

The real-socket tests (test_exec_agent_hardening.py) show the effect: a stalled client does
not grow the agent. These show the rules: when output stops and resumes, that credit never
drives the count below zero, that a saturated connection's requests are dropped except its
credit, and that a vanished client is forgotten.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from typing import Any

import pytest
import zmq

from cluster_runner_simulation.agent_flow import ConnectionWindow
from cluster_runner_simulation.agent_protocol import (
    CREDIT_BATCH_BYTES,
    PROTOCOL_VERSION,
    Credit,
    FactsRequest,
    PingRequest,
    encode,
)
from cluster_runner_simulation import node_facts
from cluster_runner_simulation.agent_service import (
    IDLE_PROBE_S,
    MAX_FACTS_WAITING,
    AgentConfig,
    NodeAgent,
)
from cluster_runner_simulation.zmq_node_agent import SetupError, build_parser, config_from


class Producer:
    def __init__(self, window: ConnectionWindow, name: str, log: list[str]) -> None:
        self.window, self.name, self.log = window, name, log

    def resume(self) -> None:
        self.log.append(self.name)


def test_output_stops_at_the_window_and_resumes_oldest_first() -> None:
    window = ConnectionWindow(window=100)
    resumed: list[str] = []
    first, second = Producer(window, "first", resumed), Producer(window, "second", resumed)
    window.sent(99, now=0.0)
    assert window.is_open
    window.sent(1, now=0.0)
    assert not window.is_open
    window.wait(first)
    window.wait(second)
    window.credit(1)
    assert resumed == ["first", "second"] and window.waiting == 0


def test_a_resumed_producer_that_fills_the_window_stops_the_others() -> None:
    window = ConnectionWindow(window=100)
    resumed: list[str] = []

    class Greedy(Producer):
        def resume(self) -> None:
            super().resume()
            self.window.sent(50, now=0.0)  # may fill the window again
            if not self.window.is_open:
                self.window.wait(self)

    greedy, patient = Greedy(window, "greedy", resumed), Producer(window, "patient", resumed)
    window.sent(100, now=0.0)
    window.wait(greedy)
    window.wait(patient)
    window.credit(10)
    assert resumed == ["greedy"]
    window.credit(100)  # patient was waiting longer: it goes first now
    assert resumed == ["greedy", "patient", "greedy"]


def test_credit_never_goes_below_zero_and_saturation_needs_twice_the_window() -> None:
    window = ConnectionWindow(window=100)
    window.sent(10, now=0.0)
    window.credit(10**9)
    assert window.in_flight == 0
    window.sent(199, now=0.0)
    assert not window.saturated
    window.sent(1, now=0.0)
    assert window.saturated


def test_a_lost_peer_never_blocks_and_wakes_everyone() -> None:
    window = ConnectionWindow(window=100)
    resumed: list[str] = []
    window.sent(500, now=0.0)
    window.wait(Producer(window, "stuck", resumed))
    window.lost()
    assert resumed == ["stuck"]
    assert window.is_open and not window.saturated
    window.heard_from()
    assert not window.is_open


# --- NodeAgent over a fake socket -----------------------------------------------------------


class FakeRouter:
    """Records what the agent sends; peers in ``unreachable`` get EHOSTUNREACH."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []
        self.unreachable: set[bytes] = set()

    def send_multipart(self, frames: list[bytes], flags: int = 0, copy: bool = True) -> None:
        if frames[0] in self.unreachable:
            raise zmq.ZMQError(zmq.EHOSTUNREACH)
        self.sent.append(frames)

    def getsockopt(self, option: int) -> int:
        assert option == zmq.EVENTS
        return 0  # nothing waiting to be read

    def types_sent(self) -> list[str]:
        return [json.loads(frames[1])["type"] for frames in self.sent]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_agent(router: FakeRouter, clock: FakeClock | None = None) -> NodeAgent:
    sock: Any = router
    config = AgentConfig(
        "fake", insecure=True, concurrency=2, credit_window_bytes=CREDIT_BATCH_BYTES
    )
    return NodeAgent(config, sock, clock=clock or FakeClock())


PEER = b"\x00peer"


def saturate(agent: NodeAgent, peer: bytes = PEER) -> None:
    """Pings from ``peer`` that it never reads the answers of, until its window saturates."""
    ping = encode(PingRequest(id="p"))
    while not agent.window(peer).saturated:
        agent.dispatch(peer, ping)


async def test_a_saturated_connection_gets_no_answers_until_it_credits() -> None:
    router = FakeRouter()
    agent = make_agent(router)
    ping = encode(PingRequest(id="p"))
    saturate(agent)
    answered = len(router.sent)
    agent.dispatch(PEER, ping)
    agent.dispatch(PEER, [b"garbage"])
    assert len(router.sent) == answered  # neither a pong nor an error reply
    assert agent.dropped_requests == 2 and agent.bad_messages == 1
    agent.dispatch(PEER, encode(Credit(nbytes=agent.window(PEER).in_flight)))
    agent.dispatch(PEER, ping)
    assert router.types_sent()[-1] == "pong"
    other = b"\x00other"
    agent.dispatch(other, ping)  # another connection was never affected
    assert router.sent[-1][0] == other


async def test_a_vanished_client_is_forgotten_and_an_idle_one_probed() -> None:
    router = FakeRouter()
    clock = FakeClock()
    agent = make_agent(router, clock)
    agent.dispatch(PEER, encode(PingRequest(id="p")))
    assert agent.windows[PEER].in_flight > 0
    agent.beat()
    assert router.types_sent() == ["pong"]  # not idle long enough for a probe
    clock.now += IDLE_PROBE_S
    agent.beat()
    assert router.types_sent() == ["pong", "heartbeat"]
    router.unreachable.add(PEER)
    clock.now += IDLE_PROBE_S
    agent.beat()  # the probe fails: EHOSTUNREACH
    assert agent.windows[PEER].gone and agent.undeliverable == 1
    agent.beat()
    assert PEER not in agent.windows


async def test_credit_from_an_unknown_connection_is_harmless() -> None:
    router = FakeRouter()
    agent = make_agent(router)
    agent.dispatch(PEER, encode(Credit(nbytes=12345)))
    assert router.sent == [] and PEER not in agent.windows


@pytest.mark.parametrize("nbytes", [0, -1, 2**53 + 1, True, 1.5, "10", None])
async def test_malformed_credit_is_a_bad_request(nbytes: object) -> None:
    router = FakeRouter()
    agent = make_agent(router)
    header = {"v": PROTOCOL_VERSION, "type": "credit", "id": "", "bytes": nbytes}
    agent.dispatch(PEER, [json.dumps(header).encode()])
    reply = json.loads(router.sent[-1][1])
    assert (reply["type"], reply["code"]) == ("error", "bad_request")
    assert "bytes" in reply["message"]


def test_a_window_below_the_credit_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="never reopen"):
        AgentConfig("fake", insecure=True, credit_window_bytes=CREDIT_BATCH_BYTES - 1)


# --- The agent's configuration: argparse only builds it -----------------------------------------


def test_serve_flags_build_a_frozen_config() -> None:
    args = build_parser().parse_args(["serve", "--insecure", "--node-id", "n1", "--port", "0"])
    config = config_from(args)
    assert config == AgentConfig("n1", port=0, insecure=True, verbose=False)
    assert config.host == "127.0.0.1" and config.keys is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["serve"], "--keys DIR is required"),
        (["serve", "--insecure", "--bind", "0.0.0.0"], "loopback only"),
        (["serve", "--insecure", "--bind", "10.1.2.3"], "loopback only"),
    ],
)
def test_a_bad_combination_of_flags_is_a_setup_error(argv: list[str], problem: str) -> None:
    with pytest.raises(SetupError, match=problem):
        config_from(build_parser().parse_args(argv))


@pytest.mark.parametrize("host", ["::1", "[::1]", "127.0.0.2", "localhost"])
def test_insecure_accepts_every_loopback_address(host: str) -> None:
    assert AgentConfig("n1", bind=host, insecure=True).host == host


async def test_a_flood_of_facts_requests_costs_one_gather(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every facts request waiting for the gather in progress gets its answer; past
    MAX_FACTS_WAITING they get "busy" at once instead of queueing without bound."""
    release = threading.Event()
    calls: list[str] = []

    def slow_gather(node_id: str) -> dict[str, Any]:
        calls.append(node_id)
        release.wait(timeout=30)  # nvidia-smi taking its time
        return real_gather(node_id)

    real_gather = node_facts.gather
    monkeypatch.setattr(node_facts, "gather", slow_gather)
    router = FakeRouter()
    agent = make_agent(router)
    flood = MAX_FACTS_WAITING + 100
    for number in range(flood):
        agent.dispatch(b"\x00peer-%d" % number, encode(FactsRequest(id=f"f{number}")))
    await asyncio.sleep(0.1)
    assert calls == ["fake"]
    replies = [json.loads(frames[1]) for frames in router.sent]
    assert [r.get("code") for r in replies] == ["busy"] * 100
    release.set()
    for _ in range(300):
        if len(router.sent) == flood:
            break
        await asyncio.sleep(0.01)
    replies = [json.loads(frames[1]) for frames in router.sent[100:]]
    assert [r["type"] for r in replies] == ["facts_reply"] * MAX_FACTS_WAITING
    assert {r["id"] for r in replies} == {f"f{n}" for n in range(MAX_FACTS_WAITING)}
    agent.dispatch(PEER, encode(FactsRequest(id="later")))  # a new gather for a new request
    for _ in range(300):
        if json.loads(router.sent[-1][1])["id"] == "later":
            break
        await asyncio.sleep(0.01)
    assert calls == ["fake", "fake"]


async def test_a_saturated_connection_gets_no_heartbeats_but_a_probe() -> None:
    """Heartbeats to a client that reads nothing would queue without end, one per second."""
    router = FakeRouter()
    clock = FakeClock()
    agent = make_agent(router, clock)
    saturate(agent)
    agent.running[(PEER, "r1")] = asyncio.get_running_loop().create_future()  # type: ignore
    sent = len(router.sent)
    for _ in range(100):
        agent.beat()
    assert len(router.sent) == sent
    # A probe now and then, so that a client that died is found (EHOSTUNREACH) and forgotten.
    clock.now += IDLE_PROBE_S
    router.unreachable.add(PEER)
    agent.beat()
    assert agent.windows[PEER].gone and agent.undeliverable == 1
    router.unreachable.clear()
    agent.dispatch(PEER, encode(Credit(nbytes=agent.window(PEER).in_flight)))
    agent.beat()
    assert router.types_sent()[-1] == "heartbeat"
