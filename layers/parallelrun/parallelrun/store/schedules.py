"""Schedules as stored: the table item, its EventBridge rule, its run lock and what its runs scored.

A schedule is one table item (``SCHEDULE#<name>``) and one EventBridge rule,
``<stack>-schedule-<name>``, whose target is the planner queue. The rule's input transformer
sends ``{"action": "schedule", "schedule": NAME, "time": <the event's time>}``, so a run is
named by the time it was due (:func:`run_job_id`) and a duplicated event maps to the same job.
What starts a run is :mod:`parallelrun.pipeline.scheduling`'s.

``running_job`` on the schedule's item is the lock that keeps runs from overlapping: taken by a
conditional write (:func:`claim`), given back by another (:func:`release`). The item keeps the
schedule's history too: the last run started, when the last one skipped was due, how many were
skipped, the run waiting for the lock. A succeeded run's inputs are recorded in
:mod:`parallelrun.store.scored` (:func:`mark_scored`), so the next run plans only what is new.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

from parallelrun.aws import control, dynamo, s3, sqs
from parallelrun.aws.config import StackConfig
from parallelrun.core import cron, logs
from parallelrun.core.datasets import InputFile, TablePiece
from parallelrun.core.errors import ConflictError, InputError, NotFoundError, SettingsError
from parallelrun.store import batches, jobs, keys, plan, scored

log = logging.getLogger("parallelrun.store.schedules")
SKIP, WAIT = "skip", "wait"
OVERLAP = {SKIP: "a run due while the last one still runs is skipped",
           WAIT: "a run due while the last one still runs starts when it ends"}
TARGET_ID = "planner"
RULE_NAME_LIMIT = 64  # EventBridge's
_NAME = re.compile(r"^[a-z0-9][a-z0-9\-]*$")


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
        item["created_at"] = dynamo.decimal(self.created_at, 3)
        return {**keys.schedule_key(self.name), **item}

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Schedule:
        raw = {k: v for k, v in item.items() if k in cls.__dataclass_fields__}
        raw["settings"] = json.loads(raw.get("settings") or "{}")
        raw["created_at"] = float(raw.get("created_at", 0))
        raw["skipped_runs"] = int(raw.get("skipped_runs", 0))
        return cls(**raw)


def run_stamp(fire_time: str) -> str:
    """``2026-11-22T22:00:00Z`` → ``20261122T220000Z``: the run's folder and job id suffix."""
    return _parse_time(fire_time).strftime("%Y%m%dT%H%M%SZ")


def run_job_id(name: str, fire_time: str) -> str:
    return f"{name}-{run_stamp(fire_time)}"


# --- create, read, delete


def new(cfg: StackConfig, name: str, endpoint: str, expression: str, input_uri: str,
        overrides: dict[str, Any] | None = None, deployment: str | None = None, overlap: str = SKIP) -> Schedule:
    """A schedule whose name, expression and overlap are checked; nothing is stored yet."""
    rule_name = cfg.schedule_rule_prefix + name
    if not _NAME.match(name) or len(rule_name) > RULE_NAME_LIMIT:
        raise InputError(f"schedule name {name!r}: use lower-case letters, digits and '-', at most "
                         f"{RULE_NAME_LIMIT - len(cfg.schedule_rule_prefix)} characters (its rule is {rule_name!r})")
    parsed = cron.parse(expression)
    cron.check_fires(parsed, datetime.now(UTC))
    if overlap not in OVERLAP:
        raise SettingsError("overlap", overlap, "; ".join(f"{k} ({v})" for k, v in OVERLAP.items()))
    return Schedule(name=name, endpoint=endpoint, expression=parsed.expression, input_uri=input_uri,
                    settings=dict(overrides or {}), deployment=deployment, overlap=overlap, rule_name=rule_name)


def put(cfg: StackConfig, schedule: Schedule) -> None:
    """Store a new schedule and create its rule; a schedule of the same name is refused, and a
    rule that cannot be made takes the item back with it."""
    if not dynamo.put_new(cfg.table, schedule.to_item()):
        raise ConflictError(f"schedule {schedule.name!r} already exists: delete it first "
                            f"(`parallelrun schedules delete {schedule.name}`)")
    try:
        _put_rule(cfg, schedule)
    except BaseException:
        dynamo.delete(cfg.table, keys.schedule_key(schedule.name))
        raise
    logs.event(log, "schedule created", schedule=schedule.name, expression=schedule.expression,
               rule=schedule.rule_name)


def _put_rule(cfg: StackConfig, schedule: Schedule) -> None:
    queue_arn = sqs.queue_arn(cfg.planner_queue_url)
    control.put_rule(schedule.rule_name, schedule.expression,
                     f"parallelrun schedule {schedule.name}: endpoint {schedule.endpoint} "
                     f"over {schedule.input_uri}"[:512],
                     [{"Id": TARGET_ID, "Arn": queue_arn, "InputTransformer": sqs.schedule_rule_input(schedule.name)}])


def get(cfg: StackConfig, name: str) -> Schedule:
    found = find(cfg, name)
    if found is None:
        raise NotFoundError(f"no schedule {name!r}: `parallelrun schedules list` lists them")
    return found


