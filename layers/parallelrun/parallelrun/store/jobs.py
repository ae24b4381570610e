"""Job and mini-batch records in DynamoDB, and where a job's objects live in S3.

One table holds everything (``pk``/``sk``); every key of a job is made here. A job is
``JOB#<id>``/``JOB``. Its mini-batches are spread over :data:`SHARDS` shards, shard = index %
SHARDS: the records of a shard's mini-batches are under a partition key of its own,
``JOB#<id>#<shard>``/``BATCH#<index>``, and its counters are one item beside the job's,
``JOB#<id>``/``COUNTS#<shard>``. A mini-batch's completion is one transaction on its shard: the
batch record is put only if absent and the shard's counters are added in the same write, so a
duplicate delivery can never count twice (DESIGN invariant 1), and no item is written by every
worker of a job (invariant 8). A job's counters are its own item's (a job that took an earlier
job's whole output is counted there) plus its shards': one Query reads the job and them all.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import random
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from parallelrun import aws
from parallelrun.aws.config import StackConfig
from parallelrun.core import usage
from parallelrun.core.errors import ConflictError, NotFoundError
from parallelrun.core.settings import RunSettings

QUEUED, PLANNING, RUNNING, FINALIZING = "QUEUED", "PLANNING", "RUNNING", "FINALIZING"
SUCCEEDED, FAILED, CANCELED = "SUCCEEDED", "FAILED", "CANCELED"
TERMINAL = (SUCCEEDED, FAILED, CANCELED)
ACTIVE = (QUEUED, PLANNING, RUNNING, FINALIZING)


# How many shards a job's mini-batches are spread over. Sized for 1,000 concurrent workers
# committing up to ~1,000 mini-batches a second. A commit is a transaction, which costs 2 WCU per
# KB of each item: the ~1-2 KB record is ~4 WCU, so the records alone are ~4,000 WCU/s, where one
# partition serves about 1,000; over 100 partition keys each takes ~10 commits (~40 WCU) a
# second. The counter items are small (2 WCU a commit) and ~10 commits a second each, so a commit
# seldom overlaps another on its counter (a TransactionConflict, retried). They share the job's
# partition key so that one Query reads them: ~2,000 WCU/s at the very peak, which DynamoDB's
# adaptive capacity serves by isolating frequently written items on partitions of their own.
# https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/bp-partition-key-design.html
# https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/burst-adaptive-capacity.html
# https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html (capacity)
# The keys of a job still running depend on it: change it only on a stack with no job running.
SHARDS = 100
# Records per Query page when the shards are merged in index order: the merge holds one page per
# shard, so its memory is SHARDS x SHARD_PAGE records whatever the size of the job.
SHARD_PAGE = 50
# A commit cancelled by a concurrent transaction on one of its items is tried again this many
# times, after a full-jitter exponential back-off from COMMIT_BACKOFF up to COMMIT_BACKOFF_CAP
# seconds: a conflicting transaction lasts tens of milliseconds, so ten tries outlast any burst
# short of a broken table, and the mini-batch never runs again for it.
COMMIT_TRIES = 10
COMMIT_BACKOFF, COMMIT_BACKOFF_CAP = 0.02, 1.0
COUNTERS = ("batches_succeeded", "batches_failed", "items_succeeded", "items_failed", "retries", "batches_reused")


def job_key(job_id: str) -> dict[str, str]:
    return {"pk": f"JOB#{job_id}", "sk": "JOB"}


def _shard_pk(job_id: str, shard: int) -> str:
    return f"JOB#{job_id}#{shard}"


def shard_of(index: int) -> int:
    """The shard (partition key) mini-batch ``index`` is recorded and counted in."""
    return index % SHARDS


def batch_key(job_id: str, index: int) -> dict[str, str]:
    return {"pk": _shard_pk(job_id, shard_of(index)), "sk": f"BATCH#{index:09d}"}


def counts_key(job_id: str, shard: int) -> dict[str, str]:
    return {"pk": f"JOB#{job_id}", "sk": f"COUNTS#{shard:03d}"}


def shards_of(total_batches: int | None) -> range:
    """The shards a job of ``total_batches`` mini-batches uses (none before it is planned:
    nothing can be recorded before the total is set, DESIGN invariant 4)."""
    return range(min(SHARDS, total_batches or 0))


def shard_size(total_batches: int, shard: int) -> int:
    """How many of a job's mini-batches ``shard`` holds once all are recorded."""
    return total_batches // SHARDS + (shard < total_batches % SHARDS)


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def plan_chunk_key(job_id: str, chunk: int) -> str:
    return f"{job_prefix(job_id)}plan/{chunk:06d}.json"


