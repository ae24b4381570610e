"""Job and mini-batch records in DynamoDB.

One table holds everything (``pk``/``sk``; every key is made in :mod:`parallelrun.store.keys`). A
job is ``JOB#<id>``/``JOB``. Its mini-batches are spread over ``keys.SHARDS`` shards, shard =
index % SHARDS: the records of a shard's mini-batches are under a partition key of its own,
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
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from parallelrun.aws import dynamo
from parallelrun.aws.config import StackConfig
from parallelrun.core import usage
from parallelrun.core.errors import ConflictError, NotFoundError
from parallelrun.core.settings import RunSettings
from parallelrun.store import keys

QUEUED, PLANNING, RUNNING, FINALIZING = "QUEUED", "PLANNING", "RUNNING", "FINALIZING"
SUCCEEDED, FAILED, CANCELED = "SUCCEEDED", "FAILED", "CANCELED"
TERMINAL = (SUCCEEDED, FAILED, CANCELED)
ACTIVE = (QUEUED, PLANNING, RUNNING, FINALIZING)


# Records per Query page when the shards are merged in index order: the merge holds one page per
# shard, so its memory is SHARDS x SHARD_PAGE records whatever the size of the job.
SHARD_PAGE = 50
COUNTERS = ("batches_succeeded", "batches_failed", "items_succeeded", "items_failed", "retries", "batches_reused")


def shards_of(total_batches: int | None) -> range:
    """The shards a job of ``total_batches`` mini-batches uses (none before it is planned:
    nothing can be recorded before the total is set, DESIGN invariant 4)."""
    return range(min(keys.SHARDS, total_batches or 0))


def shard_size(total_batches: int, shard: int) -> int:
    """How many of a job's mini-batches ``shard`` holds once all are recorded."""
    return total_batches // keys.SHARDS + (shard < total_batches % keys.SHARDS)


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
        item = {k: dynamo.decimal(v) for k, v in self.__dict__.items() if v is not None}
        item["deployment"] = json.dumps(self.deployment, sort_keys=True)
        item["settings"] = self.settings.to_json()
        return {**keys.job_key(self.job_id), **item}

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Job:
        raw = {k: dynamo.plain(v) for k, v in item.items() if k in cls.__dataclass_fields__}
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
        item = {k: dynamo.decimal(v) for k, v in self.__dict__.items() if v is not None}
        return {**keys.batch_key(job_id, self.index), **item}

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> BatchRecord:
        return cls(**{k: dynamo.plain(v) for k, v in item.items() if k in cls.__dataclass_fields__})


def create(cfg: StackConfig, job: Job) -> None:
    """Store a new job; a second create of the same id (a retried trigger) is refused."""
    if not dynamo.put_new(cfg.table, job.to_item()):
        raise ConflictError(f"job {job.job_id} already exists")


def get(cfg: StackConfig, job_id: str, counted: bool = True) -> Job:
    """The job, with its counters summed over its shards: one Query of its item and its shards'
    counters (they sort just before it). With ``counted=False``, its own item only (a GetItem:
    one item's read units), its counters left as that item holds them."""
    if counted:
        found = list(dynamo.query(
            cfg.table, ConsistentRead=True, KeyConditionExpression="pk = :pk AND sk BETWEEN :first AND :job",
            ExpressionAttributeValues={":pk": keys.job_pk(job_id), ":first": keys.COUNTS_PREFIX, ":job": keys.JOB_SK}))
    else:
        found = [item] if (item := dynamo.get(cfg.table, keys.job_key(job_id), consistent=True)) else []
    if not found or found[-1]["sk"] != "JOB":
        raise NotFoundError(f"no job {job_id!r}: `parallelrun jobs` lists the jobs of this stack")
    job, shards = Job.from_item(found[-1]), found[:-1]
    return dataclasses.replace(job, **{name: getattr(job, name) + sum(dynamo.plain(s.get(name, 0)) for s in shards)
                                       for name in COUNTERS})


def shard_counts(cfg: StackConfig, job_id: str, shard: int) -> dict[str, int]:
    """One shard's counters (every name in :data:`COUNTERS`, 0 where none was added yet)."""
    item = dynamo.get(cfg.table, keys.counts_key(job_id, shard), consistent=True) or {}
    return {name: dynamo.plain(item.get(name, 0)) for name in COUNTERS}


def open_shards(cfg: StackConfig, job_id: str, total_batches: int) -> None:
    """Create the counter items of a planned job's shards, before any mini-batch is sent: a
    commit adds to its shard's item only if it exists, so nothing is ever counted for a job that
    does not exist. ADD of zero creates the counters and never resets them (a repeated planning)."""
    for shard in shards_of(total_batches):
        dynamo.update(cfg.table, keys.counts_key(job_id, shard),
                      "ADD " + ", ".join(f"{name} :zero" for name in COUNTERS), {":zero": 0})


def find(cfg: StackConfig, job_id: str, counted: bool = True) -> Job | None:
    try:
        return get(cfg, job_id, counted)
    except NotFoundError:
        return None


