"""Pipelines and pipeline runs as stored.

A pipeline is one item, ``PIPELINE#<name>``: its steps (:mod:`parallelrun.core.pipelines`).
Its name shares the drop bucket's top-level folders with the endpoints' (``<name>/<folder>/_READY``
starts a run), so creating one is a transaction that also checks no endpoint has the name.

A run is one item, ``PIPELINERUN#<id>``: the steps as they were when it started (changing or
deleting the pipeline never reaches a run under way), its input, its state, and ``step``, the
step whose job runs now. Every step's job is an ordinary job (``keys.step_job_id``), so the
planner's reuse applies per step. The run moves on by conditional writes on ``step``
(:func:`advance`, :func:`end`): of two hand-ons from one step, one moves it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from parallelrun.aws import dynamo
from parallelrun.aws.config import StackConfig
from parallelrun.core.errors import ConflictError, NotFoundError
from parallelrun.core.pipelines import Step
from parallelrun.store import jobs, keys


@dataclass
class Pipeline:
    name: str
    steps: list[Step]
    created_at: float = field(default_factory=time.time)
    description: str = ""

    def to_item(self) -> dict[str, Any]:
        return {**keys.pipeline_key(self.name), "name": self.name, "steps": _steps_json(self.steps),
                "created_at": dynamo.decimal(self.created_at, 3), "description": self.description}

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Pipeline:
        return cls(item["name"], _steps(item["steps"]), float(item["created_at"]), item.get("description", ""))


@dataclass
class PipelineRun:
    run_id: str
    pipeline: str
    steps: list[Step]
    input_uri: str
    source: str = "submit"  # submit (CLI/SDK), drop (a _READY marker) or schedule
    overrides: dict[str, Any] = field(default_factory=dict)  # the first step's: a marker's body, a schedule's settings
    schedule: str | None = None  # the schedule this run is a run of, whose lock it holds until it ends
    state: str = jobs.RUNNING
    step: int = 0  # the step whose job runs now (from 0)
    reason: str = ""
    created_at: float = field(default_factory=time.time)
    ended_at: float | None = None

    def job_id(self, index: int) -> str:
        return keys.step_job_id(self.run_id, index)

    def to_item(self) -> dict[str, Any]:
        item = {k: dynamo.decimal(v, 3) for k, v in self.__dict__.items() if v is not None}
        item["steps"] = _steps_json(self.steps)
        item["overrides"] = json.dumps(self.overrides, sort_keys=True)
        return {**keys.pipeline_run_key(self.run_id), **item}

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> PipelineRun:
        raw = {k: dynamo.plain(v) for k, v in item.items() if k in cls.__dataclass_fields__}
        raw["steps"] = _steps(item["steps"])
        raw["overrides"] = json.loads(item.get("overrides") or "{}")
        return cls(**raw)


def _steps_json(steps: list[Step]) -> str:
    """Steps as JSON text: their settings keep the types the user gave (DynamoDB takes no float)."""
    return json.dumps([step.to_dict() for step in steps], sort_keys=True)


def _steps(text: str) -> list[Step]:
    return [Step(s["name"], s["endpoint"], s.get("deployment"), s.get("settings") or {}, s["feed"])
            for s in json.loads(text)]


# --- pipelines


def put_new(cfg: StackConfig, pipeline: Pipeline) -> None:
    """Store a new pipeline; refused if a pipeline or an endpoint has its name (one transaction,
    so an endpoint created meanwhile cannot slip between the check and the write)."""
    if not dynamo.put_new_where_absent(cfg.table, pipeline.to_item(), keys.endpoint_key(pipeline.name)):
        what = "a pipeline" if find(cfg, pipeline.name) else "an endpoint"
        raise ConflictError(f"{what} named {pipeline.name!r} exists: pipelines and endpoints share the drop "
                            "bucket's folders, so their names must differ")


def find(cfg: StackConfig, name: str) -> Pipeline | None:
    item = dynamo.get(cfg.table, keys.pipeline_key(name), consistent=True)
    return Pipeline.from_item(item) if item else None


def get(cfg: StackConfig, name: str) -> Pipeline:
    found = find(cfg, name)
    if found is None:
        raise NotFoundError(f"no pipeline {name!r}: `parallelrun pipelines list` lists them")
    return found


def list_pipelines(cfg: StackConfig) -> list[Pipeline]:
    """Every pipeline, by name. A scan: for a listing command, never a hot path."""
    items = dynamo.scan(cfg.table, FilterExpression="begins_with(pk, :prefix) AND sk = :sk",
                        ExpressionAttributeValues={":prefix": keys.PIPELINE_PREFIX, ":sk": keys.PIPELINE_SK})
    return sorted((Pipeline.from_item(item) for item in items), key=lambda p: p.name)


def delete(cfg: StackConfig, name: str) -> None:
    """Delete a pipeline; its runs keep the steps they started with and finish."""
    get(cfg, name)
    dynamo.delete(cfg.table, keys.pipeline_key(name))


# --- runs


def create_run(cfg: StackConfig, run: PipelineRun) -> bool:
    """Store a new run; False if one of that id exists (a retried trigger)."""
    return dynamo.put_new(cfg.table, run.to_item())


def find_run(cfg: StackConfig, run_id: str) -> PipelineRun | None:
    item = dynamo.get(cfg.table, keys.pipeline_run_key(run_id), consistent=True)
    return PipelineRun.from_item(item) if item else None


def get_run(cfg: StackConfig, run_id: str) -> PipelineRun:
    found = find_run(cfg, run_id)
    if found is None:
        raise NotFoundError(f"no pipeline run {run_id!r}: `parallelrun pipelines show NAME` lists a pipeline's runs")
    return found


def list_runs(cfg: StackConfig, pipeline: str | None = None, limit: int = 20) -> list[PipelineRun]:
    """The newest runs first (of ``pipeline``, if given). A scan, as :func:`list_pipelines`."""
    items = dynamo.scan(cfg.table, FilterExpression="begins_with(pk, :prefix) AND sk = :sk",
                        ExpressionAttributeValues={":prefix": keys.PIPELINE_RUN_PREFIX, ":sk": keys.PIPELINE_RUN_SK})
    runs = [PipelineRun.from_item(item) for item in items]
    runs = [run for run in runs if pipeline is None or run.pipeline == pipeline]
    return sorted(runs, key=lambda run: run.created_at, reverse=True)[:limit]


def advance(cfg: StackConfig, run_id: str, step: int) -> bool:
    """Move a running run from ``step`` to the next; False if it is past it or ended (a twin moved it)."""
    return dynamo.update_if(cfg.table, keys.pipeline_run_key(run_id), "SET step = :next",
                            "#state = :running AND step = :step",
                            {":next": step + 1, ":step": step, ":running": jobs.RUNNING}, names={"#state": "state"})


def end(cfg: StackConfig, run_id: str, step: int, state: str, reason: str = "") -> bool:
    """End a running run at ``step``; False if it moved on or ended already."""
    return dynamo.update_if(cfg.table, keys.pipeline_run_key(run_id),
                            "SET #state = :state, reason = :reason, ended_at = :now",
                            "#state = :running AND step = :step",
                            {":state": state, ":reason": reason, ":now": dynamo.decimal(time.time(), 3),
                             ":step": step, ":running": jobs.RUNNING}, names={"#state": "state"})
