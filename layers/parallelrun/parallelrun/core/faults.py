"""Fault injection for chaos runs: named points where a worker kills itself on purpose.

``PARALLELRUN_FAULTS="before_run:0.05,after_commit:0.05"`` makes each named point SIGKILL this
process with that probability (``during_run`` arms a timer that kills it while ``run()`` is
going). Unset, as on AWS, a point is one dictionary lookup. The chaos script and tests use it to
show that a worker dying at any line loses and doubles no row (DESIGN invariant 1).
"""

from __future__ import annotations

import os
import random
import signal
import threading

_points = {
    name.strip(): float(chance)
    for name, _, chance in (part.partition(":") for part in os.environ.get("PARALLELRUN_FAULTS", "").split(","))
    if name.strip() and chance
}


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def point(name: str) -> None:
    """Die here with the configured probability."""
    chance = _points.get(name)
    if chance and random.random() < chance:
        if name == "during_run":
            threading.Timer(random.uniform(0.0, 0.05), _die).start()
        else:
            _die()
