"""The S3 listing of a job's inputs (parallelrun.store.inputs), on moto: what is an input,
in S3's order, past a page."""

from __future__ import annotations

import hashlib

import pytest

from parallelrun import aws
from parallelrun.core.datasets import InputSpec
from parallelrun.store.inputs import list_files

BUCKET = "inputs"


@pytest.fixture
def s3(stack):
    """A bucket of its own on the session's in-process moto (one mock for the whole session:
    a nested mock_aws would reset the shared stack when it ends)."""
    client = aws.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


def _put(client, key: str, body: bytes = b"x") -> None:
    client.put_object(Bucket=BUCKET, Key=key, Body=body)


def test_list_files_filters_and_sorts(s3):
    bodies = {
        "ep/run1/b.jpg": b"bb",
        "ep/run1/a.jpg": b"a",
        "ep/run1/sub/c.jpg": b"ccc",
        "ep/run1/sub/deeper/d.csv": b"dddd",
        "ep/run1/A.jpg": b"AAAAA",
        "ep/run1/_READY": b"{}",
        "ep/run1/sub/_READY": b"",
        "ep/run1/.hidden": b"h",
        "ep/run1/.cache/e.jpg": b"e",
        "ep/run1/sub/": b"",
        "ep/run10/f.jpg": b"f",
        "ep/run1.txt": b"g",
        "other/a.jpg": b"o",
    }
    for key, body in bodies.items():
        _put(s3, key, body)

    spec = InputSpec.from_uri(f"s3://{BUCKET}/ep/run1")
    expected_keys = ["ep/run1/A.jpg", "ep/run1/a.jpg", "ep/run1/b.jpg", "ep/run1/sub/c.jpg", "ep/run1/sub/deeper/d.csv"]

    first = list(list_files(spec))
    assert [f.key for f in first] == expected_keys
    assert [f.size for f in first] == [len(bodies[k]) for k in expected_keys]
    assert [f.etag for f in first] == [hashlib.md5(bodies[k]).hexdigest() for k in expected_keys]
    assert list(list_files(spec)) == first  # stable


def test_list_files_empty_folder(s3):
    _put(s3, "ep/run1/_READY")
    assert list(list_files(InputSpec.from_uri(f"s3://{BUCKET}/ep/run1/"))) == []


def test_list_files_whole_bucket(s3):
    for key in ["x/1.jpg", "_READY", ".hidden", "y/2.jpg"]:
        _put(s3, key)
    assert [f.key for f in list_files(InputSpec.from_uri(f"s3://{BUCKET}"))] == ["x/1.jpg", "y/2.jpg"]


def test_list_files_paginates_past_1000(s3):
    count = 1203
    keys = [f"big/{i:05d}.bin" for i in range(count)]
    for key in reversed(keys):
        _put(s3, key)
    _put(s3, "big/_READY")
    found = list(list_files(InputSpec.from_uri(f"s3://{BUCKET}/big")))
    assert len(found) == count
    assert [f.key for f in found] == keys
    assert all(f.size == 1 for f in found)
