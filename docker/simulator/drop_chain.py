"""An iptables chain of DROP rules inside one node's network namespace, never on the host.

Two faults use it: `partition` on Swarm (every packet on the task's overlay interface) and
`flaky` on a kernel without netem (a random share of every packet, `-m statistic`). The
chain is hooked into INPUT and OUTPUT; installing it is one `iptables-restore --noflush` in
the namespace, so the rules arrive together and the namespace's own rules are kept;
removing it takes the hooks out first, then empties and deletes the chain, and tolerates a
part that is already gone (a node restarted meanwhile). The namespace is entered with the
backend's prefix (`nsenter -t PID -n`, `ip netns exec NAME`), looked up once per command.
Root is needed on this host.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from cluster_simulator.output import SimError, UsageError


@dataclass(frozen=True)
class DropChain:
    """The chain ``name`` in the namespace that ``enter`` (an argv prefix) runs commands in;
    ``command`` names the simulator command in errors. With ``interface``, only packets
    through that interface pass the chain."""

    name: str
    enter: Sequence[str]
    command: str
    interface: str | None = None

    def install(self, *match: str) -> None:
        """Drop every packet that matches ``match`` (nothing: every packet)."""
        self.remove()
        inbound = ["-i", self.interface] if self.interface else []
        outbound = ["-o", self.interface] if self.interface else []
        rules = [
            "*filter",
            f":{self.name} - [0:0]",
            " ".join(["-A", self.name, *match, "-j", "DROP"]),
            " ".join(["-I", "INPUT", *inbound, "-j", self.name]),
            " ".join(["-I", "OUTPUT", *outbound, "-j", self.name]),
            "COMMIT",
        ]
        self._run(["iptables-restore", "--noflush"], stdin="\n".join(rules) + "\n")

    def remove(self) -> None:
        """Take the chain out, whatever part of it is there."""
        inbound = ["-i", self.interface] if self.interface else []
        outbound = ["-o", self.interface] if self.interface else []
        for rule in (["-D", "INPUT", *inbound], ["-D", "OUTPUT", *outbound]):
            self._run(["iptables", *rule, "-j", self.name], check=False)
        self._run(["iptables", "-F", self.name], check=False)
        self._run(["iptables", "-X", self.name], check=False)

    def _run(self, argv: list[str], stdin: str | None = None, check: bool = True) -> None:
        if os.geteuid() != 0:
            raise UsageError(
                f"{self.command} needs root on this host: it changes the node's own network "
                "namespace with iptables"
            )
        try:
            done = subprocess.run([*self.enter, *argv], input=stdin, capture_output=True, text=True)
        except FileNotFoundError as exc:
            raise SimError(f"{self.command}: {exc.filename} not found (apt-get install iptables)")
        if check and done.returncode != 0:
            raise SimError(f"{self.command}: `{' '.join(argv)}` failed: {done.stderr.strip()}")
