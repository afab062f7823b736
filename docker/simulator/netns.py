"""The local backend's network: one namespace per worker, joined to a hub, as root only.

Every worker gets its own network namespace ``zsim-TAG-workerN``, joined by a veth pair to a
hub namespace ``zsim-TAG-hub`` (10.77.N.2 on the worker's side, 10.77.N.1 on the hub's).
Addresses exist only inside these namespaces; the host's interfaces are untouched. The
coordinator stays on the host's 127.0.0.1, so two relays (``cluster_simulator.relay``) carry
the workers' TCP stream through a Unix socket, which is a file and so crosses namespaces:

    worker (ns) --veth--> relay tcp-to-unix (hub ns) --unix socket--> relay unix-to-tcp --> coord

Setting the hub's end of a veth down partitions exactly one worker, for real: its packets
are dropped, nothing is reset, and the coordinator must notice the silence.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final

from cluster_simulator.output import SimError

PREFIX: Final = "zsim"
WORKERS_NET: Final = "10.77.0.0/16"  # every worker's /24 and the hub's ends


def ip(*args: str) -> None:
    """`ip ARGS`; a failure is a SimError quoting ip's message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SimError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


def namespaces_possible() -> bool:
    """Root, the ip tool, and a kernel that lists network namespaces."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True)
    return probe.returncode == 0


class Network:
    """The names and the plumbing of one project's namespaces."""

    def __init__(self, project: str) -> None:
        # Interface names have 15 characters at most: short, unique per project, ours.
        self.tag = hashlib.md5(project.encode()).hexdigest()[:6]
        self.hub = f"{PREFIX}-{self.tag}-hub"
        # Unix socket paths must fit in 108 bytes, so this one lives in /tmp.
        self.relay_socket = Path(tempfile.gettempdir()) / f"{PREFIX}-{self.tag}-coordinator.sock"

    def namespace(self, node: str) -> str:
        return f"{PREFIX}-{self.tag}-{node}"

    def _index(self, node: str) -> int:
        return int(node.removeprefix("worker"))

    def hub_link(self, node: str) -> str:
        return f"zs{self.tag}w{self._index(node)}b"

    def node_link(self, node: str) -> str:
        return f"zs{self.tag}w{self._index(node)}a"

    def hub_address(self, node: str) -> str:
        """Where the worker in ``node``'s namespace reaches the hub (and so the coordinator)."""
        return f"10.77.{self._index(node)}.1"

    def exec_prefix(self, namespace: str) -> list[str]:
        return ["ip", "netns", "exec", namespace]

    def up(self, workers: list[str]) -> None:
        """The hub and one namespace plus veth pair per worker."""
        ip("netns", "add", self.hub)
        ip("-n", self.hub, "link", "set", "lo", "up")
        for node in workers:
            namespace, index = self.namespace(node), self._index(node)
            ip("netns", "add", namespace)
            ip("-n", namespace, "link", "set", "lo", "up")
            pair = ["type", "veth", "peer", "name", self.hub_link(node), "netns", self.hub]
            ip("link", "add", self.node_link(node), "netns", namespace, *pair)
            ip("-n", self.hub, "addr", "add", f"10.77.{index}.1/24", "dev", self.hub_link(node))
            ip("-n", namespace, "addr", "add", f"10.77.{index}.2/24", "dev", self.node_link(node))
            ip("-n", self.hub, "link", "set", self.hub_link(node), "up")
            ip("-n", namespace, "link", "set", self.node_link(node), "up")

    def route_between_workers(self, workers: list[str]) -> None:
        """Let the workers reach one another through the hub (the MPI job's ranks do).

        The hub forwards between its veths and each worker routes 10.77.0.0/16 to its end;
        a partitioned worker (hub end down) is then cut off from the other workers too.
        """
        done = subprocess.run(
            [*self.exec_prefix(self.hub), "sysctl", "-qw", "net.ipv4.ip_forward=1"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise SimError(f"forwarding in {self.hub} failed: {done.stderr.strip()}")
        for node in workers:
            hub_side = self.hub_address(node)
            ip("-n", self.namespace(node), "route", "replace", WORKERS_NET, "via", hub_side)

    def listening_ports(self, node: str) -> set[int]:
        """The TCP ports something listens on inside ``node``'s namespace."""
        argv = [*self.exec_prefix(self.namespace(node)), "ss", "-Hltn"]
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise SimError(f"`ss -ltn` in {self.namespace(node)} failed: {done.stderr.strip()}")
        ports = set()
        for line in done.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[3].rsplit(":", 1)[-1].isdigit():
                ports.add(int(fields[3].rsplit(":", 1)[-1]))
        return ports

    def worker_address(self, node: str) -> str:
        """The worker's own address, on its side of the veth."""
        return f"10.77.{self._index(node)}.2"

    def set_link(self, node: str, up: bool) -> None:
        """Partition (down) or heal (up) one worker at the hub's end of its veth."""
        ip("-n", self.hub, "link", "set", self.hub_link(node), "up" if up else "down")

    def down(self) -> None:
        """Delete every namespace of this project (their veths go with them)."""
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        ours = f"{PREFIX}-{self.tag}-"
        for line in listing.stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(ours):
                subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        self.relay_socket.unlink(missing_ok=True)
