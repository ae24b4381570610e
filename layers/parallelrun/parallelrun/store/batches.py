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
from collections.abc import Iterable, Iterator
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
    group, block = keys.SHARD_GROUP, keys.SHARD_GROUP * keys.SHARD_GROUP
    total = total_batches or 0
    return range(min(keys.SHARDS, total // block * group + min(group, total % block)))


def shard_size(total_batches: int, shard: int) -> int:
    """How many of a job's mini-batches ``shard`` holds once all are recorded (see
    :func:`keys.shard_of`: each shard of a group takes one in SHARD_GROUP, for SHARD_GROUP
    of them, in each cycle of the groups)."""
    group, block = keys.SHARD_GROUP, keys.SHARD_GROUP * keys.SHARD_GROUP
    cycle = block * (keys.SHARDS // group)
    place, lane = divmod(shard, group)
    span = min(block, max(0, total_batches % cycle - place * block))  # the group's share of the last cycle
    return total_batches // cycle * group + max(0, -(-(span - lane) // group))


def shard_counts(cfg: StackConfig, job_id: str, shard: int) -> dict[str, int]:
    """One shard's counters (every name in :data:`jobs.COUNTERS`, 0 where none was added yet)."""
    item = dynamo.get(cfg.table, keys.counts_key(job_id, shard), consistent=True) or {}
    return {name: dynamo.plain(item.get(name, 0)) for name in jobs.COUNTERS}


def open_shards(cfg: StackConfig, job_id: str, total_batches: int) -> None:
    """Create the counter items of a planned job's shards, before any mini-batch is sent: a
    commit adds to its shard's item only if it exists, so nothing is ever counted for a job that
    does not exist. ADD of zero creates the counters and never resets them (a repeated planning),
    nor does ``if_not_exists`` reset ``batches_left``, the shard's mini-batches not yet recorded
    (see :func:`commit_batch`)."""
    for shard in shards_of(total_batches):
        dynamo.update(cfg.table, keys.counts_key(job_id, shard),
                      "SET batches_left = if_not_exists(batches_left, :size) ADD "
                      + ", ".join(f"{name} :zero" for name in jobs.COUNTERS),
                      {":zero": 0, ":size": shard_size(total_batches, shard)})


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


@dataclass(frozen=True)
class Commit:
    """What :func:`commit_batch` did."""

    recorded: bool  # False: another delivery recorded the mini-batch first, or the job has no such shard
    filled: bool = False  # it recorded its shard's last unrecorded mini-batch: the job may be complete


def commit_batch(cfg: StackConfig, job_id: str, record: BatchRecord) -> Commit:
    """Record a finished mini-batch and add its counts to its shard, atomically.

    The counter half also takes one from the shard's ``batches_left`` on condition that it is
    not the shard's last (``batches_left > 1``), so the usual commit knows with no read that its
    shard, hence the job, is not complete. When that condition fails on an existing shard item
    (DynamoDB returns the item with the cancellation reason, ReturnValuesOnConditionCheckFailure,
    https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_CancellationReason.html),
    the mini-batch is its shard's last (or the shard predates ``batches_left``): the same
    transaction is made without that condition and says ``filled``. Nothing of a cancelled
    transaction is written, so one conditional transaction records it either way, and a job
    pays one extra transaction per shard."""
    put = {"Put": {
        "TableName": cfg.table,
        "Item": dynamo.serialize(record.to_item(job_id)),
        "ConditionExpression": "attribute_not_exists(pk)",
    }}
    try:
        dynamo.transact([put, _counts(cfg, job_id, record, +1, not_last=True)])
        return Commit(recorded=True)
    except Exception as error:
        if not dynamo.is_conditional_failure(error):
            raise
        recorded_first, shard = error.response["CancellationReasons"][:2]
        if recorded_first.get("Code") == "ConditionalCheckFailed" or "Item" not in shard:
            return Commit(recorded=False)  # recorded by another delivery, or no shard item: no such job
    recorded = dynamo.succeeds(lambda: dynamo.transact([put, _counts(cfg, job_id, record, +1)]))
    return Commit(recorded=recorded, filled=recorded)


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


def lookup(cfg: StackConfig, wanted: Iterable[tuple[str, int]]) -> tuple[dict[str, jobs.JobRecord], set[tuple[str, int]]]:
    """For mini-batches ``(job id, index)``: their jobs (each its own item, counters as that item
    holds them, as ``jobs.get(counted=False)``) and which of them are recorded, in one strongly
    consistent read (BatchGetItem) for all."""
    places: dict[tuple[str, str], tuple[str, int | None]] = {}
    for job_id, index in wanted:
        for key, index_or_job in ((keys.job_key(job_id), None), (keys.batch_key(job_id, index), index)):
            places[key["pk"], key["sk"]] = (job_id, index_or_job)
    found: dict[str, jobs.JobRecord] = {}
    recorded: set[tuple[str, int]] = set()
    for item in dynamo.batch_get(cfg.table, [{"pk": pk, "sk": sk} for pk, sk in places], consistent=True):
        job_id, index = places[item["pk"], item["sk"]]
        if index is None:
            found[job_id] = jobs.JobRecord.from_item(item)
        else:
            recorded.add((job_id, index))
    return found, recorded


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
    shards = keys.shards_between(start, end)
    low, high = keys.batch_key(job_id, start)["sk"], keys.batch_key(job_id, end - 1)["sk"]
    merged = heapq.merge(*(dynamo.query(cfg.table, KeyConditionExpression="pk = :pk AND sk BETWEEN :low AND :high",
                                        ExpressionAttributeValues={":pk": keys.batch_pk(job_id, shard), ":low": low,
                                                                   ":high": high},
                                        ConsistentRead=True, Limit=SHARD_PAGE)
                           for shard in shards), key=lambda item: item["sk"])
    return (BatchRecord.from_item(item) for item in merged)


# --- a batch's transaction

def _counts(cfg: StackConfig, job_id: str, record: BatchRecord, sign: int, not_last: bool = False) -> dict[str, Any]:
    """The counter half of a batch's transaction: add (+1) or take back (-1) its counts in its
    shard, and take it from (or give it back to) the shard's ``batches_left``; with
    ``not_last``, only if some other mini-batch of the shard is still unrecorded."""
    succeeded = record.status == jobs.SUCCEEDED
    values = {
        ":bs": sign * int(succeeded), ":bf": sign * int(not succeeded), ":is": sign * record.items_succeeded,
        ":if": sign * record.items_failed, ":r": sign * (record.attempt - 1),
        ":ru": sign * int(record.reused_from is not None), ":left": -sign,
    }
    guard = {"ReturnValuesOnConditionCheckFailure": "ALL_OLD"} if not_last else {}
    return {"Update": {
        "TableName": cfg.table,
        "Key": dynamo.serialize(keys.counts_key(job_id, keys.shard_of(record.index))),
        "UpdateExpression": "ADD batches_succeeded :bs, batches_failed :bf, items_succeeded :is, "
                            "items_failed :if, retries :r, batches_reused :ru, batches_left :left",
        "ConditionExpression": "attribute_exists(pk)" + (" AND batches_left > :one" if not_last else ""),
        "ExpressionAttributeValues": dynamo.serialize(values | ({":one": 1} if not_last else {})),
        **guard,
    }}
