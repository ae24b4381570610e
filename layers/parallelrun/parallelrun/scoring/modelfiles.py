"""A worker's copies of registered models on local disk: each version downloaded once per
process and checked against its registered SHA-256 every time its path is handed out.

:func:`get_model_path` is what a scoring script calls (as Azure's ``Model.get_model_path``;
inside a scoring process a lookup is asked of the worker, :data:`ask_worker`);
:func:`partition_model_path` keeps the many models of a job that picks one per partition within
the job's disk budget. The models a scoring process keeps *loaded* are :mod:`parallelrun.scoring.loaded`.
"""

from __future__ import annotations

import collections
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from parallelrun.aws import s3
from parallelrun.aws.config import StackConfig
from parallelrun.core import safepath
from parallelrun.core.errors import IntegrityError
from parallelrun.store import registry
from parallelrun.store.registry import ModelVersion


_download_lock = threading.Lock()
# The deployment's model, already downloaded by the worker: inside a job, get_model_path(name)
# means the job's version (registering a newer one mid-job changes nothing) and costs no call.
pinned: dict[str, tuple[int, str]] = {}


def _version_dir(name: str, version: int) -> Path:
    """A version's folder: what AZUREML_MODEL_DIR names, holding only the model itself, the
    registered folder under its own name or the single file (Azure's layout:
    https://learn.microsoft.com/en-us/azure/machine-learning/how-to-batch-scoring-script)."""
    return safepath.inside(safepath.MODELS, f"{name}/{version}", "model")


def _complete(folder: Path) -> Path:
    """The marker of a whole download: beside the version's folder, never in it, so the folder
    holds exactly the model (what a script's ``glob(AZUREML_MODEL_DIR + "/*/")`` finds)."""
    return folder.with_name(folder.name + ".complete")


def _files(model: ModelVersion) -> list[str]:
    """The model's files relative to its version's folder."""
    return list(model.files) if model.single_file else [f"{model.folder}/{rel}" for rel in model.files]


def local_path(cfg: StackConfig, model: ModelVersion) -> str:
    """Download ``model`` once per process and check its files against its SHA-256 on every
    call (:class:`IntegrityError` naming both hashes; the copy is dropped, so the next attempt
    downloads it again); a file path for a single-file model, else its folder, each inside the
    version's folder (see :func:`_version_dir`)."""
    folder = _version_dir(model.name, model.version)
    done = _complete(folder)
    path = safepath.inside(folder, model.local_name, f"model {model.name}:{model.version}: the name")
    with _download_lock:
        for last in (False, True):
            if not done.exists():
                for rel in model.files:
                    target = safepath.inside(path if not model.single_file else folder, rel,
                                             f"model {model.name}:{model.version}: the file")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    s3.download_file(cfg.artifacts_bucket, model.prefix + rel, target)
                safepath.make_read_only(folder)
                done.touch()
            found = _mismatch(model, folder, path)
            if found is None:
                break
            done.unlink(missing_ok=True)
            if found == _GONE and not last:
                continue  # evicted meanwhile by another local worker sharing this disk: fetch it again
            shutil.rmtree(folder, ignore_errors=True)
            raise IntegrityError(
                f"model {model.name}:{model.version} on local disk ({folder}) {found} {model.sha256}, the SHA-256 "
                f"s3://{model.prefix} was registered with: refusing to load it (the copy is removed; the next "
                "attempt downloads it again)")
    return str(path)


_GONE = "lacks some of its files, so not SHA-256"


def _mismatch(model: ModelVersion, folder: Path, path: Path) -> str | None:
    """How the version's folder differs from the model's registered files and SHA-256, or None."""
    try:
        present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        if present == sorted(_files(model)):
            actual = registry.content(path)[1]
            return None if actual == model.sha256 else f"has SHA-256 {actual}"
    except OSError:  # a file removed while it was read
        return _GONE
    if set(present) < set(_files(model)):
        return _GONE
    return f"holds other files ({', '.join(present)}), so not SHA-256"


def disk_size(path: str) -> int:
    """Bytes of a model's files: one file, or every file under its folder."""
    root = Path(path)
    return root.stat().st_size if root.is_file() else sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# Partition models on this machine's disk, least recently used first, with their sizes.
_on_disk: collections.OrderedDict[tuple[str, int], int] = collections.OrderedDict()


def partition_model_path(cfg: StackConfig, model: ModelVersion, limit_bytes: int) -> str:
    """:func:`local_path` for a partition's model, keeping partition models on disk within
    ``limit_bytes`` (least recently used removed first; the one asked for always stays)."""
    path = local_path(cfg, model)
    key = (model.name, model.version)
    _on_disk[key] = disk_size(path)
    _on_disk.move_to_end(key)
    while len(_on_disk) > 1 and sum(_on_disk.values()) > limit_bytes:
        (name, version), _ = _on_disk.popitem(last=False)
        with _download_lock:
            folder = _version_dir(name, version)
            _complete(folder).unlink(missing_ok=True)  # first: nobody takes a half-deleted model for whole
            shutil.rmtree(folder, ignore_errors=True)
    return path


def get_model_path(model_name: str, version: int | None = None) -> str:
    """What a scoring script calls: the local path of a registered model."""
    if model_name in pinned and version in (None, pinned[model_name][0]):
        return pinned[model_name][1]
    return find(model_name, version)[1]


# Inside a scoring process, a question to its worker (request, arguments) → the answer: the
# worker reads the registry with its own role, which the scoring process's credentials cannot.
ask_worker: Callable[[str, tuple], Any] | None = None


def find(model_name: str, version: int | None = None) -> tuple[ModelVersion, str]:
    """A registered version (the latest when ``version`` is None) and its verified local path."""
    if ask_worker is not None:
        return ask_worker("model", (model_name, version))
    cfg = StackConfig.from_env()
    model = registry.get(cfg, model_name, version)
    return model, local_path(cfg, model)


def listed(name: str | None, tags: list[tuple[str, str | None]], latest: bool) -> list[ModelVersion]:
    """The registry's versions matching, as :func:`parallelrun.store.registry.find`."""
    if ask_worker is not None:
        return ask_worker("models", (name, tags, latest))
    return registry.find(StackConfig.from_env(), name, tags, latest)
