"""No hot item, conflicts retried (DESIGN invariants 1 and 8): commits under injected
TransactionConflict spend no attempt and never run a mini-batch again; what the workers of one
job write is spread over shards; every reader still gets every record, in index order."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from parallelrun import aws
from parallelrun.aws import dynamo
from parallelrun.client.api import Client
from parallelrun.core.settings import RunSettings
from parallelrun.local import conflicts
from parallelrun.pipeline import lifecycle
from parallelrun.store import batches, endpoints, jobs, keys
from tests.conftest import put_files, read_output
from tests.test_failures import script
from tests.test_pipeline import start

def counting(model: str, calls: Path, fail_bad: bool = False) -> str:
    """The echo script whose run() first writes one line per call to ``calls`` (its own side
    effect says how often it ran), and raises on an input starting "bad" if ``fail_bad``."""
    return script(model, f"""
with open({str(calls)!r}, "a") as calls:
    calls.write(" ".join(sorted(path.rsplit("/", 1)[-1] for path in mini_batch)) + "\\n")
if {fail_bad!r} and any(open(path).read().startswith("bad") for path in mini_batch):
    raise ValueError("cannot score a bad input yet")
""")


@pytest.fixture
def few_shards(monkeypatch: pytest.MonkeyPatch) -> int:
    """Three shards taken in turn: a job of a few mini-batches puts several records under each key."""
    monkeypatch.setattr(keys, "SHARDS", 3)
    monkeypatch.setattr(keys, "SHARD_GROUP", 1)
    monkeypatch.setattr(dynamo, "TRANSACT_BACKOFF", 0.001)  # keep the retries' back-off short
    return 3


def _calls(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _planned_job(stack: Any, job_id: str, total: int, settings: RunSettings | None = None) -> jobs.JobRecord:
    """A RUNNING job of ``total`` mini-batches, as the planner leaves it before sending them."""
    job = jobs.JobRecord(job_id=job_id, endpoint="e", deployment={}, settings=settings or RunSettings(),
                   input_uri="s3://b/p/",
                   output_uri=f"s3://{stack.cfg.artifacts_bucket}/jobs/{job_id}/output/", state=jobs.RUNNING,
                   total_batches=total)
    jobs.create(stack.cfg, job)
    batches.open_shards(stack.cfg, job_id, total)
    return job


def _record(index: int, items_failed: int = 0) -> batches.BatchRecord:
    return batches.BatchRecord(index=index, status=jobs.SUCCEEDED, items=2, items_succeeded=2 - items_failed,
                            items_failed=items_failed, attempt=1)


def _add_a_retry(stack: Any, job_id: str) -> dict[str, Any]:
    """A transaction's action on shard 0's counters, in DynamoDB JSON."""
    return {"Update": {"TableName": stack.cfg.table,
                       "Key": {name: {"S": value} for name, value in keys.counts_key(job_id, 0).items()},
                       "UpdateExpression": "ADD retries :one", "ExpressionAttributeValues": {":one": {"N": "1"}}}}


@pytest.fixture
def calls_of(stack: Any) -> Iterator[Callable[[str], list[dict[str, Any]]]]:
    """``calls_of(operation)``: the parameters of every ``operation`` the table's client makes
    from then on, to the end of the test."""
    events = aws.table(stack.cfg.table).meta.client.meta.events
    registered = []

    def calls(operation: str) -> list[dict[str, Any]]:
        made: list[dict[str, Any]] = []
        handler = lambda params, **_: made.append(params)  # noqa: E731
        events.register(f"provide-client-params.dynamodb.{operation}", handler)
        registered.append((f"provide-client-params.dynamodb.{operation}", handler))
        return made

    yield calls
    for event, handler in registered:
        events.unregister(event, handler)


def test_commits_under_conflicts_on_every_other_transaction_spend_no_attempt(stack, make_endpoint, tmp_path,
                                                                              few_shards):
    calls = tmp_path / "calls.txt"
    endpoint = make_endpoint(counting("conflicted", calls), name="conflicted")
    inputs = [f"{i:02d}.txt" for i in range(14)]
    put_files(stack.cfg, "conflicted/r/", inputs)
    with conflicts.injected(conflicts.Conflicts(every=2)) as injected:
        job = stack.run_until_done(start(stack, endpoint, "conflicted/r/", {"mini_batch_size": "2"}).job_id)

    assert job.state == jobs.SUCCEEDED, job.reason
    # 10 transactions: the 7 commits, and again the 3 that fill their shard (0, 3, 6 | 1, 4 | 2, 5), whose
    # first is cancelled by its batches_left condition. Every other transaction: each but the first
    # is cancelled once by a conflict, then served.
    assert (len(injected.seen), injected.cancelled) == (19, 9)
    assert (job.batches_succeeded, job.items_succeeded, job.batches_failed, job.items_failed) == (7, 14, 0, 0)
    assert job.retries == 0 and {r.attempt for r in batches.iter_batches(stack.cfg, job.job_id)} == {1}
    assert sorted(_calls(calls)) == [f"{i:02d}.txt {i + 1:02d}.txt" for i in range(0, 14, 2)]  # each run once
    assert read_output(stack.cfg, job).splitlines() == inputs  # exact, in mini-batch order
    summary = json.loads(read_output(stack.cfg, job, "summary.json"))
    assert summary["counts"]["items"] == {"total": 14, "succeeded": 14, "failed": 0}
    assert summary["counts"]["retries"] == 0


def test_no_two_concurrent_commits_touch_one_item(stack):
    """As many commits as there are shards, as one job's workers would make them at once."""
    job = _planned_job(stack, "spread", keys.SHARDS * keys.SHARD_GROUP)
    with conflicts.injected(conflicts.Conflicts()) as seen:
        firsts = {keys.shard_of(index): index for index in reversed(range(keys.SHARDS * keys.SHARD_GROUP))}
        for index in sorted(firsts.values()):  # each shard's first mini-batch
            assert batches.commit_batch(stack.cfg, job.job_id, _record(index)).recorded
    assert len(seen.seen) == keys.SHARDS
    touched = [key for transaction in seen.seen for key in transaction]
    assert len(set(touched)) == len(touched) == 2 * keys.SHARDS  # no item in two of them
    records = {dict(record[1])["pk"] for record, _ in seen.seen}
    assert len(records) == keys.SHARDS  # the records are spread over a partition key per shard
    assert keys.job_key(job.job_id) not in [dict(key[1]) for key in touched]  # the job's own item is never written
    assert jobs.get(stack.cfg, job.job_id).items_succeeded == 2 * keys.SHARDS  # the shards summed


