"""A whole loopback cluster: one sshd and N agents, described in a TOML file like a real one.

``write_local_descriptor`` writes the descriptor (descriptor.py's format) that run_schedules.py
--local and the tests build their contexts from; ``main`` starts a cluster by hand:

    python -m cluster_runner_simulation.testing        # starts both, prints, Ctrl-C stops
    python -m cluster_runner_simulation.testing --agents 4 --no-sshd --files-roots \
        --descriptor /tmp/cluster.toml                  # for zrun, zcp, zrsh (ZRSH_DESCRIPTOR)
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import time
from collections.abc import Sequence
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cluster_runner_simulation.testing",
        description="Start a loopback cluster (agents, and a private sshd) until Ctrl-C.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--agents", type=int, default=DEMO_AGENTS, help="ZeroMQ agents")
    parser.add_argument("--no-sshd", action="store_true", help="agents only, no sshd")
    parser.add_argument(
        "--files-roots", action="store_true", help="each agent gets its own --files-root (zcp)"
    )
    parser.add_argument(
        "--descriptor", type=Path, default=None, help="write the cluster's descriptor here"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Start agents (and an sshd) on loopback, print how to reach them, wait for Ctrl-C."""
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C
    with contextlib.suppress(KeyboardInterrupt), contextlib.ExitStack() as stack:
        sshd = None if args.no_sshd else stack.enter_context(LocalSshd())
        agents = stack.enter_context(LocalAgents(args.agents, files_roots=args.files_roots))
        if sshd is not None:
            print(f"sshd: {' '.join(sshd.ssh_argv())} true")
        for index, agent in enumerate(agents.agents):
            address = endpoint(agent.host, agent.port)
            root = f" files {agents.files_root(index)}" if args.files_roots else ""
            print(f"agent {agent.node_id}: {address} keys {agents.keys_dir}{root}")
        if args.descriptor is not None:
            write_local_descriptor(sshd, agents, args.descriptor)
            print(f"descriptor: {args.descriptor} (export ZRSH_DESCRIPTOR={args.descriptor})")
        print("ready; Ctrl-C stops them", flush=True)
        while True:
            time.sleep(3600)
    return 0
