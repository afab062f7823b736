"""A byte relay between a TCP port and a Unix socket, for the local backend's partitions.

The local backend (as root) runs each worker in its own network namespace,
wired by a veth pair to a "hub" namespace; addresses exist only inside those namespaces. A
Unix socket is a file, so it crosses namespaces; two of these relays carry the workers' TCP
stream from the hub to the coordinator, which stays on the host's 127.0.0.1:

    worker (ns w1) --veth--> [tcp-to-unix relay in hub ns] --unix--> [unix-to-tcp relay] --> coord

Cutting a veth (`ip link set ... down`) then partitions exactly one worker, for real: its
packets are dropped, nothing is reset, and the coordinator must notice the silence.

Run (the local backend does this for you; see netns.py):
    python -m cluster_simulator.relay unix-to-tcp --listen /tmp/c.sock --to 127.0.0.1:5570
    ip netns exec HUB python -m cluster_simulator.relay tcp-to-unix \
        --listen 0.0.0.0:5570 --to /tmp/c.sock
Stdlib only. SIGTERM/Ctrl-C exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys

CHUNK_BYTES = 64 * 1024


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes one way until EOF or an error, then close the far side."""
    try:
        while data := await reader.read(CHUNK_BYTES):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


def split_host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def serve(mode: str, listen: str, target: str) -> None:
    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if mode == "unix-to-tcp":
                host, port = split_host_port(target)
                far_reader, far_writer = await asyncio.open_connection(host, port)
            else:
                far_reader, far_writer = await asyncio.open_unix_connection(target)
        except OSError:
            writer.close()  # the far end is down: refuse, the peer will retry
            return
        try:
            await asyncio.gather(pump(reader, far_writer), pump(far_reader, writer))
        except asyncio.CancelledError:
            # The relay is stopping (SIGTERM): the pumps have closed both sockets. Ending the
            # handler normally keeps asyncio from logging a traceback for every connection.
            return

    if mode == "unix-to-tcp":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen)
        server = await asyncio.start_unix_server(on_connect, path=listen)
    else:
        host, port = split_host_port(listen)
        server = await asyncio.start_server(on_connect, host, port, reuse_address=True)
    print(f"relay ready: {mode} {listen} -> {target}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Relay bytes between TCP and a Unix socket.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "mode", choices=["unix-to-tcp", "tcp-to-unix"], help="which side listens on what"
    )
    parser.add_argument("--listen", required=True, help="socket path or HOST:PORT to listen on")
    parser.add_argument("--to", required=True, help="HOST:PORT or socket path to forward to")
    args = parser.parse_args()
    asyncio.run(serve(args.mode, args.listen, args.to))
    return 0


if __name__ == "__main__":
    sys.exit(main())
