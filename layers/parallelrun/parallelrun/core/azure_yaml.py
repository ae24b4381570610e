"""Azure ML v2 batch endpoint and deployment YAML, read as Azure documents it, into what parallelrun
creates. Pure: it reads the YAML (and a conda file beside it) and checks every field; the client
registers models and creates the endpoint or deployment.

Azure's schemas: batch deployments
https://learn.microsoft.com/en-us/azure/machine-learning/reference-yaml-deployment-batch, batch
endpoints https://learn.microsoft.com/en-us/azure/machine-learning/reference-yaml-endpoint-batch,
inline models https://learn.microsoft.com/en-us/azure/machine-learning/reference-yaml-model and
environments https://learn.microsoft.com/en-us/azure/machine-learning/reference-yaml-environment.

What each field means here:
- ``code_configuration.code`` / ``scoring_script``: the code folder (relative to the YAML file)
  and the entry script in it. Without ``code_configuration`` the deployment has no code.
- ``model``: ``azureml:NAME:VERSION``, or ``azureml:NAME@latest`` (resolved when the deployment is
  created, as Azure resolves it), names a model in parallelrun's registry; a local path, an
  ``s3://`` URI or an inline model (``path``, optional ``name``, ``version``, ``description``,
  ``tags``, ``type``) is registered there (content already registered under that name is reused).
- ``environment`` inline: its conda file's ``pip:`` list becomes the deployment's requirements,
  but for the Azure runtime packages parallelrun stands in for. Conda packages other than
  ``python`` and ``pip`` are refused (there is no conda on the workers: list them under ``pip:``);
  ``image`` is not used (the scoring process runs on the stack's worker runtime). A registered
  environment (``azureml:env:1``) and a Docker ``build`` context are refused.
- ``resources.instance_count`` and ``settings`` are run settings under Azure's names, mapped to
  ParallelRunConfig's by :data:`parallelrun.core.settings.V2_NAMES`. A setting the YAML leaves out
  takes parallelrun's default, not the deployment's (Azure's one process on one instance would run
  one mini-batch at a time).
- ``compute`` (``azureml:gpu-cluster``) is accepted and not used: it names an Azure cluster, whose
  size and GPUs the name does not tell; the deployment runs on Lambda unless created with
  ``--compute ecs`` and its ``--cpu``, ``--memory``, ``--gpu`` (:mod:`parallelrun.core.compute`); ``$schema``,
  ``description`` and ``tags`` are accepted and kept nowhere; ``type`` is ``model`` (``pipeline``
  deployments are refused).
- endpoint.yml: ``name``; ``defaults.deployment_name``, the deployment new jobs go to (otherwise
  the endpoint's first deployment, as on Azure); ``auth_mode`` ``aad_token`` (who may submit is
  the stack's IAM).
Any other field, misspelt or not supported, is refused by its path in the YAML with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from parallelrun.core import settings
from parallelrun.core.errors import InputError, SettingsError
from parallelrun.core.model_refs import MODEL_NAME
from parallelrun.core.setting_rules import StackLimits

_COMMON = ("$schema", "name", "description", "tags")
DEPLOYMENT_FIELDS = (*_COMMON, "endpoint_name", "type", "model", "code_configuration", "environment", "compute",
                     "resources", "settings")
SETTINGS_FIELDS = ("max_concurrency_per_instance", "mini_batch_size", "output_action", "output_file_name",
                   "retry_settings", "error_threshold", "logging_level", "environment_variables")
ENDPOINT_FIELDS = (*_COMMON, "auth_mode", "defaults")
MODEL_FIELDS = ("name", "version", "path", "description", "tags", "type")
MODEL_TYPES = ("custom_model", "mlflow_model")
ENVIRONMENT_FIELDS = ("name", "version", "description", "tags", "image", "conda_file", "os_type")
CONDA_FIELDS = ("name", "channels", "dependencies")
# Packages of Azure's own runtime that parallelrun stands in for: installed, a real azureml-core
# would take the place of the shims and look for models in a workspace that is not there.
AZURE_RUNTIME_PACKAGES = {
    "azureml-core": "parallelrun's azureml.core shim stands in for it",
    "azureml-defaults": "Azure's serving runtime; parallelrun's shims stand in for azureml-core",
    "azureml-dataset-runtime": "Azure mounts datasets with it; parallelrun's workers fetch inputs from S3",
    "azureml-dataprep": "Azure mounts datasets with it; parallelrun's workers fetch inputs from S3",
}
_REASONS = {
    "build": "a Docker build context is not built here: list the packages under the conda file's pip:",
    "inference_config": "it configures Azure's online serving, which batch scoring here does not use",
    "variables": "set them in the deployment's settings.environment_variables",
}
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._\-]*)")


@dataclass(frozen=True)
class ModelSpec:
    """A model in parallelrun's registry (``path`` None; ``version`` None is the latest), or a file
    or folder at ``path`` to register, as ``name`` (None: named after the deployment)."""

    name: str | None
    version: int | None = None
    path: str | None = None
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeploymentSpec:
    endpoint: str | None
    name: str | None
    code_dir: Path | None
    entry_script: str | None
    model: ModelSpec
    settings: dict[str, Any]  # under Azure's names, each value checked (mapped by settings.V2_NAMES)
    requirements: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what the YAML asks that is accepted but works otherwise here


@dataclass(frozen=True)
class EndpointSpec:
    name: str | None
    default_deployment: str = ""
    notes: tuple[str, ...] = ()


def _load(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InputError(f"{path}: cannot read it ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise InputError(f"{path}: not valid YAML: {error}") from None


def _mapping(value: Any, where: str, source: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{source}: {where or 'the document'} must be a mapping of fields, not {value!r}")
    return value


def _check_fields(doc: Mapping[str, Any], where: str, known: Iterable[str], source: Path) -> None:
    """Refuse every field not in ``known``, by its path, with why (or the fields that are read)."""
    known = tuple(known)
    for key in doc:
        if key not in known:
            path = f"{where}.{key}" if where else str(key)
            reason = _REASONS.get(key) or f"not a field parallelrun reads here; it reads {', '.join(known)}"
            raise InputError(f"{source}: {path}: {reason}")


def _refuse(source: Path, where: str, value: Any, reason: str) -> InputError:
    return InputError(f"{source}: {where}: {value!r} is not supported: {reason}")


def _local(base: Path, value: Any, where: str, source: Path) -> Path:
    if not isinstance(value, str) or not value or "://" in value or value.startswith("azureml:"):
        raise _refuse(source, where, value, "a local path, relative to the YAML file (Azure's assets and "
                                            "datastores cannot be read from here)")
    return base / value


def read_deployment(path: str | Path, limits: StackLimits | None = None, ecs: bool = False) -> DeploymentSpec:
    """An Azure ML v2 batch deployment YAML file as a :class:`DeploymentSpec`; raises
    :class:`InputError` or :class:`SettingsError` naming the field it cannot honour. ``ecs``: for
    a deployment given compute: ecs (its retry_settings.timeout may be hours)."""
    source = Path(path)
    doc = _mapping(_load(source), "", source)
    legacy = "type" not in doc  # before type: (CLI 1.7) settings sat at the root; Azure reads them there
    _check_fields(doc, "", DEPLOYMENT_FIELDS + (SETTINGS_FIELDS if legacy else ()), source)
    if doc.get("type", "model") != "model":
        raise _refuse(source, "type", doc["type"], "pipeline component deployments are not supported: deploy a "
                                                   "model with code_configuration")
    base = source.parent
    # An Azure compute names a cluster, not a size or a GPU: nothing here to map it to.
    notes = [f"compute {doc['compute']!r} is not used: the deployment runs on Lambda unless given --compute ecs "
             "(with --cpu, --memory, --gpu: parallelrun.core.compute)"] if "compute" in doc else []
    code_dir = entry_script = None
    if "code_configuration" in doc:
        code = _mapping(doc["code_configuration"], "code_configuration", source)
        _check_fields(code, "code_configuration", ("code", "scoring_script"), source)
        if not isinstance(code.get("scoring_script"), str):
            raise InputError(f"{source}: code_configuration.scoring_script: the entry script in the code folder "
                             "is required")
        code_dir = _local(base, code.get("code"), "code_configuration.code", source)
        entry_script = code["scoring_script"]
    if "model" not in doc:
        raise InputError(f"{source}: model: required (azureml:NAME:VERSION, azureml:NAME@latest, a path or a model)")
    requirements, env_notes = _environment(doc.get("environment"), base, source)
    sections = [("settings", _mapping(doc.get("settings") or {}, "settings", source)),
                ("resources", _mapping(doc.get("resources") or {}, "resources", source))]
    if legacy:
        sections.append(("", {key: doc[key] for key in SETTINGS_FIELDS if key in doc}))
    name, endpoint = doc.get("name"), doc.get("endpoint_name")
    chosen = _settings(sections, source, limits, ecs)
    if code_dir is None and "mini_batch_size" in chosen:
        # Azure's MLflow deployments count files per mini-batch; with no scoring script each file
        # is read here as a table, cut into mini-batches by bytes (tabular input's mini_batch_size).
        notes.append(f"settings.mini_batch_size {chosen.pop('mini_batch_size')!r} is not used: with no scoring "
                     "script each file is read as a table, in mini-batches of about 1MB (give a size, such as "
                     "--set mini_batch_size=4MB, to change that)")
    return DeploymentSpec(
        endpoint=None if endpoint is None else str(endpoint), name=None if name is None else str(name),
        code_dir=code_dir, entry_script=entry_script, model=_model(doc["model"], base, source),
        settings=chosen, requirements=requirements, notes=tuple(notes + env_notes),
    )


def _settings(sections: list[tuple[str, dict[str, Any]]], source: Path, limits: StackLimits | None,
              ecs: bool) -> dict[str, Any]:
    """The run settings under Azure's names, each checked and refused by its path in the YAML."""
    flat: dict[str, tuple[str, Any]] = {}
    for where, given in sections:
        known = ("instance_count",) if where == "resources" else SETTINGS_FIELDS
        _check_fields(given, where, known, source)
        prefix = f"{where}." if where else ""
        flat.update({prefix + key: (key, value) for key, value in given.items() if key != "retry_settings"})
        retry = _mapping(given.get("retry_settings") or {}, prefix + "retry_settings", source)
        _check_fields(retry, prefix + "retry_settings", ("max_retries", "timeout"), source)
        flat.update({f"{prefix}retry_settings.{key}": (f"retry_settings.{key}", value) for key, value in retry.items()})
    for where, (name, value) in flat.items():
        try:
            settings.resolve({name: value}, limits=limits, ecs=ecs)
        except SettingsError as error:
            raise SettingsError(where, value, error.allowed) from None
    chosen = dict(flat.values())
    settings.resolve(chosen, limits=limits, ecs=ecs)  # the checks that span settings (concurrency)
    return chosen


