"""Pipelines of steps: creating one, starting a run, and handing on from step to step.

Each step is an ordinary job (``keys.step_job_id``), so everything a job does (reuse, retries,
thresholds, the aggregator's once-only run) a step does too. When a step's job takes its final
state, :func:`parallelrun.pipeline.lifecycle.job_ended` sends the planner a ``StepEnded``
message, and the planner calls :func:`step_ended`, which starts the next step on the step's
output folder (its table or its script's files: :mod:`parallelrun.core.pipelines`), or ends the
run: SUCCEEDED after the last step, else FAILED (or CANCELED) naming the step and its reason.

Handing on is safe to repeat and to die in, at any line: the next step's job has a fixed id, so
creating it twice stores one job; the run moves from step k to k+1 by a conditional write on
``step``; and a Start for a job still QUEUED is sent by every hand-on that finds the run past
step k (starting a job twice plans it once). A message delivered twice, or one whose handler died
midway and comes back, therefore starts the next step exactly once. A step that cannot start
(its endpoint deleted, a setting its table breaks) is stored as a FAILED job with the reason, and
ends the run with it: a run never stalls silently. A hand-on that failed on every delivery ends
the run FAILED too (:func:`hand_on_gave_up`, from the failure recorder).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from parallelrun.aws.config import StackConfig
from parallelrun.core import logs, pipelines as definitions, settings
from parallelrun.core.errors import ConflictError, InputError, ParallelRunError
from parallelrun.core.pipelines import Step
from parallelrun.core.settings import RunSettings
from parallelrun.pipeline import submit
from parallelrun.store import jobs, keys, pipelines, schedules
from parallelrun.store.pipelines import Pipeline, PipelineRun

log = logging.getLogger("parallelrun.pipeline.chaining")
SOURCE = "pipeline"  # a step job's source


def create(cfg: StackConfig, name: str, steps: list[Step], description: str = "") -> Pipeline:
    """Store a pipeline once each step is checked as a submit checks a job (its endpoint and
    deployment exist, its settings are valid) and each step can read what the one before feeds
    it; refused if an endpoint or pipeline has the name."""
    definitions.check_name(name)
    check_uri = f"s3://{cfg.input_bucket}/{name}/"  # its drop folder's namespace
    produced: RunSettings | None = None
    for index, step in enumerate(steps):
        overrides = step.settings if produced is None else definitions.next_overrides(step, steps[index - 1], produced)
        try:
            job = submit.prepare(cfg, step.endpoint, check_uri, overrides, step.deployment, f"{name}-check", SOURCE)
            if produced is not None:
                definitions.check_feed(steps[index - 1], produced, step, job.settings)
        except ParallelRunError as error:
            raise InputError(f"pipeline {name!r}, step {index + 1} ({step.name}): {error}") from None
        produced = job.settings
    pipeline = Pipeline(name, list(steps), description=description)
    pipelines.put_new(cfg, pipeline)
    logs.event(log, "pipeline created", pipeline=name, steps=[step.name for step in steps])
    return pipeline


def check_start(cfg: StackConfig, name: str, input_uri: str, overrides: dict[str, Any],
                deployment: str | None = None) -> str:
    """Refuse now a run of ``name`` that could not start (a schedule of the pipeline is checked
    so); the input folder's URI as a run keeps it."""
    if deployment is not None:
        raise InputError(f"a deployment names one endpoint's: pipeline {name!r}'s steps name their own")
    run = PipelineRun(f"{name}-check", name, pipelines.get(cfg, name).steps, input_uri, overrides=dict(overrides))
    return _step_job(cfg, run, 0, None, strict=True).input_uri


def start(cfg: StackConfig, name: str, input_uri: str, overrides: dict[str, Any] | None = None,
          run_id: str | None = None, schedule: str | None = None) -> PipelineRun:
    """Start a run of ``name`` on ``input_uri``, ``overrides`` over its first step's settings.
    From the CLI or the SDK, a first step that cannot start is refused now, with nothing stored.
    A schedule's run (``run_id`` named by its time, so a repeated event is one run) is stored
    FAILED with the reason instead, where `status` shows it."""
    definition = pipelines.get(cfg, name)
    run = PipelineRun(run_id or submit.new_job_id(name), name, definition.steps, input_uri,
                      source="schedule" if schedule else "submit", overrides=dict(overrides or {}), schedule=schedule)
    first = _step_job(cfg, run, 0, None, strict=schedule is None)
    run.input_uri = first.input_uri
    if not pipelines.create_run(cfg, run):
        if schedule is None:
            raise ConflictError(f"pipeline run {run.run_id} already exists")
        run = pipelines.get_run(cfg, run.run_id)  # a repeated event of this run: carry on with it
    first = _create(cfg, first)
    if first.state in jobs.TERMINAL:
        step_ended(cfg, first)  # it could not start: the run ends with its reason
    else:
        submit.send_start(cfg, first.job_id)
        logs.event(log, "pipeline run started", pipeline=name, run=run.run_id, input=run.input_uri)
    return pipelines.get_run(cfg, run.run_id)


