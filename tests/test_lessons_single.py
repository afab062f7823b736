"""The one-command lessons of 01-zmq-basics, and proxy.py's roles, run as a user runs them."""

from __future__ import annotations

import re
import signal
import socket

import pytest
import zmq

LESSONS = "01-zmq-basics"

# Each lesson checks what it teaches and exits 1 when it did not happen; the patterns are
# the lines that say it did.
ONE_COMMAND = {
    "bind_connect.py": [
        r"1\. PULL connected to .* nobody is bound there yet",
        r"3\. a second bind on .* fails: Address already in use",
        r"6\. server A bound again; without a new connect\(\) the PULL got 'A after the restart'",
    ],
    "multipart.py": [
        r"the PULL sees a message: False",
        r"got all 3 at once: \[b'job-7', b'', b'\\x00\\xff\\n'\]",
        r"each whole: 0 mixed up",
        r"\d+ were dropped, and 0 arrived incomplete",
    ],
    "poller.py": [
        r"control: PAUSE\n\[worker\] nothing for 200 ms: the poll timed out\n"
        r"\[worker\] control: RESUME",
        r"stopped after 6 tasks",
    ],
    "envelope.py": [
        re.escape("[b'alice', b'', b'hello from alice']"),
        re.escape("['<5 bytes made up by ROUTER>', b'', b'hello from nobody']"),
        re.escape("bob (DEALER) gets [b'', b'reply to bob']"),
        r"message to 'carol' fails: Host unreachable",
    ],
    "socket_types.py": [r"every pair agrees with the Guide's list"],
    "threads.py": [
        r"stage 3 is ready",
        r"request 6 answered by thread \d",
        r"from another context, inproc://workers answers: False",
        r"all threads have stopped",
    ],
    "curve.py": [
        r"alice: b'welcome, alice'",
        r"mallory: no reply, \['HANDSHAKE_FAILED_AUTH'\]",
        r"eve: no reply, \['HANDSHAKE_FAILED_PROTOCOL'\]",
        r"after bind\(\), on tcp://.*\n   eve: b'welcome, eve'",
    ],
}


@pytest.mark.parametrize("lesson", sorted(ONE_COMMAND))
def test_one_command_lesson_shows_what_it_teaches(run, lesson):
    result = run(f"{LESSONS}/{lesson}", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for pattern in ONE_COMMAND[lesson]:
        assert re.search(pattern, result.stdout), f"{pattern!r} not in:\n{result.stdout}"


@pytest.mark.parametrize("lesson", sorted(ONE_COMMAND))
def test_one_command_lesson_rejects_arguments(run, lesson):
    result = run(f"{LESSONS}/{lesson}", "--verbose", timeout=30)
    assert result.returncode == 2 and "usage:" in result.stderr


def test_bind_connect_says_so_when_its_ports_are_taken(run):
    """The lesson has fixed ports (5567, 5568): when they are taken it says so in one line."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past a TIME_WAIT
        try:
            taken.bind(("127.0.0.1", 5567))
            taken.listen()
        except OSError:
            pass  # taken by somebody else already: the lesson must fail all the same
        result = run(f"{LESSONS}/bind_connect.py", timeout=60)
    assert result.returncode == 1, result.stdout
    assert "is another copy of this lesson running?" in result.stderr


def test_proxy_roles_in_three_terminals(spawn, run, free_ports):
    port = str(free_ports(2))
    proxy = spawn(f"{LESSONS}/proxy.py", "proxy", "--port", port)
    proxy.wait_for(r"XSUB port")
    subscriber = spawn(f"{LESSONS}/proxy.py", "subscriber", "alerts", "--port", port)
    subscriber.wait_for(r"SUB connected")
    proxy.wait_for(re.escape(r"upstream: b'\x01alerts', subscribe b'alerts'"))

    result = run(f"{LESSONS}/proxy.py", "publisher", "--port", port, timeout=60)

    assert result.returncode == 0, result.stderr
    subscriber.wait_for(re.escape("got [b'alerts', b'disk full']"))
    assert "status" not in subscriber.stdout()  # filtered at the publisher's side
    subscriber.signal(signal.SIGINT)
    assert subscriber.wait(timeout=10) == 0
    proxy.wait_for(re.escape(r"upstream: b'\x00alerts', unsubscribe b'alerts'"))


def test_proxy_survives_garbage_from_both_sides(spawn, run, free_ports):
    port = free_ports(2)
    proxy = spawn(f"{LESSONS}/proxy.py", "proxy", "--port", str(port))
    proxy.wait_for(r"XSUB port")
    ctx = zmq.Context()
    try:
        for kind, endpoint in ((zmq.PUB, port), (zmq.XSUB, port + 1)):
            rogue = ctx.socket(kind)
            rogue.setsockopt(zmq.LINGER, 500)
            rogue.connect(f"tcp://127.0.0.1:{endpoint}")
            rogue.send_multipart([b"\xff\xfe", b"", b"x" * 1000])
            rogue.send(b"\x07 not a subscription")
            rogue.close()
    finally:
        ctx.term()
    subscriber = spawn(f"{LESSONS}/proxy.py", "subscriber", "--port", str(port))
    subscriber.wait_for(r"SUB connected")
    proxy.wait_for(re.escape(r"upstream: b'\x01', subscribe b''"))
    assert run(f"{LESSONS}/proxy.py", "publisher", "--port", str(port)).returncode == 0
    subscriber.wait_for(re.escape("got [b'status', b'still good']"))
    assert proxy.popen.poll() is None, proxy.output()


def test_proxy_demo(run, free_ports):
    result = run(f"{LESSONS}/proxy.py", "demo", "--port", str(free_ports(2)), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "[subscriber alerts] got [b'alerts', b'disk full']" in result.stdout
    assert result.stdout.count("[subscriber *] got") == 3