def test_a_conflict_is_retried_inside_the_commit_and_a_condition_is_not(stack, monkeypatch):
    monkeypatch.setattr(dynamo, "TRANSACT_BACKOFF", 0.001)
    job = _planned_job(stack, "retried", 100)  # no commit below fills its shard: one transaction each
    with conflicts.injected(conflicts.Conflicts(every=2)) as injected:
        assert batches.commit_batch(stack.cfg, job.job_id, _record(0)).recorded  # served at once
        assert batches.commit_batch(stack.cfg, job.job_id, _record(1)).recorded  # cancelled, then served
        assert len(injected.seen) == 3 and injected.cancelled == 1
    with conflicts.injected(conflicts.Conflicts()) as injected:
        assert not batches.commit_batch(stack.cfg, job.job_id, _record(1)).recorded  # another delivery recorded it first
        assert len(injected.seen) == 1  # a failed condition is never tried again
    assert jobs.get(stack.cfg, job.job_id).batches_succeeded == 2

    with conflicts.injected(conflicts.Conflicts(every=1)) as injected, pytest.raises(ClientError) as raised:
        batches.commit_batch(stack.cfg, job.job_id, _record(2))  # a table that never stops conflicting
    assert len(injected.seen) == dynamo.TRANSACT_TRIES
    assert dynamo.is_transaction_conflict(raised.value) and not dynamo.is_conditional_failure(raised.value)
    assert batches.get_batch(stack.cfg, job.job_id, 2) is None


def test_the_injected_conflict_is_aws_error_to_the_letter(stack):
    job = _planned_job(stack, "letter", 1)
    with conflicts.injected(conflicts.Conflicts(every=1)), pytest.raises(ClientError) as raised:
        aws.client("dynamodb").transact_write_items(TransactItems=[
            {"Put": {"TableName": stack.cfg.table, "Item": {"pk": {"S": "X"}, "sk": {"S": "Y"}}}},
            _add_a_retry(stack, job.job_id),
        ])
    response = raised.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert response["Error"]["Code"] == "TransactionCanceledException"
    assert response["Error"]["Message"] == ("Transaction cancelled, please refer cancellation reasons for specific "
                                            "reasons [None, TransactionConflict]")
    assert response["CancellationReasons"] == [
        {"Code": "None"}, {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}]
    assert batches.shard_counts(stack.cfg, job.job_id, 0)["retries"] == 0  # cancelled whole: nothing written


