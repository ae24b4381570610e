"""Azure ML entry scripts run unchanged: the azureml shims, inside the scoring process only."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from parallelrun import aws
from parallelrun.client.api import Client
from parallelrun.client.demo import EXAMPLES, load_example
from parallelrun.core.datasets import split_s3_uri
from parallelrun.scoring import azure
from parallelrun.store import endpoints, jobs, registry
from tests.conftest import read_output
from tests.test_pipeline import start


def test_shims_give_azure_names_only_where_azure_is_absent(monkeypatch):
    for name in [n for n in sys.modules if n.startswith(("azureml", "azureml_user", "entry_script"))]:
        monkeypatch.delitem(sys.modules, name)
    assert azure.install() == ["azureml.core", "azureml_user.parallel_run", "entry_script"]
    from azureml.core import Model, Run
    from azureml.core.model import Model as ModelToo
    from azureml_user.parallel_run import EntryScript

    assert Model is ModelToo and callable(Model.get_model_path)
    Run.get_context().log("accuracy", 0.9)  # an offline run: logs, does nothing else
    monkeypatch.setenv(azure.OUTPUT_DIR_VAR, "/tmp/out")
    assert EntryScript().output_dir == "/tmp/out" and EntryScript().logger.name == "azureml_user.entry_script"
    # A real package wins: the shim stays out.
    monkeypatch.setattr(azure, "_importable", lambda name: True)
    for name in [n for n in sys.modules if n.startswith(("azureml", "azureml_user", "entry_script"))]:
        monkeypatch.delitem(sys.modules, name)
    assert azure.install() == []
    with pytest.raises(ImportError):
        importlib.import_module("azureml.core")


def test_an_azure_entry_script_runs_unchanged(stack, tmp_path: Path):
    stack.purge()
    load_example("digits", "train").train_model(tmp_path / "model.pkl")
    registry.register(stack.cfg, tmp_path / "model.pkl", "digits-az")
    endpoints.create(stack.cfg, "azure", EXAMPLES / "azure_style", "digits_batch.py", "digits-az",
                     {"arguments": "--model_name digits-az", "mini_batch_size": "4"})
    images = tmp_path / "images"
    labels = load_example("digits", "train").write_images(images, 10)
    s3 = aws.client("s3")
    for name in labels:
        s3.upload_file(str(images / name), stack.cfg.input_bucket, f"azure/r/{name}")
    job = stack.run_until_done(start(stack, "azure", "azure/r/").job_id)
    assert job.state == jobs.SUCCEEDED, job.reason
    rows = read_output(stack.cfg, job).splitlines()
    assert [row.split(" ")[0] for row in rows] == sorted(labels)  # DataFrame rows, space-separated
    assert sum(int(row.split(" ")[1]) == labels[row.split(" ")[0]] for row in rows) >= 9
    bucket, prefix = split_s3_uri(job.output_uri)
    listed = {o["Key"][len(prefix):] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    assert {"minibatch-0000.csv", "minibatch-0001.csv", "minibatch-0002.csv"} <= listed  # EntryScript().output_dir
    lines = list(Client(stack.cfg).logs(job.job_id))
    assert any('"scoring mini-batch 1: 4 files"' in line for line in lines)


SIDE = """
import argparse

def init():
    global prefix
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels")
    args, _ = parser.parse_known_args()
    prefix = open(args.labels).read().strip()

def run(mini_batch, mini_batch_context):
    vocab = open(mini_batch_context.side_inputs["vocab"] + "/words.txt").read().strip()
    return [f"{prefix}/{vocab}/" + open(p).read() for p in mini_batch]
"""


def test_side_inputs_are_fetched_once_and_named_in_arguments(stack, make_endpoint):
    s3 = aws.client("s3")
    s3.put_object(Bucket=stack.cfg.input_bucket, Key="side/labels.txt", Body=b"LABELS")
    s3.put_object(Bucket=stack.cfg.input_bucket, Key="side/vocab/words.txt", Body=b"WORDS")
    endpoint = make_endpoint(SIDE, name="side")
    for name in ("a.txt", "b.txt"):
        s3.put_object(Bucket=stack.cfg.input_bucket, Key=f"side/r/{name}", Body=name.encode())
    job = stack.run_until_done(start(stack, endpoint, "side/r/", {
        "side_inputs": f"labels=s3://{stack.cfg.input_bucket}/side/labels.txt,s3://{stack.cfg.input_bucket}/side/vocab/",
        "arguments": "--labels {side_input:labels}"}).job_id)
    assert job.state == jobs.SUCCEEDED, job.reason
    assert read_output(stack.cfg, job).splitlines() == ["LABELS/WORDS/a.txt", "LABELS/WORDS/b.txt"]
