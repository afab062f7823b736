"""Container health probe: exit 0 when this node's process is up and its socket answers.

Docker's HEALTHCHECK runs it inside each container of docker/docker-compose.yml; it binds
nothing and sends no ZeroMQ traffic. The coordinator sees a ``tcp`` probe as a connection that
closed before its handshake and counts it in ``aborted_handshakes``, not as a bad message (see
docs/monitoring.md). It works the same with or without CURVE (``--keys``).

    tcp        the coordinator: something accepts TCP connections on --port (its ROUTER).
    http       the monitor: GET --url answers 200 (its /health endpoint).
    connected  a worker: this container holds an ESTABLISHED TCP connection to --port
               (its DEALER reached the coordinator), so the process is up AND connected.

Run it by hand:
    python -m cluster_patterns.healthcheck tcp --port 5570
    python -m cluster_patterns.healthcheck http --url http://127.0.0.1:5572/health
    python -m cluster_patterns.healthcheck connected --port 5570
Exit codes: 0 healthy, 1 unhealthy (the reason goes to stderr), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.error
import urllib.request
from typing import Final

import psutil

from cluster_patterns import defaults
from cluster_patterns.cli_args import make_parser, port_number

PROBE_TIMEOUT_S: Final = 2.0
DEFAULT_HEALTH_URL: Final = f"http://{defaults.LOOPBACK}:{defaults.MONITOR_PORT}/health"


class Unhealthy(Exception):
    """The probed process is down or its socket does not answer."""


def probe_tcp(host: str, port: int) -> str:
    """A listener accepts a TCP connection; we close it before any ZMTP greeting."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return f"tcp {host}:{port} accepts connections"
    except OSError as exc:
        raise Unhealthy(f"tcp {host}:{port} does not answer: {exc}") from exc


def probe_http(url: str) -> str:
    """The monitor's health endpoint answers 200 (it says 503 without coordinator status)."""
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:
            return f"{url} answered {response.status}"
    except urllib.error.HTTPError as exc:
        raise Unhealthy(f"{url} answered {exc.code}") from exc
    except OSError as exc:
        raise Unhealthy(f"{url} does not answer: {exc}") from exc


def probe_connected(port: int) -> str:
    """Some process here keeps an established TCP connection to remote ``port``."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_ESTABLISHED and conn.raddr and conn.raddr.port == port:
            return f"connected to {conn.raddr.ip}:{port}"
    raise Unhealthy(f"no established connection to port {port}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = make_parser(description="Docker health probe for cluster nodes.")
    sub = parser.add_subparsers(dest="mode", required=True, help="what to probe")
    shows_defaults = argparse.ArgumentDefaultsHelpFormatter
    tcp = sub.add_parser(
        "tcp", help="a TCP listener answers (coordinator)", formatter_class=shows_defaults
    )
    tcp.add_argument("--host", default=defaults.LOOPBACK, help="host to connect to")
    tcp.add_argument(
        "--port", type=port_number, default=defaults.TASK_PORT, help="port that must accept"
    )
    http = sub.add_parser(
        "http", help="an HTTP endpoint answers 200 (monitor)", formatter_class=shows_defaults
    )
    http.add_argument("--url", default=DEFAULT_HEALTH_URL, help="URL that must answer 200")
    connected = sub.add_parser(
        "connected",
        help="an outgoing TCP connection is up (worker)",
        formatter_class=shows_defaults,
    )
    connected.add_argument(
        "--port",
        type=port_number,
        default=defaults.TASK_PORT,
        help="remote port of the connection that must be established",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.mode == "tcp":
            verdict = probe_tcp(args.host, args.port)
        elif args.mode == "http":
            verdict = probe_http(args.url)
        else:
            verdict = probe_connected(args.port)
    except Unhealthy as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    print(f"healthy: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
