"""Models a scoring process keeps loaded, least recently used out first (many-models).

A job that picks a model per partition may meet hundreds of models; loading each for every
mini-batch is slow and keeping them all overflows memory. :func:`load_model` keeps loaded models
while their total weight stays within the job's ``model_cache_size``; a model's weight is the
size of its files on disk, the nearest measure of its size in memory known before loading it.
"""

from __future__ import annotations

import collections
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from parallelrun.core.errors import ScoringScriptError
from parallelrun.scoring.modelfiles import disk_size, get_model_path

Loader = Callable[[str], Any]

# The mini-batch's own model (name, version, local path), set before each run() of a job whose
# deployment picks a model per partition.
current: tuple[str, int | None, str] | None = None
_limit = 256 * 1024**2
_loaded: collections.OrderedDict[tuple[str, int | None], tuple[int, Any]] = collections.OrderedDict()


def configure(limit_bytes: int) -> None:
    global _limit
    _limit = limit_bytes


def default_loader(path: str) -> Any:
    """A pickled or joblib file; anything else needs the script's own loader."""
    if Path(path).suffix in (".joblib", ".jbl"):
        import joblib

        return joblib.load(path)
    if Path(path).suffix in (".pkl", ".pickle"):
        with open(path, "rb") as handle:
            return pickle.load(handle)
    raise ScoringScriptError(f"load_model: no default loader for {path}: pass loader=, a function of the path")


def load_model(name: str | None = None, version: int | None = None, loader: Loader | None = None) -> Any:
    """The loaded model: the mini-batch's partition's by default, else model ``name``; loaded
    once with ``loader`` (a function of its local path) and kept while the cache has room."""
    if name is None:
        if current is None:
            raise ScoringScriptError("load_model() without a name needs a deployment that picks a model per "
                                     "partition (such as sales-{store}); name the model otherwise")
        name, version, path = current
    else:
        path = None  # looked up only when the model is not loaded yet
    key = (name, version)
    if key in _loaded:
        _loaded.move_to_end(key)
        return _loaded[key][1]
    path = path or get_model_path(name, version)
    model = (loader or default_loader)(path)
    _loaded[key] = (disk_size(path), model)
    while len(_loaded) > 1 and sum(w for w, _ in _loaded.values()) > _limit:
        _loaded.popitem(last=False)  # the newest always stays: the running mini-batch needs it
    return model


def cached() -> list[tuple[str, int | None]]:
    """Names and versions held now, least recently used first."""
    return list(_loaded)
