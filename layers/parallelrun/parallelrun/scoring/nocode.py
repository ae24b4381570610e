"""The built-in scorer of a deployment without a scoring script: what the user's script would be.

Its model is loaded once per scoring process (as ``init()`` would), then every mini-batch, a
piece of one input file read as a table by the worker, is scored with the model's own predict
and returned as that table plus Azure's two columns, ``prediction`` and ``file_name`` (the input
file's name), as Azure's MLflow batch deployments write them
(https://learn.microsoft.com/en-us/azure/machine-learning/how-to-mlflow-batch#analyze-outputs).
Azure's optional ``row`` column is left out: a large file is split among workers by byte ranges,
where a row's number in its file is not known; the input's own columns are there instead.

MLflow (``mlflow.pyfunc``, which enforces the model's signature), a pickled or joblib
scikit-learn estimator, and ONNX (onnxruntime) are imported only by the deployments that use
them, so a missing one fails the attempt naming the package to add to the deployment's
requirements. The kinds are :mod:`parallelrun.core.nocode`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

from parallelrun.core import nocode
from parallelrun.core.errors import InputError, ScoringScriptError
from parallelrun.scoring.loaded import default_loader

Predict = Callable[[Any], Any]  # a table (pandas DataFrame) → one prediction per row

# ONNX tensor types and the numpy dtypes a table's columns are cast to for them (named, so that
# a deployment with a script of its own never imports numpy for this module).
_ONNX_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(string)": "object"}


class Scorer:
    """``run(mini_batch, mini_batch_context)`` over a loaded model, as a scoring script's module."""

    def __init__(self, predict: Predict) -> None:
        self.predict = predict

    @classmethod
    def load(cls, model_path: str) -> Scorer:
        """The scorer of the model at ``model_path`` (its file, or its folder), loaded now; raises
        if it is no no-code kind."""
        path = Path(model_path)
        names = [path.name] if path.is_file() else [p.name for p in path.iterdir()] if path.is_dir() else []
        kind = nocode.kind_of(names, path.is_file())
        if kind == nocode.MLFLOW:
            pyfunc = _require("mlflow.pyfunc", "mlflow-skinny (or mlflow)", "an MLflow model")
            return cls(_mlflow_predict(pyfunc.load_model(model_path)))
        if kind == nocode.SKLEARN:
            return cls(_sklearn_predict(default_loader(model_path)))
        if kind == nocode.ONNX:
            runtime = _require("onnxruntime", "onnxruntime", "an ONNX model")
            return cls(_onnx_predict(runtime.InferenceSession(model_path, providers=["CPUExecutionProvider"])))
        raise ScoringScriptError(f"model {model_path} cannot be scored without a scoring script: a deployment "
                                 f"without one needs {nocode.ALLOWED}")

    def run(self, mini_batch: Any, mini_batch_context: Any) -> Any:
        """The table with each row's prediction and the name of the file it came from."""
        taken = [name for name in (nocode.PREDICTION, nocode.FILE_NAME) if name in mini_batch.columns]
        if taken:
            raise InputError(f"the input has columns named {', '.join(taken)}, which the output adds: rename them")
        values = _one_per_row(self.predict(mini_batch), len(mini_batch))
        source = PurePosixPath(mini_batch_context.input_files[0]).name if mini_batch_context.input_files else ""
        return mini_batch.assign(**{nocode.PREDICTION: values, nocode.FILE_NAME: source})


def _require(module: str, package: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ScoringScriptError(f"scoring {what} needs the Python package {package}, which the scoring process "
                                 f"cannot import ({error}): add it to the deployment's requirements") from error


def _require_columns(table: Any, names: Sequence[str], what: str) -> None:
    """Every column the model takes is in the table, or the mini-batch fails saying which are not."""
    missing = [name for name in names if name not in table.columns]
    if missing:
        raise InputError(f"the input lacks column(s) {', '.join(map(str, missing))} of {what}, which takes "
                         f"{', '.join(map(str, names))}; it has {', '.join(map(str, table.columns))}")


def _mlflow_predict(model: Any) -> Predict:
    schema = model.metadata.get_input_schema()
    required = schema.required_input_names() if schema is not None and schema.has_input_names() else []

    def predict(table: Any) -> Any:
        _require_columns(table, required, "the MLflow model's signature")
        return model.predict(table)  # which enforces the signature's types
    return predict


def _sklearn_predict(estimator: Any) -> Predict:
    if not callable(getattr(estimator, "predict", None)):
        raise ScoringScriptError(f"the model is a pickled {type(estimator).__name__}, which has no predict(): "
                                 "a deployment without a scoring script needs a scikit-learn estimator")
    names = getattr(estimator, "feature_names_in_", None)
    width = getattr(estimator, "n_features_in_", None)

    def predict(table: Any) -> Any:
        if names is not None:  # fit on a table: its columns by name, in the order it was fit on
            _require_columns(table, list(names), "the estimator")
            return estimator.predict(table[list(names)])
        if width is not None and width != len(table.columns):
            raise InputError(f"the estimator takes {width} columns; the input has {len(table.columns)}")
        return estimator.predict(table.to_numpy())
    return predict


def _onnx_predict(session: Any) -> Predict:
    inputs = session.get_inputs()
    unknown = [f"{i.name} ({i.type})" for i in inputs if i.type not in _ONNX_TYPES]
    if unknown:
        raise ScoringScriptError(f"the ONNX model takes input(s) {', '.join(unknown)}, which a table's columns "
                                 f"cannot be: a deployment without a scoring script feeds {', '.join(_ONNX_TYPES)}")

    def predict(table: Any) -> Any:
        if len(inputs) == 1:  # one tensor: the table's columns, in order, as its second dimension
            [tensor] = inputs
            width = tensor.shape[1] if len(tensor.shape) == 2 else None
            if isinstance(width, int) and width != len(table.columns):
                raise InputError(f"the ONNX model's input {tensor.name} takes {width} columns; the input has "
                                 f"{len(table.columns)}")
            feed = {tensor.name: table.to_numpy(dtype=_ONNX_TYPES[tensor.type])}
        else:  # one tensor per column, by name (as skl2onnx converts a model fit on a table)
            _require_columns(table, [i.name for i in inputs], "the ONNX model")
            feed = {i.name: table[[i.name]].to_numpy(dtype=_ONNX_TYPES[i.type]) for i in inputs}
        return session.run(None, feed)[0]  # a classifier's first output is its label
    return predict


def _one_per_row(predictions: Any, rows: int) -> Any:
    """The model's output as one value per row: a single column as it is, several (such as
    probabilities) as a list each, as Azure writes a prediction "as-is"."""
    import numpy as np

    values = predictions.to_numpy() if hasattr(predictions, "to_numpy") else np.asarray(predictions)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim == 0 or len(values) != rows:
        raise ScoringScriptError(f"the model returned {values.size} predictions for {rows} rows")
    return values if values.ndim == 1 else values.tolist()
