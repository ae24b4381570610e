"""Azure ML entry scripts run unchanged: the modules they import, provided inside the scoring
process only, and only where no real package of that name can be imported.

- ``azureml.core`` (and ``.model``, ``.run``, ``.workspace``, ``.experiment``, ``.dataset``,
  ``.datastore``): ``Model``, ``Run``, ``Workspace``, ``Experiment``, ``Dataset``, ``Datastore``
  from :mod:`parallelrun.scoring.azure_workspace`. What needs Azure itself imports and raises
  at the call.
- ``from azureml_user.parallel_run import EntryScript`` and the older ``from entry_script import
  EntryScript``: ``.logger`` (its lines carry the job and mini-batch), ``.output_dir`` and
  ``.log_dir`` (folders whose files are collected into the job's output), ``.working_dir``.
- ``mini_batch_context.dataset``: :class:`MiniBatchDataset`.

Where a real ``azureml-core`` is installed the shims step aside; its offline
``Model.get_model_path`` looks for ``./azureml-models/<name>/<version>/<the model>`` in the
working directory, which :func:`offline_layout` lays out.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import types
from pathlib import Path
from typing import Any

from parallelrun.scoring.azure_workspace import Dataset, Datastore, Experiment, Model, Run, Workspace

OUTPUT_DIR_VAR = "PARALLELRUN_ENTRY_OUTPUT_DIR"
LOG_DIR_VAR = "PARALLELRUN_ENTRY_LOG_DIR"
# Where a v2 batch deployment's script writes files of its own, collected into the job's output
# (https://learn.microsoft.com/en-us/azure/machine-learning/how-to-deploy-model-custom-output).
BI_OUTPUT_VAR = "AZUREML_BI_OUTPUT_PATH"
OFFLINE_MODELS = "azureml-models"  # the real SDK's folder of models, relative to the working directory


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class EntryScript:
    """What ``azureml_user.parallel_run.EntryScript`` gives a script."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("azureml_user.entry_script")
        self.output_dir = os.environ.get(OUTPUT_DIR_VAR, os.getcwd())
        self.log_dir = os.environ.get(LOG_DIR_VAR, os.getcwd())
        self.working_dir = os.getcwd()


class MiniBatchDataset:
    """``mini_batch_context.dataset``: the mini-batch's subset of the input, as Azure gives a
    partition's TabularDataset (``to_pandas_dataframe()``) or FileDataset (``to_path()``,
    ``download()``: the files are local already)."""

    def __init__(self, mini_batch: Any, partition: dict[str, Any]) -> None:
        self._batch, self.partition_key_value = mini_batch, dict(partition)
        self.tabular = hasattr(mini_batch, "columns")

    def to_pandas_dataframe(self) -> Any:
        if not self.tabular:
            raise AttributeError("a FileDataset has no to_pandas_dataframe(): to_path() gives its files")
        return self._batch.copy()

    def to_path(self) -> list[str]:
        if self.tabular:
            raise AttributeError("a TabularDataset has no to_path(): to_pandas_dataframe() gives its rows")
        return list(self._batch)

    def download(self, target_path: str | None = None, overwrite: bool = False) -> list[str]:
        return self.to_path()

    def __repr__(self) -> str:
        size = f"{len(self._batch)} {'rows' if self.tabular else 'files'}"
        kind = "TabularDataset" if self.tabular else "FileDataset"
        return f"{kind}(partition={self.partition_key_value}, {size})"


def offline_layout(model_path: str) -> None:
    """Link the model's version folder as ``./azureml-models/<name>/<version>``, where the real
    SDK's ``Model.get_model_path`` finds it outside Azure (the folder holds only the model)."""
    version_dir = Path(model_path).parent
    link = Path(OFFLINE_MODELS) / version_dir.parent.name / version_dir.name
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(version_dir, target_is_directory=True)


def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    module.__path__ = []  # a package, so its submodules import
    return module


def install() -> list[str]:
    """Put the shims in ``sys.modules`` where the real packages are absent; the names installed."""
    installed = []
    if not _importable("azureml.core"):
        names = dict(Model=Model, Run=Run, Workspace=Workspace, Experiment=Experiment, Dataset=Dataset,
                     Datastore=Datastore)
        core = _module("azureml.core", **names)
        sys.modules.update({"azureml": _module("azureml", core=core), "azureml.core": core})
        for sub, attribute in (("model", "Model"), ("run", "Run"), ("workspace", "Workspace"),
                               ("experiment", "Experiment"), ("dataset", "Dataset"), ("datastore", "Datastore")):
            sys.modules[f"azureml.core.{sub}"] = _module(f"azureml.core.{sub}", **{attribute: names[attribute]})
        installed.append("azureml.core")
    if not _importable("azureml_user.parallel_run"):
        parallel_run = _module("azureml_user.parallel_run", EntryScript=EntryScript)
        sys.modules.update({
            "azureml_user": _module("azureml_user", parallel_run=parallel_run),
            "azureml_user.parallel_run": parallel_run,
        })
        installed.append("azureml_user.parallel_run")
    if not _importable("entry_script"):  # ParallelRunStep's first releases' module
        sys.modules["entry_script"] = _module("entry_script", EntryScript=EntryScript)
        installed.append("entry_script")
    return installed

