"""The model registry: register a file or folder under a name → versions 1, 2, ...

Versions live in the table (``MODEL#<name>``/``V#<version>``); the files in the artifacts bucket
under ``models/<name>/<version>/``. Inside a worker, :func:`get_model_path` downloads a version
once per process and returns a local path, as Azure's ``Model.get_model_path`` does; the files
are checked against the version's SHA-256 every time a path is handed out.
"""

from __future__ import annotations

import collections
import hashlib
import posixpath
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parallelrun import aws
from parallelrun.aws import dynamo
from parallelrun.aws.config import StackConfig
from parallelrun.core import safepath
from parallelrun.core.errors import InputError, IntegrityError, NotFoundError
from parallelrun.store import keys

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


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

    @property
    def prefix(self) -> str:
        return keys.model_prefix(self.name, self.version)

    def to_item(self) -> dict[str, Any]:
        return {
            **keys.model_key(self.name, self.version), "name": self.name,
            "version": self.version, "sha256": self.sha256, "files": list(self.files),
            "single_file": self.single_file, "tags": self.tags, "description": self.description,
            "created_at": dynamo.decimal(self.created_at, 3), "archived": self.archived,
        }

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> ModelVersion:
        return cls(
            name=item["name"], version=int(item["version"]), sha256=item["sha256"],
            files=tuple(item["files"]), single_file=bool(item["single_file"]),
            tags=dict(item.get("tags") or {}), description=item.get("description", ""),
            created_at=float(item.get("created_at", 0)), archived=bool(item.get("archived", False)),
        )


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``digits`` → (digits, None = latest); ``digits:3`` → (digits, 3)."""
    name, _, version = ref.partition(":")
    if not _NAME.match(name) or (version and not version.isdigit()):
        raise InputError(f"model {ref!r}: write NAME or NAME:VERSION, e.g. digits or digits:2")
    return name, int(version) if version else None


def _content(path: Path) -> tuple[list[str], str]:
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
    cfg: StackConfig, path: str | Path, name: str, tags: dict[str, str] | None = None, description: str = ""
) -> ModelVersion:
    """Upload ``path`` (a local file or folder, or an ``s3://`` object or prefix such as a
    training job's output) as the next version of model ``name``."""
    if str(path).startswith("s3://"):
        with tempfile.TemporaryDirectory() as tmp:
            return register(cfg, _download(str(path), Path(tmp)), name, tags, description)
    path = Path(path)
    if not _NAME.match(name):
        raise InputError(f"model name {name!r}: use letters, digits, '_', '.', '-' (at most 64, starting alphanumeric)")
    if not path.exists():
        raise InputError(f"model path {path} does not exist")
    files, sha = _content(path)
    counter = dynamo.update(cfg.table, keys.model_counter_key(name), "ADD latest :one", {":one": 1},
                            returns="UPDATED_NEW")
    model = ModelVersion(
        name=name, version=int(counter["latest"]), sha256=sha, files=tuple(files),
        single_file=path.is_file(), tags=dict(tags or {}), description=description, created_at=time.time(),
    )
    s3 = aws.client("s3")
    for rel in files:
        source = path if path.is_file() else path / rel
        s3.upload_file(str(source), cfg.artifacts_bucket, model.prefix + rel)
    dynamo.put(cfg.table, model.to_item())
    return model


def _download(uri: str, folder: Path) -> Path:
    """An S3 object (→ that file) or prefix (→ a folder of its objects) on local disk."""
    bucket, key = aws.split_s3_uri(uri)
    s3 = aws.client("s3")
    if key and not key.endswith("/"):
        try:
            s3.head_object(Bucket=bucket, Key=key)
            target = safepath.inside(folder, posixpath.basename(key), f"model {uri}: the name")
            s3.download_file(bucket, key, str(target))
            return target
        except s3.exceptions.ClientError:
            key += "/"
    root = folder / "model"
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


# --- inside a worker process

_download_lock = threading.Lock()
_downloaded: dict[tuple[str, int], str] = {}
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
    key = (model.name, model.version)
    root = _root(model.name, model.version)
    done = _complete(root)
    with _download_lock:
        for last in (False, True):
            if not done.exists():
                s3 = aws.client("s3")
                for rel in model.files:
                    target = safepath.inside(root, rel, f"model {model.name}:{model.version}: the file")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    s3.download_file(cfg.artifacts_bucket, model.prefix + rel, str(target))
                safepath.make_read_only(root)
                done.touch()
            found = _mismatch(model, root)
            if found is None:
                break
            _downloaded.pop(key, None)
            done.unlink(missing_ok=True)
            if found == _GONE and not last:
                continue  # evicted meanwhile by another local worker sharing this disk: fetch it again
            shutil.rmtree(root, ignore_errors=True)
            raise IntegrityError(
                f"model {model.name}:{model.version} on local disk ({root}) {found} {model.sha256}, the SHA-256 "
                f"s3://{model.prefix} was registered with: refusing to load it (the copy is removed; the next "
                "attempt downloads it again)")
        _downloaded[key] = str(root / model.files[0]) if model.single_file else str(root)
    return _downloaded[key]


_GONE = "lacks some of its files, so not SHA-256"


def _mismatch(model: ModelVersion, root: Path) -> str | None:
    """How the model's folder differs from its registered files and SHA-256, or None."""
    try:
        present = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        if present == sorted(model.files):
            actual = _content(root / model.files[0] if model.single_file else root)[1]
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
            _downloaded.pop((name, version), None)
            root = _root(name, version)
            _complete(root).unlink(missing_ok=True)  # first: nobody takes a half-deleted model for whole
            shutil.rmtree(root, ignore_errors=True)
    return path


def get_model_path(model_name: str, version: int | None = None) -> str:
    """What a scoring script calls: the local path of a registered model."""
    if model_name in pinned and version in (None, pinned[model_name][0]):
        return pinned[model_name][1]
    cfg = StackConfig.from_env()
    return local_path(cfg, get(cfg, model_name, version))


# --- a model per partition (many-models)

_RESOLVE_TTL = 60.0  # seconds a worker trusts a partition's resolved model before asking again
_resolved: dict[tuple[str, tuple], tuple[float, ModelVersion]] = {}


def is_per_partition(ref: str) -> bool:
    """``sales-{store}`` (a name template) or ``tags:store={store}`` choose a model per partition."""
    return "{" in ref or ref.startswith("tags:")


@dataclass(frozen=True)
class ModelSelector:
    """How a deployment picks each partition's model, resolved when the mini-batch runs: the
    latest version of the model the template names, or of the one model whose tags match."""

    ref: str

    @property
    def tags(self) -> dict[str, str] | None:
        if not self.ref.startswith("tags:"):
            return None
        pairs = (pair.partition("=") for pair in self.ref[len("tags:"):].split(","))
        return {key.strip(): value.strip() for key, _, value in pairs}

    @property
    def fields(self) -> tuple[str, ...]:
        from parallelrun.core.partitions import template_fields

        return template_fields(self.ref)

    def resolve(self, cfg: StackConfig, partition: dict[str, Any] | None) -> ModelVersion:
        """The partition's model; :class:`NotFoundError` says which model it looked for."""
        from parallelrun.core.partitions import fill

        key = (self.ref, tuple(sorted((partition or {}).items())))
        cached = _resolved.get(key)
        if cached and time.time() - cached[0] < _RESOLVE_TTL:
            return cached[1]
        if partition is None:
            raise NotFoundError(f"no partition: the input does not match partition_format, so no model "
                                f"can be chosen by {self.ref!r}")
        tags = self.tags
        if tags is None:
            name = fill(self.ref, partition)
            try:
                model = get(cfg, name)
            except NotFoundError:
                raise NotFoundError(f"no model for partition {partition}: register one named {name!r}") from None
        else:
            wanted = {k: fill(v, partition) for k, v in tags.items()}
            found = [m for m in list_models(cfg, wanted) if not m.archived]
            names = sorted({m.name for m in found})
            if not names:
                shown = ",".join(f"{k}={v}" for k, v in wanted.items())
                raise NotFoundError(f"no model for partition {partition}: register one tagged {shown}")
            if len(names) > 1:
                raise NotFoundError(f"partition {partition}: models {names} all carry tags {wanted}; "
                                    "tag exactly one, or archive the others")
            model = max(found, key=lambda m: m.version)
        _resolved[key] = (time.time(), model)
        return model


def parse_selector(ref: str) -> ModelSelector:
    """A per-partition model reference, checked: ``sales-{store}`` or ``tags:k={field},k2=v``."""
    from parallelrun.core.partitions import fill

    selector = ModelSelector(ref.strip())
    sample = {name: "x" for name in selector.fields}
    tags = selector.tags
    if tags is not None:
        well_formed = all(_NAME.match(k) and v and set("{}") & set(fill(v, sample)) == set() for k, v in tags.items())
    else:
        well_formed = bool(selector.fields) and bool(_NAME.match(fill(selector.ref, sample)))
    if not well_formed:
        raise InputError(f"model {ref!r}: a model per partition is a name template such as sales-{{store}} or "
                         "tags such as tags:store={store},kind=forecast")
    return selector
