"""A large job's aggregation in ranges: the join's parts planned (pure), joined server-side on
moto, and whole jobs collated a few mini-batches per invocation with the aggregator killed at
every step, the files still exact."""

from __future__ import annotations

import io
import json
import os
import random
from typing import Any

import pandas as pd
import pytest

from parallelrun import aws
from parallelrun.aws import s3, sqs
from parallelrun.core import joins
from parallelrun.core.datasets import split_s3_uri
from parallelrun.core.settings import RunSettings
from parallelrun.pipeline import aggregator, collation, lifecycle
from parallelrun.store import batches, collated, jobs, keys
from tests.conftest import put_files, read_output
from tests.test_pipeline import echo, start

MiB = 1024 * 1024


# --- the join's parts, planned

@pytest.mark.parametrize("sizes", [[], [0], [10], [3, 4, 5], [12, 1, 30, 2, 2, 9], [5, 5, 5], [40], [4, 40, 4]])
def test_a_join_covers_every_byte_in_order_with_parts_s3_takes(sizes):
    parts = joins.plan_join(sizes, min_part=5, max_part=16)
    pieces = [piece for part in parts for piece in part.pieces]
    joined = [(piece.source, offset) for piece in pieces for offset in range(piece.start, piece.end)]
    assert joined == [(source, offset) for source, size in enumerate(sizes) for offset in range(size)]
    assert all(5 <= part.size <= 16 for part in parts[:-1])  # only the last part may be small
    assert all(len(part.pieces) == 1 for part in parts if part.copied)
    read = sum(part.size for part in parts if not part.copied)
    assert read <= 5 * len(sizes)  # a least part read at most, per source: the rest is copied


def test_a_join_copies_what_it_can_and_refuses_more_parts_than_s3_allows():
    parts = joins.plan_join([3, 100], min_part=5, max_part=40)
    assert [(part.copied, part.size) for part in parts] == [(False, 5), (True, 40), (True, 40), (True, 18)]
    with pytest.raises(joins.ParallelRunError, match="more than S3's 3"):
        joins.plan_join([100], min_part=5, max_part=20, max_parts=3)


def test_objects_are_joined_server_side_into_one(stack, monkeypatch):
    bucket, s3_client = stack.cfg.artifacts_bucket, aws.client("s3")
    calls: list[str] = []
    monkeypatch.setattr(s3_client, "upload_part_copy", _counting(s3_client.upload_part_copy, calls, "copy"))
    bodies = [os.urandom(6 * MiB), b"small\n", os.urandom(12 * MiB), os.urandom(3 * MiB)]
    stored: list[s3.Source] = [b"header\n"]
    for number, body in enumerate(bodies):
        s3_client.put_object(Bucket=bucket, Key=f"join/{number}", Body=body)
        stored.append(s3.Stored(bucket, f"join/{number}", len(body)))
    s3.join(bucket, "join/out", stored, "job-join")
    out = s3_client.get_object(Bucket=bucket, Key="join/out")
    assert out["Body"].read() == b"header\n" + b"".join(bodies)
    assert out["Metadata"][s3.OWNER_METADATA] == "job-join" and out["ETag"].strip('"').endswith("-4")
    assert calls == ["copy"]  # the big object's bytes past the first least part: copied, not read
    s3.join(bucket, "join/small", [b"a", s3.Stored(bucket, "join/1", 6)], "job-join")  # one small part: a PUT
    assert s3_client.get_object(Bucket=bucket, Key="join/small")["Body"].read() == b"asmall\n"
    with pytest.raises(s3.OutputTaken):
        s3.join(bucket, "join/out", stored, "another-job")


# --- whole aggregations in ranges, killed on the way