def drop_run(cfg: StackConfig, name: str, input_uri: str, run_id: str,
             marker_overrides: Callable[[], dict[str, Any]]) -> str | None:
    """A ``_READY`` marker in ``<pipeline>/<folder>/`` starts run ``run_id`` (named after the
    marker, so a retried notification is one run); the marker's body sets the first step's
    settings, as far as a drop folder may. Returns the first step's job id, for the planner to
    start, or None when the marker's body is refused: the run is stored FAILED with the reason,
    where `status` shows it, as a drop job is."""
    run = pipelines.find_run(cfg, run_id)
    if run is None:
        run = PipelineRun(run_id, name, pipelines.get(cfg, name).steps, input_uri, source="drop")
        try:
            run.overrides = marker_overrides()
            settings.check_drop_overrides(run.overrides)
        except ParallelRunError as error:
            run.overrides, run.state, run.reason, run.ended_at = {}, jobs.FAILED, str(error), time.time()
        pipelines.create_run(cfg, run)  # False for a twin of this notification: it stored the same run
        run = pipelines.get_run(cfg, run_id)
    first = jobs.find(cfg, run.job_id(0), counted=False)
    if first is None:
        if run.state != jobs.RUNNING:
            return None  # refused (or given up on) before its first step: nothing to start
        first = _create(cfg, _step_job(cfg, run, 0, None))
    if first.state in jobs.TERMINAL:
        step_ended(cfg, first)
    return first.job_id


def _step_job(cfg: StackConfig, run: PipelineRun, index: int, before: jobs.JobRecord | None,
              strict: bool = False) -> jobs.JobRecord:
    """Step ``index``'s job on the run's input (the first step) or on ``before``'s output; FAILED
    with the reason if it cannot start (``strict``: the error is raised instead)."""
    step = run.steps[index]
    feed: dict[str, list[str]] | None = None
    if before is None:
        input_uri, overrides = run.input_uri, {**step.settings, **run.overrides}
    else:
        producer = run.steps[index - 1]
        input_uri, overrides = before.output_uri, definitions.next_overrides(step, producer, before.settings)
        feed = definitions.feed_of(producer, before.settings).to_dict()
    try:
        job = submit.prepare(cfg, step.endpoint, input_uri, overrides, step.deployment, run.job_id(index), SOURCE)
        if before is not None:
            definitions.check_feed(run.steps[index - 1], before.settings, step, job.settings)
    except ParallelRunError as error:
        if strict:
            raise
        job = _failed_job(run, index, input_uri, str(error))
    job.pipeline_run, job.feed = run.run_id, feed
    return job


def _failed_job(run: PipelineRun, index: int, input_uri: str, reason: str) -> jobs.JobRecord:
    return jobs.JobRecord(job_id=run.job_id(index), endpoint=run.steps[index].endpoint, deployment={},
                          settings=RunSettings(), input_uri=input_uri, output_uri="", state=jobs.FAILED,
                          source=SOURCE, reason=f"the step could not start: {reason}", ended_at=time.time(),
                          pipeline_run=run.run_id)


def _create(cfg: StackConfig, job: jobs.JobRecord) -> jobs.JobRecord:
    """Store a step's job, or find the one a twin stored under its fixed id."""
    try:
        jobs.create(cfg, job)
        return job
    except ConflictError:
        return jobs.get(cfg, job.job_id)


