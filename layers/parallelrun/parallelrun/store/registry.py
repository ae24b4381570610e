"""The model registry: register a file or folder under a name → versions 1, 2, ...

Versions live in the table (``MODEL#<name>``/``V#<version>``); the files in the artifacts bucket
under ``models/<name>/<version>/``. A worker's copies on local disk are
:mod:`parallelrun.scoring.modelfiles`; choosing a model per partition is :mod:`parallelrun.scoring.selection`.
"""

from __future__ import annotations

import hashlib
import posixpath
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from parallelrun import aws
from parallelrun.aws import dynamo, s3
from parallelrun.aws.config import StackConfig
from parallelrun.core import safepath
from parallelrun.core.datasets import split_s3_uri
from parallelrun.core.errors import InputError, NotFoundError
from parallelrun.store import keys
from parallelrun.core.model_refs import MODEL_NAME



# The folder name a folder model registered before versions kept theirs is given: the name
# Azure's own samples register their folders under, and the one an S3 prefix was always given.
DEFAULT_FOLDER = "model"


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    sha256: str
    files: tuple[str, ...]  # paths relative to the model's root; one file = a single-file model
    single_file: bool
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""
    created_at: float = 0.0
    archived: bool = False
    # A folder model's own name ("" for a single file): Azure puts it at AZUREML_MODEL_DIR/<folder>/...,
    # so scripts join or glob it (https://learn.microsoft.com/en-us/azure/machine-learning/how-to-batch-scoring-script).
    folder: str = DEFAULT_FOLDER

    @property
    def prefix(self) -> str:
        return keys.model_prefix(self.name, self.version)

    @property
    def local_name(self) -> str:
        """What the model is called on local disk, below its version's folder: its file's name,
        or its folder's."""
        return self.files[0] if self.single_file else self.folder

    def to_item(self) -> dict[str, Any]:
        return {
            **keys.model_key(self.name, self.version), "name": self.name,
            "version": self.version, "sha256": self.sha256, "files": list(self.files),
            "single_file": self.single_file, "tags": self.tags, "description": self.description,
            "created_at": dynamo.decimal(self.created_at, 3), "archived": self.archived, "folder": self.folder,
        }

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> ModelVersion:
        return cls(
            name=item["name"], version=int(item["version"]), sha256=item["sha256"],
            files=tuple(item["files"]), single_file=bool(item["single_file"]),
            tags=dict(item.get("tags") or {}), description=item.get("description", ""),
            created_at=float(item.get("created_at", 0)), archived=bool(item.get("archived", False)),
            folder=item.get("folder", DEFAULT_FOLDER),
        )


def content(path: Path) -> tuple[list[str], str]:
    """The model's files (relative, sorted) and one SHA-256 over names and contents."""
    if path.is_file():
        return [path.name], hashlib.sha256(path.read_bytes()).hexdigest()
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    if not files:
        raise InputError(f"model folder {path} holds no files")
    digest = hashlib.sha256()
    for rel in files:
        digest.update(rel.encode() + b"\0" + hashlib.sha256((path / rel).read_bytes()).digest())
    return files, digest.hexdigest()


def register(
    cfg: StackConfig, path: str | Path, name: str, tags: dict[str, str] | None = None, description: str = "",
    claim: str | None = None,
) -> ModelVersion:
    """Upload ``path`` (a local file or folder, or an ``s3://`` object or prefix such as a
    training job's output) as the next version of model ``name``.

    With ``claim`` (a name for this one registration, such as a mini-batch's), registering again
    under the same claim makes no second version: it returns the version the first made. The
    claim and the version are written in one transaction, so of two registrations racing under
    one claim exactly one version is recorded; the loser's number stays unused."""
    if str(path).startswith("s3://"):
        with tempfile.TemporaryDirectory() as tmp:
            return register(cfg, _download(str(path), Path(tmp)), name, tags, description, claim)
    path = Path(path)
    if not MODEL_NAME.match(name):
        raise InputError(f"model name {name!r}: use letters, digits, '_', '.', '-' (at most 64, starting alphanumeric)")
    if not path.exists():
        raise InputError(f"model path {path} does not exist")
    if claim is not None and (made := _claimed(cfg, name, claim)) is not None:
        return made
    files, sha = content(path)
    counter = dynamo.update(cfg.table, keys.model_counter_key(name), "ADD latest :one", {":one": 1},
                            returns="UPDATED_NEW")
    model = ModelVersion(
        name=name, version=int(counter["latest"]), sha256=sha, files=tuple(files),
        single_file=path.is_file(), tags=dict(tags or {}), description=description, created_at=time.time(),
        folder=(path.resolve().name or DEFAULT_FOLDER) if path.is_dir() else "",
    )
    for rel in files:
        s3.upload_file(path if path.is_file() else path / rel, cfg.artifacts_bucket, model.prefix + rel)
    if claim is None:
        dynamo.put(cfg.table, model.to_item())
        return model
    new = "attribute_not_exists(pk)"
    try:
        dynamo.transact([
            {"Put": {"TableName": cfg.table, "Item": dynamo.serialize(model.to_item()), "ConditionExpression": new}},
            {"Put": {"TableName": cfg.table, "ConditionExpression": new, "Item": dynamo.serialize(
                {**keys.model_claim_key(name, claim), "version": model.version})}},
        ])
    except Exception as error:
        if not dynamo.is_conditional_failure(error):
            raise
        # Another registration under this claim won: this number stays unused. Its files stay
        # under a prefix no version names (the worker, which registers, may not delete objects).
        made = _claimed(cfg, name, claim)
        assert made is not None, "a lost claim names the version that won it"
        return made
    return model


