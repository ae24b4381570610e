"""Azure ML entry scripts run unchanged: the modules they import, provided inside the scoring
process only, and only where no real package of that name can be imported.

- ``from azureml.core import Model`` / ``from azureml.core.model import Model``:
  ``Model.get_model_path(model_name, version=None)`` resolves from parallelrun's registry (a file
  for a single-file model, else a folder), as Azure does.
- ``from azureml.core import Run``: ``Run.get_context()`` gives an offline run whose ``log()``
  writes a log line.
- ``from azureml_user.parallel_run import EntryScript``: ``.logger`` (its lines carry the job and
  mini-batch), ``.output_dir`` and ``.log_dir`` (folders whose files are collected into the
  job's output), ``.working_dir``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import types
from typing import Any

from parallelrun.scoring import modelfiles

OUTPUT_DIR_VAR = "PARALLELRUN_ENTRY_OUTPUT_DIR"
LOG_DIR_VAR = "PARALLELRUN_ENTRY_LOG_DIR"


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class Model:
    """The part of ``azureml.core.Model`` an entry script uses."""

    @staticmethod
    def get_model_path(model_name: str, version: int | None = None, _workspace: Any = None) -> str:
        return modelfiles.get_model_path(model_name, int(version) if version is not None else None)


class _OfflineRun:
    def log(self, name: str, value: Any, description: str = "") -> None:
        logging.getLogger("azureml.core.run").info("%s = %s", name, value)

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None  # the rest of a Run's API does nothing offline


class Run:
    @staticmethod
    def get_context(allow_offline: bool = True) -> _OfflineRun:
        return _OfflineRun()


class EntryScript:
    """What ``azureml_user.parallel_run.EntryScript`` gives a script."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("azureml_user.entry_script")
        self.output_dir = os.environ.get(OUTPUT_DIR_VAR, os.getcwd())
        self.log_dir = os.environ.get(LOG_DIR_VAR, os.getcwd())
        self.working_dir = os.getcwd()


def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    module.__path__ = []  # a package, so its submodules import
    return module


def install() -> list[str]:
    """Put the shims in ``sys.modules`` where the real packages are absent; the names installed."""
    installed = []
    if not _importable("azureml.core"):
        core = _module("azureml.core", Model=Model, Run=Run)
        sys.modules.update({
            "azureml": _module("azureml", core=core),
            "azureml.core": core,
            "azureml.core.model": _module("azureml.core.model", Model=Model),
            "azureml.core.run": _module("azureml.core.run", Run=Run),
        })
        installed.append("azureml.core")
    if not _importable("azureml_user.parallel_run"):
        parallel_run = _module("azureml_user.parallel_run", EntryScript=EntryScript)
        sys.modules.update({
            "azureml_user": _module("azureml_user", parallel_run=parallel_run),
            "azureml_user.parallel_run": parallel_run,
        })
        installed.append("azureml_user.parallel_run")
    return installed
