"""A job's plan in S3 (parallelrun.store.plan) without moto: a fake S3 client keeps the chunks
in a dict and counts the reads, so what a range of mini-batches costs is seen exactly."""

from __future__ import annotations

import io
from typing import Any

import pytest

from parallelrun.aws.config import StackConfig
from parallelrun.core.datasets import InputFile, TablePiece
from parallelrun.store import keys, plan


class FakeS3:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.reads: list[str] = []

    def put_object(self, Bucket: str, Key: str, Body: bytes) -> None:  # noqa: N803 (boto3's names)
        self.objects[(Bucket, Key)] = Body

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        self.reads.append(Key)
        return {"Body": io.BytesIO(self.objects[(Bucket, Key)])}


@pytest.fixture
def cfg() -> StackConfig:
    return StackConfig(**{**{name: "" for name in StackConfig.__dataclass_fields__}, "artifacts_bucket": "art"})


def _write(cfg: StackConfig, s3: FakeS3, batches: list[tuple[list, dict | None]], partitioned: bool) -> None:
    """As the planner writes a plan: full chunks as they fill, then the last one."""
    chunk: list = []
    for count, (items, partition) in enumerate(batches, start=1):
        chunk.append(plan.entry(items, partition, partitioned))
        if len(chunk) == plan.CHUNK:
            plan.put_chunk(cfg, "j", count // plan.CHUNK - 1, chunk, s3=s3)
            chunk = []
    if chunk:
        plan.put_chunk(cfg, "j", len(batches) // plan.CHUNK, chunk, s3=s3)


def test_a_plan_reads_back_as_written_reading_only_the_chunks_asked_for(cfg, monkeypatch):
    monkeypatch.setattr(plan, "CHUNK", 4)
    s3 = FakeS3()
    batches = [([InputFile(f"in/{i:02d}.txt", i, f"e{i}")], None) for i in range(10)]
    _write(cfg, s3, batches, partitioned=False)
    assert sorted(key for _, key in s3.objects) == [keys.plan_chunk_key("j", n) for n in range(3)]

    assert list(plan.read(cfg, "j", 0, 10, s3=s3)) == [(i, items, None) for i, (items, _) in enumerate(batches)]
    s3.reads.clear()
    assert [index for index, _, _ in plan.read(cfg, "j", 5, 7, s3=s3)] == [5, 6]
    assert s3.reads == [keys.plan_chunk_key("j", 1)]  # mini-batches 4..7 only
    s3.reads.clear()
    assert [index for index, _, _ in plan.read(cfg, "j", 3, 9, s3=s3)] == [3, 4, 5, 6, 7, 8]
    assert s3.reads == [keys.plan_chunk_key("j", n) for n in range(3)]


def test_a_partitioned_plan_keeps_each_mini_batchs_partition_and_table_pieces_come_back(cfg):
    s3 = FakeS3()
    piece = TablePiece("t/a.csv", 100, "e", "csv", 0, 50, "c2NoZW1h")
    batches = [([InputFile("s=1/a.txt", 1, "e")], {"s": "1"}), ([piece], {"s": "2"})]
    _write(cfg, s3, batches, partitioned=True)
    assert list(plan.read(cfg, "j", 0, 2, s3=s3)) == [(0, batches[0][0], {"s": "1"}), (1, [piece], {"s": "2"})]


def test_an_entry_is_its_items_alone_unless_the_job_is_partitioned():
    items = [InputFile("a", 1, "e")]
    assert plan.entry(items, None, partitioned=False) == [["a", 1, "e"]]
    assert plan.entry(items, {"k": "v"}, partitioned=True) == {"partition": {"k": "v"}, "items": [["a", 1, "e"]]}
