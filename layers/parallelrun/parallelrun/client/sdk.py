"""The Python SDK in ParallelRunStep's words: ParallelRunConfig, FileDataset, Model and Job.

    from parallelrun import Client, ParallelRunConfig, FileDataset, Model

    client = Client.local()
    Model.register(client, "model.pkl", "digits")
    config = ParallelRunConfig(entry_script="score.py", source_directory="examples/digits",
                               mini_batch_size=20, error_threshold=10, output_action="append_row")
    job = client.submit(config, inputs=FileDataset.from_files("s3://bucket/digits/batch1/"), model="digits")
    job.wait_for_completion(show_output=True)
    frame = job.get_output_dataframe()

    # every night at 02:00 UTC, score what arrived in the folder since the last run
    client.create_schedule(config, "nightly", FileDataset.from_files("s3://bucket/incoming/"),
                           "cron(0 2 * * ? *)", model="digits")

    # a pipeline: images -> a features table -> a classifier scoring that table
    pipeline = client.create_pipeline("digits-chain", [
        PipelineStep("features", "featurize", settings={"output_format": "csv"}),
        PipelineStep("classify", "classifier", settings={"input_type": "tabular"})])
    run = pipeline.run(FileDataset.from_files("s3://bucket/digits/batch1/"))
    run.wait_for_completion()
    frame = run.get_output_dataframe()  # the last step's output
"""

from __future__ import annotations

import dataclasses
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from parallelrun.client.progress import progress_bar
from parallelrun.core.errors import InputError
from parallelrun.core.pipelines import Step as PipelineStep
from parallelrun.core.settings import canonical
from parallelrun.scoring import azure
from parallelrun.store import jobs, pipelines, registry


class ClientProtocol(Protocol):
    """What the SDK's classes ask of :class:`parallelrun.client.api.Client`. A protocol, not an
    import, because the client builds the SDK's Jobs and takes its configs: the SDK sits below it."""

    def job(self, job_id: str) -> jobs.JobRecord: ...

    def wait(self, job_id: str, on_progress: Callable[[jobs.JobRecord], None] | None = None,
             poll_seconds: float = 1.0, timeout: float | None = None) -> jobs.JobRecord: ...

    def read_output(self, job_id: str, name: str | None = None) -> Iterator[bytes]: ...

    def cancel(self, job_id: str) -> jobs.JobRecord: ...

    def report(self, job_id: str, path: str | Path | None = None) -> str: ...

    def submit(self, target: str | ParallelRunConfig, inputs: str | FileDataset | TabularDataset,
               settings: dict[str, Any] | None = None, deployment: str | None = None) -> Job: ...

    def register_model(self, path: str | Path, name: str, tags: dict[str, str] | None = None,
                       description: str = "") -> registry.ModelVersion: ...

    def pipeline(self, name: str) -> pipelines.Pipeline: ...

    def delete_pipeline(self, name: str) -> None: ...

    def run_pipeline(self, name: str, inputs: str | FileDataset | TabularDataset,
                     settings: dict[str, Any] | None = None) -> PipelineRun: ...

    def pipeline_run(self, run_id: str) -> pipelines.PipelineRun: ...

    def cancel_pipeline_run(self, run_id: str) -> pipelines.PipelineRun: ...

    def wait_pipeline(self, run_id: str, on_progress: Callable[[pipelines.PipelineRun], None] | None = None,
                      poll_seconds: float = 1.0, timeout: float | None = None) -> pipelines.PipelineRun: ...


