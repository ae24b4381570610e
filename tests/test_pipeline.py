"""The whole path on in-process moto, with Lambda's event sources played synchronously:
rows in input order, exact counts, and no lost or doubled row under duplicate deliveries or a
planner that dies mid-way."""

from __future__ import annotations

import json
from typing import Any

import pytest

from parallelrun import aws
from parallelrun.aws import sqs
from parallelrun.pipeline import submit
from parallelrun.store import jobs
from tests.conftest import marker_event, put_files, read_output

# Each input's body is its own relative name, so a row names its input unambiguously.
ECHO = """
import pickle
import parallelrun

def init():
    global model
    with open(parallelrun.get_model_path(MODEL), "rb") as handle:
        model = pickle.load(handle)

def run(mini_batch):
    return [open(path).read() for path in mini_batch]
"""


def echo(name: str) -> str:
    return ECHO.replace("MODEL", repr(name))


def start(stack: Any, endpoint: str, folder: str, settings: dict[str, Any] | None = None) -> jobs.JobRecord:
    job = submit.prepare(stack.cfg, endpoint, f"s3://{stack.cfg.input_bucket}/{folder}", settings)
    submit.start(stack.cfg, job)
    return job


def parts(stack: Any, job_id: str) -> list[str]:
    listed = aws.client("s3").list_objects_v2(Bucket=stack.cfg.artifacts_bucket, Prefix=f"jobs/{job_id}/parts/")
    return sorted(o["Key"] for o in listed.get("Contents", []))


def test_rows_in_input_order_and_summary_exact(stack, make_endpoint):
    endpoint = "order"
    make_endpoint(echo(endpoint), name=endpoint)
    folder = "order/run1/"
    inputs = [f"b/c/{i}.txt" for i in range(3)] + [f"a/{i:02d}.txt" for i in range(9)] + ["top.txt", "z/last.txt"]
    put_files(stack.cfg, folder, inputs + [".hidden", "a/.tmp/x.txt", "_READY"])
    job = stack.run_until_done(start(stack, endpoint, folder, {"mini_batch_size": "4"}).job_id)

    assert job.state == jobs.SUCCEEDED, job.reason
    assert read_output(stack.cfg, job).splitlines() == sorted(inputs)
    summary = json.loads(read_output(stack.cfg, job, "summary.json"))
    assert summary["state"] == "SUCCEEDED"
    assert summary["counts"]["batches"] == {"total": 4, "succeeded": 4, "failed": 0}
    assert summary["counts"]["items"] == {"total": 14, "succeeded": 14, "failed": 0}
    assert summary["counts"]["rows"] == 14
    assert summary["settings"]["mini_batch_size"] == "4"
    assert read_output(stack.cfg, job, "failures.jsonl") == ""


def test_same_minibatch_twice_changes_nothing(stack, make_endpoint, monkeypatch):
    endpoint = make_endpoint(echo("dup"), name="dup")
    inputs = [f"{i:03d}.txt" for i in range(25)]
    put_files(stack.cfg, "dup/run1/", inputs)
    sent: list[str] = []
    original = sqs.send_ten

    def send_every_batch_twice(queue_url, entries):
        sent.extend(entries.values())
        original(queue_url, entries)
        return original(queue_url, entries)

    monkeypatch.setattr(sqs, "send_ten", send_every_batch_twice)
    job = stack.run_until_done(start(stack, endpoint, "dup/run1/", {"mini_batch_size": "3"}).job_id)
    assert job.state == jobs.SUCCEEDED
    assert (job.items_succeeded, job.batches_succeeded, job.retries) == (25, 9, 0)
    before = (read_output(stack.cfg, job), parts(stack, job.job_id), jobs.get(stack.cfg, job.job_id))
    assert before[0].splitlines() == inputs

    # Late duplicates of every mini-batch and of the aggregation request, after the job ended.
    for body in sent:
        aws.client("sqs").send_message(QueueUrl=stack.cfg.batch_queue_url, MessageBody=body)
    sqs.send(stack.cfg.finalize_queue_url, sqs.AggregationRequest(job.job_id))
    stack.deliver("WorkerFunction", max_rounds=100)
    stack.deliver("AggregatorFunction", max_rounds=5)
    after = (read_output(stack.cfg, job), parts(stack, job.job_id), jobs.get(stack.cfg, job.job_id))
    assert after == before


