"""Failures are counted, isolated and explained, and no fault loses or doubles a row:
timeouts, flaky first attempts, thresholds crossed mid-job, cancel, redrive, and throttling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from parallelrun import aws
from parallelrun.client.api import Client
from parallelrun.core.errors import ConflictError
from parallelrun.store import batches, endpoints, jobs
from tests.conftest import put_files, read_output
from tests.test_pipeline import echo, parts, start


def script(name: str, before_return: str) -> str:
    """The echo script with ``before_return`` run inside run() first (``mini_batch`` in scope)."""
    return echo(name).replace("def run(mini_batch):\n", "def run(mini_batch, mini_batch_context):\n"
                              + "".join(f"    {line}\n" for line in before_return.strip().splitlines()))


def failures_of(stack: Any, job: jobs.JobRecord) -> list[dict[str, Any]]:
    return [json.loads(line) for line in read_output(stack.cfg, job, "failures.jsonl").splitlines()]


def test_run_past_its_timeout_fails_that_input_alone(stack, make_endpoint):
    endpoint = make_endpoint(script("slow", """
import time
if any(open(p).read() == 'slow.txt' for p in mini_batch):
    time.sleep(60)
"""), name="slow")
    inputs = ["a.txt", "slow.txt", "z.txt"]
    put_files(stack.cfg, "slow/r/", inputs)
    job = stack.run_until_done(start(stack, endpoint, "slow/r/", {
        "mini_batch_size": "3", "run_invocation_timeout": "2", "run_max_try": "1"}).job_id)
    assert job.state == jobs.SUCCEEDED
    assert read_output(stack.cfg, job).splitlines() == ["a.txt", "z.txt"]
    [failure] = failures_of(stack, job)
    assert (failure["input"], failure["error_type"]) == ("slow/r/slow.txt", "RunTimeout")
    assert "run_invocation_timeout=2" in failure["message"]


def test_a_script_that_raises_on_its_first_attempt_only(stack, make_endpoint):
    endpoint = make_endpoint(script("flaky", """
if mini_batch_context.attempt == 1:
    raise RuntimeError('flaky first attempt')
"""), name="flaky")
    inputs = [f"{i:02d}.txt" for i in range(10)]
    put_files(stack.cfg, "flaky/r/", inputs)
    job = stack.run_until_done(start(stack, endpoint, "flaky/r/", {"mini_batch_size": "3"}).job_id)
    assert job.state == jobs.SUCCEEDED
    assert read_output(stack.cfg, job).splitlines() == inputs  # every row once, in order
    assert (job.retries, job.items_failed) == (4, 0)  # one retry per mini-batch
    summary = json.loads(read_output(stack.cfg, job, "summary.json"))
    assert summary["counts"]["retries"] == 4
    assert all(key.endswith(".2.txt") for key in parts(stack, job.job_id))


def test_threshold_crossed_mid_job_stops_it_at_once(stack, make_endpoint):
    endpoint = make_endpoint(script("stopper", """
if any(int(open(p).read()[:2]) >= 5 for p in mini_batch):
    raise ValueError('bad input')
"""), name="stopper")
    inputs = [f"{i:02d}.txt" for i in range(20)]
    put_files(stack.cfg, "stopper/r/", inputs)
    job = stack.run_until_done(start(stack, endpoint, "stopper/r/", {
        "mini_batch_size": "1", "max_inflight_batches": "2", "run_max_try": "1", "error_threshold": "0"}).job_id)
    assert job.state == jobs.FAILED and job.reason.startswith("error_threshold: 1 inputs failed")
    assert read_output(stack.cfg, job).splitlines() == inputs[:5]  # every row that succeeded
    recorded = list(batches.iter_batches(stack.cfg, job.job_id))
    assert len(recorded) <= 7 and job.cursor <= 7  # the planner stopped; the rest never ran
    stack.deliver("WorkerFunction", max_rounds=20)  # stragglers are dropped, not run
    assert len(list(batches.iter_batches(stack.cfg, job.job_id))) == len(recorded)


def test_cancel_stops_the_job_and_keeps_what_succeeded(stack, make_endpoint):
    endpoint = make_endpoint(echo("cancel"), name="cancel")
    inputs = [f"{i:02d}.txt" for i in range(12)]
    put_files(stack.cfg, "cancel/r/", inputs)
    job = start(stack, endpoint, "cancel/r/", {"mini_batch_size": "1", "max_inflight_batches": "3"})
    for _ in range(200):  # the queues are shared with other tests' leftovers: go until one mini-batch ran
        if jobs.get(stack.cfg, job.job_id).batches_done:
            break
        stack.deliver("PlannerFunction")
        stack.deliver("WorkerFunction")
    client = Client(stack.cfg)
    assert client.cancel(job.job_id).state == jobs.FINALIZING
    job = stack.run_until_done(job.job_id)
    assert (job.state, job.reason) == (jobs.CANCELED, "canceled by user")
    assert read_output(stack.cfg, job).splitlines() == inputs[:1]
    assert len(list(batches.iter_batches(stack.cfg, job.job_id))) == 1
    with pytest.raises(ConflictError, match="already ended"):
        client.cancel(job.job_id)


def test_redrive_after_fixing_the_script_reruns_only_what_failed(stack, make_endpoint, tmp_path: Path):
    endpoint = make_endpoint(script("redrive", """
