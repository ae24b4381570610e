"""The worker: one SQS message is one mini-batch; fetch its inputs, run the script, commit.

Order matters for DESIGN invariant 1. The part object is written under a key that names the
attempt, then one conditional transaction records the batch and adds its counts. A worker that
dies before the transaction leaves nothing counted (the message comes back); one that dies after
it leaves a recorded batch, and the redelivered message is dropped without running again.

An attempt fails when ``run()`` raises, returns nothing usable, runs past
``run_invocation_timeout`` or its process dies; SQS delivers the message again (sooner than the
visibility timeout: the worker shortens it to a back-off) until ``run_max_try`` attempts are
spent. After the last one, with ``isolate_failures``, each input is run alone, so only the inputs
that fail by themselves are failed and the rest of the mini-batch still succeeds.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parallelrun import aws
from parallelrun.aws import s3, sqs
from parallelrun.aws.config import StackConfig
from parallelrun.core import faults, logs, metrics, results, safepath, usage
from parallelrun.core.datasets import InputFile, InputSpec, TablePiece, relative_name, split_s3_uri
from parallelrun.core.errors import UnsafeKey
from parallelrun.core.failures import Failure, failure_line
from parallelrun.pipeline import isolation, lifecycle
from parallelrun.scoring.host import AttemptFailed, ScoringHost, host_for
from parallelrun.store import batches, jobs, keys, reuse
from parallelrun.scoring.child import LogCapture, MiniBatchContext

log = logging.getLogger("parallelrun.pipeline.worker")
FETCH_THREADS = 16
_fetch_pool: ThreadPoolExecutor | None = None  # this process's, kept across mini-batches as the model is
_fetch_pool_lock = threading.Lock()
# Seconds kept back from an invocation's time for writing and committing after the last run().
COMMIT_MARGIN = 10


class Retry(Exception):
    """This attempt failed and attempts remain: SQS should deliver the message again."""


def handle_event(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Lambda's SQS batch: report only the messages to retry (ReportBatchItemFailures)."""
    known = Known(event.get("Records", []))
    return sqs.handle_records(event, context, usage.WORKER, functools.partial(process, known=known),
                              report_failures=True, expected=(Retry,),
                              failed="mini-batch attempt failed; SQS will deliver it again")


@dataclass
class Known:
    """What an invocation's messages need before they run: their jobs, and which of their
    mini-batches are recorded already. Read once, for all of them, by the first message that
    asks (one BatchGetItem), so a mini-batch costs no read of its own; a cancel is seen by the
    job's next invocations, and what this one still runs is recorded and counted as usual."""

    records: list[dict[str, Any]]
    found: dict[str, jobs.JobRecord] | None = None
    recorded: set[tuple[str, int]] = field(default_factory=set)

    def job(self, cfg: StackConfig, job_id: str) -> jobs.JobRecord:
        if self.found is None:
            self.found, self.recorded = batches.lookup(cfg, [(m.job_id, m.batch) for m in self._messages()])
        if job_id not in self.found:
            raise jobs.missing(job_id)
        return self.found[job_id]

    def _messages(self) -> list[sqs.MiniBatch]:
        messages = []
        for record in self.records:
            try:
                messages.append(sqs.MiniBatch.parse(record["body"]))
            except (KeyError, TypeError, ValueError):  # it fails in its own turn, not the others'
                continue
        return messages


def worker_name(context: Any) -> str:
    return getattr(context, "log_stream_name", None) or f"pid-{os.getpid()}"


