"""Pipelines of steps on in-process moto: each step an ordinary job on the step before's output,
checked row by row; reuse per step; a failed step stopping its run with its reason; the hand-on
delivered twice or killed midway starting the next step once; drop folders; the CLI."""

from __future__ import annotations

import io
import json
from typing import Any

import pandas as pd
import pytest

from parallelrun import aws
from parallelrun.aws import sqs
from parallelrun.client import commands
from parallelrun.client.api import Client
from parallelrun.client.cli import main
from parallelrun.client.sdk import PipelineStep
from parallelrun.core import pipelines as definitions
from parallelrun.core.errors import ConflictError, InputError, SettingsError
from parallelrun.pipeline import chaining, failure_recorder, markers
from parallelrun.store import endpoints, jobs, pipelines, schedules
from tests.conftest import marker_event, put_files
from tests.test_pipeline import parts
from tests.test_schedules import fire

# Step 1: each input file holds "a,b"; its row is the file with the two numbers and their sum.
FEATURES = """
import os
import pandas as pd
from azureml_user.parallel_run import EntryScript

def run(mini_batch):
    rows = []
    for path in mini_batch:
        a, b = (int(x) for x in open(path).read().split(","))
        rows.append({"file": os.path.basename(path), "a": a, "b": b, "total": a + b})
        with open(os.path.join(EntryScript().output_dir, "doubled-" + os.path.basename(path)), "w") as out:
            out.write(str(2 * (a + b)))
    return pd.DataFrame(rows)
"""

# Step 2: a "classifier" scoring the features table.
CLASSIFY = """
def run(mini_batch):
    frame = mini_batch.copy()
    frame["label"] = ["big" if total > 10 else "small" for total in frame["total"]]
    return frame[["file", "total", "label"]]
"""

# Step 2 of a files feed: each fed file's name and body.
ECHO_FILES = """
import os

def run(mini_batch):
    return [os.path.basename(path) + "=" + open(path).read() for path in mini_batch]
"""

BROKEN = """
def run(mini_batch):
    raise ValueError("the features model is broken")
"""

INPUTS = {f"{i:02d}.txt": (i, 2 * i) for i in range(7)}  # totals 0, 3, ..., 18


def until_ended(stack: Any, run_id: str, rounds: int = 400) -> pipelines.PipelineRun:
    """Deliver every queue in turn until the pipeline run ends."""
    return stack.run_until(lambda: pipelines.get_run(stack.cfg, run_id), f"pipeline run {run_id}", rounds)


def read(job: jobs.JobRecord, name: str | None = None) -> str:
    bucket, _, prefix = job.output_uri[5:].partition("/")
    body = aws.client("s3").get_object(Bucket=bucket, Key=prefix + (name or job.settings.output_file_name))["Body"]
    return body.read().decode()


def expected_labels() -> list[list[str]]:
    return [[name, str(a + b), "big" if a + b > 10 else "small"] for name, (a, b) in sorted(INPUTS.items())]


@pytest.fixture
def chain(stack, make_endpoint, unique):
    """Two endpoints, features (files → a csv table) and classify (that table → labels), a
    pipeline of them, and a folder of inputs; returns (pipeline name, input URI)."""
    features = make_endpoint(FEATURES, name=f"{unique}-features")
    classify = make_endpoint(CLASSIFY, name=f"{unique}-classify")
    Client(stack.cfg).create_pipeline(f"{unique}-chain", [
        PipelineStep("features", features, settings={"mini_batch_size": "3", "output_format": "csv"}),
        {"name": "classify", "endpoint": classify, "settings": {"input_type": "tabular", "output_format": "csv"}}])
    put_files(stack.cfg, f"{unique}/in/", list(INPUTS), lambda name: "{},{}".format(*INPUTS[name]).encode())
    return f"{unique}-chain", f"s3://{stack.cfg.input_bucket}/{unique}/in/"


