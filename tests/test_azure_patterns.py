"""Azure's published entry-script patterns, in scripts written by us in their style, each run
unchanged end to end on the local stack: the v2 layout of AZUREML_MODEL_DIR and the v1 one, the
workspace's models looked up by tags (many-models), outputs a script writes itself
(AZUREML_BI_OUTPUT_PATH, an output argument, the working directory), mini_batch_context.dataset,
a generator, a parallel training script registering one model per partition (its mini-batch
delivered twice), and a real azureml-core stepping in for the shims. Then the calls that need
Azure itself, which import and raise at the call."""

from __future__ import annotations

import io
import pickle
import sys
from pathlib import Path

import pandas as pd
import pytest

from parallelrun import aws
from parallelrun.core.datasets import split_s3_uri
from parallelrun.core.errors import AzureOnlyError, ParallelRunError
from parallelrun.pipeline import worker
from parallelrun.client.api import Client
from parallelrun.scoring import azure, child
from parallelrun.store import endpoints, jobs, registry
from tests.conftest import put_files, read_output
from tests.test_pipeline import start

V2 = '''
import argparse, glob, os, pickle
from azureml.core import Dataset, Datastore, Experiment, Model, Run, Workspace
from azureml.core.dataset import Dataset as DatasetToo
from azureml.core.model import Model as ModelToo
from entry_script import EntryScript

def init():
    global model, args, label, v1
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--out")
    args, _ = parser.parse_known_args()
    root = os.environ["AZUREML_MODEL_DIR"]
    joined = os.path.join(root, "model")
    found = os.path.normpath(glob.glob(root + "/*/")[0])
    [pickled] = glob.glob(f"{root}/*/*.pkl")
    assert found == joined == args.model == Model.get_model_path("v2-model"), (found, joined, args.model)
    assert sorted(os.listdir(root)) == ["model"], os.listdir(root)
    with open(pickled, "rb") as handle:
        model = pickle.load(handle)
    label = open("labels.txt").read().strip()  # a file of the code, by a path relative to the working directory
    with open("state.txt", "w") as handle:  # the working directory is writable
        handle.write("from-init")
    # v1: a single-file model is its file, found by name through the workspace too.
    v1 = Model.get_model_path("v1-model")
    workspace = Run.get_context().experiment.workspace
    copy = Model(workspace, name="v1-model", version=1).download(target_dir="downloaded", exist_ok=True)
    assert os.path.basename(v1) == os.path.basename(copy) == "v1.pkl" and open(copy, "rb").read() == open(v1, "rb").read()
    try:  # the worker's answer when the registry has no such model: the error, raised here
        Model(workspace, "no-such-model")
        raise AssertionError("found a model never registered")
    except Exception as error:
        assert type(error).__name__ == "NotFoundError" and "no model 'no-such-model'" in str(error), error
    EntryScript().logger.info("init done")

def run(mini_batch, mini_batch_context):
    print(f"dataset = {mini_batch_context.dataset}")
    index = mini_batch_context.minibatch_index
    with open(os.path.join(os.environ["AZUREML_BI_OUTPUT_PATH"], f"bi-{index}.txt"), "w") as handle:
        handle.write(",".join(os.path.basename(p) for p in mini_batch))
    with open(os.path.join(args.out, f"arg-{index}.txt"), "w") as handle:
        handle.write(str(len(mini_batch)))
    for path in mini_batch_context.dataset.to_path():
        yield f"{os.path.basename(path)} {label} {int(open(path).read()) + model['offset']} {open('state.txt').read()}"
'''


def _pickle(path: Path, value: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(value))
    return path


