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
from typing import Final

from cluster_runner_simulation.descriptor import ClusterDescriptor, NodeSpec, render_descriptor
from cluster_runner_simulation.testing.agents import LocalAgents
from cluster_runner_simulation.testing.sshd import LocalSshd

LOCAL_LEAVES: Final = ("leaf-a", "leaf-b")
DEMO_AGENTS: Final = 2


def write_local_descriptor(
    sshd: LocalSshd, agents: LocalAgents, path: Path, name: str = "local"
) -> Path:
    """Describe the loopback cluster (one sshd, N agents) like a real one, in a TOML file.

    Nodes alternate between two leaves (and racks), so pair schedules have pairs.
    """
    nodes = tuple(
        NodeSpec(
            id=agent.node_id,
            host=agent.host,
            zmq_port=agent.port,
            ssh_port=sshd.port,
            ssh_user=sshd.username,
            ssh_key=sshd.client_key_path,
            ssh_known_hosts=sshd.known_hosts,
            curve_keys_dir=agents.keys_dir,
            leaf=LOCAL_LEAVES[index % len(LOCAL_LEAVES)],
            rack=f"rack-{index % len(LOCAL_LEAVES) + 1}",
        )
        for index, agent in enumerate(agents.agents)
    )
    path.write_text(render_descriptor(ClusterDescriptor(name, nodes)))
    return path


def main() -> int:
    """Start an sshd and two agents on loopback, print how to reach them, wait for Ctrl-C."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C
    with contextlib.suppress(KeyboardInterrupt):
        with LocalSshd() as sshd, LocalAgents(DEMO_AGENTS) as agents:
            print(f"sshd: {' '.join(sshd.ssh_argv())} true")
            for agent in agents.agents:
                print(
                    f"agent {agent.node_id}: tcp://{agent.host}:{agent.port} keys {agents.keys_dir}"
                )
            print("Ctrl-C stops them", flush=True)
            while True:
                time.sleep(3600)
    return 0
