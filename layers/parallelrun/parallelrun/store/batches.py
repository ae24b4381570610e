"""Mini-batch records and the shards that count them.

A job's mini-batches are spread over ``keys.SHARDS`` shards: the records of a shard's
mini-batches are under a partition key of their own, its counters one item beside the job's
(see :mod:`parallelrun.store.keys`). A mini-batch's completion is one transaction on its shard:
the record is put only if absent and the shard's counters are added in the same write, so a
duplicate delivery can never count twice (DESIGN invariant 1), and no item is written by every
worker of a job (invariant 8).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from parallelrun.aws import dynamo
from parallelrun.aws.config import StackConfig
from parallelrun.store import jobs, keys

# Records per Query page when the shards are merged in index order: the merge holds one page per
# shard, so its memory is SHARDS x SHARD_PAGE records whatever the size of the job.
SHARD_PAGE = 50


def shards_of(total_batches: int | None) -> range:
    """The shards a job of ``total_batches`` mini-batches uses (none before it is planned:
    nothing can be recorded before the total is set, DESIGN invariant 4)."""
    return range(min(keys.SHARDS, total_batches or 0))


def shard_size(total_batches: int, shard: int) -> int:
    """How many of a job's mini-batches ``shard`` holds once all are recorded."""
    return total_batches // keys.SHARDS + (shard < total_batches % keys.SHARDS)


def shard_counts(cfg: StackConfig, job_id: str, shard: int) -> dict[str, int]:
    """One shard's counters (every name in :data:`jobs.COUNTERS`, 0 where none was added yet)."""
    item = dynamo.get(cfg.table, keys.counts_key(job_id, shard), consistent=True) or {}
    return {name: dynamo.plain(item.get(name, 0)) for name in jobs.COUNTERS}


def open_shards(cfg: StackConfig, job_id: str, total_batches: int) -> None:
    """Create the counter items of a planned job's shards, before any mini-batch is sent: a
    commit adds to its shard's item only if it exists, so nothing is ever counted for a job that
    does not exist. ADD of zero creates the counters and never resets them (a repeated planning)."""
    for shard in shards_of(total_batches):
        dynamo.update(cfg.table, keys.counts_key(job_id, shard),
                      "ADD " + ", ".join(f"{name} :zero" for name in jobs.COUNTERS), {":zero": 0})


@dataclass(frozen=True)
class BatchRecord:
    """A finished mini-batch: it succeeded (some inputs may still have failed) or failed whole."""

    index: int
    status: str
    items: int
    items_succeeded: int
    items_failed: int
    attempt: int
    part_key: str | None = None
    failures_key: str | None = None
    rows: int = 0
    worker: str = ""
    duration: float = 0.0
    finished_at: float = field(default_factory=time.time)
    fingerprint: str | None = None  # what the rows depend on (see parallelrun.store.reuse)
    reused_from: str | None = None  # the job whose part this mini-batch reuses
    header: str | None = None  # csv output: the column names of the DataFrame run() returned
    started_at: float | None = None  # when the recorded attempt began (the report's timeline)
    usage: dict[str, int] | None = None  # what the recorded attempt used (see parallelrun.core.usage)

    def to_item(self, job_id: str) -> dict[str, Any]:
        item = {k: dynamo.decimal(v) for k, v in self.__dict__.items() if v is not None}
        return {**keys.batch_key(job_id, self.index), **item}

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> BatchRecord:
        return cls(**{k: dynamo.plain(v) for k, v in item.items() if k in cls.__dataclass_fields__})


# The request commit_batch makes, as parallelrun.core.usage counts it (a record's usage includes it).
COMMIT_CALL = ("dynamodb", "TransactWriteItems", {"TransactItems": [{"Put": {}}, {"Update": {}}]})


def commit_batch(cfg: StackConfig, job_id: str, record: BatchRecord) -> bool:
    """Record a finished mini-batch and add its counts to its shard, atomically; False if it was
    already recorded (or the job has no such shard: it does not exist)."""
    return dynamo.succeeds(lambda: dynamo.transact([
        {"Put": {
            "TableName": cfg.table,
            "Item": dynamo.serialize(record.to_item(job_id)),
            "ConditionExpression": "attribute_not_exists(pk)",
        }},
        _counts(cfg, job_id, record, +1),
    ]))


def reopen_batch(cfg: StackConfig, job_id: str, record: BatchRecord) -> bool:
    """Forget a recorded mini-batch so it runs again (redrive): its record goes and its counts
    are taken back from its shard, in one transaction. False if it was already reopened."""
    return dynamo.succeeds(lambda: dynamo.transact([
        {"Delete": {
            "TableName": cfg.table,
            "Key": dynamo.serialize(keys.batch_key(job_id, record.index)),
            "ConditionExpression": "attempt = :attempt",
            "ExpressionAttributeValues": dynamo.serialize({":attempt": record.attempt}),
        }},
        _counts(cfg, job_id, record, -1),
    ]))


def get_batch(cfg: StackConfig, job_id: str, index: int) -> BatchRecord | None:
    item = dynamo.get(cfg.table, keys.batch_key(job_id, index), consistent=True)
    return BatchRecord.from_item(item) if item else None


def iter_batches(cfg: StackConfig, job_id: str, start: int = 0, end: int | None = None) -> Iterator[BatchRecord]:
    """The recorded mini-batches ``start`` ≤ index < ``end`` (all by default) of a job, in
    mini-batch order: the queries of the shards holding them (each in order, the sort key being
    zero-padded) merged lazily, one page per shard in memory."""
    job = jobs.find(cfg, job_id, counted=False)
    end = min(end if end is not None else job.total_batches or 0, job.total_batches or 0) if job else 0
    if end <= start:
        return iter(())
    shards = sorted({keys.shard_of(index) for index in range(start, min(end, start + keys.SHARDS))})
    low, high = keys.batch_key(job_id, start)["sk"], keys.batch_key(job_id, end - 1)["sk"]
    merged = heapq.merge(*(dynamo.query(cfg.table, KeyConditionExpression="pk = :pk AND sk BETWEEN :low AND :high",
                                        ExpressionAttributeValues={":pk": keys.batch_pk(job_id, shard), ":low": low,
                                                                   ":high": high},
                                        ConsistentRead=True, Limit=SHARD_PAGE)
                           for shard in shards), key=lambda item: item["sk"])
    return (BatchRecord.from_item(item) for item in merged)


# --- a batch's transaction

def _counts(cfg: StackConfig, job_id: str, record: BatchRecord, sign: int) -> dict[str, Any]:
    """The counter half of a batch's transaction: add (+1) or take back (-1) its counts in its shard."""
    succeeded = record.status == jobs.SUCCEEDED
    return {"Update": {
        "TableName": cfg.table,
        "Key": dynamo.serialize(keys.counts_key(job_id, keys.shard_of(record.index))),
        "UpdateExpression": "ADD batches_succeeded :bs, batches_failed :bf, items_succeeded :is, "
                            "items_failed :if, retries :r, batches_reused :ru",
        "ConditionExpression": "attribute_exists(pk)",
        "ExpressionAttributeValues": dynamo.serialize({
            ":bs": sign * int(succeeded), ":bf": sign * int(not succeeded), ":is": sign * record.items_succeeded,
            ":if": sign * record.items_failed, ":r": sign * (record.attempt - 1),
            ":ru": sign * int(record.reused_from is not None),
        }),
    }}
