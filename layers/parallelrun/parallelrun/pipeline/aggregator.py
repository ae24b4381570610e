"""The aggregator: once a job's counters are complete, collate its parts into the job's files.

It runs once per job: a conditional state change (RUNNING → FINALIZING,
:func:`parallelrun.pipeline.lifecycle.aggregation_claimed`) picks the winner among duplicate
requests (DESIGN invariant 3). A winner that dies keeps its request message, which comes back
and takes over once the lease has run out; the output's key is fixed, so the retry writes the
same file.

No invocation's work grows with the job (invariant 7): the mini-batches are collated in ranges
of the stack's ``aggregate_batches_per_invocation`` (:mod:`parallelrun.pipeline.collation`). A
job of one range writes its files at once. A larger job's ranges are collated in parallel, one
message each on the finalize queue, each into objects of its own, recorded when written
(:mod:`parallelrun.store.collated`), so a range that dies is collated again by its message's
next delivery and a range done is never done twice; whoever records the last range joins them
server-side (:func:`parallelrun.aws.s3.join`) into the job's files and sets the final state.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import time
from typing import Any

from parallelrun import aws
from parallelrun.aws import s3, sqs
from parallelrun.aws.config import StackConfig
from parallelrun.core import logs, pricing, usage
from parallelrun.core.datasets import split_s3_uri
from parallelrun.core.errors import ParallelRunError
from parallelrun.pipeline import collation, lifecycle
from parallelrun.store import collated, jobs, keys, reuse, schedules

log = logging.getLogger("parallelrun.pipeline.aggregator")


def handle_event(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Aggregation requests and ranges to collate; a failure raises, so that the message comes back."""
    return sqs.handle_records(event, context, usage.AGGREGATOR, handle_record, report_failures=False)


def handle_record(cfg: StackConfig, record: dict[str, Any], context: Any = None) -> None:
    message = sqs.finalize_message(record["body"])
    with logs.context(message.job_id):
        if isinstance(message, sqs.CollateRange):
            collate_one(cfg, message)
        else:
            finalize(cfg, message.job_id)


def ranges(job: jobs.JobRecord) -> list[tuple[int, int]]:
    """The mini-batch ranges ``[start, end)`` of the job's aggregation (one, for no mini-batch)."""
    total, size = job.total_batches or 0, job.range_batches or max(1, job.total_batches or 1)
    return [(start, min(start + size, total)) for start in range(0, total, size)] or [(0, 0)]


def finalize(cfg: StackConfig, job_id: str) -> None:
    """Collate the job's output, failures and summary (or start its ranges), then set its final state."""
    job = lifecycle.aggregation_claimed(cfg, job_id)
    if job is None:
        return
    spans = ranges(job)
    if len(spans) == 1:
        started = time.time()
        try:
            summary = collation.collate_range(cfg, job, 0, *spans[0], collation.job_files(job))
        except s3.OutputTaken as taken:  # the job cannot succeed
            finish(cfg, job, [], started, taken=str(taken))
            return
        finish(cfg, job, [summary], started)
        return
    assert job.aggregation is not None
    refused = sqs.send_in_tens(cfg.finalize_queue_url, [
        (str(number), sqs.CollateRange(job_id, job.aggregation, number).body()) for number in range(1, len(spans))])
    if refused:
        raise ParallelRunError(f"SQS refused ranges {refused} of job {job_id}'s aggregation five times")
    logs.event(log, "collating in ranges", ranges=len(spans), range_batches=job.range_batches)
    collate_one(cfg, sqs.CollateRange(job_id, job.aggregation, 0), job)


def collate_one(cfg: StackConfig, message: sqs.CollateRange, job: jobs.JobRecord | None = None) -> None:
    """Collate one range of a large job into objects of its own, once; whoever finds every
    range recorded joins them."""
    job = job or jobs.get(cfg, message.job_id)
    if job.aggregation != message.aggregation:
        return  # a redrive started another aggregation: this one is over
    if job.state != jobs.FINALIZING:
        if job.state in jobs.TERMINAL:  # its joiner may have died between the final state and the cleanup
            lifecycle.job_ended(cfg, job)
            collated.drop_objects(cfg, job.job_id, message.aggregation)
        return
    spans = ranges(job)
    recorded = {summary.number for summary in collated.summaries(cfg, job.job_id, message.aggregation)}
    if message.number not in recorded:
        start, end = spans[message.number]
        objects = collation.Destination(
            cfg.artifacts_bucket, keys.range_object_key(job.job_id, message.aggregation, message.number, collated.RANGE_OUTPUT),
            keys.range_object_key(job.job_id, message.aggregation, message.number, collated.RANGE_FAILURES),
            with_header=False)
        summary = collation.collate_range(cfg, job, message.number, start, end, objects)
        # Kept before the range is recorded: once it is, the join may read the job's usage.
        jobs.keep_usage(cfg, job.job_id)
        collated.record(cfg, job.job_id, message.aggregation, summary)
        logs.event(log, "collated a range", level=logging.DEBUG, range=message.number, rows=summary.rows)
    done = collated.summaries(cfg, job.job_id, message.aggregation)
    if len(done) == len(spans) and jobs.claim_join(cfg, job.job_id, message.aggregation, lifecycle.LEASE_SECONDS):
        join(cfg, job, done)


