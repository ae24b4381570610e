"""parallelrun: serverless batch inference on AWS, in ParallelRunStep's words.

Scoring scripts may call ``parallelrun.get_model_path(name, version=None)`` to find a
registered model inside a worker.
"""

from parallelrun.errors import ParallelRunError


def get_model_path(model_name: str, version: int | None = None) -> str:
    """Local path of a registered model (a file for a single-file model, else a folder).

    Imported lazily so that ``import parallelrun`` stays cheap in a Lambda's Init phase.
    """
    from parallelrun.registry import get_model_path as _get_model_path

    return _get_model_path(model_name, version)


__all__ = ["ParallelRunError", "get_model_path"]
