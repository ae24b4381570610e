"""The failure recorder: what exhausted its tries still counts, so every job ends (invariant 2).

A mini-batch lands in its dead-letter queue when its worker died (killed, out of memory, Lambda
timeout) on every delivery the queue allows: the batch is recorded FAILED with one failure line
per input, by the same conditional transaction the worker uses, so a batch that did finish is
never counted twice. A planner or aggregator message that failed every delivery ends its job
FAILED, saying which part gave up. So does a ``_READY`` marker the planner failed on every try:
S3 invokes the planner asynchronously, and Lambda sends the record of such an invocation to the
planner's on-failure destination queue, which this function reads too.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from parallelrun.aws import s3, sqs
from parallelrun.aws.config import StackConfig
from parallelrun.core import logs, usage
from parallelrun.core.errors import ConflictError
from parallelrun.core.failures import Failure, failure_line
from parallelrun.pipeline import chaining, lifecycle, markers
from parallelrun.store import batches, jobs, keys, pipelines, schedules

log = logging.getLogger("parallelrun.pipeline.failure_recorder")
ERROR_MESSAGE_CHARS = 1000  # of the planner's error kept in a job's reason (Lambda's may be 256 KB)


def handle_event(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Dead letters: only those that could not be recorded come back (ReportBatchItemFailures)."""
    return sqs.handle_records(event, context, usage.FAILURE_RECORDER, handle_record, report_failures=True,
                              failed="could not record a dead-lettered mini-batch; it will be retried")


def handle_record(cfg: StackConfig, record: dict[str, Any], context: Any = None) -> None:
    message = sqs.dead_letter(record["body"])
    if isinstance(message, sqs.FailedInvocation):  # Lambda's record of a failed asynchronous invocation
        record_failed_invocation(cfg, message.record)
    elif isinstance(message, sqs.MiniBatch):
        record_dead_letter(cfg, message)
    else:
        give_up(cfg, message)


def record_dead_letter(cfg: StackConfig, message: sqs.MiniBatch) -> None:
    started = time.time()
    job_id, index, items = message.job_id, message.batch, message.items
    attempts = cfg.limits.max_receive_count
    with logs.context(job_id, index):
        if batches.get_batch(cfg, job_id, index) is None:
            key = keys.failures_key(job_id, index, 0)
            reason = (f"the worker died or timed out on all {attempts} deliveries of this mini-batch "
                      "(killed, out of memory, or past the function timeout)")
            failure = Failure("WorkerLost", reason)
            lines = [failure_line(item, index, attempts, failure, "dead-letter queue") for item in items]
            s3.put(cfg.artifacts_bucket, key, "".join(lines).encode())
            spent = usage.take(including=[batches.COMMIT_CALL])
            record = batches.BatchRecord(index=index, status=jobs.FAILED, items=len(items), items_succeeded=0,
                                      items_failed=len(items), attempt=attempts, part_key=None, failures_key=key,
                                      worker="dead-letter queue", finished_at=time.time(), started_at=started,
                                      usage=spent.to_dict() if spent else None)
            if batches.commit_batch(cfg, job_id, record).recorded:
                logs.event(log, "dead-lettered mini-batch recorded as failed", level=logging.WARNING, items=len(items))
        lifecycle.check_job(cfg, job_id)


def give_up(cfg: StackConfig,
            message: sqs.PlannerMessage | sqs.AggregationRequest | sqs.CollateRange | sqs.UnreadablePlannerMessage) -> None:
    """A planner (start, tick, schedule) or aggregator message failed every delivery: end the job FAILED."""
    if isinstance(message, sqs.UnreadablePlannerMessage) and message.job_id is None:
        log.error("a planner message that names no job failed on every delivery; it is dropped")
        return
    if isinstance(message, sqs.ScheduleRun):  # a run's job, if it was created, holds its schedule's lock
        job_id = schedules.run_job_id(message.schedule, message.time)
        if jobs.find(cfg, job_id) is None:
            log.error("a schedule's run failed to start on every try; the next run scores what it would have",
                      extra={"fields": {"schedule": message.schedule, "run_time": message.time}})
            return
    else:
        job_id = message.job_id
    with logs.context(job_id):
        if isinstance(message, sqs.StepEnded):  # the step's job had ended: its run must not wait for ever
            chaining.hand_on_gave_up(cfg, job_id)
        elif not isinstance(message, (sqs.AggregationRequest, sqs.CollateRange)):
            reason = ("the planner failed on every delivery of this job's message; its logs say why. "
                      "What ran is kept: `parallelrun redrive` continues the job")
            lifecycle.stop(cfg, job_id, jobs.FAILED, reason)
        else:
            lifecycle.aggregation_gave_up(cfg, job_id)


def record_failed_invocation(cfg: StackConfig, record: dict[str, Any]) -> None:
    """Lambda gave up on an asynchronous invocation of the planner: end each marker's job FAILED
    (creating it FAILED if the planner never did), with the marker and the error as its reason.

    ``record`` is Lambda's invocation record
    (https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html): the
    original S3 event in ``requestPayload``, the tries in ``requestContext`` and, when the function
    ran, its error in ``responsePayload``.
    """
    context = record.get("requestContext") or {}
    if context.get("condition") == "EventAgeExceeded":  # throttled until the event expired: never ran
        gave_up = "was never run on"
    else:
        gave_up = f"failed on all {context.get('approximateInvokeCount', '?')} tries of"
    response = record.get("responsePayload")
    error = ""
    if isinstance(response, dict) and "errorMessage" in response:
        message = str(response["errorMessage"])[:ERROR_MESSAGE_CHARS]
        error = f": {response.get('errorType', 'Error')}: {message}"
    payload = record.get("requestPayload") or {}
    for s3_record in payload.get("Records", []) if isinstance(payload, dict) else []:
        if s3_record.get("eventSource") != "aws:s3":
            continue
        bucket, key, version = markers.marker_of(s3_record)
        target = markers.marker_job(bucket, key, version)
        if target is None:
            continue  # the planner ignores such a marker: no job to end
        job_id, endpoint, input_uri = target
        reason = (f"the planner {gave_up} marker s3://{bucket}/{key}{error}. "
                  "Upload the marker again to start a new job")
        if pipelines.find(cfg, endpoint) is not None:  # a pipeline's drop folder: the marker's run ends
            chaining.drop_gave_up(cfg, job_id, endpoint, input_uri, reason)
            continue
        with logs.context(job_id):
            if jobs.find(cfg, job_id) is None:
                try:
                    jobs.create(cfg, markers.failed_drop_job(job_id, endpoint, input_uri, reason))
                    logs.event(log, "job failed: the planner gave up on its marker", level=logging.ERROR)
                    continue
                except ConflictError:
                    pass  # a late try of the planner created it meanwhile: end it below
            lifecycle.stop(cfg, job_id, jobs.FAILED, reason)  # a job that already ended keeps its end
