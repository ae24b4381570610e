"""Whoever can write to the input bucket gets a job, or a FAILED job saying why, and nothing
more: a marker's body is bounded, only some settings may come from it, and no job's output may
land on another job's files (issue 10)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from botocore.response import StreamingBody

from parallelrun import aws
from parallelrun.aws import s3, sqs
from parallelrun.client.api import Client
from parallelrun.client.cli import main
from parallelrun.client.progress import status_lines
from parallelrun.core.datasets import split_s3_uri
from parallelrun.core.errors import ConflictError, SettingsError
from parallelrun.pipeline import collation, markers, submit
from parallelrun.store import jobs
from tests.conftest import marker_event, put_files, read_output
from tests.test_pipeline import echo

_sequencers = itertools.count(1)


@pytest.fixture
def endpoint(make_endpoint) -> str:
    name = f"sec-{next(_sequencers)}"
    return make_endpoint(echo(name), name=name)


def drop(stack: Any, endpoint: str, folder: str, body: bytes) -> jobs.JobRecord:
    """Inputs and a ``_READY`` marker with ``body`` in ``<endpoint>/<folder>/``, the planner
    notified as S3 does; the job as `parallelrun jobs` and `status` see it."""
    prefix = f"{endpoint}/{folder}/"
    put_files(stack.cfg, prefix, ["a.txt", "b.txt"])
    aws.client("s3").put_object(Bucket=stack.cfg.input_bucket, Key=prefix + "_READY", Body=body)
    # Raising here would lose the drop: S3's asynchronous invocation has no one to tell.
    stack.handlers["PlannerFunction"](marker_event(stack.cfg.input_bucket, prefix + "_READY",
                                                    f"{next(_sequencers):016X}"), None)
    client = Client(stack.cfg)
    found = client.find_job(f"s3://{stack.cfg.input_bucket}/{prefix}")
    assert found is not None, "the drop left no job"
    assert found.job_id in [job.job_id for job in client.jobs(1000)]
    return client.job(found.job_id)


def assert_failed_saying(job: jobs.JobRecord, *fragments: str) -> None:
    assert job.state == jobs.FAILED, job
    shown = "\n".join(status_lines(job))
    for fragment in fragments:
        assert fragment in job.reason and fragment in shown, (fragment, job.reason)


# --- the marker's body ----------------------------------------------------------------------


def test_the_clients_marker_is_the_empty_ready_object_a_drop_folder_waits_for(stack, endpoint):
    """What ``parallelrun demo`` writes after its uploads: an empty marker, so the job takes the
    endpoint's settings as they are (with or without the folder's trailing slash)."""
    client = Client(stack.cfg)
    prefix = f"{endpoint}/client-marker/"
    put_files(stack.cfg, prefix, ["a.txt"])
    client.mark_ready(f"s3://{stack.cfg.input_bucket}/{prefix.rstrip('/')}")
    marker = aws.client("s3").get_object(Bucket=stack.cfg.input_bucket, Key=prefix + "_READY")
    assert marker["Body"].read() == b""
    stack.handlers["PlannerFunction"](marker_event(stack.cfg.input_bucket, prefix + "_READY",
                                                    f"{next(_sequencers):016X}"), None)
    job = client.find_job(f"s3://{stack.cfg.input_bucket}/{prefix}")
    assert job is not None and job.state != jobs.FAILED, job


def test_a_marker_over_64_kib_is_a_failed_job_and_is_not_read(stack, endpoint, monkeypatch):
    read: list[int] = []
    original = StreamingBody.read

    def counting(self: StreamingBody, amt: int | None = None) -> bytes:
        data = original(self, amt)
        read.append(len(data))
        return data

    monkeypatch.setattr(StreamingBody, "read", counting)
    body = b'{"mini_batch_size": 1}' + b" " * (1024 * 1024)  # valid JSON, but a megabyte of it
    job = drop(stack, endpoint, "huge", body)
    assert_failed_saying(job, f"has {len(body)} bytes", "at most 65536 bytes (64 KiB)")
    assert sum(read) <= markers.MAX_MARKER_BYTES + 1


def test_a_marker_of_exactly_64_kib_is_read(stack, endpoint):
    body = b'{"mini_batch_size": 1}'
    job = drop(stack, endpoint, "edge", body + b" " * (markers.MAX_MARKER_BYTES - len(body)))
    assert job.state != jobs.FAILED, job.reason
    assert job.settings.mini_batch_size == "1"


@pytest.mark.parametrize(("body", "fragments"), [
    (b'{"mini_batch_size": "\xff\xfe"}', ("MARKER is not UTF-8 text", "byte 21 is b'\\xff'")),
    ('{"mini_batch_size": 2}'.encode("utf-16"), ("MARKER is not UTF-8 text",)),
    (b"[" * 30000 + b"]" * 30000, ("MARKER nests JSON too deeply",)),
    (b'{"csv_options": {"delimiter": {"nested": [";"]}}}', ("MARKER nests JSON too deeply",)),
    (b'{"mini_batch_size": ' + b"[" * 5000 + b"]" * 5000 + b"}", ("MARKER nests JSON too deeply",)),
    (b'["mini_batch_size", 2]', ("MARKER must hold a JSON object of settings, not a JSON list",)),
    (b'"mini_batch_size=2"', ("MARKER must hold a JSON object of settings, not a JSON str",)),
    (b'{"mini_batch_size": ', ("MARKER is not a JSON object of settings",)),
    (b'{"mini_batch_size": ' + b"9" * 5000 + b"}", ("MARKER is not a JSON object of settings",)),
    (b'{"deployment": ["blue"]}', ("setting deployment=['blue'] is not allowed",)),
], ids=["latin-1", "utf-16", "deep-array", "deep-value", "deep-setting", "list", "string", "truncated",
        "huge-number", "deployment-list"])
def test_a_bad_marker_body_is_a_failed_job_saying_why(stack, endpoint, body, fragments):
    job = drop(stack, endpoint, "bad", body)
    marker = f"marker s3://{stack.cfg.input_bucket}/{endpoint}/bad/_READY"
    assert_failed_saying(job, *(fragment.replace("MARKER", marker) for fragment in fragments))


def test_a_marker_with_a_byte_order_mark_and_lists_is_read(stack, endpoint):
    job = drop(stack, endpoint, "bom", '\ufeff{"mini_batch_size": 1, "partition_keys": []}'.encode())
    assert job.state != jobs.FAILED, job.reason


# --- what a marker may set --------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "value"), [
    ("environment_variables", {"AZUREML_MODEL_DIR": "/tmp/planted"}),
    ("environment_variables", {"MODE": "fast"}),
    ("side_inputs", "s3://someone-elses-bucket/secrets.txt"),
    ("arguments", "--model_path /tmp/planted"),
])
def test_a_marker_may_not_set_what_the_scoring_process_sees(stack, endpoint, setting, value):
    job = drop(stack, endpoint, "forbidden", json.dumps({setting: value}).encode())
    assert_failed_saying(job, f"setting {setting}={value!r} is not allowed",
                         "cannot be set from a drop folder's _READY marker", "CLI or SDK")


def test_a_marker_sets_the_run_settings_it_may(stack, endpoint):
    job = drop(stack, endpoint, "allowed", json.dumps({
        "mini_batch_size": 1, "error_threshold": 3, "run_max_try": 2, "output_action": "summary_only",
        "logging_level": "debug", "allow_reuse": False, "node_count": 2, "process_count_per_node": 2}).encode())
    assert job.state != jobs.FAILED, job.reason
    assert (job.settings.mini_batch_size, job.settings.error_threshold, job.settings.output_action) == (
        "1", 3, "summary_only")


def test_a_marker_over_a_bound_is_a_failed_job_naming_the_limit(stack, endpoint):
    job = drop(stack, endpoint, "bound", b'{"mini_batch_size": 100000}')
    assert_failed_saying(job, "setting mini_batch_size='100000' is not allowed", "at most 200 files per mini-batch")


def test_no_source_may_set_a_runtime_variable(stack, endpoint):
    folder = f"s3://{stack.cfg.input_bucket}/{endpoint}/env/"
    put_files(stack.cfg, f"{endpoint}/env/", ["a.txt"])
    for name in ("AZUREML_MODEL_DIR", "AZUREML_BI_OUTPUT_PATH", "PARALLELRUN_FAULTS", "AWS_ENDPOINT_URL", "PYTHONPATH",
                 "LD_PRELOAD", "https_proxy"):
        with pytest.raises(SettingsError, match=f"{name} is parallelrun's, the AWS SDK's"):
            Client(stack.cfg).submit(endpoint, folder, {"environment_variables": {name: "x"}})
    job = Client(stack.cfg).submit(endpoint, folder, {"environment_variables": {"MODE": "fast"}})
    assert Client(stack.cfg).job(job.job_id).settings.environment_variables == {"MODE": "fast"}


# --- where the output goes --------------------------------------------------------------------


def _succeeded(stack: Any, endpoint: str, folder: str, overrides: dict[str, Any] | None = None) -> jobs.JobRecord:
    put_files(stack.cfg, folder, ["a.txt", "b.txt"])
    job = submit.prepare(stack.cfg, endpoint, f"s3://{stack.cfg.input_bucket}/{folder}", overrides)
    submit.start(stack.cfg, job)
    done = stack.run_until_done(job.job_id)
    assert done.state == jobs.SUCCEEDED, done.reason
    return done


def test_an_output_path_into_another_jobs_folder_is_refused_everywhere(stack, endpoint, capsys):
    earlier = _succeeded(stack, endpoint, f"{endpoint}/first/")
    summary = read_output(stack.cfg, earlier, "summary.json")
    inputs = f"s3://{stack.cfg.input_bucket}/{endpoint}/first/"
    # A different collated name once let summary.json and failures.jsonl be overwritten.
    taken = {"output_path": earlier.output_uri, "append_row_file_name": "mine.txt"}

    with pytest.raises(SettingsError) as caught:
        Client(stack.cfg).submit(endpoint, inputs, taken)
    assert caught.value.setting == "output_path" and caught.value.value == earlier.output_uri
    assert "outside its jobs/, code/, models/" in str(caught.value)

    assert main(["--stack", stack.spec.stack_name, "submit", "--endpoint", endpoint, "--input", inputs,
                 "--set", f"output_path={earlier.output_uri}", "--set", "append_row_file_name=mine.txt"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: setting output_path={earlier.output_uri!r} is not allowed") and err.count("\n") == 1

    job = drop(stack, endpoint, "second", json.dumps(taken).encode())
    assert_failed_saying(job, f"setting output_path={earlier.output_uri!r} is not allowed")

    assert read_output(stack.cfg, earlier, "summary.json") == summary


@pytest.mark.parametrize("where", ["s3://someone-elses-bucket/out/", "INPUT/out/", "ARTIFACTS/code/",
                                   "ARTIFACTS/models/x/", "ARTIFACTS/jobs", "ARTIFACTS/schedules/nightly/20260101T000000Z/"])
def test_an_output_path_outside_the_stacks_own_places_is_refused(stack, endpoint, where):
    where = where.replace("ARTIFACTS", f"s3://{stack.cfg.artifacts_bucket}").replace("INPUT", f"s3://{stack.cfg.input_bucket}")
    put_files(stack.cfg, f"{endpoint}/r/", ["a.txt"])
    with pytest.raises(SettingsError) as caught:
        submit.prepare(stack.cfg, endpoint, f"s3://{stack.cfg.input_bucket}/{endpoint}/r/", {"output_path": where})
    assert caught.value.setting == "output_path" and caught.value.value == where
    assert f"this stack's artifacts bucket ({stack.cfg.artifacts_bucket}), outside its" in str(caught.value)


def test_an_output_folder_an_earlier_job_wrote_into_is_refused(stack, endpoint):
    shared = f"s3://{stack.cfg.artifacts_bucket}/shared-{endpoint}/"
    earlier = _succeeded(stack, endpoint, f"{endpoint}/one/", {"output_path": shared})
    failures = read_output(stack.cfg, earlier, "failures.jsonl")
    for name in ("other.txt", "summary.json"):
        with pytest.raises(ConflictError, match=f"output folder {shared} already exists, holding s3://"):
            submit.prepare(stack.cfg, endpoint, f"s3://{stack.cfg.input_bucket}/{endpoint}/one/",
                           {"output_path": shared, "append_row_file_name": name})
    assert read_output(stack.cfg, earlier, "failures.jsonl") == failures


@pytest.mark.parametrize("taken", ["failures.jsonl", "summary.json"])
def test_the_aggregator_never_overwrites_a_file_it_did_not_write(stack, endpoint, taken):
    # Two jobs may pass the check at submit together; the later writer must not win.
    name = taken.split(".")[0]
    folder = f"{endpoint}/race-{name}/"
    put_files(stack.cfg, folder, ["a.txt"])
    output = f"s3://{stack.cfg.artifacts_bucket}/race-{name}-{endpoint}/"
    job = submit.prepare(stack.cfg, endpoint, f"s3://{stack.cfg.input_bucket}/{folder}", {"output_path": output})
    submit.start(stack.cfg, job)
    aws.client("s3").put_object(Bucket=stack.cfg.artifacts_bucket, Key=f"race-{name}-{endpoint}/{taken}",
                                Body=b"not yours\n")
    done = stack.run_until_done(job.job_id)
    assert done.state == jobs.FAILED
    assert f"{output}{taken} already exists and job {job.job_id} did not write it" in done.reason
    assert read_output(stack.cfg, done, taken) == "not yours\n"
    if taken != "summary.json":
        assert json.loads(read_output(stack.cfg, done, "summary.json"))["state"] == jobs.FAILED


def test_an_aggregation_tried_again_overwrites_its_own_files(stack, endpoint):
    done = _succeeded(stack, endpoint, f"{endpoint}/again/", {"output_path": f"s3://{stack.cfg.artifacts_bucket}/"
                                                                             f"again-{endpoint}/"})
    rows = read_output(stack.cfg, done, done.settings.output_file_name)
    # As an aggregator that died after writing its files and came back would do.
    assert collation.collate_range(stack.cfg, done, 0, 0, done.total_batches, collation.job_files(done)).rows == 2
    writer = s3.S3StreamWriter(*split_s3_uri(done.output_uri + "failures.jsonl"), upload_part_size=5 * 1024**2,
                               owner=done.job_id)
    writer.write(b"x" * (6 * 1024**2))  # a multipart upload, completed over its own earlier file
    writer.close()
    assert read_output(stack.cfg, done, done.settings.output_file_name) == rows
    with pytest.raises(s3.OutputTaken, match="did not write it"):
        other = s3.S3StreamWriter(*split_s3_uri(done.output_uri + "failures.jsonl"),
                                  upload_part_size=5 * 1024**2, owner="another-job")
        other.write(b"y" * (6 * 1024**2))
        other.close()
    assert read_output(stack.cfg, done, "failures.jsonl") == "x" * (6 * 1024**2)


def test_the_largest_mini_batches_of_the_longest_keys_are_sent(stack, endpoint, monkeypatch):
    # 200 files of keys near S3's 1,024 bytes make a message of about 200 KB: SendMessageBatch
    # takes only as many of those as fit its limit on the sum, never ten.
    folder = f"{endpoint}/long/"
    names = [f"{i:04d}-" + "k" * (1000 - len(folder)) for i in range(1400)]
    put_files(stack.cfg, folder, names, body=lambda name: b"x")
    sizes: list[int] = []
    original = sqs.send_ten

    def measured(queue_url: str, entries: dict[str, str]) -> list[str]:
        sizes.append(sum(len(body.encode()) for body in entries.values()))
        return original(queue_url, entries)

    monkeypatch.setattr(sqs, "send_ten", measured)
    job = submit.prepare(stack.cfg, endpoint, f"s3://{stack.cfg.input_bucket}/{folder}", {"mini_batch_size": 200})
    submit.start(stack.cfg, job)
    planned = stack.plan(job.job_id)
    assert (planned.total_batches, planned.cursor) == (7, 7)
    assert len(sizes) > 1 and max(sizes) <= sqs.SEND_BYTES and sum(sizes) > sqs.SEND_BYTES
    Client(stack.cfg).cancel(job.job_id)


def test_a_marker_gone_before_the_planner_reads_it_is_a_failed_job(stack, endpoint):
    key = f"{endpoint}/gone/_READY"
    stack.handlers["PlannerFunction"](marker_event(stack.cfg.input_bucket, key, f"{next(_sequencers):016X}"), None)
    job = Client(stack.cfg).find_job(f"s3://{stack.cfg.input_bucket}/{endpoint}/gone/")
    assert job is not None
    assert_failed_saying(job, f"marker s3://{stack.cfg.input_bucket}/{key} cannot be read (NoSuchKey)")
