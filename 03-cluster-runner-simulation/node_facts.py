"""A node's system facts, gathered in one place: by the agent in process, by SSH remotely.

What the facts are and how they are read is stated only here. The ZeroMQ agent imports
``gather`` and answers ``facts`` with it; the SSH executor ships this very file to the
node and runs it with the node's ``python3`` (``remote_command``), which prints the same
JSON object. So the two transports cannot disagree about a node. The wire shape of the
object is ``NodeFacts`` in agent_protocol.py; this file must stay standard-library only
(it runs on nodes where nothing of this repository is installed).

    facts       node_id, hostname, cpu_count, memory_total_bytes (physical RAM: page size
                times physical pages), python_version (of the interpreter that gathered
                them), os_release (PRETTY_NAME of /etc/os-release, else the platform),
                gpus: [{index, name, memory_total_mib}] from nvidia-smi, [] without it

Try it:
    python3 03-cluster-runner-simulation/node_facts.py n1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

NVIDIA_SMI_TIMEOUT_S = 10.0
NVIDIA_SMI_QUERY = ["--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"]
OS_RELEASE = Path("/etc/os-release")


def os_release() -> str:
    try:
        for line in OS_RELEASE.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def memory_total_bytes() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def parse_gpus(csv_text: str) -> list[dict[str, Any]]:
    """nvidia-smi's CSV (index, name, memory.total in MiB) as GPU records; bad lines skipped."""
    gpus: list[dict[str, Any]] = []
    for line in csv_text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 3 and parts[0].isdigit():
            memory = int(parts[2]) if parts[2].isdigit() else 0
            gpus.append({"index": int(parts[0]), "name": parts[1], "memory_total_mib": memory})
    return gpus


def gpus() -> list[dict[str, Any]]:
    """GPUs as nvidia-smi lists them; none when nvidia-smi is absent, fails or hangs."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return []
    try:
        done = subprocess.run(
            [binary, *NVIDIA_SMI_QUERY],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=NVIDIA_SMI_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_gpus(done.stdout)


def gather(node_id: str) -> dict[str, Any]:
    """This machine's facts (blocking: nvidia-smi may take seconds; run it off the loop)."""
    return {
        "node_id": node_id,
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count() or 1,
        "memory_total_bytes": memory_total_bytes(),
        "python_version": platform.python_version(),
        "os_release": os_release(),
        "gpus": gpus(),
    }


def remote_command(node_id: str) -> str:
    """A shell command that runs this file with the node's python3 and prints its facts."""
    source = Path(__file__).read_text()
    return f"python3 -c {shlex.quote(source)} -- {shlex.quote(node_id)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="print this machine's facts as one JSON object",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("node_id", help="the node's name in the cluster, reported as node_id")
    args = parser.parse_args(argv)
    print(json.dumps(gather(args.node_id)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
