"""The planner: lists a job's inputs, writes the plan, and feeds the queue a window at a time.

DESIGN invariants 6 and 7: the listing is planned a bounded slice per invocation (the stack's
``planner_inputs_per_invocation``), each continuing from the job's planning checkpoint (where
the listing stopped, what is planned, the job's fingerprint so far, and, in S3 under the
checkpoint's token, the plan chunk not yet full and the mini-batches still filling). A slice's
continuation is valid only while the job's checkpoint is the one it names, so a duplicate
delivery or the loser of a race ends at once; the checkpoint moves by a conditional write, and
the continuation is sent once it is recorded (a redelivery of the message that recorded it sends
it, if its sender died first). Only once the listing is complete are the totals set and the job
RUNNING, before any message is sent; then each *tick* tops the job's in-flight mini-batches up
to its window and sends itself a delayed continuation carrying the cursor. A tick message is
valid only while the job's ``(planner_tick, planner_token)`` equals its own, so a duplicate
delivery ends at once, and a planner that dies mid-tick resumes from the recorded cursor when
SQS redelivers its message (mini-batch ids are deterministic, so re-sent batches are harmless
duplicates).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any

from parallelrun import aws
from parallelrun.aws import s3, sqs
from parallelrun.aws.config import StackConfig
from parallelrun.core import compute, logs, model_refs, partitions, pipelines, planning, usage
from parallelrun.core.datasets import InputFile, InputSpec, relative_name
from parallelrun.core.errors import ConflictError, ParallelRunError
from parallelrun.pipeline import aggregator, chaining, lifecycle, markers, scheduling, submit
from parallelrun.store import batches, endpoints, inputs, jobs, plan, reuse, scored

log = logging.getLogger("parallelrun.pipeline.planner")
# A continuation seen before its sender recorded the cursor waits; after this long the sender
# is taken for dead and the continuation takes its tick over.
TAKEOVER_SECONDS = 120


def handle_event(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """S3 ``_READY`` notifications and planner-queue messages (start, tick, schedule); a failure
    raises, so that the message (or the S3 event) comes back."""
    return sqs.handle_records(event, context, usage.PLANNER, handle_record, report_failures=False)


def handle_record(cfg: StackConfig, record: dict[str, Any], context: Any = None) -> None:
    if record.get("eventSource") == "aws:s3":
        job_id = on_marker(cfg, *markers.marker_of(record))
    else:
        message = sqs.planner_message(record["body"])
        job_id = getattr(message, "job_id", None)
        with logs.context(job_id):
            if isinstance(message, sqs.Start):
                start_job(cfg, message.job_id)
            elif isinstance(message, sqs.Listing):
                continue_planning(cfg, message)
            elif isinstance(message, sqs.Tick):
                tick(cfg, message)
            elif isinstance(message, sqs.StepEnded):  # a pipeline step's job ended: hand on
                chaining.step_ended(cfg, jobs.get(cfg, message.job_id))
            elif isinstance(message, sqs.ScheduleRun):  # an EventBridge rule fired, or a waiting run's turn came
                fired = scheduling.fire(cfg, message.schedule, message.time, message.trigger)
                job_id = fired.job_id
                if fired.outcome == scheduling.STARTED and fired.job_id:
                    start_job(cfg, fired.job_id)
            else:
                log.warning("ignored a planner message with no known action",
                            extra={"fields": {"body": record["body"]}})
    if job_id:
        jobs.keep_usage(cfg, job_id)


def on_marker(cfg: StackConfig, bucket: str, key: str, version: str) -> str | None:
    """A ``_READY`` marker landed: start the job it names (see :func:`markers.drop_job`).
    Returns the job's id (None for a marker that starts no job)."""
    job_id = markers.drop_job(cfg, bucket, key, version)
    if job_id is not None:
        with logs.context(job_id):
            start_job(cfg, job_id)
    return job_id


def start_job(cfg: StackConfig, job_id: str) -> None:
    """Plan a queued job and send its first window; safe to repeat at any point."""
    continue_planning(cfg, sqs.Listing(job_id, planning.START))


