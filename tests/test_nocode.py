"""No-code deployments: an MLflow model, a scikit-learn estimator or an ONNX model scored with
no scoring script, each input file read as a table, the output Azure's predictions.csv."""

from __future__ import annotations

import io
import json
import pickle
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from parallelrun import aws
from parallelrun.client import cli
from parallelrun.client.api import Client
from parallelrun.client.demo import EXAMPLES, load_example
from parallelrun.core import nocode
from parallelrun.core.datasets import InputFile
from parallelrun.core.errors import InputError, ScoringScriptError, SettingsError
from parallelrun.core.settings import RunSettings
from parallelrun.scoring.child import MiniBatchContext
from parallelrun.scoring.nocode import Scorer
from parallelrun.store import endpoints, jobs, registry, reuse
from tests.conftest import read_output
from tests.test_pipeline import start

DATA = EXAMPLES / "mlflow_nocode" / "data"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def upload(stack, key: str, body: bytes) -> None:
    aws.client("s3").put_object(Bucket=stack.cfg.input_bucket, Key=key, Body=body)


def output_table(stack, job: jobs.JobRecord) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(read_output(stack.cfg, job)))


def test_an_mlflow_model_scores_csv_and_parquet_files_with_no_script(stack, tmp_path: Path):
    """The example's model on its CSV files and one Parquet file; files that are no table and one
    whose columns miss the signature fail alone, each saying why, and the job goes on."""
    stack.purge()
    example = load_example("mlflow_nocode", "make_model")
    model = example.save_model(tmp_path / "model")
    registry.register(stack.cfg, tmp_path / "model", "iris-mlflow")
    deployment = endpoints.create(stack.cfg, "iris-nocode", None, None, "iris-mlflow")
    assert (deployment.code_sha, deployment.entry_script) == (None, None)
    assert deployment.settings == nocode.DEFAULTS  # Azure's predictions.csv unless the deployment says otherwise
    tables = {path.name: pd.read_csv(path) for path in sorted(DATA.glob("*.csv"))}
    for name in tables:
        upload(stack, f"iris-nocode/r/{name}", (DATA / name).read_bytes())
    tables["more.parquet"] = tables["iris-0.csv"].head(7)
    buffer = io.BytesIO()
    tables["more.parquet"].to_parquet(buffer, index=False)
    upload(stack, "iris-nocode/r/more.parquet", buffer.getvalue())
    upload(stack, "iris-nocode/r/binary.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00")
    upload(stack, "iris-nocode/r/broken.parquet", b"sepal_length\n5.1\n")
    upload(stack, "iris-nocode/r/short.csv", b"sepal_length,sepal_width\n5.1,3.5\n")

    job = stack.run_until_done(start(stack, "iris-nocode", "iris-nocode/r/").job_id)

    assert job.state == jobs.SUCCEEDED, job.reason
    assert job.settings.output_file_name == "predictions.csv"
    out = output_table(stack, job)
    assert list(out.columns) == [*FEATURES, "prediction", "file_name"]
    expected = pd.concat([table.assign(prediction=model.predict(table[FEATURES]), file_name=name)
                          for name, table in sorted(tables.items())], ignore_index=True)
    pd.testing.assert_frame_equal(out, expected, check_dtype=False)  # row by row, files in key order
    failures: dict[str, list[dict]] = {}
    for line in read_output(stack.cfg, job, "failures.jsonl").splitlines():
        failures.setdefault(json.loads(line)["input"].rpartition("/")[2], []).append(json.loads(line))
    assert sorted(failures) == ["binary.csv", "broken.parquet", "short.csv"]
    [short] = failures["short.csv"]
    assert (short["error_type"], short["attempts"]) == ("InputError", job.settings.run_max_try)
    assert short["message"].startswith("the input lacks column(s) petal_length, petal_width of the MLflow model's "
                                       "signature, which takes sepal_length, sepal_width, petal_length, petal_width")
    [parquet] = failures["broken.parquet"]
    assert parquet["error_type"] == "ArrowInvalid" and "Parquet" in parquet["message"]
    binary = {f["error_type"]: f["message"] for f in failures["binary.csv"]}
    assert sorted(binary) == ["InputError", "MalformedRow"]  # its readable rows, then the rest
    assert "bytes that are not utf-8 text" in binary["MalformedRow"]
    assert binary["InputError"].startswith("the input lacks column(s) sepal_length")
    assert job.items_succeeded == len(expected)


