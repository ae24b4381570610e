"""A job's lifecycle after planning, one function per event, called by whoever sees the event.

- :func:`batch_committed`: a worker recorded a mini-batch; :func:`batch_recorded`: it found
  one recorded by another delivery;
  :func:`check_job`: mini-batches were recorded some other way (reused, dead-lettered).
  Each may find a threshold crossed (the job is stopped FAILED) or the job complete.
- :func:`job_complete`: every mini-batch is recorded: the aggregation is requested.
- :func:`stop` / :func:`cancel`: the job ends before it completes; the aggregator collates
  what succeeded.
- :func:`aggregation_claimed`, :func:`end_state`, :func:`aggregated`: the aggregator's run,
  at most one at a time (DESIGN invariant 3), and the final state it sets;
  :func:`aggregation_gave_up`: it failed on every try.
- :func:`job_ended`: the job took its final state: a schedule's next run, or a pipeline's next
  step, may start.

The thresholds themselves are pure: :mod:`parallelrun.core.thresholds`.
"""

from __future__ import annotations

import collections
import logging
import time

from parallelrun.aws import sqs
from parallelrun.aws.config import StackConfig
from parallelrun.core import logs, thresholds
from parallelrun.store import batches, collated, jobs, keys
from parallelrun.pipeline import scheduling

log = logging.getLogger("parallelrun.pipeline.lifecycle")
LEASE_SECONDS = 900  # the aggregator function's timeout: past it, a FINALIZING holder is dead


def batch_committed(cfg: StackConfig, job: jobs.JobRecord, record: batches.BatchRecord, filled: bool) -> None:
    """This delivery's commit recorded ``record``: :func:`check_job`, when it can find something,
    with no read otherwise. The job can be complete only if the commit ``filled`` its shard (see
    :func:`batches.commit_batch`), and a threshold can be crossed only by a commit that counted a
    failure. Whoever fills a shard (or counts a failure) checks the whole job after its own
    commit, so the last commit of all always sees the job complete, and the last failure counted
    sees every failure before it."""
    if filled or (thresholds.watched(job.settings) and (record.items_failed or record.status == jobs.FAILED)):
        check_job(cfg, job.job_id)


def batch_recorded(cfg: StackConfig, job: jobs.JobRecord, index: int) -> None:
    """Mini-batch ``index`` of ``job`` was found recorded by another delivery, which may have
    died before its own check (:func:`batch_committed`): read the shard's counters to know
    whether :func:`check_job` can find something. The job is complete only if this shard is,
    and a threshold can be crossed only where a failure was counted."""
    shard = keys.shard_of(index)
    counts = batches.shard_counts(cfg, job.job_id, shard)
    full = counts["batches_succeeded"] + counts["batches_failed"] >= batches.shard_size(job.total_batches or 0, shard)
    if full or (thresholds.watched(job.settings) and (counts["items_failed"] or counts["batches_failed"])):
        check_job(cfg, job.job_id)


def check_job(cfg: StackConfig, job_id: str) -> None:
    """The job's counters moved: whoever sees a threshold crossed stops the job; whoever sees
    them complete asks for the aggregation (it runs once whatever the count)."""
    job = jobs.get(cfg, job_id)
    if job.state != jobs.RUNNING:
        return
    crossed = thresholds.crossed_mid_job(job)
    if crossed:
        stop(cfg, job_id, jobs.FAILED, crossed)
    elif job.complete:
        job_complete(cfg, job_id)


def job_complete(cfg: StackConfig, job_id: str) -> None:
    """Ask for the job's aggregation; asking twice is harmless."""
    sqs.send(cfg.finalize_queue_url, sqs.AggregationRequest(job_id))


def stop(cfg: StackConfig, job_id: str, outcome: str, reason: str) -> bool:
    """End a job before it completes (a threshold crossed, its planning failed, or canceled):
    nothing more is sent or run, and the aggregator collates what succeeded. False if the job
    had already ended."""
    stopped = jobs.transition(cfg, job_id, jobs.FINALIZING, (jobs.QUEUED, jobs.PLANNING, jobs.RUNNING),
                              outcome=outcome, reason=reason, finalize_until=0)
    if stopped:
        log.warning("job stopped", extra={"fields": {"outcome": outcome, "reason": reason}})
        job_complete(cfg, job_id)
    return stopped


def cancel(cfg: StackConfig, job_id: str) -> bool:
    """The user canceled the job; False if it had already ended."""
    return stop(cfg, job_id, jobs.CANCELED, "canceled by user")


def aggregation_claimed(cfg: StackConfig, job_id: str) -> jobs.JobRecord | None:
    """The job, if this aggregation request is the one to collate it: the counters are
    complete (or the job was stopped), and a conditional state change (RUNNING → FINALIZING,
    or a FINALIZING lease run out) picked this request among duplicates. None otherwise."""
    job = jobs.get(cfg, job_id)
    if job.state == jobs.RUNNING and not job.complete:
        return None  # a stray request: the counters are not complete
    if job.state in jobs.TERMINAL:
        # A redelivery after a crash past the final state: finish handing over and cleaning up.
        job_ended(cfg, job)
        if job.aggregation:
            collated.drop_objects(cfg, job_id, job.aggregation)
        return None
    if job.state not in (jobs.RUNNING, jobs.FINALIZING) or not jobs.claim_finalize(
            cfg, job_id, LEASE_SECONDS, cfg.limits.aggregate_batches_per_invocation):
        return None
    return jobs.get(cfg, job_id)


def end_state(job: jobs.JobRecord, errors: collections.Counter[str], unwritten: str) -> tuple[str, str]:
    """The job's final state and the reason: how it was stopped, else its thresholds; never
    a success when rows the script returned are missing from the output (``unwritten``, why);
    a failure names its most common error."""
    if job.outcome:
        state, reason = job.outcome, job.reason
    else:
        reason = thresholds.judge(job)
        state = jobs.FAILED if reason else jobs.SUCCEEDED
    if unwritten:
        state, reason = (jobs.FAILED, unwritten) if state == jobs.SUCCEEDED else (state, f"{reason}; {unwritten}")
    if state == jobs.FAILED and errors:
        error_type, count = errors.most_common(1)[0]
        reason += f"; most common error: {error_type} ({count} inputs)"
    return state, reason


def aggregated(cfg: StackConfig, job: jobs.JobRecord, state: str, reason: str, rows: int, ended: float) -> None:
    """The aggregation wrote the job's files: the job takes its final state."""
    jobs.transition(cfg, job.job_id, state, (jobs.FINALIZING,), ended_at=ended, reason=reason, rows=rows)
    job_ended(cfg, job)


def aggregation_gave_up(cfg: StackConfig, job_id: str) -> None:
    """The aggregation failed on every try: the job ends FAILED, saying so."""
    reason = "collating the output failed on every try; the aggregator's logs say why"
    if jobs.transition(cfg, job_id, jobs.FAILED, (jobs.RUNNING, jobs.FINALIZING), reason=reason,
                       ended_at=time.time()):
        logs.event(log, "job failed: its aggregation gave up", level=logging.ERROR)
        job_ended(cfg, jobs.get(cfg, job_id))


def job_ended(cfg: StackConfig, job: jobs.JobRecord) -> None:
    """The job took its final state: its schedule's next run need not wait for a takeover; a
    pipeline step's run hands on, in the planner (parallelrun.pipeline.chaining), whose role
    starts jobs. Called again by every redelivery past the final state, so it is never lost."""
    if job.schedule:
        scheduling.run_ended(cfg, job)
    if job.pipeline_run:
        sqs.send(cfg.planner_queue_url, sqs.StepEnded(job.job_id))
