"""One range of a job's mini-batches collated: its parts, in order, into an output object and
its failure lines into another, with what they hold (:class:`parallelrun.store.collated.RangeSummary`).

A job of one range writes the job's files themselves; a larger job's ranges each write objects of
their own, joined at the end by :mod:`parallelrun.pipeline.aggregator`. Either way one range's
work is bounded by the stack's ``aggregate_batches_per_invocation`` whatever the size of the job
(DESIGN invariant 7), and memory by the fetch-ahead and one upload part (invariant 3).
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from parallelrun import aws
from parallelrun.aws import s3
from parallelrun.aws.config import StackConfig
from parallelrun.core import results, usage
from parallelrun.core.datasets import split_s3_uri
from parallelrun.store import batches, collated, jobs, reuse

FAILURES_FILE = "failures.jsonl"
UNWRITTEN = "OutputSchemaMismatch"  # parquet output: a part whose columns differ from the first part's
UNWRITTEN_KEPT = 3  # reasons a range keeps, for the job's reason; all are counted
# Mini-batches whose objects are fetched at once, ahead of the one being written. A small GET
# from Lambda waits 15-30 ms (DESIGN §6): one after another, 20,000 parts take 5-10 minutes;
# sixteen at a time take a sixteenth, holding at most sixteen parts in memory.
FETCH_AHEAD = 16


@dataclass(frozen=True)
class Destination:
    """Where a range's output and failure lines go: the job's files (``owner`` set: written only
    as :func:`parallelrun.aws.s3.write_owned` allows), or objects of the range's own."""

    bucket: str
    output_key: str
    failures_key: str
    owner: str = ""
    with_header: bool = True  # csv: the header at the top (the job's files; a join adds it once otherwise)


def job_files(job: jobs.JobRecord) -> Destination:
    """The job's own output file and ``failures.jsonl``, in its output folder."""
    bucket, prefix = split_s3_uri(job.output_uri)
    return Destination(bucket, prefix + job.settings.output_file_name, prefix + FAILURES_FILE, owner=job.job_id)


def collate_range(cfg: StackConfig, job: jobs.JobRecord, number: int, start: int, end: int,
                  to: Destination, upload_part_size: int = s3.UPLOAD_PART_SIZE) -> collated.RangeSummary:
    """Stream the parts of mini-batches ``start`` ≤ index < ``end``, in order, to ``to``; each
    wholly successful mini-batch is remembered for reuse by later jobs."""
    summary = collated.RangeSummary(number, start, end)
    appended = job.settings.output_action == "append_row"
    output = s3.S3StreamWriter(to.bucket, to.output_key, upload_part_size, to.owner)
    failures = s3.S3StreamWriter(to.bucket, to.failures_key, upload_part_size, to.owner)
    table = results.ParquetCollator(output) if appended and job.settings.output_format == "parquet" else None
    reusable: list[tuple[str, str, int, int, str | None]] = []

    def get(key: str | None) -> bytes | None:
        return s3.get(cfg.artifacts_bucket, key) if key else None

    def objects(record: batches.BatchRecord) -> tuple[bytes | None, bytes | None]:
        return get(record.part_key if appended else None), get(record.failures_key)

    try:
        for record, (body, failed) in fetched_in_order(batches.iter_batches(cfg, job.job_id, start, end), objects,
                                                       FETCH_AHEAD):
            summary.usage.add(record.usage)
            written = body is None or _add_part(summary, output, table, failures, record, body,
                                                job.settings.output_format, to.with_header)
            entry = reusable_entry(record)
            if entry is not None and written:
                reusable.append(entry)
            if failed is not None:
                failures.write(failed)
                summary.errors.update(json.loads(line)["error_type"] for line in failed.splitlines() if line)
        if appended and (to.owner or output.size or (table is not None and table.writer is not None)):
            if table is not None:
                table.close()
            output.close()
        if to.owner or failures.size:
            failures.close()
    except BaseException:
        output.abort()
        failures.abort()
        raise
    summary.output_bytes, summary.failures_bytes = output.size, failures.size
    summary.reusable = len(reusable)
    reuse.remember(cfg, job.job_id, reusable)
    return summary


def _add_part(summary: collated.RangeSummary, output: s3.S3StreamWriter, table: results.ParquetCollator | None,
              failures: s3.S3StreamWriter, record: batches.BatchRecord, body: bytes, output_format: str,
              with_header: bool) -> bool:
    """One mini-batch's part into the range's output; False if it was left out (a parquet part
    whose columns differ from the range's first: its rows are counted and explained in the
    failure lines)."""
    if output_format == "csv" and record.header and summary.header is None:
        summary.header = record.header
        if with_header:
            output.write(record.header.encode() + b"\n")  # the header once, at the top
    if table is None:
        output.write(body)
        summary.rows += record.rows
        return True
    try:
        summary.rows += table.add(record.index, body)
        return True
    except results.SchemaMismatch as mismatch:
        summary.unwritten_count += 1
        if len(summary.unwritten) < UNWRITTEN_KEPT:
            summary.unwritten.append(str(mismatch))
        failures.write(unwritten_line(record.index, record.attempt, str(mismatch)).encode())
        summary.errors[UNWRITTEN] += record.items_succeeded
        return False


def join_parquet(bucket: str, key: str, owner: str, ranges: list[tuple[collated.RangeSummary, s3.Stored]]) -> bytes:
    """The ranges' parquet objects into one file at ``key``; returns the failure lines of ranges
    left out, their columns differing from the first range's (their rows are taken out of their
    summaries). Parquet cannot be joined byte by byte, each file ending in a footer of its own:
    the row groups are copied one at a time, so memory holds one, while the time grows with the
    output's bytes (not with its mini-batches)."""
    import pyarrow.parquet as pq

    from parallelrun.core import tabular

    output = s3.S3StreamWriter(bucket, key, owner=owner)
    table = results.ParquetCollator(output)
    late: list[str] = []
    try:
        for summary, source in ranges:
            if not summary.output_bytes:
                continue
            parquet = pq.ParquetFile(tabular.RangedFile(aws.range_reader(source.bucket, source.key), source.size))
            for group in range(parquet.num_row_groups):
                try:
                    table.add_table(summary.start, parquet.read_row_group(group))
                except results.SchemaMismatch as mismatch:  # a range's row groups share its first part's columns
                    message = f"mini-batches {summary.start}-{summary.end - 1}: {mismatch}"
                    summary.unwritten_count += 1
                    summary.unwritten.append(message)
                    summary.errors[UNWRITTEN] += summary.rows
                    summary.rows = 0
                    late.append(unwritten_line(None, None, message))
                    break
        table.close()
        output.close()
    except BaseException:
        output.abort()
        raise
    return "".join(late).encode()


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


def unwritten_line(minibatch: int | None, attempts: int | None, message: str) -> str:
    """A ``failures.jsonl`` line for rows that could not join the output."""
    return json.dumps({"input": None, "minibatch": minibatch, "attempts": attempts,
                       "error_type": UNWRITTEN, "message": message, "traceback": [], "worker": "aggregator"}) + "\n"
