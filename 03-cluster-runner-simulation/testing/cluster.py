"""A whole loopback cluster: one sshd and N agents, described in a TOML file like a real one.

``write_local_descriptor`` writes the descriptor (descriptor.py's format) that run_schedules.py
--local and the tests build their contexts from; ``main`` starts a cluster by hand:

    python -m cluster_runner_simulation.testing        # starts both, prints, Ctrl-C stops
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path
from typing import Any, Final

from cluster_patterns.defaults import LOOPBACK
from cluster_patterns.transport import endpoint
from cluster_runner_simulation.descriptor import ClusterDescriptor, NodeSpec, render_descriptor
from cluster_runner_simulation.testing.agents import LocalAgents
from cluster_runner_simulation.testing.sshd import LocalSshd

LOCAL_LEAVES: Final = ("leaf-a", "leaf-b")
DEMO_AGENTS: Final = 2


def local_nodes(
    count: int, sshd: LocalSshd | None, agents: LocalAgents | None
) -> tuple[NodeSpec, ...]:
    """The loopback cluster described like a real one: ``count`` nodes on one sshd and/or
    on ``agents``; nodes alternate between two leaves (and racks), so pair schedules have pairs.
    """
    ids = [a.node_id for a in agents.agents] if agents else [f"node{i}" for i in range(count)]
    nodes = []
    for index, node_id in enumerate(ids[:count]):
        fields: dict[str, Any] = {}
        if sshd is not None:
            fields.update(ssh_port=sshd.port, ssh_user=sshd.username, ssh_key=sshd.client_key_path)
            fields.update(ssh_known_hosts=sshd.known_hosts)
        if agents is not None:
            fields.update(zmq_port=agents.agents[index].port, curve_keys_dir=agents.keys_dir)
        leaf = index % len(LOCAL_LEAVES)
        nodes.append(
            NodeSpec(node_id, LOOPBACK, leaf=LOCAL_LEAVES[leaf], rack=f"rack-{leaf + 1}", **fields)
        )
    return tuple(nodes)


def write_local_descriptor(
    sshd: LocalSshd | None, agents: LocalAgents, path: Path, name: str = "local"
) -> Path:
    """Describe the loopback cluster (N agents, and one sshd unless None) in a TOML file."""
    nodes = local_nodes(len(agents.agents), sshd, agents)
    path.write_text(render_descriptor(ClusterDescriptor(name, nodes)))
    return path


def main() -> int:
    """Start an sshd and two agents on loopback, print how to reach them, wait for Ctrl-C."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C
    with contextlib.suppress(KeyboardInterrupt):
        with LocalSshd() as sshd, LocalAgents(DEMO_AGENTS) as agents:
            print(f"sshd: {' '.join(sshd.ssh_argv())} true")
            for agent in agents.agents:
                address = endpoint(agent.host, agent.port)
                print(f"agent {agent.node_id}: {address} keys {agents.keys_dir}")
            print("Ctrl-C stops them", flush=True)
            while True:
                time.sleep(3600)
    return 0