def _claimed(cfg: StackConfig, name: str, claim: str) -> ModelVersion | None:
    item = dynamo.get(cfg.table, keys.model_claim_key(name, claim), consistent=True)
    return get(cfg, name, int(item["version"])) if item else None


def _download(uri: str, folder: Path) -> Path:
    """An S3 object (→ that file) or prefix (→ a folder of its objects) on local disk."""
    bucket, key = split_s3_uri(uri)
    if key and not key.endswith("/"):
        try:
            s3.head(bucket, key)
            target = safepath.inside(folder, posixpath.basename(key), f"model {uri}: the name")
            s3.download_file(bucket, key, target)
            return target
        except ClientError:
            key += "/"
    # The prefix's last segment names the folder, as a local folder's name does.
    root = safepath.inside(folder, posixpath.basename(key.rstrip("/")) or DEFAULT_FOLDER, f"model {uri}: the folder")
    if not aws.download_prefix(bucket, key, root):
        raise InputError(f"model {uri}: no object there")
    return root


def get(cfg: StackConfig, name: str, version: int | None = None) -> ModelVersion:
    """A version of a model; the latest when ``version`` is None."""
    if version is not None:
        item = dynamo.get(cfg.table, keys.model_key(name, version))
    else:  # the newest version not archived (a model has few versions: read them all)
        items = dynamo.query_prefix(cfg.table, keys.model_pk(name), keys.VERSION_PREFIX, ScanIndexForward=False)
        item = next((i for i in items if not i.get("archived")), None)
    if not item:
        what = f"model {name!r}" + (f" version {version}" if version is not None else "")
        raise NotFoundError(f"no {what}: register it with `parallelrun models register PATH --name {name}`")
    return ModelVersion.from_item(item)


def archive(cfg: StackConfig, name: str, version: int) -> ModelVersion:
    """Hide a version from "latest" (jobs that pinned it keep working)."""
    model = get(cfg, name, version)
    dynamo.update(cfg.table, keys.model_key(name, version), "SET archived = :t", {":t": True})
    return get(cfg, name, model.version)


def list_models(cfg: StackConfig, tags: dict[str, str] | None = None) -> list[ModelVersion]:
    items = dynamo.scan(cfg.table, FilterExpression="begins_with(pk, :m) AND begins_with(sk, :v)",
                        ExpressionAttributeValues={":m": keys.MODEL_PREFIX, ":v": keys.VERSION_PREFIX})
    found = (ModelVersion.from_item(i) for i in items)
    wanted = tags or {}
    return sorted((m for m in found if all(m.tags.get(k) == v for k, v in wanted.items())),
                  key=lambda m: (m.name, m.version))


def find(cfg: StackConfig, name: str | None = None, tags: list[tuple[str, str | None]] | tuple = (),
         latest: bool = False) -> list[ModelVersion]:
    """The versions not archived that match, as Azure's ``Model.list`` filters: ``name``, and
    each tag ``(key, value)``, or ``(key, None)`` for any value of ``key``; with ``latest`` only
    each name's newest. One Scan (or one Query for a name): a registry holds few items."""
    if name is not None:
        items = dynamo.query_prefix(cfg.table, keys.model_pk(name), keys.VERSION_PREFIX)
        candidates = [ModelVersion.from_item(i) for i in items]
    else:
        candidates = list_models(cfg, {k: v for k, v in tags if v is not None})
    found = [m for m in candidates if not m.archived and all(k in m.tags and v in (None, m.tags[k]) for k, v in tags)]
    if latest:
        newest: dict[str, ModelVersion] = {}
        for model in found:
            if model.name not in newest or model.version > newest[model.name].version:
                newest[model.name] = model
        found = list(newest.values())
    return sorted(found, key=lambda m: (m.name, m.version))
