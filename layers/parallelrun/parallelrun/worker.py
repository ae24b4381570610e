"""The worker: one SQS message is one mini-batch; fetch its inputs, run the script, commit.

Order matters for DESIGN invariant 1. The part object is written under a key that names the
attempt, then one conditional transaction records the batch and adds its counts. A worker that
dies before the transaction leaves nothing counted (the message comes back); one that dies after
it leaves a recorded batch, and the redelivered message is dropped without running again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from parallelrun import aggregator, aws, jobs, logs, registry, scoring
from parallelrun.config import StackConfig
from parallelrun.datasets import InputFile, InputSpec, relative_name

log = logging.getLogger("parallelrun.worker")
FETCH_THREADS = 16
TRACEBACK_LINES = 12


def handle_event(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Lambda's SQS batch: report only the messages to retry (ReportBatchItemFailures)."""
    cfg = StackConfig.from_env()
    logs.setup()
    failures = []
    for record in event.get("Records", []):
        try:
            process(cfg, record, _worker_name(context))
        except Exception:
            log.exception("mini-batch attempt failed; SQS will deliver it again")
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}


def _worker_name(context: Any) -> str:
    return getattr(context, "log_stream_name", None) or f"pid-{os.getpid()}"


def process(cfg: StackConfig, record: dict[str, Any], worker: str) -> None:
    """Handle one mini-batch message; raise to have it delivered again."""
    message = json.loads(record["body"])
    job_id, index = message["job_id"], int(message["batch"])
    attempt = int(record.get("attributes", {}).get("ApproximateReceiveCount", 1))
    items = [InputFile.from_json(item) for item in message["items"]]
    with logs.context(job_id, index):
        job = jobs.get(cfg, job_id)
        if job.state in jobs.TERMINAL:
            logs.event(log, "dropped: the job has ended", state=job.state)
            return
        if jobs.get_batch(cfg, job_id, index) is None:
            record_batch(cfg, job, index, items, attempt, worker)
        else:
            logs.event(log, "dropped: a duplicate of a recorded mini-batch", attempt=attempt)
        finalize_if_complete(cfg, job_id)


def record_batch(cfg: StackConfig, job: jobs.Job, index: int, items: list[InputFile], attempt: int, worker: str) -> None:
    started = time.time()
    try:
        rows = score(cfg, job, index, items, attempt)
    except Exception as error:
        if attempt < job.settings.run_max_try:
            raise
        record = fail_batch(cfg, job.job_id, index, items, attempt, error, worker, started)
    else:
        succeeded = min(len(rows), len(items))
        key = jobs.part_key(job.job_id, index, attempt)
        aws.client("s3").put_object(Bucket=cfg.artifacts_bucket, Key=key,
                                    Body="".join(row + "\n" for row in rows).encode())
        record = jobs.BatchRecord(
            index=index, status=jobs.SUCCEEDED, items=len(items), items_succeeded=succeeded,
            items_failed=len(items) - succeeded, attempt=attempt, part_key=key, failures_key=None,
            rows=len(rows), worker=worker, duration=time.time() - started,
        )
    if jobs.commit_batch(cfg, job.job_id, record):
        logs.event(log, "mini-batch recorded", status=record.status, items=record.items,
                   failed=record.items_failed, attempt=attempt, seconds=round(record.duration, 3))
    else:
        logs.event(log, "another delivery recorded this mini-batch first", attempt=attempt)


def score(cfg: StackConfig, job: jobs.Job, index: int, items: list[InputFile], attempt: int) -> list[str]:
    """Fetch the inputs, run the script on their local paths, return its rows."""
    script = scoring.load(cfg, job.deployment, job.settings)
    spec = InputSpec.from_uri(job.input_uri)
    folder = registry.CACHE_ROOT / "inputs" / job.job_id / f"{index}.{attempt}"
    try:
        paths = fetch(spec, items, folder)
        context = scoring.MiniBatchContext(job_id=job.job_id, minibatch_index=index, attempt=attempt)
        return scoring.to_rows(script.run(paths, context))
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # /tmp is small on Lambda


def fetch(spec: InputSpec, items: list[InputFile], folder: Path) -> list[str]:
    """Download the inputs concurrently (on AWS each GET waits on the network); keep their
    names below the input folder, so rows can name the file as the user knows it."""
    s3 = aws.client("s3")
    paths = [folder / relative_name(item.key, spec.prefix) for item in items]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)

    def get(pair: tuple[InputFile, Path]) -> None:
        # One GetObject per input: download_file would add a HeadObject to each.
        body = s3.get_object(Bucket=spec.bucket, Key=pair[0].key)["Body"]
        with open(pair[1], "wb") as handle:
            for chunk in body.iter_chunks(1024 * 1024):
                handle.write(chunk)

    with ThreadPoolExecutor(max_workers=min(FETCH_THREADS, max(1, len(items)))) as pool:
        list(pool.map(get, zip(items, paths)))
    return [str(path) for path in paths]


def fail_batch(cfg: StackConfig, job_id: str, index: int, items: list[InputFile], attempt: int,
               error: BaseException, worker: str, started: float) -> jobs.BatchRecord:
    """The last attempt failed: write one failure line per input and a FAILED batch record."""
    key = jobs.failures_key(job_id, index, attempt)
    lines = failure_lines(items, index, attempt, error, worker)
    aws.client("s3").put_object(Bucket=cfg.artifacts_bucket, Key=key, Body="".join(lines).encode())
    return jobs.BatchRecord(
        index=index, status=jobs.FAILED, items=len(items), items_succeeded=0, items_failed=len(items),
        attempt=attempt, part_key=None, failures_key=key, worker=worker, duration=time.time() - started,
    )


def failure_lines(items: list[InputFile], index: int, attempts: int, error: BaseException | None,
                  worker: str, message: str | None = None) -> list[str]:
    """``failures.jsonl`` lines: what failed, where, how often, and the end of the traceback."""
    trace = traceback.format_exception(error) if error is not None else []
    tail = "".join(trace).rstrip().splitlines()[-TRACEBACK_LINES:]
    return [
        json.dumps({
            "input": item.key, "minibatch": index, "attempts": attempts,
            "error_type": type(error).__name__ if error is not None else "WorkerLost",
            "message": message if message is not None else str(error), "traceback": tail, "worker": worker,
        }) + "\n"
        for item in items
    ]


def finalize_if_complete(cfg: StackConfig, job_id: str) -> None:
    """Whoever sees the counters complete asks for the aggregator; it runs once whatever the count."""
    job = jobs.get(cfg, job_id)
    if job.state == jobs.RUNNING and job.complete:
        aggregator.request(cfg, job_id)
