"""parallelrun: serverless batch inference on AWS, in ParallelRunStep's words.

Scoring scripts may call ``parallelrun.get_model_path(name, version=None)`` to find a
registered model inside a worker. The SDK: ``from parallelrun import Client, ParallelRunConfig,
FileDataset, Model`` (see :mod:`parallelrun.client.sdk`).
"""

from typing import Any

from parallelrun.core.errors import ParallelRunError

_SDK = {"Client": "parallelrun.client.api", "ParallelRunConfig": "parallelrun.client.sdk", "FileDataset": "parallelrun.client.sdk",
        "TabularDataset": "parallelrun.client.sdk", "Model": "parallelrun.client.sdk", "Job": "parallelrun.client.sdk",
        "Pipeline": "parallelrun.client.sdk", "PipelineRun": "parallelrun.client.sdk",
        "PipelineStep": "parallelrun.client.sdk"}


def __getattr__(name: str) -> Any:
    """The SDK's names, imported on first use: a scoring script's ``import parallelrun`` stays cheap."""
    if name in _SDK:
        import importlib

        return getattr(importlib.import_module(_SDK[name]), name)
    raise AttributeError(f"module 'parallelrun' has no attribute {name!r}")


def get_model_path(model_name: str, version: int | None = None) -> str:
    """Local path of a registered model (a file for a single-file model, else a folder).

    Imported lazily so that ``import parallelrun`` stays cheap in a Lambda's Init phase.
    """
    from parallelrun.scoring.modelfiles import get_model_path as _get_model_path

    return _get_model_path(model_name, version)


def load_model(name: str | None = None, version: int | None = None, loader: Any = None) -> Any:
    """The mini-batch's partition's model (or model ``name``), loaded once and kept in the
    scoring process's cache, least recently used out first (see :mod:`parallelrun.scoring.loaded`)."""
    from parallelrun.scoring.loaded import load_model as _load_model

    return _load_model(name, version, loader)


__all__ = ["Client", "FileDataset", "Job", "Model", "ParallelRunConfig", "ParallelRunError", "TabularDataset",
           "get_model_path", "load_model"]
