"""A worker's copies of registered models on local disk: each version downloaded once per
process and checked against its registered SHA-256 every time its path is handed out.

:func:`get_model_path` is what a scoring script calls (as Azure's ``Model.get_model_path``);
:func:`partition_model_path` keeps the many models of a job that picks one per partition within
the job's disk budget. The models a scoring process keeps *loaded* are :mod:`parallelrun.scoring.loaded`.
"""

from __future__ import annotations

import collections
import shutil
import threading
from pathlib import Path

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


def _root(name: str, version: int) -> Path:
    return safepath.inside(safepath.MODELS, f"{name}/{version}", "model")


def _complete(root: Path) -> Path:
    """The marker of a whole download: beside the model's folder, never in it, so the folder
    holds exactly the model's files (what AZUREML_MODEL_DIR shows a script)."""
    return root.with_name(root.name + ".complete")


def local_path(cfg: StackConfig, model: ModelVersion) -> str:
    """Download ``model`` once per process and check its files against its SHA-256 on every
    call (:class:`IntegrityError` naming both hashes; the copy is dropped, so the next attempt
    downloads it again); a file path for a single-file model, else its folder."""
    root = _root(model.name, model.version)
    done = _complete(root)
    with _download_lock:
        for last in (False, True):
            if not done.exists():
                for rel in model.files:
                    target = safepath.inside(root, rel, f"model {model.name}:{model.version}: the file")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    s3.download_file(cfg.artifacts_bucket, model.prefix + rel, target)
                safepath.make_read_only(root)
                done.touch()
            found = _mismatch(model, root)
            if found is None:
                break
            done.unlink(missing_ok=True)
            if found == _GONE and not last:
                continue  # evicted meanwhile by another local worker sharing this disk: fetch it again
            shutil.rmtree(root, ignore_errors=True)
            raise IntegrityError(
                f"model {model.name}:{model.version} on local disk ({root}) {found} {model.sha256}, the SHA-256 "
                f"s3://{model.prefix} was registered with: refusing to load it (the copy is removed; the next "
                "attempt downloads it again)")
    return str(root / model.files[0]) if model.single_file else str(root)


_GONE = "lacks some of its files, so not SHA-256"


def _mismatch(model: ModelVersion, root: Path) -> str | None:
    """How the model's folder differs from its registered files and SHA-256, or None."""
    try:
        present = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        if present == sorted(model.files):
            actual = registry.content(root / model.files[0] if model.single_file else root)[1]
            return None if actual == model.sha256 else f"has SHA-256 {actual}"
    except OSError:  # a file removed while it was read
        return _GONE
    if set(present) < set(model.files):
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
            root = _root(name, version)
            _complete(root).unlink(missing_ok=True)  # first: nobody takes a half-deleted model for whole
            shutil.rmtree(root, ignore_errors=True)
    return path


def get_model_path(model_name: str, version: int | None = None) -> str:
    """What a scoring script calls: the local path of a registered model."""
    if model_name in pinned and version in (None, pinned[model_name][0]):
        return pinned[model_name][1]
    cfg = StackConfig.from_env()
    return local_path(cfg, registry.get(cfg, model_name, version))

