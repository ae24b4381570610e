"""A job's plan in S3: its mini-batches, in order, in chunks of :data:`CHUNK`.

The planner writes the whole plan before any mini-batch is sent (DESIGN invariant 6), a slice of
the listing per invocation, each handing the next a :class:`Carry`; a tick, a redrive and a
schedule's record of what it scored read back only the chunks they need. A mini-batch is stored
as its items' JSON, or, in a partitioned job, as its items and partition.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from parallelrun.aws import s3 as objects
from parallelrun.aws.config import StackConfig
from parallelrun.core import datasets, partitions
from parallelrun.core.datasets import InputFile, TablePiece
from parallelrun.store import keys

CHUNK = 500  # mini-batches per plan object: a tick reads only the chunks it sends from

# A mini-batch read back: its index, its items, and its partition (None unless partitioned).
Entry = tuple[int, list[InputFile], dict[str, str] | None]


def entry(items: list[InputFile] | list[TablePiece], partition: dict[str, str] | None,
          partitioned: bool) -> list | dict:
    """A mini-batch as the plan stores it: its items, with its partition in a partitioned job."""
    listed = [item.to_json() for item in items]
    return {"partition": partition, "items": listed} if partitioned else listed


def put_chunk(cfg: StackConfig, job_id: str, number: int, chunk: list, *, s3: Any = None) -> None:
    """Store chunk ``number``: mini-batches ``number * CHUNK`` on, as :func:`entry` made them."""
    objects.put(cfg.artifacts_bucket, keys.plan_chunk_key(job_id, number), json.dumps(chunk).encode(), s3)


def read(cfg: StackConfig, job_id: str, start: int, end: int, *, s3: Any = None) -> Iterator[Entry]:
    """Mini-batches ``start`` ≤ index < ``end`` of a job's plan (index, items, partition),
    reading only the chunks needed."""
    for number in range(start // CHUNK, (end - 1) // CHUNK + 1):
        body = objects.get(cfg.artifacts_bucket, keys.plan_chunk_key(job_id, number), s3)
        for offset, batch in enumerate(json.loads(body)):
            index = number * CHUNK + offset
            if start <= index < end:
                listed, partition = (batch["items"], batch["partition"]) if isinstance(batch, dict) else (batch, None)
                yield index, [datasets.item_from_json(item) for item in listed], partition


@dataclass
class Carry:
    """What one planner invocation hands the next beside its checkpoint: the plan chunk not yet
    full (as :func:`entry` made them) and the mini-batches still filling. Stored under the
    checkpoint's token, written once, before the checkpoint names it."""

    chunk: list = field(default_factory=list)
    open_batches: partitions.OpenBatches = field(default_factory=dict)


def put_carry(cfg: StackConfig, job_id: str, token: str, carry: Carry, *, s3: Any = None) -> None:
    filling = [[partition, [item.to_json() for item in items]] for items, partition in carry.open_batches.values()]
    body = json.dumps({"chunk": carry.chunk, "open": filling})
    objects.put(cfg.artifacts_bucket, keys.plan_carry_key(job_id, token), body.encode(), s3)


def delete_carry(cfg: StackConfig, job_id: str, token: str) -> None:
    """Drop the carry of a checkpoint the job has moved past: no continuation reads it again."""
    objects.delete_keys(cfg.artifacts_bucket, [keys.plan_carry_key(job_id, token)])


def read_carry(cfg: StackConfig, job_id: str, token: str, *, s3: Any = None) -> Carry | None:
    """The carry stored under ``token``; None once it is deleted (:func:`delete_carry`)."""
    try:
        stored = json.loads(objects.get(cfg.artifacts_bucket, keys.plan_carry_key(job_id, token), s3))
    except objects.ClientError as error:
        if objects.error_code(error) == "NoSuchKey":
            return None
        raise
    filling = {partitions.group_of(partition): ([InputFile.from_json(item) for item in items], partition)
               for partition, items in stored["open"]}
    return Carry(stored["chunk"], filling)
