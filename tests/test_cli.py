"""The command line as a user types it, against a running local stack."""

from __future__ import annotations

import json
import pickle

import pytest

from parallelrun import aws
from parallelrun.client.cli import main, parser
from parallelrun.core.errors import StackError
from parallelrun.local.runtime import LocalStack

SCRIPT = """
import os
def run(mini_batch):
    return [os.path.basename(p) + ": ok" for p in mini_batch]
"""


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("home")
    patch = pytest.MonkeyPatch()
    patch.setenv("PARALLELRUN_HOME", str(home))
    with LocalStack(workers=1) as stack:
        yield stack
    patch.undo()


def test_every_command_has_help(capsys):
    commands = [[], ["demo"], ["local"], ["local", "up"], ["local", "outputs"], ["models"], ["models", "register"],
                ["models", "list"], ["endpoints"], ["endpoints", "create"], ["endpoints", "list"], ["submit"],
                ["status"], ["wait"], ["jobs"], ["results"], ["cancel"], ["redrive"], ["logs"],
                ["endpoints", "update"], ["endpoints", "show"], ["endpoints", "delete"], ["endpoints", "set-default"],
                ["deployments"], ["deployments", "create"], ["deployments", "list"], ["deployments", "show"],
                ["deployments", "delete"], ["models", "show"], ["models", "archive"]]
    for words in commands:
        with pytest.raises(SystemExit) as exit_info:
            parser().parse_args([*words, "--help"])
        assert exit_info.value.code == 0
        assert "usage: parallelrun" in capsys.readouterr().out


def test_without_a_stack_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PARALLELRUN_HOME", str(tmp_path))
    assert main(["jobs"]) == 1
    err = capsys.readouterr().err
    assert err == "error: no local stack is running: start one with `parallelrun local up`\n"


