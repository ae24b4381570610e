"""An MLflow model and a folder of CSV files for a no-code deployment: no scoring script.

Run alone: ``python examples/mlflow_nocode/make_model.py OUT_DIR`` writes OUT_DIR/model/ (an
MLflow model, its MLmodel file naming the sklearn flavour and the input signature) and
OUT_DIR/data/iris-0.csv ... iris-3.csv (the files in data/ beside this script, which the test
suite scores). Then deploy it without --code or --entry-script:

    parallelrun models register OUT_DIR/model --name iris-mlflow
    parallelrun endpoints create iris --model iris-mlflow
    parallelrun submit --endpoint iris --input s3://<input-bucket>/iris/run1/   # OUT_DIR/data/* uploaded there

Each file is read as a table and scored with ``mlflow.pyfunc``; the output is
``predictions.csv``: every input row with its ``prediction`` and ``file_name``. Needs
mlflow-skinny (or mlflow) where the scoring process runs: the project's test extras pin it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def iris() -> tuple[pd.DataFrame, pd.Series]:
    """scikit-learn's bundled iris (offline), with plain column names."""
    data = load_iris()
    return pd.DataFrame(data.data, columns=COLUMNS), pd.Series(data.target, name="species")


def save_model(path: Path) -> LogisticRegression:
    """Fit a classifier and save it as an MLflow model whose signature names the four columns."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    features, target = iris()
    model = LogisticRegression(max_iter=1000).fit(features, target)
    # cloudpickle: readable by mlflow-skinny without skops (MLflow's default format needs it).
    mlflow.sklearn.save_model(model, str(path), signature=infer_signature(features, model.predict(features)),
                              serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE)
    return model


def write_csv_files(folder: Path, files: int = 4) -> dict[str, pd.DataFrame]:
    """The iris rows dealt round-robin into ``files`` CSV files; returns each file's table."""
    features, _ = iris()
    folder.mkdir(parents=True, exist_ok=True)
    tables = {}
    for number in range(files):
        name = f"iris-{number}.csv"
        tables[name] = features.iloc[number::files].reset_index(drop=True)
        tables[name].to_csv(folder / name, index=False)
    return tables


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "mlflow_nocode_out")
    save_model(out / "model")
    write_csv_files(out / "data")
    print(f"wrote {out / 'model'} (an MLflow model) and {out / 'data'} (4 CSV files)")