def test_transactions_overlapping_on_an_item_conflict_until_it_is_released(stack):
    job = _planned_job(stack, "overlap", 8)
    counter = (stack.cfg.table, tuple(sorted(keys.counts_key(job.job_id, 0).items())))
    other = (stack.cfg.table, tuple(sorted(keys.batch_key(job.job_id, 7).items())))
    injector = conflicts.Conflicts(hold_seconds=0.1)
    assert injector.conflicting([other, counter], now=0.0) == set()  # served: holds both items for 0.1 s
    assert injector.conflicting([counter], now=0.01) == {0}  # in flight on the same item
    assert injector.conflicting([(stack.cfg.table, (("pk", "x"), ("sk", "y")))], now=0.02) == set()  # another item
    assert injector.conflicting([counter], now=0.5) == set()  # released
    assert injector.cancelled == 1

    with conflicts.injected(conflicts.Conflicts(hold_seconds=60)) as held:  # through moto, as AWS answers it
        assert batches.commit_batch(stack.cfg, job.job_id, _record(0)).recorded
        with pytest.raises(ClientError) as raised:
            aws.client("dynamodb").transact_write_items(TransactItems=[_add_a_retry(stack, job.job_id)])
    assert dynamo.is_transaction_conflict(raised.value) and held.cancelled == 1


def _commit(stack: Any, job: jobs.JobRecord, index: int, items_failed: int = 0) -> batches.Commit:
    """Commit mini-batch ``index`` and check the job as the worker does after its commit."""
    record = _record(index, items_failed)
    commit = batches.commit_batch(stack.cfg, job.job_id, record)
    lifecycle.batch_committed(stack.cfg, job, record, commit.filled)
    return commit


def test_a_commit_that_leaves_its_shard_incomplete_reads_nothing(stack, calls_of, few_shards):
    job = _planned_job(stack, "no-read", 6)  # shards 0, 1, 2 hold mini-batches (0, 3), (1, 4), (2, 5)
    gets, queries = calls_of("GetItem"), calls_of("Query")
    with conflicts.injected(conflicts.Conflicts()) as transactions:  # conflicting none: it sees them all
        assert not _commit(stack, job, 0).filled
        assert not _commit(stack, job, 1, items_failed=1).filled  # a failure, but no threshold to cross
        assert (len(gets), len(queries), len(transactions.seen)) == (0, 0, 2)  # nothing read, one transaction each
        assert [_commit(stack, job, index).filled for index in (2, 3, 4, 5)] == [False, True, True, True]
        assert len(gets) == 0 and len(queries) == 3  # each shard's last mini-batch read the job
        assert len(transactions.seen) == 2 + 4 + 3  # ... after a second transaction, its first cancelled by batches_left
    assert jobs.get(stack.cfg, job.job_id).complete
    assert not batches.commit_batch(stack.cfg, job.job_id, _record(5)).recorded  # a duplicate counts nothing
    assert jobs.get(stack.cfg, job.job_id).batches_succeeded == 6


def test_a_delivery_that_finds_its_mini_batch_recorded_reads_the_shard(stack, calls_of, few_shards, monkeypatch):
    """The delivery that recorded it may have died before its check: the duplicate checks instead."""
    job = _planned_job(stack, "found", 2, RunSettings())
    asked: list[str] = []
    monkeypatch.setattr(lifecycle, "job_complete", lambda cfg, job_id: asked.append(job_id))
    gets, queries = calls_of("GetItem"), calls_of("Query")
    batches.commit_batch(stack.cfg, job.job_id, _record(0))  # filled shard 0, then died before its check
    lifecycle.batch_recorded(stack.cfg, job, 0)
    assert (len(gets), len(queries), asked) == (1, 1, [])  # shard 0 is full: the job read, not complete
    batches.commit_batch(stack.cfg, job.job_id, _record(1))  # the job's last, and died before its check
    lifecycle.batch_recorded(stack.cfg, job, 1)
    assert asked == [job.job_id]  # the redelivery asks for the aggregation


def test_a_shard_opened_before_batches_left_still_completes(stack, few_shards):
    """A shard item without batches_left (opened by an earlier version) takes every commit for a
    filling one: one more transaction and a look at the job, never a job left running."""
    job = _planned_job(stack, "older", 1)
    dynamo.update(stack.cfg.table, keys.counts_key(job.job_id, 0), "REMOVE batches_left")
    assert _commit(stack, job, 0).filled
    assert jobs.get(stack.cfg, job.job_id).state == jobs.RUNNING and jobs.get(stack.cfg, job.job_id).complete