def test_a_user_session(running, tmp_path, capsys):
    assert main(["local", "outputs"]) == 0
    outputs = json.loads(capsys.readouterr().out)
    assert outputs["EndpointUrl"] == running.endpoint_url and outputs["InputBucketName"]

    (tmp_path / "model.pkl").write_bytes(pickle.dumps(0))
    assert main(["models", "register", str(tmp_path / "model.pkl"), "--name", "cli", "--tag", "team=ml",
                 "--description", "a test model"]) == 0
    assert "registered model cli version" in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    assert "team=ml" in capsys.readouterr().out

    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(SCRIPT)
    assert main(["endpoints", "create", "cli", "--code", str(code), "--entry-script", "score.py",
                 "--model", "cli:1", "--set", "mini_batch_size=2"]) == 0
    capsys.readouterr()
    assert main(["endpoints", "create", "cli", "--code", str(code), "--entry-script", "nope.py",
                 "--model", "cli"]) == 1
    assert "nope.py" in capsys.readouterr().err

    bucket = outputs["InputBucketName"]
    for i in range(5):
        aws.client("s3").put_object(Bucket=bucket, Key=f"cli/in/{i}.png", Body=b"x")
    uri = f"s3://{bucket}/cli/in/"
    assert main(["submit", "--endpoint", "cli", "--input", uri, "--set", "mini_batch_size=zero"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: setting mini_batch_size='zero' is not allowed") and err.count("\n") == 1

    assert main(["submit", "--endpoint", "cli", "--input", uri, "--wait"]) == 0
    out = capsys.readouterr().out
    job_id = out.splitlines()[0]
    assert "state:      SUCCEEDED" in out and "5/5 done" in out

    assert main(["status", job_id, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["items_succeeded"] == 5 and status["planning"]["items"] == 5  # its planning, as data
    assert main(["wait", job_id]) == 0
    capsys.readouterr()
    assert main(["results", job_id, "-o", str(tmp_path / "out.txt")]) == 0
    assert (tmp_path / "out.txt").read_text().splitlines() == [f"{i}.png: ok" for i in range(5)]
    assert main(["results", job_id, "--file", "summary.json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["items"]["succeeded"] == 5
    assert main(["results", job_id, "--file", "summary.json"]) == 0
    cost = json.loads(capsys.readouterr().out)["cost"]
    # worker processes report what Lambda would: an invocation per mini-batch, the template's memory
    assert cost["functions"]["worker"]["invocations"] >= 3 and cost["functions"]["worker"]["memory_mb"] == 1769
    assert cost["requests"]["sqs"] > 0 and cost["usd"]["total"] > 0
    assert main(["report", job_id, "-o", str(tmp_path / "report.html")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'report.html'}"
    page = (tmp_path / "report.html").read_text()
    assert [n for n in range(3) if page.count(f'id="minibatch-{n}"') == 1] == [0, 1, 2]
    assert main(["jobs"]) == 0
    assert job_id in capsys.readouterr().out
    assert main(["deployments", "create", "cli", "blue", "--code", str(code), "--entry-script", "score.py",
                 "--model", "cli", "--default"]) == 0
    assert main(["deployments", "list", "cli"]) == 0
    assert "* blue" in capsys.readouterr().out
    assert main(["endpoints", "set-default", "cli", "default"]) == 0
    assert main(["deployments", "delete", "cli", "default"]) == 1
    assert "is the default" in capsys.readouterr().err
    assert main(["models", "show", "cli:1"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1
    assert main(["status", "no-such-job"]) == 1
    assert "no job 'no-such-job'" in capsys.readouterr().err


def test_local_up_stopped_with_sigterm_stops_its_worker_processes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from parallelrun.local.state import STATE_FILE

    env = {**os.environ, "PARALLELRUN_HOME": str(tmp_path)}
    up = subprocess.Popen([sys.executable, "-c", "import sys; from parallelrun.client.cli import main; "
                           "sys.exit(main(['local', 'up', '--workers', '2']))"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (tmp_path / STATE_FILE).exists() and time.time() < deadline:
            time.sleep(0.2)
        assert (tmp_path / STATE_FILE).exists(), "the local stack did not start"

        def workers() -> list[int]:
            found = []
            for proc in Path("/proc").iterdir():
                try:
                    stat = (proc / "stat").read_text()
                    cmdline = (proc / "cmdline").read_bytes()
                except (OSError, ValueError):
                    continue
                if proc.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == up.pid \
                        and b"parallelrun.local.workerproc" in cmdline:
                    found.append(int(proc.name))
            return found

        started = workers()
        assert len(started) == 2 + 3  # the 2 workers, and a process of its own for each control function
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=30) == 0
        assert not [pid for pid in started if Path(f"/proc/{pid}").exists()
                    and "Z" not in (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:1])]
        assert not (tmp_path / STATE_FILE).exists()  # the next command does not think a stack runs
    finally:
        if up.poll() is None:
            up.kill()


def test_a_second_local_stack_beside_a_running_one_is_refused(running):
    with pytest.raises(StackError, match=f"a local stack is already running at {running.endpoint_url}"):
        LocalStack(workers=1).start()


def test_a_local_stack_that_died_hard_is_not_trusted(tmp_path, monkeypatch, capsys):
    import subprocess
    import sys

    from parallelrun.client.api import Client
    from parallelrun.local import state

    monkeypatch.setenv("PARALLELRUN_HOME", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # what a SIGKILLed `local up` leaves: its state file, naming a process and a server gone
    state.save_state({"endpoint_url": "http://127.0.0.1:9", "region": "us-east-1", "stack_name": "parallelrun",
                      "outputs": {"InputBucketName": "gone"}, "workers": 2, "pid": dead.pid, "logs": ""})
    assert main(["local", "outputs"]) == 1
    err = capsys.readouterr().err
    assert "is no longer running: it was killed or ran out of memory" in err and "gone" not in err
    with pytest.raises(StackError, match="no local stack is running"):
        Client.local()  # the dead stack's file is gone: the next command says plainly that none runs
