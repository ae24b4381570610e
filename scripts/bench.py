#!/usr/bin/env python
"""Benchmark: the digits job through the local stack against the emulator's own limit and a
plain multiprocessing.Pool, then one job of 100,000 mini-batches through the pipeline's phases.

Per size (``sizes``), in the same run: the job's items/s on the local stack; a bare GET loop over
the same objects from as many processes as there are workers (the most the emulator can serve
that job's inputs: the best of three rounds); the same scoring script (examples/digits/score.py) in a
``multiprocessing.Pool`` over local files; the ratios; AWS requests per mini-batch by service
(counted at the moto server); the planner's and aggregator's seconds; the longest invocation of
each function; and the aggregator's peak memory while it collates (which must not grow with
the output). Then ``scale`` (scripts/bench_scale.py): a synthetic job under AWS's latency,
each phase's seconds and longest invocation, which must not grow with the job.

    .venv/bin/python scripts/bench.py                          # 2,000 and 20,000 files; 100,000 mini-batches
    .venv/bin/python scripts/bench.py --sizes 500 --scale 1000 # a quick look

Not a test: a tool. Locally the moto server on the same 2 cores is the bottleneck (DESIGN §6),
so the ratios say what the local stack costs, not what Lambda does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import bench_scale
from parallelrun import aws
from parallelrun.aws.config import StackConfig
from parallelrun.client.api import Client
from parallelrun.client.demo import EXAMPLES, load_example
from parallelrun.local.runtime import LocalStack
from parallelrun.pipeline import collation
from parallelrun.store import batches, jobs

_script = None


def _pool_init(model_path: str) -> None:
    """Pool initializer: the scoring script, its init() once per process, as the worker does."""
    global _script
    import importlib.util

    import parallelrun

    parallelrun.get_model_path = lambda name, version=None: model_path
    spec = importlib.util.spec_from_file_location("bench_score", EXAMPLES / "digits" / "score.py")
    _script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_script)
    _script.init()


def _pool_run(batch: list[str]) -> list[str]:
    return _script.run(batch)


def baseline(files: list[str], model_path: str, processes: int, batch_size: int) -> dict[str, float]:
    """The same script in a multiprocessing.Pool over local files: the floor of any overhead."""
    batches = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    started = time.perf_counter()
    with multiprocessing.Pool(processes, initializer=_pool_init, initargs=(model_path,)) as pool:
        rows = [row for batch in pool.map(_pool_run, batches) for row in batch]
    seconds = time.perf_counter() - started
    assert len(rows) == len(files)
    return {"seconds": round(seconds, 3), "items_per_second": round(len(files) / seconds, 1)}


def _get_all(keys: list[str]) -> int:
    client = aws.client("s3")
    bucket = os.environ["PARALLELRUN_INPUT_BUCKET"]
    for key in keys:
        client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return len(keys)


def get_loop(client: Client, folder: str, processes: int, rounds: int = 3, most: int = 10_000) -> float:
    """Items/s of a bare GET loop over the job's inputs, one share per process: what the local
    server can give the job's inputs alone. The best of ``rounds`` (the loop's own rate varies
    by half between rounds of one run), over at most ``most`` of the inputs spread evenly (a
    GET's cost does not depend on how many objects there are)."""
    bucket, prefix = folder[len("s3://"):].split("/", 1)
    keys = [obj["Key"] for page in aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", []) if not obj["Key"].endswith("_READY")]
    keys = keys[::max(1, len(keys) // most)]
    shares = [keys[number::processes] for number in range(processes)]
    best = 0.0
    with multiprocessing.Pool(processes) as pool:
        for _ in range(rounds):
            started = time.perf_counter()
            fetched = sum(pool.map(_get_all, shares))
            best = max(best, fetched / (time.perf_counter() - started))
    return best


def planner_seconds(log_dir: Path, job_id: str) -> float | None:
    for line in (log_dir / "control.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("job_id") == job_id and entry.get("message") == "planned":
            return entry["planner_seconds"]
    return None


def longest_invocations(client: Client, job_id: str) -> dict[str, float]:
    """Per function, the longest one invocation spent on this job, which must stay well inside
    Lambda's 15 minutes however large the job: the planner's longest message (its usage
    records), the worker's longest mini-batch (the batch records' usage), and the aggregator's
    time over its invocations (the summary's cost section; one invocation unless one died)."""
    planner = max((span.ms for span in jobs.iter_usage(client.cfg, job_id) if span.function == "planner"), default=0)
    worker = max(((record.usage or {}).get("ms", 0) for record in client.batches(job_id)), default=0)
    aggregator = json.loads(b"".join(client.read_output(job_id, "summary.json")))["cost"]["functions"]["aggregator"]
    return {"planner": round(planner / 1000.0, 3), "worker": round(worker / 1000.0, 3),
            "aggregator": aggregator["seconds"], "aggregator_invocations": aggregator["invocations"]}


def aggregator_peak(job_id: str) -> int:
    """Peak Python memory of collating the finished job again (into a scratch prefix), measured
    in a process of its own: this one also hosts the moto server, whose allocations would count."""
    out = subprocess.run([sys.executable, __file__, "--collate", job_id], check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


def _collate(job_id: str) -> None:
    cfg = StackConfig.from_outputs(json.loads(os.environ["BENCH_OUTPUTS"]))
    job = jobs.get(cfg, job_id)
    scratch = dataclasses.replace(job, output_uri=job.output_uri.rstrip("/") + "-bench/")
    list(batches.iter_batches(cfg, job_id))  # load the clients' service models before measuring
    aws.client("s3").list_objects_v2(Bucket=cfg.artifacts_bucket, MaxKeys=1)
    tracemalloc.start()
    collation.collate_range(cfg, scratch, 0, 0, scratch.total_batches, collation.job_files(scratch))
    print(tracemalloc.get_traced_memory()[1])


def run_size(stack: LocalStack, client: Client, workdir: Path, count: int, model_path: str,
             workers: int) -> dict[str, object]:
    train = load_example("digits", "train")
    images = workdir / f"images-{count}"
    train.write_images(images, count)
    run_id = f"bench-{count}-{int(time.time())}"
    folder = f"s3://{client.cfg.input_bucket}/digits/{run_id}/"
    started = time.perf_counter()
    client.upload_folder(images, folder)
    upload_seconds = time.perf_counter() - started

    before = stack.server.snapshot()
    aws.client("s3").put_object(Bucket=client.cfg.input_bucket, Key=f"digits/{run_id}/_READY", Body=b"")
    job = None
    while job is None:
        job = client.find_job(folder)
        time.sleep(0.5)
    # This process hosts the server under test: its own polls (each reads the job and its
    # counter shards) would take the server's time. The job's seconds are its own timestamps.
    job = client.wait(job.job_id, poll_seconds=2)
    after = stack.server.snapshot()
    assert job.state == jobs.SUCCEEDED, job.reason
    seconds = job.ended_at - job.created_at
    requests = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    files = sorted(str(p) for p in images.iterdir())
    floor = baseline(files, model_path, workers, job.settings.files_per_batch)
    limit = get_loop(client, folder, workers)
    ours = count / seconds
    longest = longest_invocations(client, job.job_id)
    return {
        "files": count,
        "inputs_per_minibatch": job.settings.files_per_batch,
        "minibatches": job.total_batches,
        "seconds": round(seconds, 3),
        "stack_items_per_second": round(ours, 1),
        "get_loop_items_per_second": round(limit, 1),
        "pool_items_per_second": floor["items_per_second"],
        "ratio_to_get_loop": round(ours / limit, 4),
        "ratio_to_pool": round(ours / floor["items_per_second"], 4),
        "requests_per_minibatch": {k: round(v / job.total_batches, 2) for k, v in sorted(requests.items())
                                   if k in ("s3", "dynamodb", "sqs")},
        "planner_seconds": planner_seconds(stack.log_dir, job.job_id),
        "aggregator_seconds": longest["aggregator"],
        "aggregator_peak_bytes": aggregator_peak(job.job_id),
        "longest_invocation_seconds": longest,
        "upload_seconds": round(upload_seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[2000, 20000], help="files of each digits job")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scale", type=int, nargs="*", default=[100_000], metavar="MINIBATCHES",
                        help="mini-batches of each synthetic scale job, smallest first (none: no scale section)")
    parser.add_argument("--range-batches", type=int, default=500,
                        help="the scale jobs' AggregateBatchesPerInvocation: the same bound whatever their size")
    parser.add_argument("--collate", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.collate:
        _collate(args.collate)
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp, LocalStack(workers=args.workers, write_state=False) as stack:
        workdir = Path(tmp)
        client = Client(StackConfig.from_outputs(stack.outputs))
        os.environ["BENCH_OUTPUTS"] = json.dumps(stack.outputs)
        train = load_example("digits", "train")
        train.train_model(workdir / "model.pkl")
        client.register_model(workdir / "model.pkl", "digits")
        client.create_endpoint("digits", EXAMPLES / "digits", "score.py", "digits")
        for count in args.sizes:
            results.append(run_size(stack, client, workdir, count, str(workdir / "model.pkl"), args.workers))
            print(json.dumps(results[-1]), file=sys.stderr)
    scaled = [bench_scale.run(count, 10, args.range_batches) for count in args.scale]
    for entry in scaled:
        print(json.dumps(entry), file=sys.stderr)
    print(json.dumps({"workers": args.workers, "cpus": os.cpu_count(), "sizes": results,
                      "scale": scaled[-1] if scaled else None, "scale_by_size": scaled}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