def _model(value: Any, base: Path, source: Path) -> ModelSpec:
    if isinstance(value, str) and value.startswith("azureml:"):
        return _registered(value, source)
    if isinstance(value, str):
        return ModelSpec(name=None, path=value if value.startswith("s3://") else str(_local(base, value, "model",
                                                                                             source)))
    model = _mapping(value, "model", source)
    _check_fields(model, "model", MODEL_FIELDS, source)
    if model.get("type", "custom_model") not in MODEL_TYPES:
        raise _refuse(source, "model.type", model["type"], "one of " + ", ".join(MODEL_TYPES))
    name, version = model.get("name"), model.get("version")
    if name is not None and not (isinstance(name, str) and MODEL_NAME.match(name)):
        raise _refuse(source, "model.name", name, "letters, digits, '_', '.', '-' (at most 64, starting alphanumeric)")
    if version is not None and not (str(version).isdigit() and int(version) >= 1 and name):
        raise _refuse(source, "model.version", version, "a whole number from 1, with model.name (parallelrun "
                                                         "numbers a model's versions 1, 2, ...)")
    raw = model.get("path")
    path = raw if isinstance(raw, str) and raw.startswith("s3://") else str(_local(base, raw, "model.path", source))
    tags = _mapping(model.get("tags") or {}, "model.tags", source)
    return ModelSpec(name=name, version=int(version) if version is not None else None, path=path,
                     description=str(model.get("description") or ""), tags={str(k): str(v) for k, v in tags.items()})


