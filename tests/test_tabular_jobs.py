"""Tabular jobs end to end on moto: DataFrames in, rows out in input order, big files split."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from parallelrun import aws
from parallelrun.core.datasets import split_s3_uri
from parallelrun.store import endpoints, jobs, registry
from tests.conftest import read_output
from tests.test_pipeline import start

IRIS = """
import pickle
import parallelrun

def init():
    global model
    with open(parallelrun.get_model_path("iris"), "rb") as handle:
        model = pickle.load(handle)

def run(mini_batch):
    features = mini_batch[["sepal_length", "sepal_width", "petal_length", "petal_width"]]
    return mini_batch.assign(predicted=model.predict(features.to_numpy()))[["id", "predicted"]]
"""


def test_an_iris_csv_scored_by_a_model_returning_a_dataframe(stack, tmp_path: Path):
    stack.purge()
    iris = load_iris()
    model = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)
    (tmp_path / "iris.pkl").write_bytes(pickle.dumps(model))
    registry.register(stack.cfg, tmp_path / "iris.pkl", "iris")
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(IRIS)
    endpoints.create(stack.cfg, "iris", code, "score.py", "iris", {"input_type": "tabular"})
    table = pd.DataFrame(iris.data, columns=["sepal_length", "sepal_width", "petal_length", "petal_width"])
    table.insert(0, "id", np.arange(150))
    s3 = aws.client("s3")
    s3.put_object(Bucket=stack.cfg.input_bucket, Key="iris/csv/iris.csv", Body=table.to_csv(index=False).encode())

    whole = stack.run_until_done(start(stack, "iris", "iris/csv/", {"input_type": "tabular"}).job_id)
    split = stack.run_until_done(start(stack, "iris", "iris/csv/", {"input_type": "tabular", "mini_batch_size": "512",
                                                                   "allow_reuse": "false"}).job_id)
    for job in (whole, split):
        assert job.state == jobs.SUCCEEDED, job.reason
        rows = read_output(stack.cfg, job).splitlines()
        assert [int(r.split(" ")[0]) for r in rows] == list(range(150))  # input order
        assert (job.items_succeeded, job.items_failed) == (150, 0)  # counted in records
        summary = json.loads(read_output(stack.cfg, job, "summary.json"))
        assert summary["counts"]["items"] == {"total": 150, "succeeded": 150, "failed": 0}
        assert sum(int(r.split(" ")[1]) == t for r, t in zip(rows, iris.target)) >= 140
    assert (whole.total_batches, split.total_batches > 5) == (1, True)

    as_csv = stack.run_until_done(start(stack, "iris", "iris/csv/", {
        "input_type": "tabular", "mini_batch_size": "1KB", "output_format": "csv"}).job_id)
    read_back = pd.read_csv(io.StringIO(read_output(stack.cfg, as_csv)))  # one line, header once
    assert list(read_back.columns) == ["id", "predicted"] and list(read_back["id"]) == list(range(150))
    as_txt = stack.run_until_done(start(stack, "iris", "iris/csv/", {
        "input_type": "tabular", "append_row_separator": ","}).job_id)
    read_back = pd.read_csv(io.StringIO(read_output(stack.cfg, as_txt)), header=None)
    assert read_back.shape == (150, 2) and list(read_back[0]) == list(range(150))
    as_parquet = stack.run_until_done(start(stack, "iris", "iris/csv/", {
        "input_type": "tabular", "mini_batch_size": "512", "output_format": "parquet"}).job_id)
    assert as_parquet.state == jobs.SUCCEEDED and as_parquet.total_batches > 5
    bucket, key = split_s3_uri(as_parquet.output_uri + "parallel_run_step.parquet")
    read_back = pd.read_parquet(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))  # one line, typed
    assert read_back.dtypes.astype(str).to_dict() == {"id": "int64", "predicted": "int64"}
    assert list(read_back["id"]) == list(range(150)) and list(read_back["predicted"]) == [
        int(r.split(" ")[1]) for r in read_output(stack.cfg, whole).splitlines()]


def test_parquet_and_json_lines_pieces(stack, make_endpoint):
    endpoint = make_endpoint("def run(mini_batch):\n    return mini_batch[['id']]\n", name="pieces",
                             settings={"input_type": "tabular"})
    table = pa.table({"id": list(range(1000)), "x": [float(i) for i in range(1000)]})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=100)
    s3 = aws.client("s3")
    s3.put_object(Bucket=stack.cfg.input_bucket, Key="pieces/r/a.parquet", Body=sink.getvalue())
    s3.put_object(Bucket=stack.cfg.input_bucket, Key="pieces/r/b.jsonl",
                  Body=b"".join(json.dumps({"id": 1000 + i}).encode() + b"\n" for i in range(300)))
    job = stack.run_until_done(start(stack, endpoint, "pieces/r/", {"input_type": "tabular",
                                                                   "mini_batch_size": "2KB"}).job_id)
    assert job.state == jobs.SUCCEEDED, job.reason
    assert [int(r) for r in read_output(stack.cfg, job).splitlines()] == list(range(1300))
    assert job.total_batches > 3 and job.items_succeeded == 1300


def test_a_malformed_row_fails_alone_and_an_unreadable_file_fails_its_piece(stack, make_endpoint):
    endpoint = make_endpoint("def run(mini_batch):\n    return mini_batch[['a']]\n", name="malformed")
    s3 = aws.client("s3")
    s3.put_object(Bucket=stack.cfg.input_bucket, Key="malformed/r/a.csv", Body=b"a,b\n1,2\n3,4,5\n6,7\n")
    s3.put_object(Bucket=stack.cfg.input_bucket, Key="malformed/r/b.jsonl", Body=b'{"a": 8}\n{"a": \n[9]\n{"a": 10}\n')
    s3.put_object(Bucket=stack.cfg.input_bucket, Key="malformed/r/c.csv.gz", Body=b"a\n11\n")  # not gzipped
    job = stack.run_until_done(start(stack, endpoint, "malformed/r/", {"input_type": "tabular",
                                                                      "run_max_try": "1"}).job_id)
    assert job.state == jobs.SUCCEEDED
    assert read_output(stack.cfg, job).splitlines() == ["1", "6", "8", "10"]  # the rows around the bad ones
    failures = [json.loads(line) for line in read_output(stack.cfg, job, "failures.jsonl").splitlines()]
    assert [(f["input"], f["error_type"]) for f in failures] == [
        ("malformed/r/a.csv", "MalformedRow"), ("malformed/r/b.jsonl", "MalformedRow"),
        ("malformed/r/b.jsonl", "MalformedRow"), ("malformed/r/c.csv.gz", "BadGzipFile")]
    assert failures[0]["message"] == "whole file, line 3: expected 2 columns, got 3: 3,4,5"
    assert failures[1]["message"].startswith("whole file, line 2: not valid JSON")
    assert failures[2]["message"] == "whole file, line 3: not a JSON object: [9]"
    assert failures[0]["range"] == "whole file"
    assert (job.items_succeeded, job.items_failed) == (4, 4)


def test_csv_options_delimiter_and_encoding(stack, make_endpoint):
    endpoint = make_endpoint("def run(mini_batch):\n    return mini_batch[['name']]\n", name="latin")
    body = "id;name\n" + "".join(f"{i};caf\u00e9-{i}\n" for i in range(400))
    aws.client("s3").put_object(Bucket=stack.cfg.input_bucket, Key="latin/r/t.csv", Body=body.encode("latin-1"))
    job = stack.run_until_done(start(stack, endpoint, "latin/r/", {
        "input_type": "tabular", "mini_batch_size": "1KB",
        "csv_options": '{"delimiter": ";", "encoding": "latin-1"}'}).job_id)
    assert job.state == jobs.SUCCEEDED and job.total_batches > 3
    assert read_output(stack.cfg, job).splitlines() == [f"caf\u00e9-{i}" for i in range(400)]
