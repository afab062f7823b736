"""One node's facts are the same whichever transport asks: node_facts.py is their only source.

The ZeroMQ agent answers ``facts`` by calling node_facts.gather in process; the SSH executor
ships node_facts.py to the node and runs it with the node's python3. Both travel as
agent_protocol.NodeFacts. Here both ask the same machine (a real agent and a real sshd on
loopback) and must agree on every fact.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from dataclasses import replace

import msgspec
import pytest

from cluster_runner_simulation import node_facts
from cluster_runner_simulation.agent_protocol import (
    NodeFacts,
    ProtocolError,
    convert_facts,
    decode_facts,
)
from cluster_runner_simulation.testing import LocalAgents, LocalSshd, sshd_unavailable_reason

NVIDIA_CSV = "0, NVIDIA H100 80GB HBM3, 81559\n1, NVIDIA H100 80GB HBM3, [N/A]\nbad line\n"


def test_the_gathered_facts_are_exactly_the_wire_record() -> None:
    gathered = node_facts.gather("n1")
    assert set(gathered) == set(NodeFacts.__struct_fields__)
    facts = convert_facts(gathered)
    assert facts.node_id == "n1" and facts.cpu_count >= 1 and facts.memory_total_bytes > 0


def test_nvidia_smi_lines_become_gpu_records() -> None:
    assert node_facts.parse_gpus(NVIDIA_CSV) == [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559},
        {"index": 1, "name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 0},
    ]


def test_the_script_a_node_runs_prints_the_same_facts() -> None:
    done = subprocess.run(
        [sys.executable, node_facts.__file__, "n1"], capture_output=True, check=True
    )
    assert msgspec.to_builtins(decode_facts(done.stdout)) == node_facts.gather("n1")


@pytest.mark.parametrize(
    "raw", [b"", b"not json", b"[]", b'{"node_id": "n"}', b'{"cpu_count": true}', b"\xff"]
)
def test_garbage_facts_are_a_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError, match="malformed system facts"):
        decode_facts(raw)


@pytest.mark.skipif(sshd_unavailable_reason() is not None, reason=str(sshd_unavailable_reason()))
async def test_zmq_and_ssh_report_the_same_facts_for_the_same_node() -> None:
    with LocalAgents(1) as agents, LocalSshd() as sshd:
        zmq_executor = agents.executor(0)
        ssh_executor = sshd.executor(zmq_executor.node_id)
        try:
            over_zmq = await zmq_executor.system_facts()
            over_ssh = await ssh_executor.system_facts()
            # The interpreter an SSH session finds as python3 (sshd's PATH, not this shell's).
            remote = await ssh_executor.run(
                "python3 -c 'import platform; print(platform.python_version())'"
            )
        finally:
            await zmq_executor.close()
            await ssh_executor.close()
    # The agent runs under this interpreter, SSH under the node's python3; all else is equal.
    assert over_zmq.python_version == platform.python_version()
    assert over_ssh.python_version == remote.stdout_text.strip()
    assert replace(over_ssh, python_version=over_zmq.python_version) == over_zmq
    print(json.dumps({"zmq": str(over_zmq), "ssh": str(over_ssh)}))
