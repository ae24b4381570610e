"""The aggregator: once a job's counters are complete, collate its parts into one file.

It runs once per job: a conditional state change (RUNNING → FINALIZING,
:func:`parallelrun.pipeline.lifecycle.aggregation_claimed`) picks the winner among duplicate
requests (DESIGN invariant 3). A winner that dies keeps its request message, which
comes back and takes over once the lease has run out; the output's key is fixed, so the retry
writes the same file. Parts are streamed into a multipart upload, so memory holds one upload
part (about 8 MiB) whatever the size of the output; for parquet output, also one row group
of parts being written (see :mod:`parallelrun.core.results`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from parallelrun import aws
from parallelrun.aws import s3, sqs
from parallelrun.aws.config import StackConfig
from parallelrun.core import logs, pricing, results, usage
from parallelrun.core.datasets import split_s3_uri
from parallelrun.pipeline import lifecycle
from parallelrun.store import batches, jobs, reuse, schedules

log = logging.getLogger("parallelrun.pipeline.aggregator")
UNWRITTEN = "OutputSchemaMismatch"  # parquet output: a part whose columns differ from the first part's
# Mini-batches whose objects are fetched at once, ahead of the one being written. A small GET
# from Lambda waits 15-30 ms (DESIGN §6): one after another, 100,000 parts take 25-50 minutes,
# past Lambda's 15; sixteen at a time take a sixteenth, holding at most sixteen parts in memory.
FETCH_AHEAD = 16


def handle_event(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Aggregation requests; a failure raises, so that the request comes back."""
    return sqs.handle_records(event, context, usage.AGGREGATOR, handle_record, report_failures=False)


def handle_record(cfg: StackConfig, record: dict[str, Any], context: Any = None) -> None:
    job_id = sqs.AggregationRequest.parse(record["body"]).job_id
    with logs.context(job_id):
        finalize(cfg, job_id)


def finalize(cfg: StackConfig, job_id: str) -> None:
    """Collate the job's output, failures and summary, then set its final state."""
    job = lifecycle.aggregation_claimed(cfg, job_id)
    if job is None:
        return
    started = time.time()
    spent = usage.Tally()
    try:
        rows, errors, reusable, unwritten = collate(cfg, job, spent)
    except s3.OutputTaken as taken:  # nothing of it is reused, and the job cannot succeed
        rows, errors, reusable, unwritten = 0, collections.Counter(), 0, str(taken)
    state, reason = lifecycle.end_state(job, errors, unwritten)
    if state == jobs.SUCCEEDED and reusable:
        # A second pass over the records: a list of a million mini-batches would grow with the job.
        reuse.remember(cfg, job_id, (entry for record in batches.iter_batches(cfg, job_id)
                                     if (entry := reusable_entry(record)) is not None))
        if job.fingerprint and reusable == job.total_batches:
            reuse.remember_job(cfg, job.fingerprint, job_id, job.output_uri)
    if state == jobs.SUCCEEDED and job.schedule:
        schedules.mark_scored(cfg, job)  # before the state says so: the schedule's next run may follow at once
    ended = time.time()
    summary = build_summary(job, state, reason, rows, dict(errors), ended, ended - started)
    summary["cost"] = job_cost(cfg, job_id, spent)
    bucket, prefix = split_s3_uri(job.output_uri)
    try:
        s3.put_owned(bucket, prefix + "summary.json", json.dumps(summary, indent=2).encode(), job_id,
                     ContentType="application/json")
    except s3.OutputTaken as taken:
        state, reason = jobs.FAILED, f"{reason}; {taken}" if reason else str(taken)
    lifecycle.aggregated(cfg, job, state, reason, rows, ended)
    logs.event(log, "job finished", state=state, rows=rows, aggregate_seconds=round(ended - started, 3))


def job_cost(cfg: StackConfig, job_id: str, spent: usage.Tally) -> dict[str, Any]:
    """``summary.json``'s cost section: the mini-batch records' usage (in ``spent``), the job's
    usage items, and this aggregation's own, up to and including the writes that end the job."""
    for item in jobs.iter_usage(cfg, job_id):
        spent.add(item)
    spent.add(usage.take(including=[("s3", "PutObject", {}), ("dynamodb", "UpdateItem", {})]))
    return pricing.cost_section(spent.to_dict(), aws.region())


