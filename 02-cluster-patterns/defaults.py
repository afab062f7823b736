"""The cluster's deployment defaults, stated once.

Every process, the simulator and the docs take these from here; a flag or an environment
variable overrides them per run. Changing a port here changes it everywhere.

    python -c "from cluster_patterns import defaults; print(defaults.TASK_PORT)"
"""

from __future__ import annotations

from typing import Final

# Ports (the ones the original README fixes, then the 03 daemons next to them).
TASK_PORT: Final = 5570  # coordinator ROUTER: workers and clients
STATUS_PORT: Final = 5571  # coordinator XPUB: STATUS, NODE_EVENT, TASK_STATS
MONITOR_PORT: Final = 5572  # monitor HTTP: dashboard, /health, /api/cluster, /metrics
AGENT_PORT: Final = 5580  # node agent ROUTER (CURVE)
JOURNAL_PORT: Final = 5590  # journal collector ROUTER

# Liveness: a peer silent for HEARTBEAT_INTERVAL_S * LIVENESS is declared dead.
HEARTBEAT_INTERVAL_S: Final = 0.5
LIVENESS: Final = 3
# The heartbeat settings a coordinator may announce (and a worker will adopt): the wire's
# limits (protocol.py), here so that command lines can check them without loading the codec.
MIN_INTERVAL_S: Final = 0.01
MAX_INTERVAL_S: Final = 60.0
MAX_LIVENESS: Final = 100

# Tasks a reference worker runs at once unless --capacity says otherwise.
WORKER_CAPACITY: Final = 8

# Where processes bind and connect unless told otherwise: loopback, never the network.
LOOPBACK: Final = "127.0.0.1"
