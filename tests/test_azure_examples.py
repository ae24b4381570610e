"""The Azure ML v2 examples as a migrating user runs them: Azure's own endpoint and deployment
YAML read unchanged, the v2 batch driver scoring a folder model (examples/azure_v2), and the
MLflow deployment with no scoring script (examples/mlflow_nocode), each end to end on the local
stack, its output checked row by row."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pandas as pd

from parallelrun import aws
from parallelrun.client.api import Client
from parallelrun.client.demo import EXAMPLES, load_example
from parallelrun.store import jobs, registry
from tests.conftest import read_output
from tests.test_pipeline import start


def test_the_v2_deployment_scores_the_folder_model_with_its_batch_driver(stack, tmp_path: Path):
    stack.purge()
    example = EXAMPLES / "azure_v2"
    folder = load_example("azure_v2", "make_model").make_model_folder(tmp_path)
    registry.register(stack.cfg, folder, "digits-folder")  # azureml:digits-folder@latest in the YAML
    client, notes = Client(stack.cfg), []
    assert client.create_endpoint_from_file(example / "endpoint.yml")["name"] == "digits-batch"
    deployment = client.create_deployment_from_file(example / "deployment.yml", on_note=notes.append)
    assert (deployment.name, deployment.entry_script, deployment.model_ref) == ("digits-dpl", "batch_driver.py",
                                                                               "digits-folder:1")
    assert client.endpoint("digits-batch")["default_deployment"] == "digits-dpl"  # its first deployment
    assert any("compute" in note for note in notes)
    labels = load_example("digits", "train").write_images(tmp_path / "images", 25)
    for name in labels:
        aws.client("s3").upload_file(str(tmp_path / "images" / name), stack.cfg.input_bucket, f"digits-batch/in/{name}")
    job = stack.run_until_done(start(stack, "digits-batch", "digits-batch/in/").job_id)
    assert job.state == jobs.SUCCEEDED, job.reason
    assert job.settings.output_file_name == "predictions.csv" and job.settings.concurrency == 2
    rows = [row.split(" ") for row in read_output(stack.cfg, job).splitlines()]
    assert [file for file, _ in rows] == sorted(labels)  # one row per image, the DataFrame's values
    assert sum(int(digit) == labels[file] for file, digit in rows) >= 23


def test_the_mlflow_deployment_scores_each_file_as_a_table_with_no_script(stack, tmp_path: Path):
    stack.purge()
    example = EXAMPLES / "mlflow_nocode"
    for name in ("endpoint.yml", "deployment.yml"):
        shutil.copy(example / name, tmp_path / name)
    model = load_example("mlflow_nocode", "make_model").save_model(tmp_path / "model")  # model: {path: model}
    client, notes = Client(stack.cfg), []
    client.create_endpoint_from_file(tmp_path / "endpoint.yml")
    deployment = client.create_deployment_from_file(tmp_path / "deployment.yml", on_note=notes.append)
    assert (deployment.code_sha, deployment.entry_script) == (None, None)
    assert registry.get(stack.cfg, "iris-mlflow").version == int(deployment.model_ref.split(":")[1])
    assert any("mini_batch_size 2 is not used" in note for note in notes)  # Azure counts files there
    files = sorted((example / "data").glob("*.csv"))
    for path in files:
        aws.client("s3").put_object(Bucket=stack.cfg.input_bucket, Key=f"iris-batch/in/{path.name}",
                                    Body=path.read_bytes())
    job = stack.run_until_done(start(stack, "iris-batch", "iris-batch/in/").job_id)
    assert job.state == jobs.SUCCEEDED, job.reason
    out = pd.read_csv(io.StringIO(read_output(stack.cfg, job)))  # predictions.csv, its header once
    tables = [pd.read_csv(path) for path in files]
    expected = pd.concat([table.assign(prediction=model.predict(table), file_name=path.name)
                          for path, table in zip(files, tables)], ignore_index=True)
    pd.testing.assert_frame_equal(out, expected, check_dtype=False)