def deadline_of(context: Any) -> float:
    """When this invocation must have finished (Lambda's context knows; locally, no limit)."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return time.time() + remaining() / 1000.0 - COMMIT_MARGIN if remaining else float("inf")


def process(cfg: StackConfig, record: dict[str, Any], context: Any = None, known: Known | None = None) -> None:
    """Handle one mini-batch message; raise to have it delivered again."""
    started = time.time()
    message = sqs.MiniBatch.parse(record["body"])
    job_id, index, items, partition = message.job_id, message.batch, message.items, message.partition
    attempt = int(record.get("attributes", {}).get("ApproximateReceiveCount", 1))
    known = known or Known([record])
    with logs.context(job_id, index):
        job = known.job(cfg, job_id)  # its settings and total: counters are not needed here
        if job.state != jobs.RUNNING:
            logs.event(log, "dropped: the job is not running", state=job.state)
            return
        queue_wait = metrics.queue_wait_ms(record, started)
        if (job_id, index) in known.recorded:
            logs.event(log, "dropped: a duplicate of a recorded mini-batch", attempt=attempt)
            jobs.keep_usage(cfg, job_id)  # a duplicate delivery is paid for too
            lifecycle.batch_recorded(cfg, job, index)
        else:
            try:
                batch = run_batch(cfg, job, index, items, attempt, worker_name(context), deadline_of(context),
                                  partition)
            except Retry:
                _retry_soon(cfg, record, attempt, context)
                metrics.attempt_retried(job.endpoint, queue_wait)
                jobs.keep_usage(cfg, job_id)
                raise
            faults.point("after_part")
            # The record carries what its invocation used up to and including its own commit.
            spent = usage.take(including=[batches.COMMIT_CALL])
            batch = dataclasses.replace(batch, started_at=started, usage=spent.to_dict() if spent else None)
            commit = batches.commit_batch(cfg, job_id, batch)
            known.recorded.add((job_id, index))  # a second copy in this invocation is a duplicate
            if commit.recorded:
                logs.event(log, "mini-batch recorded", status=batch.status, items=batch.items,
                           failed=batch.items_failed, attempt=attempt, seconds=round(batch.duration, 3))
                metrics.mini_batch_done(job.endpoint, batch.items_succeeded, batch.items_failed,
                                        batch.status == jobs.FAILED, round((batch.finished_at - started) * 1000),
                                        queue_wait)
            else:
                logs.event(log, "another delivery recorded this mini-batch first", attempt=attempt)
                jobs.put_usage(cfg, job_id, spent)
            faults.point("after_commit")
            if commit.recorded:
                lifecycle.batch_committed(cfg, job, batch, commit.filled)
            else:
                lifecycle.batch_recorded(cfg, job, index)


def _retry_soon(cfg: StackConfig, record: dict[str, Any], attempt: int, context: Any = None) -> None:
    """Bring the message back after a short back-off instead of the whole visibility timeout."""
    if record.get("receiptHandle"):
        delay = min(60, 2 * attempt)
        # A long-running host keeps its messages invisible while it works (pipeline.longrun): it
        # stops that for this one, and sets the back-off on the queue the message came from.
        retry_later = getattr(context, "retry_later", None)
        try:
            if retry_later is not None:
                retry_later(record["receiptHandle"], delay)
            else:
                sqs.change_visibility(cfg.batch_queue_url, record["receiptHandle"], delay)
        except Exception:  # the default visibility timeout still brings it back
            log.warning("could not shorten the retry delay", exc_info=True)


def run_batch(cfg: StackConfig, job: jobs.JobRecord, index: int, items: list[InputFile], attempt: int,
              worker: str, deadline: float, partition: dict[str, str] | None = None) -> batches.BatchRecord:
    """Fetch, score, write the part and the failure lines; the record to commit."""
    started = time.time()
    spec = InputSpec.from_uri(job.input_uri)
    planned = items
    items, unsafe = refuse_unsafe(spec, items)
    scored, read = isolation.Scored(), 0
    if items:  # else nothing is left to fetch or run
        scored, read = score(cfg, job, index, items, attempt, deadline, partition, spec)
    return write_results(cfg, AttemptResults(
        job_id=job.job_id, index=index, attempt=attempt, worker=worker, started=started,
        inputs=max(read, scored.unscored) + len(unsafe), rows=scored.rows, failed=scored.failed + unsafe,
        failed_count=scored.unscored + len(unsafe), header=scored.header,
        fingerprint=reuse.fingerprint(job.deployment, job.settings, planned)))


def score(cfg: StackConfig, job: jobs.JobRecord, index: int, items: list, attempt: int, deadline: float,
          partition: dict[str, str] | None, spec: InputSpec) -> tuple[isolation.Scored, int]:
    """Run the script over the mini-batch's inputs; what it scored, and how many inputs were read
    (a table's in records). Raises :class:`Retry` while attempts remain."""
    folder = safepath.inside(safepath.INPUTS, f"{job.job_id}/{index}.{attempt}", "job")
    capture = LogCapture()
    logging.getLogger().addHandler(capture)
    host = host_for(cfg, job.deployment, job.settings)
    try:
        context = MiniBatchContext(job_id=job.job_id, minibatch_index=index, attempt=attempt,
                                           input_files=[f"s3://{spec.bucket}/{item.key}" for item in items])
        mini_batch, readable, unreadable, slices = None, len(items), [], []
        try:
            mini_batch, readable, unreadable = load_inputs(spec, items, folder, job.settings.csv_options)
            faults.point("before_run")
            faults.point("during_run")
            slices = isolation.slices_of(job, items, mini_batch, partition)
            scored = isolation.score_partitions(cfg, job, host, slices, context, deadline)
            short = isolation.short_results(items, readable - scored.unscored, len(scored.rows), spec)
            scored.failed, scored.unscored = short + unreadable + scored.failed, scored.unscored + len(short)
        except AttemptFailed as error:
            capture.lines += error.log_lines
            logs.event(log, "attempt failed", level=logging.WARNING, attempt=attempt,
                       error_type=error.failure.error_type, error=error.failure.message)
            if attempt < job.settings.run_max_try:
                raise Retry() from error
            scored = isolation.last_attempt(cfg, job, host, items, mini_batch, slices, context, deadline,
                                            error.failure, readable, capture.lines)
            scored.failed += unreadable
        scored.unscored += len(unreadable)
        capture.lines += scored.log_lines
        host.register_models(job.job_id, index)  # before the commit: a rerun finds them claimed
    finally:
        host.drop_registrations()
        collect_entry_dirs(cfg, job, host)
        logging.getLogger().removeHandler(capture)
        shutil.rmtree(folder, ignore_errors=True)  # /tmp is small on Lambda
        _write_log(cfg, job.job_id, index, attempt, capture.lines)
    return scored, readable + len(unreadable)


def refuse_unsafe(spec: InputSpec, items: list) -> tuple[list, list[tuple[Any, Failure]]]:
    """The files whose name below the input folder can be a local file name, and a failure
    (``UnsafeKey``) for each of the others, which are never fetched: a key such as
    ``folder//tmp/x`` or ``folder/../x`` would otherwise write outside the mini-batch's folder."""
    if not items or isinstance(items[0], TablePiece):
        return items, []  # a table is read by ranged GETs, never written to disk under its key
    safe, refused = [], []
    for item in items:
        try:
            safepath.inside(safepath.INPUTS, relative_name(item.key, spec.prefix),
                            f"input s3://{spec.bucket}/{item.key}: the name")
            safe.append(item)
        except UnsafeKey as error:
            refused.append((item, Failure("UnsafeKey", str(error))))
    return safe, refused


def load_inputs(spec: InputSpec, items: list, folder: Path,
                csv_options: dict[str, str] | None = None) -> tuple[Any, int, list[tuple[Any, Failure]]]:
    """What ``run()`` gets, how many inputs that is, and the inputs that failed on reading:
    local paths of files (fetched concurrently), or a table piece as a DataFrame (counted in
    records; a malformed row fails alone). A piece that cannot be read at all fails the attempt."""
    if not items or not isinstance(items[0], TablePiece):
        return fetch(spec, items, folder), len(items), []
    from parallelrun.core import tabular

    [piece] = items
    bad: list[str] = []
    try:
        frame = tabular.read_piece(aws.range_reader(spec.bucket, piece.key), piece, bad, csv_options)
    except Exception as error:  # a file that cannot be parsed, a row cut by a quoted newline
        raise AttemptFailed(Failure.from_exception(error)) from error
    return frame, len(frame), [(piece, Failure("MalformedRow", f"{piece.describe()}, {text}")) for text in bad]


@dataclass
class AttemptResults:
    """What one attempt at a mini-batch produced, to write and record."""

    job_id: str
    index: int
    attempt: int
    worker: str
    started: float
    inputs: int  # files, or a table's records
    rows: results.Rows
    failed: list[tuple[Any, Failure]]  # the failure lines' inputs and why
    failed_count: int  # the inputs those lines stand for
    header: str | None = None
    fingerprint: str | None = None


def write_results(cfg: StackConfig, done: AttemptResults, client: Any = None) -> batches.BatchRecord:
    """Write the part and the failure lines under keys naming the attempt; the batch's record."""
    part = failures = None
    if len(done.rows):
        part = keys.part_key(done.job_id, done.index, done.attempt, results.suffix(done.rows))
        s3.put(cfg.artifacts_bucket, part, results.encode(done.rows), client)
    if done.failed:
        failures = keys.failures_key(done.job_id, done.index, done.attempt)
        lines = [failure_line(item, done.index, done.attempt, failure, done.worker) for item, failure in done.failed]
        s3.put(cfg.artifacts_bucket, failures, "".join(lines).encode(), client)
    inputs, items_failed = done.inputs, min(done.failed_count, done.inputs)
    return batches.BatchRecord(
        index=done.index, status=jobs.FAILED if items_failed == inputs and inputs else jobs.SUCCEEDED, items=inputs,
        items_succeeded=inputs - items_failed, items_failed=items_failed, attempt=done.attempt, part_key=part,
        failures_key=failures, rows=len(done.rows), worker=done.worker, duration=time.time() - done.started,
        header=done.header, fingerprint=done.fingerprint,
    )


def fetch(spec: InputSpec, items: list[InputFile], folder: Path) -> list[str]:
    """Download the inputs concurrently (on AWS each GET waits on the network); keep their
    names below the input folder, so rows can name the file as the user knows it."""
    paths = [safepath.inside(folder, relative_name(item.key, spec.prefix), f"input s3://{spec.bucket}/{item.key}: the name")
             for item in items]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)

    def get(pair: tuple[InputFile, Path]) -> None:
        s3.download(spec.bucket, pair[0].key, pair[1])

    list(fetcher().map(usage.bind(get), zip(items, paths)))
    return [str(path) for path in paths]


