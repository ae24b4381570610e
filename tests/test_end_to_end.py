"""End to end on a moto server with worker processes: files and a ``_READY`` marker in the
input bucket → one collated file; poison inputs isolated; throttling absorbed; workers killed
at random points without a lost or doubled row."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import pytest

from parallelrun import aws
from parallelrun.aws.config import StackConfig
from parallelrun.client.api import Client
from parallelrun.client.demo import EXAMPLES, load_example
from parallelrun.client import chaos
from parallelrun.local.runtime import LocalStack
from parallelrun.store import jobs

SCRIPT = """
import os
import parallelrun

def init():
    # The side effect the test reads: one line per init() call, naming the process.
    with open(os.path.join(os.environ["INIT_LOG_DIR"], "init.log"), "a") as log:
        log.write(f"{os.getpid()}\\n")
    global offset
    offset = open(parallelrun.get_model_path("e2e"), "rb").read()

def run(mini_batch):
    return [f"{os.path.basename(p)}: {open(p).read()}:{os.getpid()}" for p in mini_batch]
"""


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("init")


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory, init_dir: Path):
    patch = pytest.MonkeyPatch()
    patch.setenv("PARALLELRUN_HOME", str(tmp_path_factory.mktemp("home")))
    # Two mini-batches an aggregator invocation: every job of more than two is collated in
    # ranges by concurrent aggregator processes, and joined, under the functions' own roles.
    # A stack of its own: moto's state is shared by every stack this test process starts.
    with LocalStack(workers=2, parameters={"AggregateBatchesPerInvocation": "2"}, stack_name="e2e",
                    worker_env={"INIT_LOG_DIR": str(init_dir),
                                "PARALLELRUN_CACHE": str(tmp_path_factory.mktemp("cache"))}) as stack:
        yield stack
    patch.undo()


@pytest.fixture(scope="module")
def client(local_stack: LocalStack) -> Client:
    return Client(StackConfig.from_outputs(local_stack.outputs))


def drop(client: Client, files: Path, folder: str) -> jobs.JobRecord:
    """Upload a folder into the drop bucket, then its marker; the job the marker started."""
    uri = f"s3://{client.cfg.input_bucket}/{folder}"
    client.upload_folder(files, uri)
    aws.client("s3").put_object(Bucket=client.cfg.input_bucket, Key=folder + "_READY", Body=b"")
    deadline = time.time() + 30
    while time.time() < deadline:
        job = client.find_job(uri)
        if job is not None:
            return job
        time.sleep(0.2)
    raise AssertionError(f"the _READY marker in {uri} started no job")


def test_drop_folder_to_collated_output(client: Client, init_dir: Path, tmp_path: Path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(SCRIPT)
    (tmp_path / "model.bin").write_bytes(pickle.dumps(1))
    client.register_model(tmp_path / "model.bin", "e2e")
    client.create_endpoint("e2e", code, "score.py", "e2e", {"mini_batch_size": "3"})
    files = tmp_path / "files"
    files.mkdir()
    names = [f"{i:03d}.txt" for i in range(60)]
    for name in names:
        (files / name).write_text(name.upper())

    job = client.wait(drop(client, files, "e2e/batch1/").job_id, poll_seconds=0.3, timeout=120)
    assert job.state == jobs.SUCCEEDED, job.reason
    record = jobs.get(client.cfg, job.job_id)
    assert (record.total_batches, record.range_batches) == (20, 2)  # collated in ten ranges, then joined
    rows = b"".join(client.read_output(job.job_id)).decode().splitlines()
    assert [row.split(": ")[0] for row in rows] == names  # one row per file, in input order
    assert all(row.split(": ")[1].startswith(name.upper()) for row, name in zip(rows, names))
    scoring_pids = {row.rsplit(":", 1)[1] for row in rows}
    init_pids = (init_dir / "init.log").read_text().split()
    # init() ran exactly once in each scoring process, and only there (20 mini-batches, 2 workers).
    assert sorted(init_pids) == sorted(scoring_pids)
    assert 1 <= len(init_pids) <= 2
    summary = json.loads(b"".join(client.read_output(job.job_id, "summary.json")))
    assert summary["counts"]["items"] == {"total": 60, "succeeded": 60, "failed": 0}


def test_poison_inputs_fail_alone(client: Client, tmp_path: Path):
    train = load_example("digits", "train")
    train.train_model(tmp_path / "model.pkl")
    client.register_model(tmp_path / "model.pkl", "digits")
    client.create_endpoint("digits", EXAMPLES / "digits", "score.py", "digits", {"run_max_try": "2"})
    images = tmp_path / "images"
    labels = train.write_images(images, 200)
    (images / "0042.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (images / "0137.png").write_bytes(b"")

    job = client.wait(drop(client, images, "digits/poison/").job_id, poll_seconds=0.3, timeout=180)
    assert job.state == jobs.SUCCEEDED, job.reason  # error_threshold -1: failed inputs are reported, not fatal
    rows = b"".join(client.read_output(job.job_id)).decode().splitlines()
    assert [row.split(": ")[0] for row in rows] == [n for n in sorted(labels) if n not in ("0042.png", "0137.png")]
    failures = [json.loads(line) for line in b"".join(client.read_output(job.job_id, "failures.jsonl")).splitlines()]
    assert sorted(f["input"].rsplit("/", 1)[1] for f in failures) == ["0042.png", "0137.png"]
    assert all(f["error_type"] == "UnidentifiedImageError" and "cannot identify image file" in f["message"]
               for f in failures)
    assert all(f["attempts"] == 2 and f["traceback"] for f in failures)

    strict = client.submit("digits", job.input_uri, {"error_threshold": "1", "run_max_try": "1"})
    strict = client.wait(strict.job_id, poll_seconds=0.3, timeout=180)
    assert strict.state == jobs.FAILED and strict.reason.startswith("error_threshold: 2 inputs failed")


def test_throttled_requests_are_retried_across_processes(local_stack: LocalStack, client: Client, tmp_path: Path):
    files = tmp_path / "files"
    files.mkdir()
    names = [f"{i:03d}.txt" for i in range(16)]
    for name in names:
        (files / name).write_text(name)
    client.upload_folder(files, f"s3://{client.cfg.input_bucket}/e2e/throttled/")
    local_stack.server.throttle_every = {"s3": 5, "dynamodb": 5, "sqs": 7}
    try:
        job = client.submit("e2e", f"s3://{client.cfg.input_bucket}/e2e/throttled/")
        job = client.wait(job.job_id, poll_seconds=0.3, timeout=180)
    finally:
        local_stack.server.throttle_every = {}
    assert min(local_stack.server.throttled[s] for s in ("s3", "dynamodb", "sqs")) > 3
    assert job.state == jobs.SUCCEEDED
    rows = b"".join(client.read_output(job.job_id)).decode().splitlines()
    assert [row.split(": ")[0] for row in rows] == names
    assert (job.items_failed, job.retries) == (0, 0)  # a throttle is never an input's failure


def test_workers_killed_at_random_points_lose_and_double_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PARALLELRUN_HOME", str(tmp_path))
    result = chaos.run(runs=1, files=32, chance=0.1)  # 64 chances to die: P(no kill) is about 0.1 %
    assert result["worker_kills"] > 0 and result["transactions_cancelled"] > 0
    assert (result["jobs_succeeded"], result["lost"], result["duplicated"], result["out_of_order"]) == (1, 0, 0, 0)
    assert result["latency_profile"] == "aws" and result["retries"] <= result["worker_kills"]  # no attempt on a conflict


def test_the_sdk_flow(client: Client, tmp_path: Path):
    from parallelrun import FileDataset, Model, ParallelRunConfig
    from parallelrun.core.errors import ConflictError

    train = load_example("digits", "train")
    train.train_model(tmp_path / "model.pkl")
    Model.register(client, str(tmp_path / "model.pkl"), "sdkdigits", tags={"source": "sdk"})
    labels = train.write_images(tmp_path / "images", 30)
    uri = f"s3://{client.cfg.input_bucket}/sdk/batch1/"
    client.upload_folder(tmp_path / "images", uri)

    config = ParallelRunConfig(entry_script="digits_batch.py", source_directory=str(EXAMPLES / "azure_style"),
                               mini_batch_size=8, error_threshold=5, output_action="append_row",
                               process_count_per_node=2, node_count=1, run_invocation_timeout=30, run_max_try=2,
                               logging_level="INFO")
    job = client.submit(config, inputs=FileDataset.from_files(uri), model="sdkdigits",
                        arguments=["--model_name", "sdkdigits"])
    assert job.wait_for_completion(show_output=False, timeout=180) == "SUCCEEDED"
    frame = job.get_output_dataframe()
    assert list(frame[0]) == sorted(labels) and frame.shape == (30, 2)
    assert (frame[1].astype(int) == frame[0].map(labels)).mean() >= 0.9
    folder = job.download(tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == ["failures.jsonl", "parallel_run_step.txt", "summary.json"]
    assert json.loads((folder / "summary.json").read_text())["settings"]["mini_batch_size"] == "8"

    again = job.resubmit(mini_batch_size=10)
    assert again.job_id != job.job_id
    assert again.wait_for_completion(show_output=False, timeout=180) == "SUCCEEDED"
    assert again.record.total_batches == 3 and again.record.settings.arguments == ("--model_name", "sdkdigits")
    with pytest.raises(ConflictError, match="already ended"):
        again.cancel()


def test_an_azure_tabular_script_through_the_sdk(client: Client, tmp_path: Path):
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from parallelrun import Model, ParallelRunConfig, TabularDataset

    iris = load_iris()
    (tmp_path / "iris.pkl").write_bytes(pickle.dumps(LogisticRegression(max_iter=1000).fit(iris.data, iris.target)))
    Model.register(client, str(tmp_path / "iris.pkl"), "iris")
    table = pd.DataFrame(iris.data, columns=["sepal_length", "sepal_width", "petal_length", "petal_width"])
    table.insert(0, "id", np.arange(150))
    aws.client("s3").put_object(Bucket=client.cfg.input_bucket, Key="tables/iris/part-0.csv",
                                Body=table.to_csv(index=False).encode())
    config = ParallelRunConfig(entry_script="iris_tabular.py", source_directory=str(EXAMPLES / "azure_style"),
                               mini_batch_size="1KB", error_threshold=0)
    job = client.submit(config, inputs=TabularDataset.from_delimited_files(
        f"s3://{client.cfg.input_bucket}/tables/iris/"), model="iris", arguments=["--model_name", "iris"])
    assert job.wait_for_completion(show_output=False, timeout=180) == "SUCCEEDED"
    frame = job.get_output_dataframe()
    assert list(frame[0].astype(int)) == list(range(150)) and job.record.total_batches >= 3
    assert (frame[1].astype(int) == iris.target).mean() > 0.9
    assert any('"scoring' in line for line in client.logs(job.job_id, minibatch=0))


def test_many_models_an_azure_style_script_with_a_model_per_store(client: Client, tmp_path: Path):
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LinearRegression

    from parallelrun import Model, ParallelRunConfig, TabularDataset

    rng = np.random.default_rng(7)
    slopes = {"north": (1.0, 5.0), "south": (2.0, -1.0), "east": (0.5, 9.0)}
    for store, (week, promo) in slopes.items():
        x = rng.uniform(0, 10, (40, 2))
        (tmp_path / f"{store}.pkl").write_bytes(pickle.dumps(LinearRegression().fit(x, x @ [week, promo])))
        Model.register(client, str(tmp_path / f"{store}.pkl"), f"sales-{store}")
    stores = ["north", "south", "east", "west"] * 30  # west has no model
    table = pd.DataFrame({"id": range(120), "store": stores, "week": rng.integers(1, 52, 120),
                          "promo": rng.integers(0, 2, 120)})
    aws.client("s3").put_object(Bucket=client.cfg.input_bucket, Key="tables/sales/sales.csv",
                                Body=table.to_csv(index=False).encode())
    config = ParallelRunConfig(entry_script="many_models.py", source_directory=str(EXAMPLES / "azure_style"),
                               mini_batch_size="1KB", partition_keys=["store"])
    job = client.submit(config, inputs=TabularDataset.from_delimited_files(
        f"s3://{client.cfg.input_bucket}/tables/sales/"), model="sales-{store}")
    assert job.wait_for_completion(show_output=False, timeout=180) == "SUCCEEDED"
    assert job.record.total_batches >= 2  # the file was split, and each piece held every store
    frame = job.get_output_dataframe()
    scored = table[table["store"] != "west"]
    assert list(frame[0].astype(int)) == list(scored["id"])  # input order, west's rows left out
    expected = [slopes[s][0] * w + slopes[s][1] * p for s, w, p in zip(scored["store"], scored["week"], scored["promo"])]
    assert np.allclose(frame[2].astype(float), expected, atol=0.01)
    body = b"".join(client.read_output(job.job_id, "failures.jsonl")).decode()
    failures = [json.loads(line) for line in body.splitlines()]
    assert {f["error_type"] for f in failures} == {"NoModelForPartition"}
    assert sum(1 for f in failures) == job.record.total_batches  # one line per piece, for west's rows
    assert (job.record.items_succeeded, job.record.items_failed) == (90, 30)
