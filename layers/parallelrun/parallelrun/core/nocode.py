"""No-code deployments: the models that score without a scoring script, and what their jobs
start from. Pure, so the store checks a model when a deployment is created, submit checks a
job's settings, reuse names the built-in scorer, and the scoring process picks its loader, all
by the same rules. The scorer itself is :mod:`parallelrun.scoring.nocode`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath

from parallelrun.core.errors import SettingsError
from parallelrun.core.settings import RunSettings

MLFLOW, SKLEARN, ONNX = "mlflow", "sklearn", "onnx"
MLMODEL = "MLmodel"
# What loaded.default_loader reads: pickle or joblib.
SKLEARN_SUFFIXES = (".pkl", ".pickle", ".joblib", ".jbl")
ALLOWED = ("an MLflow model (a folder with an MLmodel file at its top), a pickled or joblib scikit-learn estimator "
           "(one .pkl, .pickle or .joblib file) or an ONNX model (one .onnx file)")
# Names the built-in scorer in a mini-batch's reuse fingerprint, where a script's code SHA-256
# would be: change it whenever the rows it writes change, so no job reuses rows of an older one.
SCORER = "parallelrun.nocode/1"
# As Azure's MLflow batch deployments write their output: predictions.csv, one row per input
# row (https://learn.microsoft.com/en-us/azure/machine-learning/how-to-mlflow-batch#analyze-outputs).
# Each file is read as a table (tabular input: a large file is split among workers).
DEFAULTS = {"input_type": "tabular", "output_format": "csv", "append_row_file_name": "predictions.csv"}
PREDICTION, FILE_NAME = "prediction", "file_name"  # Azure's names of the columns it adds


def kind_of(files: Sequence[str], single_file: bool) -> str | None:
    """``mlflow``, ``sklearn`` or ``onnx`` for a registered model's files, or None: a model a
    scoring script must load."""
    if not single_file:
        return MLFLOW if MLMODEL in files else None
    suffix = PurePosixPath(files[0]).suffix.lower() if files else ""
    if suffix in SKLEARN_SUFFIXES:
        return SKLEARN
    return ONNX if suffix == ".onnx" else None


def check_settings(settings: RunSettings) -> None:
    """A no-code job reads its inputs as tables: file input would hand the scorer bare paths."""
    if settings.input_type != "tabular":
        raise SettingsError("input_type", settings.input_type, "tabular: a deployment without a scoring script "
                            "reads each input file as a table (CSV, JSON lines, Parquet)")