def transition(cfg: StackConfig, job_id: str, to: str, expected: tuple[str, ...], **values: Any) -> bool:
    """Move a job from one of ``expected`` to ``to``; False if its state was another (lost a race)."""
    values = {"state": to, **values}
    names = {f"#{k}": k for k in values}
    attrs: dict[str, Any] = {f":{k}": dynamo.decimal(v) for k, v in values.items()}
    attrs.update({f":e{i}": state for i, state in enumerate(expected)})
    return dynamo.update_if(cfg.table, keys.job_key(job_id), "SET " + ", ".join(f"#{k} = :{k}" for k in values),
                            "#state IN (" + ", ".join(f":e{i}" for i in range(len(expected))) + ")", attrs,
                            names=names)


def claim_finalize(cfg: StackConfig, job_id: str, lease_seconds: float) -> bool:
    """Become the job's one aggregator: a running job, or a finalizing one whose holder's lease
    ran out (a stopped job starts with no lease). False if someone else holds it."""
    now = time.time()
    return dynamo.update_if(
        cfg.table, keys.job_key(job_id), "SET #state = :finalizing, finalize_until = :until",
        "#state = :running OR (#state = :finalizing AND "
        "(attribute_not_exists(finalize_until) OR finalize_until < :now))",
        {":finalizing": FINALIZING, ":running": RUNNING, ":until": dynamo.decimal(now + lease_seconds),
         ":now": dynamo.decimal(now)},
        names={"#state": "state"})


def reopen(cfg: StackConfig, job_id: str, deployment: dict[str, Any], token: str) -> bool:
    """An ended job runs again (redrive): state RUNNING, no outcome, a new planner chain."""
    return dynamo.update_if(
        cfg.table, keys.job_key(job_id), "SET #state = :running, deployment = :deployment, planner_token = :token, "
                                    "reason = :empty REMOVE outcome, ended_at, finalize_until",
        "#state IN (:s, :f, :c)",
        {":running": RUNNING, ":deployment": json.dumps(deployment, sort_keys=True), ":token": token, ":empty": "",
         ":s": SUCCEEDED, ":f": FAILED, ":c": CANCELED},
        names={"#state": "state"})


def advance_planner(cfg: StackConfig, job_id: str, tick: int, token: str, cursor: int, next_token: str) -> bool:
    """Record the planner's cursor, only if no one else handled this tick (see planner.tick)."""
    return dynamo.update_if(
        cfg.table, keys.job_key(job_id), "SET #cursor = :cursor, planner_tick = :next, planner_token = :next_token",
        "planner_tick = :tick AND planner_token = :token AND #cursor <= :cursor",
        {":cursor": cursor, ":next": tick + 1, ":next_token": next_token, ":tick": tick, ":token": token},
        names={"#cursor": "cursor"})


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


def _items(cfg: StackConfig, pk: str, prefix: str, page: int | None = None) -> Iterator[dict[str, Any]]:
    """The items of partition key ``pk`` whose sort key starts with ``prefix``, in sort-key
    order, page by page (at most ``page`` items a page)."""
    return dynamo.query(cfg.table, ConsistentRead=True, KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
                        ExpressionAttributeValues={":pk": pk, ":prefix": prefix}, **({"Limit": page} if page else {}))


def iter_batches(cfg: StackConfig, job_id: str) -> Iterator[BatchRecord]:
    """Every recorded mini-batch of a job, in mini-batch order: the shards' queries (each in
    order, the sort key being zero-padded) merged lazily, one page per shard in memory."""
    job = find(cfg, job_id, counted=False)
    shards = shards_of(job.total_batches) if job else range(0)
    merged = heapq.merge(*(_items(cfg, keys.batch_pk(job_id, shard), keys.BATCH_PREFIX, SHARD_PAGE)
                           for shard in shards), key=lambda item: item["sk"])
    return (BatchRecord.from_item(item) for item in merged)


def put_usage(cfg: StackConfig, job_id: str, spent: usage.Usage | None) -> None:
    """Keep what an invocation used for a job beyond a mini-batch record (a planner tick, an
    attempt that will be retried); the aggregator sums them into the job's cost."""
    if spent is None:
        return
    dynamo.put(cfg.table, {**keys.usage_key(job_id, time.time_ns(), secrets.token_hex(4)), **spent.to_dict()})


def keep_usage(cfg: StackConfig, job_id: str) -> None:
    """Keep the running invocation's usage since its last take, its own write included."""
    put_usage(cfg, job_id, usage.take(including=[("dynamodb", "PutItem", {})]))


def iter_usage(cfg: StackConfig, job_id: str) -> Iterator[usage.Usage]:
    """Every usage item of a job (see :func:`put_usage`)."""
    return (usage.Usage.from_dict(item) for item in _items(cfg, keys.job_pk(job_id), keys.USAGE_PREFIX))


def list_jobs(cfg: StackConfig, limit: int = 50) -> list[Job]:
    """The newest jobs first. A scan: fine for a listing command, never used on a hot path."""
    items = dynamo.scan(cfg.table, FilterExpression="begins_with(pk, :prefix) AND sk = :job",
                        ExpressionAttributeValues={":prefix": keys.JOB_PREFIX, ":job": keys.JOB_SK})
    jobs = sorted((Job.from_item(i) for i in items), key=lambda j: j.created_at, reverse=True)
    return jobs[:limit]


# --- a batch's transaction

def _counts(cfg: StackConfig, job_id: str, record: BatchRecord, sign: int) -> dict[str, Any]:
    """The counter half of a batch's transaction: add (+1) or take back (-1) its counts in its shard."""
    succeeded = record.status == SUCCEEDED
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

