"""The fault vocabulary (Blockade's): fail, recover, partition, heal, pause, resume, slow,
flaky, fast; written once against the Backend interface, with the monitor's verdict.

After fail/recover/partition/heal of a worker the command waits until the monitor reports
the state a user would expect (dead or alive) and says how long that took; `--no-wait`
returns at once. `slow` and `flaky` use tc netem on the node's interface; a kernel without
netem still gets `flaky`, from an iptables `statistic` DROP chain inside the node's own
network namespace (never on the host), which needs root here.
"""

from __future__ import annotations

import os
from typing import Final

from cluster_patterns.protocol import NodeState
from cluster_simulator.backend import Backend
from cluster_simulator.drop_chain import DropChain
from cluster_simulator.output import SimError, UsageError, say

VERDICT_TIMEOUT_S: Final = 30.0
NETEM_MISSING: Final = "qdisc kind is unknown"
FLAKY_CHAIN: Final = "ZSIM_FLAKY"


class Faults:
    """One fault command (``command`` names it in messages) against one backend."""

    def __init__(self, backend: Backend, command: str, wait: bool) -> None:
        self.backend = backend
        self.command = command
        self.wait = wait

    def _node(self, node: str, workers_only: bool = False) -> str:
        self.backend.require_started()
        return self.backend.topology().check(self.command, node, workers_only)

    # --8<-- [start:verdict]
    def _verdict(self, node: str, state: NodeState) -> None:
        if not self.wait or not node.startswith("worker"):
            return
        try:
            elapsed = self.backend.api().wait_for_state(node, state, VERDICT_TIMEOUT_S)
        except TimeoutError:
            raise SimError(
                f"the monitor did not report {node} {state.value} within {VERDICT_TIMEOUT_S:.0f} s"
            ) from None
        say(f"monitor reports {node} {state.value} after {elapsed:.2f} s")

    # --8<-- [end:verdict]

    # --- kill, cut, freeze -------------------------------------------------------------------

    # --8<-- [start:kill-and-cut]
    def fail(self, node: str) -> None:
        self.backend.kill(self._node(node))
        say(f"{node} killed (SIGKILL)")
        self._verdict(node, NodeState.DEAD)

    def recover(self, node: str) -> None:
        self.backend.restart(self._node(node))
        say(f"{node} restarted")
        self._verdict(node, NodeState.ALIVE)

    def partition(self, node: str) -> None:
        marker = self.backend.partition_marker(self._node(node, workers_only=True))
        if marker.exists():
            raise UsageError(f"{node} is already partitioned")
        self.backend.disconnect(node)
        marker.touch()
        say(f"{node} partitioned from the cluster network")
        self._verdict(node, NodeState.DEAD)

    # --8<-- [end:kill-and-cut]

    def heal(self, node: str) -> None:
        marker = self.backend.partition_marker(self._node(node, workers_only=True))
        if not marker.exists():
            raise UsageError(f"{node} is not partitioned")
        self.backend.reconnect(node)
        marker.unlink()
        say(f"{node} reconnected to the cluster network")
        self._verdict(node, NodeState.ALIVE)

    def pause(self, node: str) -> None:
        self.backend.freeze(self._node(node))
        say(f"{node} paused")

    def resume(self, node: str) -> None:
        self.backend.thaw(self._node(node))
        say(f"{node} resumed")

    # --- shape the node's traffic ------------------------------------------------------------

    def _shaped_node(self, node: str) -> str:
        return self._node(node, workers_only=self.backend.shapes_workers_only)

    # --8<-- [start:slow]
    def slow(self, node: str, ms: int) -> None:
        done = self.backend.traffic_control(
            self._shaped_node(node), "replace", "netem", "delay", f"{ms}ms"
        )
        if done.returncode != 0:
            if NETEM_MISSING in done.stderr + done.stdout:
                raise UsageError(
                    "slow: this kernel has no netem qdisc (sch_netem), so delay cannot be "
                    "added here; flaky still works through iptables"
                )
            raise SimError(f"slow: tc failed: {(done.stderr + done.stdout).strip()}")
        say(f"{node}: +{ms} ms delay on every packet (tc netem; undo: fast {node})")

    # --8<-- [end:slow]

    def flaky(self, node: str, percent: int) -> None:
        done = self.backend.traffic_control(
            self._shaped_node(node), "replace", "netem", "loss", f"{percent}%"
        )
        if done.returncode == 0:
            say(f"{node}: {percent}% packet loss (tc netem; undo: fast {node})")
        elif NETEM_MISSING in done.stderr + done.stdout:
            self._iptables_flaky(node, percent)
            say(
                f"{node}: {percent}% packet loss (iptables statistic: no netem in this kernel; "
                f"undo: fast {node})"
            )
        else:
            raise SimError(f"flaky: tc failed: {(done.stderr + done.stdout).strip()}")

    def fast(self, node: str) -> None:
        self.backend.traffic_control(self._shaped_node(node), "del")
        if os.geteuid() == 0:
            self._iptables_fast(node)
        say(f"{node}: delay and loss removed")

    def _flaky_chain(self, node: str) -> DropChain:
        why = f"{self.command} (this kernel has no netem qdisc: the iptables fallback)"
        return DropChain(FLAKY_CHAIN, self.backend.in_node_netns(node), why)

    def _iptables_flaky(self, node: str, percent: int) -> None:
        """Packet loss without netem: random DROP rules in the node's own namespace."""
        randomly = ["-m", "statistic", "--mode", "random", "--probability", f"{percent / 100:.4f}"]
        self._flaky_chain(node).install(*randomly)

    def _iptables_fast(self, node: str) -> None:
        self._flaky_chain(node).remove()
