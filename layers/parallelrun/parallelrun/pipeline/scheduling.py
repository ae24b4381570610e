"""Scheduling: an EventBridge rule runs an endpoint over a prefix, each run scoring only what is new.

The planner calls :func:`fire` when a schedule's rule fires (or a waiting run's turn comes);
it starts the run as a job whose output is ``<prefix>/<schedule>/<run time>/`` and whose
planning skips the inputs earlier runs scored (:mod:`parallelrun.store.scored`). The schedule's
item, rule, lock and history are :mod:`parallelrun.store.schedules`'.

Runs of one schedule never overlap: the schedule's lock is taken when a run starts and given
back when its job ends (:func:`run_ended`, from the aggregator). A run due while another holds
it is skipped (``overlap=skip``, counted and logged) or waits (``overlap=wait``: remembered, and
started when the holder ends). A lock whose job has ended without giving it back (a crash in
between) is taken over.

A schedule may name a pipeline instead of an endpoint (they share one namespace): each run is then
a run of the pipeline on the whole folder (:func:`parallelrun.pipeline.chaining.start`), holding
the lock until the run ends; its steps reuse what was scored before, so only what is new or
changed is scored again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from parallelrun.aws.config import StackConfig
from parallelrun.core import logs
from parallelrun.core.errors import ConflictError, ParallelRunError
from parallelrun.core.settings import RunSettings
from parallelrun.pipeline import chaining, submit
from parallelrun.store import jobs, keys, pipelines, schedules
from parallelrun.store.schedules import Schedule

log = logging.getLogger("parallelrun.pipeline.scheduling")
# Outcomes of firing a schedule.
STARTED, SKIPPED, WAITING, IGNORED, REFUSED = "started", "skipped", "waiting", "ignored", "refused"


@dataclass(frozen=True)
class Firing:
    """What firing a schedule did: ``outcome`` is one of started, skipped, waiting, ignored or
    refused (the run's job failed at once: see its reason); ``holder`` is the run in the way."""

    outcome: str
    job_id: str | None = None
    holder: str | None = None


def create(cfg: StackConfig, name: str, endpoint: str, expression: str, input_uri: str,
           overrides: dict[str, Any] | None = None, deployment: str | None = None,
           overlap: str = schedules.SKIP) -> Schedule:
    """Store a schedule and create its rule; everything a run will need is checked first, as a
    submit checks it, so a bad setting is refused now rather than at 2 a.m."""
    schedule = schedules.new(cfg, name, endpoint, expression, input_uri, overrides, deployment, overlap)
    if pipelines.find(cfg, endpoint) is not None:  # a pipeline's name: each run is a run of it
        schedule.input_uri = chaining.check_start(cfg, endpoint, input_uri, schedule.settings, deployment)
    else:
        schedule.input_uri = _prepare_run(cfg, schedule, f"{name}-check", _now_iso()).input_uri
    schedules.put(cfg, schedule)
    return schedule


def fire(cfg: StackConfig, name: str, fire_time: str, trigger: str = "rule") -> Firing:
    """A run of ``name`` is due (its rule fired, run-now, or a waiting run's turn came): take
    the schedule's lock and create the run's job, or skip or wait by the schedule's overlap."""
    schedule = schedules.find(cfg, name)
    if schedule is None:
        logs.event(log, "ignored a run of a schedule that no longer exists", level=logging.WARNING, schedule=name)
        return Firing(IGNORED)
    job_id = schedules.run_job_id(name, fire_time)
    while True:
        holder = schedules.claim(cfg, name, job_id)
        if holder is None:
            break
        if not holder:  # the schedule is gone, or the lock was given back meanwhile
            if schedules.find(cfg, name) is None:
                return Firing(IGNORED)
            continue
        if _ended(cfg, holder):
            if schedules.update(cfg, name, "SET running_job = :job", "running_job = :holder", job=job_id,
                                holder=holder):
                break  # the holder ended without giving the lock back: take it over
            continue
        if schedule.overlap == schedules.WAIT:
            # Several waiting runs are one (it scores everything new); the earliest names it.
            if schedules.update(cfg, name, "SET waiting = if_not_exists(waiting, :time)", "running_job = :holder",
                                time=fire_time, holder=holder):
                logs.event(log, "run waits for the one in progress", schedule=name, run_time=fire_time,
                           running_job=holder)
                return Firing(WAITING, holder=holder)
            continue
        schedules.update(cfg, name, "SET last_skipped = :time ADD skipped_runs :one", "attribute_exists(pk)",
                         time=fire_time, one=1)
        logs.event(log, "run skipped: the one before still runs", level=logging.WARNING, schedule=name,
                   run_time=fire_time, running_job=holder)
        return Firing(SKIPPED, holder=holder)
    if pipelines.find(cfg, schedule.endpoint) is not None:
        return _start_pipeline(cfg, schedule, job_id, fire_time, trigger)
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


def _start(cfg: StackConfig, schedule: Schedule, job_id: str, fire_time: str, trigger: str) -> jobs.JobRecord:
    """Create the run's job; a run that cannot start (its endpoint deleted, say) is stored FAILED
    with the reason, where `schedules list` and `status` show it."""
    try:
        job = _prepare_run(cfg, schedule, job_id, fire_time)
    except ParallelRunError as error:
        job = jobs.JobRecord(job_id=job_id, endpoint=schedule.endpoint, deployment={}, settings=RunSettings(),
                             input_uri=schedule.input_uri, output_uri="", state=jobs.FAILED, source="schedule",
                             schedule=schedule.name, reason=str(error), ended_at=time.time())
    try:
        jobs.create(cfg, job)
    except ConflictError:
        job = jobs.get(cfg, job_id)
    _record_run(cfg, schedule, job_id, fire_time, trigger, job.state, job.reason)
    return job


def _start_pipeline(cfg: StackConfig, schedule: Schedule, run_id: str, fire_time: str, trigger: str) -> Firing:
    """A run of a schedule of a pipeline: a run of the pipeline on the whole folder, holding the
    schedule's lock until it ends (each step reuses the mini-batches scored before, so only what
    is new or changed is scored). Named by its time, so a repeated event is one run."""
    run = chaining.start(cfg, schedule.endpoint, schedule.input_uri, schedule.settings, run_id, schedule.name)
    _record_run(cfg, schedule, run_id, fire_time, trigger, run.state, run.reason)
    return Firing(REFUSED if run.state == jobs.FAILED else STARTED, run.job_id(0))


def _record_run(cfg: StackConfig, schedule: Schedule, job_id: str, fire_time: str, trigger: str, state: str,
                reason: str) -> None:
    schedules.update(cfg, schedule.name, "SET last_run_time = :time, last_job_id = :job, last_trigger = :trigger",
                     "attribute_exists(pk)", time=fire_time, job=job_id, trigger=trigger)
    with logs.context(job_id):
        logs.event(log, "scheduled run", schedule=schedule.name, run_time=fire_time, trigger=trigger,
                   state=state, reason=reason)


def _ended(cfg: StackConfig, holder: str) -> bool:
    """Whether the lock's holder (a run's job, or a run of a pipeline) has ended, or is gone."""
    run = pipelines.find_run(cfg, holder)
    if run is not None:
        return run.state in jobs.TERMINAL
    job = jobs.find(cfg, holder)
    return job is None or job.state in jobs.TERMINAL


def _prepare_run(cfg: StackConfig, schedule: Schedule, job_id: str, fire_time: str) -> jobs.JobRecord:
    """The run's job, checked as a submit is, with its output in ``<prefix>/<schedule>/<run time>/``."""
    prefix = schedule.settings.get("output_path") or f"s3://{cfg.artifacts_bucket}/{keys.SCHEDULES_PREFIX}"
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    folder = keys.schedule_run_folder(schedule.name, schedules.run_stamp(fire_time))
    overrides = {**schedule.settings, "output_path": prefix + folder}
    job = submit.prepare(cfg, schedule.endpoint, schedule.input_uri, overrides, schedule.deployment, job_id, "schedule")
    job.schedule = schedule.name
    return job


def run_now(cfg: StackConfig, name: str) -> Firing:
    """Fire ``name`` at once, as its rule would, and hand a started run to the planner."""
    fired = fire(cfg, name, _now_iso(), "run-now")
    if fired.outcome == STARTED and fired.job_id:
        submit.send_start(cfg, fired.job_id)
    return fired


def run_ended(cfg: StackConfig, job: jobs.JobRecord) -> None:
    """A run's job ended: start the run waiting for it, then give the schedule's lock back
    (:func:`parallelrun.store.schedules.give_back`)."""
    assert job.schedule is not None
    schedules.give_back(cfg, job.schedule, job.job_id)


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
