"""How a task worker stops: bounded, whatever the Prefect server does meanwhile.

Told to stop (SIGTERM, Ctrl-C), a task worker gives its runs in flight time to finish, then
sends the events and logs Prefect still queues. Left to itself, Prefect waits for those at
interpreter exit with no limit: with a slow or unreachable server a stopping worker hung
there (10 s and more), past a container's grace period. Here both waits share one deadline
(``RELAY_WORKERS_STOP_SECONDS``) and the process then exits: what it could not finish is not
lost, since leases bring unfinished work back to the pool (docs/leases.md).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import NoReturn

log = logging.getLogger(__name__)
POLL_SECONDS = 0.1


def wait_for_runs(running: Callable[[], int], deadline: float) -> int:
    """Wait until ``running()`` is 0 or the ``deadline`` (monotonic) passes; returns the
    runs still in flight."""
    idle = threading.Event()  # never set: its timed wait is an interruptible pause
    while (left := running()) and time.monotonic() < deadline:
        idle.wait(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
    return left


def send_prefect_queues(deadline: float) -> bool:
    """Send what Prefect's client services (events, API logs) still queue, until the
    ``deadline`` (monotonic); False when some were still sending then."""
    from prefect.events.worker import EventsWorker

    # Every Prefect queue service (events, logs) shares one registry of instances, so
    # draining through one class drains them all.
    drained = EventsWorker.drain_all(timeout=max(0.0, deadline - time.monotonic()))
    assert isinstance(drained, tuple)  # called without an event loop: (done, pending)
    return not drained[1]


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` after flushing logs and output, without the
    interpreter's exit handlers (Prefect's unbounded ones among them)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def stop_within(seconds: float, running: Callable[[], int]) -> NoReturn:
    """Stop a task worker within ``seconds``: its runs in flight, then Prefect's queues,
    then exit 0."""
    deadline = time.monotonic() + seconds
    # A second SIGTERM or Ctrl-C (an impatient operator, a supervisor) must not cut this
    # short into the interpreter's exit, where Prefect waits without limit.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, signal.SIG_IGN)
    left = wait_for_runs(running, deadline)
    if left:
        log.warning(
            "%d run(s) still in flight after %.0f s: leaving them to their leases", left, seconds
        )
    elif not send_prefect_queues(deadline):
        log.warning(
            "Prefect's events and logs not sent within %.0f s: exiting without them", seconds
        )
    exit_now(0)
