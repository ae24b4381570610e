"""The AWS edge: clients shared per process, with botocore's retries for throttling.

Every throttle or transient fault (SlowDown, ProvisionedThroughputExceeded, 5xx, connection
resets) is retried here with jittered exponential backoff, so it never surfaces as an input's
failure. ``AWS_ENDPOINT_URL`` (set by the local stack) points every client at moto.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from parallelrun.core import safepath, usage

RETRIES = Config(
    retries={"mode": "standard", "max_attempts": 10},
    max_pool_connections=32,
    connect_timeout=10,
    read_timeout=60,
)
_lock = threading.Lock()
_clients: dict[str, Any] = {}


def client(service: str) -> Any:
    """A boto3 client for ``service``; one per process, since creating one costs ~50 ms."""
    found = _clients.get(service)
    if found is None:
        with _lock:  # boto3's default session is not safe to use from threads at once
            found = _clients.get(service)
            if found is None:
                found = _clients[service] = _metered(boto3.session.Session().client(service, config=RETRIES))
    return found


def client_as(service: str, access_key_id: str, secret_access_key: str) -> Any:
    """A client of ``service`` with other credentials than the process's, in its region: made
    anew (never shared) and not metered, since its requests are no function's (a local
    function's process polls its S3 notification queues as the stack, not as its own role)."""
    session = boto3.session.Session(aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
                                    region_name=region())
    return session.client(service, config=RETRIES)


def table(name: str) -> Any:
    """A DynamoDB Table resource: plain Python values in and out, for everything but transactions."""
    key = f"dynamodb.Table:{name}"
    found = _clients.get(key)
    if found is None:
        with _lock:
            found = _clients.get(key)
            if found is None:
                resource = boto3.session.Session().resource("dynamodb", config=RETRIES)
                _metered(resource.meta.client)
                found = _clients[key] = resource.Table(name)
    return found


def _metered(client: Any) -> Any:
    """Count the client's requests into the running invocation's usage (parallelrun.core.usage)."""
    client.meta.events.register("before-parameter-build", usage.on_request)
    return client


def region() -> str:
    """The region this process's clients talk to."""
    return client("sqs").meta.region_name


def reset_clients() -> None:
    """Forget cached clients (tests switch endpoints; a forked process must not share sockets)."""
    with _lock:
        _clients.clear()


def _forget_in_child() -> None:
    # A forked child inherits the parent's pooled keep-alive connections: two processes on one
    # socket read each other's responses. Its lock may be held by a parent thread: a new one.
    global _lock
    _lock = threading.Lock()
    reset_clients()


os.register_at_fork(after_in_child=_forget_in_child)


def download_prefix(bucket: str, prefix: str, folder: Path) -> int:
    """Every object under ``prefix`` into ``folder``, keeping the layout below the prefix; how
    many objects there were. A key whose name below the prefix is not a safe file name (an
    absolute name, '..') refuses the whole download: the folder is one thing (a model, a side
    input) that is whole or not at all."""
    s3 = client("s3")
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                local = safepath.inside(folder, obj["Key"][len(prefix):], f"s3://{bucket}/{obj['Key']}: the key")
                local.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, obj["Key"], str(local))
                count += 1
    return count


def range_reader(bucket: str, key: str) -> Any:
    """``read(start, end)``: bytes [start, end) of one object, by ranged GETs."""

    def read(start: int, end: int) -> bytes:
        if end <= start:
            return b""
        return client("s3").get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")["Body"].read()

    return read

