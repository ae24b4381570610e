"""``parallelrun worker``, the long-running host of the worker core (ECS, EC2, GPUs), on a local
stack: real worker processes attached with ``--local``, as the worker role, fed by the stack's ECS
queue. A heartbeat keeps a mini-batch three times the queue's visibility timeout long from being
delivered twice; SIGTERM mid-job loses and doubles nothing; each process gets its own GPU.

The ECS deployments here are `compute: ecs`: the planner sends their mini-batches to the ECS
queue, which the stack's Lambda-like workers never read, so only ``parallelrun worker`` completes
their jobs, while a Lambda deployment's job runs on the stack's own workers beside them."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from parallelrun import aws
from parallelrun.aws.config import StackConfig
from parallelrun.client import hosting
from parallelrun.client.api import Client
from parallelrun.client.cli import main
from parallelrun.core.errors import InputError
from parallelrun.local.runtime import LocalStack
from parallelrun.pipeline import longrun
from parallelrun.store import endpoints, jobs

# Each run() call leaves lines ("start"/"end", the input) in one file all processes append to; its rows
# name the GPU the script sees and the worker process that ran it (the scoring process's parent).
SCRIPT = """
import os, time

def _note(what, mini_batch):
    if "LONGRUN_LOG" in os.environ:  # the stack's own (Lambda-like) workers have no such variable
        with open(os.environ["LONGRUN_LOG"], "a") as log:
            log.writelines(f"{what} {os.path.basename(p)}\\n" for p in mini_batch)

def run(mini_batch):
    _note("start", mini_batch)
    time.sleep(float(os.environ.get("LONGRUN_SLEEP", 0)))
    _note("end", mini_batch)
    return [f"{os.path.basename(p)} {os.environ.get('CUDA_VISIBLE_DEVICES')} {os.getppid()}" for p in mini_batch]
"""
# Its first attempt at each mini-batch fails.
FLAKY = """
import time

def run(mini_batch, mini_batch_context):
    if mini_batch_context.attempt == 1:
        time.sleep(2)
        raise RuntimeError("first attempt")
    return [f"ok {mini_batch_context.attempt}" for _ in mini_batch]
"""
FAKE_NVIDIA_SMI = """#!/bin/sh
echo "GPU 0: NVIDIA A10G (UUID: GPU-aaaa)"
echo "GPU 1: NVIDIA A10G (UUID: GPU-bbbb)"
echo "  MIG 1g.5gb     Device  0: (UUID: MIG-cccc)"
"""


def _fake_gpus(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    tool = folder / "nvidia-smi"
    tool.write_text(FAKE_NVIDIA_SMI)
    tool.chmod(0o755)
    return folder


# --- without a stack


def test_gpus_come_from_cuda_visible_devices_or_nvidia_smi(tmp_path):
    tools = _fake_gpus(tmp_path / "bin")
    assert longrun.gpu_devices({"PATH": str(tools)}) == ["GPU-aaaa", "GPU-bbbb"]  # a MIG line is no GPU of its own
    assert longrun.gpu_devices({"PATH": str(tools), "CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert longrun.gpu_devices({"PATH": str(tmp_path / "none")}) == []
    assert longrun.process_environments(3, ["a", "b"]) == [{"CUDA_VISIBLE_DEVICES": d} for d in "aba"]
    assert longrun.process_environments(1, ["a", "b"]) == [{}]  # one process may use every GPU
    assert longrun.process_environments(2, []) == [{}, {}]


def test_health_is_every_process_reporting_lately(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(longrun.HEALTH_VAR, str(tmp_path))
    assert main(["worker", "--health"]) == 1
    assert "no worker process has reported" in capsys.readouterr().err
    for number in range(2):
        longrun.Health(tmp_path / f"process-{number}.json", max_age=60).touch()
    assert main(["worker", "--health"]) == 0
    os.utime(tmp_path / "process-1.json", (time.time() - 61, time.time() - 61))
    assert longrun.health_problems(tmp_path) == ["process-1 last reported 61 s ago (more than 60 s)"]
    assert main(["worker", "--health"]) == 1


# --- on a local stack


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory):
    patch = pytest.MonkeyPatch()
    patch.setenv("PARALLELRUN_HOME", str(tmp_path_factory.mktemp("home")))
    with LocalStack(workers=1, stack_name="longrun") as stack:
        yield stack
    patch.undo()


@pytest.fixture(scope="module")
def client(running: LocalStack) -> Client:
    return Client(StackConfig.from_outputs(running.outputs))


@pytest.fixture
def host_env(tmp_path: Path) -> dict[str, str]:
    """The environment `parallelrun worker --local` starts in: the stack's home, two fake GPUs,
    a one-second long poll (a stop waits for the poll in progress), the script's own variables."""
    env = {**os.environ, "PARALLELRUN_HOME": os.environ["PARALLELRUN_HOME"],
           "PATH": f"{_fake_gpus(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}",
           longrun.POLL_VAR: "1", longrun.HEALTH_VAR: str(tmp_path / "health"),
           "LONGRUN_LOG": str(tmp_path / "runs.log"), "PARALLELRUN_CACHE": str(tmp_path / "cache")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _endpoint(client: Client, tmp_path: Path, name: str, ecs: bool = True, script: str = SCRIPT) -> None:
    code = tmp_path / f"code-{name}"
    code.mkdir()
    (code / "score.py").write_text(script)
    (tmp_path / "model.bin").write_bytes(pickle.dumps(1))
    client.register_model(tmp_path / "model.bin", name)
    client.create_endpoint(name, code, "score.py", name, {"mini_batch_size": "1", **({"compute": "ecs"} if ecs else {})})


def _submit(client: Client, name: str, count: int) -> tuple[jobs.JobRecord, list[str]]:
    names = [f"{i:02d}.txt" for i in range(count)]
    for file in names:
        aws.client("s3").put_object(Bucket=client.cfg.input_bucket, Key=f"{name}/in/{file}", Body=file.encode())
    return client.submit(name, f"s3://{client.cfg.input_bucket}/{name}/in/"), names


def _visibility(client: Client, seconds: int) -> None:
    aws.client("sqs").set_queue_attributes(QueueUrl=client.cfg.ecs_queue_url,
                                           Attributes={"VisibilityTimeout": str(seconds)})


def _start(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "parallelrun.client.cli", "worker", "--local", *args], env=env)


