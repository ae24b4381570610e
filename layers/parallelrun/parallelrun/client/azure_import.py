"""Azure ML v2 batch endpoints and deployments created from their YAML as it is (read and checked
by :mod:`parallelrun.core.azure_yaml`): the YAML's model registered or resolved, then the
endpoint or deployment created as ``endpoints create`` / ``deployments create`` would."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parallelrun.aws.config import StackConfig
from parallelrun.core import azure_yaml, compute, settings
from parallelrun.core.errors import InputError, NotFoundError
from parallelrun.store import endpoints, registry

Notes = Callable[[str], None] | None


def create_endpoint(cfg: StackConfig, path: str | Path, name: str | None = None,
                    on_note: Notes = None) -> dict[str, Any]:
    """The endpoint of a batch endpoint YAML file, with no deployment yet. ``name`` overrides the
    YAML's, as ``az ml batch-endpoint create --name`` does."""
    spec = azure_yaml.read_endpoint(path)
    tell(spec.notes, on_note)
    name = name or spec.name
    if not name:
        raise InputError(f"{path}: name: required (or give the endpoint's name)")
    return endpoints.new_endpoint(cfg, name, spec.default_deployment)


@dataclass(frozen=True)
class DeploymentArgs:
    """What ``deployments create`` is given, read from a batch deployment YAML file."""

    endpoint: str
    name: str
    code_dir: Path | None
    entry_script: str | None
    model: str  # NAME:VERSION, registered if the YAML gave a path
    settings: dict[str, Any]
    requirements: tuple[str, ...]
    notes: tuple[str, ...]  # what the YAML asks that works otherwise here


def deployment_args(cfg: StackConfig, path: str | Path, endpoint: str | None = None, name: str | None = None,
                    overrides: dict[str, Any] | None = None) -> DeploymentArgs:
    """The deployment a batch deployment YAML file describes, its model registered or resolved;
    ``endpoint``, ``name`` and ``overrides`` (run settings) win over the YAML's, as the Azure CLI's
    ``--endpoint-name``, ``--name`` and ``--set`` do."""
    # With compute: ecs given beside the YAML, its retry_settings.timeout may be hours.
    spec = azure_yaml.read_deployment(path, cfg.limits, compute.of_settings(overrides).is_ecs)
    endpoint, name = endpoint or spec.endpoint or "", name or spec.name or ""
    for field, value in (("endpoint_name", endpoint), ("name", name)):
        if not value:
            raise InputError(f"{path}: {field}: required (or give it on the command line)")
    merged = {**settings.canonical(spec.settings), **settings.canonical(overrides or {})}
    return DeploymentArgs(endpoint, name, spec.code_dir, spec.entry_script, _model_ref(cfg, spec.model, f"{endpoint}-{name}"),
                          merged, tuple(spec.requirements), tuple(spec.notes))


def _model_ref(cfg: StackConfig, spec: azure_yaml.ModelSpec, anonymous: str) -> str:
    """``NAME:VERSION`` of the YAML's model. ``azureml:NAME@latest`` is resolved now, as Azure
    resolves it when the deployment is created; a path is registered as the next version of its
    name (the deployment's, when the YAML gives none) unless that name's latest version, or the
    version the YAML gives, already holds the same content."""
    if spec.path is None:  # azureml:NAME:VERSION or azureml:NAME@latest, which always name a model
        return f"{spec.name}:{spec.version or registry.get(cfg, str(spec.name)).version}"
    name = spec.name or anonymous
    if spec.path.startswith("s3://"):
        return f"{name}:{registry.register(cfg, spec.path, name, spec.tags, spec.description).version}"
    path = Path(spec.path)
    if not path.exists():
        raise InputError(f"model path {path} does not exist")
    sha = registry.content(path)[1]
    try:
        held = registry.get(cfg, name, spec.version)
    except NotFoundError:
        held = None
    if held is not None and held.sha256 == sha:
        return f"{name}:{held.version}"
    if spec.version is not None and (held is not None or spec.version != 1 or _has_versions(cfg, name)):
        found = f"{name}:{spec.version} holds other content" if held else f"there is no {name}:{spec.version}"
        raise InputError(f"model.version {spec.version}: parallelrun numbers {name}'s versions itself; {found}: "
                         "leave model.version out to register this as the next version")
    return f"{name}:{registry.register(cfg, path, name, spec.tags, spec.description).version}"


def _has_versions(cfg: StackConfig, name: str) -> bool:
    try:
        registry.get(cfg, name)
    except NotFoundError:
        return False
    return True


def tell(notes: tuple[str, ...], on_note: Notes) -> None:
    if on_note is not None:
        for note in notes:
            on_note(note)
