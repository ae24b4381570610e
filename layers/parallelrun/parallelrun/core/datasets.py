"""Inputs: which objects under a prefix are inputs, and what a mini-batch holds.

Nothing here talks to S3: the listing of a folder's inputs is :mod:`parallelrun.store.inputs`'.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

READY_MARKER = "_READY"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` → ``("bucket", "some/key")``."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


@dataclass(frozen=True)
class InputFile:
    key: str
    size: int
    etag: str = ""

    def to_json(self) -> list:
        return [self.key, self.size, self.etag]

    @classmethod
    def from_json(cls, raw: list) -> InputFile:
        return cls(*raw)


@dataclass(frozen=True)
class TablePiece:
    """A tabular mini-batch: one file's byte range (CSV, JSON lines) or row groups (Parquet,
    ``start`` to ``end`` inclusive), with the file's column types (decided once per file)."""

    key: str
    size: int
    etag: str
    fmt: str
    start: int
    end: int
    schema: str = ""  # base64 of the Arrow schema; "" where the file itself says (Parquet, gzip)

    def to_json(self) -> list:
        return [self.key, self.size, self.etag, self.fmt, self.start, self.end, self.schema]

    @property
    def whole(self) -> bool:
        return self.fmt != "parquet" and self.start == 0 and self.end == self.size

    def describe(self) -> str:
        if self.fmt == "parquet":
            return f"row groups {self.start}-{self.end}"
        return "whole file" if self.whole else f"bytes {self.start}-{self.end}"


def item_from_json(raw: list) -> InputFile | TablePiece:
    """A plan's or message's input: a file, or a piece of a table."""
    return InputFile(*raw) if len(raw) == 3 else TablePiece(*raw)


@dataclass(frozen=True)
class InputSpec:
    """A folder of inputs: every object under ``s3://bucket/prefix`` (nested folders included)."""

    bucket: str
    prefix: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @classmethod
    def from_uri(cls, uri: str) -> InputSpec:
        bucket, key = split_s3_uri(uri)
        if not bucket:
            raise ValueError(f"no bucket in {uri!r}")
        # A folder: 's3://b/run1' must not also pick up 's3://b/run10/...'.
        return cls(bucket, key if key == "" or key.endswith("/") else key + "/")


def is_input(key: str, prefix: str) -> bool:
    """An input is any object under ``prefix`` but the marker, folder placeholders and hidden
    files. A '.' or '..' segment is no hidden file: such a key is an input, refused as unsafe when
    its mini-batch runs (``worker.refuse_unsafe``), so that it is reported rather than ignored."""
    relative = key[len(prefix):]
    if not key.startswith(prefix) or not relative or relative.endswith("/"):
        return False
    if posixpath.basename(relative) == READY_MARKER:
        return False
    return not any(part.startswith(".") and part not in (".", "..") for part in relative.split("/"))


def relative_name(key: str, prefix: str) -> str:
    """The input's path below its folder: what a user sees in rows and failure reports."""
    return key[len(prefix):] if key.startswith(prefix) else key
