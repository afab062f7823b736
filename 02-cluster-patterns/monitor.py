"""Cluster monitor: follows the coordinator's status channel and serves it over HTTP.

Connects: SUB  tcp://COORDINATOR:5571  (STATUS every heartbeat interval, NODE_EVENT, TASK_STATS)
Binds:    HTTP http://BIND:5572         (127.0.0.1 unless --bind says otherwise)

    GET /             live dashboard (polls /api/cluster every 500 ms; works offline)
    GET /health       200 while a STATUS arrived within interval*(liveness+1), else 503
    GET /api/cluster  JSON: coordinator, nodes, totals, detection/recovery, rates, latency
    GET /metrics      Prometheus text format (see docs/monitoring.md for every metric)

Run it next to a coordinator:
    python 02-cluster-patterns/coordinator.py
    python 02-cluster-patterns/monitor.py --coordinator 127.0.0.1
    curl -s http://127.0.0.1:5572/api/cluster ; open http://127.0.0.1:5572/
With a CURVE coordinator (``--keys DIR`` on both; see cluster_keys.py):
    python 02-cluster-patterns/monitor.py --coordinator 10.0.0.5 --keys /tmp/keys

The pieces: status_follower.py (the SUB socket and the routing of each message),
cluster_view.py (the state), cluster_metrics.py (Prometheus), monitor_web.py (aiohttp).
One asyncio loop runs both sockets. Anything on the SUB socket that the codec rejects is
counted (cluster_monitor_bad_messages_total), logged at most once per 5 s, and dropped: a
peer's garbage never takes the monitor down. Exit codes: 0 after Ctrl-C / SIGTERM; 1 when
the HTTP port cannot be bound or the status address is unusable; 2 bad arguments or key
files; 3 the coordinator refused our CURVE handshake.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import zmq
import zmq.asyncio

from cluster_patterns import defaults
from cluster_patterns.cli_args import add_heartbeat_options, port_number
from cluster_patterns.cluster_keys import (
    ClientKeys,
    add_keys_option,
    keys_or_exit,
    load_client_keys,
)
from cluster_patterns.cluster_metrics import ClusterMetrics
from cluster_patterns.cluster_view import ClusterView
from cluster_patterns.monitor_web import MonitorHttp
from cluster_patterns.status_follower import StatusChannel, StatusFollower, StatusRefused
from cluster_patterns.transport import endpoint, robust_console

FAILED_EXIT: Final = 1
REFUSED_EXIT: Final = 3


@dataclass(frozen=True)
class MonitorConfig:
    """Everything the monitor is told on its command line (argparse only builds this)."""

    coordinator: str = defaults.LOOPBACK
    status_port: int = defaults.STATUS_PORT
    http_port: int = defaults.MONITOR_PORT
    bind: str = defaults.LOOPBACK
    heartbeat_interval_s: float = defaults.HEARTBEAT_INTERVAL_S
    liveness: int = defaults.LIVENESS
    verbose: bool = False
    keys_dir: Path | None = None

    @property
    def status_endpoint(self) -> str:
        return endpoint(self.coordinator, self.status_port)


def parse_args(argv: list[str] | None = None) -> MonitorConfig:
    parser = argparse.ArgumentParser(
        prog="monitor.py",
        description="Follow the coordinator's status channel and serve a dashboard, "
        "JSON and Prometheus metrics over HTTP.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    channel = parser.add_argument_group("the coordinator's status channel (ZeroMQ SUB)")
    channel.add_argument("--coordinator", metavar="HOST", default=defaults.LOOPBACK, help="host")
    channel.add_argument(
        "--status-port", metavar="N", type=port_number, default=defaults.STATUS_PORT, help="port"
    )
    add_heartbeat_options(
        channel,
        interval_help="seconds; used until the first STATUS announces the coordinator's own",
        liveness_help="missed intervals before the coordinator counts as gone (until STATUS says)",
    )
    http = parser.add_argument_group("HTTP: the dashboard, /health, /api/cluster, /metrics")
    http.add_argument(
        "--bind",
        metavar="HOST",
        default=defaults.LOOPBACK,
        help="listen address; 0.0.0.0 serves other machines too",
    )
    http.add_argument(
        "--port",
        dest="http_port",
        metavar="N",
        type=port_number,
        default=defaults.MONITOR_PORT,
        help="port",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log every node event")
    add_keys_option(parser, server=False)
    options = vars(parser.parse_args(argv))  # every dest is a MonitorConfig field
    return MonitorConfig(keys_dir=options.pop("keys"), **options)


def listen_error(config: MonitorConfig, exc: OSError) -> str:
    """One line for an HTTP address that cannot be bound."""
    where = endpoint(config.bind, config.http_port).removeprefix("tcp://")
    if exc.errno == errno.EADDRINUSE:
        why = f"port {config.http_port} is already in use (another monitor? try --port)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = f"{config.bind} is not an address of this machine (see --bind)"
    else:
        why = str(exc.strerror or exc)
    return f"monitor: error: cannot listen on {where}: {why}"


async def serve(config: MonitorConfig, keys: ClientKeys | None = None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    view = ClusterView(config.heartbeat_interval_s, config.liveness)
    metrics = ClusterMetrics(view)
    ctx = zmq.asyncio.Context()
    try:
        follower = StatusFollower(ctx, config.status_endpoint, StatusChannel(view, metrics), keys)
    except zmq.ZMQError as exc:
        print(f"monitor: error: cannot connect to {config.status_endpoint}: {exc}", file=sys.stderr)
        ctx.term()
        return FAILED_EXIT
    http = MonitorHttp(view, metrics)
    try:
        host, port = await http.start(config.bind, config.http_port)
    except OSError as exc:
        print(listen_error(config, exc), file=sys.stderr)
        follower.close()
        ctx.term()
        return FAILED_EXIT

    url = endpoint(host, port).replace("tcp://", "http://", 1)
    print(f"monitor ready: {url}/ (following {config.status_endpoint})", flush=True)
    receiver = asyncio.create_task(follower.run())
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({receiver, stopper}, return_when=asyncio.FIRST_COMPLETED)
    receiver.cancel()
    stopper.cancel()
    await asyncio.gather(receiver, stopper, return_exceptions=True)
    await http.close()
    follower.close()
    ctx.term()
    failure = receiver.exception() if receiver in done else None
    if isinstance(failure, StatusRefused):
        print(f"monitor: error: {failure}", file=sys.stderr)
        return REFUSED_EXIT
    if failure is not None:
        print(f"monitor: error: status channel failed: {failure}", file=sys.stderr)
        return FAILED_EXIT
    print("monitor stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    robust_console()
    config = parse_args(argv)
    keys = keys_or_exit(load_client_keys, config.keys_dir, "monitor")
    logging.basicConfig(
        level=logging.INFO if config.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        return asyncio.run(serve(config, keys))
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down
        return 0


if __name__ == "__main__":
    sys.exit(main())