def continue_planning(cfg: StackConfig, message: sqs.Listing) -> None:
    """List the slice of the job's inputs after the checkpoint ``message`` names and hand on to
    the next invocation; once the listing is complete, set the totals and send the first window
    (see the module doc)."""
    job = jobs.get(cfg, message.job_id)
    if job.state in jobs.TERMINAL:  # a redelivery after a crash past the final state: finish handing over
        lifecycle.job_ended(cfg, job)
        return
    if job.state == jobs.QUEUED and message.token == planning.START:
        jobs.transition(cfg, job.job_id, jobs.PLANNING, (jobs.QUEUED,), started_at=time.time())
        job = jobs.get(cfg, job.job_id)
    if job.state == jobs.PLANNING:
        held = job.planning
        if held.previous == message.token and not held.sent:
            _hand_on(cfg, job.job_id, held)  # its sender recorded it, then died before sending it on
            return
        if held.token != message.token or not _plan_slice(cfg, job, held):
            return  # an old or duplicate continuation; or the listing goes on, or the job ended
        job = jobs.get(cfg, job.job_id)
    if job.state == jobs.RUNNING and (job.planner_tick, job.planner_token) == (0, "start"):
        tick(cfg, sqs.Tick(job.job_id, 0, "start"))


def _plan_slice(cfg: StackConfig, job: jobs.JobRecord, held: planning.Checkpoint) -> bool:
    """Plan one slice from ``held``; True once the listing is complete and the job is RUNNING
    with its totals (invariant 4: before any mini-batch is sent)."""
    try:
        sliced = list_slice(cfg, job, held)
    except s3.ClientError as error:
        code = s3.error_code(error)
        if code not in ("NoSuchBucket", "AccessDenied", "AllAccessDisabled"):
            raise  # transient: the message comes back and the slice is listed again
        lifecycle.stop(cfg, job.job_id, jobs.FAILED, f"cannot list the inputs at {job.input_uri} ({code})")
        return False
    if sliced is None:
        return False  # a late twin: the checkpoint's successor was recorded and deleted its carry
    made, complete = sliced
    if not complete:
        if jobs.advance_listing(cfg, job.job_id, held, made):
            _forget_carry(cfg, job.job_id, held)
            _hand_on(cfg, job.job_id, made)
        return False
    total_batches, total_items, fingerprint = made.batches, made.items, made.fingerprint
    if total_batches and _reuse_whole_job(cfg, job, fingerprint, total_batches):
        return False
    tabular_job = job.settings.input_type == "tabular"  # its inputs are counted in records, once read
    batches.open_shards(cfg, job.job_id, total_batches)
    if not jobs.advance_listing(cfg, job.job_id, held, made, state=jobs.RUNNING, total_batches=total_batches,
                                total_items=None if tabular_job else total_items, cursor=0, planner_tick=0,
                                planner_token="start", fingerprint=fingerprint):
        return True  # lost: a twin from this checkpoint set the totals (then tick as it does), or the job moved on
    _forget_carry(cfg, job.job_id, held)
    logs.event(log, "planned", total_batches=total_batches, total_items=total_items, invocations=made.step,
               planner_seconds=round(time.time() - (job.started_at or time.time()), 3))
    if total_batches == 0:
        aggregator.finalize(cfg, job.job_id)  # nothing to wait for: end it now, not one message later
        return False
    return True


def _forget_carry(cfg: StackConfig, job_id: str, held: planning.Checkpoint) -> None:
    """Delete ``held``'s carry once the job's checkpoint has moved past it (one object per
    invocation, so a long listing leaves nothing behind; the first slice has none)."""
    if held.step:
        plan.delete_carry(cfg, job_id, held.token)


def _hand_on(cfg: StackConfig, job_id: str, made: planning.Checkpoint) -> None:
    """Send the continuation of the recorded checkpoint ``made``, then mark it sent."""
    sqs.send(cfg.planner_queue_url, sqs.Listing(job_id, made.token))
    jobs.advance_listing(cfg, job_id, made, dataclasses.replace(made, sent=True))


def _reuse_whole_job(cfg: StackConfig, job: jobs.JobRecord, fingerprint: str, batches: int) -> bool:
    """With allow_reuse and no output_path of its own, a job identical to a succeeded one takes
    that job's output at once."""
    if not job.settings.allow_reuse or job.settings.output_path or model_refs.is_per_partition(job.deployment["model_name"]):
        return False
    earlier = reuse.find_job(cfg, fingerprint)
    if earlier is None:
        return False
    # The earlier job's counts: a table's inputs are records, which the plan (of pieces) cannot count.
    items = jobs.get(cfg, earlier["job_id"]).items_succeeded
    done = jobs.transition(
        cfg, job.job_id, jobs.SUCCEEDED, (jobs.PLANNING,), total_batches=batches, total_items=items, cursor=batches,
        batches_succeeded=batches, items_succeeded=items, batches_reused=batches, fingerprint=fingerprint,
        reused_from=earlier["job_id"], output_uri=earlier["output_uri"], ended_at=time.time())
    if done:
        logs.event(log, "reused the output of an identical succeeded job", reused_from=earlier["job_id"])
        lifecycle.job_ended(cfg, jobs.get(cfg, job.job_id, counted=False))
    return done


