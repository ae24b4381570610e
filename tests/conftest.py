"""Shared fixtures: a stack provisioned from template.yaml on in-process moto, and a driver that
plays Lambda's event sources synchronously so integration tests are fast and deterministic."""

from __future__ import annotations

import itertools
import os
import pickle
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_ENDPOINT_URL", None)
# A worker's disk cache of its own (models and code are checked against their SHA-256 on every
# load: a cache left by an earlier run, whose moto had other objects under the same names, fails).
os.environ.setdefault("PARALLELRUN_CACHE", tempfile.mkdtemp(prefix="parallelrun-cache-"))

from moto import mock_aws  # noqa: E402

from parallelrun import aws  # noqa: E402
from parallelrun.aws.config import StackConfig  # noqa: E402
from parallelrun.core.datasets import split_s3_uri
from parallelrun.local import functions, lambdas, provision, queries, queues, serialization, transactions  # noqa: E402
from parallelrun.pipeline import eventsource  # noqa: E402

# Commits and queries cost what their items do, as on DynamoDB, not what the table holds
# (local.transactions, local.queries), and their answers what JSON does (local.serialization);
# a queue's calls what their messages do, not the queue's depth (local.queues).
transactions.install()
queries.install()
serialization.install()
queues.install()
from parallelrun.store import endpoints, jobs, registry  # noqa: E402

_names = itertools.count()


@dataclass
class Stack:
    """The provisioned stack and one call per function, as Lambda would make it."""

    cfg: StackConfig
    spec: provision.ProvisionedStack
    handlers: dict[str, lambdas.Handler]

    def source(self, function: str, queue: str = "") -> functions.QueueSource:
        """The function's event source on the queue whose name contains ``queue``."""
        return next(s for s in self.spec.functions[function].queue_sources if queue in s.queue_url)

    def deliver(self, function: str, max_rounds: int = 1, on_error: Callable | None = None) -> int:
        """Poll ``function``'s queue like its event source; a handler that raises leaves its
        messages in flight, as on Lambda, and they are made visible again at once (the test's
        stand-in for the visibility timeout running out)."""
        return sum(self._deliver(function, source, max_rounds) for source in self.spec.functions[function].queue_sources)

    def _deliver(self, function: str, source: functions.QueueSource, max_rounds: int) -> int:
        sqs = aws.client("sqs")
        received = 0
        for _ in range(max_rounds):
            messages: list[dict[str, Any]] = []

            def invoke(event: dict[str, Any]) -> Any:
                messages.extend(event["Records"])
                try:
                    response = self.handlers[function](event, self.context(function))
                except Exception:
                    for record in messages:
                        sqs.change_message_visibility(QueueUrl=source.queue_url,
                                                      ReceiptHandle=record["receiptHandle"], VisibilityTimeout=0)
                    raise
                failed = {f["itemIdentifier"] for f in (response or {}).get("batchItemFailures", [])}
                for record in messages:
                    if record["messageId"] in failed:
                        sqs.change_message_visibility(QueueUrl=source.queue_url,
                                                      ReceiptHandle=record["receiptHandle"], VisibilityTimeout=0)
                return response

            count = eventsource.poll_once(source.queue_url, source.queue_arn, self.spec.region, source.batch_size,
                                      source.report_batch_item_failures, invoke, wait_seconds=0)
            received += count
            if not count:
                break
        return received

    def context(self, function: str) -> lambdas.LambdaContext:
        """Lambda's context for one invocation, with the function's memory and timeout from the template."""
        spec = self.spec.functions[function]
        return lambdas.LambdaContext(function, spec.memory, spec.timeout, f"unit-{function}")

    def purge(self) -> None:
        """Empty every queue: what an earlier test left behind (dropped stragglers) stays out."""
        sqs = aws.client("sqs")  # PurgeQueue is allowed once a minute: receive and delete instead
        for spec in self.spec.functions.values():
            for source in spec.queue_sources:
                while messages := sqs.receive_message(QueueUrl=source.queue_url, MaxNumberOfMessages=10,
                                                      VisibilityTimeout=30).get("Messages", []):
                    sqs.delete_message_batch(QueueUrl=source.queue_url, Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])

    def plan(self, job_id: str) -> jobs.JobRecord:
        """Deliver planner messages until this job's first window is sent (the queues are shared
        with other tests' leftovers, so one delivery may serve another job)."""
        for _ in range(200):
            job = jobs.get(self.cfg, job_id)
            if job.state != jobs.QUEUED and job.state != jobs.PLANNING and (job.cursor or job.state in jobs.TERMINAL
                                                                            or job.total_batches == 0):
                return job
            self.deliver("PlannerFunction")
        raise AssertionError(f"job {job_id} was not planned")

    def run_until_done(self, job_id: str, rounds: int = 500) -> jobs.JobRecord:
        """Deliver every queue in turn until the job ends."""
        return self.run_until(lambda: jobs.get(self.cfg, job_id), f"job {job_id}", rounds)

    def run_until(self, read: Callable[[], Any], what: str, rounds: int = 500) -> Any:
        """Deliver every queue in turn until what ``read`` gives (a job, a pipeline run) has ended."""
        for _ in range(rounds):
            moved = 0
            for function in ("PlannerFunction", "WorkerFunction", "FailureRecorderFunction", "AggregatorFunction"):
                moved += self.deliver(function, max_rounds=50)
            found = read()
            if found.state in jobs.TERMINAL:
                return found
            if not moved:
                time.sleep(0.05)
        raise AssertionError(f"{what} did not end: {read()}")


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """One stack per test session: tests use their own endpoints, folders and jobs."""
    with mock_aws():
        aws.reset_clients()
        spec = provision.provision(None, stack_name="unit", parameters={"PlannerInterval": "0"})
        os.environ.update(spec.functions["WorkerFunction"].environment)
        handlers = {name: lambdas.load_handler(f.code_dir, f.handler) for name, f in spec.functions.items()}
        yield Stack(StackConfig.from_env(), spec, handlers)
        aws.reset_clients()


@pytest.fixture
def unique() -> str:
    return f"t{next(_names)}"


@pytest.fixture
def make_endpoint(stack: Stack, tmp_path: Path) -> Callable[..., str]:
    """Create an endpoint whose scoring script is ``source``; returns its name."""
    stack.purge()

    def make(source: str, name: str | None = None, settings: dict[str, Any] | None = None) -> str:
        name = name or f"ep-{next(_names)}"
        code = tmp_path / f"code-{name}"
        code.mkdir()
        (code / "score.py").write_text(source)
        model = tmp_path / f"model-{name}.pkl"
        model.write_bytes(pickle.dumps({"offset": 1}))
        registry.register(stack.cfg, model, name)
        endpoints.create(stack.cfg, name, code, "score.py", name, settings)
        return name

    return make


def put_files(cfg: StackConfig, prefix: str, names: list[str], body: Callable[[str], bytes] | None = None) -> None:
    s3 = aws.client("s3")
    for name in names:
        s3.put_object(Bucket=cfg.input_bucket, Key=prefix + name, Body=(body or (lambda n: n.encode()))(name))


def read_output(cfg: StackConfig, job: jobs.JobRecord, name: str | None = None) -> str:
    bucket, key = split_s3_uri(job.output_uri + (name or job.settings.output_file_name))
    return aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()


def marker_event(bucket: str, key: str, sequencer: str) -> dict[str, Any]:
    """The event S3 gives the planner for one uploaded marker (its key URL-encoded, as S3 does)."""
    return {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": urllib.parse.quote_plus(key), "size": 0, "sequencer": sequencer}},
    }]}