def test_duplicate_of_a_recorded_batch_while_running_is_dropped(stack, make_endpoint):
    endpoint = make_endpoint(echo("live"), name="live")
    put_files(stack.cfg, "live/r/", [f"{i}.txt" for i in range(4)])
    job = start(stack, endpoint, "live/r/", {"mini_batch_size": "2"})
    stack.plan(job.job_id)
    messages = aws.client("sqs").receive_message(QueueUrl=stack.cfg.batch_queue_url, MaxNumberOfMessages=10,
                                                 VisibilityTimeout=0)["Messages"]
    first = next(m["Body"] for m in messages if json.loads(m["Body"])["batch"] == 0)
    stack.deliver("WorkerFunction", max_rounds=10)
    assert jobs.get(stack.cfg, job.job_id).batches_done == 2
    aws.client("sqs").send_message(QueueUrl=stack.cfg.batch_queue_url, MessageBody=first)
    stack.deliver("WorkerFunction")
    counted = jobs.get(stack.cfg, job.job_id)
    assert (counted.batches_succeeded, counted.items_succeeded) == (2, 4)
    assert len(parts(stack, job.job_id)) == 2
    assert stack.run_until_done(job.job_id).state == jobs.SUCCEEDED


@pytest.mark.parametrize("where", ["after sending, before recording the cursor", "half-way through a window"])
def test_planner_killed_mid_way_resumes(stack, make_endpoint, monkeypatch, where):
    endpoint = make_endpoint(echo(f"plan{len(where)}"), name=f"plan{len(where)}")
    inputs = [f"{i:02d}.txt" for i in range(24)]
    put_files(stack.cfg, f"{endpoint}/r/", inputs)
    calls = {"n": 0}
    if where.startswith("after"):
        original = jobs.advance_planner

        def dies_on_third_tick(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("planner killed")
            return original(*args, **kwargs)

        monkeypatch.setattr(jobs, "advance_planner", dies_on_third_tick)
    else:
        original = sqs.send_ten

        def dies_after_one_send(*args, **kwargs):
            calls["n"] += 1
            refused = original(*args, **kwargs)
            if calls["n"] == 2:
                raise RuntimeError("planner killed")
            return refused

        monkeypatch.setattr(sqs, "send_ten", dies_after_one_send)
    job = start(stack, endpoint, f"{endpoint}/r/", {"mini_batch_size": "1", "max_inflight_batches": "12"})
    job = stack.run_until_done(job.job_id)
    assert calls["n"] >= 3
    assert job.state == jobs.SUCCEEDED
    assert read_output(stack.cfg, job).splitlines() == inputs
    assert (job.total_batches, job.batches_succeeded, job.items_succeeded, job.items_failed) == (24, 24, 24, 0)


def test_window_bounds_messages_in_flight(stack, make_endpoint):
    endpoint = make_endpoint(echo("win"), name="win")
    put_files(stack.cfg, "win/r/", [f"{i:02d}.txt" for i in range(12)])
    job = start(stack, endpoint, "win/r/", {"mini_batch_size": "1", "process_count_per_node": "2", "node_count": "2"})
    stack.plan(job.job_id)
    attributes = aws.client("sqs").get_queue_attributes(QueueUrl=stack.cfg.batch_queue_url,
                                                        AttributeNames=["ApproximateNumberOfMessages"])
    assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "4"  # 2 processes x 2 nodes
    plan = jobs.get(stack.cfg, job.job_id)
    assert (plan.total_batches, plan.cursor) == (12, 4)
    assert stack.run_until_done(job.job_id).items_succeeded == 12


def test_empty_folder_ends_at_once(stack, make_endpoint):
    endpoint = make_endpoint(echo("empty"), name="empty")
    put_files(stack.cfg, "empty/r/", ["_READY", ".hidden"])
    job = stack.run_until_done(start(stack, endpoint, "empty/r/").job_id)
    assert (job.state, job.total_batches, job.total_items) == (jobs.SUCCEEDED, 0, 0)
    assert read_output(stack.cfg, job) == ""


@pytest.mark.parametrize("isolate", [True, False])
def test_last_attempt_failure_is_recorded_and_job_ends(stack, make_endpoint, isolate):
    name = f"fail{int(isolate)}"
    endpoint = make_endpoint(echo(name).replace(
        "return [", "if any(open(p).read() == 'bad.txt' for p in mini_batch):\n        raise ValueError('cannot score bad.txt')\n    return ["),
        name=name)
    inputs = ["a.txt", "b.txt", "bad.txt", "c.txt"]
    put_files(stack.cfg, f"{endpoint}/r/", inputs)
    settings = {"mini_batch_size": "2", "run_max_try": "2", "isolate_failures": str(isolate)}
    job = stack.run_until_done(start(stack, endpoint, f"{endpoint}/r/", settings).job_id)
    assert job.state == jobs.SUCCEEDED  # error_threshold -1 ignores failed inputs
    failures = [json.loads(line) for line in read_output(stack.cfg, job, "failures.jsonl").splitlines()]
    if isolate:  # run alone, c.txt succeeds: only the poison input fails
        assert read_output(stack.cfg, job).splitlines() == ["a.txt", "b.txt", "c.txt"]
        assert [f["input"] for f in failures] == [f"{endpoint}/r/bad.txt"]
        assert (job.batches_failed, job.items_failed, job.items_succeeded) == (0, 1, 3)
    else:
        assert read_output(stack.cfg, job).splitlines() == ["a.txt", "b.txt"]
        assert [f["input"] for f in failures] == [f"{endpoint}/r/bad.txt", f"{endpoint}/r/c.txt"]
        assert (job.batches_failed, job.items_failed, job.items_succeeded) == (1, 2, 2)
    assert {(f["error_type"], f["attempts"], f["minibatch"]) for f in failures} == {("ValueError", 2, 1)}
    assert "cannot score bad.txt" in failures[0]["message"]
    assert any("raise ValueError" in line for line in failures[0]["traceback"])
    assert job.retries == 1


def test_error_threshold_fails_the_job_with_the_reason(stack, make_endpoint):
    endpoint = make_endpoint(echo("thr").replace("return [", "raise KeyError('boom')\n    return ["), name="thr")
    put_files(stack.cfg, "thr/r/", ["a.txt", "b.txt"])
    job = stack.run_until_done(start(stack, endpoint, "thr/r/", {"run_max_try": "1", "error_threshold": "1"}).job_id)
    assert job.state == jobs.FAILED
    assert "error_threshold" in job.reason and "KeyError" in job.reason
    summary = json.loads(read_output(stack.cfg, job, "summary.json"))
    assert summary["state"] == "FAILED" and summary["counts"]["items"]["failed"] == 2


def test_dead_lettered_batch_counts_as_failed(stack, make_endpoint):
    endpoint = make_endpoint(echo("dlq"), name="dlq")
    put_files(stack.cfg, "dlq/r/", ["a.txt", "b.txt", "c.txt"])
    job = start(stack, endpoint, "dlq/r/", {"mini_batch_size": "2"})
    stack.plan(job.job_id)
    sqs = aws.client("sqs")
    dlq = stack.source("FailureRecorderFunction", "BatchDeadLetterQueue").queue_url
    received = sqs.receive_message(QueueUrl=stack.cfg.batch_queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0)
    message = next(m for m in received["Messages"] if json.loads(m["Body"])["batch"] == 1)
    # As if the worker had died on every delivery: SQS moves the message to the DLQ.
    sqs.send_message(QueueUrl=dlq, MessageBody=message["Body"])
    sqs.delete_message(QueueUrl=stack.cfg.batch_queue_url, ReceiptHandle=message["ReceiptHandle"])
    job = stack.run_until_done(job.job_id)
    assert (job.batches_succeeded, job.batches_failed, job.items_failed) == (1, 1, 1)
    assert read_output(stack.cfg, job).splitlines() == ["a.txt", "b.txt"]
    failures = [json.loads(line) for line in read_output(stack.cfg, job, "failures.jsonl").splitlines()]
    assert [(f["input"], f["error_type"]) for f in failures] == [("dlq/r/c.txt", "WorkerLost")]
    recorder = json.loads(read_output(stack.cfg, job, "summary.json"))["cost"]["functions"]["failure_recorder"]
    assert (recorder["invocations"], recorder["memory_mb"]) == (1, 256)  # its own invocation, priced too


def test_ready_marker_starts_one_job_with_its_overrides(stack, make_endpoint):
    make_endpoint(echo("drop"), name="drop")
    put_files(stack.cfg, "drop/b1/", [f"{i}.txt" for i in range(6)])
    aws.client("s3").put_object(Bucket=stack.cfg.input_bucket, Key="drop/b1/_READY", Body=b'{"mini_batch_size": 4}')
    event = marker_event(stack.cfg.input_bucket, "drop/b1/_READY", "0A1")
    stack.handlers["PlannerFunction"](event, None)
    stack.handlers["PlannerFunction"](event, None)  # S3 may notify twice: still one job
    found = [j for j in jobs.list_jobs(stack.cfg, 1000) if j.input_uri.endswith("/drop/b1/")]
    assert len(found) == 1 and found[0].source == "drop"
    job = stack.run_until_done(found[0].job_id)
    assert (job.state, job.total_batches, job.items_succeeded) == (jobs.SUCCEEDED, 2, 6)


def test_ready_marker_with_a_bad_setting_leaves_a_failed_job_saying_why(stack, make_endpoint):
    make_endpoint(echo("badmark"), name="badmark")
    put_files(stack.cfg, "badmark/b1/", ["a.txt"])
    aws.client("s3").put_object(Bucket=stack.cfg.input_bucket, Key="badmark/b1/_READY",
                                Body=b'{"mini_batch_size": "lots"}')
    stack.handlers["PlannerFunction"](marker_event(stack.cfg.input_bucket, "badmark/b1/_READY", "0B2"), None)
    job = next(j for j in jobs.list_jobs(stack.cfg, 1000) if j.input_uri.endswith("/badmark/b1/"))
    assert job.state == jobs.FAILED
    assert "mini_batch_size='lots'" in job.reason and "file count" in job.reason


def test_tampered_scoring_code_is_refused_before_import(stack, make_endpoint):
    endpoint = make_endpoint(echo("tamper") + "\n# tamper test\n", name="tamper")
    put_files(stack.cfg, "tamper/r/", ["a.txt"])
    job = submit.prepare(stack.cfg, endpoint, f"s3://{stack.cfg.input_bucket}/tamper/r/", {"run_max_try": "1"})
    key = f"code/{job.deployment['code_sha']}.zip"
    aws.client("s3").put_object(Bucket=stack.cfg.artifacts_bucket, Key=key, Body=b"not the code that was uploaded")
    submit.start(stack.cfg, job)
    job = stack.run_until_done(job.job_id)
    failures = [json.loads(line) for line in read_output(stack.cfg, job, "failures.jsonl").splitlines()]
    assert [(f["error_type"], "refusing to import" in f["message"]) for f in failures] == [("IntegrityError", True)]


def test_submit_refuses_bad_settings_and_existing_output(stack, make_endpoint):
    from parallelrun.core.errors import ConflictError, SettingsError

    endpoint = make_endpoint(echo("refuse"), name="refuse")
    with pytest.raises(SettingsError, match=r"partition_keys=.store.*set partition_format too"):
        submit.prepare(stack.cfg, endpoint, f"s3://{stack.cfg.input_bucket}/refuse/r/", {"partition_keys": "store"})
    with pytest.raises(SettingsError, match=r"run_max_try='9'.*from 1 to 3"):
        submit.prepare(stack.cfg, endpoint, f"s3://{stack.cfg.input_bucket}/refuse/r/", {"run_max_try": "9"})
    output = f"s3://{stack.cfg.artifacts_bucket}/taken/"
    aws.client("s3").put_object(Bucket=stack.cfg.artifacts_bucket, Key="taken/parallel_run_step.txt", Body=b"x")
    with pytest.raises(ConflictError, match="already exists"):
        submit.prepare(stack.cfg, endpoint, f"s3://{stack.cfg.input_bucket}/refuse/r/", {"output_path": output})


def test_an_input_that_cannot_be_listed_is_refused_or_fails_the_job(stack, make_endpoint):
    from parallelrun.core.errors import InputError

    endpoint = make_endpoint(echo("nobucket"), name="nobucket")
    with pytest.raises(InputError, match=r"s3://no-such-bucket-here/x/: cannot list it \(NoSuchBucket\)"):
        submit.prepare(stack.cfg, endpoint, "s3://no-such-bucket-here/x/")
    # Should the bucket go between submit and planning, the job fails saying why; it never hangs.
    aws.client("s3").create_bucket(Bucket="short-lived-inputs")
    job = submit.prepare(stack.cfg, endpoint, "s3://short-lived-inputs/x/")
    aws.client("s3").delete_bucket(Bucket="short-lived-inputs")
    submit.start(stack.cfg, job)
    job = stack.run_until_done(job.job_id)
    assert job.state == jobs.FAILED and "(NoSuchBucket)" in job.reason
