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
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parallelrun import aws
from parallelrun.aws import s3, sqs
from parallelrun.aws.config import StackConfig
from parallelrun.core import faults, logs, metrics, results, safepath, usage
from parallelrun.core.datasets import InputFile, InputSpec, TablePiece, relative_name
from parallelrun.core.errors import IntegrityError, NotFoundError, UnsafeKey
from parallelrun.core.partitions import frame_groups
from parallelrun.pipeline import lifecycle
from parallelrun.scoring import runner
from parallelrun.scoring.runner import AttemptFailed, Failure
from parallelrun.store import jobs, registry, reuse

log = logging.getLogger("parallelrun.pipeline.worker")
FETCH_THREADS = 16
# Seconds kept back from an invocation's time for writing and committing after the last run().
COMMIT_MARGIN = 10


class Retry(Exception):
    """This attempt failed and attempts remain: SQS should deliver the message again."""


def handle_event(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Lambda's SQS batch: report only the messages to retry (ReportBatchItemFailures)."""
    return sqs.handle_records(event, context, usage.WORKER, process, report_failures=True, expected=(Retry,),
                              failed="mini-batch attempt failed; SQS will deliver it again")


def worker_name(context: Any) -> str:
    return getattr(context, "log_stream_name", None) or f"pid-{os.getpid()}"


def deadline_of(context: Any) -> float:
    """When this invocation must have finished (Lambda's context knows; locally, no limit)."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return time.time() + remaining() / 1000.0 - COMMIT_MARGIN if remaining else float("inf")


def process(cfg: StackConfig, record: dict[str, Any], context: Any = None) -> None:
    """Handle one mini-batch message; raise to have it delivered again."""
    started = time.time()
    message = sqs.MiniBatch.parse(record["body"])
    job_id, index, items, partition = message.job_id, message.batch, message.items, message.partition
    attempt = int(record.get("attributes", {}).get("ApproximateReceiveCount", 1))
    with logs.context(job_id, index):
        job = jobs.get(cfg, job_id, counted=False)  # its settings and total: counters are not needed here
        if job.state != jobs.RUNNING:
            logs.event(log, "dropped: the job is not running", state=job.state)
            return
        queue_wait = metrics.queue_wait_ms(record, started)
        if jobs.get_batch(cfg, job_id, index) is not None:
            logs.event(log, "dropped: a duplicate of a recorded mini-batch", attempt=attempt)
            jobs.keep_usage(cfg, job_id)  # a duplicate delivery is paid for too
        else:
            try:
                batch = run_batch(cfg, job, index, items, attempt, worker_name(context), deadline_of(context),
                                  partition)
            except Retry:
                _retry_soon(cfg, record, attempt)
                metrics.attempt_retried(job.endpoint, queue_wait)
                jobs.keep_usage(cfg, job_id)
                raise
            faults.point("after_part")
            # The record carries what its invocation used up to and including its own commit.
            spent = usage.take(including=[jobs.COMMIT_CALL])
            batch = dataclasses.replace(batch, started_at=started, usage=spent.to_dict() if spent else None)
            if jobs.commit_batch(cfg, job_id, batch):
                logs.event(log, "mini-batch recorded", status=batch.status, items=batch.items,
                           failed=batch.items_failed, attempt=attempt, seconds=round(batch.duration, 3))
                metrics.mini_batch_done(job.endpoint, batch.items_succeeded, batch.items_failed,
                                        batch.status == jobs.FAILED, round((batch.finished_at - started) * 1000),
                                        queue_wait)
            else:
                logs.event(log, "another delivery recorded this mini-batch first", attempt=attempt)
                jobs.put_usage(cfg, job_id, spent)
            faults.point("after_commit")
        lifecycle.batch_recorded(cfg, job, index)


def _retry_soon(cfg: StackConfig, record: dict[str, Any], attempt: int) -> None:
    """Bring the message back after a short back-off instead of the whole visibility timeout."""
    if record.get("receiptHandle"):
        try:
            sqs.change_visibility(cfg.batch_queue_url, record["receiptHandle"], min(60, 2 * attempt))
        except Exception:  # the default visibility timeout still brings it back
            log.warning("could not shorten the retry delay", exc_info=True)


def run_batch(cfg: StackConfig, job: jobs.Job, index: int, items: list[InputFile], attempt: int,
              worker: str, deadline: float, partition: dict[str, str] | None = None) -> jobs.BatchRecord:
    """Fetch, score, write the part and the failure lines; the record to commit."""
    started = time.time()
    spec = InputSpec.from_uri(job.input_uri)
    planned = items
    items, unsafe = refuse_unsafe(spec, items)
    if not items:  # nothing left to fetch or run
        record = write_results(cfg, job.job_id, index, len(unsafe), attempt, [], unsafe, len(unsafe), worker, started)
        return dataclasses.replace(record, fingerprint=reuse.fingerprint(job.deployment, job.settings, planned))
    folder = safepath.inside(safepath.INPUTS, f"{job.job_id}/{index}.{attempt}", "job")
    capture = runner.LogCapture()
    logging.getLogger().addHandler(capture)
    host = runner.host(cfg, job.deployment, job.settings)
    try:
        context = runner.MiniBatchContext(job_id=job.job_id, minibatch_index=index, attempt=attempt,
                                           input_files=[f"s3://{spec.bucket}/{item.key}" for item in items])
        timeout = job.settings.run_invocation_timeout
        mini_batch, readable, unreadable, header, parts = None, len(items), [], None, []
        try:
            mini_batch, readable, unreadable = load_inputs(spec, items, folder, job.settings.csv_options)
            faults.point("before_run")
            faults.point("during_run")
            parts = partitions_of(job, items, mini_batch, partition)
            scored = score_partitions(cfg, job, host, parts, context, deadline)
            capture.lines += scored.log_lines
            rows, header = scored.rows, scored.header
            failed = short_results(items, readable - scored.unscored, len(rows), spec) + unreadable + scored.failed
            failed_count = len(failed) - len(scored.failed) + scored.unscored
        except AttemptFailed as error:
            capture.lines += error.log_lines
            logs.event(log, "attempt failed", level=logging.WARNING, attempt=attempt,
                       error_type=error.failure.error_type, error=error.failure.message)
            if attempt < job.settings.run_max_try:
                raise Retry() from error
            if job.settings.isolate_failures and len(items) > 1:
                rows, failed = isolate(host, items, mini_batch, context, timeout, deadline, error.failure, capture)
                failed_count = len(failed)
            elif job.settings.isolate_failures and len(parts) > 1:
                scored = isolate_partitions(cfg, job, host, parts, context, deadline)
                capture.lines += scored.log_lines
                rows, header, failed = scored.rows, scored.header, scored.failed + unreadable
                failed_count = scored.unscored + len(unreadable)
            else:
                rows, failed = [], [(item, error.failure) for item in items] + unreadable
                failed_count = (readable if job.settings.input_type == "tabular" else len(items)) + len(unreadable)
    finally:
        collect_entry_dirs(cfg, job, host)
        logging.getLogger().removeHandler(capture)
        shutil.rmtree(folder, ignore_errors=True)  # /tmp is small on Lambda
        _write_log(cfg, job.job_id, index, attempt, capture.lines)
    inputs = max(readable + len(unreadable), failed_count) + len(unsafe)
    record = write_results(cfg, job.job_id, index, inputs, attempt, rows, failed + unsafe, failed_count + len(unsafe),
                           worker, started)
    return dataclasses.replace(record, header=header,
                               fingerprint=reuse.fingerprint(job.deployment, job.settings, planned))


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


@dataclass
class Part:
    """The inputs of one partition within a mini-batch: one run() call."""

    partition: dict[str, Any] | None
    mini_batch: Any  # local paths, or a DataFrame
    items: list  # the files (or the one table piece) these inputs come from
    count: int  # inputs: files, or records
    positions: list[int] | None = None  # a table's rows: where each sits in the piece


@dataclass
class Scored:
    rows: results.Rows = field(default_factory=list)
    header: str | None = None
    failed: list[tuple[Any, Failure]] = field(default_factory=list)  # inputs no run() was given
    unscored: int = 0  # how many inputs those failure lines stand for (a table's lines stand for rows)
    log_lines: list[str] = field(default_factory=list)


def partitions_of(job: jobs.Job, items: list, mini_batch: Any, partition: dict[str, str] | None) -> list[Part]:
    """The mini-batch's run() calls: one, or with ``partition_keys`` on a table one per distinct
    value of the key columns (a file mini-batch was planned as one partition already)."""
    keys = job.settings.partition_keys
    if job.settings.input_type != "tabular" or not keys:
        count = len(mini_batch) if job.settings.input_type == "tabular" else len(items)
        return [Part(partition if keys else {}, mini_batch, items, count)]
    try:
        groups = frame_groups(mini_batch, keys)
    except KeyError as error:
        raise AttemptFailed(Failure("PartitionKeyMissing", str(error.args[0]))) from error
    return [Part(value, rows.reset_index(drop=True), items, len(rows), list(rows.index)) for value, rows in groups]


def score_partitions(cfg: StackConfig, job: jobs.Job, host: runner.ScoringHost, parts: list[Part],
                     context: runner.MiniBatchContext, deadline: float) -> Scored:
    """run() once per partition, with that partition's model when the deployment picks one per
    partition. A partition with no model (or a file outside ``partition_format``) fails its own
    inputs at once, not the mini-batch; any run() that fails fails the attempt."""
    scored, placed = Scored(), []
    selector = registry.ModelSelector(job.deployment["model_name"]) if registry.is_per_partition(
        job.deployment["model_name"]) else None
    for part in parts:
        if job.settings.partition_keys and part.partition is None:
            reason = f"its path does not match partition_format {job.settings.partition_format}"
            scored.failed += [(item, Failure("PartitionMismatch", reason)) for item in part.items]
            scored.unscored += part.count
            continue
        context.partition_key_value = dict(part.partition or {})
        if selector is not None:
            try:
                model = selector.resolve(cfg, part.partition)
            except NotFoundError as error:
                scored.failed += [(item, Failure("NoModelForPartition", str(error))) for item in part.items]
                scored.unscored += part.count
                continue
            context.model_name, context.model_version = model.name, model.version
            try:
                context.model_path = registry.partition_model_path(cfg, model, job.settings.model_cache_bytes)
            except IntegrityError as error:  # a changed copy on disk: this attempt fails, the next fetches it again
                raise AttemptFailed(Failure.from_exception(error)) from error
        outcome = host.run(part.mini_batch, context, job.settings.run_invocation_timeout, deadline)
        scored.log_lines += outcome.log_lines
        scored.header = scored.header or outcome.header
        placed.append((part, outcome.rows))
    scored.rows = in_input_order(placed)
    return scored


def isolate_partitions(cfg: StackConfig, job: jobs.Job, host: runner.ScoringHost, parts: list[Part],
                       context: runner.MiniBatchContext, deadline: float) -> Scored:
    """After a table's last attempt: each partition alone, so only the partitions whose run()
    fails lose their rows."""
    isolated, placed, spec = Scored(), [], InputSpec.from_uri(job.input_uri)
    for part in parts:
        try:
            scored = score_partitions(cfg, job, host, [part], context, deadline)
        except AttemptFailed as error:
            isolated.log_lines += error.log_lines
            failure = dataclasses.replace(error.failure, message=f"partition {part.partition}: {error.failure.message}")
            isolated.failed += [(item, failure) for item in part.items]
            isolated.unscored += part.count
            continue
        isolated.log_lines += scored.log_lines
        isolated.header = isolated.header or scored.header
        isolated.failed += scored.failed
        isolated.unscored += scored.unscored
        short = short_results(part.items, part.count - scored.unscored, len(scored.rows), spec)
        isolated.failed += short
        isolated.unscored += len(short)
        placed.append((part, scored.rows))
    isolated.rows = in_input_order(placed)
    logs.event(log, "isolated the failed mini-batch's partitions", partitions=len(parts),
               failed=len(parts) - len(placed))
    return isolated


def in_input_order(placed: list[tuple[Part, results.Rows]]) -> results.Rows:
    """Rows back in the order of the inputs they came from when every partition returned one
    row per input; otherwise partition by partition (which row belongs where is unknown)."""
    joined = results.concat([rows for _, rows in placed])
    if all(part.positions is not None and len(rows) == len(part.positions) for part, rows in placed) and placed:
        positions = [position for part, _ in placed for position in part.positions]
        return results.take(joined, sorted(range(len(positions)), key=positions.__getitem__))
    return joined


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


def short_results(items: list, inputs: int, returned: int, spec: InputSpec) -> list[tuple[Any, Failure]]:
    """``run()`` returned fewer results than inputs: that many inputs failed, which ones unknown."""
    missing = inputs - returned
    if missing <= 0:
        return []
    failure = Failure("MissingResults", f"run() returned {returned} results for {inputs} inputs "
                                        f"({relative_name(items[0].key, spec.prefix)} .. "
                                        f"{relative_name(items[-1].key, spec.prefix)}): return one per input")
    return [(None, failure)] * missing


def isolate(host: runner.ScoringHost, items: list[InputFile], paths: list[str], context: runner.MiniBatchContext,
            timeout: float, deadline: float, batch_failure: Failure,
            capture: runner.LogCapture) -> tuple[results.Rows, list[tuple[InputFile | None, Failure]]]:
    """Run each input alone: keep the rows of those that succeed, fail only those that fail alone."""
    rows: results.Rows = []
    failed: list[tuple[InputFile | None, Failure]] = []
    for item, path in zip(items, paths):
        if time.time() + timeout > deadline:
            failed.append((item, Failure(batch_failure.error_type, "not run alone: the invocation ran out of time; "
                                         f"the mini-batch failed with: {batch_failure.message}",
                                         batch_failure.traceback)))
            continue
        try:
            outcome = host.run([path], context, timeout, deadline)
        except AttemptFailed as error:
            capture.lines += error.log_lines
            failed.append((item, error.failure))
            continue
        capture.lines += outcome.log_lines
        rows = results.concat([rows, outcome.rows])
        if not len(outcome.rows):
            failed.append((item, Failure("MissingResults", "run() returned no result for this input alone")))
    logs.event(log, "isolated the failed mini-batch's inputs", inputs=len(items), failed=len(failed))
    return rows, failed


def write_results(cfg: StackConfig, job_id: str, index: int, inputs: int, attempt: int, rows: results.Rows,
                  failed: list[tuple[Any, Failure]], failed_count: int, worker: str,
                  started: float) -> jobs.BatchRecord:
    """Write the part and the failure lines under keys naming the attempt; the batch's record."""
    part = failures = None
    if len(rows):
        part = jobs.part_key(job_id, index, attempt, results.suffix(rows))
        s3.put(cfg.artifacts_bucket, part, results.encode(rows))
    if failed:
        failures = jobs.failures_key(job_id, index, attempt)
        lines = [failure_line(item, index, attempt, failure, worker) for item, failure in failed]
        s3.put(cfg.artifacts_bucket, failures, "".join(lines).encode())
    items_failed = min(failed_count, inputs)
    return jobs.BatchRecord(
        index=index, status=jobs.FAILED if items_failed == inputs and inputs else jobs.SUCCEEDED, items=inputs,
        items_succeeded=inputs - items_failed, items_failed=items_failed, attempt=attempt, part_key=part,
        failures_key=failures, rows=len(rows), worker=worker, duration=time.time() - started,
    )


def failure_line(item: InputFile | TablePiece | None, index: int, attempts: int, failure: Failure, worker: str) -> str:
    """One line of ``failures.jsonl``: what failed (a file, or a table's range), where, how often, and why."""
    where = {"range": item.describe()} if isinstance(item, TablePiece) else {}
    return json.dumps({
        "input": item.key if item is not None else None, **where, "minibatch": index, "attempts": attempts,
        "error_type": failure.error_type, "message": failure.message, "traceback": list(failure.traceback),
        "worker": worker,
    }) + "\n"


def fetch(spec: InputSpec, items: list[InputFile], folder: Path) -> list[str]:
    """Download the inputs concurrently (on AWS each GET waits on the network); keep their
    names below the input folder, so rows can name the file as the user knows it."""
    paths = [safepath.inside(folder, relative_name(item.key, spec.prefix), f"input s3://{spec.bucket}/{item.key}: the name")
             for item in items]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)

    def get(pair: tuple[InputFile, Path]) -> None:
        s3.download(spec.bucket, pair[0].key, pair[1])

    with ThreadPoolExecutor(max_workers=min(FETCH_THREADS, max(1, len(items)))) as pool:
        list(pool.map(usage.bind(get), zip(items, paths)))
    return [str(path) for path in paths]


def collect_entry_dirs(cfg: StackConfig, job: jobs.Job, host: runner.ScoringHost) -> None:
    """Move what the script wrote to ``EntryScript().output_dir`` (and ``log_dir``) into the
    job's output folder (and its ``logs/``), as ParallelRunStep collects them; never over a file
    another job wrote there (:func:`parallelrun.aws.s3.write_owned`)."""
    bucket, prefix = aws.split_s3_uri(job.output_uri)
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
    """Keep the attempt's log lines (the script's own included) where `parallelrun logs` reads them."""
    try:
        s3.put(cfg.artifacts_bucket, jobs.log_key(job_id, index, attempt),
               "".join(line + "\n" for line in lines).encode())
    except Exception:  # logs are for reading, never a reason to fail a mini-batch
        log.warning("could not store the mini-batch's log", exc_info=True)
