"""What a job used and cost: summary.json's cost section agrees with the counted invocations,
durations and requests, is priced from the one price table, and the workers' EMF metric lines
are valid Embedded Metric Format."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest

from parallelrun import aws
from parallelrun.core import logs, metrics, pricing, usage
from parallelrun.store import batches, jobs
from tests.conftest import put_files, read_output
from tests.test_failures import script
from tests.test_pipeline import start

FLAKY = """
if mini_batch_context.attempt == 1:
    raise RuntimeError('flaky first attempt')
"""


@pytest.fixture(scope="module")
def flaky_job(stack, tmp_path_factory) -> dict[str, Any]:
    """Ten inputs in four mini-batches, each failing its first attempt: eight worker invocations.
    The metric lines logged meanwhile are kept as they are written."""
    import pickle

    from parallelrun.store import endpoints, registry

    stack.purge()
    folder = tmp_path_factory.mktemp("cost")
    (folder / "score.py").write_text(script("costly", FLAKY))
    (folder / "model.pkl").write_bytes(pickle.dumps({"offset": 1}))
    registry.register(stack.cfg, folder / "model.pkl", "costly")
    endpoints.create(stack.cfg, "costly", folder, "score.py", "costly")
    put_files(stack.cfg, "costly/r/", [f"{i:02d}.txt" for i in range(10)])
    lines: list[str] = []
    formatter = logs.JsonFormatter()

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(formatter.format(record))

    keep = Keep()
    logging.getLogger("parallelrun.core.metrics").addHandler(keep)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PARALLELRUN_LOG_LEVEL", "WARNING")  # metric lines are kept whatever the log level
            job = stack.run_until_done(start(stack, "costly", "costly/r/", {"mini_batch_size": "3"}).job_id)
    finally:
        logging.getLogger("parallelrun.core.metrics").removeHandler(keep)
    summary = json.loads(read_output(stack.cfg, job, "summary.json"))
    return {"job": job, "summary": summary, "metric_lines": lines,
            "records": list(batches.iter_batches(stack.cfg, job.job_id)),
            "usage_items": list(jobs.iter_usage(stack.cfg, job.job_id))}


def test_cost_section_counts_every_invocation(stack, flaky_job):
    job, cost = flaky_job["job"], flaky_job["summary"]["cost"]
    assert job.state == jobs.SUCCEEDED and job.total_batches == 4 and job.retries == 4
    functions = cost["functions"]
    # Every attempt is an invocation: the four that failed were paid for too.
    assert functions["worker"]["invocations"] == job.total_batches + job.retries == 8
    assert functions["planner"]["invocations"] >= 1
    assert functions["aggregator"]["invocations"] == 1
    assert functions["failure_recorder"]["invocations"] == 0
    # The records carry the recorded attempts; the usage items the retried ones.
    worker_ms = sum(r.usage["ms"] for r in flaky_job["records"]) + sum(
        u.ms for u in flaky_job["usage_items"] if u.function == usage.WORKER)
    assert functions["worker"]["seconds"] == pytest.approx(worker_ms / 1000, abs=0.002)
    assert [r.usage["invocations"] for r in flaky_job["records"]] == [1, 1, 1, 1]
    assert all(r.started_at and r.started_at <= r.finished_at for r in flaky_job["records"])


def test_gb_seconds_are_durations_times_the_templates_memory(stack, flaky_job):
    functions = flaky_job["summary"]["cost"]["functions"]
    for name, logical_id in (("worker", "WorkerFunction"), ("planner", "PlannerFunction"),
                             ("aggregator", "AggregatorFunction")):
        memory = stack.spec.functions[logical_id].memory
        assert functions[name]["memory_mb"] == memory
        assert functions[name]["seconds"] > 0
        assert functions[name]["gb_seconds"] == pytest.approx(functions[name]["seconds"] * memory / 1024, rel=1e-3)
    assert functions["worker"]["memory_mb"] == 1769  # template.yaml's WorkerMemory default


def test_requests_are_counted_and_plausible(flaky_job):
    job, requests = flaky_job["job"], flaky_job["summary"]["cost"]["requests"]
    # Each attempt fetches its three or four inputs and stores its log; each success its part.
    assert requests["s3_get"] >= 2 * 10
    assert requests["s3_put"] >= 8 + 4 + 1  # attempt logs, parts, summary
    # Each mini-batch is sent once and delivered twice; its commit is a two-item transaction.
    assert requests["sqs"] >= 4 + 8
    assert requests["dynamodb_write_units"] >= 4 * 4
    assert requests["dynamodb_read_units"] >= 8
    assert requests["dynamodb"] >= 8 * 2
    # and none is wildly off: a few dozen requests per attempt at most
    assert sum(requests.values()) < 100 * (job.total_batches + job.retries)


def test_usd_is_priced_from_the_table(flaky_job):
    cost = flaky_job["summary"]["cost"]
    assert cost["estimate"] is True and "estimate" in cost["note"]
    assert cost["prices_as_of"] == pricing.PRICES_AS_OF and pricing.PRICES_AS_OF in cost["note"]
    assert cost["region"] == aws.region() == "us-east-1"
    prices, functions, requests, usd = pricing.TABLE["us-east-1"], cost["functions"], cost["requests"], cost["usd"]
    gb_seconds = sum(f["gb_seconds"] for f in functions.values())
    assert usd["lambda_compute"] == pytest.approx(gb_seconds * prices.lambda_gb_second, rel=1e-4)
    assert usd["lambda_requests"] == pytest.approx(
        sum(f["invocations"] for f in functions.values()) * prices.lambda_request, rel=1e-4)
    assert usd["sqs"] == pytest.approx(requests["sqs"] * prices.sqs_request, rel=1e-4)
    assert usd["s3"] == pytest.approx(requests["s3_put"] * prices.s3_put_request
                                      + requests["s3_get"] * prices.s3_get_request, rel=1e-4)
    assert usd["dynamodb"] == pytest.approx(requests["dynamodb_write_units"] * prices.dynamodb_write_unit
                                            + requests["dynamodb_read_units"] * prices.dynamodb_read_unit, rel=1e-4)
    assert usd["total"] == pytest.approx(sum(v for k, v in usd.items() if k != "total"), rel=1e-6)
    assert usd["total"] > 0


def test_a_region_without_prices_is_priced_as_the_default_and_says_so():
    tally = usage.Tally()
    tally.add(usage.Usage(usage.WORKER, invocations=2, ms=3000, memory_mb=2048, requests={"sqs": 4}))
    cost = pricing.cost_section(tally.to_dict(), "ap-nowhere-1")
    assert cost["priced_as_region"] == pricing.DEFAULT_REGION and "no prices for ap-nowhere-1" in cost["note"]
    assert cost["functions"]["worker"] == {"invocations": 2, "seconds": 3.0, "memory_mb": 2048, "gb_seconds": 6.0}
    assert cost["usd"]["sqs"] == pytest.approx(4 * 0.40 / 1e6)
    eu = pricing.cost_section(tally.to_dict(), "eu-central-1")
    assert eu["priced_as_region"] == "eu-central-1" and "no prices" not in eu["note"]


def test_the_hook_counts_real_requests_into_the_invocation_in_force(stack):
    class Context:
        memory_limit_in_mb = 512

    with usage.invocation(usage.WORKER, Context(), {"Records": [{"eventSource": "aws:sqs"}]}) as meter:
        aws.client("s3").put_object(Bucket=stack.cfg.artifacts_bucket, Key="metered/a", Body=b"a")
        aws.client("s3").get_object(Bucket=stack.cfg.artifacts_bucket, Key="metered/a")
        aws.client("s3").delete_object(Bucket=stack.cfg.artifacts_bucket, Key="metered/a")
        # a pool thread counts only through bind (the worker's concurrent fetch)
        unbound = threading.Thread(target=aws.client("sqs").list_queues)
        unbound.start()
        unbound.join()
        bound = threading.Thread(target=usage.bind(aws.client("sqs").list_queues))
        bound.start()
        bound.join()
        batches.get_batch(stack.cfg, "no-such-job", 0)
        first = usage.take(including=[batches.COMMIT_CALL])
        record = batches.BatchRecord(index=0, status=jobs.SUCCEEDED, items=1, items_succeeded=1, items_failed=0,
                                  attempt=1)
        assert not batches.commit_batch(stack.cfg, "no-such-job", record).recorded  # the call ``including`` stood for
        aws.client("dynamodb").describe_limits()
        second = meter.take()
    assert first is not None and first.invocations == 1 and first.memory_mb == 512
    assert first.requests == {"s3_put": 1, "s3_get": 1, "s3_free": 1, "sqs": 1 + usage.EVENT_SOURCE_SQS_REQUESTS,
                              "dynamodb": 2, "dynamodb_read_units": 1, "dynamodb_write_units": 4}
    # The included call, when made, is not counted a second time.
    assert second.invocations == 0 and second.requests == {"dynamodb": 1}
    assert usage.take() is None  # outside an invocation nothing is metered


def test_metric_lines_are_valid_embedded_metric_format(flaky_job):
    job = flaky_job["job"]
    parsed = [json.loads(line) for line in flaky_job["metric_lines"]]
    done = [p for p in parsed if "ItemsScored" in p]
    retried = [p for p in parsed if "AttemptsRetried" in p]
    assert len(done) == 4 and len(retried) == 4
    for line in parsed:
        envelope = line["_aws"]
        assert isinstance(envelope["Timestamp"], int) and envelope["Timestamp"] > 1_600_000_000_000
        [directive] = envelope["CloudWatchMetrics"]
        assert directive["Namespace"] == metrics.NAMESPACE
        for dimension_set in directive["Dimensions"]:
            assert all(isinstance(line[name], str) for name in dimension_set)  # every dimension a top-level key
        for metric in directive["Metrics"]:
            assert isinstance(line[metric["Name"]], (int, float))  # every metric a top-level number
            assert metric["Unit"] in ("Count", "Milliseconds")
        assert line["Endpoint"] == "costly"
        assert line["job_id"] == job.job_id and isinstance(line["minibatch"], int)  # the log convention
        assert line["QueueWait"] >= 0
    assert sorted(p["minibatch"] for p in done) == [0, 1, 2, 3]
    assert sum(p["ItemsScored"] for p in done) == 10 and sum(p["ItemsFailed"] for p in done) == 0
    assert all(p["MiniBatchDuration"] >= 0 for p in done)