def test_pickled_and_joblib_estimators_score_by_column_name_or_position(stack, tmp_path: Path):
    stack.purge()
    features = pd.read_csv(DATA / "iris-1.csv")
    target = (features["petal_length"] > 3).astype(int)
    by_name = LogisticRegression(max_iter=500).fit(features, target)  # fit on a table: columns by name
    joblib.dump(by_name, tmp_path / "by-name.joblib")
    by_position = LinearRegression().fit(features.to_numpy()[:, :2], features["petal_width"])
    (tmp_path / "by-position.pkl").write_bytes(pickle.dumps(by_position))
    registry.register(stack.cfg, tmp_path / "by-name.joblib", "iris-joblib")
    registry.register(stack.cfg, tmp_path / "by-position.pkl", "iris-pickle")
    endpoints.create(stack.cfg, "sk-nocode", None, None, "iris-joblib")
    endpoints.add_deployment(stack.cfg, "sk-nocode", "pickle", None, None, "iris-pickle")
    # Extra columns, in another order: the estimator fit on a table takes its own by name.
    table = features.assign(id=range(len(features)))[["id", *reversed(FEATURES)]]
    upload(stack, "sk-nocode/r/a.csv", table.to_csv(index=False).encode())
    job = stack.run_until_done(start(stack, "sk-nocode", "sk-nocode/r/").job_id)
    assert job.state == jobs.SUCCEEDED, job.reason
    out = output_table(stack, job)
    assert list(out["prediction"]) == list(by_name.predict(features)) and list(out["id"]) == list(table["id"])

    pairs = features[["sepal_length", "sepal_width"]]
    upload(stack, "sk-nocode/p/a.csv", pairs.to_csv(index=False).encode())
    upload(stack, "sk-nocode/p/b.csv", features.to_csv(index=False).encode())  # four columns for two
    job = submit_to(stack, "sk-nocode", "sk-nocode/p/", "pickle")
    out = output_table(stack, job)
    assert np.allclose(out["prediction"], by_position.predict(pairs.to_numpy()))
    [failure] = map(json.loads, read_output(stack.cfg, job, "failures.jsonl").splitlines())
    assert failure["input"] == "sk-nocode/p/b.csv"
    assert failure["message"] == "the estimator takes 2 columns; the input has 4"


def submit_to(stack, endpoint: str, folder: str, deployment: str) -> jobs.JobRecord:
    from parallelrun.pipeline import submit

    job = submit.prepare(stack.cfg, endpoint, f"s3://{stack.cfg.input_bucket}/{folder}", deployment=deployment)
    submit.start(stack.cfg, job)
    return stack.run_until_done(job.job_id)


def onnx_linear(path: Path, weights: np.ndarray, bias: float) -> None:
    """A tiny ONNX model, Y = X·W + b, written with onnx's helper API."""
    from onnx import TensorProto, helper, numpy_helper, save

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["XW"]), helper.make_node("Add", ["XW", "B"], ["Y"])], "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, len(weights)])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(weights.reshape(-1, 1).astype(np.float32), "W"),
         numpy_helper.from_array(np.array([bias], dtype=np.float32), "B")])
    # IR version 10: what onnxruntime 1.31 reads (onnx 1.23 writes 14 unless told).
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))


def test_an_onnx_model_scores_with_its_input_name_and_dtype(stack, tmp_path: Path):
    import onnxruntime

    stack.purge()
    onnx_linear(tmp_path / "linear.onnx", np.array([0.5, -1.0, 2.0, 0.25]), 3.0)
    registry.register(stack.cfg, tmp_path / "linear.onnx", "iris-onnx")
    endpoints.create(stack.cfg, "onnx-nocode", None, None, "iris-onnx", {"output_format": "parquet"})
    table = pd.read_csv(DATA / "iris-2.csv")
    upload(stack, "onnx-nocode/r/a.csv", table.to_csv(index=False).encode())
    job = stack.run_until_done(start(stack, "onnx-nocode", "onnx-nocode/r/").job_id)
    assert job.state == jobs.SUCCEEDED, job.reason
    assert job.settings.output_file_name == "predictions.csv"  # the deployment's name, its format overridden
    bucket, key = job.output_uri[5:].split("/", 1)
    out = pd.read_parquet(io.BytesIO(aws.client("s3").get_object(Bucket=bucket, Key=key + "predictions.csv")["Body"].read()))
    session = onnxruntime.InferenceSession(str(tmp_path / "linear.onnx"), providers=["CPUExecutionProvider"])
    own = session.run(None, {"X": table.to_numpy(dtype=np.float32)})[0][:, 0]
    assert out["prediction"].dtype == np.float32 and out["prediction"].tolist() == own.tolist()
    assert (out["file_name"] == "a.csv").all()


