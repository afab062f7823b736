"""``python -m cluster_runner_simulation.testing``: start a loopback sshd and two agents."""

import sys

from cluster_runner_simulation.testing.cluster import main

sys.exit(main())