@contextlib.contextmanager
def _hosting(env: dict[str, str], *args: str) -> Iterator[subprocess.Popen]:
    """A ``parallelrun worker --local`` for the block, stopped with SIGTERM after it, which it must exit 0 on."""
    host = _start(env, *args)
    try:
        yield host
    finally:
        host.send_signal(signal.SIGTERM)
        assert host.wait(timeout=30) == 0


def _runs(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _until(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, what
        time.sleep(0.1)


def _children(parent: int) -> dict[int, int]:
    """The supervisor's worker processes: pid by process number (from their command line)."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            stat, cmdline = (proc / "stat").read_text(), (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if proc.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"parallelrun.pipeline.longrun" in cmdline:
            found[json.loads(cmdline[cmdline.index(b"parallelrun.pipeline.longrun") + 1])["number"]] = int(proc.name)
    return found


def _environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(pair.decode().split("=", 1) for pair in pairs if b"=" in pair)


def test_a_heartbeat_keeps_a_long_mini_batch_from_a_second_delivery(running, client, tmp_path, host_env, monkeypatch):
    _visibility(client, 2)
    _endpoint(client, tmp_path, "longbeat")
    _endpoint(client, tmp_path, "lambdaside", ecs=False)  # served by the stack's Lambda-like workers meanwhile
    host_env["LONGRUN_SLEEP"] = "6"  # three times the queue's visibility timeout
    job, names = _submit(client, "longbeat", 1)
    beside, beside_names = _submit(client, "lambdaside", 3)
    # Two processes: the idle one would take the message the moment it became visible again.
    host = _start(host_env, "--processes", "2")
    health = Path(host_env[longrun.HEALTH_VAR])
    try:
        _until(lambda: len(_children(host.pid)) == 2, 30, "the worker processes did not start")
        devices = {number: _environ(pid).get("CUDA_VISIBLE_DEVICES") for number, pid in _children(host.pid).items()}
        assert devices == {0: "GPU-aaaa", 1: "GPU-bbbb"}  # one GPU each, from nvidia-smi -L
        monkeypatch.setenv(longrun.HEALTH_VAR, str(health))
        _until(lambda: main(["worker", "--health"]) == 0, 30, "the worker processes never reported healthy")
        _until(lambda: _runs(tmp_path / "runs.log"), 30, "no worker process started the mini-batch")
        time.sleep(2.5)  # into run(): the busy process reports through its heartbeat alone
        assert all(time.time() - path.stat().st_mtime < 1.5 for path in health.glob("process-*.json"))
        done = client.wait(job.job_id, poll_seconds=0.3, timeout=60)
        pids = {str(pid): number for number, pid in _children(host.pid).items()}
        beside = client.wait(beside.job_id, poll_seconds=0.3, timeout=60)
    finally:
        host.send_signal(signal.SIGTERM)
        assert host.wait(timeout=30) == 0
        _visibility(client, 300)
    assert done.state == jobs.SUCCEEDED, done.reason
    assert _runs(tmp_path / "runs.log") == ["start 00.txt", "end 00.txt"]  # run() once: never delivered again
    [record] = client.batches(job.job_id)
    assert record.attempt == 1  # received once
    [row] = b"".join(client.read_output(job.job_id)).decode().splitlines()
    name, device, worker_pid = row.split()
    assert name == "00.txt" and device == devices[pids[worker_pid]]  # the script saw its process's GPU
    # The Lambda deployment's job ran beside it, on the stack's own workers, which never read the ECS queue.
    assert beside.state == jobs.SUCCEEDED, beside.reason
    rows = b"".join(client.read_output(beside.job_id)).decode().splitlines()
    assert [row.split()[0] for row in rows] == beside_names
    assert not {row.split()[2] for row in rows} & set(pids) and {row.split()[1] for row in rows} == {"None"}


def test_sigterm_mid_job_loses_and_doubles_nothing(running, client, tmp_path, host_env):
    # A long visibility timeout: a message not handed back would keep the job waiting past the test's patience.
    _visibility(client, 300)
    _endpoint(client, tmp_path, "longstop")
    host_env["LONGRUN_SLEEP"] = "1.5"
    job, names = _submit(client, "longstop", 6)
    runs = tmp_path / "runs.log"
    # The first host has a grace period shorter than a mini-batch: SIGTERM mid-run hands it back.
    first = _start({**host_env, longrun.GRACE_VAR: "0.2"})
    _until(lambda: len(_runs(runs)) >= 3, 60, "the first host did not start a second mini-batch")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=15) == 0
    handed_back = _runs(runs)[-1]
    assert handed_back.startswith("start") and _runs(runs).count(handed_back.replace("start", "end")) == 0
    # The second host's grace period is long enough: SIGTERM mid-run lets the mini-batch finish.
    second = _start(host_env)
    _until(lambda: _runs(runs)[-1].startswith("start") and len(_runs(runs)) > 3, 60, "the second host took nothing")
    finishing = _runs(runs)[-1]
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0
    assert _runs(runs)[-1] == finishing.replace("start", "end")
    with _hosting(host_env):
        done = client.wait(job.job_id, poll_seconds=0.3, timeout=45)
    assert done.state == jobs.SUCCEEDED, done.reason
    rows = b"".join(client.read_output(job.job_id)).decode().splitlines()
    assert [row.split()[0] for row in rows] == names  # every input once, in order
    lines = _runs(runs)
    assert sorted(line.split()[1] for line in lines if line.startswith("end")) == names  # each run() finished once
    assert handed_back in lines[3:]  # the interrupted mini-batch ran again
    ended = lines.index(finishing.replace("start", "end"))
    assert finishing not in lines[ended:]  # the one that finished at the stop never ran again
    summary = json.loads(b"".join(client.read_output(job.job_id, "summary.json")))
    assert summary["counts"]["items"] == {"total": 6, "succeeded": 6, "failed": 0}


def test_a_failed_attempt_comes_back_after_its_back_off_on_its_own_queue(running, client, tmp_path, host_env):
    # A visibility timeout the test would not wait for: only the worker's back-off brings the message back in time.
    _visibility(client, 300)
    _endpoint(client, tmp_path, "longretry", script=FLAKY)
    job, names = _submit(client, "longretry", 2)
    with _hosting(host_env):
        done = client.wait(job.job_id, poll_seconds=0.3, timeout=45)
    assert done.state == jobs.SUCCEEDED, done.reason
    assert b"".join(client.read_output(job.job_id)).decode().splitlines() == ["ok 2", "ok 2"]
    assert sorted(record.attempt for record in client.batches(job.job_id)) == [2, 2]


def test_endpoint_names_its_deployments_own_queues(running, client, tmp_path):
    _endpoint(client, tmp_path, "longqueues")
    endpoints.record_worker(client.cfg, "longqueues", endpoints.DEFAULT_DEPLOYMENT, client.cfg.ecs_queue_url)
    assert hosting.endpoint_queues(client.cfg, "longqueues") == (client.cfg.ecs_queue_url,)
    endpoints.record_worker(client.cfg, "longqueues", endpoints.DEFAULT_DEPLOYMENT, "")
    with pytest.raises(InputError, match="no deployment with a queue of its own"):
        hosting.endpoint_queues(client.cfg, "longqueues")
    plan = hosting.host_plan(None, True, None, 2)
    assert plan.queue_urls == (client.cfg.ecs_queue_url,) and plan.processes == 2
    # The worker role's own credentials, and the stack worker's environment (its scoring role included).
    assert plan.environment["AWS_ACCESS_KEY_ID"] != os.environ["AWS_ACCESS_KEY_ID"]
    assert plan.environment["PARALLELRUN_TABLE"] == client.cfg.table and plan.environment["PARALLELRUN_SCORING_ROLE_ARN"]