def _code(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    code = tmp_path / f"code-{name}"
    for rel, text in files.items():
        (code / rel).parent.mkdir(parents=True, exist_ok=True)
        (code / rel).write_text(text)
    return code


def _written(job: jobs.JobRecord) -> dict[str, bytes]:
    """The job's output folder: each file's name below it → its bytes."""
    bucket, prefix = split_s3_uri(job.output_uri)
    s3 = aws.client("s3")
    return {o["Key"][len(prefix):]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}


def test_a_v2_script_with_its_own_outputs_a_generator_and_the_v1_layout(stack, tmp_path):
    stack.purge()
    model = tmp_path / "model"
    _pickle(model / "model.pkl", {"offset": 10})
    registry.register(stack.cfg, model, "v2-model")
    registry.register(stack.cfg, _pickle(tmp_path / "v1.pkl", {"offset": 100}), "v1-model")
    code = _code(tmp_path, "v2", {"score.py": V2, "labels.txt": "LBL\n"})
    endpoints.create(stack.cfg, "azv2", code, "score.py", "v2-model", {
        "arguments": "--model ${{inputs.score_model}} --out ${{outputs.score}}", "mini_batch_size": "2"})
    put_files(stack.cfg, "azv2/r/", ["a.txt", "b.txt", "c.txt"], lambda name: str(" abc".index(name[0])).encode())
    job = stack.run_until_done(start(stack, "azv2", "azv2/r/").job_id)
    assert job.state == jobs.SUCCEEDED, job.reason
    assert read_output(stack.cfg, job).splitlines() == [
        "a.txt LBL 11 from-init", "b.txt LBL 12 from-init", "c.txt LBL 13 from-init"]
    written = _written(job)  # AZUREML_BI_OUTPUT_PATH's files and the output argument's, in the job's output
    assert [written[name] for name in ("bi-0.txt", "bi-1.txt", "arg-0.txt", "arg-1.txt")] == [b"a.txt,b.txt", b"c.txt",
                                                                                              b"2", b"1"]
    lines = "\n".join(Client(stack.cfg).logs(job.job_id))
    assert "dataset = FileDataset(partition={}, 2 files)" in lines and "dataset = FileDataset(partition={}, 1 files)" in lines


TRAIN = '''
import os, pickle
import pandas as pd
from azureml.core import Run
from azureml.core.model import Model

def init():
    global current_run
    current_run = Run.get_context()

def run(input_data, mini_batch_context):
    store = mini_batch_context.partition_key_value["mmstore"]
    data = mini_batch_context.dataset.to_pandas_dataframe()
    assert data.equals(input_data)
    training = current_run.child_run(name=f"train-{store}")
    mean = float(data["qty"].mean())
    training.log("mean", mean)
    os.makedirs("outputs", exist_ok=True)
    with open(f"outputs/{store}.pkl", "wb") as handle:
        pickle.dump({"mean": mean}, handle)
    current_run.upload_file(f"outputs/{store}.pkl", f"outputs/{store}.pkl")
    model = current_run.register_model(model_name=f"mm-sales-{store}", model_path=f"outputs/{store}.pkl",
                                       tags={"mmstore": store, "mmkind": "forecast", "run_id": current_run.id,
                                             "parent_run_id": current_run.parent.id})
    training.complete()
    return data.assign(model=model.name, mean=mean, run=training.id)
'''

SCORE = '''
import os, pickle
from azureml.core import Model, Run

def init():
    global workspace, scale, versions
    workspace = Run.get_context().experiment.workspace
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "helper.pkl"), "rb") as handle:  # v1: the file itself
        scale = pickle.load(handle)["scale"]
    versions = f"{len(Model.list(workspace, tags=['mmkind']))}/{len(Model.list(workspace, tags=['mmkind'], latest=True))}"

def run(mini_batch, mini_batch_context):
    store = mini_batch_context.partition_key_value["mmstore"]
    [found] = Model.list(workspace, tags=[["mmstore", store], ["mmkind", "forecast"]], latest=True)
    model = Model(workspace, found.name, found.version)
    path = model.download(target_dir=f"models/{store}", exist_ok=True)
    with open(path, "rb") as handle:
        mean = pickle.load(handle)["mean"]
    return mini_batch.assign(forecast=mean * scale, model=f"{model.name}:{model.version}:{model.tags['mmstore']}",
                             versions=versions)
'''


def test_training_registers_one_model_per_partition_once_and_scoring_finds_them_by_tags(stack, tmp_path, monkeypatch):
    stack.purge()
    s3 = aws.client("s3")
    tables = {"A": pd.DataFrame({"mmstore": ["A"] * 3, "qty": [1, 2, 6]}),
              "B": pd.DataFrame({"mmstore": ["B"] * 2, "qty": [10, 20]})}
    for store, table in tables.items():
        s3.put_object(Bucket=stack.cfg.input_bucket, Key=f"mmtrain/t/{store}.csv", Body=table.to_csv(index=False).encode())
    registry.register(stack.cfg, _pickle(tmp_path / "helper.pkl", {"scale": 2}), "mm-helper")
    tabular = {"input_type": "tabular", "partition_keys": "mmstore", "output_format": "csv"}
    endpoints.create(stack.cfg, "mmtrain", _code(tmp_path, "train", {"train.py": TRAIN}), "train.py", "mm-helper", tabular)
    # The first delivery of mini-batch 0 dies after registering, before its commit: SQS delivers it again.
    original, died = worker.batches.commit_batch, []

    def dies_once(cfg, job_id, batch):
        if batch.index == 0 and not died:
            died.append(batch.attempt)
            raise RuntimeError("the worker died before its commit")
        return original(cfg, job_id, batch)

    monkeypatch.setattr(worker.batches, "commit_batch", dies_once)
    job = stack.run_until_done(start(stack, "mmtrain", "mmtrain/t/").job_id)
    assert job.state == jobs.SUCCEEDED, job.reason
    assert died == [1]
    out = pd.read_csv(io.StringIO(read_output(stack.cfg, job)))
    assert out.values.tolist() == [
        ["A", 1, "mm-sales-A", 3.0, f"{job.job_id}_train-A"], ["A", 2, "mm-sales-A", 3.0, f"{job.job_id}_train-A"],
        ["A", 6, "mm-sales-A", 3.0, f"{job.job_id}_train-A"], ["B", 10, "mm-sales-B", 15.0, f"{job.job_id}_train-B"],
        ["B", 20, "mm-sales-B", 15.0, f"{job.job_id}_train-B"]]
    for store, mean in (("A", 3.0), ("B", 15.0)):
        [made] = registry.find(stack.cfg, f"mm-sales-{store}")  # one version, though A's mini-batch ran twice
        assert made.tags == {"mmstore": store, "mmkind": "forecast", "run_id": job.job_id, "parent_run_id": job.job_id}
        assert made.single_file and made.files == (f"{store}.pkl",)
    artifacts = _written(job)  # upload_file: the run's artifacts, in the job's output
    assert [pickle.loads(artifacts[f"outputs/{store}.pkl"]) for store in "AB"] == [{"mean": 3.0}, {"mean": 15.0}]

    # Many-models scoring: each partition's latest model found by tags through the workspace.
    registry.register(stack.cfg, _pickle(tmp_path / "A2" / "A.pkl", {"mean": 50.0}), "mm-sales-A",
                      {"mmstore": "A", "mmkind": "forecast"})
    endpoints.create(stack.cfg, "mmscore", _code(tmp_path, "score", {"score.py": SCORE}), "score.py", "mm-helper", tabular)
    scored = stack.run_until_done(start(stack, "mmscore", "mmtrain/t/").job_id)
    assert scored.state == jobs.SUCCEEDED, scored.reason
    out = pd.read_csv(io.StringIO(read_output(stack.cfg, scored)))
    assert out.values.tolist() == [["A", 1, 100.0, "mm-sales-A:2:A", "3/2"], ["A", 2, 100.0, "mm-sales-A:2:A", "3/2"],
                                   ["A", 6, 100.0, "mm-sales-A:2:A", "3/2"], ["B", 10, 30.0, "mm-sales-B:1:B", "3/2"],
                                   ["B", 20, 30.0, "mm-sales-B:1:B", "3/2"]]


STAND_IN = '''"""Stands in for a real azureml-core shipped with the code: its offline Model.get_model_path,
which reads ./azureml-models/<name>/<version>/ (its one entry; the newest version by default)."""
import os

class Model:
    @staticmethod
    def get_model_path(model_name, version=None, _workspace=None):
        folder = os.path.join("azureml-models", model_name)
        version = version or max(int(v) for v in os.listdir(folder))
        [entry] = os.listdir(os.path.join(folder, str(version)))
        return os.path.join(folder, str(version), entry)
'''

REAL = '''
import os
import azureml.core
from azureml.core import Model

def init():
    global path
    assert azureml.core.__file__.endswith("azureml/core/__init__.py")  # the real one, not the shim
    path = Model.get_model_path("real-sdk")

def run(mini_batch):
    return [f"{os.path.basename(p)} {path} {open(os.path.join(path, 'w.txt')).read()}" for p in mini_batch]
'''


def test_a_real_azureml_core_finds_the_model_where_it_looks_offline(stack, tmp_path):
    stack.purge()
    (tmp_path / "clf").mkdir()
    (tmp_path / "clf" / "w.txt").write_text("W")
    registry.register(stack.cfg, tmp_path / "clf", "real-sdk")
    code = _code(tmp_path, "real", {"score.py": REAL, "azureml/__init__.py": "", "azureml/core/__init__.py": STAND_IN})
    endpoints.create(stack.cfg, "azreal", code, "score.py", "real-sdk")
    put_files(stack.cfg, "azreal/r/", ["x.txt"])
    job = stack.run_until_done(start(stack, "azreal", "azreal/r/").job_id)
    assert job.state == jobs.SUCCEEDED, job.reason
    assert read_output(stack.cfg, job).splitlines() == ["x.txt azureml-models/real-sdk/1/clf W"]


def test_calls_that_need_azure_import_and_raise_at_the_call(monkeypatch, tmp_path):
    for name in [n for n in sys.modules if n.startswith(("azureml", "entry_script"))]:
        monkeypatch.delitem(sys.modules, name)
    azure.install()
    from azureml.core import Dataset, Datastore, Experiment, Run, Workspace
    from azureml.core.dataset import Dataset as DatasetToo
    from entry_script import EntryScript

    assert DatasetToo is Dataset and EntryScript is azure.EntryScript
    workspace = Workspace.from_config()
    run = Run.get_context()
    refused = {
        "Workspace(subscription_id, resource_group, workspace_name)": lambda: Workspace("sub", "group", "name"),
        "Workspace.get()": lambda: Workspace.get("name"),
        "Workspace.get_default_datastore()": workspace.get_default_datastore,
        "Dataset.get_by_name()": lambda: Dataset.get_by_name(workspace, "sales"),
        "Dataset.Tabular.from_delimited_files()": lambda: Dataset.Tabular.from_delimited_files("x.csv"),
        "Datastore.get()": lambda: Datastore.get(workspace, "blobs"),
        "Experiment.submit()": lambda: Experiment(workspace, "e").submit(None),
        "Run.get_portal_url()": run.get_portal_url,
        "Run.id in init()": lambda: run.id,
        "register_model() outside run()": lambda: run.register_model("m", "model.pkl"),
    }
    for call, make in refused.items():
        with pytest.raises(AzureOnlyError) as raised:
            make()
        assert isinstance(raised.value, ParallelRunError) and str(raised.value).startswith(call), str(raised.value)
    assert "side_inputs" in str(pytest.raises(AzureOnlyError, Dataset.get_by_name, workspace, "x").value)
    assert "Run.get_context().experiment.workspace" in str(pytest.raises(AzureOnlyError, Workspace, "s").value)
    assert Experiment(workspace, "e").workspace is workspace and run.experiment.workspace is workspace


def test_a_generator_is_consumed_and_its_tables_joined():
    assert child.to_rows(x * 2 for x in (1, 2, 3)) == (None, ["2", "4", "6"])
    frames = (pd.DataFrame({"file": [name], "p": [i]}) for i, name in enumerate("ab"))
    assert child.to_rows(frames, "csv") == ("file,p", ["a,0", "b,1"])


def test_a_claimed_registration_makes_one_version_even_when_it_loses_a_race(stack, tmp_path, monkeypatch):
    path = _pickle(tmp_path / "m.pkl", {"v": 1})
    first = registry.register(stack.cfg, path, "claimed", claim="job/0/0")
    assert registry.register(stack.cfg, path, "claimed", claim="job/0/0").version == first.version
    # A second delivery that read no claim yet, as two deliveries racing do: the transaction decides.
    real, asked = registry._claimed, []

    def not_yet_visible(cfg, name, claim):
        asked.append(claim)
        return None if len(asked) == 1 else real(cfg, name, claim)

    monkeypatch.setattr(registry, "_claimed", not_yet_visible)
    assert registry.register(stack.cfg, path, "claimed", claim="job/0/0").version == first.version
    assert [m.version for m in registry.find(stack.cfg, "claimed")] == [first.version]
    assert asked == ["job/0/0", "job/0/0"]  # not seen before, then read after the transaction lost
    assert registry.register(stack.cfg, path, "claimed", claim="job/1/0").version == first.version + 2  # a number lost


def test_a_folder_model_keeps_its_name_and_older_versions_are_given_model(stack, tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.bin").write_bytes(b"w")
    made = registry.register(stack.cfg, tmp_path / "weights", "named-folder")
    assert (made.folder, made.local_name) == ("weights", "weights")
    assert registry.register(stack.cfg, tmp_path / "weights" / "w.bin", "named-file").local_name == "w.bin"
    older = {k: v for k, v in made.to_item().items() if k != "folder"}
    assert registry.ModelVersion.from_item(older).folder == registry.DEFAULT_FOLDER == "model"
