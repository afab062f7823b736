"""Is a port the cluster needs already taken, and by whom? Checked before anything starts."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable

import psutil

from cluster_patterns.defaults import LOOPBACK
from cluster_simulator.output import PortTaken


def port_taken(host: str, port: int) -> bool:
    """True if something listens on HOST:PORT: a bind there fails as the node's own would."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def port_holders(port: int) -> list[str]:
    """'pid N (name)' of every process listening on TCP ``port`` that this user may see."""
    try:
        listeners = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return []
    holders = set()
    for conn in listeners:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        if conn.pid is None:
            continue
        try:
            name = psutil.Process(conn.pid).name()
        except psutil.Error:
            name = "exited"
        holders.add(f"pid {conn.pid} ({name})")
    return sorted(holders)


def describe_taken_port(name: str, port: int) -> str:
    holders = port_holders(port)
    if holders:
        holder = ", ".join(holders)
        if "(docker-proxy)" in holder:
            holder += ": a container publishes it, see `docker ps`"
    else:
        holder = "a process this user cannot see (try as root: ss -ltnp)"
    return f"port {port} ({name}) is already in use by {holder}; free it or set {name}=ANOTHER"


def require_free_ports(named_ports: Iterable[tuple[str, int]], host: str = LOOPBACK) -> None:
    """Raise PortTaken (exit 3), one line per taken port, unless every port is free."""
    taken = [
        describe_taken_port(name, port) for name, port in named_ports if port_taken(host, port)
    ]
    if taken:
        raise PortTaken("\n".join(taken))
