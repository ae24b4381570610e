"""A job's inputs as S3 lists them: the edge of :mod:`parallelrun.core.datasets`.

S3 lists keys in ascending UTF-8 byte order, which is also Python's order for ``str``, so a
listing is already the stable sorted order the plan needs, and it can be streamed: a job of a
million files never holds its whole listing in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from parallelrun.aws import s3 as objects
from parallelrun.core.datasets import InputFile, InputSpec, is_input


def list_files(spec: InputSpec, *, after: str = "", s3: Any = None) -> Iterator[InputFile]:
    """The inputs under ``spec``, in S3's (sorted) order, streamed page by page; given
    ``after``, those whose keys sort after it (where an earlier listing stopped)."""
    for obj in objects.under(spec.bucket, spec.prefix, s3, after):
        if is_input(obj["Key"], spec.prefix):
            yield InputFile(obj["Key"], obj["Size"], obj.get("ETag", "").strip('"'))