def find(cfg: StackConfig, name: str) -> Schedule | None:
    item = dynamo.get(cfg.table, keys.schedule_key(name), consistent=True)
    return Schedule.from_item(item) if item else None


def list_schedules(cfg: StackConfig) -> list[Schedule]:
    """Every schedule, by name. A scan: for a listing command, never a hot path."""
    items = dynamo.scan(cfg.table, FilterExpression="begins_with(pk, :prefix) AND sk = :sk",
                        ExpressionAttributeValues={":prefix": keys.SCHEDULE_PREFIX, ":sk": keys.SCHEDULE_SK})
    return sorted((Schedule.from_item(item) for item in items), key=lambda s: s.name)


def delete(cfg: StackConfig, name: str) -> None:
    """Delete the rule, the schedule and what its runs scored; a run in progress finishes."""
    schedule = get(cfg, name)
    control.delete_rule(schedule.rule_name, [TARGET_ID])  # False after a delete that stopped half-way
    # What was scored goes first: a delete that stops half-way is repeated while the schedule
    # still exists, and a later schedule of the same name never inherits its records.
    forgotten = scored.forget(cfg, name)
    dynamo.delete(cfg.table, keys.schedule_key(name))
    logs.event(log, "schedule deleted", schedule=name, forgotten_inputs=forgotten)


# --- the lock and the history


def claim(cfg: StackConfig, name: str, job_id: str) -> str | None:
    """Take the schedule's lock for ``job_id``; None if taken (or already ours), else its holder
    ("" when the schedule is gone, or the lock was given back meanwhile)."""
    if update(cfg, name, "SET running_job = :job",
              "attribute_exists(pk) AND (attribute_not_exists(running_job) OR running_job = :job)", job=job_id):
        return None
    current = find(cfg, name)
    return current.running_job if current is not None and current.running_job else ""


def update(cfg: StackConfig, name: str, expression: str, condition: str, **values: Any) -> bool:
    """A conditional update of the schedule's item; False when its condition failed."""
    return dynamo.update_if(cfg.table, keys.schedule_key(name), expression, condition,
                            {f":{k}": v for k, v in values.items()})


def give_back(cfg: StackConfig, name: str, holder: str) -> None:
    """``holder`` (a run's job, or a pipeline run) ended: start the run waiting for it, then give
    the lock back. In that order, a crash between the two loses no waiting run (the lock stays
    with an ended holder, so a repeat of this call finishes it; the waiting run's job id is its
    time's, so sending it twice starts it once)."""
    current = find(cfg, name)
    if current is None or current.running_job != holder:
        return  # given back already, or taken over
    if current.waiting:
        sqs.send(cfg.planner_queue_url, sqs.ScheduleRun(name, current.waiting, "waited"))
    release(cfg, name, holder)


def release(cfg: StackConfig, name: str, job_id: str) -> None:
    """Give the lock back, and forget the waiting run with it, if ``job_id`` still holds it
    (nothing happens if the lock was taken over meanwhile)."""
    update(cfg, name, "REMOVE running_job, waiting", "running_job = :job", job=job_id)


# --- what the runs scored


def mark_scored(cfg: StackConfig, job: jobs.JobRecord) -> int:
    """Record what a succeeded run scored, so later runs skip it: every input of its mini-batches
    but those that failed (they are tried again next run). A table counts as scored when none of
    its pieces failed whole; a row that failed alone is in this run's failures.jsonl."""
    assert job.schedule is not None
    if find(cfg, job.schedule) is None or not job.total_batches:
        return 0  # a schedule deleted meanwhile keeps no record
    not_clean = {r.index: r for r in batches.iter_batches(cfg, job.job_id)
                 if r.status != jobs.SUCCEEDED or r.items_failed}
    count = scored.mark(cfg, job.schedule, _scored_inputs(cfg, job, not_clean))
    logs.event(log, "recorded the inputs this run scored", schedule=job.schedule, inputs=count)
    return count


def _scored_inputs(cfg: StackConfig, job: jobs.JobRecord,
                   not_clean: dict[int, batches.BatchRecord]) -> Iterator[InputFile]:
    planned = plan.read(cfg, job.job_id, 0, job.total_batches or 0)
    if job.settings.input_type == "tabular":  # a table's pieces follow one another in the plan
        pieces = ((index, piece) for index, items, _ in planned for piece in items)
        for key, group in groupby(pieces, key=lambda entry: entry[1].key):
            entries: list[tuple[int, TablePiece]] = list(group)  # type: ignore[arg-type]
            if all(index not in not_clean or not_clean[index].status == jobs.SUCCEEDED for index, _ in entries):
                yield InputFile(key, entries[0][1].size, entries[0][1].etag)
        return
    for index, items, _ in planned:
        record = not_clean.get(index)
        if record is None:
            yield from items
        elif record.status == jobs.SUCCEEDED:
            failed = set(_failed_inputs(cfg, record))
            yield from (item for item in items if item.key not in failed)


def _failed_inputs(cfg: StackConfig, record: batches.BatchRecord) -> Iterable[str]:
    if not record.failures_key:
        return []
    body = s3.get(cfg.artifacts_bucket, record.failures_key)
    return [json.loads(line)["input"] for line in body.splitlines() if line.strip()]


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"a schedule's run time must be an ISO 8601 time such as 2026-11-22T22:00:00Z, not {text!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
