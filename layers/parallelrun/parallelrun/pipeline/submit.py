"""Turning a request (CLI, SDK or a ``_READY`` marker) into a stored, validated job.

Everything a job will need is resolved here, at submit: the deployment is snapshotted (model
version included) so a change to the endpoint never reaches a running job, and every setting is
checked so that a bad one is refused with its name, value and what is allowed.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping
from typing import Any

from parallelrun.aws import s3, sqs
from parallelrun.aws.config import StackConfig
from parallelrun.core import compute, model_refs, nocode, settings
from parallelrun.core.datasets import InputSpec, split_s3_uri
from parallelrun.core.errors import ConflictError, InputError, SettingsError
from parallelrun.store import endpoints, jobs, keys, registry

# The artifacts bucket's own folders: jobs' plans, parts and outputs; scoring code; models.
_RESERVED_PREFIXES = (keys.JOBS_PREFIX, keys.CODE_PREFIX, keys.MODELS_PREFIX)
_SCHEDULES_PREFIX = keys.SCHEDULES_PREFIX  # where scheduling._prepare_run puts its runs by default


def new_job_id(endpoint: str, seed: str | None = None) -> str:
    """Readable and sortable; derived from ``seed`` when given, so a retried trigger maps to one job."""
    if seed:
        return f"{endpoint}-{hashlib.sha256(seed.encode()).hexdigest()[:12]}"
    return f"{endpoint}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


def prepare(
    cfg: StackConfig,
    endpoint: str,
    input_uri: str,
    overrides: Mapping[str, Any] | None = None,
    deployment: str | None = None,
    job_id: str | None = None,
    source: str = "submit",
) -> jobs.JobRecord:
    """A job ready to store: deployment snapshotted, settings resolved and checked, output free."""
    if source == "drop":
        settings.check_drop_overrides(overrides or {})
    compute.refuse_per_job(overrides or {})
    found = endpoints.get_deployment(cfg, endpoint, deployment)
    ecs = endpoints.checked_compute(cfg, found.compute).is_ecs  # the stack may have changed since it was made
    run_settings = settings.resolve(found.settings, limits=cfg.limits, ecs=ecs)
    run_settings = settings.resolve(dict(overrides or {}), base=run_settings, limits=cfg.limits, ecs=ecs)
    settings.check_for_files(run_settings)
    if found.code_sha is None:  # the built-in scorer reads tables only
        nocode.check_settings(run_settings)
    run_settings = settings.check_partitions(run_settings)
    _check_partition_model(found, run_settings)
    try:
        spec = InputSpec.from_uri(input_uri)
    except ValueError:
        raise InputError(f"--input {input_uri!r}: give an s3://bucket/folder/ URI") from None
    _refuse_unreadable_input(spec)
    job_id = job_id or new_job_id(endpoint)
    output_uri = run_settings.output_path or f"s3://{cfg.artifacts_bucket}/{keys.output_prefix(job_id)}"
    output_uri = output_uri if output_uri.endswith("/") else output_uri + "/"
    if run_settings.output_path:
        _check_output_place(cfg, run_settings.output_path, source)
    _refuse_used_output(output_uri)
    return jobs.JobRecord(
        job_id=job_id,
        endpoint=endpoint,
        deployment=snapshot(cfg, found),
        settings=run_settings,
        input_uri=spec.uri,
        output_uri=output_uri,
        source=source,
    )


def _check_partition_model(deployment: endpoints.Deployment, run_settings: settings.RunSettings) -> None:
    """A model chosen per partition needs partitions that carry every field it names."""
    if not model_refs.is_per_partition(deployment.model_name):
        return
    fields = model_refs.parse_selector(deployment.model_name).fields
    missing = [name for name in fields if name not in run_settings.partition_keys]
    if missing:
        raise SettingsError("partition_keys", ",".join(run_settings.partition_keys) or None,
                            f"names including {', '.join(missing)}: deployment {deployment.name!r} chooses its "
                            f"model per partition by {deployment.model_name!r}")


def snapshot(cfg: StackConfig, deployment: endpoints.Deployment) -> dict[str, Any]:
    """What a job keeps of its deployment, the model version resolved (a model per partition is
    resolved when each mini-batch runs): later changes to the endpoint never reach it."""
    if model_refs.is_per_partition(deployment.model_name):
        name, version = deployment.model_name, None
    else:
        model = registry.get(cfg, deployment.model_name, deployment.model_version)
        name, version = model.name, model.version
    return {
        "endpoint": deployment.endpoint, "deployment": deployment.name, "code_sha": deployment.code_sha,
        "entry_script": deployment.entry_script, "model_name": name, "model_version": version,
        "requirements": list(deployment.requirements), "queue_url": deployment.queue_url,
        "compute": deployment.compute.to_dict(),
    }


def _refuse_unreadable_input(spec: InputSpec) -> None:
    """An input folder that cannot be listed is refused now, not found out by the planner."""
    try:
        s3.first_key(spec.bucket, spec.prefix)
    except s3.ClientError as error:
        code = s3.error_code(error)
        raise InputError(f"--input {spec.uri}: cannot list it ({code}): check the bucket's name and access") from None


def _check_output_place(cfg: StackConfig, output_path: str, source: str) -> None:
    """Outputs go only where the stack's functions write, the artifacts bucket (their roles write
    no other: the input bucket is a drop zone, where a collected file named _READY would start a
    job), and never among what they keep there: other jobs' folders, scoring code, models, or
    (but for a schedule's run) the schedules' runs."""
    bucket, key = split_s3_uri(output_path)
    reserved = _RESERVED_PREFIXES + (() if source == "schedule" else (_SCHEDULES_PREFIX,))
    if bucket == cfg.artifacts_bucket and not (key + "/").startswith(reserved):
        return
    raise SettingsError("output_path", output_path, f"an s3:// URI in this stack's artifacts bucket "
                        f"({cfg.artifacts_bucket}), outside its {', '.join(reserved)} (jobs' own files, scoring "
                        "code, models and scheduled runs)")


def _refuse_used_output(uri: str) -> None:
    """Every file a job writes (its output, summary.json, failures.jsonl and what its script leaves
    in EntryScript().output_dir and log_dir) goes below ``uri``: a folder holding anything already
    could lose an earlier job's files."""
    bucket, prefix = split_s3_uri(uri)
    found = s3.first_key(bucket, prefix)
    if found is not None:
        raise ConflictError(f"output folder {uri} already exists, holding s3://{bucket}/{found}: a job "
                            "writes only into a folder that holds nothing yet; choose another output_path or "
                            "remove what is there first")


def start(cfg: StackConfig, job: jobs.JobRecord) -> None:
    """Store ``job`` and hand it to the planner, which lists and shards its inputs."""
    jobs.create(cfg, job)
    send_start(cfg, job.job_id)


def send_start(cfg: StackConfig, job_id: str) -> None:
    sqs.send(cfg.planner_queue_url, sqs.Start(job_id))