def list_slice(cfg: StackConfig, job: jobs.JobRecord,
               held: planning.Checkpoint) -> tuple[planning.Checkpoint, bool] | None:
    """List the job's inputs after ``held`` (at most the stack's planner_inputs_per_invocation),
    cut them into mini-batches and write the plan chunks that filled. Returns the checkpoint
    after them and whether the listing is complete: then the last chunk is written too, else
    what is still filling is carried under the new checkpoint's token. Deterministic: the same
    checkpoint over the same inputs gives the same plan, however the listing was sliced. None
    if ``held`` is already superseded (its carry is gone)."""
    spec = InputSpec.from_uri(job.input_uri)
    carry = plan.read_carry(cfg, job.job_id, held.token) if held.step else plan.Carry()
    if carry is None:
        return None
    listed = planning.Slice(inputs.list_files(spec, after=held.after), cfg.limits.planner_inputs_per_invocation)
    files = scored.unscored(cfg, job.schedule, listed, held.after) if job.schedule else iter(listed)
    if job.feed is not None:  # a pipeline step: only what the step before feeds it
        feed = pipelines.Feed.from_dict(job.feed)
        files = (item for item in files if feed.feeds(relative_name(item.key, spec.prefix)))
    cut = planning.plan_batches(files, spec.prefix, job.settings, functools.partial(aws.range_reader, spec.bucket),
                                carry.open_batches)

    def planned() -> Iterator[planning.Planned]:
        yield from cut
        if listed.complete:  # known once the slice is consumed
            yield from partitions.remainder(carry.open_batches)

    total_batches, total_items, fingerprint = held.batches, held.items, held.fingerprint
    for batch, partition in planned():
        fingerprint = reuse.job_fingerprint([reuse.fingerprint(job.deployment, job.settings, batch)], fingerprint)
        carry.chunk.append(plan.entry(batch, partition, bool(job.settings.partition_keys)))
        total_batches += 1
        total_items += len(batch)
        if len(carry.chunk) == plan.CHUNK:
            plan.put_chunk(cfg, job.job_id, total_batches // plan.CHUNK - 1, carry.chunk)
            carry.chunk = []
    made = planning.Checkpoint(secrets.token_hex(8), held.token, False, held.step + 1, listed.last_key or held.after,
                               total_batches, total_items, fingerprint)
    if not listed.complete:
        plan.put_carry(cfg, job.job_id, made.token, carry)
    elif carry.chunk:
        plan.put_chunk(cfg, job.job_id, total_batches // plan.CHUNK, carry.chunk)
    return made, listed.complete


def tick(cfg: StackConfig, message: sqs.Tick) -> None:
    """Top the job's window up, schedule the next tick, then record the cursor (see module doc)."""
    job = jobs.get(cfg, message.job_id)
    if job.state != jobs.RUNNING:
        return  # finished, failed or canceled: nothing more is sent
    number, token = message.tick, message.token
    if number > job.planner_tick:
        if time.time() - message.since < TAKEOVER_SECONDS:
            _send_tick(cfg, message)  # its sender has not recorded the cursor yet: look again later
            return
        number, token = job.planner_tick, job.planner_token
    elif (number, token) != (job.planner_tick, job.planner_token):
        return  # an old or duplicate continuation
    end = planning.window_end(job.cursor, job.batches_done, job.total_batches or 0, job.settings.window(cfg.limits))
    if end > job.cursor:
        # Kept before the mini-batches go out: the job may be over before this invocation is.
        jobs.keep_usage(cfg, job.job_id)
        send_batches(cfg, job, job.cursor, end)
    next_token = secrets.token_hex(8)
    if end < (job.total_batches or 0):
        _send_tick(cfg, sqs.Tick(job.job_id, number + 1, next_token))
    if jobs.advance_planner(cfg, job.job_id, number, token, end, next_token):
        logs.event(log, "sent mini-batches", level=logging.DEBUG, cursor=end, tick=number)


def _send_tick(cfg: StackConfig, message: sqs.Tick) -> None:
    sqs.send(cfg.planner_queue_url, message, delay_seconds=cfg.planner_interval)


def batch_message(job: jobs.JobRecord, index: int, items: list[InputFile],
                  partition: dict[str, str] | None = None) -> sqs.MiniBatch:
    return sqs.MiniBatch(job.job_id, index, items, partition, bool(job.settings.partition_keys))


def send_batches(cfg: StackConfig, job: jobs.JobRecord, start: int, end: int) -> None:
    """Send mini-batches ``start``..``end-1``, ten per SendMessageBatch; with ``allow_reuse``, a
    mini-batch a succeeded job already scored is recorded done with that job's part instead."""
    entries = list(plan.read(cfg, job.job_id, start, end))
    if job.settings.allow_reuse and not model_refs.is_per_partition(job.deployment["model_name"]):
        entries = _reuse(cfg, job, entries)
    _send(cfg, job, entries)


def _send(cfg: StackConfig, job: jobs.JobRecord, entries: list[plan.Entry]) -> None:
    """Send the entries' mini-batches, ten per SendMessageBatch (as many as fit its size limit)."""
    # A compute: ecs deployment is scored from the ECS queue, which no Lambda reads; one with its own
    # worker (aws.workers, never an ECS one: core.compute.check_requirements) from its own queue.
    queue_url = (cfg.ecs_queue_url if compute.runs_on_ecs(job.deployment)
                 else job.deployment.get("queue_url") or cfg.batch_queue_url)
    refused = sqs.send_in_tens(queue_url, [(str(entry[0]), batch_message(job, *entry).body()) for entry in entries])
    if refused:
        raise ParallelRunError(f"SQS refused mini-batches {refused} of job {job.job_id} five times")


def _reuse(cfg: StackConfig, job: jobs.JobRecord, entries: list[plan.Entry]) -> list[plan.Entry]:
    """Record the remembered mini-batches as done; return those still to send. (Not for a model
    per partition: which version scores a partition is only known when it runs.)"""
    prints = {index: reuse.fingerprint(job.deployment, job.settings, items) for index, items, _ in entries}
    found = reuse.lookup(cfg, prints.values())
    for index, items, _ in entries:
        earlier = found.get(prints[index])
        if earlier is not None:  # counted as the earlier job counted it: a table piece in records
            batches.commit_batch(cfg, job.job_id, batches.BatchRecord(
                index=index, status=jobs.SUCCEEDED, items=int(earlier["items"]),
                items_succeeded=int(earlier["items"]), items_failed=0,
                attempt=1, part_key=earlier["part_key"], rows=int(earlier["rows"]), worker="reused",
                fingerprint=prints[index], reused_from=earlier["job_id"], header=earlier.get("header")))
    if any(prints[entry[0]] in found for entry in entries):
        logs.event(log, "reused mini-batches scored before", reused=sum(prints[e[0]] in found for e in entries))
        lifecycle.check_job(cfg, job.job_id)
    return [entry for entry in entries if prints[entry[0]] not in found]


def redrive(cfg: StackConfig, job_id: str) -> list[int]:
    """Run an ended job's failed mini-batches again, with its deployment as it is now (fixed
    code, say), keeping every succeeded part; the aggregator then rebuilds the output. Also
    sends what a stopped job never ran. Returns the mini-batches sent again.

    Safe to repeat after a crash half-way: any mini-batch below the cursor without a record
    (reopened, or dropped when the job stopped) is sent again.
    """
    job = jobs.get(cfg, job_id)
    if job.state not in jobs.TERMINAL:
        raise ConflictError(f"job {job_id} is {job.state}: wait for it to end, or cancel it, before a redrive")
    if job.total_batches is None:
        raise ConflictError(f"job {job_id} never planned its inputs ({job.reason}): submit it again")
    recorded = {}
    for record in batches.iter_batches(cfg, job_id):
        if record.items_failed and batches.reopen_batch(cfg, job_id, record):
            continue
        recorded[record.index] = record
    again = [index for index in range(job.cursor) if index not in recorded]
    if not again and job.cursor >= job.total_batches:
        raise ConflictError(f"job {job_id} has no failed mini-batch to run again")
    deployment = submit.snapshot(cfg, endpoints.get_deployment(cfg, job.endpoint, job.deployment.get("deployment")))
    token = f"redrive-{secrets.token_hex(4)}"
    if not jobs.reopen(cfg, job_id, deployment, token):
        raise ConflictError(f"job {job_id} changed state during the redrive: look at it and try again")
    job = jobs.get(cfg, job_id)
    wanted = set(again)
    pending = [entry for entry in plan.read(cfg, job_id, min(again), max(again) + 1) if entry[0] in wanted] if again else []
    _send(cfg, job, pending)
    if job.cursor < job.total_batches:
        tick(cfg, sqs.Tick(job_id, job.planner_tick, token))
    logs.event(log, "redrive", batches=len(again), unsent=job.total_batches - job.cursor)
    return again
