"""What a schedule's runs have scored: one DynamoDB item per input (key and ETag), so the next
run plans only what is new or changed.

Sized for a million inputs: the items of one schedule are spread over ``keys.SCORED_SHARDS`` partition keys
(a single key takes about 1,000 writes a second, which would make recording a big first run
outlast the aggregator), and the sort key is the input's S3 key itself. A shard's query comes
back in UTF-8 byte order, the order S3 lists keys in, so the shards merged and the listing are
walked side by side: planning holds one page per shard, never the whole set.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from parallelrun.aws import dynamo
from parallelrun.aws.config import StackConfig
from parallelrun.core.datasets import InputFile
from parallelrun.store import keys


def unscored(cfg: StackConfig, schedule: str, files: Iterable[InputFile], after: str = "") -> Iterator[InputFile]:
    """``files`` (in S3's sorted order, all after the key ``after``) less those an earlier run of
    ``schedule`` scored with the same ETag: new files and changed ones. The records are read
    from ``after`` on, so a planner invocation that resumes a listing reads only its own part."""
    scored = _all_scored(cfg, schedule, after)
    current = next(scored, None)
    for item in files:
        while current is not None and current[0] < item.key:
            current = next(scored, None)
        if current is not None and current == (item.key, item.etag):
            continue
        yield item


def mark(cfg: StackConfig, schedule: str, files: Iterable[InputFile]) -> int:
    """Record ``files`` as scored by ``schedule`` (a changed file's ETag is overwritten)."""
    count = 0
    with dynamo.writer(cfg.table, overwrite_by_pkeys=["pk", "sk"]) as writer:
        for item in files:
            writer.put_item(Item={**keys.scored_key(schedule, item.key), "etag": item.etag})
            count += 1
    return count


def forget(cfg: StackConfig, schedule: str) -> int:
    """Delete everything ``schedule`` recorded (the schedule itself is going)."""
    count = 0
    with dynamo.writer(cfg.table) as writer:
        for shard in range(keys.SCORED_SHARDS):
            pk = keys.scored_pk(schedule, shard)
            for key, _ in _query(cfg, pk):
                writer.delete_item(Key={"pk": pk, "sk": key})
                count += 1
    return count


def _all_scored(cfg: StackConfig, schedule: str, after: str = "") -> Iterator[tuple[str, str]]:
    """Every (key, ETag) of the schedule after ``after``, in key order: the shards' queries merged."""
    return heapq.merge(*(_query(cfg, keys.scored_pk(schedule, shard), after) for shard in range(keys.SCORED_SHARDS)))


def _query(cfg: StackConfig, pk: str, after: str = "") -> Iterator[tuple[str, str]]:
    condition, values = "pk = :pk", {":pk": pk}
    if after:  # sort keys compare in UTF-8 byte order, S3's order for keys: the records after where the listing resumes
        # (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Query.KeyConditionExpressions.html)
        condition, values = "pk = :pk AND sk > :after", {":pk": pk, ":after": after}
    found = dynamo.query(cfg.table, KeyConditionExpression=condition, ExpressionAttributeValues=values,
                         ConsistentRead=True)
    return ((item["sk"], item.get("etag", "")) for item in found)
