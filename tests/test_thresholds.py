"""The failure thresholds, pure: what a job's counts cross, mid-job and once all are done."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from parallelrun.core import thresholds
from parallelrun.core.settings import RunSettings


@dataclass
class Counts:
    settings: RunSettings = field(default_factory=RunSettings)
    items_failed: int = 0
    batches_failed: int = 0
    total_batches: int | None = 10


@pytest.mark.parametrize("settings, counts, phrase", [
    ({}, dict(items_failed=50, batches_failed=5), ""),
    ({"error_threshold": 2}, dict(items_failed=2), ""),
    ({"error_threshold": 2}, dict(items_failed=3), "error_threshold: 3 inputs failed, more than the 2 allowed"),
    ({"allowed_failed_count": 1}, dict(batches_failed=2), "allowed_failed_count: 2 mini-batches"),
    ({"allowed_failed_percent": 10.0}, dict(batches_failed=1), ""),
    ({"allowed_failed_percent": 10.0}, dict(batches_failed=2), "allowed_failed_percent: 20.0%"),
])
def test_judge(settings, counts, phrase):
    reason = thresholds.judge(Counts(RunSettings(**settings), **counts))
    assert phrase in reason and bool(reason) == bool(phrase)


def test_the_percent_is_not_judged_mid_job():
    job = Counts(RunSettings(allowed_failed_percent=10.0), batches_failed=5)
    assert thresholds.crossed_mid_job(job) == ""
    assert thresholds.judge(job).startswith("allowed_failed_percent: 50.0%")


def test_the_inputs_threshold_is_named_before_the_mini_batches_one():
    job = Counts(RunSettings(error_threshold=0, allowed_failed_count=0), items_failed=1, batches_failed=1)
    assert thresholds.crossed_mid_job(job).startswith("error_threshold: 1 inputs failed")


def test_a_job_of_no_mini_batches_fails_no_percent():
    assert thresholds.judge(Counts(RunSettings(allowed_failed_percent=0.0), total_batches=0)) == ""
    assert thresholds.judge(Counts(RunSettings(allowed_failed_percent=0.0), total_batches=None)) == ""


@pytest.mark.parametrize("settings, watched", [
    ({}, False), ({"allowed_failed_percent": 0.0}, False), ({"error_threshold": 0}, True),
    ({"allowed_failed_count": 3}, True),
])
def test_watched(settings, watched):
    assert thresholds.watched(RunSettings(**settings)) is watched
