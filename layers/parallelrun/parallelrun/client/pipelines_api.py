"""The client's pipeline calls, mixed into :class:`parallelrun.client.api.Client`: create a
pipeline (from steps or a YAML/JSON file), run it, follow a run step by step."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from parallelrun.aws.config import StackConfig
from parallelrun.client import sdk
from parallelrun.core import pipelines as definitions
from parallelrun.core.errors import InputError, ParallelRunError
from parallelrun.core.pipelines import Step
from parallelrun.pipeline import chaining, lifecycle
from parallelrun.store import jobs, keys, pipelines

T = TypeVar("T")


def poll_until(read: Callable[[], T], ended: Callable[[T], bool], what: str,
               on_progress: Callable[[T], None] | None = None, poll_seconds: float = 1.0,
               timeout: float | None = None) -> T:
    """``read()`` every ``poll_seconds`` until ``ended`` says so; ``on_progress`` sees each read."""
    deadline = None if timeout is None else time.time() + timeout
    while True:
        found = read()
        if on_progress:
            on_progress(found)
        if ended(found):
            return found
        if deadline is not None and time.time() > deadline:
            raise ParallelRunError(f"{what} has not ended after {timeout:.0f} s")
        time.sleep(poll_seconds)


class PipelinesMixin:
    cfg: StackConfig

    def create_pipeline(self, name: str, steps: Iterable[Step | Mapping[str, Any]],
                        description: str = "") -> sdk.Pipeline:
        """A pipeline of ``steps`` (``PipelineStep``s, or mappings as a pipeline file's), each
        checked as a submit checks a job, and each able to read what the step before feeds it."""
        parsed = definitions.parse_steps([s.to_dict() if isinstance(s, Step) else dict(s) for s in steps])
        chaining.create(self.cfg, name, parsed, description)
        return sdk.Pipeline(self, name)

    def create_pipeline_from_file(self, path: str | Path, name: str | None = None) -> sdk.Pipeline:
        """A pipeline from a YAML or JSON file (see :func:`parallelrun.core.pipelines.parse_file`);
        ``name`` wins over the file's."""
        found = definitions.parse_file(path)
        name = name or found.name
        if not name:
            raise InputError(f"pipeline file {path} names no pipeline: give NAME, or `name:` in the file")
        chaining.create(self.cfg, name, found.steps, found.description)
        return sdk.Pipeline(self, name)

    def pipelines(self) -> list[pipelines.Pipeline]:
        return pipelines.list_pipelines(self.cfg)

    def pipeline(self, name: str) -> pipelines.Pipeline:
        return pipelines.get(self.cfg, name)

    def delete_pipeline(self, name: str) -> None:
        """Delete a pipeline; runs under way finish with the steps they started with."""
        pipelines.delete(self.cfg, name)

    def run_pipeline(self, name: str, inputs: str | sdk.FileDataset | sdk.TabularDataset,
                     settings: dict[str, Any] | None = None) -> sdk.PipelineRun:
        """Start a run on ``inputs`` (the first step's input; ``settings`` over its own)."""
        overrides = dict(settings or {})
        if isinstance(inputs, sdk.TabularDataset):
            overrides = {"input_type": "tabular", "input_format": inputs.input_format, **overrides}
        uri = inputs if isinstance(inputs, str) else inputs.uri
        return sdk.PipelineRun(self, chaining.start(self.cfg, name, uri, overrides).run_id)

    def cancel_pipeline_run(self, run_id: str) -> pipelines.PipelineRun:
        """Stop a run: no later step starts, and the step under way is canceled (its output holds
        what succeeded)."""
        step = chaining.cancel(self.cfg, run_id)
        lifecycle.cancel(self.cfg, keys.step_job_id(run_id, step))  # False if it had ended, or never started
        return self.pipeline_run(run_id)

    def pipeline_run(self, run_id: str) -> pipelines.PipelineRun:
        return pipelines.get_run(self.cfg, run_id)

    def find_pipeline_run(self, run_id: str) -> pipelines.PipelineRun | None:
        return pipelines.find_run(self.cfg, run_id)

    def pipeline_runs(self, name: str | None = None, limit: int = 20) -> list[pipelines.PipelineRun]:
        """The newest runs first (of pipeline ``name``, if given)."""
        return pipelines.list_runs(self.cfg, name, limit)

    def step_jobs(self, run: pipelines.PipelineRun) -> list[jobs.JobRecord | None]:
        """Each step's job, None for a step not started (yet, or ever: the run ended before)."""
        return [jobs.find(self.cfg, run.job_id(index)) if index <= run.step else None
                for index in range(len(run.steps))]

    def wait_pipeline(self, run_id: str, on_progress: Callable[[pipelines.PipelineRun], None] | None = None,
                      poll_seconds: float = 1.0, timeout: float | None = None) -> pipelines.PipelineRun:
        """Poll until the run ends; ``on_progress`` sees each state."""
        return poll_until(lambda: self.pipeline_run(run_id), lambda run: run.state in jobs.TERMINAL,
                          f"pipeline run {run_id}", on_progress, poll_seconds, timeout)
