"""The tests' one bounded wait: poll a probe until it answers, or fail saying what never came.

For waiting on other processes (a gate to queue, a daemon to listen, a log line to appear),
never a speed claim: the deadline only turns a hang into a failure that names what was awaited
and what the probe last said. A wait that can block on the event itself (a pipe read,
``proc.wait(timeout=…)``) should do that instead of polling.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

PAUSE = 0.02  # between probes: short next to any deadline, long enough to leave the cores to the processes awaited


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """``probe()``'s first true value (not None, False, 0 or empty), polled until ``timeout`` seconds have passed.

    Past the deadline, an AssertionError naming ``what`` and the probe's last value; an exception
    from ``probe`` (say, an assert that the awaited process is still alive) ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what} (last: {value!r})")
        time.sleep(PAUSE)
