"""Batch endpoints: a name callers use, routed to its default deployment.

A deployment pins scoring code (a zip in the artifacts bucket, stored under its SHA-256), an
entry script, a model (name and version, or the latest at submit) and default settings. A
deployment without code and entry script is a no-code one: its model (an MLflow model, a
scikit-learn estimator or an ONNX model, :mod:`parallelrun.core.nocode`) is scored by the built-in
scorer, and its settings start from Azure's for MLflow batch deployments. A deployment also
chooses where it runs (:mod:`parallelrun.core.compute`): Lambda, or ECS for GPUs and mini-batches
longer than Lambda allows; those settings are given beside its run settings and kept apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parallelrun.aws import dynamo, s3
from parallelrun.aws.config import StackConfig
from parallelrun.core import compute, environments, model_refs, nocode, settings
from parallelrun.core.errors import ConflictError, InputError, NotFoundError
from parallelrun.store import keys, registry

_NAME = re.compile(r"^[a-z0-9][a-z0-9\-]{0,62}$")
DEFAULT_DEPLOYMENT = "default"
REQUIREMENTS_FILE = "requirements.txt"  # beside the scoring code: the deployment's own packages
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Deployment:
    endpoint: str
    name: str
    code_sha: str | None  # None, with entry_script: a no-code deployment
    entry_script: str | None
    model_name: str
    model_version: int | None
    settings: dict[str, Any] = field(default_factory=dict)  # overrides as given; re-checked at submit
    created_at: float = 0.0
    # pip requirement lines the scoring process needs beyond the worker's own packages.
    requirements: tuple[str, ...] = ()
    # On a deployed stack, the batch queue of the deployment's own worker (aws.workers), made for
    # its requirements; empty when the stack's worker serves it.
    queue_url: str = ""
    # Where its mini-batches run (core.compute): the stack's Lambda worker, or its ECS workers.
    compute: compute.Compute = field(default_factory=compute.Compute)

    @property
    def model_ref(self) -> str:
        return f"{self.model_name}:{self.model_version}" if self.model_version else self.model_name

    @property
    def model_label(self) -> str:
        """How listings show the model: ``digits:3``, ``digits:latest`` or ``sales-{store} (per partition)``."""
        if model_refs.is_per_partition(self.model_name):
            return f"{self.model_name} (per partition)"
        return f"{self.model_name}:{self.model_version or 'latest'}"

    def to_item(self) -> dict[str, Any]:
        return {
            **keys.deployment_key(self.endpoint, self.name), "endpoint": self.endpoint,
            "name": self.name, "code_sha": self.code_sha, "entry_script": self.entry_script,
            "model_name": self.model_name, "model_version": self.model_version,
            "settings": json.dumps(self.settings, sort_keys=True),
            "created_at": dynamo.decimal(self.created_at, 3), "requirements": list(self.requirements),
            "queue_url": self.queue_url, "compute": json.dumps(self.compute.to_dict(), sort_keys=True),
        }

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Deployment:
        version = item.get("model_version")
        return cls(
            endpoint=item["endpoint"], name=item["name"], code_sha=item.get("code_sha"),
            entry_script=item.get("entry_script"), model_name=item["model_name"],
            model_version=int(version) if version is not None else None,
            settings=json.loads(item.get("settings") or "{}"), created_at=float(item.get("created_at", 0)),
            requirements=tuple(item.get("requirements") or ()), queue_url=item.get("queue_url") or "",
            compute=compute.from_dict(json.loads(item.get("compute") or "{}")),
        )


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
    s3.put_new(cfg.artifacts_bucket, keys.code_key(sha), data)
    return sha


def requirements_for(code_dir: str | Path | None, given: tuple[str, ...] = ()) -> tuple[str, ...]:
    """A deployment's requirements, each line checked (``core.environments.check``): those given
    (an Azure conda file's ``pip:`` list, say), else a ``requirements.txt`` beside the code."""
    file = Path(code_dir) / REQUIREMENTS_FILE if code_dir is not None else None
    if not given and file is not None and file.is_file():
        try:
            given = tuple(environments.parse_requirements_file(file.read_text()))
        except UnicodeDecodeError:
            raise InputError(f"{file}: not a text file") from None
    return environments.check(given)


def requirements_after_update(current: Deployment, code_dir: str | Path | None) -> tuple[str, ...]:
    """What a deployment requires once given new code: the code's requirements.txt if it has one,
    else what it required before (given at create, from an Azure conda file say)."""
    if code_dir is not None and (Path(code_dir) / REQUIREMENTS_FILE).is_file():
        return requirements_for(code_dir)
    return current.requirements


def _deployment(cfg: StackConfig, endpoint: str, name: str, code_dir: str | Path | None, entry_script: str | None,
                model_ref: str, overrides: dict[str, Any], requirements: tuple[str, ...] = ()) -> Deployment:
    """A deployment with every part checked (names, code, entry script, model, settings) and its
    code stored; nothing is written to the table yet. Without code and entry script, its model
    must be one the built-in scorer reads."""
    for kind, value in (("endpoint", endpoint), ("deployment", name)):
        _check_name(kind, value)
    if (code_dir is None) != (entry_script is None):
        raise InputError("--code and --entry-script go together: give both for a scoring script, or neither for "
                         f"a no-code deployment of {nocode.ALLOWED}")
    folder = Path(code_dir) if code_dir is not None else None
    if folder is not None and entry_script is not None:
        if not folder.is_dir():
            raise InputError(f"--code {folder}: not a folder")
        if not (folder / entry_script).is_file():
            raise InputError(f"--entry-script {entry_script}: no such file in {folder}")
    model_name, model_version = check_model(cfg, model_ref)
    given, overrides = compute.split(overrides)
    chosen = checked_compute(cfg, compute.parse(given))
    if folder is None:
        check_no_code(cfg, model_ref)
        # Azure's output, unless the deployment says otherwise (in either setting's name).
        overrides = {**nocode.DEFAULTS, **settings.canonical(overrides)}
    resolved = settings.resolve(overrides, limits=cfg.limits, ecs=chosen.is_ecs)
    if folder is None:
        nocode.check_settings(resolved)
    requirements = requirements_for(code_dir, requirements)
    compute.check_requirements(chosen, requirements)
    return Deployment(endpoint=endpoint, name=name, code_sha=upload_code(cfg, folder) if folder else None,
                      entry_script=entry_script, model_name=model_name, model_version=model_version,
                      settings=settings.canonical(overrides), created_at=time.time(),
                      requirements=tuple(requirements), compute=chosen)


def checked_compute(cfg: StackConfig, chosen: compute.Compute) -> compute.Compute:
    """``chosen``, refused if the stack's ECS workers' task is smaller than it needs."""
    compute.check_fits(chosen, compute.EcsTask.from_text(cfg.ecs_task))
    return chosen


def check_no_code(cfg: StackConfig, model_ref: str) -> None:
    """A deployment without a scoring script needs one model the built-in scorer reads."""
    if model_refs.is_per_partition(model_ref):
        raise InputError(f"model {model_ref!r}: a model per partition needs a scoring script (--code and "
                         "--entry-script); a no-code deployment scores one model")
    model = registry.get(cfg, *model_refs.parse_ref(model_ref))
    if nocode.kind_of(model.files, model.single_file) is None:
        shown = ", ".join(model.files[:5]) + (", ..." if len(model.files) > 5 else "")
        raise InputError(f"model {model.name}:{model.version} ({shown}) cannot be scored without a scoring script: "
                         f"give --code and --entry-script, or deploy {nocode.ALLOWED}")


def _check_name(kind: str, value: str) -> None:
    if not _NAME.match(value):
        raise InputError(f"{kind} name {value!r}: use lower-case letters, digits and '-' "
                         "(an endpoint's name is a folder in the drop bucket)")


def check_model(cfg: StackConfig, model_ref: str) -> tuple[str, int | None]:
    """The model a deployment names, refused now if unknown rather than at the first job. A
    model per partition (``sales-{store}``, ``tags:store={store}``) is checked for its form
    only: its models are resolved when each mini-batch runs."""
    if model_refs.is_per_partition(model_ref):
        return model_refs.parse_selector(model_ref).ref, None
    model_name, model_version = model_refs.parse_ref(model_ref)
    registry.get(cfg, model_name, model_version)
    return model_name, model_version


def _put_new(cfg: StackConfig, item: dict[str, Any], what: str) -> None:
    if not dynamo.put_new(cfg.table, item):
        raise ConflictError(f"{what} already exists")


def create(
    cfg: StackConfig,
    name: str,
    code_dir: str | Path | None,
    entry_script: str | None,
    model_ref: str,
    overrides: dict[str, Any] | None = None,
    deployment: str = DEFAULT_DEPLOYMENT,
    requirements: tuple[str, ...] = (),
) -> Deployment:
    """Create endpoint ``name`` with one deployment, its default. Every part is checked first."""
    found = _deployment(cfg, name, deployment, code_dir, entry_script, model_ref, dict(overrides or {}), requirements)
    new_endpoint(cfg, name, deployment)
    dynamo.put(cfg.table, found.to_item())
    return found


def new_endpoint(cfg: StackConfig, name: str, default_deployment: str = "") -> dict[str, Any]:
    """Create endpoint ``name`` with no deployment yet (Azure's order: the endpoint, then its
    deployments); ``default_deployment`` names the one new jobs will go to, else its first."""
    _check_name("endpoint", name)
    if default_deployment:
        _check_name("deployment", default_deployment)
    item = {**keys.endpoint_key(name), "name": name, "default_deployment": default_deployment,
            "created_at": dynamo.decimal(time.time(), 3)}
    # Pipelines share the drop bucket's folders with endpoints: the endpoint is put only while no
    # pipeline has its name, as a pipeline's create checks the other way round.
    if not dynamo.put_new_where_absent(cfg.table, item, keys.pipeline_key(name)):
        if dynamo.get(cfg.table, keys.endpoint_key(name), consistent=True) is not None:
            raise ConflictError(f"endpoint {name!r} already exists")
        raise ConflictError(f"a pipeline named {name!r} exists: pipelines and endpoints share the drop bucket's "
                            "folders, so their names must differ")
    return {"name": name, "default_deployment": default_deployment}


def add_deployment(cfg: StackConfig, endpoint: str, name: str, code_dir: str | Path | None, entry_script: str | None,
                   model_ref: str, overrides: dict[str, Any] | None = None, make_default: bool = False,
                   requirements: tuple[str, ...] = ()) -> Deployment:
    """Add a named deployment to an existing endpoint, optionally as its new default (an endpoint's
    first deployment is its default unless the endpoint named another, as on Azure)."""
    current = get_endpoint(cfg, endpoint)
    found = _deployment(cfg, endpoint, name, code_dir, entry_script, model_ref, dict(overrides or {}), requirements)
    _put_new(cfg, found.to_item(), f"deployment {name!r} of endpoint {endpoint!r}")
    if make_default:
        set_default(cfg, endpoint, name)
    elif not current["default_deployment"]:  # conditional: of two first deployments, the first stays
        dynamo.update_if(cfg.table, keys.endpoint_key(endpoint), "SET default_deployment = :d",
                         "default_deployment = :none", {":d": name, ":none": ""})
    return found


def record_worker(cfg: StackConfig, endpoint: str, name: str, queue_url: str) -> None:
    """Note the batch queue of the deployment's own worker: new jobs of it are sent there."""
    dynamo.update(cfg.table, keys.deployment_key(endpoint, name), "SET queue_url = :q", {":q": queue_url})


def set_default(cfg: StackConfig, endpoint: str, name: str) -> None:
    """Route the endpoint's new jobs to deployment ``name``; running jobs keep theirs."""
    get_deployment(cfg, endpoint, name)
    dynamo.update(cfg.table, keys.endpoint_key(endpoint), "SET default_deployment = :d",
                  {":d": name})


def get_endpoint(cfg: StackConfig, name: str) -> dict[str, Any]:
    item = dynamo.get(cfg.table, keys.endpoint_key(name))
    if not item:
        raise NotFoundError(f"no endpoint {name!r}: create it with `parallelrun endpoints create {name} ...`")
    return {"name": item["name"], "default_deployment": item["default_deployment"]}


def list_deployments(cfg: StackConfig, endpoint: str) -> list[Deployment]:
    items = dynamo.query_prefix(cfg.table, keys.endpoint_pk(endpoint), keys.DEPLOYMENT_PREFIX)
    return [Deployment.from_item(item) for item in items]


def delete_deployment(cfg: StackConfig, endpoint: str, name: str) -> None:
    """Delete a deployment that is not the default (callers would have nowhere to go)."""
    if get_endpoint(cfg, endpoint)["default_deployment"] == name:
        raise ConflictError(f"deployment {name!r} is the default of endpoint {endpoint!r}: "
                            "set another default first (`parallelrun endpoints set-default`)")
    get_deployment(cfg, endpoint, name)
    dynamo.delete(cfg.table, keys.deployment_key(endpoint, name))


def delete_endpoint(cfg: StackConfig, name: str) -> None:
    """Delete an endpoint and its deployments; jobs already submitted are unaffected."""
    get_endpoint(cfg, name)
    for deployment in list_deployments(cfg, name):
        dynamo.delete(cfg.table, keys.deployment_key(name, deployment.name))
    dynamo.delete(cfg.table, keys.endpoint_key(name))


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
    given, overrides = compute.split(overrides or {})
    chosen = checked_compute(cfg, compute.updated(current.compute, given))
    merged = {**current.settings, **settings.canonical(overrides)}
    if code_dir is None:  # the stored code, with the new entry script, model or settings checked
        resolved = settings.resolve(merged, limits=cfg.limits, ecs=chosen.is_ecs)
        compute.check_requirements(chosen, current.requirements)
        model_name, model_version = check_model(cfg, model_ref or current.model_ref)
        if current.code_sha is None:  # a no-code deployment stays one
            if entry_script:
                raise InputError(f"deployment {current.name!r} has no scoring code: give --code with --entry-script")
            check_no_code(cfg, model_ref or current.model_ref)
            nocode.check_settings(resolved)
        changed = Deployment(endpoint=name, name=current.name, code_sha=current.code_sha,
                             entry_script=entry_script or current.entry_script, model_name=model_name,
                             model_version=model_version, settings=merged, created_at=time.time(),
                             requirements=current.requirements, queue_url=current.queue_url, compute=chosen)
    else:
        changed = dataclasses.replace(_deployment(
            cfg, name, current.name, code_dir, entry_script or current.entry_script, model_ref or current.model_ref,
            {**merged, **chosen.to_dict()}, requirements_after_update(current, code_dir)), queue_url=current.queue_url)
    dynamo.put(cfg.table, changed.to_item())
    return changed


def get_deployment(cfg: StackConfig, endpoint: str, deployment: str | None = None) -> Deployment:
    """The named deployment of ``endpoint``, or its default one."""
    if deployment is None:
        deployment = get_endpoint(cfg, endpoint)["default_deployment"]
        if not deployment:
            raise NotFoundError(f"endpoint {endpoint!r} has no deployment yet: add one with "
                                f"`parallelrun deployments create {endpoint} NAME ...`")
    item = dynamo.get(cfg.table, keys.deployment_key(endpoint, deployment))
    if not item:
        raise NotFoundError(f"endpoint {endpoint!r} has no deployment {deployment!r}")
    return Deployment.from_item(item)


def list_endpoints(cfg: StackConfig) -> list[dict[str, Any]]:
    items = dynamo.scan(cfg.table, FilterExpression="begins_with(pk, :e) AND sk = :s",
                        ExpressionAttributeValues={":e": keys.ENDPOINT_PREFIX, ":s": keys.ENDPOINT_SK})
    return sorted(({"name": i["name"], "default_deployment": i["default_deployment"]} for i in items),
                  key=lambda e: e["name"])