def step_ended(cfg: StackConfig, job: jobs.JobRecord) -> None:
    """Step ``job`` of its run ended: start the next step, or end the run (see the module doc)."""
    assert job.pipeline_run is not None
    run = pipelines.find_run(cfg, job.pipeline_run)
    if run is None:
        return  # its run record was never made (a crash before it): nothing waits on it
    index = next((i for i in range(len(run.steps)) if run.job_id(i) == job.job_id), None)
    if index is None or run.step < index:
        return
    if run.state != jobs.RUNNING:
        _ended(cfg, run)  # a repeat after a crash between the run's end and what follows it
        return
    step = run.steps[index]
    if run.step == index:
        if job.state != jobs.SUCCEEDED:
            reason = f"step {index + 1} ({step.name}) {job.state}, job {job.job_id}: {job.reason}"
            if pipelines.end(cfg, run.run_id, index, jobs.CANCELED if job.state == jobs.CANCELED else jobs.FAILED,
                             reason):
                logs.event(log, "pipeline run stopped", level=logging.WARNING, run=run.run_id, reason=reason)
            _ended(cfg, run)
            return
        if index == len(run.steps) - 1:
            if pipelines.end(cfg, run.run_id, index, jobs.SUCCEEDED):
                logs.event(log, "pipeline run succeeded", run=run.run_id)
            _ended(cfg, run)
            return
        if jobs.find(cfg, run.job_id(index + 1), counted=False) is None:
            _create(cfg, _step_job(cfg, run, index + 1, job))
        # Created first, moved on second: a hand-on that dies between the two is repeated from here.
        if not pipelines.advance(cfg, run.run_id, index):
            run = pipelines.get_run(cfg, run.run_id)  # a twin moved it on, or it was canceled meanwhile
            if run.state != jobs.RUNNING:
                _ended(cfg, run)
                return
    elif run.step > index + 1:
        return  # the step after it ended too: its own hand-on took over
    following = jobs.find(cfg, run.job_id(index + 1), counted=False) if index + 1 < len(run.steps) else None
    if following is None:
        return
    if following.state == jobs.QUEUED:
        submit.send_start(cfg, following.job_id)
        logs.event(log, "pipeline step handed on", run=run.run_id, step=run.steps[index + 1].name,
                   job=following.job_id, input=following.input_uri)
    elif following.state in jobs.TERMINAL and not following.output_uri:
        step_ended(cfg, following)  # it could not start: it ends the run


def hand_on_gave_up(cfg: StackConfig, job_id: str) -> None:
    """The hand-on after step ``job_id`` failed on every delivery: its run ends FAILED, saying so."""
    job = jobs.find(cfg, job_id, counted=False)
    run = pipelines.find_run(cfg, job.pipeline_run) if job and job.pipeline_run else None
    if run is None or run.state != jobs.RUNNING:
        return
    index = next((i for i in range(len(run.steps)) if run.job_id(i) == job_id), run.step)
    reason = (f"handing on from step {index + 1} ({run.steps[index].name}, job {job_id}) failed on every "
              "delivery; the planner's logs say why")
    if pipelines.end(cfg, run.run_id, run.step, jobs.FAILED, reason):
        logs.event(log, "pipeline run failed: its hand-on gave up", level=logging.ERROR, run=run.run_id)
    _ended(cfg, run)


def drop_gave_up(cfg: StackConfig, run_id: str, name: str, input_uri: str, reason: str) -> None:
    """The planner gave up on the ``_READY`` marker of run ``run_id``: the run ends FAILED with
    ``reason`` (stored FAILED if the planner never stored it), unless its first step started."""
    definition = pipelines.get(cfg, name)
    failed = PipelineRun(run_id, name, definition.steps, input_uri, source="drop", state=jobs.FAILED, reason=reason,
                         ended_at=time.time())
    if pipelines.create_run(cfg, failed):
        logs.event(log, "pipeline run failed: the planner gave up on its marker", level=logging.ERROR, run=run_id)
    elif jobs.find(cfg, keys.step_job_id(run_id, 0), counted=False) is None:
        pipelines.end(cfg, run_id, 0, jobs.FAILED, reason)


def cancel(cfg: StackConfig, run_id: str) -> int:
    """End a running run CANCELED at the step it is at, so that no later step starts; returns
    that step's index, whose job the caller cancels (:func:`parallelrun.pipeline.lifecycle.cancel`)."""
    while True:  # each try that loses finds the run a step further on, or ended
        run = pipelines.get_run(cfg, run_id)
        if run.state != jobs.RUNNING:
            raise ConflictError(f"pipeline run {run_id} has already ended ({run.state})")
        reason = f"canceled by user at step {run.step + 1} ({run.steps[run.step].name})"
        if pipelines.end(cfg, run_id, run.step, jobs.CANCELED, reason):
            _ended(cfg, run)
            return run.step


def _ended(cfg: StackConfig, run: PipelineRun) -> None:
    """The run ended (by this call or a twin's): its schedule's next run may start, and a next
    step's job that a hand-on created as the run was canceled never will."""
    if run.schedule:
        schedules.give_back(cfg, run.schedule, run.run_id)
    if run.step + 1 < len(run.steps):
        jobs.transition(cfg, run.job_id(run.step + 1), jobs.CANCELED, (jobs.QUEUED,), ended_at=time.time(),
                        reason=f"its pipeline run {run.run_id} ended before this step started")
