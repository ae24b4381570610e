"""The local stack's state file (:mod:`parallelrun.local.state`), without a stack: how another
process finds the running one, and why a dead one's file is not trusted."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from parallelrun.core.errors import StackError
from parallelrun.local import state


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PARALLELRUN_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def listening():
    """A server that answers, as a running stack's moto server does."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def test_no_file_means_no_stack(home):
    assert state.load_state() is None


def test_a_live_stack_is_read_back_and_only_its_own_process_removes_it(home, listening):
    written = {"endpoint_url": listening, "region": "us-east-1", "pid": os.getpid()}
    assert state.save_state(written) == home / state.STATE_FILE
    assert state.load_state() == written
    state.remove_state(os.getpid() + 1)  # another stack's stop leaves this one's file
    assert state.load_state() == written
    state.remove_state(os.getpid())
    assert state.load_state() is None


def test_a_stack_whose_process_is_gone_is_refused_and_forgotten(home, listening):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state.save_state({"endpoint_url": listening, "region": "us-east-1", "pid": dead.pid})
    with pytest.raises(StackError, match="is no longer running"):
        state.load_state()
    assert not (home / state.STATE_FILE).exists()


def test_a_stack_whose_server_does_not_answer_is_refused(home):
    with socket.create_server(("127.0.0.1", 0)) as server:
        closed = f"http://127.0.0.1:{server.getsockname()[1]}"
    state.save_state({"endpoint_url": closed, "region": "us-east-1", "pid": os.getpid()})
    with pytest.raises(StackError, match="is no longer running"):
        state.load_state()
