"""What every lesson's command line promises, one table per promise, run as a user runs it.

Bad arguments exit 2 with argparse's usage; a port already bound is one clear line and exit
1; a daemon stopped by Ctrl-C (SIGINT) or SIGTERM exits 0 saying "interrupted". None of
them prints a traceback. Each lesson's own file tests what the lesson teaches.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from conftest import assert_exits_with, stop_cleanly

BASICS = "01-zmq-basics"
PUB_SUB, SYNC = f"{BASICS}/pub_sub.py", f"{BASICS}/sync_pub_sub.py"
PUSH_PULL, REQ_REP = f"{BASICS}/push_pull.py", f"{BASICS}/req_rep.py"
ROUTER_DEALER, LABS = f"{BASICS}/router_dealer.py", f"{BASICS}/labs.py"
RELIABILITY = "02-cluster-patterns/reliability"
SIMPLE, PARANOID = f"{RELIABILITY}/simple_pirate.py", f"{RELIABILITY}/paranoid_pirate.py"
MAJORDOMO, BSTAR = f"{RELIABILITY}/majordomo.py", f"{RELIABILITY}/binary_star.py"

BAD_ARGUMENTS = [
    (PUB_SUB, ["broadcast"]),
    (PUB_SUB, ["publisher", "--count", "-1"]),
    (PUB_SUB, ["publisher", "--rate", "fast"]),
    (SYNC, ["subscriber", "--hwm", "-5"]),
    (SYNC, ["publisher", "--subscribers", "0"]),
    (SYNC, ["subscriber", "--port", "65535"]),
    (PUSH_PULL, ["ventilator"]),
    (PUSH_PULL, ["ventilator", "fifty"]),
    (PUSH_PULL, ["ventilator", "0"]),
    (PUSH_PULL, ["ventilator", "5", "--settle-ms", "-1"]),
    (PUSH_PULL, ["worker"]),
    (PUSH_PULL, ["sink", "--port", "65535"]),
    (PUSH_PULL, ["pipeline"]),
    (REQ_REP, ["serve"]),
    (REQ_REP, ["client", "localhost", "notaport"]),
    (REQ_REP, ["client", "localhost", "99999"]),
    (REQ_REP, ["client", "--count", "0"]),
    (REQ_REP, ["server", "--work-ms", "-1"]),
    (ROUTER_DEALER, ["proxy"]),
    (ROUTER_DEALER, ["client", "1", "--count", "0"]),
    (ROUTER_DEALER, ["worker", "1", "--work-ms", "-1"]),
    (ROUTER_DEALER, ["broker", "--port", "99999"]),
    (LABS, ["nosuch"]),
    (LABS, ["check"]),
    (LABS, ["check", "nosuch", LABS]),
    (LABS, ["check", "handshake", "/no/such/file.py"]),
    (LABS, ["basics", "extra"]),
    (SIMPLE, ["broker"]),
    (SIMPLE, ["client", "--count", "0"]),
    (PARANOID, ["queue", "--port", "65535"]),
    (PARANOID, ["worker", "--work-ms", "-5"]),
    (MAJORDOMO, ["worker", "nosuchservice"]),
    (MAJORDOMO, ["client", "echo", "x", "--port", "0"]),
    (BSTAR, ["tertiary"]),
    (BSTAR, ["client", "--port", "65534"]),
]

# (lesson, the first process's arguments, what it prints once bound, the second one's
# arguments, how many consecutive ports the lesson binds from --port)
PORT_IN_USE = [
    (PUB_SUB, ["publisher", "--count", "0", "--rate", "1"], r"PUB bound", ["publisher"], 1),
    (PUSH_PULL, ["sink"], r"PULL bound", ["sink"], 2),
    (REQ_REP, ["server"], r"REP bound", ["server"], 1),
    (ROUTER_DEALER, ["broker"], r"ROUTER on port", ["broker"], 2),
    (SIMPLE, ["queue"], r"\S", ["queue"], 2),
    (PARANOID, ["queue"], r"\S", ["queue"], 2),
    (MAJORDOMO, ["broker"], r"\S", ["broker"], 1),
    (BSTAR, ["primary"], r"\S", ["primary"], 4),
]

# (lesson, the daemon's role, what it prints once it runs, the ports it binds from --port)
DAEMONS = [
    (PUB_SUB, "subscriber", r"topics: all", 1),
    (REQ_REP, "server", r"REP bound", 1),
    (SIMPLE, "queue", r"\S", 4),
    (PARANOID, "worker", r"\S", 4),
    (MAJORDOMO, "broker", r"\S", 4),
    (BSTAR, "backup", r"\S", 4),
]


def case(lesson: str, *words: object) -> str:
    return " ".join([Path(lesson).stem, *(str(w) for w in words)])


@pytest.mark.parametrize(
    "lesson, args", BAD_ARGUMENTS, ids=[case(lesson, *args) for lesson, args in BAD_ARGUMENTS]
)
def test_bad_arguments_exit_2_with_usage(run, lesson, args):
    result = run(lesson, *args, timeout=30)
    assert_exits_with(result, 2, "usage:")


@pytest.mark.parametrize(
    "lesson, first, ready, second, span",
    PORT_IN_USE,
    ids=[case(lesson, *first) for lesson, first, *_ in PORT_IN_USE],
)
def test_port_in_use_is_one_clear_line(spawn, run, free_ports, lesson, first, ready, second, span):
    port = str(free_ports(span))
    spawn(lesson, *first, "--port", port).wait_for(ready)
    result = run(lesson, *second, "--port", port, timeout=30)
    assert_exits_with(result, 1, "Address already in use")


@pytest.mark.parametrize(
    "lesson, role, ready, span", DAEMONS, ids=[case(lesson, role) for lesson, role, *_ in DAEMONS]
)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_daemons_stop_cleanly(spawn, free_ports, lesson, role, ready, span, signum):
    proc = spawn(lesson, role, "--port", str(free_ports(span)))
    proc.wait_for(ready)
    assert "interrupted" in stop_cleanly(proc, signum)