def _recorded_job(stack, job_id: str, settings: RunSettings, parts: list[bytes | None],
                  header: str | None = None) -> jobs.JobRecord:
    """A RUNNING job whose mini-batches are all recorded, as workers would leave it: a part is a
    succeeded mini-batch's rows, None a failed one (with a failure line)."""
    cfg, client = stack.cfg, aws.client("s3")
    jobs.create(cfg, jobs.JobRecord(job_id=job_id, endpoint="e", deployment={}, settings=settings,
                                    input_uri="s3://b/p/", output_uri=f"s3://{cfg.artifacts_bucket}/{job_id}/out/",
                                    state=jobs.RUNNING, total_batches=len(parts)))
    batches.open_shards(cfg, job_id, len(parts))
    for index, body in enumerate(parts):
        if body is None:
            key = keys.failures_key(job_id, index, 1)
            line = {"input": f"in/{index}", "minibatch": index, "error_type": "ValueError", "message": "bad"}
            client.put_object(Bucket=cfg.artifacts_bucket, Key=key, Body=(json.dumps(line) + "\n").encode())
            record = batches.BatchRecord(index=index, status=jobs.FAILED, items=1, items_succeeded=0, items_failed=1,
                                         attempt=1, failures_key=key)
        else:
            key = keys.part_key(job_id, index, 1, settings.output_format)
            client.put_object(Bucket=cfg.artifacts_bucket, Key=key, Body=body)
            record = batches.BatchRecord(index=index, status=jobs.SUCCEEDED, items=1, items_succeeded=1,
                                         items_failed=0, attempt=1, part_key=key, rows=1, header=header)
        batches.commit_batch(cfg, job_id, record)
    return jobs.get(cfg, job_id)


def _aggregate(stack, job_id: str) -> jobs.JobRecord:
    lifecycle.job_complete(stack.cfg, job_id)
    return stack.run_until_done(job_id)


