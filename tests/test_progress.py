"""The progress bar and status lines of :mod:`parallelrun.client.progress`, on job records built
here (no stack)."""

from __future__ import annotations

import dataclasses

from parallelrun.client.progress import progress_bar, status_lines
from parallelrun.core.settings import RunSettings
from parallelrun.store import jobs


def record(**changes) -> jobs.JobRecord:
    job = jobs.JobRecord(job_id="j-1", endpoint="digits", deployment={}, settings=RunSettings(),
                   input_uri="s3://in/digits/", output_uri="s3://out/j-1/", created_at=100.0)
    return dataclasses.replace(job, **changes)


def test_status_lines_of_a_job_being_planned_say_what_is_not_known_yet():
    lines = status_lines(record(state=jobs.RUNNING))
    assert lines[0] == "job:        j-1"
    assert "batches:    0/? done (0 succeeded, 0 failed)" in lines
    assert "inputs:     0/? done (0 succeeded, 0 failed), 0 retries" in lines
    assert not any(line.startswith(("duration", "reused")) for line in lines)


def test_status_lines_of_an_ended_job_give_its_reason_counts_reuse_and_duration():
    job = record(state=jobs.FAILED, reason="error_threshold crossed", total_batches=4, total_items=40,
                 batches_succeeded=3, batches_failed=1, items_succeeded=30, items_failed=10, retries=2,
                 batches_reused=1, started_at=101.0, ended_at=112.5)
    lines = status_lines(job)
    assert f"state:      {jobs.FAILED} (error_threshold crossed)" in lines
    assert "batches:    4/4 done (3 succeeded, 1 failed)" in lines
    assert "inputs:     40/40 done (30 succeeded, 10 failed), 2 retries" in lines
    assert "reused:     1 mini-batch(es) scored by an earlier job (allow_reuse)" in lines
    assert lines[-1] == "duration:   12.5 s"
    whole = status_lines(record(reused_from="j-0", batches_reused=3))
    assert "reused:     the output of job j-0 (same deployment, settings and inputs)" in whole


def test_the_progress_bar_follows_the_job_and_closes_when_it_ends(capsys):
    update = progress_bar("j-1")
    update(record(state=jobs.RUNNING))
    update(record(state=jobs.RUNNING, total_items=10, items_succeeded=4, items_failed=1))
    update(record(state=jobs.SUCCEEDED, total_items=10, items_succeeded=9, items_failed=1))
    drawn = capsys.readouterr().err
    assert "j-1" in drawn and "9/10" not in drawn and "10/10" in drawn and "succeeded, 1 failed" in drawn
