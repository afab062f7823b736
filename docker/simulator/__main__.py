"""`python -m cluster_simulator ARGS`: what docker/simulate-cluster.sh execs.

The wrapper starts this with SIGINT ignored, so a Ctrl-C while Python starts up cannot end
it with a traceback; the first thing here gives Ctrl-C back, and cli.main installs the
handler that the rest of the run lives by (see lifecycle.py).
"""

import signal
import sys


def run() -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        from cluster_simulator.cli import main

        return main(sys.argv[1:])
    except KeyboardInterrupt:  # before cli.main installed its own handler: nothing started
        return 130


if __name__ == "__main__":
    sys.exit(run())