def test_two_steps_end_to_end_then_both_reused_on_resubmit(stack, chain):
    client = Client(stack.cfg)
    name, uri = chain
    run = until_ended(stack, client.run_pipeline(name, uri).run_id)
    assert run.state == jobs.SUCCEEDED, run.reason
    first, second = client.step_jobs(run)
    assert first is not None and second is not None
    assert (first.state, second.state, second.input_uri) == (jobs.SUCCEEDED, jobs.SUCCEEDED, first.output_uri)
    table = pd.read_csv(io.StringIO(read(first)))
    assert table.to_dict("records") == [{"file": n, "a": a, "b": b, "total": a + b} for n, (a, b) in sorted(INPUTS.items())]
    assert second.settings.input_format == "csv"  # the table's format, though its name ends in .txt
    assert (second.total_batches, second.items_succeeded) == (1, 7)  # the table only: no summary, no script files
    labels = [line.split(",") for line in read(second).splitlines()]
    assert labels == [["file", "total", "label"], *expected_labels()]

    again = until_ended(stack, client.run_pipeline(name, uri).run_id)
    assert again.state == jobs.SUCCEEDED, again.reason
    first_again, second_again = client.step_jobs(again)
    assert first_again is not None and second_again is not None
    assert (first_again.reused_from, second_again.reused_from) == (first.job_id, second.job_id)
    assert parts(stack, first_again.job_id) == parts(stack, second_again.job_id) == []  # nothing scored again
    assert read(second_again) == read(second)

    put_files(stack.cfg, uri.split("/", 3)[3], ["03.txt"], lambda _: b"30,1")  # one input changed
    changed = until_ended(stack, client.run_pipeline(name, uri).run_id)
    first_changed, second_changed = client.step_jobs(changed)
    assert first_changed is not None and second_changed is not None
    assert (first_changed.batches_reused, first_changed.total_batches) == (2, 3)  # the other mini-batches
    assert second_changed.reused_from is None
    assert read(second_changed).splitlines()[4] == "03.txt,31,big"


def test_a_files_feed_passes_on_what_the_script_wrote_and_nothing_else(stack, make_endpoint, unique):
    features = make_endpoint(FEATURES, name=f"{unique}-features")
    echo = make_endpoint(ECHO_FILES, name=f"{unique}-echo")
    client = Client(stack.cfg)
    client.create_pipeline(f"{unique}-files", [PipelineStep("features", features, feed="files"),
                                              PipelineStep("echo", echo)])
    put_files(stack.cfg, f"{unique}/in/", list(INPUTS), lambda name: "{},{}".format(*INPUTS[name]).encode())
    run = until_ended(stack, client.run_pipeline(f"{unique}-files", f"s3://{stack.cfg.input_bucket}/{unique}/in/").run_id)
    assert run.state == jobs.SUCCEEDED, run.reason
    _, echoed = client.step_jobs(run)
    assert echoed is not None
    assert read(echoed).splitlines() == [f"doubled-{n}={2 * (a + b)}" for n, (a, b) in sorted(INPUTS.items())]


def test_a_failed_step_stops_the_run_with_its_reason(stack, make_endpoint, unique):
    broken = make_endpoint(BROKEN, name=f"{unique}-broken")
    classify = make_endpoint(CLASSIFY, name=f"{unique}-classify")
    client = Client(stack.cfg)
    client.create_pipeline(f"{unique}-bad", [
        PipelineStep("features", broken, settings={"error_threshold": 0, "run_max_try": 1, "output_format": "csv"}),
        PipelineStep("classify", classify, settings={"input_type": "tabular"})])
    put_files(stack.cfg, f"{unique}/in/", ["a.txt"])
    run = until_ended(stack, client.run_pipeline(f"{unique}-bad", f"s3://{stack.cfg.input_bucket}/{unique}/in/").run_id)
    assert run.state == jobs.FAILED
    assert run.reason.startswith(f"step 1 (features) FAILED, job {run.job_id(0)}: ") and "ValueError" in run.reason
    assert client.step_jobs(run)[1] is None and jobs.find(stack.cfg, run.job_id(1)) is None  # step 2 never started


def test_a_step_that_cannot_start_fails_the_run_naming_it(stack, chain):
    name, uri = chain
    classify = pipelines.get(stack.cfg, name).steps[1].endpoint
    endpoints.delete_endpoint(stack.cfg, classify)  # after the pipeline was created
    run = until_ended(stack, Client(stack.cfg).run_pipeline(name, uri).run_id)
    assert run.state == jobs.FAILED
    assert run.reason.startswith(f"step 2 (classify) FAILED, job {run.job_id(1)}: the step could not start: ")
    assert classify in run.reason
    assert jobs.get(stack.cfg, run.job_id(0)).state == jobs.SUCCEEDED