if any(open(p).read().startswith('bad') for p in mini_batch):
    raise ValueError('cannot score a bad input yet')
"""), name="redrive")
    inputs = ["a.txt", "b.txt", "bad1.txt", "c.txt", "d.txt", "e.txt", "bad2.txt"]
    put_files(stack.cfg, "redrive/r/", inputs)
    job = stack.run_until_done(start(stack, endpoint, "redrive/r/", {
        "mini_batch_size": "2", "run_max_try": "1", "isolate_failures": "false"}).job_id)
    assert (job.state, job.batches_failed, job.items_failed) == (jobs.SUCCEEDED, 1, 2)
    kept = {r.index: r for r in batches.iter_batches(stack.cfg, job.job_id) if r.status == jobs.SUCCEEDED}

    fixed = tmp_path / "fixed"
    fixed.mkdir()
    (fixed / "score.py").write_text(echo("redrive"))
    endpoints.update(stack.cfg, endpoint, fixed)
    client = Client(stack.cfg)
    assert client.redrive(job.job_id) == [1]  # [a b] [bad1 bad2] [c d] [e]
    job = stack.run_until_done(job.job_id)
    assert job.state == jobs.SUCCEEDED
    assert read_output(stack.cfg, job).splitlines() == sorted(inputs)
    assert (job.items_succeeded, job.items_failed, job.batches_failed) == (7, 0, 0)
    assert read_output(stack.cfg, job, "failures.jsonl") == ""
    after = {r.index: r for r in batches.iter_batches(stack.cfg, job.job_id)}
    assert all(after[i] == record for i, record in kept.items())  # succeeded parts untouched
    with pytest.raises(ConflictError, match="no failed mini-batch"):
        client.redrive(job.job_id)


def test_logs_hold_the_scripts_own_print_and_logging(stack, make_endpoint):
    endpoint = make_endpoint(script("chatty", """
import logging
print('scoring', len(mini_batch), 'files')
logging.getLogger('mine').warning('a warning from the script')
"""), name="chatty")
    put_files(stack.cfg, "chatty/r/", ["a.txt", "b.txt", "c.txt"])
    job = stack.run_until_done(start(stack, endpoint, "chatty/r/", {"mini_batch_size": "2"}).job_id)
    lines = [json.loads(line) for line in Client(stack.cfg).logs(job.job_id, minibatch=1)]
    assert {"job_id": job.job_id, "minibatch": 1, "message": "scoring 1 files"}.items() <= next(
        line for line in lines if line["message"].startswith("scoring")).items()
    assert any(line["message"] == "a warning from the script" and line["level"] == "WARNING" for line in lines)
    assert all(line["job_id"] == job.job_id and line["minibatch"] == 1 for line in lines)
    assert len([line for line in Client(stack.cfg).logs(job.job_id) if line]) > len(lines)


@pytest.mark.parametrize("queue, message", [
    ("PlannerDeadLetterQueue", {"action": "tick", "tick": 1, "token": "x", "since": 0}),
    ("PlannerDeadLetterQueue", {"action": "listing", "token": "x"}),  # a continuation of the listing
    ("PlannerDeadLetterQueue", {"action": "tick"}),  # unreadable: it failed in the planner for that
    ("FinalizeDeadLetterQueue", {}),
])
def test_a_planner_or_aggregator_that_gives_up_still_ends_the_job(stack, make_endpoint, queue, message):
    name = f"gives{len(queue)}{len(message)}"
    endpoint = make_endpoint(echo(name), name=name)
    put_files(stack.cfg, f"{endpoint}/r/", ["a.txt", "b.txt", "c.txt"])
    job = start(stack, endpoint, f"{endpoint}/r/", {"mini_batch_size": "1", "max_inflight_batches": "1"})
    stack.plan(job.job_id)
    aws.client("sqs").send_message(QueueUrl=stack.source("FailureRecorderFunction", queue).queue_url,
                                   MessageBody=json.dumps({"job_id": job.job_id, **message}))
    stack.deliver("FailureRecorderFunction")
    job = stack.run_until_done(job.job_id)
    assert job.state == jobs.FAILED
    assert ("planner failed" if queue.startswith("Planner") else "collating the output failed") in job.reason


def test_a_slow_init_does_not_count_against_run_invocation_timeout(stack, make_endpoint):
    endpoint = make_endpoint(echo("slowinit").replace("def init():\n", "def init():\n    import time\n    time.sleep(3)\n"),
                             name="slowinit")
    put_files(stack.cfg, "slowinit/r/", ["a.txt", "b.txt"])
    job = stack.run_until_done(start(stack, endpoint, "slowinit/r/", {"run_invocation_timeout": "1",
                                                                     "run_max_try": "1"}).job_id)
    assert (job.state, job.items_succeeded, job.retries) == (jobs.SUCCEEDED, 2, 0)


def test_an_init_that_raises_fails_the_attempt_with_its_error(stack, make_endpoint):
    endpoint = make_endpoint(echo("badinit").replace("def init():\n", "def init():\n    raise ImportError('no module named torch')\n"),
                             name="badinit")
    put_files(stack.cfg, "badinit/r/", ["a.txt"])
    job = stack.run_until_done(start(stack, endpoint, "badinit/r/", {"run_max_try": "2"}).job_id)
    [failure] = failures_of(stack, job)
    assert (failure["error_type"], failure["message"], failure["attempts"]) == ("ImportError", "no module named torch", 2)
