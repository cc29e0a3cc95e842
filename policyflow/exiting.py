"""A bound on how long a process may take to exit once its work is done.

Prefect drains its event and log queues when the interpreter exits (``threading._register_atexit``),
and that drain waits without a bound. A ``policyflow watch`` stopped by SIGTERM once waited there for
good: the signal, turned into ``TerminationSignal`` by a chain's flow run, had landed inside one of the
event client's socket writes, and the queue never finished (seen with ``py-spy dump``: the main thread
in ``threading._shutdown`` → ``_QueueServiceBase.drain``, an hour after the stop).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading


def exit_within(seconds: float, code: int) -> threading.Timer:
    """Exit with ``code`` in ``seconds`` unless the process has ended by then: what is still being
    drained at exit gets that long, and a drain that hangs no longer keeps the process alive."""

    def give_up() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing to save
                stream.flush()
        os._exit(code)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    return timer
