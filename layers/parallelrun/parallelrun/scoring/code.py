"""What a scoring process runs with, on local disk: the scoring code, unpacked from its zip and
checked against it, and the job's side inputs.

The code arrives as a zip stored under its SHA-256; every time a scoring process starts, the
unpacked files are checked against the zip's before anything in them is imported (DESIGN
invariant 9: a script runs as the same user, so it could change them).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import zipfile
from pathlib import Path

from parallelrun import aws
from parallelrun.aws import s3
from parallelrun.aws.config import StackConfig
from parallelrun.core import safepath
from parallelrun.core.datasets import split_s3_uri
from parallelrun.core.errors import IntegrityError
from parallelrun.store import keys


def fetch_side_inputs(uris: dict[str, str]) -> dict[str, str]:
    """Each side input on local disk, fetched once per machine: an object → a file, a prefix
    (ending in '/') → a folder of its objects."""
    paths = {}
    for name, uri in uris.items():
        bucket, key = split_s3_uri(uri)
        folder = safepath.SIDE_INPUTS / hashlib.sha256(uri.encode()).hexdigest()[:16]
        target = safepath.inside(folder, name, f"side input {uri}: the name")
        done = folder / ".complete"
        if not done.exists():
            if key.endswith("/") or not key:
                aws.download_prefix(bucket, key, target)
                target.mkdir(parents=True, exist_ok=True)
            else:
                folder.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, key, target)
            done.touch()
        paths[name] = str(target)
    return paths


# The files of each code zip this process has verified, by SHA-256: what an unpacked folder on
# disk (which a script could change, since it runs as the same user) must still hold.
_manifests: dict[str, dict[str, str]] = {}


def code_dir(cfg: StackConfig, sha: str) -> Path:
    """The scoring code, unpacked once per machine from its zip after checking the zip's SHA-256,
    and checked file by file against the zip each time a scoring process is to import it. A file
    changed, added or removed since fails the attempt (:class:`IntegrityError`) and the folder is
    removed, so the next attempt unpacks the zip again."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise IntegrityError(f"scoring code {sha!r} is not named by a SHA-256")
    target = safepath.CODE / sha
    if sha not in _manifests or not target.exists():
        data = s3.get(cfg.artifacts_bucket, keys.code_key(sha))
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha:
            raise IntegrityError(f"scoring code {keys.code_key(sha)} has SHA-256 {actual}: refusing to import it")
        if not target.exists():
            _unpack(data, target)
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            _manifests[sha] = {info.filename: hashlib.sha256(archive.read(info)).hexdigest()
                               for info in archive.infolist() if not info.is_dir()}
    _check_unpacked(sha, target, _manifests[sha])
    return target


def _unpack(data: bytes, target: Path) -> None:
    """The zip into ``target``, every member name through :func:`safepath.inside` (a zip's names
    are as untrusted as keys), via a staging folder so ``target`` is whole or absent."""
    staging = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            path = safepath.inside(staging, info.filename.rstrip("/"), f"scoring code {target.name}.zip: the member")
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(archive.read(info))
    safepath.make_read_only(staging)
    try:
        staging.rename(target)
    except OSError:  # another process unpacked it first; its copy is checked like ours
        shutil.rmtree(staging, ignore_errors=True)


def _check_unpacked(sha: str, target: Path, manifest: dict[str, str]) -> None:
    present = {p.relative_to(target).as_posix(): p for p in target.rglob("*") if p.is_file() or p.is_symlink()}
    wrong = [(name, "is missing") for name in sorted(set(manifest) - set(present))]
    for name, path in sorted(present.items()):
        try:
            actual = None if path.is_symlink() else hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:  # removed while read (another local worker found the folder changed)
            wrong.append((name, "is missing"))
            continue
        if actual is None or actual != manifest.get(name):
            wrong.append((name, f"has SHA-256 {actual}" if actual else "is a symbolic link"))
    if wrong:
        shutil.rmtree(target, ignore_errors=True)
        name, found = wrong[0]
        expected = f"has SHA-256 {manifest[name]}" if name in manifest else "does not exist"
        more = f" ({len(wrong) - 1} more files differ)" if len(wrong) > 1 else ""
        raise IntegrityError(
            f"scoring code {target}: {name} {found}, but in {keys.code_key(sha)} it {expected}{more}: refusing to "
            "import it (the folder is removed; the next attempt unpacks the zip again)")
