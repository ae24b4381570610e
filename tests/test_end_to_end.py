"""End to end on a moto server with worker processes: files and a ``_READY`` marker in the
input bucket → one collated file, a row per file in input order; ``init()`` once per process."""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import pytest

from parallelrun import aws, jobs
from parallelrun.client import Client
from parallelrun.config import StackConfig
from parallelrun.local.runtime import LocalStack

SCRIPT = """
import os
import parallelrun

def init():
    # The side effect the test reads: one line per init() call, naming the process.
    with open(os.path.join(os.environ["INIT_LOG_DIR"], "init.log"), "a") as log:
        log.write(f"{os.getpid()}\\n")
    global offset
    offset = open(parallelrun.get_model_path("e2e"), "rb").read()

def run(mini_batch):
    return [f"{os.path.basename(p)}: {open(p).read()}:{os.getpid()}" for p in mini_batch]
"""


@pytest.fixture
def local_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PARALLELRUN_HOME", str(tmp_path / "home"))
    (tmp_path / "init").mkdir()
    with LocalStack(workers=2, worker_env={"INIT_LOG_DIR": str(tmp_path / "init"),
                                           "PARALLELRUN_CACHE": str(tmp_path / "cache")}) as stack:
        yield stack


def test_drop_folder_to_collated_output(local_stack: LocalStack, tmp_path: Path):
    client = Client(StackConfig.from_outputs(local_stack.outputs))
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(SCRIPT)
    (tmp_path / "model.bin").write_bytes(pickle.dumps(1))
    client.register_model(tmp_path / "model.bin", "e2e")
    client.create_endpoint("e2e", code, "score.py", "e2e", {"mini_batch_size": "3"})

    files = tmp_path / "files"
    names = [f"{i:03d}.txt" for i in range(60)]
    for name in names:
        (files / name).parent.mkdir(parents=True, exist_ok=True)
        (files / name).write_text(name.upper())
    folder = f"s3://{client.cfg.input_bucket}/e2e/batch1/"
    client.upload_folder(files, folder)
    aws.client("s3").put_object(Bucket=client.cfg.input_bucket, Key="e2e/batch1/_READY", Body=b"")

    deadline = time.time() + 30
    job = None
    while job is None and time.time() < deadline:
        job = client.find_job(folder)
        time.sleep(0.2)
    assert job is not None, "the _READY marker started no job"
    job = client.wait(job.job_id, poll_seconds=0.3, timeout=120)
    assert job.state == jobs.SUCCEEDED, job.reason

    rows = b"".join(client.read_output(job.job_id)).decode().splitlines()
    assert [row.split(": ")[0] for row in rows] == names  # one row per file, in input order
    assert all(row.split(": ")[1].startswith(name.upper()) for row, name in zip(rows, names))
    scoring_pids = {row.rsplit(":", 1)[1] for row in rows}
    init_pids = (tmp_path / "init" / "init.log").read_text().split()
    # init() ran exactly once in each process that scored, and only there (20 mini-batches, 2 processes).
    assert sorted(init_pids) == sorted(scoring_pids)
    assert 1 <= len(init_pids) <= 2
    summary = json.loads(b"".join(client.read_output(job.job_id, "summary.json")))
    assert summary["counts"]["items"] == {"total": 60, "succeeded": 60, "failed": 0}
    assert os.environ.get("AWS_ENDPOINT_URL") == local_stack.endpoint_url