class Killer:
    """Makes chosen calls die once each, as a crash at that line would: the message comes back."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
        self.monkeypatch, self.random, self.killed = monkeypatch, random.Random(seed), []

    def dies_once(self, module: Any, name: str, where: str, when: Any = lambda *a, **k: True) -> None:
        original, state = getattr(module, name), {"dead": False}

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not state["dead"] and when(*args, **kwargs):
                state["dead"] = True
                self.killed.append(where)
                raise RuntimeError(f"aggregator killed {where}")
            return original(*args, **kwargs)

        self.monkeypatch.setattr(module, name, wrapper)

    def dies_after(self, module: Any, name: str, where: str, when: Any) -> None:
        """The call goes through, then the invocation dies before what follows it."""
        original, state = getattr(module, name), {"dead": False}

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if not state["dead"] and when(*args, **kwargs):
                state["dead"] = True
                self.killed.append(where)
                raise RuntimeError(f"aggregator killed {where}")
            return result

        self.monkeypatch.setattr(module, name, wrapper)


@pytest.fixture
def ranges_of_four(monkeypatch):
    """Four mini-batches an aggregator invocation; a lease that lapses at once, so that a
    successor takes over a dead holder's work as soon as its message comes back."""
    monkeypatch.setenv("PARALLELRUN_AGGREGATE_BATCHES_PER_INVOCATION", "4")
    monkeypatch.setattr(lifecycle, "LEASE_SECONDS", 0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ranges_killed_at_every_step_still_give_exact_files(stack, ranges_of_four, monkeypatch, seed):
    pick = random.Random(seed)
    parts: list[bytes | None] = [None if pick.random() < 0.2 else f"row {i}\n".encode() for i in range(23)]
    killer = Killer(monkeypatch, seed)
    dying = pick.sample(range(1, 6), 3)  # 6 ranges: three die, each at a different step
    killer.dies_once(aggregator.sqs, "send_in_tens", "sending the ranges",
                     lambda queue_url, bodies: queue_url == stack.cfg.finalize_queue_url)
    killer.dies_once(collation, "collate_range", "mid-range", lambda cfg, job, number, *a, **k: number == dying[0])
    killer.dies_once(collated, "record", "after writing a range, before recording it",
                     lambda cfg, job_id, aggregation, summary: summary.number == dying[1])
    killer.dies_after(collated, "record", "after recording a range",
                      lambda cfg, job_id, aggregation, summary: summary.number == dying[2])
    killer.dies_once(aggregator.s3, "join", "joining")
    job = _aggregate(stack, _recorded_job(stack, f"ranges-{seed}", RunSettings(), parts).job_id)
    assert len(killer.killed) == 5
    assert job.state == jobs.SUCCEEDED and job.range_batches == 4
    assert read_output(stack.cfg, job) == "".join(p.decode() for p in parts if p)  # every row once, in order
    failed = [json.loads(line) for line in read_output(stack.cfg, job, "failures.jsonl").splitlines()]
    assert [line["minibatch"] for line in failed] == [i for i, p in enumerate(parts) if p is None]
    summary = json.loads(read_output(stack.cfg, job, "summary.json"))
    assert summary["counts"]["rows"] == sum(p is not None for p in parts)
    assert summary["errors"] == {"ValueError": parts.count(None)}
    # Every aggregator invocation is in the job's cost: at least one per range, and the join's.
    assert summary["cost"]["functions"]["aggregator"]["invocations"] >= 6
    assert [s.number for s in collated.summaries(stack.cfg, job.job_id, job.aggregation)] == list(range(6))
    leftover = aws.client("s3").list_objects_v2(Bucket=stack.cfg.artifacts_bucket,
                                                Prefix=keys.job_prefix(job.job_id) + "collated/")
    assert leftover["KeyCount"] == 0  # the ranges' objects are deleted once joined


def test_a_joiner_dead_past_the_final_state_leaves_its_cleanup_to_the_next_delivery(stack, ranges_of_four, monkeypatch):
    parts = [f"row {i}\n".encode() if i % 4 else None for i in range(9)]
    killer = Killer(monkeypatch, 0)
    killer.dies_once(aggregator.s3, "delete_keys", "after the final state, before deleting the ranges' objects")
    job = _aggregate(stack, _recorded_job(stack, "ranges-cleanup", RunSettings(), parts).job_id)
    assert killer.killed and job.state == jobs.SUCCEEDED
    stack.deliver("AggregatorFunction")  # the joiner's range message comes back: the job has ended
    scratch = keys.job_prefix(job.job_id) + "collated/"
    assert aws.client("s3").list_objects_v2(Bucket=stack.cfg.artifacts_bucket, Prefix=scratch)["KeyCount"] == 0
    # A duplicate aggregation request of the ended job cleans up just as well.
    aws.client("s3").put_object(Bucket=stack.cfg.artifacts_bucket, Body=b"x", Key=keys.range_object_key(
        job.job_id, str(job.aggregation), 1, collated.RANGE_OUTPUT))
    lifecycle.job_complete(stack.cfg, job.job_id)
    stack.deliver("AggregatorFunction")
    assert aws.client("s3").list_objects_v2(Bucket=stack.cfg.artifacts_bucket, Prefix=scratch)["KeyCount"] == 0
    assert read_output(stack.cfg, job) == "".join(p.decode() for p in parts if p)


def test_a_csv_output_in_ranges_has_its_header_once(stack, ranges_of_four):
    parts = [f"{i},{i * i}\n".encode() for i in range(10)]
    job = _aggregate(stack, _recorded_job(stack, "ranges-csv", RunSettings(output_format="csv"), parts,
                                          header="n,square").job_id)
    frame = pd.read_csv(io.StringIO(read_output(stack.cfg, job)))
    assert list(frame.columns) == ["n", "square"] and list(frame["square"]) == [i * i for i in range(10)]


def test_a_big_output_in_ranges_is_copied_not_read(stack, ranges_of_four, monkeypatch):
    parts = [os.urandom(2 * MiB) for _ in range(12)]  # three ranges of 8 MiB: each copied whole
    job = _recorded_job(stack, "ranges-big", RunSettings(), parts)
    calls: list[str] = []
    client = aws.client("s3")
    monkeypatch.setattr(client, "upload_part_copy", _counting(client.upload_part_copy, calls, "copy"))
    monkeypatch.setattr(client, "upload_part", _counting(client.upload_part, calls, "upload"))
    job = _aggregate(stack, job.job_id)
    bucket, key = split_s3_uri(job.output_uri + job.settings.output_file_name)
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"".join(parts)
    assert calls.count("copy") == 3 and "upload" not in calls[-3:]  # the join read none of the output


def _counting(call: Any, calls: list[str], name: str) -> Any:
    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return call(*args, **kwargs)

    return counted


def _parquet(frame: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    frame.to_parquet(sink, index=False)
    return sink.getvalue()


def test_a_parquet_output_in_ranges_is_one_file_and_a_range_of_other_columns_is_left_out(stack, ranges_of_four):
    frames = [pd.DataFrame({"id": [i], "score": [i / 10]}) for i in range(12)]
    parts: list[bytes | None] = [_parquet(frame) for frame in frames]
    job = _aggregate(stack, _recorded_job(stack, "ranges-pq", RunSettings(output_format="parquet"), parts).job_id)
    bucket, key = split_s3_uri(job.output_uri + "parallel_run_step.parquet")
    back = pd.read_parquet(io.BytesIO(aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()))
    assert job.state == jobs.SUCCEEDED and list(back["id"]) == list(range(12))
    other = parts[:4] + [_parquet(pd.DataFrame({"name": [f"n{i}"]})) for i in range(4, 8)] + parts[8:]
    job = _aggregate(stack, _recorded_job(stack, "ranges-pq2", RunSettings(output_format="parquet"), other).job_id)
    back = pd.read_parquet(io.BytesIO(aws.client("s3").get_object(
        Bucket=bucket, Key=key.replace("ranges-pq", "ranges-pq2"))["Body"].read()))
    assert list(back["id"]) == [0, 1, 2, 3, 8, 9, 10, 11]
    assert job.state == jobs.FAILED and "mini-batches 4-7" in job.reason
    [line] = [json.loads(line) for line in read_output(stack.cfg, job, "failures.jsonl").splitlines()]
    assert line["error_type"] == collation.UNWRITTEN


def test_a_scored_job_in_ranges_is_exact_and_reused_whole_on_resubmit(stack, make_endpoint, ranges_of_four):
    endpoint = make_endpoint(echo("ranged"), name="ranged")
    inputs = [f"{i:02d}.txt" for i in range(18)]
    put_files(stack.cfg, "ranged/r/", inputs)
    job = stack.run_until_done(start(stack, endpoint, "ranged/r/", {"mini_batch_size": "1"}).job_id)
    assert job.state == jobs.SUCCEEDED and read_output(stack.cfg, job).splitlines() == inputs
    assert len(collated.summaries(stack.cfg, job.job_id, job.aggregation)) == 5
    again = stack.run_until_done(start(stack, endpoint, "ranged/r/", {"mini_batch_size": "1"}).job_id)
    assert again.reused_from == job.job_id  # every range remembered its mini-batches: the job is reused whole
    elsewhere = stack.run_until_done(start(stack, endpoint, "ranged/r/", {
        "mini_batch_size": "1", "output_path": f"s3://{stack.cfg.artifacts_bucket}/ranged-elsewhere/"}).job_id)
    assert elsewhere.batches_reused == 18 and read_output(stack.cfg, elsewhere).splitlines() == inputs


def test_a_late_range_message_of_an_ended_job_changes_nothing(stack, ranges_of_four):
    parts = [f"{i}\n".encode() for i in range(9)]
    job = _aggregate(stack, _recorded_job(stack, "ranges-late", RunSettings(), parts).job_id)
    output = read_output(stack.cfg, job)
    sqs.send(stack.cfg.finalize_queue_url, sqs.CollateRange(job.job_id, str(job.aggregation), 1))
    stack.deliver("AggregatorFunction")
    assert read_output(stack.cfg, job) == output and jobs.get(stack.cfg, job.job_id).state == jobs.SUCCEEDED


@pytest.mark.parametrize("range_batches", ["1000", "70"])
def test_every_shard_of_a_range_is_read(stack, monkeypatch, range_batches):
    monkeypatch.setenv("PARALLELRUN_AGGREGATE_BATCHES_PER_INVOCATION", range_batches)
    parts = [f"{i}\n".encode() for i in range(keys.SHARD_GROUP * 23 + 3)]  # 30 shards
    job = _aggregate(stack, _recorded_job(stack, f"ranges-shards-{range_batches}", RunSettings(), parts).job_id)
    assert read_output(stack.cfg, job) == "".join(p.decode() for p in parts)
