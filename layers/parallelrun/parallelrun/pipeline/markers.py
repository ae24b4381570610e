"""Drop folders' ``_READY`` markers: which job a marker starts (its settings in the marker's
body, which anyone who can write to the input bucket writes), and the FAILED job of one that
cannot start. A marker below a pipeline's folder starts a run of it instead
(:func:`parallelrun.pipeline.chaining.drop_run`, the run named as the job would be). The planner (which starts the job) and the failure recorder (which ends it when
Lambda gave up on the planner) name a marker's job the same way, through these functions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
import time
import urllib.parse
from typing import Any

from parallelrun.aws import s3
from parallelrun.aws.config import StackConfig
from parallelrun.core import datasets, logs
from parallelrun.core.errors import ConflictError, InputError, ParallelRunError, SettingsError
from parallelrun.core.settings import RunSettings
from parallelrun.pipeline import chaining, submit
from parallelrun.store import jobs, pipelines

log = logging.getLogger("parallelrun.pipeline.markers")
MAX_MARKER_BYTES = 64 * 1024  # a marker carries settings, never data
MAX_MARKER_NESTING = 2  # the settings object, and a list or object as one setting's value


def marker_target(key: str) -> tuple[str, str] | None:
    """``digits/batch1/_READY`` → (endpoint ``digits``, folder ``digits/batch1/``), else None."""
    folder, name = posixpath.split(key)
    parts = folder.split("/")
    if name != datasets.READY_MARKER or len(parts) < 2 or not all(parts):
        return None
    return parts[0], folder + "/"


def marker_of(s3_record: dict[str, Any]) -> tuple[str, str, str]:
    """(bucket, decoded key, version) of the object an S3 event record names: the version is the
    event's sequencer, else its ETag, so a retried notification names the same marker."""
    obj = s3_record["s3"]["object"]
    return (s3_record["s3"]["bucket"]["name"], urllib.parse.unquote_plus(obj["key"]),
            obj.get("sequencer") or obj.get("eTag", ""))


def marker_job(bucket: str, key: str, version: str) -> tuple[str, str, str] | None:
    """The job a ``_READY`` marker starts: (job id, endpoint, input folder URI), or None for a
    marker outside ``<endpoint>/<folder>/``, for the marker :func:`marker_of` names."""
    target = marker_target(key)
    if target is None:
        return None
    endpoint, folder = target
    return submit.new_job_id(endpoint, f"{bucket}/{key}@{version}"), endpoint, f"s3://{bucket}/{folder}"


def failed_drop_job(job_id: str, endpoint: str, input_uri: str, reason: str) -> jobs.JobRecord:
    """A drop folder's job that failed before it could be prepared: nobody waits on a drop
    folder's answer, so the reason is kept where `parallelrun jobs` and `status` show it."""
    return jobs.JobRecord(job_id=job_id, endpoint=endpoint, deployment={}, settings=RunSettings(), input_uri=input_uri,
                    output_uri="", state=jobs.FAILED, source="drop", reason=reason, ended_at=time.time())


def drop_job(cfg: StackConfig, bucket: str, key: str, version: str) -> str | None:
    """The job a ``_READY`` marker starts, stored (FAILED with the reason if it cannot be
    prepared), with the marker's JSON overrides; its id, or None for a marker that starts no job."""
    target = marker_job(bucket, key, version)
    if target is None:
        log.warning("ignored a marker outside <endpoint>/<folder>/", extra={"fields": {"key": key}})
        return None
    job_id, endpoint, input_uri = target
    if pipelines.find(cfg, endpoint) is not None:  # the folder is a pipeline's: the marker starts a run
        with logs.context(job_id):
            return chaining.drop_run(cfg, endpoint, input_uri, job_id, lambda: _marker_overrides(bucket, key))
    with logs.context(job_id):
        if jobs.find(cfg, job_id) is None:
            try:
                overrides = _marker_overrides(bucket, key)
                deployment = overrides.pop("deployment", None)
                if deployment is not None and not (isinstance(deployment, str) and len(deployment) <= 63):
                    raise SettingsError("deployment", deployment, "the name of one of the endpoint's deployments")
                job = submit.prepare(cfg, endpoint, input_uri, overrides, deployment, job_id, "drop")
            except ParallelRunError as error:
                job = failed_drop_job(job_id, endpoint, input_uri, str(error))
            try:
                jobs.create(cfg, job)
            except ConflictError:
                pass  # a retried notification: the job exists, carry on with it
            log.info("job from drop folder", extra={"fields": {"folder": input_uri}})
    return job_id


def _marker_overrides(bucket: str, key: str) -> dict[str, Any]:
    """The settings in a marker's body; anyone who can write to the input bucket writes it, so
    each way it can be wrong is an InputError (the job's FAILED reason), never a crash that
    would lose the drop."""
    where = f"marker s3://{bucket}/{key}"
    try:
        size, opened = s3.open_object(bucket, key)
    except s3.ClientError as error:
        code = s3.error_code(error)
        if code not in ("NoSuchKey", "AccessDenied"):
            raise  # transient: S3 invokes the planner again
        raise InputError(f"{where} cannot be read ({code})") from None
    with contextlib.closing(opened) as stream:
        # Never read whole: the size comes first, and the read stops one byte past the limit.
        body = b"" if size > MAX_MARKER_BYTES else stream.read(MAX_MARKER_BYTES + 1)
    if size > MAX_MARKER_BYTES or len(body) > MAX_MARKER_BYTES:
        raise InputError(f"{where} has {size} bytes: a marker's body is a JSON object of "
                         f"settings of at most {MAX_MARKER_BYTES} bytes (64 KiB)")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(f"{where} is not UTF-8 text (byte {error.start} is {body[error.start:error.start + 1]!r}): "
                         "write its settings as a UTF-8 JSON object") from None
    if not text.strip():
        return {}
    try:
        overrides = json.loads(text)
    except RecursionError:
        overrides = None  # nested past the interpreter's limit: refused as too deep below
    except ValueError as error:
        raise InputError(f"{where} is not a JSON object of settings: {error}") from None
    if overrides is None or _nesting(overrides) > MAX_MARKER_NESTING:
        raise InputError(f"{where} nests JSON too deeply: a setting's value is a string, number, boolean, null, or "
                         "a list or object of those")
    if not isinstance(overrides, dict):
        raise InputError(f"{where} must hold a JSON object of settings, not a JSON {type(overrides).__name__}")
    return overrides


def _nesting(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (a scalar: 0); no recursion, whatever the depth."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            pending.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest
