"""cluster_runner's operational context over SSH (asyncssh): ``build_ssh_context``.

Connects one persistent ``AsyncSSHExecutor`` per descriptor node to its sshd
(``host:ssh_port`` as ``ssh_user`` with ``ssh_key``, host keys checked against
``ssh_known_hosts``), gathers each node's system facts through a small python3
script, and journals into the writer it is given (by default the in-process
``FileJournalWriter``, fsync per record, as cluster_runner does today). This is the
baseline, and the rollback target, of ``build_zmq_context``.

Run schedules through it:
    python 03-cluster-runner-simulation/run_schedules.py --local 4 --transport ssh
"""

from __future__ import annotations

from typing import Final

from cluster_runner_simulation.context_common import context_builder
from cluster_runner_simulation.descriptor import NodeSpec

# The executor's own default: an SSH handshake is slower than a ZeroMQ one.
from cluster_runner_simulation.ssh_executor import CONNECT_TIMEOUT_S, AsyncSSHExecutor


def ssh_executor_for(
    node: NodeSpec, connect_timeout: float = CONNECT_TIMEOUT_S
) -> AsyncSSHExecutor:
    """The asyncssh executor of one descriptor node."""
    return AsyncSSHExecutor(
        node.id,
        node.host,
        node.ssh_port,
        username=node.ssh_user,
        client_keys=[str(node.ssh_key)] if node.ssh_key else None,
        known_hosts=str(node.ssh_known_hosts) if node.ssh_known_hosts else None,
        connect_timeout=connect_timeout,
    )


# Raises ContextBuildError naming every node whose sshd could not be reached.
build_ssh_context: Final = context_builder("ssh", ssh_executor_for, CONNECT_TIMEOUT_S)