def _registered(ref: str, source: Path) -> ModelSpec:
    """``azureml:NAME:VERSION`` or ``azureml:NAME@latest``, a model in parallelrun's registry."""
    body = ref[len("azureml:"):]
    name, at, label = body.partition("@")
    if not at:
        name, _, label = body.partition(":")
    if MODEL_NAME.match(name) and ((at and label == "latest") or (not at and label.isdigit() and int(label) >= 1)):
        return ModelSpec(name=name, version=int(label) if not at else None)
    raise _refuse(source, "model", ref, "azureml:NAME:VERSION or azureml:NAME@latest of a model in parallelrun's "
                                        "registry (`parallelrun models register PATH --name NAME`); a workspace's "
                                        "asset id or another label cannot be read from here")


def _environment(value: Any, base: Path, source: Path) -> tuple[tuple[str, ...], list[str]]:
    """The deployment's pip requirements and notes from an inline environment."""
    if value is None:
        return (), []
    if isinstance(value, str):
        raise _refuse(source, "environment", value, "a registered Azure environment cannot be read outside Azure: "
                                                    "write it inline with conda_file, whose pip: list becomes the "
                                                    "deployment's requirements")
    env = _mapping(value, "environment", source)
    _check_fields(env, "environment", ENVIRONMENT_FIELDS, source)
    if str(env.get("os_type", "linux")).lower() != "linux":
        raise _refuse(source, "environment.os_type", env["os_type"], "linux (the workers run Linux)")
    notes = [f"environment.image {env['image']!r} is not used: the scoring process runs on the stack's worker "
             "runtime with the conda file's pip: packages"] if "image" in env else []
    if "conda_file" not in env:
        return (), notes
    conda = env["conda_file"]
    where = "environment.conda_file"
    if not isinstance(conda, dict):
        conda_path = _local(base, conda, where, source)
        conda, where, source = _load(conda_path), "", conda_path
    conda = _mapping(conda, where, source)
    _check_fields(conda, where, CONDA_FIELDS, source)
    requirements: list[str] = []
    prefix = f"{where}.dependencies" if where else "dependencies"
    for index, entry in enumerate(conda.get("dependencies") or []):
        if isinstance(entry, dict) and set(entry) == {"pip"}:
            requirements += _pip(entry["pip"] or [], f"{prefix}[{index}].pip", source, notes)
            continue
        match = _REQUIREMENT_NAME.match(entry) if isinstance(entry, str) else None
        if not match or match.group(1).lower() not in ("python", "pip"):
            raise _refuse(source, f"{prefix}[{index}]", entry, "conda packages are not installed (the workers "
                                                               "have no conda): list it under pip:")
        if match.group(1).lower() == "python" and entry.strip().lower() != "python":
            notes.append(f"{entry.strip()} is not enforced: the stack's worker Python runs the script")
    return tuple(requirements), notes


