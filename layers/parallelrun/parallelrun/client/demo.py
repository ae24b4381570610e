"""``parallelrun demo``: the digits job end to end on a local stack, as a user would run it.

Trains a classifier on scikit-learn's bundled digits, registers it, writes the digits as PNG
files, creates the ``digits`` endpoint from ``examples/digits/``, drops the files and a
``_READY`` marker into the input bucket, waits with a progress bar and checks the accuracy.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from parallelrun.aws.config import StackConfig
from parallelrun.client.api import Client
from parallelrun.client.progress import progress_bar
from parallelrun.core.errors import ParallelRunError
from parallelrun.local.runtime import LocalStack
from parallelrun.store import jobs

EXAMPLES = Path(__file__).resolve().parents[4] / "examples"


def load_example(name: str, module: str) -> ModuleType:
    """A module of ``examples/<name>/``: the demo uses the same files a user reads."""
    path = EXAMPLES / name / f"{module}.py"
    if not path.is_file():
        raise ParallelRunError(f"{path} not found: run the demo from a checkout of the repository")
    spec = importlib.util.spec_from_file_location(f"example_{name}_{module}", path)
    assert spec and spec.loader
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def prepare(client: Client, workdir: Path, count: int | None) -> dict[str, int]:
    """Train and register the model, create the endpoint, write the images; return their labels."""
    train = load_example("digits", "train")
    accuracy = train.train_model(workdir / "model.pkl")
    model = client.register_model(workdir / "model.pkl", "digits", {"dataset": "sklearn-digits"},
                                  f"LogisticRegression on load_digits, training accuracy {accuracy:.3f}")
    print(f"registered model digits:{model.version} (training accuracy {accuracy:.3f})")
    client.create_endpoint("digits", EXAMPLES / "digits", "score.py", "digits")
    print("created endpoint digits (examples/digits/score.py)")
    return train.write_images(workdir / "images", count)


def drop(client: Client, images: Path, run_id: str) -> str:
    """Upload the images to the endpoint's drop folder, then the marker that starts the job."""
    folder = f"s3://{client.cfg.input_bucket}/digits/{run_id}/"
    started = time.time()
    uploaded = client.upload_folder(images, folder)
    print(f"uploaded {uploaded} files to {folder} in {time.time() - started:.1f} s")
    client.mark_ready(folder)
    return folder


def run(workers: int = 2, count: int | None = None) -> int:
    print(f"starting a local stack (moto server, template.yaml, {workers} worker processes)...")
    with LocalStack(workers=workers, write_state=False) as stack, tempfile.TemporaryDirectory() as tmp:
        client = Client(StackConfig.from_outputs(stack.outputs))
        labels = prepare(client, Path(tmp), count)
        folder = drop(client, Path(tmp) / "images", time.strftime("run-%Y%m%d-%H%M%S"))
        job = None
        deadline = time.time() + 60
        while job is None and time.time() < deadline:
            job = client.find_job(folder)
            time.sleep(0.5)
        if job is None:
            raise ParallelRunError(f"no job started for {folder} within 60 s")
        print(f"job {job.job_id} started by the _READY marker")
        job = client.wait(job.job_id, on_progress=progress_bar(), poll_seconds=0.5)
        print(f"logs of the local functions: {stack.log_dir}")
        return report(client, job, labels)


def report(client: Client, job: jobs.JobRecord, labels: dict[str, int]) -> int:
    """Print where the output is, its first lines, its row count and the accuracy."""
    print("\n".join(["", f"job {job.job_id}: {job.state}" + (f" ({job.reason})" if job.reason else ""),
                     f"output: {client.output_uri(job)}"]))
    if job.state != jobs.SUCCEEDED:
        return 1
    text = b"".join(client.read_output(job.job_id)).decode()
    rows = text.splitlines()
    print("first lines:\n  " + "\n  ".join(rows[:5]))
    correct = 0
    for row in rows:
        name, _, digit = row.partition(": ")
        correct += labels.get(name) == int(digit)
    accuracy = correct / len(labels) if labels else 0.0
    print(f"rows: {len(rows)} (inputs: {len(labels)})")
    print(f"accuracy against the known labels: {accuracy:.3f}")
    print(f"duration: {job.ended_at - job.created_at:.1f} s, {len(rows) / (job.ended_at - job.created_at):.0f} inputs/s")
    return 0 if len(rows) == len(labels) and accuracy >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(run())
