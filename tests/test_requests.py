"""What a mini-batch costs in AWS requests (issue 12: at most its inputs + 4), counted where AWS
would count them: at the local stack's server, for everything the stack's functions and Lambda's
event sources send over a whole files job (planner, workers, aggregator, failure recorder), divided
by its mini-batches. Not a timed test: the count does not depend on the machine's speed."""

from __future__ import annotations

import collections
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from parallelrun import aws
from parallelrun.aws.config import StackConfig
from parallelrun.client.api import Client
from parallelrun.core import usage
from parallelrun.local.runtime import LocalStack
from parallelrun.store import jobs

SIZES, PER_BATCH, INVOCATION = (100, 500), 10, 10
# The services AWS bills per request; the local runtime's own stand-ins (EventBridge's clock,
# STS for the scoring process's narrowed credentials, once per process) are not the job's.
BILLED = ("s3", "dynamodb", "sqs")
# run() takes a little time, as a model does: the local server takes a transaction to hold its
# items for as long as one lasts on DynamoDB (local.conflicts), and a script that returns at once
# would have a worker's next commit collide with its own last one, which on AWS has ended.
SCRIPT = """
import os
import time

def init():
    pass

def run(mini_batch):
    time.sleep(0.05)
    return [f"{os.path.basename(p)} {open(p).read()}" for p in mini_batch]
"""


@dataclass
class Counted:
    """One files job and the requests the stack sent for it, by (service, action)."""

    job: jobs.JobRecord
    sent: collections.Counter[tuple[str, str]]
    output: str


def run_counted(stack: LocalStack, client: Client, tmp: Path, count: int) -> Counted:
    files = tmp / f"files-{count}"
    files.mkdir()
    for i in range(count):
        (files / f"{i:04d}.txt").write_text(str(i))
    folder = f"s3://{client.cfg.input_bucket}/counted/{count}/"
    client.upload_folder(files, folder)
    before = stack.server.snapshot_actions()
    # This process's own requests (the marker, waiting for the job) are the user's, not the stack's.
    with usage.invocation("test", None) as mine:
        aws.client("s3").put_object(Bucket=client.cfg.input_bucket, Key=f"counted/{count}/_READY", Body=b"")
        job = None
        while job is None:
            job = client.find_job(folder)
            time.sleep(0.2)
        job = client.wait(job.job_id, poll_seconds=1)
        own = mine.take().requests
    after = stack.server.snapshot_actions()
    sent = collections.Counter({key: after[key] - before.get(key, 0) for key in after if key[0] in BILLED})
    # What this process sent, taken back by service (its usage counts S3 by price class).
    sent[("s3", "(this process)")] -= own.get("s3_put", 0) + own.get("s3_get", 0) + own.get("s3_free", 0)
    sent[("dynamodb", "(this process)")] -= own.get("dynamodb", 0)
    sent[("sqs", "(this process)")] -= own.get("sqs", 0)
    return Counted(job, sent, b"".join(client.read_output(job.job_id)).decode())


@pytest.fixture(scope="module")
def counted(tmp_path_factory: pytest.TempPathFactory) -> list[Counted]:
    """Files jobs of SIZES inputs, PER_BATCH a mini-batch, one after the other on a local stack
    whose workers take INVOCATION messages an invocation (the template's WorkerBatchSize)."""
    tmp = tmp_path_factory.mktemp("requests")
    patch = pytest.MonkeyPatch()
    patch.setenv("PARALLELRUN_HOME", str(tmp_path_factory.mktemp("home")))
    # A stack of its own name: moto's state is the process's, and other tests' stacks keep the default.
    with LocalStack(workers=2, write_state=False, stack_name="counted",
                    parameters={"WorkerBatchSize": str(INVOCATION)},
                    worker_env={"PARALLELRUN_CACHE": str(tmp_path_factory.mktemp("cache"))}) as stack:
        client = Client(StackConfig.from_outputs(stack.outputs))
        (tmp / "code").mkdir()
        (tmp / "code" / "score.py").write_text(SCRIPT)
        (tmp / "model.bin").write_bytes(pickle.dumps(0))
        client.register_model(tmp / "model.bin", "counted")
        client.create_endpoint("counted", tmp / "code", "score.py", "counted",
                               {"mini_batch_size": str(PER_BATCH), "run_invocation_timeout": "5"})
        jobs_run = [run_counted(stack, client, tmp, count) for count in SIZES]
    patch.undo()
    return jobs_run


def per_minibatch(counted: list[Counted]) -> dict[str, float]:
    """Requests per mini-batch, by service and action, over the larger job's extra mini-batches:
    what the job pays once (planning it, collating it, the functions' first downloads) is
    the same in both jobs and drops out, what it pays per mini-batch (or per shard) stays."""
    small, large = counted
    batches = large.job.total_batches - small.job.total_batches
    return {f"{service} {action}": (large.sent[service, action] - small.sent[service, action]) / batches
            for service, action in sorted(set(small.sent) | set(large.sent))}


def _said(breakdown: dict[str, float]) -> str:
    return " ".join(f"{name}={value:.2f}" for name, value in breakdown.items() if value)


def test_the_jobs_are_exact(counted):
    for run, count in zip(counted, SIZES):
        assert run.job.state == jobs.SUCCEEDED and run.job.total_batches == count // PER_BATCH
        assert run.output.splitlines() == [f"{i:04d}.txt {i}" for i in range(count)]


def test_a_mini_batch_costs_at_most_its_inputs_and_four_requests(counted):
    breakdown = per_minibatch(counted)
    assert sum(breakdown.values()) <= PER_BATCH + 4, _said(breakdown)


def test_each_service_stays_within_its_share(counted):
    """A request added back per mini-batch, whichever, breaks one of these (each has less than one
    request of room): S3 is the inputs' GETs, the part's PUT and the aggregator's GET of it;
    DynamoDB the commit's transaction (the rest is per invocation or per shard); SQS what
    Lambda's event source receives and deletes, shared by the invocation's messages."""
    breakdown = per_minibatch(counted)
    share = collections.Counter()
    for name, value in breakdown.items():
        share[name.split()[0]] += value
    assert share["s3"] < PER_BATCH + 2 + 1, _said(breakdown)
    assert share["dynamodb"] < 1 + 1, _said(breakdown)
    assert share["sqs"] < 1, _said(breakdown)