def join(cfg: StackConfig, job: jobs.JobRecord, summaries: list[collated.RangeSummary]) -> None:
    """The ranges' objects into the job's files, server-side, then its final state."""
    started = time.time()
    bucket, prefix = split_s3_uri(job.output_uri)

    def stored(summary: collated.RangeSummary, name: str, size: int) -> s3.Stored:
        return s3.Stored(cfg.artifacts_bucket, keys.range_object_key(job.job_id, str(job.aggregation),
                                                                     summary.number, name), size)

    late = b""  # parquet: failure lines for ranges whose columns differ from the first range's
    try:
        if job.settings.output_action == "append_row":
            output_key = prefix + job.settings.output_file_name
            if job.settings.output_format == "parquet":
                late = collation.join_parquet(bucket, output_key, job.job_id,
                                              [(s, stored(s, collated.RANGE_OUTPUT, s.output_bytes)) for s in summaries])
            else:
                header = next((s.header for s in summaries if s.header), None)
                head: list[s3.Source] = [header.encode() + b"\n"] if header else []
                s3.join(bucket, output_key, head + [stored(s, collated.RANGE_OUTPUT, s.output_bytes)
                                                   for s in summaries if s.output_bytes], job.job_id)
        s3.join(bucket, prefix + collation.FAILURES_FILE, [stored(s, collated.RANGE_FAILURES, s.failures_bytes)
                                                 for s in summaries if s.failures_bytes] + ([late] if late else []),
                job.job_id)
    except s3.OutputTaken as taken:
        finish(cfg, job, [], started, taken=str(taken))
        return
    finish(cfg, job, summaries, started)
    collated.drop_objects(cfg, job.job_id, str(job.aggregation), summaries)


def finish(cfg: StackConfig, job: jobs.JobRecord, summaries: list[collated.RangeSummary], started: float,
           taken: str = "") -> None:
    """The collated ranges' sums: the job's summary, what a later identical job may reuse, and its
    final state; ``taken`` says why the job's files could not be written, if they could not."""
    rows = sum(s.rows for s in summaries)
    errors: collections.Counter[str] = collections.Counter()
    spent = usage.Tally()
    for summary in summaries:
        errors.update(summary.errors)
        spent.merge(summary.usage)
    state, reason = lifecycle.end_state(job, errors, taken or unwritten_reason(summaries))
    if state == jobs.SUCCEEDED and job.fingerprint and sum(s.reusable for s in summaries) == job.total_batches:
        reuse.remember_job(cfg, job.fingerprint, job.job_id, job.output_uri)
    if state == jobs.SUCCEEDED and job.schedule:
        schedules.mark_scored(cfg, job)  # before the state says so: the schedule's next run may follow at once
    ended = time.time()
    summary = build_summary(job, state, reason, rows, dict(errors), ended, ended - started)
    summary["cost"] = job_cost(cfg, job.job_id, spent)
    bucket, prefix = split_s3_uri(job.output_uri)
    try:
        s3.put_owned(bucket, prefix + "summary.json", json.dumps(summary, indent=2).encode(), job.job_id,
                     ContentType="application/json")
    except s3.OutputTaken as taken:
        state, reason = jobs.FAILED, f"{reason}; {taken}" if reason else str(taken)
    lifecycle.aggregated(cfg, job, state, reason, rows, ended)
    logs.event(log, "job finished", state=state, rows=rows, aggregate_seconds=round(ended - started, 3))


def unwritten_reason(summaries: list[collated.RangeSummary]) -> str:
    """Why rows are missing from the output ("" if none are): parquet parts whose columns differ
    from the first part's."""
    count = sum(s.unwritten_count for s in summaries)
    if not count:
        return ""
    first = next(reason for s in summaries for reason in s.unwritten)
    return (f"output_format=parquet: the rows of {count} mini-batch(es) are not in the output, "
            f"their columns differing from the first part's (first: {first}); return the same "
            "columns and types from every run()")


def job_cost(cfg: StackConfig, job_id: str, spent: usage.Tally) -> dict[str, Any]:
    """``summary.json``'s cost section: the mini-batch records' usage (in ``spent``), the job's
    usage items, and this aggregation's own, up to and including the writes that end the job."""
    for item in jobs.iter_usage(cfg, job_id):
        spent.add(item)
    spent.add(usage.take(including=[("s3", "PutObject", {}), ("dynamodb", "UpdateItem", {})]))
    return pricing.cost_section(spent.to_dict(), aws.region())


def build_summary(job: jobs.JobRecord, state: str, reason: str, rows: int, errors: dict[str, int],
                  ended: float, aggregate_seconds: float) -> dict[str, Any]:
    """What ``summary.json`` says: state, counts, timings and the settings used."""
    # A table's inputs are records, known once read: then the total is what was read.
    total_items = job.total_items if job.total_items is not None else job.items_succeeded + job.items_failed
    return {
        "job_id": job.job_id,
        "state": state,
        "reason": reason,
        "endpoint": job.endpoint,
        "deployment": job.deployment,
        "input": job.input_uri,
        "output": job.output_uri + job.settings.output_file_name
        if job.settings.output_action == "append_row" else None,
        "counts": {
            "batches": {"total": job.total_batches or 0, "succeeded": job.batches_succeeded,
                        "failed": job.batches_failed},
            "items": {"total": total_items, "succeeded": job.items_succeeded, "failed": job.items_failed},
            "retries": job.retries,
            "reused_batches": job.batches_reused,
            "rows": rows,
        },
        "errors": errors,
        "timings": {
            "created_at": job.created_at,
            "started_at": job.started_at,
            "ended_at": ended,
            "duration_seconds": round(ended - job.created_at, 3),
            "aggregate_seconds": round(aggregate_seconds, 3),
        },
        "settings": dataclasses.asdict(job.settings),
    }
