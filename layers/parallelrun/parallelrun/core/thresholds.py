"""A job's failure thresholds (``error_threshold``, ``allowed_failed_count``,
``allowed_failed_percent``): whether its counts have crossed one, and the reason a job that did
ends FAILED with. Pure, so every threshold is tested without a stack; the job's lifecycle
(:mod:`parallelrun.pipeline.lifecycle`) acts on the answers.
"""

from __future__ import annotations

from typing import Protocol

from parallelrun.core.settings import RunSettings


class Counted(Protocol):
    """What the thresholds read of a job: its settings and counts (a stored job is one)."""

    settings: RunSettings
    items_failed: int
    batches_failed: int
    total_batches: int | None


def watched(settings: RunSettings) -> bool:
    """True when a threshold can be crossed before the job completes, so that every counted
    failure is worth a look at the job's counters."""
    return settings.error_threshold != -1 or settings.allowed_failed_count != -1


def crossed_mid_job(job: Counted) -> str:
    """The threshold a running job has already crossed, as a reason; "" if none. (The percent
    of failed mini-batches is only known once all are done.)"""
    s = job.settings
    if s.error_threshold != -1 and job.items_failed > s.error_threshold:
        return f"error_threshold: {job.items_failed} inputs failed, more than the {s.error_threshold} allowed"
    if s.allowed_failed_count != -1 and job.batches_failed > s.allowed_failed_count:
        return (f"allowed_failed_count: {job.batches_failed} mini-batches failed, "
                f"more than the {s.allowed_failed_count} allowed")
    return ""


def judge(job: Counted) -> str:
    """The threshold a job whose mini-batches are all done has crossed, as the reason it
    failed; "" if it crossed none."""
    crossed = crossed_mid_job(job)
    if crossed:
        return crossed
    total = job.total_batches or 0
    if total and 100.0 * job.batches_failed / total > job.settings.allowed_failed_percent:
        return (f"allowed_failed_percent: {100.0 * job.batches_failed / total:.1f}% of mini-batches "
                f"failed, more than the {job.settings.allowed_failed_percent:g}% allowed")
    return ""
