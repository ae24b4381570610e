"""The planner's asynchronous invocation (S3 _READY markers): Lambda's retries and on-failure
destination, played locally, and the failure recorder ending the marker's job FAILED."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest

from parallelrun import aws
from parallelrun.local import destinations, functions
from parallelrun.pipeline import markers, planner
from parallelrun.store import jobs
from tests.conftest import marker_event

from .conftest import Stack


def _failure_queue(stack: Stack) -> str:
    url = stack.spec.functions["PlannerFunction"].async_invoke.on_failure_queue_url
    assert url is not None
    return url


def _drain(url: str) -> list[dict[str, Any]]:
    sqs = aws.client("sqs")
    bodies = []
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        bodies += [json.loads(m["Body"]) for m in messages]
        sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
    return bodies


def _job_id(stack: Stack, key: str, sequencer: str) -> str:
    target = markers.marker_job(stack.cfg.input_bucket, key, sequencer)
    assert target is not None
    return target[0]


def test_provision_reads_the_planners_destination(stack: Stack) -> None:
    config = stack.spec.functions["PlannerFunction"].async_invoke
    assert config.maximum_retry_attempts == 2
    assert config.on_failure_queue_url is not None and "PlannerFailureQueue" in config.on_failure_queue_url
    # The failure recorder reads that queue; a function without EventInvokeConfig has Lambda's defaults.
    assert config.on_failure_queue_url in {s.queue_url for s in stack.spec.functions["FailureRecorderFunction"].queue_sources}
    assert stack.spec.functions["AggregatorFunction"].async_invoke == functions.AsyncInvokeConfig(2, None)


def test_a_try_that_succeeds_sends_no_record(stack: Stack) -> None:
    _drain(_failure_queue(stack))
    calls = []

    def flaky(event: dict[str, Any], context: Any) -> None:
        calls.append(context.aws_request_id)
        if len(calls) < 3:
            raise RuntimeError("not yet")

    assert destinations.invoke_async(stack.spec.functions["PlannerFunction"], flaky, {"Records": []})
    assert len(calls) == 3 and len(set(calls)) == 1  # retries keep the request id
    assert _drain(_failure_queue(stack)) == []


@pytest.mark.parametrize("retries", [0, 2])
def test_every_try_failed_sends_lambdas_record(stack: Stack, retries: int) -> None:
    _drain(_failure_queue(stack))
    spec = stack.spec.functions["PlannerFunction"]
    spec = dataclasses.replace(spec, async_invoke=dataclasses.replace(spec.async_invoke, maximum_retry_attempts=retries))
    event = marker_event(stack.cfg.input_bucket, "ep/folder/_READY", "00A1")
    calls = []

    def broken(event: dict[str, Any], context: Any) -> None:
        calls.append(1)
        raise ValueError("bad marker")

    assert not destinations.invoke_async(spec, broken, event)
    assert len(calls) == 1 + retries
    (record,) = _drain(_failure_queue(stack))
    assert record["version"] == "1.0"
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 1 + retries
    assert record["requestContext"]["functionArn"] == spec.function_arn + ":$LATEST"
    assert record["requestPayload"] == event
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"}
    assert record["responsePayload"]["errorType"] == "ValueError"
    assert record["responsePayload"]["errorMessage"] == "bad marker"
    assert any("broken" in line for line in record["responsePayload"]["stackTrace"])


SCRIPT = "def init():\n    pass\n\n\ndef run(mini_batch):\n    return [str(x) for x in mini_batch]\n"


def test_a_planner_failing_on_a_marker_ends_its_job_failed(
    stack: Stack, make_endpoint: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planner creates the job, then fails on every try: the recorder ends it FAILED."""
    endpoint = make_endpoint(SCRIPT)
    key = f"{endpoint}/drop one/_READY"
    aws.client("s3").put_object(Bucket=stack.cfg.input_bucket, Key=f"{endpoint}/drop one/a.txt", Body=b"a")
    aws.client("s3").put_object(Bucket=stack.cfg.input_bucket, Key=key, Body=b"")

    def fail(cfg: Any, job_id: str) -> None:
        raise RuntimeError("planning exploded")

    monkeypatch.setattr(planner, "start_job", fail)
    spec = stack.spec.functions["PlannerFunction"]
    event = marker_event(stack.cfg.input_bucket, key, "00B2")
    assert not destinations.invoke_async(spec, stack.handlers["PlannerFunction"], event)
    job_id = _job_id(stack, key, "00B2")
    assert jobs.get(stack.cfg, job_id).state == jobs.QUEUED  # what the planner left

    monkeypatch.undo()
    job = stack.run_until_done(job_id)
    assert job.state == jobs.FAILED
    assert f"marker s3://{stack.cfg.input_bucket}/{key}" in job.reason
    assert "failed on all 3 tries" in job.reason
    assert "RuntimeError: planning exploded" in job.reason
    assert job_id in {j.job_id for j in jobs.list_jobs(stack.cfg, limit=1000)}


