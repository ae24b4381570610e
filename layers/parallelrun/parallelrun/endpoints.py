"""Batch endpoints: a name callers use, routed to its default deployment.

A deployment pins scoring code (a zip in the artifacts bucket, stored under its SHA-256), an
entry script, a model (name and version, or the latest at submit) and default settings.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
import zipfile
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from parallelrun import aws, registry, settings
from parallelrun.config import StackConfig
from parallelrun.errors import ConflictError, InputError, NotFoundError

_NAME = re.compile(r"^[a-z0-9][a-z0-9\-]{0,62}$")
DEFAULT_DEPLOYMENT = "default"
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Deployment:
    endpoint: str
    name: str
    code_sha: str
    entry_script: str
    model_name: str
    model_version: int | None
    settings: dict[str, Any] = field(default_factory=dict)  # overrides as given; re-checked at submit
    created_at: float = 0.0

    @property
    def code_key(self) -> str:
        return code_key(self.code_sha)

    def to_item(self) -> dict[str, Any]:
        return {
            "pk": f"ENDPOINT#{self.endpoint}", "sk": f"DEPLOYMENT#{self.name}", "endpoint": self.endpoint,
            "name": self.name, "code_sha": self.code_sha, "entry_script": self.entry_script,
            "model_name": self.model_name, "model_version": self.model_version,
            "settings": json.dumps(self.settings, sort_keys=True),
            "created_at": Decimal(str(round(self.created_at, 3))),
        }

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Deployment:
        version = item.get("model_version")
        return cls(
            endpoint=item["endpoint"], name=item["name"], code_sha=item["code_sha"],
            entry_script=item["entry_script"], model_name=item["model_name"],
            model_version=int(version) if version is not None else None,
            settings=json.loads(item.get("settings") or "{}"), created_at=float(item.get("created_at", 0)),
        )


def code_key(sha: str) -> str:
    return f"code/{sha}.zip"


def bundle(code_dir: Path) -> bytes:
    """The folder as a zip whose bytes depend only on names and contents (same code, same SHA)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in code_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(code_dir).as_posix()
            if "__pycache__" in rel.split("/") or rel.endswith(".pyc"):
                continue
            info = zipfile.ZipInfo(rel, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def upload_code(cfg: StackConfig, code_dir: Path) -> str:
    """Store the code bundle under its SHA-256 (once: the same code is never stored twice)."""
    data = bundle(code_dir)
    sha = hashlib.sha256(data).hexdigest()
    s3 = aws.client("s3")
    try:
        s3.put_object(Bucket=cfg.artifacts_bucket, Key=code_key(sha), Body=data, IfNoneMatch="*")
    except s3.exceptions.ClientError as error:
        if error.response["Error"]["Code"] not in ("PreconditionFailed", "ConditionalRequestConflict"):
            raise
    return sha


def create(
    cfg: StackConfig,
    name: str,
    code_dir: str | Path,
    entry_script: str,
    model_ref: str,
    overrides: dict[str, Any] | None = None,
    deployment: str = DEFAULT_DEPLOYMENT,
) -> Deployment:
    """Create endpoint ``name`` with one deployment, its default. Every part is checked first."""
    if not _NAME.match(name):
        raise InputError(f"endpoint name {name!r}: use lower-case letters, digits and '-' (it is a folder in the drop bucket)")
    code_dir = Path(code_dir)
    if not code_dir.is_dir():
        raise InputError(f"--code {code_dir}: not a folder")
    if not (code_dir / entry_script).is_file():
        raise InputError(f"--entry-script {entry_script}: no such file in {code_dir}")
    model_name, model_version = registry.parse_ref(model_ref)
    registry.get(cfg, model_name, model_version)  # refuse an unknown model now, not at the first job
    overrides = dict(overrides or {})
    settings.resolve(overrides, limits=cfg.limits)
    found = Deployment(
        endpoint=name, name=deployment, code_sha=upload_code(cfg, code_dir), entry_script=entry_script,
        model_name=model_name, model_version=model_version, settings=overrides, created_at=time.time(),
    )
    table = aws.table(cfg.table)
    try:
        table.put_item(
            Item={"pk": f"ENDPOINT#{name}", "sk": "ENDPOINT", "name": name, "default_deployment": deployment,
                  "created_at": Decimal(str(round(found.created_at, 3)))},
            ConditionExpression="attribute_not_exists(pk)",
        )
    except Exception as error:
        if aws.is_conditional_failure(error):
            raise ConflictError(f"endpoint {name!r} already exists") from None
        raise
    table.put_item(Item=found.to_item())
    return found


def update(
    cfg: StackConfig,
    name: str,
    code_dir: str | Path | None = None,
    entry_script: str | None = None,
    model_ref: str | None = None,
    overrides: dict[str, Any] | None = None,
    deployment: str | None = None,
) -> Deployment:
    """Change a deployment (the default one unless named): new code, entry script, model or
    settings. Running jobs keep what they started with; new jobs and redrives get the change."""
    current = get_deployment(cfg, name, deployment)
    code_sha = current.code_sha
    entry = entry_script or current.entry_script
    if code_dir is not None:
        code_dir = Path(code_dir)
        if not (code_dir / entry).is_file():
            raise InputError(f"--entry-script {entry}: no such file in {code_dir}")
        code_sha = upload_code(cfg, code_dir)
    model_name, model_version = (registry.parse_ref(model_ref) if model_ref
                                 else (current.model_name, current.model_version))
    registry.get(cfg, model_name, model_version)
    merged = {**current.settings, **(overrides or {})}
    settings.resolve(merged, limits=cfg.limits)
    changed = Deployment(endpoint=name, name=current.name, code_sha=code_sha, entry_script=entry,
                         model_name=model_name, model_version=model_version, settings=merged,
                         created_at=time.time())
    aws.table(cfg.table).put_item(Item=changed.to_item())
    return changed


def get_deployment(cfg: StackConfig, endpoint: str, deployment: str | None = None) -> Deployment:
    """The named deployment of ``endpoint``, or its default one."""
    table = aws.table(cfg.table)
    if deployment is None:
        item = table.get_item(Key={"pk": f"ENDPOINT#{endpoint}", "sk": "ENDPOINT"}).get("Item")
        if not item:
            raise NotFoundError(f"no endpoint {endpoint!r}: create it with `parallelrun endpoints create {endpoint} ...`")
        deployment = item["default_deployment"]
    item = table.get_item(Key={"pk": f"ENDPOINT#{endpoint}", "sk": f"DEPLOYMENT#{deployment}"}).get("Item")
    if not item:
        raise NotFoundError(f"endpoint {endpoint!r} has no deployment {deployment!r}")
    return Deployment.from_item(item)


def list_endpoints(cfg: StackConfig) -> list[dict[str, Any]]:
    page = aws.table(cfg.table).scan(
        FilterExpression="begins_with(pk, :e) AND sk = :s",
        ExpressionAttributeValues={":e": "ENDPOINT#", ":s": "ENDPOINT"},
    )
    return sorted(({"name": i["name"], "default_deployment": i["default_deployment"]} for i in page["Items"]),
                  key=lambda e: e["name"])
