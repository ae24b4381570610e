"""Turning a request (CLI, SDK or a ``_READY`` marker) into a stored, validated job.

Everything a job will need is resolved here, at submit: the deployment is snapshotted (model
version included) so a change to the endpoint never reaches a running job, and every setting is
checked so that a bad one is refused with its name, value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

from parallelrun import aws, endpoints, jobs, registry, settings
from parallelrun.config import StackConfig
from parallelrun.datasets import InputSpec
from parallelrun.errors import ConflictError, InputError, SettingsError


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
) -> jobs.Job:
    """A job ready to store: deployment snapshotted, settings resolved and checked, output free."""
    found = endpoints.get_deployment(cfg, endpoint, deployment)
    run_settings = settings.resolve(found.settings, limits=cfg.limits)
    run_settings = settings.resolve(dict(overrides or {}), base=run_settings, limits=cfg.limits)
    settings.check_for_files(run_settings)
    run_settings = settings.check_partitions(run_settings)
    _check_partition_model(found, run_settings)
    try:
        spec = InputSpec.from_uri(input_uri)
    except ValueError:
        raise InputError(f"--input {input_uri!r}: give an s3://bucket/folder/ URI") from None
    _refuse_unreadable_input(spec)
    job_id = job_id or new_job_id(endpoint)
    output_uri = run_settings.output_path or f"s3://{cfg.artifacts_bucket}/{jobs.job_prefix(job_id)}output/"
    output_uri = output_uri if output_uri.endswith("/") else output_uri + "/"
    _refuse_existing_output(output_uri + run_settings.output_file_name)
    return jobs.Job(
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
    if not registry.is_per_partition(deployment.model_name):
        return
    fields = registry.parse_selector(deployment.model_name).fields
    missing = [name for name in fields if name not in run_settings.partition_keys]
    if missing:
        raise SettingsError("partition_keys", ",".join(run_settings.partition_keys) or None,
                            f"names including {', '.join(missing)}: deployment {deployment.name!r} chooses its "
                            f"model per partition by {deployment.model_name!r}")


def snapshot(cfg: StackConfig, deployment: endpoints.Deployment) -> dict[str, Any]:
    """What a job keeps of its deployment, the model version resolved (a model per partition is
    resolved when each mini-batch runs): later changes to the endpoint never reach it."""
    if registry.is_per_partition(deployment.model_name):
        name, version = deployment.model_name, None
    else:
        model = registry.get(cfg, deployment.model_name, deployment.model_version)
        name, version = model.name, model.version
    return {
        "endpoint": deployment.endpoint, "deployment": deployment.name, "code_sha": deployment.code_sha,
        "entry_script": deployment.entry_script, "model_name": name, "model_version": version,
    }


def _refuse_unreadable_input(spec: InputSpec) -> None:
    """An input folder that cannot be listed is refused now, not found out by the planner."""
    s3 = aws.client("s3")
    try:
        s3.list_objects_v2(Bucket=spec.bucket, Prefix=spec.prefix, MaxKeys=1)
    except s3.exceptions.ClientError as error:
        code = error.response["Error"]["Code"]
        raise InputError(f"--input {spec.uri}: cannot list it ({code}): check the bucket's name and access") from None


def _refuse_existing_output(uri: str) -> None:
    bucket, key = aws.split_s3_uri(uri)
    s3 = aws.client("s3")
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except s3.exceptions.ClientError as error:
        if error.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return
        raise
    raise ConflictError(f"output {uri} already exists: choose another output_path or remove it first")


def start(cfg: StackConfig, job: jobs.Job) -> None:
    """Store ``job`` and hand it to the planner, which lists and shards its inputs."""
    jobs.create(cfg, job)
    send_start(cfg, job.job_id)


def send_start(cfg: StackConfig, job_id: str) -> None:
    aws.client("sqs").send_message(
        QueueUrl=cfg.planner_queue_url, MessageBody=json.dumps({"action": "start", "job_id": job_id})
    )