def test_a_marker_whose_job_was_never_created_gets_a_failed_job(stack: Stack, unique: str) -> None:
    stack.purge()
    key = f"{unique}/folder/_READY"
    event = marker_event(stack.cfg.input_bucket, key, "00C3")
    error = MemoryError("out of memory reading the marker")
    record = destinations.failure_record(stack.spec.functions["PlannerFunction"], event, error, "req-1", 3)
    aws.client("sqs").send_message(QueueUrl=_failure_queue(stack), MessageBody=json.dumps(record))

    assert stack.deliver("FailureRecorderFunction") == 1
    job = jobs.get(stack.cfg, _job_id(stack, key, "00C3"))
    assert (job.state, job.source, job.endpoint) == (jobs.FAILED, "drop", unique)
    assert job.input_uri == f"s3://{stack.cfg.input_bucket}/{unique}/folder/"
    assert f"marker s3://{stack.cfg.input_bucket}/{key}: MemoryError: out of memory reading the marker" in job.reason


def test_a_job_that_already_ended_keeps_its_end(stack: Stack, unique: str) -> None:
    stack.purge()
    key = f"{unique}/done/_READY"
    job_id = _job_id(stack, key, "00D4")
    jobs.create(stack.cfg, dataclasses.replace(
        markers.failed_drop_job(job_id, unique, "s3://x/y/", ""), state=jobs.SUCCEEDED))
    event = marker_event(stack.cfg.input_bucket, key, "00D4")
    record = destinations.failure_record(stack.spec.functions["PlannerFunction"], event, RuntimeError("late"), "r", 3)
    aws.client("sqs").send_message(QueueUrl=_failure_queue(stack), MessageBody=json.dumps(record))

    assert stack.deliver("FailureRecorderFunction") == 1
    job = jobs.get(stack.cfg, job_id)
    assert (job.state, job.reason) == (jobs.SUCCEEDED, "")


def test_a_marker_that_aged_out_unrun_gets_a_failed_job(stack: Stack, unique: str) -> None:
    """Throttled until its maximum event age, the planner never ran: the record has no response."""
    stack.purge()
    key = f"{unique}/late/_READY"
    record = destinations.failure_record(stack.spec.functions["PlannerFunction"],
                                         marker_event(stack.cfg.input_bucket, key, "00E5"), RuntimeError(), "r", 0)
    record["requestContext"]["condition"] = "EventAgeExceeded"
    del record["responseContext"], record["responsePayload"]
    aws.client("sqs").send_message(QueueUrl=_failure_queue(stack), MessageBody=json.dumps(record))

    assert stack.deliver("FailureRecorderFunction") == 1
    job = jobs.get(stack.cfg, _job_id(stack, key, "00E5"))
    assert job.state == jobs.FAILED
    assert job.reason.startswith(f"the planner was never run on marker s3://{stack.cfg.input_bucket}/{key}. ")