@pytest.mark.parametrize("dies", ["before moving the run on", "after moving the run on"])
def test_a_hand_on_killed_midway_or_delivered_twice_starts_the_next_step_once(stack, chain, monkeypatch, dies):
    name, uri = chain
    advance, died = pipelines.advance, []

    def dying(cfg, run_id, step):
        if not died:
            died.append(step)
            if dies == "after moving the run on":
                advance(cfg, run_id, step)
            raise RuntimeError("killed mid hand-on")
        return advance(cfg, run_id, step)

    monkeypatch.setattr(pipelines, "advance", dying)
    send, starts = sqs.send, []

    def twice(queue_url, message, delay_seconds=None):
        if isinstance(message, sqs.StepEnded):  # every hand-on is delivered twice
            send(queue_url, message, delay_seconds)
        if isinstance(message, sqs.Start):
            starts.append(message.job_id)
        return send(queue_url, message, delay_seconds)

    monkeypatch.setattr(sqs, "send", twice)
    run = until_ended(stack, Client(stack.cfg).run_pipeline(name, uri).run_id)
    assert died == [0] and run.state == jobs.SUCCEEDED, run.reason
    second = jobs.get(stack.cfg, run.job_id(1))
    labels = [line.split(",") for line in read(second).splitlines()]
    assert labels == [["file", "total", "label"], *expected_labels()]  # each row once
    assert len(parts(stack, second.job_id)) == second.total_batches == 1
    step_jobs = [j for j in jobs.list_jobs(stack.cfg, 1000) if j.pipeline_run == run.run_id]
    assert sorted(j.job_id for j in step_jobs) == [run.job_id(0), run.job_id(1)]
    assert run.job_id(1) in starts
    chaining.step_ended(stack.cfg, jobs.get(stack.cfg, run.job_id(0)))  # a late twin changes nothing
    assert pipelines.get_run(stack.cfg, run.run_id) == run


def test_cancel_stops_the_step_under_way_and_starts_no_later_one(stack, chain, monkeypatch, capsys):
    name, uri = chain
    client = Client(stack.cfg)
    monkeypatch.setattr(Client, "connect", classmethod(lambda cls, stack_name=None: cls(stack.cfg)))
    run = client.run_pipeline(name, uri).record
    stack.plan(run.job_id(0))  # step 1 runs
    assert main(["cancel", run.run_id]) == 0
    assert capsys.readouterr().out.startswith(f"pipeline run {run.run_id}: CANCELED (canceled by user at step 1 (features))")
    ended = until_ended(stack, run.run_id)
    assert ended.state == jobs.CANCELED
    stack.run_until_done(run.job_id(0))
    assert jobs.get(stack.cfg, run.job_id(0)).state == jobs.CANCELED
    with pytest.raises(ConflictError, match="already ended"):
        client.cancel_pipeline_run(run.run_id)

    # Canceled while a hand-on is creating step 2's job, before it moves the run on to it.
    create = chaining._create

    def canceled_first(cfg, job):
        if job.job_id.endswith("-s2"):
            client.cancel_pipeline_run(job.pipeline_run)
        return create(cfg, job)

    monkeypatch.setattr(chaining, "_create", canceled_first)
    raced = until_ended(stack, client.run_pipeline(name, uri).run_id)
    for _ in range(3):  # whatever is still in the queues
        stack.deliver("PlannerFunction", max_rounds=10)
    assert (raced.state, raced.step) == (jobs.CANCELED, 0)
    second = jobs.get(stack.cfg, raced.job_id(1))
    assert second.state == jobs.CANCELED and "ended before this step started" in second.reason
    assert second.total_batches is None and parts(stack, second.job_id) == []  # never planned, never run


def test_a_hand_on_failing_on_every_delivery_ends_the_run(stack, chain):
    name, uri = chain
    run = Client(stack.cfg).run_pipeline(name, uri).record
    failure_recorder.give_up(stack.cfg, sqs.StepEnded(run.job_id(0)))  # dead-lettered
    ended = pipelines.get_run(stack.cfg, run.run_id)
    assert ended.state == jobs.FAILED
    assert ended.reason.startswith(f"handing on from step 1 (features, job {run.job_id(0)}) failed on every delivery")
    stack.purge()