def test_a_failure_in_a_job_with_a_threshold_checks_the_job(stack, calls_of, few_shards):
    job = _planned_job(stack, "threshold", 9, RunSettings(error_threshold=1))
    queries = calls_of("Query")
    _commit(stack, job, 0, items_failed=1)
    assert len(queries) == 1 and jobs.get(stack.cfg, job.job_id).state == jobs.RUNNING  # 1 failed: allowed
    _commit(stack, job, 1)
    assert len(queries) == 2  # a commit with no failure, in a shard still incomplete, reads nothing
    _commit(stack, job, 2, items_failed=1)
    assert jobs.get(stack.cfg, job.job_id).state == jobs.FINALIZING  # 2 failed, over the threshold: stopped


def test_batches_come_back_in_index_order_one_page_per_shard(stack, calls_of, monkeypatch, few_shards):
    monkeypatch.setattr(batches, "SHARD_PAGE", 2)
    job = _planned_job(stack, "merged", 20)
    for index in reversed(range(20)):
        batches.commit_batch(stack.cfg, job.job_id, _record(index))
    queries = calls_of("Query")
    records = batches.iter_batches(stack.cfg, job.job_id)
    assert next(records).index == 0
    assert len(queries) == few_shards  # lazily: one page of each shard, never the whole job
    assert [0] + [r.index for r in records] == list(range(20))
    assert len(queries) >= 4 + 4 + 3  # 7, 7 and 6 records in pages of 2
    assert {q["Limit"] for q in queries} == {2}


def test_redrive_is_exact_under_conflicts(stack, make_endpoint, tmp_path, few_shards):
    calls = tmp_path / "calls.txt"
    endpoint = make_endpoint(counting("redrive-conflicts", calls, fail_bad=True), name="redrive-conflicts")
    inputs = ["a.txt", "b.txt", "bad1.txt", "c.txt", "d.txt", "e.txt", "bad2.txt", "f.txt"]
    put_files(stack.cfg, "redrive-conflicts/r/", inputs)
    settings = {"mini_batch_size": "2", "run_max_try": "1", "isolate_failures": "false"}
    with conflicts.injected(conflicts.Conflicts(every=2)):
        job = stack.run_until_done(start(stack, endpoint, "redrive-conflicts/r/", settings).job_id)
        assert (job.state, job.batches_failed, job.items_failed, job.items_succeeded) == (jobs.SUCCEEDED, 1, 2, 6)

        fixed = tmp_path / "fixed"
        fixed.mkdir()
        (fixed / "score.py").write_text(counting("redrive-conflicts", calls))
        endpoints.update(stack.cfg, endpoint, fixed)
        assert Client(stack.cfg).redrive(job.job_id) == [1]  # [a b] [bad1 bad2] [c d] [e f]
        job = stack.run_until_done(job.job_id)
    assert job.state == jobs.SUCCEEDED
    assert (job.batches_succeeded, job.batches_failed, job.items_succeeded, job.items_failed) == (4, 0, 8, 0)
    assert job.retries == 0
    assert read_output(stack.cfg, job).splitlines() == sorted(inputs)
    assert sorted(_calls(calls)) == sorted(["a.txt b.txt", "bad1.txt bad2.txt", "c.txt d.txt", "e.txt f.txt",
                                            "bad1.txt bad2.txt"])  # only the failed one ran again


def test_the_local_server_answers_a_conflict_over_the_wire_as_aws_does():
    """What server.py installs: the same patch reaches requests the server serves to other
    processes, and botocore parses its answer as it parses AWS's."""
    import boto3

    from parallelrun.local import server

    moto_server, endpoint = server.start()
    undo = conflicts.install(conflicts.Conflicts(every=2))
    try:
        ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
        ddb.create_table(TableName="wire", BillingMode="PAY_PER_REQUEST",
                         KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
        put = [{"Put": {"TableName": "wire", "Item": {"pk": {"S": "a"}}}}]
        ddb.transact_write_items(TransactItems=put)
        with pytest.raises(ddb.exceptions.TransactionCanceledException) as raised:
            ddb.transact_write_items(TransactItems=put)
    finally:
        undo()
        moto_server.stop()
    assert raised.value.response["CancellationReasons"] == [
        {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}]
    assert dynamo.is_transaction_conflict(raised.value)
