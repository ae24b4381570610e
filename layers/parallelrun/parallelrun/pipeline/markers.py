"""Drop folders' ``_READY`` markers: which job a marker starts, and the FAILED job of one that
cannot start. The planner (which starts the job) and the failure recorder (which ends it when
Lambda gave up on the planner) name a marker's job the same way, through these functions.
"""

from __future__ import annotations

import posixpath
import time
import urllib.parse
from typing import Any

from parallelrun.core import datasets
from parallelrun.core.settings import RunSettings
from parallelrun.pipeline import submit
from parallelrun.store import jobs


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