def test_a_drop_folder_starts_a_run_and_names_are_shared_with_endpoints(stack, chain, make_endpoint, monkeypatch):
    name, uri = chain
    folder = f"{name}/batch1/"
    put_files(stack.cfg, folder, [f"{n}" for n in INPUTS], lambda n: "{},{}".format(*INPUTS[n]).encode())
    key = folder + "_READY"
    aws.client("s3").put_object(Bucket=stack.cfg.input_bucket, Key=key, Body=b'{"mini_batch_size": "7"}')
    event = marker_event(stack.cfg.input_bucket, key, "0PIPE")
    stack.handlers["PlannerFunction"](event, None)
    stack.handlers["PlannerFunction"](event, None)  # a retried notification: one run
    run_id = markers.marker_job(stack.cfg.input_bucket, key, "0PIPE")[0]
    run = until_ended(stack, run_id)
    assert (run.state, run.source, run.input_uri) == (jobs.SUCCEEDED, "drop", f"s3://{stack.cfg.input_bucket}/{folder}")
    first, second = Client(stack.cfg).step_jobs(run)
    assert first is not None and second is not None
    assert first.total_batches == 1  # the marker's mini_batch_size
    assert [line.split(",") for line in read(second).splitlines()][1:] == expected_labels()

    bad = f"{name}/batch2/_READY"
    aws.client("s3").put_object(Bucket=stack.cfg.input_bucket, Key=bad, Body=b'{"arguments": "--evil"}')
    stack.handlers["PlannerFunction"](marker_event(stack.cfg.input_bucket, bad, "0BAD"), None)
    refused = pipelines.get_run(stack.cfg, markers.marker_job(stack.cfg.input_bucket, bad, "0BAD")[0])
    assert refused.state == jobs.FAILED and "arguments" in refused.reason

    # The planner dies on every try after storing the run, before its first job: the run ends FAILED.
    dead = f"{name}/batch3/_READY"
    aws.client("s3").put_object(Bucket=stack.cfg.input_bucket, Key=dead, Body=b"")
    monkeypatch.setattr(chaining, "_step_job", lambda *args, **kwargs: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        chaining.drop_run(stack.cfg, name, f"s3://{stack.cfg.input_bucket}/{name}/batch3/", "dead-run", dict)
    failure_recorder.record_failed_invocation(stack.cfg, {
        "requestContext": {"condition": "RetriesExhausted", "approximateInvokeCount": 3},
        "requestPayload": marker_event(stack.cfg.input_bucket, dead, "0DEAD"),
        "responsePayload": {"errorType": "OSError", "errorMessage": "killed"}})
    dead_id = markers.marker_job(stack.cfg.input_bucket, dead, "0DEAD")[0]
    ended = pipelines.get_run(stack.cfg, dead_id)  # never stored by the planner: stored FAILED
    assert ended.state == jobs.FAILED and "failed on all 3 tries of marker" in ended.reason
    assert pipelines.get_run(stack.cfg, "dead-run").state == jobs.RUNNING
    chaining.drop_gave_up(stack.cfg, "dead-run", name, "s3://x/y/", "the planner gave up")
    assert pipelines.get_run(stack.cfg, "dead-run").state == jobs.FAILED  # stored, but its first step never was

    with pytest.raises(ConflictError, match="share the drop bucket"):
        make_endpoint(CLASSIFY, name=name)
    endpoint = pipelines.get(stack.cfg, name).steps[0].endpoint
    with pytest.raises(ConflictError, match="an endpoint named"):
        Client(stack.cfg).create_pipeline(endpoint, [PipelineStep("x", endpoint)])


def test_a_schedule_of_a_pipeline_runs_it_holding_the_lock_until_the_run_ends(stack, chain):
    name, uri = chain
    client = Client(stack.cfg)
    schedule = client.create_schedule(name, f"{name}-nightly", uri, "cron(0 2 * * ? *)")
    try:
        with pytest.raises(InputError, match="steps name their own"):
            client.create_schedule(name, f"{name}-blue", uri, "rate(1 hour)", deployment="blue")
        fire(stack, schedule.name, "2026-11-22T02:00:00Z")
        fire(stack, schedule.name, "2026-11-22T02:00:00Z")  # a repeated event: one run
        run_id = schedules.run_job_id(schedule.name, "2026-11-22T02:00:00Z")
        stack.deliver("PlannerFunction")
        assert schedules.get(stack.cfg, schedule.name).running_job == run_id  # the run holds the lock
        fire(stack, schedule.name, "2026-11-23T02:00:00Z")
        stack.deliver("PlannerFunction", max_rounds=10)
        assert schedules.get(stack.cfg, schedule.name).skipped_runs == 1  # overlap=skip, while the run runs
        run = until_ended(stack, run_id)
        assert (run.state, run.source, run.schedule) == (jobs.SUCCEEDED, "schedule", schedule.name)
        second = jobs.get(stack.cfg, run.job_id(1))
        assert [line.split(",") for line in read(second).splitlines()][1:] == expected_labels()
        assert schedules.get(stack.cfg, schedule.name).running_job is None  # given back at the run's end
        assert [r.run_id for r in client.pipeline_runs(name)] == [run_id]
        assert commands._schedule_dict(client, schedules.get(stack.cfg, schedule.name))["last_run"]["state"] == jobs.SUCCEEDED
    finally:
        client.delete_schedule(schedule.name)


def test_definitions_are_checked_at_create(stack, chain, tmp_path):
    name, _ = chain
    steps = pipelines.get(stack.cfg, name).steps
    client = Client(stack.cfg)
    txt_table = [PipelineStep("a", steps[0].endpoint), PipelineStep("b", steps[1].endpoint, settings={"input_type": "tabular"})]
    with pytest.raises(InputError, match="step 2 .*output_format csv or parquet"):
        client.create_pipeline("txt-table", txt_table)
    with pytest.raises(InputError, match="no endpoint"):
        client.create_pipeline("missing", [PipelineStep("a", "no-such-endpoint")])
    with pytest.raises(SettingsError, match="feed"):
        definitions.parse_steps([{"endpoint": "x", "feed": "rows"}])
    with pytest.raises(SettingsError, match="output_path"):
        definitions.parse_steps([{"endpoint": "x", "settings": {"output_path": "s3://b/p/"}}])
    with pytest.raises(InputError, match="used twice"):
        definitions.parse_steps([{"endpoint": "x"}, {"endpoint": "x"}])
    with pytest.raises(ConflictError, match="a pipeline named"):
        client.create_pipeline(name, [PipelineStep("a", steps[0].endpoint)])
    assert pipelines.find(stack.cfg, "txt-table") is None


def test_the_cli_creates_lists_shows_runs_and_deletes(stack, chain, tmp_path, monkeypatch, capsys):
    name, uri = chain
    steps = pipelines.get(stack.cfg, name).steps
    monkeypatch.setattr(Client, "connect", classmethod(lambda cls, stack_name=None: cls(stack.cfg)))
    (tmp_path / "chain.yml").write_text(f"""
name: {name}-cli
description: features then labels
steps:
  - name: features
    endpoint: {steps[0].endpoint}
    settings: {{mini_batch_size: 3, output_format: csv}}
  - name: classify
    endpoint: {steps[1].endpoint}
    settings: {{input_type: tabular, output_format: csv}}
""")
    assert main(["pipelines", "create", "--file", str(tmp_path / "chain.yml")]) == 0
    assert f"created pipeline {name}-cli: features (" in capsys.readouterr().out
    assert main(["pipelines", "list"]) == 0
    assert f"{name}-cli\tfeatures -> classify\tnot run yet" in capsys.readouterr().out.splitlines()
    assert main(["pipelines", "run", f"{name}-cli", "--input", uri]) == 0
    run_id = capsys.readouterr().out.strip()
    run = until_ended(stack, run_id)
    assert main(["wait", run_id]) == 0 and capsys.readouterr().out.startswith(f"pipeline run {run_id} of ")
    assert main(["status", run_id]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"pipeline run {run_id} of {name}-cli: SUCCEEDED"
    assert lines[2] == f"  step 1 features: SUCCEEDED  items 7/7 succeeded, 0 failed  job {run.job_id(0)}"
    assert any(line.startswith("  step 2 classify: SUCCEEDED  items 7/7 succeeded") for line in lines)
    assert main(["status", run_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(s["name"], s["state"], s["job_id"]) for s in shown["steps"]] == [
        ("features", "SUCCEEDED", run.job_id(0)), ("classify", "SUCCEEDED", run.job_id(1))]
    assert main(["pipelines", "show", f"{name}-cli"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in shown["steps"]] == ["features", "classify"] and shown["runs"][0]["run_id"] == run_id
    assert main(["pipelines", "delete", f"{name}-cli"]) == 0
    capsys.readouterr()
    assert main(["pipelines", "show", f"{name}-cli"]) == 1
    assert "no pipeline" in capsys.readouterr().err
    assert main(["status", run_id]) == 0  # a run outlives its pipeline
    for words in (["pipelines"], *[["pipelines", c] for c in ("create", "list", "show", "run", "delete")]):
        with pytest.raises(SystemExit) as exit_info:
            main([*words, "--help"])
        assert exit_info.value.code == 0 and "usage: parallelrun pipelines" in capsys.readouterr().out
