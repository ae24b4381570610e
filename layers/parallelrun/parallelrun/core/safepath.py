"""Where a worker keeps things on local disk, and the one way a name from outside becomes a path.

DESIGN invariant 9: an S3 key (an input, a side input, a model file, a member of the code
zip) is chosen by whoever wrote the object, so it never names a path by itself. A key such as
``ep/folder//tmp/parallelrun/code/<sha>/score.py`` has the relative name
``/tmp/parallelrun/code/<sha>/score.py``; joined to a folder with ``/`` it *is* that absolute
path, and writing there would plant code for the next scoring process. :func:`inside` refuses
such names before anything is written.

Inputs, code, models and side inputs live under separate roots, so a name that is refused in one
can never reach another; what a scoring script could still change there (it runs as the same
user on Lambda) is caught by checking each code bundle and model file against its SHA-256 every
time a scoring process loads it (``scoring.code.code_dir``, ``scoring.modelfiles.local_path``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from parallelrun.core.errors import UnsafeKey

CACHE_ROOT = Path(os.environ.get("PARALLELRUN_CACHE", "/tmp/parallelrun"))
INPUTS = CACHE_ROOT / "inputs"  # a mini-batch's fetched files, removed after it
CODE = CACHE_ROOT / "code"  # verified scoring code, unpacked fresh for each scoring process
MODELS = CACHE_ROOT / "models"  # registered models, checked on every load
SIDE_INPUTS = CACHE_ROOT / "side"  # side inputs, fetched once per machine
ENTRY = CACHE_ROOT / "entry"  # EntryScript().output_dir and log_dir, collected after each mini-batch
ENVS = CACHE_ROOT / "envs"  # deployments' virtual environments, one per requirements hash, built once


def unsafe_reason(name: str) -> str | None:
    """Why ``name`` (a relative, '/'-separated name) cannot name a file below a folder, or None."""
    if not name:
        return "it is empty"
    if "\0" in name:
        return "it holds a NUL character"
    if "\\" in name:
        return "it holds a backslash"
    if name.startswith("/"):
        return "it is an absolute name"
    segments = name.split("/")
    if any(segment == "" for segment in segments):
        return "it has an empty segment ('//' or a trailing '/')"
    if any(segment in (".", "..") for segment in segments):
        return "it has a '.' or '..' segment"
    return None


def inside(folder: Path, name: str, what: str = "key") -> Path:
    """``folder / name`` for a name that came from outside, refused (:class:`UnsafeKey`,
    naming ``what`` and the name) unless it stays inside ``folder`` once resolved, symbolic links
    included."""
    reason = unsafe_reason(name)
    if reason is None:
        root = folder.resolve()
        target = (root / name).resolve()
        if target == root or root not in target.parents:
            reason = "it leads outside its folder"
        else:
            return folder / name
    raise UnsafeKey(f"{what} {name!r} cannot be a local file name: {reason}")


def make_read_only(path: Path) -> None:
    """Files the scoring script is given to read (its code, its models) are made read-only, so
    a script that writes to them by mistake fails at once; tampering on purpose is caught by the
    SHA-256 checks."""
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        file.chmod(file.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