def part_key(job_id: str, index: int, attempt: int, suffix: str = "txt") -> str:
    # The attempt is in the key: a late duplicate can never overwrite the committed part.
    return f"{job_prefix(job_id)}parts/{index:09d}.{attempt}.{suffix}"


def failures_key(job_id: str, index: int, attempt: int) -> str:
    return f"{job_prefix(job_id)}failures/{index:09d}.{attempt}.jsonl"


def log_key(job_id: str, index: int, attempt: int) -> str:
    return f"{job_prefix(job_id)}logs/{index:09d}.{attempt}.jsonl"


def _plain(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal; callers want int or float (in maps too)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


@dataclass
class Job:
    job_id: str
    endpoint: str
    deployment: dict[str, Any]
    settings: RunSettings
    input_uri: str
    output_uri: str
    state: str = QUEUED
    source: str = "submit"
    reason: str = ""
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    total_batches: int | None = None
    total_items: int | None = None
    cursor: int = 0
    planner_tick: int = 0
    planner_token: str = "start"
    batches_succeeded: int = 0
    batches_failed: int = 0
    items_succeeded: int = 0
    items_failed: int = 0
    retries: int = 0
    batches_reused: int = 0
    fingerprint: str | None = None  # what the job's rows depend on (see parallelrun.store.reuse)
    reused_from: str | None = None  # the succeeded job whose output this one took whole
    outcome: str | None = None  # FAILED or CANCELED when the job was stopped before it completed
    schedule: str | None = None  # the schedule this job is a run of (see parallelrun.pipeline.schedules)

    @property
    def batches_done(self) -> int:
        return self.batches_succeeded + self.batches_failed

    @property
    def complete(self) -> bool:
        return self.total_batches is not None and self.batches_done >= self.total_batches

    def to_item(self) -> dict[str, Any]:
        item = {k: _dynamo(v) for k, v in self.__dict__.items() if v is not None}
        item["deployment"] = json.dumps(self.deployment, sort_keys=True)
        item["settings"] = self.settings.to_json()
        return {**job_key(self.job_id), **item}

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Job:
        raw = {k: _plain(v) for k, v in item.items() if k in cls.__dataclass_fields__}
        raw["deployment"] = json.loads(raw["deployment"])
        raw["settings"] = RunSettings.from_json(raw["settings"])
        return cls(**raw)


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
        item = {k: _dynamo(v) for k, v in self.__dict__.items() if v is not None}
        return {**batch_key(job_id, self.index), **item}

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> BatchRecord:
        return cls(**{k: _plain(v) for k, v in item.items() if k in cls.__dataclass_fields__})


def create(cfg: StackConfig, job: Job) -> None:
    """Store a new job; a second create of the same id (a retried trigger) is refused."""
    try:
        _ddb(cfg).put_item(Item=job.to_item(), ConditionExpression="attribute_not_exists(pk)")
    except Exception as error:
        if aws.is_conditional_failure(error):
            raise ConflictError(f"job {job.job_id} already exists") from None
        raise


def get(cfg: StackConfig, job_id: str, counted: bool = True) -> Job:
    """The job, with its counters summed over its shards: one Query of its item and its shards'
    counters (they sort just before it). With ``counted=False``, its own item only (a GetItem:
    one item's read units), its counters left as that item holds them."""
    if counted:
        found = list(_query(cfg, KeyConditionExpression="pk = :pk AND sk BETWEEN :first AND :job",
                            ExpressionAttributeValues={":pk": f"JOB#{job_id}", ":first": "COUNTS#", ":job": "JOB"}))
    else:
        found = [item] if (item := _ddb(cfg).get_item(Key=job_key(job_id), ConsistentRead=True).get("Item")) else []
    if not found or found[-1]["sk"] != "JOB":
        raise NotFoundError(f"no job {job_id!r}: `parallelrun jobs` lists the jobs of this stack")
    job, shards = Job.from_item(found[-1]), found[:-1]
    return dataclasses.replace(job, **{name: getattr(job, name) + sum(_plain(s.get(name, 0)) for s in shards)
                                       for name in COUNTERS})


def shard_counts(cfg: StackConfig, job_id: str, shard: int) -> dict[str, int]:
    """One shard's counters (every name in :data:`COUNTERS`, 0 where none was added yet)."""
    item = _ddb(cfg).get_item(Key=counts_key(job_id, shard), ConsistentRead=True).get("Item") or {}
    return {name: _plain(item.get(name, 0)) for name in COUNTERS}


def open_shards(cfg: StackConfig, job_id: str, total_batches: int) -> None:
    """Create the counter items of a planned job's shards, before any mini-batch is sent: a
    commit adds to its shard's item only if it exists, so nothing is ever counted for a job that
    does not exist. ADD of zero creates the counters and never resets them (a repeated planning)."""
    for shard in shards_of(total_batches):
        _ddb(cfg).update_item(Key=counts_key(job_id, shard),
                              UpdateExpression="ADD " + ", ".join(f"{name} :zero" for name in COUNTERS),
                              ExpressionAttributeValues={":zero": 0})


def find(cfg: StackConfig, job_id: str, counted: bool = True) -> Job | None:
    try:
        return get(cfg, job_id, counted)
    except NotFoundError:
        return None


def transition(cfg: StackConfig, job_id: str, to: str, expected: tuple[str, ...], **values: Any) -> bool:
    """Move a job from one of ``expected`` to ``to``; False if its state was another (lost a race)."""
    values = {"state": to, **values}
    names = {f"#{k}": k for k in values}
    attrs: dict[str, Any] = {f":{k}": _dynamo(v) for k, v in values.items()}
    attrs.update({f":e{i}": state for i, state in enumerate(expected)})
    return _succeeds(lambda: _ddb(cfg).update_item(
        Key=job_key(job_id),
        UpdateExpression="SET " + ", ".join(f"#{k} = :{k}" for k in values),
        ConditionExpression="#state IN (" + ", ".join(f":e{i}" for i in range(len(expected))) + ")",
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=attrs,
    ))


def claim_finalize(cfg: StackConfig, job_id: str, lease_seconds: float) -> bool:
    """Become the job's one aggregator: a running job, or a finalizing one whose holder's lease
    ran out (a stopped job starts with no lease). False if someone else holds it."""
    now = time.time()
    return _succeeds(lambda: _ddb(cfg).update_item(
        Key=job_key(job_id),
        UpdateExpression="SET #state = :finalizing, finalize_until = :until",
        ConditionExpression="#state = :running OR (#state = :finalizing AND "
                            "(attribute_not_exists(finalize_until) OR finalize_until < :now))",
        ExpressionAttributeNames={"#state": "state"},
        ExpressionAttributeValues={":finalizing": FINALIZING, ":running": RUNNING,
                                   ":until": _dynamo(now + lease_seconds), ":now": _dynamo(now)},
    ))


def reopen(cfg: StackConfig, job_id: str, deployment: dict[str, Any], token: str) -> bool:
    """An ended job runs again (redrive): state RUNNING, no outcome, a new planner chain."""
    return _succeeds(lambda: _ddb(cfg).update_item(
        Key=job_key(job_id),
        UpdateExpression="SET #state = :running, deployment = :deployment, planner_token = :token, "
                         "reason = :empty REMOVE outcome, ended_at, finalize_until",
        ConditionExpression="#state IN (:s, :f, :c)",
        ExpressionAttributeNames={"#state": "state"},
        ExpressionAttributeValues={":running": RUNNING, ":deployment": json.dumps(deployment, sort_keys=True),
                                   ":token": token, ":empty": "", ":s": SUCCEEDED, ":f": FAILED, ":c": CANCELED},
    ))


def advance_planner(cfg: StackConfig, job_id: str, tick: int, token: str, cursor: int, next_token: str) -> bool:
    """Record the planner's cursor, only if no one else handled this tick (see planner.tick)."""
    return _succeeds(lambda: _ddb(cfg).update_item(
        Key=job_key(job_id),
        UpdateExpression="SET #cursor = :cursor, planner_tick = :next, planner_token = :next_token",
        ConditionExpression="planner_tick = :tick AND planner_token = :token AND #cursor <= :cursor",
        ExpressionAttributeNames={"#cursor": "cursor"},
        ExpressionAttributeValues={
            ":cursor": cursor, ":next": tick + 1, ":next_token": next_token, ":tick": tick, ":token": token,
        },
    ))


# The request commit_batch makes, as parallelrun.core.usage counts it (a record's usage includes it).
COMMIT_CALL = ("dynamodb", "TransactWriteItems", {"TransactItems": [{"Put": {}}, {"Update": {}}]})


def commit_batch(cfg: StackConfig, job_id: str, record: BatchRecord) -> bool:
    """Record a finished mini-batch and add its counts to its shard, atomically; False if it was
    already recorded (or the job has no such shard: it does not exist)."""
    return _succeeds(lambda: _transact([
        {"Put": {
            "TableName": cfg.table,
            "Item": _serialize(record.to_item(job_id)),
            "ConditionExpression": "attribute_not_exists(pk)",
        }},
        _counts(cfg, job_id, record, +1),
    ]))


def reopen_batch(cfg: StackConfig, job_id: str, record: BatchRecord) -> bool:
    """Forget a recorded mini-batch so it runs again (redrive): its record goes and its counts
    are taken back from its shard, in one transaction. False if it was already reopened."""
    return _succeeds(lambda: _transact([
        {"Delete": {
            "TableName": cfg.table,
            "Key": _serialize(batch_key(job_id, record.index)),
            "ConditionExpression": "attempt = :attempt",
            "ExpressionAttributeValues": _serialize({":attempt": record.attempt}),
        }},
        _counts(cfg, job_id, record, -1),
    ]))


def get_batch(cfg: StackConfig, job_id: str, index: int) -> BatchRecord | None:
    item = _ddb(cfg).get_item(Key=batch_key(job_id, index), ConsistentRead=True).get("Item")
    return BatchRecord.from_item(item) if item else None


def _items(cfg: StackConfig, pk: str, prefix: str, page: int | None = None) -> Iterator[dict[str, Any]]:
    """The items of partition key ``pk`` whose sort key starts with ``prefix``, in sort-key
    order, page by page (at most ``page`` items a page)."""
    return _query(cfg, KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
                  ExpressionAttributeValues={":pk": pk, ":prefix": prefix}, **({"Limit": page} if page else {}))


def _query(cfg: StackConfig, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """A strongly consistent Query's items, page by page."""
    while True:
        found = _ddb(cfg).query(ConsistentRead=True, **kwargs)
        yield from found.get("Items", [])
        if "LastEvaluatedKey" not in found:
            return
        kwargs["ExclusiveStartKey"] = found["LastEvaluatedKey"]


def iter_batches(cfg: StackConfig, job_id: str) -> Iterator[BatchRecord]:
    """Every recorded mini-batch of a job, in mini-batch order: the shards' queries (each in
    order, the sort key being zero-padded) merged lazily, one page per shard in memory."""
    job = find(cfg, job_id, counted=False)
    shards = shards_of(job.total_batches) if job else range(0)
    merged = heapq.merge(*(_items(cfg, _shard_pk(job_id, shard), "BATCH#", SHARD_PAGE) for shard in shards),
                         key=lambda item: item["sk"])
    return (BatchRecord.from_item(item) for item in merged)


def put_usage(cfg: StackConfig, job_id: str, spent: usage.Usage | None) -> None:
    """Keep what an invocation used for a job beyond a mini-batch record (a planner tick, an
    attempt that will be retried); the aggregator sums them into the job's cost."""
    if spent is None:
        return
    key = {"pk": f"JOB#{job_id}", "sk": f"USAGE#{time.time_ns():020d}#{secrets.token_hex(4)}"}
    _ddb(cfg).put_item(Item={**key, **spent.to_dict()})


def keep_usage(cfg: StackConfig, job_id: str) -> None:
    """Keep the running invocation's usage since its last take, its own write included."""
    put_usage(cfg, job_id, usage.take(including=[("dynamodb", "PutItem", {})]))


def iter_usage(cfg: StackConfig, job_id: str) -> Iterator[usage.Usage]:
    """Every usage item of a job (see :func:`put_usage`)."""
    return (usage.Usage.from_dict(item) for item in _items(cfg, f"JOB#{job_id}", "USAGE#"))


def list_jobs(cfg: StackConfig, limit: int = 50) -> list[Job]:
    """The newest jobs first. A scan: fine for a listing command, never used on a hot path."""
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {
        "FilterExpression": "begins_with(pk, :prefix) AND sk = :job",
        "ExpressionAttributeValues": {":prefix": "JOB#", ":job": "JOB"},
    }
    while True:
        page = _ddb(cfg).scan(**kwargs)
        items.extend(page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    jobs = sorted((Job.from_item(i) for i in items), key=lambda j: j.created_at, reverse=True)
    return jobs[:limit]


# --- DynamoDB plumbing: the resource API for plain Python values, the client for transactions.

def _succeeds(write: Callable[[], Any]) -> bool:
    """Make a conditional write; False when its condition failed (someone else did it first)."""
    try:
        write()
        return True
    except Exception as error:
        if aws.is_conditional_failure(error):
            return False
        raise


def _transact(items: list[dict[str, Any]]) -> None:
    """One TransactWriteItems, made again after a cancellation by a concurrent transaction on one
    of its items: nothing of a cancelled transaction was written, so trying again is safe, and
    botocore does not (DESIGN §6). Any other error, a failed condition included, is raised."""
    for tried in range(1, COMMIT_TRIES + 1):
        try:
            aws.client("dynamodb").transact_write_items(TransactItems=items)
            return
        except Exception as error:
            if tried == COMMIT_TRIES or not aws.is_transaction_conflict(error):
                raise
        _back_off(tried)


def _back_off(tried: int) -> None:
    """Full jitter: writers that collided must not collide again in step.
    https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/"""
    time.sleep(random.uniform(0, min(COMMIT_BACKOFF_CAP, COMMIT_BACKOFF * 2 ** tried)))


def _counts(cfg: StackConfig, job_id: str, record: BatchRecord, sign: int) -> dict[str, Any]:
    """The counter half of a batch's transaction: add (+1) or take back (-1) its counts in its shard."""
    succeeded = record.status == SUCCEEDED
    return {"Update": {
        "TableName": cfg.table,
        "Key": _serialize(counts_key(job_id, shard_of(record.index))),
        "UpdateExpression": "ADD batches_succeeded :bs, batches_failed :bf, items_succeeded :is, "
                            "items_failed :if, retries :r, batches_reused :ru",
        "ConditionExpression": "attribute_exists(pk)",
        "ExpressionAttributeValues": _serialize({
            ":bs": sign * int(succeeded), ":bf": sign * int(not succeeded), ":is": sign * record.items_succeeded,
            ":if": sign * record.items_failed, ":r": sign * (record.attempt - 1),
            ":ru": sign * int(record.reused_from is not None),
        }),
    }}


def _ddb(cfg: StackConfig) -> Any:
    return aws.table(cfg.table)


def _dynamo(value: Any) -> Any:
    return Decimal(str(round(value, 4))) if isinstance(value, float) else value


def _serialize(item: dict[str, Any]) -> dict[str, Any]:
    from boto3.dynamodb.types import TypeSerializer

    serializer = TypeSerializer()
    return {k: serializer.serialize(_dynamo(v)) for k, v in item.items()}
