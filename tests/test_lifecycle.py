"""The job's lifecycle, event by event: on in-process moto for the events that read or write the
job, pure for the final state's decision."""

from __future__ import annotations

import collections
import json
from typing import Any

import pytest

from parallelrun import aws
from parallelrun.core.settings import RunSettings
from parallelrun.pipeline import lifecycle, scheduling
from parallelrun.store import batches, jobs


def _job(stack: Any, job_id: str, total: int = 2, settings: RunSettings | None = None,
         state: str = jobs.RUNNING, schedule: str | None = None) -> jobs.JobRecord:
    job = jobs.JobRecord(job_id=job_id, endpoint="e", deployment={}, settings=settings or RunSettings(),
                   input_uri="s3://b/p/", output_uri=f"s3://{stack.cfg.artifacts_bucket}/jobs/{job_id}/output/",
                   state=state, total_batches=total, schedule=schedule)
    jobs.create(stack.cfg, job)
    batches.open_shards(stack.cfg, job_id, total)
    return job


def _record(index: int, items_failed: int = 0) -> batches.BatchRecord:
    return batches.BatchRecord(index=index, status=jobs.FAILED if items_failed == 2 else jobs.SUCCEEDED, items=2,
                            items_succeeded=2 - items_failed, items_failed=items_failed, attempt=1)


@pytest.fixture
def requested(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The jobs whose aggregation was requested."""
    asked: list[str] = []
    monkeypatch.setattr(lifecycle, "job_complete", lambda cfg, job_id: asked.append(job_id))
    return asked


def test_the_last_recorded_mini_batch_requests_the_aggregation(stack, unique, requested):
    job = _job(stack, f"lc-{unique}")
    batches.commit_batch(stack.cfg, job.job_id, _record(0))
    lifecycle.batch_recorded(stack.cfg, job, 0)
    lifecycle.batch_recorded(stack.cfg, job, 0)  # a duplicate delivery finds the same
    batches.commit_batch(stack.cfg, job.job_id, _record(1))
    lifecycle.batch_recorded(stack.cfg, job, 1)
    assert requested == [job.job_id]


def test_a_crossed_threshold_stops_the_job(stack, unique, requested):
    job = _job(stack, f"lc-{unique}", total=5, settings=RunSettings(allowed_failed_count=0))
    batches.commit_batch(stack.cfg, job.job_id, _record(3, items_failed=2))
    lifecycle.batch_recorded(stack.cfg, job, 3)
    stopped = jobs.get(stack.cfg, job.job_id)
    assert (stopped.state, stopped.outcome) == (jobs.FINALIZING, jobs.FAILED)
    assert stopped.reason.startswith("allowed_failed_count: 1 mini-batches failed")
    assert requested == [job.job_id]  # the aggregator collates what succeeded


def test_check_job_leaves_an_incomplete_or_ended_job_alone(stack, unique, requested):
    running = _job(stack, f"lc-{unique}-r", total=3)
    ended = _job(stack, f"lc-{unique}-e", total=0, state=jobs.SUCCEEDED)
    lifecycle.check_job(stack.cfg, running.job_id)
    lifecycle.check_job(stack.cfg, ended.job_id)
    assert requested == []


def test_cancel_stops_once(stack, unique, requested):
    job = _job(stack, f"lc-{unique}")
    assert lifecycle.cancel(stack.cfg, job.job_id)
    assert not lifecycle.cancel(stack.cfg, job.job_id)  # already finalizing
    stopped = jobs.get(stack.cfg, job.job_id)
    assert (stopped.state, stopped.outcome, stopped.reason) == (jobs.FINALIZING, jobs.CANCELED, "canceled by user")
    assert requested == [job.job_id]


def test_job_complete_asks_the_aggregator(stack, unique):
    stack.purge()
    lifecycle.job_complete(stack.cfg, f"lc-{unique}")
    [message] = aws.client("sqs").receive_message(QueueUrl=stack.cfg.finalize_queue_url).get("Messages", [])
    assert json.loads(message["Body"]) == {"job_id": f"lc-{unique}"}
    stack.purge()


def test_one_aggregation_claims_the_job(stack, unique):
    incomplete = _job(stack, f"lc-{unique}-i", total=1)
    assert lifecycle.aggregation_claimed(stack.cfg, incomplete.job_id) is None  # a stray request
    job = _job(stack, f"lc-{unique}", total=1)
    batches.commit_batch(stack.cfg, job.job_id, _record(0))
    claimed = lifecycle.aggregation_claimed(stack.cfg, job.job_id)
    assert claimed is not None and claimed.state == jobs.FINALIZING
    assert lifecycle.aggregation_claimed(stack.cfg, job.job_id) is None  # the lease holds
    lifecycle.aggregated(stack.cfg, claimed, jobs.SUCCEEDED, "", rows=2, ended=1.0)
    done = jobs.get(stack.cfg, job.job_id)
    assert (done.state, done.ended_at) == (jobs.SUCCEEDED, 1.0)
    assert lifecycle.aggregation_claimed(stack.cfg, job.job_id) is None  # ended: nothing to collate


def test_an_ended_run_hands_its_schedule_over(stack, unique, monkeypatch):
    handed: list[str] = []
    monkeypatch.setattr(scheduling, "run_ended", lambda cfg, job: handed.append(job.job_id))
    job = _job(stack, f"lc-{unique}", total=1, schedule="nightly")
    lifecycle.aggregation_gave_up(stack.cfg, job.job_id)
    assert jobs.get(stack.cfg, job.job_id).state == jobs.FAILED
    assert lifecycle.aggregation_claimed(stack.cfg, job.job_id) is None  # a redelivery hands over again
    lifecycle.job_ended(stack.cfg, _job(stack, f"lc-{unique}-plain", total=0, state=jobs.SUCCEEDED))
    assert handed == [job.job_id, job.job_id]


def _counted(outcome: str | None = None, reason: str = "", **settings: Any) -> jobs.JobRecord:
    return jobs.JobRecord(job_id="j", endpoint="e", deployment={}, settings=RunSettings(**settings), input_uri="s3://b/p/",
                    output_uri="s3://b/o/", total_batches=10, batches_failed=2, outcome=outcome, reason=reason)


@pytest.mark.parametrize("job, errors, unwritten, expected", [
    (_counted(), {}, "", (jobs.SUCCEEDED, "")),
    (_counted(), {"ValueError": 3}, "", (jobs.SUCCEEDED, "")),  # errors within the thresholds
    (_counted(allowed_failed_percent=10.0), {"ValueError": 3, "KeyError": 1}, "",
     (jobs.FAILED, "allowed_failed_percent: 20.0% of mini-batches failed, more than the 10% allowed; "
                   "most common error: ValueError (3 inputs)")),
    (_counted(), {}, "rows left out", (jobs.FAILED, "rows left out")),
    (_counted(jobs.CANCELED, "canceled by user"), {"ValueError": 1}, "rows left out",
     (jobs.CANCELED, "canceled by user; rows left out")),
    (_counted(jobs.FAILED, "error_threshold: 4 inputs failed"), {"ValueError": 4}, "",
     (jobs.FAILED, "error_threshold: 4 inputs failed; most common error: ValueError (4 inputs)")),
])
def test_end_state(job, errors, unwritten, expected):
    assert lifecycle.end_state(job, collections.Counter(errors), unwritten) == expected
