"""The collated ranges of a job's aggregation: what each holds, recorded once it is written.

An aggregation collates its mini-batches in ranges (see :mod:`parallelrun.pipeline.collation`),
each into objects of its own; a range's item is put, only if absent, after its objects are
written, so a range that is recorded is whole, and a range collated twice (a duplicate message,
a successor after a crash) is counted once. The items sit beside the job's, one Query reads
them all: a job has at most a few thousand ranges.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from parallelrun.aws import dynamo, s3
from parallelrun.aws.config import StackConfig
from parallelrun.core import usage
from parallelrun.store import keys

# The names of a range's two objects (keys.range_object_key): its output and its failure lines.
RANGE_OUTPUT, RANGE_FAILURES = "output", "failures.jsonl"


@dataclass
class RangeSummary:
    """What one range of mini-batches ``start`` ≤ index < ``end`` collated."""

    number: int
    start: int
    end: int
    rows: int = 0
    output_bytes: int = 0  # of the range's output object (none is written when 0)
    failures_bytes: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)  # failed inputs by type
    reusable: int = 0  # wholly successful mini-batches a later job may reuse
    unwritten: list[str] = field(default_factory=list)  # parquet: why parts' rows were left out (the first few)
    unwritten_count: int = 0
    header: str | None = None  # csv: the header of the first part with rows
    usage: usage.Tally = field(default_factory=usage.Tally)  # the records' usage

    def to_item(self, job_id: str, aggregation: str) -> dict[str, Any]:
        values = {**self.__dict__, "errors": dict(self.errors), "usage": self.usage.to_json()}
        return {**keys.collated_key(job_id, aggregation, self.number),
                **{name: dynamo.decimal(value) for name, value in values.items() if value is not None}}

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> RangeSummary:
        raw = {name: dynamo.plain(value) for name, value in item.items() if name in cls.__dataclass_fields__}
        raw["errors"] = collections.Counter(raw.get("errors", {}))
        raw["usage"] = usage.Tally.from_json(raw["usage"])
        return cls(**raw)


def record(cfg: StackConfig, job_id: str, aggregation: str, summary: RangeSummary) -> bool:
    """Record a range whose objects are written; False if it was recorded before."""
    return dynamo.put_new(cfg.table, summary.to_item(job_id, aggregation))


def summaries(cfg: StackConfig, job_id: str, aggregation: str) -> list[RangeSummary]:
    """The ranges recorded so far, in order."""
    return [RangeSummary.from_item(item) for item in
            dynamo.query_prefix(cfg.table, keys.job_pk(job_id), keys.collated_prefix(aggregation), consistent=True)]


def drop_objects(cfg: StackConfig, job_id: str, aggregation: str, done: list[RangeSummary] | None = None) -> None:
    """Delete the objects the aggregation's recorded ranges (``done``, else read) were written to.
    Only once the job has ended: a join tried again must still find them; and again by a late
    message, should the joiner have died in between."""
    done = summaries(cfg, job_id, aggregation) if done is None else done
    s3.delete_keys(cfg.artifacts_bucket, [
        keys.range_object_key(job_id, aggregation, summary.number, name) for summary in done
        for name, size in ((RANGE_OUTPUT, summary.output_bytes), (RANGE_FAILURES, summary.failures_bytes)) if size])