def test_a_model_that_needs_a_script_is_refused_at_create_naming_what_is_allowed(stack, tmp_path: Path, capsys,
                                                                                monkeypatch):
    onnx_linear(tmp_path / "m.onnx", np.ones(2), 0.0)
    registry.register(stack.cfg, tmp_path / "m.onnx", "iris-onnx-cli")
    (tmp_path / "weights.pt").write_bytes(b"torch")
    registry.register(stack.cfg, tmp_path / "weights.pt", "torchy")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "model.pkl").write_bytes(pickle.dumps(1))
    registry.register(stack.cfg, tmp_path / "folder", "folder-model")
    for model in ("torchy", "folder-model"):
        with pytest.raises(InputError, match="cannot be scored without a scoring script: give --code and "
                                             "--entry-script, or deploy an MLflow model"):
            endpoints.create(stack.cfg, f"refused-{model}", None, None, model)
    with pytest.raises(InputError, match="a model per partition needs a scoring script"):
        endpoints.create(stack.cfg, "refused-partition", None, None, "sales-{store}")
    with pytest.raises(InputError, match="--code and --entry-script go together"):
        endpoints.create(stack.cfg, "refused-half", tmp_path, None, "torchy")
    with pytest.raises(SettingsError, match="input_type='files' is not allowed: tabular"):
        endpoints.create(stack.cfg, "refused-files", None, None, "iris-onnx-cli", {"input_type": "files"})
    for name in ("refused-torchy", "refused-folder-model", "refused-partition", "refused-half", "refused-files"):
        with pytest.raises(Exception, match="no endpoint"):
            endpoints.get_endpoint(stack.cfg, name)
    # The CLI takes neither flag for a no-code deployment, and says what it made.
    monkeypatch.setattr(Client, "local", classmethod(lambda cls: cls(stack.cfg)))
    assert cli.main(["endpoints", "create", "cli-nocode", "--model", "iris-onnx-cli"]) == 0
    assert "(no code: the built-in scorer)" in capsys.readouterr().out
    assert cli.main(["endpoints", "create", "cli-refused", "--model", "torchy"]) != 0
    assert "give --code and --entry-script, or deploy an MLflow model" in capsys.readouterr().err
    # An update keeps a no-code deployment one: a model of its kind, no script without code.
    with pytest.raises(InputError, match="cannot be scored without a scoring script"):
        endpoints.update(stack.cfg, "cli-nocode", model_ref="torchy")
    with pytest.raises(InputError, match="has no scoring code: give --code with --entry-script"):
        endpoints.update(stack.cfg, "cli-nocode", entry_script="score.py")
    assert endpoints.get_deployment(stack.cfg, "cli-nocode").model_name == "iris-onnx-cli"


def test_a_missing_package_fails_naming_it_and_the_requirements(tmp_path: Path, monkeypatch):
    onnx_linear(tmp_path / "m.onnx", np.ones(2), 0.0)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: import raises ImportError
    with pytest.raises(ScoringScriptError, match="needs the Python package onnxruntime, which the scoring process "
                                                 r"cannot import \(.*\): add it to the deployment's requirements"):
        Scorer.load(str(tmp_path / "m.onnx"))
    monkeypatch.setitem(sys.modules, "mlflow.pyfunc", None)
    (tmp_path / "mlflow").mkdir()
    (tmp_path / "mlflow" / "MLmodel").write_text("flavors: {}\n")
    with pytest.raises(ScoringScriptError, match="needs the Python package mlflow-skinny"):
        Scorer.load(str(tmp_path / "mlflow"))


def test_reuse_names_the_built_in_scorer_where_no_code_sha_is():
    items = [InputFile("in/a.csv", 10, "e")]
    scripted = {"code_sha": "c" * 64, "entry_script": "score.py", "model_name": "m", "model_version": 1}
    no_code = {**scripted, "code_sha": None, "entry_script": None}
    settings = RunSettings(input_type="tabular")
    assert reuse.fingerprint(no_code, settings, items) != reuse.fingerprint(scripted, settings, items)
    before = reuse.fingerprint(no_code, settings, items)
    original, nocode.SCORER = nocode.SCORER, "parallelrun.nocode/2"
    try:
        assert reuse.fingerprint(no_code, settings, items) != before  # rows of an older scorer are not reused
    finally:
        nocode.SCORER = original


def test_an_onnx_model_with_a_tensor_per_column_and_two_outputs_per_row(tmp_path: Path):
    """Inputs by column name (as skl2onnx converts a model fit on a table); a prediction of
    several values is a list per row, as Azure writes it as-is."""
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Sub", ["a", "b"], ["difference"]),
         helper.make_node("Concat", ["sum", "difference"], ["Y"], axis=1)], "two",
        [helper.make_tensor_value_info(name, TensorProto.DOUBLE, [None, 1]) for name in ("a", "b")],
        [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, [None, 2])])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(tmp_path / "t.onnx"))
    scorer = Scorer.load(str(tmp_path / "t.onnx"))
    context = MiniBatchContext(job_id="j", minibatch_index=0, attempt=1, input_files=["s3://b/in/x/t.csv"])
    table = pd.DataFrame({"b": [1.0, 2.0], "c": ["kept", "too"], "a": [10.0, 20.0]})
    out = scorer.run(table, context)
    assert out.to_dict("list") == {**table.to_dict("list"), "prediction": [[11.0, 9.0], [22.0, 18.0]],
                                   "file_name": ["t.csv", "t.csv"]}
    with pytest.raises(InputError, match="lacks column.s. b of the ONNX model, which takes a, b; it has a, c"):
        scorer.run(table[["a", "c"]], context)
    with pytest.raises(InputError, match="has columns named prediction, which the output adds: rename them"):
        scorer.run(table.assign(prediction=0), context)
