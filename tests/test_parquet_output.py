"""output_format=parquet: typed parts, collated into one Parquet file in bounded memory."""

from __future__ import annotations

import io
import json
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from parallelrun import aws
from parallelrun.client import sdk
from parallelrun.client.api import Client
from parallelrun.core import results
from parallelrun.core.datasets import split_s3_uri
from parallelrun.core.errors import ScoringScriptError
from parallelrun.core.settings import RunSettings, resolve
from parallelrun.pipeline import aggregator, collation
from parallelrun.pipeline.isolation import PartitionSlice, in_input_order
from parallelrun.scoring.child import to_rows
from parallelrun.store import batches, jobs, keys
from tests.test_pipeline import start


def read_bytes(cfg, job: jobs.JobRecord, name: str | None = None) -> bytes:
    bucket, key = split_s3_uri(job.output_uri + (name or job.settings.output_file_name))
    return aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


def part(frame: pd.DataFrame) -> bytes:
    return results.encode(results.table_of(frame))


def test_a_dataframe_keeps_its_types_and_a_list_becomes_one_result_column():
    frame = pd.DataFrame({"id": [3, 4], "score": [0.5, 0.25], "label": ["a", "b"]}, index=[10, 11])
    header, table = to_rows(frame, "parquet")
    assert header is None and table.column_names == ["id", "score", "label"]  # the index left out
    back = pq.read_table(io.BytesIO(results.encode(table))).to_pandas()
    assert back.dtypes.astype(str).to_dict() == {"id": "int64", "score": "float64", "label": "str"}
    _, table = to_rows([1, "two", 3.5], "parquet")
    assert table.to_pydict() == {"result": ["1", "two", "3.5"]} and table.schema.field("result").type == pa.string()
    with pytest.raises(ScoringScriptError, match="Parquet cannot store"):
        to_rows(pd.DataFrame({"mixed": [1, "a"]}), "parquet")
    assert results.concat([[], table]).equals(table) and len(results.concat([table, [], table])) == 6


def test_the_default_file_name_follows_parquet_output():
    assert resolve({"output_format": "parquet"}).output_file_name == "parallel_run_step.parquet"
    assert resolve({"output_format": "parquet", "append_row_file_name": "scores.pq"}).output_file_name == "scores.pq"
    assert RunSettings().output_file_name == "parallel_run_step.txt"


def test_the_collator_casts_to_the_first_schema_and_refuses_what_cannot_be_cast():
    sink = Sink()
    collator = results.ParquetCollator(sink)
    assert collator.add(0, part(pd.DataFrame({"id": [0, 1], "x": [0.0, 0.5]}))) == 2
    # Columns in another order, int32 ids: taken by name and cast.
    collator.add(1, results.encode(pa.table({"x": pa.array([1.0]), "id": pa.array([2], pa.int32())})))
    with pytest.raises(results.SchemaMismatch, match=r"mini-batch 2 returned columns \['id'\].*mini-batch 0"):
        collator.add(2, part(pd.DataFrame({"id": [9]})))
    with pytest.raises(results.SchemaMismatch, match="mini-batch 3 returned columns of other types"):
        collator.add(3, part(pd.DataFrame({"id": [9], "x": ["not a number"]})))
    collator.add(4, part(pd.DataFrame({"id": [3], "x": [1.5]})))
    collator.close()
    back = pd.read_parquet(io.BytesIO(bytes(sink.data)))
    assert back.to_dict("list") == {"id": [0, 1, 2, 3], "x": [0.0, 0.5, 1.0, 1.5]}
    assert back.dtypes.astype(str).to_dict() == {"id": "int64", "x": "float64"}


