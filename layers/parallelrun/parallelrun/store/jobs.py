"""Job records in DynamoDB: create, read, list, and move a job from state to state.

A job is ``JOB#<id>``/``JOB`` (every key is made in :mod:`parallelrun.store.keys`); its
mini-batch records and their shards' counters are :mod:`parallelrun.store.batches`'. A job's
counters are its own item's (a job that took an earlier job's whole output is counted there)
plus its shards': they sort just before the job's item, so one Query reads the job and them all.
What invocations used for a job beyond its mini-batch records are usage items beside it.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from parallelrun.aws import dynamo
from parallelrun.aws.config import StackConfig
from parallelrun.core import usage
from parallelrun.core.planning import Checkpoint
from parallelrun.core.errors import ConflictError, NotFoundError
from parallelrun.core.settings import RunSettings
from parallelrun.store import keys

QUEUED, PLANNING, RUNNING, FINALIZING = "QUEUED", "PLANNING", "RUNNING", "FINALIZING"
SUCCEEDED, FAILED, CANCELED = "SUCCEEDED", "FAILED", "CANCELED"
TERMINAL = (SUCCEEDED, FAILED, CANCELED)
# A job's counters: its record's fields, summed with its shards' items of the same names.
COUNTERS = ("batches_succeeded", "batches_failed", "items_succeeded", "items_failed", "retries", "batches_reused")


@dataclass
class JobRecord:
    """A job as the table holds it (the SDK's ``Job`` is the caller's handle on one)."""

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
    schedule: str | None = None  # the schedule this job is a run of (see parallelrun.pipeline.scheduling)
    pipeline_run: str | None = None  # the pipeline run this job is a step of (see parallelrun.pipeline.chaining)
    # A pipeline step's: which objects of its input folder (the step before's output) are inputs.
    feed: dict[str, list[str]] | None = None
    # The aggregation under way: its id (a redrive's aggregation gets a new one) and how many
    # mini-batches each of its ranges collates (fixed when it is first claimed).
    aggregation: str | None = None
    range_batches: int | None = None
    planning: Checkpoint = field(default_factory=Checkpoint)  # how far its listing has gone (PLANNING)

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
        item["planning"] = self.planning.to_item()
        return {**keys.job_key(self.job_id), **item}

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> JobRecord:
        raw = {k: dynamo.plain(v) for k, v in item.items() if k in cls.__dataclass_fields__}
        raw["deployment"] = json.loads(raw["deployment"])
        raw["settings"] = RunSettings.from_json(raw["settings"])
        raw["planning"] = Checkpoint.from_item(raw["planning"]) if "planning" in raw else Checkpoint()
        return cls(**raw)


def create(cfg: StackConfig, job: JobRecord) -> None:
    """Store a new job; a second create of the same id (a retried trigger) is refused."""
    if not dynamo.put_new(cfg.table, job.to_item()):
        raise ConflictError(f"job {job.job_id} already exists")


def get(cfg: StackConfig, job_id: str, counted: bool = True) -> JobRecord:
    """The job, with its counters summed over its shards: one Query of its item and its shards'
    counters (they sort just before it). With ``counted=False``, its own item only (a GetItem:
    one item's read units), its counters left as that item holds them."""
    if counted:
        found = list(dynamo.query(
            cfg.table, ConsistentRead=True, KeyConditionExpression="pk = :pk AND sk BETWEEN :first AND :job",
            ExpressionAttributeValues={":pk": keys.job_pk(job_id), ":first": keys.COUNTS_PREFIX, ":job": keys.JOB_SK}))
    else:
        found = [item] if (item := dynamo.get(cfg.table, keys.job_key(job_id), consistent=True)) else []
    if not found or found[-1]["sk"] != keys.JOB_SK:
        raise missing(job_id)
    job, shards = JobRecord.from_item(found[-1]), found[:-1]
    return dataclasses.replace(job, **{name: getattr(job, name) + sum(dynamo.plain(s.get(name, 0)) for s in shards)
                                       for name in COUNTERS})


def missing(job_id: str) -> NotFoundError:
    return NotFoundError(f"no job {job_id!r}: `parallelrun jobs` lists the jobs of this stack")


def find(cfg: StackConfig, job_id: str, counted: bool = True) -> JobRecord | None:
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


def claim_finalize(cfg: StackConfig, job_id: str, lease_seconds: float, range_batches: int) -> bool:
    """Become the job's one aggregator: a running job, or a finalizing one whose holder's lease
    ran out (a stopped job starts with no lease). False if someone else holds it. The first claim
    names the aggregation and its ranges; a successor's claim keeps them, and what was collated."""
    now = time.time()
    return dynamo.update_if(
        cfg.table, keys.job_key(job_id),
        "SET #state = :finalizing, finalize_until = :until, aggregation = if_not_exists(aggregation, :aggregation), "
        "range_batches = if_not_exists(range_batches, :range)",
        "#state = :running OR (#state = :finalizing AND "
        "(attribute_not_exists(finalize_until) OR finalize_until < :now))",
        {":finalizing": FINALIZING, ":running": RUNNING, ":until": dynamo.decimal(now + lease_seconds),
         ":now": dynamo.decimal(now), ":aggregation": secrets.token_hex(6), ":range": range_batches},
        names={"#state": "state"})


def claim_join(cfg: StackConfig, job_id: str, aggregation: str, lease_seconds: float) -> bool:
    """Become the one to join the collated ranges of ``aggregation`` into the job's files; a
    joiner that died is succeeded once its lease ran out. False if someone else holds it."""
    now = time.time()
    return dynamo.update_if(
        cfg.table, keys.job_key(job_id), "SET join_until = :until",
        "#state = :finalizing AND aggregation = :aggregation AND "
        "(attribute_not_exists(join_until) OR join_until < :now)",
        {":finalizing": FINALIZING, ":aggregation": aggregation, ":until": dynamo.decimal(now + lease_seconds),
         ":now": dynamo.decimal(now)},
        names={"#state": "state"})


def reopen(cfg: StackConfig, job_id: str, deployment: dict[str, Any], token: str) -> bool:
    """An ended job runs again (redrive): state RUNNING, no outcome, a new planner chain."""
    return dynamo.update_if(
        cfg.table, keys.job_key(job_id),
        "SET #state = :running, deployment = :deployment, planner_token = :token, "
        "reason = :empty REMOVE outcome, ended_at, finalize_until, aggregation, range_batches, join_until",
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


def advance_listing(cfg: StackConfig, job_id: str, held: Checkpoint, new: Checkpoint, **values: Any) -> bool:
    """Move a planning job's checkpoint from ``held`` to ``new`` (and set ``values`` with it: the
    totals and RUNNING once the listing is complete); False if the job is no longer planning or
    its checkpoint is another's (a duplicate or the loser of a race: see
    planner.continue_planning). Only the token is compared, so that marking a checkpoint sent
    never fails its successor's write. A job queued before checkpoints were kept has none: the
    first one counts as held."""
    # A condition may name a map's element by its document path, here the checkpoint's token
    # (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Expressions.Attributes.html).
    condition = "#state = :planning AND #planning.#token = :held"
    if held.token == Checkpoint().token:
        condition = "#state = :planning AND (attribute_not_exists(#planning) OR #planning.#token = :held)"
    values = {"planning": new.to_item(), **values}
    names = {"#state": "state", "#token": "token", **{f"#{k}": k for k in values}}
    attrs = {":planning": PLANNING, ":held": held.token, **{f":v_{k}": dynamo.decimal(v) for k, v in values.items()}}
    return dynamo.update_if(cfg.table, keys.job_key(job_id), "SET " + ", ".join(f"#{k} = :v_{k}" for k in values),
                            condition, attrs, names=names)


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
    return (usage.Usage.from_dict(item)
            for item in dynamo.query_prefix(cfg.table, keys.job_pk(job_id), keys.USAGE_PREFIX, consistent=True))


def list_jobs(cfg: StackConfig, limit: int = 50) -> list[JobRecord]:
    """The newest jobs first. A scan: fine for a listing command, never used on a hot path."""
    items = dynamo.scan(cfg.table, FilterExpression="begins_with(pk, :prefix) AND sk = :job",
                        ExpressionAttributeValues={":prefix": keys.JOB_PREFIX, ":job": keys.JOB_SK})
    jobs = sorted((JobRecord.from_item(i) for i in items), key=lambda j: j.created_at, reverse=True)
    return jobs[:limit]