def collate(cfg: StackConfig, job: jobs.JobRecord, spent: usage.Tally | None = None,
            upload_part_size: int = s3.UPLOAD_PART_SIZE) -> tuple[int, collections.Counter[str], int, str]:
    """Stream the parts, in mini-batch order, into the output file and the failure lines into
    ``failures.jsonl``; return the row count, the failed inputs by error type, how many wholly
    successful mini-batches a later job may reuse, and why rows were left out of the output
    ("" if none were). Each record's usage is added to ``spent``."""
    bucket, prefix = split_s3_uri(job.output_uri)
    rows = 0
    output = s3.S3StreamWriter(bucket, prefix + job.settings.output_file_name, upload_part_size, job.job_id)
    failures = s3.S3StreamWriter(bucket, prefix + "failures.jsonl", upload_part_size, job.job_id)
    table = results.ParquetCollator(output) if job.settings.output_format == "parquet" else None  # written only for append_row
    errors: collections.Counter[str] = collections.Counter()
    reusable, unwritten = 0, []
    appended = job.settings.output_action == "append_row"

    def get(key: str | None) -> bytes | None:
        return s3.get(cfg.artifacts_bucket, key) if key else None

    def objects(record: batches.BatchRecord) -> tuple[bytes | None, bytes | None]:
        return get(record.part_key if appended else None), get(record.failures_key)

    try:
        header_written = job.settings.output_format != "csv"
        for record, (body, failed) in fetched_in_order(batches.iter_batches(cfg, job.job_id), objects, FETCH_AHEAD):
            if spent is not None:
                spent.add(record.usage)
            reusable += reusable_entry(record) is not None
            if body is not None:
                if not header_written and record.header:
                    output.write(record.header.encode() + b"\n")  # csv: the header once, at the top
                    header_written = True
                if table is None:
                    output.write(body)
                    rows += record.rows
                else:
                    try:
                        rows += table.add(record.index, body)
                    except results.SchemaMismatch as mismatch:
                        unwritten.append(str(mismatch))
                        failures.write(_unwritten_line(record, str(mismatch)).encode())
                        errors[UNWRITTEN] += record.items_succeeded
            if failed is not None:
                failures.write(failed)
                errors.update(json.loads(line)["error_type"] for line in failed.splitlines() if line)
        if job.settings.output_action == "append_row":
            if table is not None:
                table.close()
            output.close()
        failures.close()
    except BaseException:
        output.abort()
        failures.abort()
        raise
    reason = ""
    if unwritten:
        reason = (f"output_format=parquet: the rows of {len(unwritten)} mini-batch(es) are not in the output, "
                  f"their columns differing from the first part's (first: {unwritten[0]}); return the same "
                  "columns and types from every run()")
    return rows, errors, reusable, reason


Item = TypeVar("Item")
Fetched = TypeVar("Fetched")


def fetched_in_order(items: Iterable[Item], fetch: Callable[[Item], Fetched],
                     ahead: int) -> Iterator[tuple[Item, Fetched]]:
    """Each item with ``fetch(item)``, in the items' order, with up to ``ahead`` fetches running
    at once: the items are read at most ``ahead`` beyond the one yielded, so memory is bounded
    by ``ahead`` fetched results whatever the count of items."""
    pending: collections.deque[tuple[Item, Any]] = collections.deque()
    with ThreadPoolExecutor(max_workers=ahead) as pool:
        for item in items:
            pending.append((item, pool.submit(usage.bind(fetch), item)))
            if len(pending) >= ahead:
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()


def reusable_entry(record: batches.BatchRecord) -> tuple[str, str, int, int, str | None] | None:
    """What a later job may take of a wholly successful mini-batch (see :mod:`parallelrun.store.reuse`)."""
    if record.part_key and record.fingerprint and not record.items_failed:
        return record.fingerprint, record.part_key, record.rows, record.items, record.header
    return None


def _unwritten_line(record: batches.BatchRecord, message: str) -> str:
    """A ``failures.jsonl`` line for a mini-batch whose rows could not join the output."""
    return json.dumps({"input": None, "minibatch": record.index, "attempts": record.attempt,
                       "error_type": UNWRITTEN, "message": message, "traceback": [], "worker": "aggregator"}) + "\n"


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
