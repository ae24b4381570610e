"""Where a scoring process in a deployment's environment starts (see
:mod:`parallelrun.scoring.environments`).

Spawn's start-up gives the new process the worker's ``sys.path``, then imports this module to
find its target: so this module imports nothing but the standard library, and the environment's
site-packages is put back in front before anything else of parallelrun (or its dependencies) is
imported. A package the environment pins, even one parallelrun uses itself, is then the one the
user's script and the scoring process get.
"""

from __future__ import annotations

import sys
from typing import Any


def enter(site_packages: str, *child_args: Any) -> None:
    """The environment's packages first, then :func:`parallelrun.scoring.child.main`."""
    sys.path[:] = [site_packages] + [p for p in sys.path if p != site_packages]
    from parallelrun.scoring import child  # only now: with the environment's packages first

    child.main(*child_args)
