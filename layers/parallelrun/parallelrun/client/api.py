"""The client: what the CLI (and a Python user) calls to use a stack, local or deployed."""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from parallelrun import aws
from parallelrun.aws import s3
from parallelrun.aws.config import StackConfig
from parallelrun.client import azure_import, report, sdk
from parallelrun.client.pipelines_api import PipelinesMixin, poll_until
from parallelrun.core.datasets import READY_MARKER, split_s3_uri
from parallelrun.core.errors import ConflictError, NotFoundError, ParallelRunError, StackError
from parallelrun.local import state
from parallelrun.pipeline import lifecycle, planner, scheduling, submit
from parallelrun.scoring import environments
from parallelrun.store import batches, endpoints, jobs, keys, registry, schedules
from parallelrun.core import compute, model_refs, settings as run_settings


class Client(PipelinesMixin):
    def __init__(self, cfg: StackConfig, deployed: bool = False) -> None:
        # deployed: the stack runs on AWS, where a deployment with requirements gets a worker of its
        # own (aws.workers); on a local stack the local workers serve it in its environment.
        self.cfg, self.deployed = cfg, deployed

    @classmethod
    def local(cls) -> Client:
        """The running local stack (``parallelrun local up``), found through its state file.

        Its resources are read from its outputs through CloudFormation, which moto answers, as
        for a deployed stack.
        """
        running = state.load_state()
        if running is None:
            raise StackError("no local stack is running: start one with `parallelrun local up`")
        use_endpoint(running["endpoint_url"], running["region"])
        return cls.from_stack(running["stack_name"])

    @classmethod
    def from_stack(cls, stack_name: str) -> Client:
        """A stack of template.yaml by name (``sam deploy --stack-name``), in the region boto3 is
        set to (``AWS_REGION``, ``AWS_PROFILE``)."""
        # AWS_ENDPOINT_URL is how a process is pointed at a local stack (use_endpoint).
        return cls(StackConfig.from_stack(stack_name), deployed=not os.environ.get("AWS_ENDPOINT_URL"))

    @classmethod
    def connect(cls, stack_name: str | None = None) -> Client:
        """The stack named by ``stack_name`` or ``PARALLELRUN_STACK``; without either, the local one."""
        name = stack_name or os.environ.get("PARALLELRUN_STACK")
        return cls.from_stack(name) if name else cls.local()

    # --- models and endpoints

    def register_model(self, path: str | Path, name: str, tags: dict[str, str] | None = None,
                       description: str = "") -> registry.ModelVersion:
        return registry.register(self.cfg, path, name, tags, description)

    def models(self, tags: dict[str, str] | None = None) -> list[registry.ModelVersion]:
        return registry.list_models(self.cfg, tags)

    def model(self, ref: str) -> registry.ModelVersion:
        return registry.get(self.cfg, *model_refs.parse_ref(ref))

    def archive_model(self, ref: str) -> registry.ModelVersion:
        name, version = model_refs.parse_ref(ref)
        if version is None:
            raise ParallelRunError(f"archive which version of {name}? write {name}:VERSION")
        return registry.archive(self.cfg, name, version)

    def create_endpoint(self, name: str, code: str | Path | None, entry_script: str | None, model: str,
                        settings: dict[str, Any] | None = None, requirements: tuple[str, ...] = ()) -> endpoints.Deployment:
        """An endpoint and its default deployment (no code and entry script: a no-code one); its
        requirements (given, or requirements.txt beside the code) are built first on a local
        stack, and get their own worker on a deployed one. ``settings`` may hold where it runs
        beside its run settings: ``{"compute": "ecs", "gpu": 1}`` (:mod:`parallelrun.core.compute`)."""
        requirements = self._prepared(endpoints.requirements_for(code, tuple(requirements)), compute.of_settings(settings))
        created = endpoints.create(self.cfg, name, code, entry_script, model, settings, requirements=requirements)
        return self._with_worker(created, undo=lambda: endpoints.delete_endpoint(self.cfg, name))

    def update_endpoint(self, name: str, code: str | Path | None = None, entry_script: str | None = None,
                        model: str | None = None, settings: dict[str, Any] | None = None) -> endpoints.Deployment:
        current = endpoints.get_deployment(self.cfg, name)
        requirements = endpoints.requirements_after_update(current, code)
        if self.deployed and requirements != current.requirements:
            raise ConflictError(f"the new code of endpoint {name!r} changes its requirements, which its worker on "
                                "AWS was built for: add a deployment with this code (`parallelrun deployments create`)"
                                " and make it the default")
        self._prepared(requirements, compute.updated(current.compute, compute.split(settings or {})[0]))
        return endpoints.update(self.cfg, name, code, entry_script, model, settings)

    def _prepared(self, requirements: tuple[str, ...], chosen: compute.Compute) -> tuple[str, ...]:
        """On a local stack, the requirements' environment built now, so that a package that
        cannot install is refused before anything is stored (the workers share the cache); none
        is built for a compute: ecs deployment, which refuses requirements."""
        compute.check_requirements(chosen, requirements)
        if not self.deployed and environments.needed(requirements):
            environments.ensure(requirements)
        return requirements

    def _with_worker(self, deployment: endpoints.Deployment, undo: Callable[[], None]) -> endpoints.Deployment:
        """On a deployed stack, the deployment's own worker for its requirements, recorded with it;
        if it cannot be made, ``undo`` removes the deployment just stored."""
        if not (self.deployed and deployment.requirements):
            return deployment
        try:
            queue_url = environments.make_worker(self.cfg, deployment.endpoint, deployment.name, deployment.requirements)
        except BaseException:
            undo()
            raise
        endpoints.record_worker(self.cfg, deployment.endpoint, deployment.name, queue_url)
        return endpoints.get_deployment(self.cfg, deployment.endpoint, deployment.name)

    def endpoints(self) -> list[dict[str, Any]]:
        return endpoints.list_endpoints(self.cfg)

    def endpoint(self, name: str) -> dict[str, Any]:
        return endpoints.get_endpoint(self.cfg, name)

    def delete_endpoint(self, name: str) -> None:
        """Delete an endpoint, its deployments and their own workers."""
        for deployment in endpoints.list_deployments(self.cfg, name):
            if deployment.queue_url:
                environments.remove_worker(deployment.queue_url)
        endpoints.delete_endpoint(self.cfg, name)

    def add_deployment(self, endpoint: str, name: str, code: str | Path | None, entry_script: str | None, model: str,
                       settings: dict[str, Any] | None = None, make_default: bool = False,
                       requirements: tuple[str, ...] = ()) -> endpoints.Deployment:
        """Add a deployment (its requirements as :meth:`create_endpoint` treats them); it becomes
        the default only once its worker, if it needs one, is made."""
        requirements = self._prepared(endpoints.requirements_for(code, tuple(requirements)), compute.of_settings(settings))
        added = endpoints.add_deployment(self.cfg, endpoint, name, code, entry_script, model, settings,
                                         requirements=requirements)
        added = self._with_worker(added, undo=lambda: endpoints.delete_deployment(self.cfg, endpoint, name))
        if make_default:
            endpoints.set_default(self.cfg, endpoint, name)
        return added

    def create_endpoint_from_file(self, path: str | Path, name: str | None = None,
                                  on_note: Callable[[str], None] | None = None) -> dict[str, Any]:
        """An endpoint from Azure ML v2 batch endpoint YAML, with no deployment yet; its first
        deployment (or the one its defaults.deployment_name names) becomes its default."""
        return azure_import.create_endpoint(self.cfg, path, name, on_note)

    def create_deployment_from_file(self, path: str | Path, endpoint: str | None = None, name: str | None = None,
                                    settings: dict[str, Any] | None = None, make_default: bool = False,
                                    on_note: Callable[[str], None] | None = None) -> endpoints.Deployment:
        """A deployment from Azure ML v2 batch deployment YAML as it is (see
        :mod:`parallelrun.core.azure_yaml`); ``on_note`` hears what the YAML asks that works
        otherwise here (an image, a compute target)."""
        found = azure_import.deployment_args(self.cfg, path, endpoint, name, settings)
        added = self.add_deployment(found.endpoint, found.name, found.code_dir, found.entry_script, found.model,
                                    found.settings, make_default, found.requirements)
        azure_import.tell(found.notes, on_note)
        return added

    def deployments(self, endpoint: str) -> list[endpoints.Deployment]:
        return endpoints.list_deployments(self.cfg, endpoint)

    def deployment(self, endpoint: str, name: str | None = None) -> endpoints.Deployment:
        return endpoints.get_deployment(self.cfg, endpoint, name)

    def set_default(self, endpoint: str, name: str) -> None:
        endpoints.set_default(self.cfg, endpoint, name)

    def delete_deployment(self, endpoint: str, name: str) -> None:
        """Delete a deployment that is not the default, and its own worker if it has one."""
        deployment = endpoints.get_deployment(self.cfg, endpoint, name)
        if endpoints.get_endpoint(self.cfg, endpoint)["default_deployment"] != name and deployment.queue_url:
            environments.remove_worker(deployment.queue_url)
        endpoints.delete_deployment(self.cfg, endpoint, name)

    # --- jobs

    def submit(self, target: str | sdk.ParallelRunConfig, inputs: str | sdk.FileDataset | sdk.TabularDataset,
               settings: dict[str, Any] | None = None, deployment: str | None = None, *,
               model: str | None = None, side_inputs: list[str] | None = None,
               arguments: list[str] | None = None, allow_reuse: bool | None = None) -> sdk.Job:
        """Start a job on ``inputs`` with an endpoint (by name) or a ParallelRunConfig (deployed
        first to the endpoint named after its entry script, with ``model``)."""
        given = {name: value for name, value in (("side_inputs", side_inputs), ("arguments", arguments),
                                                  ("allow_reuse", allow_reuse)) if value is not None}
        target, uri, overrides = self._resolve(target, inputs, {**(settings or {}), **given}, model)
        job = submit.prepare(self.cfg, target, uri, overrides, deployment)
        submit.start(self.cfg, job)
        return sdk.Job(self, job.job_id)

    def _resolve(self, target: str | sdk.ParallelRunConfig, inputs: str | sdk.FileDataset | sdk.TabularDataset,
                 settings: dict[str, Any], model: str | None) -> tuple[str, str, dict[str, Any]]:
        """The endpoint, input URI and settings a job or a schedule runs with: a config deployed
        and its settings taken, a dataset's kind and partitions taken, ``settings`` over both."""
        overrides = run_settings.canonical(settings)  # a schedule keeps them, under one name each
        if isinstance(target, sdk.ParallelRunConfig):
            overrides = {**target.settings(), **overrides}
            target = self._deploy(target, model)
        if isinstance(inputs, sdk.TabularDataset):
            overrides = {"input_type": "tabular", "input_format": inputs.input_format, **overrides}
        if isinstance(inputs, sdk.FileDataset) and inputs.partition_format:
            overrides = {"partition_format": inputs.partition_format, **overrides}
        return target, inputs if isinstance(inputs, str) else inputs.uri, overrides

    def _deploy(self, config: sdk.ParallelRunConfig, model: str | None) -> str:
        """The config's code as the default deployment of its endpoint (created the first time)."""
        name = config.endpoint_name()
        try:
            current = endpoints.get_deployment(self.cfg, name)
        except NotFoundError:
            if model is None:
                raise ParallelRunError(f"submit a ParallelRunConfig with model=NAME[:VERSION] the first time "
                                       f"(it creates endpoint {name!r})") from None
            endpoints.create(self.cfg, name, config.source_directory, config.entry_script, model)
            return name
        endpoints.update(self.cfg, name, config.source_directory, config.entry_script, model,
                         deployment=current.name)
        return name

    # --- schedules

    def create_schedule(self, target: str | sdk.ParallelRunConfig, name: str,
                        inputs: str | sdk.FileDataset | sdk.TabularDataset, expression: str,
                        settings: dict[str, Any] | None = None, deployment: str | None = None, *,
                        overlap: str = schedules.SKIP, model: str | None = None) -> schedules.Schedule:
        """Run an endpoint (or a ParallelRunConfig, deployed as :meth:`submit` does) over
        ``inputs`` on an EventBridge ``rate(...)`` or ``cron(...)`` expression; each run scores
        only the inputs no earlier run scored. ``overlap``: ``skip`` or ``wait``."""
        target, uri, overrides = self._resolve(target, inputs, dict(settings or {}), model)
        return scheduling.create(self.cfg, name, target, expression, uri, overrides, deployment, overlap)

    def schedules(self) -> list[schedules.Schedule]:
        return schedules.list_schedules(self.cfg)

    def schedule(self, name: str) -> schedules.Schedule:
        return schedules.get(self.cfg, name)

    def delete_schedule(self, name: str) -> None:
        """Delete the schedule, its rule and its record of what was scored; a run in progress finishes."""
        schedules.delete(self.cfg, name)

    def run_schedule_now(self, name: str) -> scheduling.Firing:
        """Fire the schedule at once, as its rule would (the overlap setting applies)."""
        return scheduling.run_now(self.cfg, name)

    def job(self, job_id: str) -> jobs.JobRecord:
        return jobs.get(self.cfg, job_id)

    def jobs(self, limit: int = 50) -> list[jobs.JobRecord]:
        return jobs.list_jobs(self.cfg, limit)

    def cancel(self, job_id: str) -> jobs.JobRecord:
        """Stop a job: nothing more is sent or run; the output holds what succeeded."""
        if not lifecycle.cancel(self.cfg, job_id):
            job = self.job(job_id)
            raise ConflictError(f"job {job_id} has already ended ({job.state}) or is finalizing")
        return self.job(job_id)

    def redrive(self, job_id: str) -> list[int]:
        """Run an ended job's failed mini-batches again; see :func:`parallelrun.pipeline.planner.redrive`."""
        return planner.redrive(self.cfg, job_id)

    def logs(self, job_id: str, minibatch: int | None = None) -> Iterator[str]:
        """The stored log lines of a job's mini-batch attempts (the script's own included)."""
        self.job(job_id)  # a clear error for an unknown job
        prefix = keys.logs_prefix(job_id, minibatch)
        for obj in s3.under(self.cfg.artifacts_bucket, prefix):
            yield from s3.get(self.cfg.artifacts_bucket, obj["Key"]).decode().splitlines()

    def report(self, job_id: str, path: str | Path | None = None) -> str:
        """The job's self-contained HTML report (timeline, throughput, slowest mini-batches,
        failures, cost); also written to ``path`` if given."""
        page = report.render(self.report_data(job_id))
        if path is not None:
            Path(path).write_text(page, encoding="utf-8")
        return page

    def report_data(self, job_id: str) -> report.ReportData:
        """What the report shows: the job, its mini-batch records, and (once it ended) its
        summary, whose failed inputs by error type the aggregator counted while collating
        failures.jsonl."""
        job = self.job(job_id)
        batches = self.batches(job_id)
        summary = None
        failures: collections.Counter[str] = collections.Counter()
        if job.output_uri and not job.reused_from:  # a job that took another's output whole has no summary of its own
            try:
                summary = json.loads(b"".join(self._output(job, "summary.json")))
                failures.update(summary.get("errors") or {})
            except NotFoundError:
                pass  # not ended yet: the page says so
        return report.ReportData(job, batches, dict(failures.most_common()), summary)

    def batches(self, job_id: str) -> list[batches.BatchRecord]:
        """The job's mini-batch records, one per mini-batch recorded so far."""
        return list(batches.iter_batches(self.cfg, job_id))

    def find_job(self, input_uri: str) -> jobs.JobRecord | None:
        """The newest job on ``input_uri`` (a drop folder's job has no id known in advance)."""
        return next((j for j in self.jobs(1000) if j.input_uri == input_uri), None)

    def wait(self, job_id: str, on_progress: Callable[[jobs.JobRecord], None] | None = None,
             poll_seconds: float = 1.0, timeout: float | None = None) -> jobs.JobRecord:
        """Poll until the job ends; ``on_progress`` sees each state."""
        return poll_until(lambda: self.job(job_id), lambda job: job.state in jobs.TERMINAL, f"job {job_id}",
                          on_progress, poll_seconds, timeout)

    def output_uri(self, job: jobs.JobRecord, name: str | None = None) -> str:
        return job.output_uri + (name or job.settings.output_file_name)

    def read_output(self, job_id: str, name: str | None = None) -> Iterator[bytes]:
        """The collated output (or ``summary.json``, ``failures.jsonl``) streamed in chunks."""
        return self._output(self.job(job_id), name)

    def _output(self, job: jobs.JobRecord, name: str | None) -> Iterator[bytes]:
        bucket, key = split_s3_uri(self.output_uri(job, name))
        body = s3.open_existing(bucket, key)
        if body is None:
            raise NotFoundError(f"job {job.job_id} has no {key.rsplit('/', 1)[-1]} (state {job.state})")
        yield from body.iter_chunks(1024 * 1024)

    def upload_folder(self, folder: str | Path, uri: str, threads: int = 16) -> int:
        """Upload every file below ``folder`` to the ``uri`` prefix, concurrently; returns the count."""
        folder = Path(folder)
        bucket, prefix = split_s3_uri(uri if uri.endswith("/") else uri + "/")
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        with ThreadPoolExecutor(threads) as pool:  # the threads share the process's client
            list(pool.map(lambda p: s3.upload_file(p, bucket, prefix + p.relative_to(folder).as_posix()), files))
        return len(files)

    def mark_ready(self, uri: str) -> None:
        """Write the ``_READY`` marker into the drop folder ``uri``: the files there are complete,
        and the planner starts a job on them."""
        bucket, prefix = split_s3_uri(uri if uri.endswith("/") else uri + "/")
        s3.put(bucket, prefix + READY_MARKER, b"")


def use_endpoint(endpoint_url: str, region: str) -> None:
    """Point this process's AWS clients at a local stack (moto accepts any credentials)."""
    os.environ["AWS_ENDPOINT_URL"] = endpoint_url
    os.environ["AWS_DEFAULT_REGION"] = region
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    aws.reset_clients()