def test_the_collator_writes_row_groups_of_bounded_size_and_an_empty_output_is_valid():
    sink = Sink()
    collator = results.ParquetCollator(sink, row_group_bytes=4000)
    written = []
    for index in range(20):
        collator.add(index, part(pd.DataFrame({"id": range(index * 100, index * 100 + 100)})))  # 800 bytes each
        written.append(len(sink.data))
    # Row groups reach the sink as they fill, not at close: the collator never holds the output.
    assert written[3] == len(b"PAR1") < written[4] < written[9] < written[14] < written[19]  # magic, then groups
    collator.close()
    handle = pq.ParquetFile(io.BytesIO(bytes(sink.data)))
    assert handle.metadata.num_row_groups == 4 and handle.read().column("id").to_pylist() == list(range(2000))
    empty = Sink()
    results.ParquetCollator(empty).close()
    assert pd.read_parquet(io.BytesIO(bytes(empty.data))).shape == (0, 0)


def _job_with_parts(stack, job_id: str, frames: list[pd.DataFrame | None]) -> jobs.JobRecord:
    """A RUNNING job whose mini-batches are recorded: a frame is a succeeded part, None a failed batch."""
    job = jobs.JobRecord(job_id=job_id, endpoint="e", deployment={}, settings=RunSettings(output_format="parquet"),
                   input_uri="s3://b/p/", output_uri=f"s3://{stack.cfg.artifacts_bucket}/jobs/{job_id}/output/",
                   state=jobs.RUNNING, total_batches=len(frames))
    jobs.create(stack.cfg, job)
    batches.open_shards(stack.cfg, job_id, len(frames))  # as the planner does
    for index, frame in enumerate(frames):
        if frame is None:
            record = batches.BatchRecord(index=index, status=jobs.FAILED, items=1, items_succeeded=0, items_failed=1,
                                      attempt=1)
        else:
            key = keys.part_key(job_id, index, 1, "parquet")
            aws.client("s3").put_object(Bucket=stack.cfg.artifacts_bucket, Key=key, Body=part(frame))
            record = batches.BatchRecord(index=index, status=jobs.SUCCEEDED, items=len(frame),
                                      items_succeeded=len(frame), items_failed=0, attempt=1, part_key=key,
                                      rows=len(frame))
        batches.commit_batch(stack.cfg, job_id, record)
    return jobs.get(stack.cfg, job_id)


def test_parts_larger_than_an_upload_part_make_one_valid_parquet_file(stack):
    size = 5 * 1024 * 1024
    # Random bytes do not compress: 7 parts of ~1.1 MiB pass one 5 MiB upload part.
    frames = [pd.DataFrame({"id": range(i * 40, i * 40 + 40), "blob": [os.urandom(28 * 1024) for _ in range(40)]})
              for i in range(7)]
    frames[3] = None  # a failed mini-batch: its rows are simply absent
    job = _job_with_parts(stack, "pq-big", frames)
    summary = collation.collate_range(stack.cfg, job, 0, 0, job.total_batches, collation.job_files(job),
                                      upload_part_size=size)
    assert (summary.rows, summary.unwritten) == (240, [])
    bucket, key = split_s3_uri(job.output_uri + "parallel_run_step.parquet")
    assert aws.client("s3").head_object(Bucket=bucket, Key=key)["ContentLength"] > size
    assert aws.client("s3").head_object(Bucket=bucket, Key=key)["ETag"].strip('"').endswith("-2")  # multipart
    back = pd.read_parquet(io.BytesIO(read_bytes(stack.cfg, job)))
    assert list(back["id"]) == [i for i in range(280) if not 120 <= i < 160]
    assert back["blob"].iloc[0] == frames[0]["blob"].iloc[0]


def test_a_part_that_cannot_be_cast_fails_the_job_naming_its_mini_batch(stack):
    frames = [pd.DataFrame({"id": [0, 1]}), pd.DataFrame({"id": ["two"]}), pd.DataFrame({"id": [3]})]
    job = _job_with_parts(stack, "pq-mismatch", frames)
    aggregator.finalize(stack.cfg, job.job_id)
    job = jobs.get(stack.cfg, job.job_id)
    assert job.state == jobs.FAILED and "1 mini-batch(es) are not in the output" in job.reason
    assert "mini-batch 1 returned columns of other types" in job.reason
    assert list(pd.read_parquet(io.BytesIO(read_bytes(stack.cfg, job)))["id"]) == [0, 1, 3]
    [failure] = [json.loads(line) for line in read_bytes(stack.cfg, job, "failures.jsonl").splitlines()]
    assert (failure["minibatch"], failure["error_type"]) == (1, collation.UNWRITTEN)
    summary = json.loads(read_bytes(stack.cfg, job, "summary.json"))
    assert summary["counts"]["rows"] == 3 and summary["output"].endswith("/parallel_run_step.parquet")