def fetcher() -> ThreadPoolExecutor:
    """The process's pool of fetch threads: started once, not for each mini-batch (starting
    16 threads for each was about a tenth of the worker's CPU, profiled on the local stack).
    A warm Lambda or a long-running host keeps it, as it keeps the loaded model."""
    global _fetch_pool
    with _fetch_pool_lock:
        if _fetch_pool is None:
            _fetch_pool = ThreadPoolExecutor(max_workers=FETCH_THREADS, thread_name_prefix="fetch")
        return _fetch_pool


def _no_pool_in_child() -> None:
    # A forked child has none of the pool's threads, but the pool counts them and would start
    # no new one: its first fetch would wait forever.
    global _fetch_pool, _fetch_pool_lock
    _fetch_pool, _fetch_pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_no_pool_in_child)


def collect_entry_dirs(cfg: StackConfig, job: jobs.JobRecord, host: ScoringHost) -> None:
    """Move what the script wrote to ``EntryScript().output_dir`` (and ``log_dir``) into the
    job's output folder (and its ``logs/``), as ParallelRunStep collects them; never over a file
    another job wrote there (:func:`parallelrun.aws.s3.write_owned`)."""
    bucket, prefix = split_s3_uri(job.output_uri)
    for name, folder in host.entry_dirs.items():
        root = folder.resolve()
        for path in sorted(folder.rglob("*")):
            if path.is_symlink():  # it could name any file of the worker's: dropped, never uploaded
                path.unlink()
            elif path.is_file() and path.resolve().is_relative_to(root):
                key = prefix + ("logs/" if name == "logs" else "") + path.relative_to(folder).as_posix()
                try:
                    s3.put_owned(bucket, key, path, job.job_id)
                except s3.OutputTaken as error:
                    logs.event(log, "a file the script wrote was not collected", level=logging.ERROR, error=str(error))
                path.unlink()


def _write_log(cfg: StackConfig, job_id: str, index: int, attempt: int, lines: list[str]) -> None:
    """Keep the attempt's log lines (the script's own included) where `parallelrun logs` reads
    them; an attempt that logged nothing has nothing to read, and costs no PutObject."""
    if not lines:
        return
    try:
        s3.put(cfg.artifacts_bucket, keys.log_key(job_id, index, attempt),
               "".join(line + "\n" for line in lines).encode())
    except Exception:  # logs are for reading, never a reason to fail a mini-batch
        log.warning("could not store the mini-batch's log", exc_info=True)
