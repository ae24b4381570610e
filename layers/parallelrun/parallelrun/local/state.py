"""The running local stack's state file (``$PARALLELRUN_HOME/local.json``): how the CLI, the SDK
and the tests find the stack ``parallelrun local up`` started, in another process.

Apart from :mod:`parallelrun.local.runtime` so that a client reads it without importing moto.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any

from parallelrun.core.errors import StackError

STATE_FILE = "local.json"


def home() -> Path:
    return Path(os.environ.get("PARALLELRUN_HOME") or Path.home() / ".parallelrun")


def save_state(state: dict[str, Any]) -> Path:
    path = home() / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2))
    return path


def load_state() -> dict[str, Any] | None:
    """The running local stack's state, or None when none runs. A stack that died without
    stopping (SIGKILL, out of memory) leaves its file behind: it is refused (StackError, saying
    so) and removed, so no command trusts a dead stack's outputs."""
    path = home() / STATE_FILE
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    if not _alive(state):
        path.unlink(missing_ok=True)
        raise StackError(f"the local stack at {state.get('endpoint_url')} (process {state.get('pid')}) is no longer "
                         "running: it was killed or ran out of memory; start one with `parallelrun local up`")
    return state


def remove_state(pid: int) -> None:
    """Remove the state file if the stack of process ``pid`` wrote it (not one started since)."""
    path = home() / STATE_FILE
    if path.exists() and json.loads(path.read_text()).get("pid") == pid:
        path.unlink()


def _alive(state: dict[str, Any]) -> bool:
    """Its process exists and its server answers (a process id alone may have been reused)."""
    try:
        os.kill(int(state["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    address = urllib.parse.urlsplit(state["endpoint_url"])
    try:
        socket.create_connection((address.hostname, address.port), timeout=2).close()
    except OSError:
        return False
    return True
