"""Inputs: which keys are inputs and how they split into mini-batches (the S3 listing: test_inputs)."""

from __future__ import annotations

import pytest

from parallelrun.core.datasets import (
    READY_MARKER,
    InputFile,
    InputSpec,
    is_input,
    relative_name,
    split_s3_uri,
)

PREFIX = "ep/run1/"


def test_an_s3_uri_splits_into_bucket_and_key() -> None:
    assert split_s3_uri("s3://bucket/some/key") == ("bucket", "some/key")
    assert split_s3_uri("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError, match="not an s3:// URI"):
        split_s3_uri("/local/path")


# --- is_input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("ep/run1/a.jpg", True),
        ("ep/run1/sub/b.jpg", True),
        ("ep/run1/sub/deeper/c.csv", True),
        ("ep/run1/_READY.txt", True),  # only the exact marker name is special
        ("ep/run1/not_READY", True),
        (f"ep/run1/{READY_MARKER}", False),
        ("ep/run1/sub/_READY", False),
        ("ep/run1/.hidden", False),
        ("ep/run1/sub/.DS_Store", False),
        ("ep/run1/.cache/x.jpg", False),
        ("ep/run1/sub/.git/objects/y", False),
        ("ep/run1/sub/../../x.py", True),  # no hidden file: listed, then refused as unsafe when it runs
        ("ep/run1/./x.py", True),
        ("ep/run1/", False),  # the folder itself
        ("ep/run1/sub/", False),  # a folder placeholder
        ("ep/run10/a.jpg", False),  # a sibling folder
        ("ep/other/a.jpg", False),
        ("a.jpg", False),
        ("ep/run1", False),
    ],
)
def test_is_input(key, expected):
    assert is_input(key, PREFIX) is expected


def test_is_input_with_empty_prefix():
    assert is_input("a.jpg", "") is True
    assert is_input("x/y/z.jpg", "") is True
    assert is_input("_READY", "") is False
    assert is_input(".hidden/a.jpg", "") is False
    assert is_input("x/", "") is False


def test_input_file_json_round_trip():
    item = InputFile("ep/run1/a.jpg", 12, "abc")
    assert InputFile.from_json(item.to_json()) == item


# --- InputSpec / relative_name --------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix"),
    [
        ("s3://b/run1", "b", "run1/"),
        ("s3://b/run1/", "b", "run1/"),
        ("s3://b/ep/run1", "b", "ep/run1/"),
        ("s3://b", "b", ""),
        ("s3://b/", "b", ""),
    ],
)
def test_input_spec_from_uri(uri, bucket, prefix):
    spec = InputSpec.from_uri(uri)
    assert (spec.bucket, spec.prefix) == (bucket, prefix)
    assert spec.uri == f"s3://{bucket}/{prefix}"


def test_input_spec_prefix_does_not_match_sibling_folder():
    spec = InputSpec.from_uri("s3://b/run1")
    assert is_input("run1/a.jpg", spec.prefix)
    assert not is_input("run10/a.jpg", spec.prefix)


@pytest.mark.parametrize("uri", ["http://b/run1", "b/run1", "/tmp/run1", "s3:///run1", ""])
def test_input_spec_refuses_non_s3(uri):
    with pytest.raises(ValueError):
        InputSpec.from_uri(uri)


@pytest.mark.parametrize(
    ("key", "prefix", "expected"),
    [
        ("ep/run1/a.jpg", "ep/run1/", "a.jpg"),
        ("ep/run1/sub/b.jpg", "ep/run1/", "sub/b.jpg"),
        ("a.jpg", "", "a.jpg"),
        ("elsewhere/a.jpg", "ep/run1/", "elsewhere/a.jpg"),
    ],
)
def test_relative_name(key, prefix, expected):
    assert relative_name(key, prefix) == expected
