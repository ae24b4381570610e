"""Schedules: an EventBridge rule runs an endpoint over a prefix, each run scoring only what is new.

A schedule is one table item (``SCHEDULE#<name>``) and one EventBridge rule,
``<stack>-schedule-<name>``, whose target is the planner queue. The rule's input transformer
sends ``{"action": "schedule", "schedule": NAME, "time": <the event's time>}``, so a run is
named by the time it was due and a duplicated event maps to the same job. The planner calls
:func:`fire`, which starts the run as a job whose output is ``<prefix>/<schedule>/<run time>/``
and whose planning skips the inputs earlier runs scored (:mod:`parallelrun.store.scored`).

Runs of one schedule never overlap: ``running_job`` on the schedule's item is a lock, taken by a
conditional write when a run starts and given back when its job ends (:func:`run_ended`, from
the aggregator). A run due while another holds it is skipped (``overlap=skip``, counted and
logged) or waits (``overlap=wait``: remembered, and started when the holder ends). A lock whose
job has ended without giving it back (a crash in between) is taken over.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from itertools import groupby
from typing import Any

from parallelrun import aws
from parallelrun.aws import sqs
from parallelrun.aws.config import StackConfig
from parallelrun.core import cron, logs
from parallelrun.core.datasets import InputFile, TablePiece
from parallelrun.core.errors import ConflictError, InputError, NotFoundError, ParallelRunError, SettingsError
from parallelrun.core.settings import RunSettings
from parallelrun.pipeline import submit
from parallelrun.store import jobs, scored

log = logging.getLogger("parallelrun.pipeline.schedules")
SKIP, WAIT = "skip", "wait"
OVERLAP = {SKIP: "a run due while the last one still runs is skipped",
           WAIT: "a run due while the last one still runs starts when it ends"}
TARGET_ID = "planner"
RULE_NAME_LIMIT = 64  # EventBridge's
_NAME = re.compile(r"^[a-z0-9][a-z0-9\-]*$")
# Outcomes of firing a schedule.
STARTED, SKIPPED, WAITING, IGNORED, REFUSED = "started", "skipped", "waiting", "ignored", "refused"


@dataclass
class Schedule:
    name: str
    endpoint: str
    expression: str
    input_uri: str
    settings: dict[str, Any] = field(default_factory=dict)  # overrides as given; checked at create and each run
    deployment: str | None = None
    overlap: str = SKIP
    rule_name: str = ""
    created_at: float = field(default_factory=time.time)
    last_run_time: str | None = None  # when the last run started was due (the rule's event time)
    last_job_id: str | None = None
    last_trigger: str | None = None  # rule, run-now or waited
    last_skipped: str | None = None  # when the last run skipped for overlap was due
    skipped_runs: int = 0
    running_job: str | None = None  # the lock: the run in progress
    waiting: str | None = None  # with overlap=wait: when the run waiting for the lock was due

    def to_item(self) -> dict[str, Any]:
        item = {k: v for k, v in self.__dict__.items() if v is not None}
        item["settings"] = json.dumps(self.settings, sort_keys=True)
        item["created_at"] = Decimal(str(round(self.created_at, 3)))
        return {**schedule_key(self.name), **item}

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Schedule:
        raw = {k: v for k, v in item.items() if k in cls.__dataclass_fields__}
        raw["settings"] = json.loads(raw.get("settings") or "{}")
        raw["created_at"] = float(raw.get("created_at", 0))
        raw["skipped_runs"] = int(raw.get("skipped_runs", 0))
        return cls(**raw)


@dataclass(frozen=True)
class Firing:
    """What firing a schedule did: ``outcome`` is one of started, skipped, waiting, ignored or
    refused (the run's job failed at once: see its reason); ``holder`` is the run in the way."""

    outcome: str
    job_id: str | None = None
    holder: str | None = None


def schedule_key(name: str) -> dict[str, str]:
    return {"pk": f"SCHEDULE#{name}", "sk": "SCHEDULE"}


def run_stamp(fire_time: str) -> str:
    """``2026-11-22T22:00:00Z`` → ``20261122T220000Z``: the run's folder and job id suffix."""
    return _parse_time(fire_time).strftime("%Y%m%dT%H%M%SZ")


def run_job_id(name: str, fire_time: str) -> str:
    return f"{name}-{run_stamp(fire_time)}"


# --- create, read, delete


def create(cfg: StackConfig, name: str, endpoint: str, expression: str, input_uri: str,
           overrides: dict[str, Any] | None = None, deployment: str | None = None, overlap: str = SKIP) -> Schedule:
    """Store a schedule and create its rule; everything a run will need is checked first, as a
    submit checks it, so a bad setting is refused now rather than at 2 a.m."""
    rule_name = cfg.schedule_rule_prefix + name
    if not _NAME.match(name) or len(rule_name) > RULE_NAME_LIMIT:
        raise InputError(f"schedule name {name!r}: use lower-case letters, digits and '-', at most "
                         f"{RULE_NAME_LIMIT - len(cfg.schedule_rule_prefix)} characters (its rule is {rule_name!r})")
    parsed = cron.parse(expression)
    cron.check_fires(parsed, datetime.now(UTC))
    if overlap not in OVERLAP:
        raise SettingsError("overlap", overlap, "; ".join(f"{k} ({v})" for k, v in OVERLAP.items()))
    schedule = Schedule(name=name, endpoint=endpoint, expression=parsed.expression, input_uri=input_uri,
                        settings=dict(overrides or {}), deployment=deployment, overlap=overlap, rule_name=rule_name)
    prepared = _prepare_run(cfg, schedule, f"{name}-check", _now_iso())
    schedule.input_uri = prepared.input_uri
    try:
        aws.table(cfg.table).put_item(Item=schedule.to_item(), ConditionExpression="attribute_not_exists(pk)")
    except Exception as error:
        if aws.is_conditional_failure(error):
            raise ConflictError(f"schedule {name!r} already exists: delete it first "
                                f"(`parallelrun schedules delete {name}`)") from None
        raise
    try:
        _put_rule(cfg, schedule)
    except BaseException:
        aws.table(cfg.table).delete_item(Key=schedule_key(name))
        raise
    logs.event(log, "schedule created", schedule=name, expression=schedule.expression, rule=rule_name)
    return schedule


def _put_rule(cfg: StackConfig, schedule: Schedule) -> None:
    queue_arn = sqs.queue_arn(cfg.planner_queue_url)
    events = aws.client("events")
    events.put_rule(Name=schedule.rule_name, ScheduleExpression=schedule.expression, State="ENABLED",
                    Description=f"parallelrun schedule {schedule.name}: endpoint {schedule.endpoint} "
                                f"over {schedule.input_uri}"[:512])
    events.put_targets(Rule=schedule.rule_name, Targets=[
        {"Id": TARGET_ID, "Arn": queue_arn, "InputTransformer": sqs.schedule_rule_input(schedule.name)}])


def get(cfg: StackConfig, name: str) -> Schedule:
    found = find(cfg, name)
    if found is None:
        raise NotFoundError(f"no schedule {name!r}: `parallelrun schedules list` lists them")
    return found


def find(cfg: StackConfig, name: str) -> Schedule | None:
    item = aws.table(cfg.table).get_item(Key=schedule_key(name), ConsistentRead=True).get("Item")
    return Schedule.from_item(item) if item else None


def list_schedules(cfg: StackConfig) -> list[Schedule]:
    """Every schedule, by name. A scan: for a listing command, never a hot path."""
    kwargs: dict[str, Any] = {"FilterExpression": "begins_with(pk, :prefix) AND sk = :sk",
                              "ExpressionAttributeValues": {":prefix": "SCHEDULE#", ":sk": "SCHEDULE"}}
    found = []
    while True:
        page = aws.table(cfg.table).scan(**kwargs)
        found += [Schedule.from_item(item) for item in page.get("Items", [])]
        if "LastEvaluatedKey" not in page:
            return sorted(found, key=lambda s: s.name)
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def delete(cfg: StackConfig, name: str) -> None:
    """Delete the rule, the schedule and what its runs scored; a run in progress finishes."""
    schedule = get(cfg, name)
    events = aws.client("events")
    try:
        events.remove_targets(Rule=schedule.rule_name, Ids=[TARGET_ID])
        events.delete_rule(Name=schedule.rule_name)
    except events.exceptions.ResourceNotFoundException:
        pass  # a delete that stopped half-way: the rule is already gone
    # What was scored goes first: a delete that stops half-way is repeated while the schedule
    # still exists, and a later schedule of the same name never inherits its records.
    forgotten = scored.forget(cfg, name)
    aws.table(cfg.table).delete_item(Key=schedule_key(name))
    logs.event(log, "schedule deleted", schedule=name, forgotten_inputs=forgotten)


# --- runs


def fire(cfg: StackConfig, name: str, fire_time: str, trigger: str = "rule") -> Firing:
    """A run of ``name`` is due (its rule fired, run-now, or a waiting run's turn came): take
    the schedule's lock and create the run's job, or skip or wait by the schedule's overlap."""
    schedule = find(cfg, name)
    if schedule is None:
        logs.event(log, "ignored a run of a schedule that no longer exists", level=logging.WARNING, schedule=name)
        return Firing(IGNORED)
    job_id = run_job_id(name, fire_time)
    while True:
        holder = _claim(cfg, name, job_id)
        if holder is None:
            break
        if not holder:  # the schedule is gone, or the lock was given back meanwhile
            if find(cfg, name) is None:
                return Firing(IGNORED)
            continue
        running = jobs.find(cfg, holder)
        if running is None or running.state in jobs.TERMINAL:
            if _update(cfg, name, "SET running_job = :job", "running_job = :holder", job=job_id, holder=holder):
                break  # the holder ended without giving the lock back: take it over
            continue
        if schedule.overlap == WAIT:
            # Several waiting runs are one (it scores everything new); the earliest names it.
            if _update(cfg, name, "SET waiting = if_not_exists(waiting, :time)", "running_job = :holder",
                       time=fire_time, holder=holder):
                logs.event(log, "run waits for the one in progress", schedule=name, run_time=fire_time,
                           running_job=holder)
                return Firing(WAITING, holder=holder)
            continue
        _update(cfg, name, "SET last_skipped = :time ADD skipped_runs :one", "attribute_exists(pk)",
                time=fire_time, one=1)
        logs.event(log, "run skipped: the one before still runs", level=logging.WARNING, schedule=name,
                   run_time=fire_time, running_job=holder)
        return Firing(SKIPPED, holder=holder)
    existing = jobs.find(cfg, job_id)
    if existing is not None:  # a repeated event of this run
        if existing.state in jobs.TERMINAL:
            run_ended(cfg, existing)
            return Firing(IGNORED, job_id)
        return Firing(STARTED, job_id)
    job = _start(cfg, schedule, job_id, fire_time, trigger)
    if job.state == jobs.FAILED:
        run_ended(cfg, job)
        return Firing(REFUSED, job_id)
    return Firing(STARTED, job_id)


def _start(cfg: StackConfig, schedule: Schedule, job_id: str, fire_time: str, trigger: str) -> jobs.Job:
    """Create the run's job; a run that cannot start (its endpoint deleted, say) is stored FAILED
    with the reason, where `schedules list` and `status` show it."""
    try:
        job = _prepare_run(cfg, schedule, job_id, fire_time)
    except ParallelRunError as error:
        job = jobs.Job(job_id=job_id, endpoint=schedule.endpoint, deployment={}, settings=RunSettings(),
                       input_uri=schedule.input_uri, output_uri="", state=jobs.FAILED, source="schedule",
                       schedule=schedule.name, reason=str(error), ended_at=time.time())
    try:
        jobs.create(cfg, job)
    except ConflictError:
        job = jobs.get(cfg, job_id)
    _update(cfg, schedule.name, "SET last_run_time = :time, last_job_id = :job, last_trigger = :trigger",
            "attribute_exists(pk)", time=fire_time, job=job_id, trigger=trigger)
    with logs.context(job_id):
        logs.event(log, "scheduled run", schedule=schedule.name, run_time=fire_time, trigger=trigger,
                   state=job.state, reason=job.reason)
    return job


def _prepare_run(cfg: StackConfig, schedule: Schedule, job_id: str, fire_time: str) -> jobs.Job:
    """The run's job, checked as a submit is, with its output in ``<prefix>/<schedule>/<run time>/``."""
    prefix = schedule.settings.get("output_path") or f"s3://{cfg.artifacts_bucket}/schedules/"
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    overrides = {**schedule.settings, "output_path": f"{prefix}{schedule.name}/{run_stamp(fire_time)}/"}
    job = submit.prepare(cfg, schedule.endpoint, schedule.input_uri, overrides, schedule.deployment, job_id, "schedule")
    job.schedule = schedule.name
    return job


def run_now(cfg: StackConfig, name: str) -> Firing:
    """Fire ``name`` at once, as its rule would, and hand a started run to the planner."""
    fired = fire(cfg, name, _now_iso(), "run-now")
    if fired.outcome == STARTED and fired.job_id:
        submit.send_start(cfg, fired.job_id)
    return fired


def run_ended(cfg: StackConfig, job: jobs.Job) -> None:
    """A run's job ended: start the run waiting for it, then give the schedule's lock back. In
    that order, a crash between the two loses no waiting run (the lock stays with an ended job,
    so a repeat of this call finishes it; the waiting run's job id is its time's, so sending it
    twice starts it once)."""
    assert job.schedule is not None
    current = aws.table(cfg.table).get_item(Key=schedule_key(job.schedule), ConsistentRead=True).get("Item") or {}
    if current.get("running_job") != job.job_id:
        return  # given back already, or taken over
    if current.get("waiting"):
        sqs.send(cfg.planner_queue_url, sqs.ScheduleRun(job.schedule, current["waiting"], "waited"))
    try:
        aws.table(cfg.table).update_item(
            Key=schedule_key(job.schedule), UpdateExpression="REMOVE running_job, waiting",
            ConditionExpression="running_job = :job", ExpressionAttributeValues={":job": job.job_id})
    except Exception as error:
        if not aws.is_conditional_failure(error):
            raise


def mark_scored(cfg: StackConfig, job: jobs.Job) -> int:
    """Record what a succeeded run scored, so later runs skip it: every input of its mini-batches
    but those that failed (they are tried again next run). A table counts as scored when none of
    its pieces failed whole; a row that failed alone is in this run's failures.jsonl."""
    assert job.schedule is not None
    if find(cfg, job.schedule) is None or not job.total_batches:
        return 0  # a schedule deleted meanwhile keeps no record
    not_clean = {r.index: r for r in jobs.iter_batches(cfg, job.job_id) if r.status != jobs.SUCCEEDED or r.items_failed}
    count = scored.mark(cfg, job.schedule, _scored_inputs(cfg, job, not_clean))
    logs.event(log, "recorded the inputs this run scored", schedule=job.schedule, inputs=count)
    return count


def _scored_inputs(cfg: StackConfig, job: jobs.Job, not_clean: dict[int, jobs.BatchRecord]) -> Iterator[InputFile]:
    from parallelrun.pipeline import planner  # planner imports this module: import it when it is needed

    plan = planner.read_plan(cfg, job.job_id, 0, job.total_batches or 0)
    if job.settings.input_type == "tabular":  # a table's pieces follow one another in the plan
        pieces = ((index, piece) for index, items, _ in plan for piece in items)
        for key, group in groupby(pieces, key=lambda entry: entry[1].key):
            entries: list[tuple[int, TablePiece]] = list(group)  # type: ignore[arg-type]
            if all(index not in not_clean or not_clean[index].status == jobs.SUCCEEDED for index, _ in entries):
                yield InputFile(key, entries[0][1].size, entries[0][1].etag)
        return
    for index, items, _ in plan:
        record = not_clean.get(index)
        if record is None:
            yield from items
        elif record.status == jobs.SUCCEEDED:
            failed = set(_failed_inputs(cfg, record))
            yield from (item for item in items if item.key not in failed)


def _failed_inputs(cfg: StackConfig, record: jobs.BatchRecord) -> Iterable[str]:
    if not record.failures_key:
        return []
    body = aws.client("s3").get_object(Bucket=cfg.artifacts_bucket, Key=record.failures_key)["Body"].read()
    return [json.loads(line)["input"] for line in body.splitlines() if line.strip()]


# --- the lock


def _claim(cfg: StackConfig, name: str, job_id: str) -> str | None:
    """Take the schedule's lock for ``job_id``; None if taken (or already ours), else its holder."""
    if _update(cfg, name, "SET running_job = :job",
               "attribute_exists(pk) AND (attribute_not_exists(running_job) OR running_job = :job)", job=job_id):
        return None
    current = find(cfg, name)
    return current.running_job if current is not None and current.running_job else ""


def _update(cfg: StackConfig, name: str, expression: str, condition: str, **values: Any) -> bool:
    """A conditional update of the schedule's item; False when its condition failed."""
    try:
        aws.table(cfg.table).update_item(Key=schedule_key(name), UpdateExpression=expression,
                                         ConditionExpression=condition,
                                         ExpressionAttributeValues={f":{k}": v for k, v in values.items()})
        return True
    except Exception as error:
        if aws.is_conditional_failure(error):
            return False
        raise


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"a schedule's run time must be an ISO 8601 time such as 2026-11-22T22:00:00Z, not {text!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