def test_a_failed_mini_batch_is_absent_from_a_parquet_output(stack, make_endpoint):
    endpoint = make_endpoint(
        "def run(mini_batch):\n"
        "    if (mini_batch['id'] == 50).any():\n"
        "        raise ValueError('row 50 breaks this mini-batch')\n"
        "    return mini_batch.assign(half=mini_batch['id'] / 2)[['id', 'half']]\n",
        name="pqfail", settings={"input_type": "tabular"})
    body = "id\n" + "".join(f"{i}\n" for i in range(200))
    aws.client("s3").put_object(Bucket=stack.cfg.input_bucket, Key="pqfail/r/t.csv", Body=body.encode())
    job = stack.run_until_done(start(stack, endpoint, "pqfail/r/", {
        "input_type": "tabular", "mini_batch_size": "100", "output_format": "parquet", "run_max_try": "1"}).job_id)
    assert job.state == jobs.SUCCEEDED and job.total_batches > 3 and job.items_failed > 0
    back = pd.read_parquet(io.BytesIO(read_bytes(stack.cfg, job)))
    ids = list(back["id"])
    assert 50 not in ids and ids == sorted(ids) and len(ids) == 200 - job.items_failed
    assert back.dtypes.astype(str).to_dict() == {"id": "int64", "half": "float64"}
    assert sdk.Job(Client(stack.cfg), job.job_id).get_output_dataframe().equals(back)


def test_partitions_rows_go_back_to_input_order_as_a_table():
    a, b = PartitionSlice({"s": "a"}, None, [], 2, [1, 3]), PartitionSlice({"s": "b"}, None, [], 2, [0, 2])
    ta, tb = pa.table({"v": ["a1", "a3"]}), pa.table({"v": ["b0", "b2"]})
    assert in_input_order([(a, ta), (b, tb)]).column("v").to_pylist() == ["b0", "a1", "b2", "a3"]
    assert in_input_order([(a, ta.slice(0, 1)), (b, tb)]).column("v").to_pylist() == ["a1", "b0", "b2"]


def test_a_tabular_job_reuses_parquet_parts_and_counts_records(stack, make_endpoint):
    endpoint = make_endpoint("def run(mini_batch):\n    return mini_batch[['id']]\n", name="pqreuse",
                             settings={"input_type": "tabular", "output_format": "parquet"})
    s3 = aws.client("s3")

    def put(name: str, ids: range) -> None:
        body = "id\n" + "".join(f"{i}\n" for i in ids)
        s3.put_object(Bucket=stack.cfg.input_bucket, Key=f"pqreuse/r/{name}", Body=body.encode())

    def run() -> jobs.JobRecord:
        return stack.run_until_done(start(stack, endpoint, "pqreuse/r/", {"input_type": "tabular"}).job_id)

    put("a.csv", range(100))
    put("b.csv", range(100, 150))
    first = run()
    same = run()
    assert same.reused_from == first.job_id
    assert (first.items_succeeded, same.items_succeeded, same.total_items) == (150, 150, 150)  # records, not pieces
    put("c.csv", range(150, 180))
    grown = run()
    assert (grown.batches_reused, grown.items_succeeded, grown.items_failed) == (2, 180, 0)  # records, not pieces
    back = pd.read_parquet(io.BytesIO(read_bytes(stack.cfg, grown)))
    assert list(back["id"]) == list(range(180)) and str(back["id"].dtype) == "int64"
