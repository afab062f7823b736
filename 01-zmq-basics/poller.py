"""Lesson 8: reading several sockets at once with zmq.Poller.

Binds     the boss thread: PUSH on inproc://tasks, PUB on inproc://control
Connects  the worker (main thread): PULL to inproc://tasks, SUB to inproc://control
Frames    tasks [task number]; control [PAUSE], [RESUME] or [STOP]

recv() blocks, so a loop that reads two sockets in turn sits on one while the other
has news. zmq.Poller waits on many sockets at once, with a timeout, and says which
are ready. The worker takes tasks from one socket and obeys commands from another.
While paused it stops polling the task socket: the tasks wait in their queue rather
than in the worker's memory (the broker in router_dealer.py does the same with its
clients). The timeout tells it that nothing has happened for a while. The 02
coordinator's event loop is built the same way. (inproc is for threads of one
process: threads.py.)

    python 01-zmq-basics/poller.py
"""

import argparse
import sys
import threading
import time

import zmq

IDLE_MS = 200  # the worker notices silence after this long
Context = zmq.Context[zmq.Socket[bytes]]


def boss(ctx: Context) -> None:
    """Sends tasks and commands, with pauses so that the worker's reactions show."""
    with ctx.socket(zmq.PUSH) as tasks, ctx.socket(zmq.PUB) as control:
        tasks.bind("inproc://tasks")
        control.bind("inproc://control")
        time.sleep(0.1)  # the worker's subscription must arrive first (the slow joiner)
        for number in range(1, 7):
            tasks.send(b"%d" % number)
            if number == 2:
                time.sleep(0.1)  # the worker takes tasks 1 and 2
                control.send(b"PAUSE")  # tasks 3-6 will wait in the queue
                time.sleep(0.5)
                control.send(b"RESUME")
        time.sleep(0.5)
        control.send(b"STOP")


def main() -> int:
    argparse.ArgumentParser(
        description="polling two sockets with zmq.Poller (no options)"
    ).parse_args()
    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    threading.Thread(target=boss, args=(ctx,)).start()
    with ctx.socket(zmq.PULL) as tasks, ctx.socket(zmq.SUB) as control:
        tasks.connect("inproc://tasks")  # connecting before the boss binds is fine
        control.connect("inproc://control")
        control.setsockopt(zmq.SUBSCRIBE, b"")
        # --8<-- [start:poll-loop]
        poller = zmq.Poller()
        poller.register(tasks, zmq.POLLIN)
        poller.register(control, zmq.POLLIN)
        done, idle = 0, False
        while True:
            ready = dict(poller.poll(IDLE_MS))  # {socket: events}; {} when it timed out
            if not ready and not idle:
                print(f"[worker] nothing for {IDLE_MS} ms: the poll timed out", flush=True)
            idle = not ready
            if control in ready:
                command = control.recv()
                print(f"[worker] control: {command.decode(errors='replace')}", flush=True)
                if command == b"STOP":
                    break
                # Paused: stop asking about tasks; they stay queued, not in our memory.
                poller.register(tasks, 0 if command == b"PAUSE" else zmq.POLLIN)
            elif tasks in ready:  # commands first: a task waits for the next turn
                done += 1
                print(f"[worker] task {tasks.recv().decode()} done", flush=True)
        # --8<-- [end:poll-loop]
    print(f"[worker] stopped after {done} tasks")
    ctx.term()  # waits for the boss thread to close its sockets
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
