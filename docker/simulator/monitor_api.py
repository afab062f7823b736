"""The cluster's own view, read from the monitor's HTTP API (GET /api/cluster).

Both backends publish the monitor on a loopback port of this host, so the same code waits
for a verdict ("worker1 is dead"), for a ready cluster and for the `test` figures.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Final

from cluster_patterns.defaults import LOOPBACK
from cluster_patterns.protocol import NodeState

POLL_INTERVAL_S: Final = 0.05
HTTP_TIMEOUT_S: Final = 2.0


@dataclass(frozen=True)
class MonitorApi:
    port: int
    host: str = LOOPBACK

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def cluster(self) -> dict[str, Any] | None:
        """The /api/cluster document, or None while the monitor does not answer."""
        try:
            with urllib.request.urlopen(f"{self.url}/api/cluster", timeout=HTTP_TIMEOUT_S) as r:
                document: dict[str, Any] = json.loads(r.read())
                return document
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_for_state(self, node: str, state: NodeState, timeout: float) -> float:
        """Seconds until the monitor shows ``node`` in ``state``; raises TimeoutError."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if node_states(self.cluster()).get(node) == state.value:
                return time.monotonic() - start
            time.sleep(POLL_INTERVAL_S)
        seen = node_states(self.cluster()).get(node, "not reported")
        raise TimeoutError(f"{node} not {state.value} after {timeout:.0f} s ({seen})")

    def wait_ready(self, workers: int, timeout: float) -> float:
        """Seconds until the monitor sees the coordinator and ``workers`` alive workers."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            document = self.cluster()
            alive = [s for s in node_states(document).values() if s == NodeState.ALIVE.value]
            if document and document["coordinator"]["seen"] and len(alive) >= workers:
                return time.monotonic() - start
            time.sleep(POLL_INTERVAL_S * 4)
        raise TimeoutError(f"the monitor at {self.url} did not see {workers} alive worker(s)")

    def total(self, key: str) -> int:
        """One of the task totals (submitted, done, failed); 0 while the monitor is silent."""
        document = self.cluster()
        return int(document["totals"][key]) if document else 0


def node_states(document: dict[str, Any] | None) -> dict[str, str]:
    if not document:
        return {}
    return {str(node["id"]): str(node["state"]) for node in document.get("nodes", [])}


def role_view(node: str, document: dict[str, Any] | None) -> str:
    """What the cluster says about a node: a worker's state, or whether the roles answer."""
    if document is None:
        return "unknown (monitor down)"
    if node == "monitor":
        return "serving"
    if node == "coordinator":
        return "seen" if document["coordinator"]["seen"] else "not seen"
    return node_states(document).get(node, "not reported")