@dataclass
class ParallelRunConfig:
    """ParallelRunConfig's arguments; those left None take the endpoint's or the default value."""

    entry_script: str
    source_directory: str = "."
    mini_batch_size: int | str | None = None
    error_threshold: int | None = None
    allowed_failed_count: int | None = None
    allowed_failed_percent: float | None = None
    output_action: str | None = None
    append_row_file_name: str | None = None
    process_count_per_node: int | None = None
    node_count: int | None = None
    run_invocation_timeout: int | None = None
    run_max_try: int | None = None
    logging_level: str | None = None
    partition_keys: list[str] | None = None
    environment_variables: dict[str, str] | None = None

    def settings(self) -> dict[str, Any]:
        """The run settings this config sets (checked at submit like any other)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("entry_script", "source_directory") and getattr(self, f.name) is not None}

    def endpoint_name(self) -> str:
        """The endpoint a config is deployed to when none is named: after its entry script."""
        return re.sub(r"[^a-z0-9-]+", "-", Path(self.entry_script).stem.lower()).strip("-")[:63] or "script"


@dataclass(frozen=True)
class FileDataset:
    """Files under an S3 prefix, as Azure's FileDataset: each file is one input;
    ``partition_format`` (``{store}/{date}/*.png``) names partitions after folders."""

    uri: str
    partition_format: str | None = None

    @classmethod
    def from_files(cls, path: str, partition_format: str | None = None) -> FileDataset:
        if not str(path).startswith("s3://"):
            raise InputError(f"FileDataset.from_files({path!r}): give an s3://bucket/folder/ URI")
        return cls(str(path), partition_format.lstrip("/") if partition_format else None)


@dataclass(frozen=True)
class TabularDataset:
    """Tables under an S3 prefix, as Azure's TabularDataset: run() gets DataFrames of about
    ``mini_batch_size`` bytes (a big file split by rows, never a mini-batch across files)."""

    uri: str
    input_format: str | None = None

    @classmethod
    def from_delimited_files(cls, path: str) -> TabularDataset:
        return cls._at(path, "csv")

    @classmethod
    def from_parquet_files(cls, path: str) -> TabularDataset:
        return cls._at(path, "parquet")

    @classmethod
    def from_json_lines_files(cls, path: str) -> TabularDataset:
        return cls._at(path, "jsonl")

    @classmethod
    def _at(cls, path: str, fmt: str) -> TabularDataset:
        if not str(path).startswith("s3://"):
            raise InputError(f"TabularDataset: give an s3://bucket/folder/ URI, not {path!r}")
        return cls(str(path), fmt)


class Model(azure.Model):
    """Azure's Model: ``get_model_path`` inside a script, ``register`` outside."""

    @staticmethod
    def register(client: ClientProtocol, model_path: str, model_name: str, tags: dict[str, str] | None = None,
                 description: str = "") -> registry.ModelVersion:
        return client.register_model(model_path, model_name, tags, description)


class Job:
    """A submitted job: its status, its output, and what can be done with it."""

    def __init__(self, client: ClientProtocol, job_id: str) -> None:
        self.client, self.job_id = client, job_id

    def __repr__(self) -> str:
        return f"Job({self.job_id!r})"

    @property
    def record(self) -> jobs.JobRecord:
        return self.client.job(self.job_id)

    @property
    def status(self) -> str:
        return self.record.state

    def wait_for_completion(self, show_output: bool = True, timeout: float | None = None) -> str:
        """Wait for the job to end (a progress bar with ``show_output``); its final state."""
        progress = progress_bar(self.job_id) if show_output else None
        job = self.client.wait(self.job_id, on_progress=progress, timeout=timeout)
        if show_output:
            print(f"job {job.job_id}: {job.state}" + (f" ({job.reason})" if job.reason else ""), file=sys.stderr)
        return job.state

    def get_output_dataframe(self, sep: str = " ") -> Any:
        """The collated file as a pandas DataFrame (rows split on ``sep``, no header; parquet
        output with its columns and types)."""
        import pandas as pd  # only a caller of this method pays for importing pandas

        if self.record.settings.output_format == "parquet":
            return pd.read_parquet(io.BytesIO(b"".join(self.client.read_output(self.job_id))))
        text = b"".join(self.client.read_output(self.job_id)).decode()
        if not text:
            return pd.DataFrame()
        return pd.read_csv(io.StringIO(text), sep=sep, header=None, dtype=str, keep_default_na=False)

    def download(self, path: str | Path) -> Path:
        """The output file, ``summary.json`` and ``failures.jsonl`` into folder ``path``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        record = self.record
        names = ["summary.json", "failures.jsonl"]
        if record.settings.output_action == "append_row":
            names.insert(0, record.settings.output_file_name)
        for name in names:
            with open(folder / name, "wb") as handle:
                for chunk in self.client.read_output(self.job_id, name):
                    handle.write(chunk)
        return folder

    def cancel(self) -> str:
        return self.client.cancel(self.job_id).state

    def report(self, path: str | Path | None = None) -> str:
        """The job's HTML report; also written to ``path`` if given."""
        return self.client.report(self.job_id, path)

    def resubmit(self, inputs: str | FileDataset | TabularDataset | None = None, **overrides: Any) -> Job:
        """The same endpoint and deployment again, on new inputs and/or with changed settings."""
        record = self.record
        kept = {f.name: value for f in dataclasses.fields(record.settings)
                if (value := getattr(record.settings, f.name)) != f.default and f.default is not dataclasses.MISSING}
        kept.pop("output_path", None)  # a new job writes a new output
        return self.client.submit(record.endpoint, inputs or record.input_uri, {**kept, **canonical(overrides)},
                                  deployment=record.deployment.get("deployment"))


class Pipeline:
    """A stored pipeline (Azure's Pipeline of ParallelRunSteps): its steps, and runs of it."""

    def __init__(self, client: ClientProtocol, name: str) -> None:
        self.client, self.name = client, name

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r})"

    @property
    def steps(self) -> list[PipelineStep]:
        return self.client.pipeline(self.name).steps

    def run(self, inputs: str | FileDataset | TabularDataset, **first_step_settings: Any) -> PipelineRun:
        """A run on ``inputs``: the first step's input, with ``first_step_settings`` over its own."""
        return self.client.run_pipeline(self.name, inputs, canonical(first_step_settings))

    def delete(self) -> None:
        """Delete the pipeline; runs under way finish with the steps they started with."""
        self.client.delete_pipeline(self.name)


class PipelineRun:
    """A run of a pipeline: its state, each step's job, and the last step's output."""

    def __init__(self, client: ClientProtocol, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def __repr__(self) -> str:
        return f"PipelineRun({self.run_id!r})"

    @property
    def record(self) -> pipelines.PipelineRun:
        return self.client.pipeline_run(self.run_id)

    @property
    def status(self) -> str:
        return self.record.state

    def step_job(self, step: str | int) -> Job:
        """A step's job, by the step's name or number (from 1)."""
        record = self.record
        names = [s.name for s in record.steps]
        index = step - 1 if isinstance(step, int) else names.index(step) if step in names else -1
        if not 0 <= index <= record.step:
            raise InputError(f"pipeline run {self.run_id} has no started step {step!r} (steps: {', '.join(names)})")
        return Job(self.client, record.job_id(index))

    def wait_for_completion(self, show_output: bool = True, timeout: float | None = None) -> str:
        """Wait for the run to end; its final state (a failed run's reason names the step)."""
        run = self.client.wait_pipeline(self.run_id, timeout=timeout)
        if show_output:
            print(f"pipeline run {run.run_id}: {run.state}" + (f" ({run.reason})" if run.reason else ""),
                  file=sys.stderr)
        return run.state

    def cancel(self) -> str:
        """Stop the run: no later step starts, and the step under way is canceled."""
        return self.client.cancel_pipeline_run(self.run_id).state

    def get_output_dataframe(self, sep: str = " ") -> Any:
        """The last step's collated output (see :meth:`Job.get_output_dataframe`)."""
        return self.step_job(len(self.record.steps)).get_output_dataframe(sep)
