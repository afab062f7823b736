"""`mpi`: the MPI all-reduce job across the simulated workers, over their agents, no sshd.

The backends share this module; each supplies the nodes and where to run the job:

* docker: every worker container runs a node agent and an sshd. `mpi` stops sshd on every
  worker first (`node-entrypoint sshd stop`) and checks from the coordinator that port 2222
  refuses connections, then runs 03's ``run_mpi.py`` in the coordinator container (which plays
  cluster_runner's host). It asks worker1's agent to run mpirun, whose daemons on the other
  workers start through zrsh and their agents. sshd is started again at the end.
* local: the workers' processes have no agent (the week-2 cluster needs none), so `mpi`
  starts one per worker, in the worker's network namespace as root (and checks that nothing
  but the agent listens there), and stops them at the end.

Either way the table that comes back is allreduce_bench's, shaped like nccl-tests' output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Final

from cluster_simulator.lifecycle import Signals, Undo
from cluster_simulator.output import UsageError, warn

RUN_MPI: Final = PurePath("03-cluster-runner-simulation") / "run_mpi.py"
AGENT: Final = PurePath("03-cluster-runner-simulation") / "zmq_node_agent.py"
SIZE: Final = re.compile(r"^[1-9][0-9]*[KMG]?$")
DEFAULT_MAX_BYTES: Final = "4M"
MAX_RANKS_PER_NODE: Final = 4


@dataclass(frozen=True)
class MpiOptions:
    """`mpi`'s flags: how many workers, ranks on each, the largest message, a JSON copy."""

    nodes: int | None = None  # None: every worker
    ranks_per_node: int = 1
    max_bytes: str = DEFAULT_MAX_BYTES
    json_path: Path | None = None

    def __post_init__(self) -> None:
        if not SIZE.match(self.max_bytes):
            raise UsageError(f"--max-bytes takes a size such as 64K or 4M, not '{self.max_bytes}'")
        if not 1 <= self.ranks_per_node <= MAX_RANKS_PER_NODE:
            raise UsageError(f"--ranks-per-node must be 1-{MAX_RANKS_PER_NODE}")

    def workers(self, every: list[str]) -> list[str]:
        """The workers of the job: the first ``nodes`` (at least two, the job is multi-node)."""
        count = len(every) if self.nodes is None else self.nodes
        if len(every) < 2:
            raise UsageError("mpi needs at least 2 workers: start --workers 2 (or more)")
        if not 2 <= count <= len(every):
            allowed = "2" if len(every) == 2 else f"2-{len(every)}"
            raise UsageError(f"--nodes must be {allowed} (the cluster has {len(every)} workers)")
        return every[:count]


def restore(undo: Undo, signals: Signals) -> None:
    """Undo what `mpi` changed now (sshd, agents), saying so when a signal ended the job."""
    if signals.interrupted and undo.armed and undo.description:
        warn(undo.description)
    undo.run()


def run_mpi_argv(
    options: MpiOptions,
    workers: list[str],
    descriptor: str,
    *,
    launcher: str,
    interfaces: str,
    bench: str | None = None,
    json_path: str | None = None,
) -> list[str]:
    """run_mpi.py's arguments for this job (after the interpreter and the script)."""
    argv = ["--descriptor", descriptor, "--nodes", ",".join(workers)]
    argv += ["--ranks-per-node", str(options.ranks_per_node), "--max-bytes", options.max_bytes]
    argv += ["--launcher", launcher, "--interfaces", interfaces]
    argv.append("--shared-machine")  # the simulated nodes are this machine's
    if bench is not None:
        argv += ["--bench", bench]
    if json_path is not None:
        argv += ["--json", json_path]
    return argv
