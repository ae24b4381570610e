"""The scale section of scripts/bench.py: one synthetic job of many mini-batches through the
pipeline's own phases, on a local moto server whose every request waits as from Lambda on AWS
(``--latency aws``), each phase's invocations timed one by one.

The inputs need not exist and no script runs (DESIGN invariant 7 is about the pipeline's own
work): the listing is synthetic, a mini-batch's "worker" writes a one-row part and commits it as
the worker does, and the planner's ticks and the aggregator's invocations are the real ones,
called here in as many threads as Lambda would run them at once. What matters is each phase's
longest invocation, which must not grow with the job.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import urllib.request
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from parallelrun import aws
from parallelrun.aws import s3, sqs
from parallelrun.aws.config import StackConfig
from parallelrun.core.datasets import InputFile, split_s3_uri
from parallelrun.core.settings import RunSettings
from parallelrun.local import lambdas, provision, server
from parallelrun.pipeline import aggregator, lifecycle, planner
from parallelrun.store import batches, inputs, jobs, keys

# Lambda's SQS event source runs up to this many worker invocations at once for the bench's
# job (the template's WorkerMaxConcurrency is 100; the local server is the bottleneck anyway).
WORKER_THREADS = 32
AGGREGATOR_THREADS = 5  # the aggregator's reserved concurrency in template.yaml
POLLERS = 4  # receives of the batch queue at once (each hands up to 10 mini-batches on)


class Phase:
    """A phase's invocations: how many, their total and longest seconds, and its wall time."""

    def __init__(self) -> None:
        self.lock, self.count, self.longest, self.started, self.ended = threading.Lock(), 0, 0.0, 0.0, 0.0

    def timed(self, call: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        self.started = self.started or started
        try:
            return call(*args)
        finally:
            ended = time.perf_counter()
            with self.lock:
                self.count, self.longest, self.ended = self.count + 1, max(self.longest, ended - started), ended

    def report(self, seconds: float | None = None) -> dict[str, Any]:
        return {"seconds": round(seconds if seconds is not None else self.ended - self.started, 2),
                "invocations": self.count, "longest_invocation_seconds": round(self.longest, 3)}


def synthetic_listing(prefix: str, count: int) -> Callable[..., Iterator[InputFile]]:
    """A listing of ``count`` inputs that do not exist, in S3's order, resumable ``after`` a key
    as :func:`parallelrun.store.inputs.list_files` is."""
    def listed(spec: Any, *, after: str = "", **kwargs: Any) -> Iterator[InputFile]:
        first = int(after[len(prefix):len(prefix) + 9]) + 1 if after else 0
        return (InputFile(f"{prefix}{number:09d}.png", 1000, f"etag{number}") for number in range(first, count))

    return listed


def serve(port: int) -> None:
    """The moto server with AWS's latency, in a process of its own: on 2 cores, the server and
    the threads playing Lambda's invocations each get one."""
    server.start(port, "aws")
    threading.Event().wait()


def run(minibatches: int, inputs_per_minibatch: int, range_batches: int) -> dict[str, Any]:
    """The scale section: one job of ``minibatches`` through plan, send, commit and aggregate."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    moto = subprocess.Popen([sys.executable, __file__, str(port)])
    endpoint = f"http://127.0.0.1:{port}"
    _wait_for(endpoint)
    stack = provision.provision(endpoint, stack_name="bench-scale", parameters={
        "PlannerInterval": "0", "AggregateBatchesPerInvocation": str(range_batches)})
    environment = lambdas.lambda_environment(next(iter(stack.functions.values())).environment, endpoint, stack.region)
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    aws.reset_clients()
    try:
        return _run(StackConfig.from_env(), minibatches, inputs_per_minibatch)
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
        aws.reset_clients()
        moto.terminate()
        moto.wait()


def _wait_for(endpoint: str) -> None:
    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the moto server at {endpoint} did not start")


def _run(cfg: StackConfig, minibatches: int, per_minibatch: int) -> dict[str, Any]:
    job_id = f"scale-{int(time.time())}"
    # One part that every record names: the aggregator GETs it once per mini-batch all the same.
    s3.put(cfg.artifacts_bucket, keys.part_key(job_id, 0, 1), b"a row\n")
    jobs.create(cfg, jobs.JobRecord(
        job_id=job_id, endpoint="bench", deployment={"model_name": "bench", "model_version": 1},
        settings=RunSettings(mini_batch_size=str(per_minibatch), allow_reuse=False),
        input_uri=f"s3://{cfg.input_bucket}/scale/", output_uri=f"s3://{cfg.artifacts_bucket}/{job_id}/output/"))
    phases = {name: Phase() for name in ("plan", "send", "commit", "aggregate")}
    inputs.list_files = synthetic_listing("scale/", minibatches * per_minibatch)  # type: ignore[assignment]
    started = time.perf_counter()
    phases["plan"].timed(planner.start_job, cfg, job_id)
    stop = threading.Event()
    with ThreadPoolExecutor(WORKER_THREADS) as pool:
        def commit(body: str) -> None:
            phases["commit"].timed(_commit, cfg, sqs.MiniBatch.parse(body))

        # Lambda's event source polls with a few pollers, each handing a receive's messages to
        # invocations, as here.
        pollers = [threading.Thread(target=_poll, args=(cfg.batch_queue_url, stop, commit, pool))
                   for _ in range(POLLERS)]
        for poller in pollers:
            poller.start()

        def planned(body: str) -> None:
            planning = jobs.get(cfg, job_id).state == jobs.PLANNING
            phases["plan" if planning else "send"].timed(planner.handle_record, cfg, {"body": body})

        _poll(cfg.planner_queue_url, stop, planned, until=lambda: jobs.get(cfg, job_id).complete)
        stop.set()
        for poller in pollers:
            poller.join()
    committed = time.perf_counter()
    lifecycle.check_job(cfg, job_id)  # the last commit asked for the aggregation already; asking twice is harmless
    stop = threading.Event()
    with ThreadPoolExecutor(AGGREGATOR_THREADS) as pool:
        def aggregate(body: str) -> None:
            phases["aggregate"].timed(aggregator.handle_record, cfg, {"body": body})

        collators = [threading.Thread(target=_poll, args=(cfg.finalize_queue_url, stop, aggregate, pool))]
        collators[0].start()
        while jobs.get(cfg, job_id).state not in jobs.TERMINAL:
            time.sleep(0.5)
        stop.set()
        for collator in collators:
            collator.join()
    ended = time.perf_counter()
    job = jobs.get(cfg, job_id)
    assert job.state == jobs.SUCCEEDED and job.batches_succeeded == minibatches, (job.state, job.reason)
    return {"minibatches": minibatches, "inputs": minibatches * per_minibatch, "latency_profile": "aws",
            "aggregate_batches_per_invocation": job.range_batches, "seconds": round(ended - started, 1),
            "phases": {"plan": phases["plan"].report(), "send": phases["send"].report(),
                       "commit": phases["commit"].report(committed - started),
                       "aggregate": phases["aggregate"].report(ended - committed)},
            "rows": job_rows(cfg, job)}


def job_rows(cfg: StackConfig, job: jobs.JobRecord) -> int:
    """The output's rows, counted from the file itself."""
    bucket, prefix = split_s3_uri(job.output_uri)
    return s3.get(bucket, prefix + job.settings.output_file_name).count(b"\n")


def _commit(cfg: StackConfig, message: sqs.MiniBatch) -> None:
    """What a worker's invocation does for a mini-batch besides scoring it and writing its part:
    one read of its job (and whether it is recorded), its record and counter shard in one
    transaction, then what the commit says about the job (see :mod:`parallelrun.pipeline.worker`)."""
    found, _ = batches.lookup(cfg, [(message.job_id, message.batch)])
    job = found[message.job_id]
    record = batches.BatchRecord(index=message.batch, status=jobs.SUCCEEDED, items=len(message.items),
                                 items_succeeded=len(message.items), items_failed=0, attempt=1,
                                 part_key=keys.part_key(job.job_id, 0, 1), rows=1)
    commit = batches.commit_batch(cfg, job.job_id, record)
    if commit.recorded:
        lifecycle.batch_committed(cfg, job, record, commit.filled)
    else:
        lifecycle.batch_recorded(cfg, job, message.batch)


def _poll(queue_url: str, stop: threading.Event, handle: Callable[[str], None],
          pool: ThreadPoolExecutor | None = None, until: Callable[[], bool] | None = None) -> None:
    """Receive messages until ``stop`` is set (or ``until()`` holds), handle each (in ``pool``,
    at once, if given), then delete them."""
    client = aws.client("sqs")
    while not stop.is_set() and not (until and until()):
        # Short polls: moto's long poll holds the queue, slowing every send meanwhile.
        messages = client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                          VisibilityTimeout=600).get("Messages", [])
        if not messages:
            time.sleep(0.2)
            continue
        if pool is None:
            for message in messages:
                handle(message["Body"])
        else:
            for done in [pool.submit(handle, message["Body"]) for message in messages]:
                done.result()
        client.delete_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)])

if __name__ == "__main__":
    serve(int(sys.argv[1]))