def _pip(lines: Any, where: str, source: Path, notes: list[str]) -> list[str]:
    if not isinstance(lines, list):
        raise _refuse(source, where, lines, "a list of pip requirement lines")
    kept = []
    for index, line in enumerate(lines):
        match = _REQUIREMENT_NAME.match(line) if isinstance(line, str) else None
        if not match:
            raise _refuse(source, f"{where}[{index}]", line, "a requirement such as pandas==2.2 (pip options, -r "
                                                             "files and editable installs are not)")
        package = re.sub(r"[-_.]+", "-", match.group(1)).lower()
        if package in AZURE_RUNTIME_PACKAGES:
            notes.append(f"{line.strip()} is not installed: {AZURE_RUNTIME_PACKAGES[package]}")
        else:
            kept.append(line.strip())
    return kept


def read_endpoint(path: str | Path) -> EndpointSpec:
    """An Azure ML v2 batch endpoint YAML file as an :class:`EndpointSpec`."""
    source = Path(path)
    doc = _mapping(_load(source), "", source)
    _check_fields(doc, "", ENDPOINT_FIELDS, source)
    if doc.get("auth_mode", "aad_token") != "aad_token":
        raise _refuse(source, "auth_mode", doc["auth_mode"], "aad_token, the only mode of Azure's batch endpoints "
                                                             "(here who may submit is the stack's IAM)")
    defaults = _mapping(doc.get("defaults") or {}, "defaults", source)
    _check_fields(defaults, "defaults", ("deployment_name",), source)
    notes = ("auth_mode aad_token: who may submit is decided by the stack's IAM",) if "auth_mode" in doc else ()
    return EndpointSpec(name=doc.get("name"), default_deployment=str(defaults.get("deployment_name") or ""),
                        notes=notes)
