"""cluster_runner's operational context over ZeroMQ: ``build_zmq_context``.

Connects one ``ZmqNodeExecutor`` (DEALER, CURVE) to each descriptor node's agent
(``zmq_node_agent.py serve``, ROUTER on ``zmq_port``), asks every agent for its
system facts while building (these answer ``system_config(node_id)``), and hands
results to the journal it is given (``ZmqJournalWriter`` or ``FileJournalWriter``).
It mirrors ``build_ssh_context`` so that cluster_runner switches transports in one line:

    if args.transport == "zmq":
        opcon = await build_zmq_context(descriptor, filter_fn, journal)
    else:
        opcon = await build_ssh_context(descriptor, filter_fn, journal)

Run schedules through it:
    python 03-cluster-runner-simulation/run_schedules.py --local 4 --transport zmq
"""

from __future__ import annotations

from typing import Final

from cluster_runner_simulation.context_common import context_builder
from cluster_runner_simulation.descriptor import DescriptorError, NodeSpec

# The executor's own default: how long a node's agent may take to accept a request.
from cluster_runner_simulation.zmq_node_executor import CONNECT_TIMEOUT_S, ZmqNodeExecutor


def zmq_executor_for(node: NodeSpec, connect_timeout: float = CONNECT_TIMEOUT_S) -> ZmqNodeExecutor:
    """The ZeroMQ executor of one descriptor node (CURVE keys from ``curve_keys_dir``)."""
    if node.curve_keys_dir is None:
        raise DescriptorError(f"node {node.id!r}: curve_keys_dir is needed for the zmq transport")
    return ZmqNodeExecutor.from_keys_dir(
        node.id, node.host, node.zmq_port, node.curve_keys_dir, connect_timeout=connect_timeout
    )


# Raises ContextBuildError naming every node whose agent did not answer.
build_zmq_context: Final = context_builder("zmq", zmq_executor_for, CONNECT_TIMEOUT_S)
