"""The loopback harness: a private sshd, N ZeroMQ agents, free ports and a descriptor for them.

For tests, benchmarks and demos only. Production modules (the executors, the agent, the
contexts) never import this package, so it can start processes and pick ports freely.

    sshd.py        LocalSshd: Debian's sshd on 127.0.0.1:<free port>, generated keys
    agents.py      LocalAgents: N ``zmq_node_agent.py serve`` processes with CURVE keys
    cluster.py     local_nodes, write_local_descriptor (as a descriptor), main (by hand)
    processes.py   free_port, stop_process, processes_with, the sync-and-async context base
    wire_client.py WireClient: the agent protocol spoken by hand, for hostile-input tests

    with LocalSshd() as sshd, LocalAgents(4) as agents:
        ssh = sshd.executor("n1")
        zmq_executors = agents.executors()

Try it:
    python -m cluster_runner_simulation.testing    # starts both, prints, Ctrl-C stops
"""

from __future__ import annotations

from cluster_runner_simulation.testing.agents import AgentProcess, LocalAgents
from cluster_runner_simulation.testing.cluster import local_nodes, main, write_local_descriptor
from cluster_runner_simulation.testing.processes import (
    free_port,
    processes_with,
    stop_process,
    unique_sleep,
)
from cluster_runner_simulation.testing.sshd import LocalSshd, openssh_argv, sshd_unavailable_reason

__all__ = [
    "AgentProcess",
    "LocalAgents",
    "LocalSshd",
    "free_port",
    "local_nodes",
    "main",
    "openssh_argv",
    "processes_with",
    "sshd_unavailable_reason",
    "stop_process",
    "unique_sleep",
    "write_local_descriptor",
]
