"""Chaos runs: jobs on a local stack whose workers SIGKILL themselves at random points.

Workers die before ``run()``, during it, after writing the part but before the commit, and after
the commit but before the message is deleted; the stack replaces them as Lambda would. DynamoDB
cancels one transaction in ``conflict_every`` with a TransactionConflict on top of the conflicts
between transactions at once, and every request waits as from Lambda on AWS (``latency``), so
that commits overlap as they would there. Each run checks the output row by row: every input
exactly once, in input order, and the job ended; and no attempt was spent but by a kill (a
conflict is retried inside the commit).
"""

from __future__ import annotations

import collections
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

from parallelrun.aws.config import StackConfig
from parallelrun.client.api import Client
from parallelrun.local.runtime import LocalStack
from parallelrun.store import jobs

POINTS = ("before_run", "during_run", "after_part", "after_commit")
SCRIPT = """
def run(mini_batch):
    return [open(path).read() for path in mini_batch]
"""
# Killed messages come back after the visibility timeout, which Lambda wants at least the
# function's timeout: both short, so a kill costs seconds (run() here is instant). Enough
# receives that no mini-batch is dead-lettered merely for being unlucky.
# Ranges of four mini-batches: each job is collated by several aggregator invocations and joined.
PARAMETERS = {"BatchVisibilityTimeout": "12", "MaxReceiveCount": "10", "WorkerTimeout": "12", "PlannerInterval": "1",
              "AggregateBatchesPerInvocation": "4"}
SETTINGS = {"mini_batch_size": "2", "run_max_try": "10", "run_invocation_timeout": "1"}


def check(expected: list[str], rows: list[str]) -> dict[str, int]:
    """Lost, duplicated and misplaced rows of one run (each input's row is its own name)."""
    counts = collections.Counter(rows)
    return {
        "lost": sum(1 for name in expected if counts[name] == 0),
        "duplicated": sum(count - 1 for count in counts.values() if count > 1),
        "out_of_order": int(rows != expected and counts == collections.Counter(expected)),
    }


def run(runs: int, files: int = 24, workers: int = 2, chance: float = 0.05, timeout: float = 300,
        conflict_every: int = 2, latency: str | None = "aws") -> dict[str, Any]:
    """``runs`` jobs under chaos; totals of lost, duplicated and out-of-order rows, kills,
    cancelled transactions and attempts spent (retries)."""
    faults = ",".join(f"{point}:{chance}" for point in POINTS)
    totals = {"runs": runs, "files_per_run": files, "jobs_succeeded": 0, "lost": 0, "duplicated": 0,
              "out_of_order": 0, "retries": 0, "latency_profile": latency}
    with tempfile.TemporaryDirectory() as tmp, LocalStack(
            workers=workers, write_state=False, parameters=PARAMETERS, stack_name="chaos", latency=latency,
            worker_env={"PARALLELRUN_FAULTS": faults}) as stack:
        client = Client(StackConfig.from_outputs(stack.outputs))
        stack.server.conflicts.every = conflict_every
        code = Path(tmp) / "code"
        code.mkdir()
        (code / "score.py").write_text(SCRIPT)
        (Path(tmp) / "model.pkl").write_bytes(pickle.dumps(None))
        client.register_model(Path(tmp) / "model.pkl", "chaos")
        client.create_endpoint("chaos", code, "score.py", "chaos", SETTINGS)
        started = time.time()
        for number in range(runs):
            names = [f"{number:04d}-{i:03d}.txt" for i in range(files)]
            inputs = Path(tmp) / f"run{number}"
            inputs.mkdir()
            for name in names:
                (inputs / name).write_text(name)
            client.upload_folder(inputs, f"s3://{client.cfg.input_bucket}/chaos/run{number}/")
            job = client.submit("chaos", f"s3://{client.cfg.input_bucket}/chaos/run{number}/")
            job = client.wait(job.job_id, poll_seconds=0.3, timeout=timeout)
            rows = b"".join(client.read_output(job.job_id)).decode().splitlines()
            totals["jobs_succeeded"] += job.state == jobs.SUCCEEDED
            totals["retries"] += job.retries
            for key, value in check(names, rows).items():
                totals[key] += value
        totals["worker_kills"] = stack.restarts
        totals["transactions_cancelled"] = stack.server.conflicts.cancelled
        totals["seconds"] = round(time.time() - started, 1)
    return totals
