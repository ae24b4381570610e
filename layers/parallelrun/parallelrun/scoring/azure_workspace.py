"""The workspace side of Azure ML's SDK for entry scripts: ``Workspace``, ``Experiment``,
``Model``, ``Run``, ``Dataset`` and ``Datastore``, resolved against parallelrun's registry and
the running job (installed by :mod:`parallelrun.scoring.azure`).

A scoring process holds read-only credentials scoped to its deployment's files
(:mod:`parallelrun.scoring.credentials`), so it never reads the registry itself: a model lookup
(``Model(ws, name)``, ``Model.list``, ``Model.get_model_path`` of another model) is a question
to the worker over the scoring process's pipe (:data:`modelfiles.ask_worker`), which answers from
the registry with its own role and hands back verified local copies. A registration
(``run.register_model``) is staged here and returned with the mini-batch's result; the worker
registers it once the mini-batch has succeeded, under a claim naming the mini-batch, so a retried
or duplicated mini-batch never makes a second version.

Azure's documentation of these classes: https://learn.microsoft.com/en-us/python/api/azureml-core/azureml.core.model.model,
https://learn.microsoft.com/en-us/python/api/azureml-core/azureml.core.run.run,
https://learn.microsoft.com/en-us/python/api/azureml-core/azureml.core.workspace.workspace.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parallelrun.core import safepath
from parallelrun.core.errors import AzureOnlyError
from parallelrun.scoring import modelfiles
from parallelrun.store.registry import ModelVersion

log = logging.getLogger("azureml.core.run")
DATA_INSTEAD = ("the job's input arrives as run()'s mini_batch (and mini_batch_context.dataset); other data as "
                "side_inputs (s3:// URIs, fetched once per machine, named in arguments as {side_input:NAME})")
STORE_INSTEAD = ("read other data through side_inputs; write files to EntryScript().output_dir or "
                 "AZUREML_BI_OUTPUT_PATH, which are collected into the job's output")
WORKSPACE_INSTEAD = ("Run.get_context().experiment.workspace or Workspace.from_config() is the stack's workspace: "
                     "its models are parallelrun's registry")


class Refused:
    """An Azure call that needs Azure itself: importing and naming it works, calling it raises
    :class:`AzureOnlyError` (so a script that never calls it runs)."""

    def __init__(self, call: str, instead: str) -> None:
        self._call, self._instead = call, instead

    def __getattr__(self, name: str) -> Refused:
        if name.startswith("__"):
            raise AttributeError(name)
        return Refused(f"{self._call}.{name}", self._instead)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AzureOnlyError(f"{self._call}()", self._instead)

    def __repr__(self) -> str:
        return f"<{self._call}: needs Azure ML>"


Dataset = Refused("Dataset", DATA_INSTEAD)
Datastore = Refused("Datastore", STORE_INSTEAD)


@dataclass
class Current:
    """The mini-batch being run, set by the scoring process before each run()."""

    job_id: str = ""
    minibatch_index: int = -1
    endpoint: str = ""
    artifacts: dict[str, Path] = field(default_factory=dict)  # upload_file's names → the copies


current = Current()
# Where register_model's copies wait for the worker, and the registrations of the running mini-batch;
# where upload_file puts a run's artifacts (EntryScript().output_dir, collected into the job's output).
staging: Path | None = None
outputs: Path | None = None
pending: list[Registration] = []


@dataclass(frozen=True)
class Registration:
    """A model a script registered during a mini-batch, staged for the worker to register."""

    name: str
    path: str
    tags: dict[str, str]
    description: str = ""


class Workspace:
    """The stack's workspace: one per stack, whose models are parallelrun's registry."""

    name = "parallelrun"
    get = Refused("Workspace.get", WORKSPACE_INSTEAD)
    create = Refused("Workspace.create", WORKSPACE_INSTEAD)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Naming a workspace by subscription, group and name means one in Azure.
        raise AzureOnlyError("Workspace(subscription_id, resource_group, workspace_name)", WORKSPACE_INSTEAD)

    @classmethod
    def from_config(cls, *args: Any, **kwargs: Any) -> Workspace:
        return _THE_WORKSPACE

    @property
    def models(self) -> dict[str, Model]:
        """Each model's latest version, by name (Azure's ``Workspace.models``)."""
        return {model.name: model for model in Model.list(self, latest=True)}

    def __getattr__(self, name: str) -> Refused:
        instead = STORE_INSTEAD if "datastore" in name else DATA_INSTEAD if "dataset" in name else WORKSPACE_INSTEAD
        return Refused(f"Workspace.{name}", instead)


_THE_WORKSPACE = object.__new__(Workspace)


class Experiment:
    """An experiment of the stack's workspace; a job's is named after its endpoint."""

    def __init__(self, workspace: Workspace, name: str, **kwargs: Any) -> None:
        self.workspace, self.name = workspace, name

    def __getattr__(self, name: str) -> Refused:
        return Refused(f"Experiment.{name}", "a parallelrun job is submitted with `parallelrun submit`, not from a script")


def _tag_filter(tags: Any) -> list[tuple[str, str | None]]:
    """Azure's ``tags=``: a list of 'key' (any value) or [key, value]; a dict is taken as pairs."""
    if not tags:
        return []
    if isinstance(tags, dict):
        return [(str(k), str(v)) for k, v in tags.items()]
    return [(str(t), None) if isinstance(t, str) else (str(t[0]), str(t[1])) for t in tags]


class Model:
    """A registered model version; ``Model(ws, name, version=None)`` (the latest when no version)
    or ``Model(ws, id="name:version")``; ``name``, ``version``, ``tags``, ``description``, ``id``."""

    def __init__(self, workspace: Any = None, name: str | None = None, id: str | None = None,  # noqa: A002 - Azure's name
                 tags: Any = None, properties: Any = None, version: int | str | None = None, **kwargs: Any) -> None:
        if isinstance(id, int):  # Model(ws, name, 3): a version where Azure's third place is id=
            id, version = None, id
        if id:
            name, _, found = id.partition(":")
            version = found or version
        if not name:
            raise TypeError("Model() needs name= or id=, as in Azure")
        record, path = modelfiles.find(name, int(version) if version is not None else None)
        self._record(record, path)

    def _record(self, record: ModelVersion | None, path: str | None, name: str = "", tags: Any = None) -> None:
        self.name = record.name if record else name
        self.version = record.version if record else None  # a registration's: known once the worker registers it
        self.tags = dict(record.tags) if record else dict(tags or {})
        self.description = record.description if record else ""
        self.properties: dict[str, str] = {}
        self.id = f"{self.name}:{self.version}"
        self._path = path

    @classmethod
    def _of(cls, record: ModelVersion | None, path: str | None = None, name: str = "", tags: Any = None) -> Model:
        model = object.__new__(cls)
        model._record(record, path, name, tags)
        return model

    def __repr__(self) -> str:
        return f"Model(name={self.name!r}, version={self.version}, tags={self.tags})"

    @staticmethod
    def get_model_path(model_name: str, version: int | None = None, _workspace: Any = None) -> str:
        """The model's local file (a single-file model) or folder, as Azure returns it."""
        return modelfiles.get_model_path(model_name, int(version) if version is not None else None)

    @staticmethod
    def list(workspace: Any = None, name: str | None = None, tags: Any = None, properties: Any = None,
             run_id: str | None = None, latest: bool = False, **kwargs: Any) -> list[Model]:  # noqa: A003 - Azure's name
        if properties or run_id:
            raise AzureOnlyError("Model.list(properties=..., run_id=...)", "filter by name= and tags=; parallelrun's "
                                 "registry keeps tags, not properties or runs")
        return [Model._of(record) for record in modelfiles.listed(name, _tag_filter(tags), bool(latest))]

    @staticmethod
    def register(workspace: Any, model_path: str, model_name: str, tags: dict[str, Any] | None = None,
                 description: str | None = None, **kwargs: Any) -> Model:
        """As ``Run.register_model``: registered by the worker once the mini-batch succeeds."""
        return stage(model_name, model_path, tags, description)

    def download(self, target_dir: str = ".", exist_ok: bool = False, exists_ok: bool | None = None) -> str:
        """Copy the model into ``target_dir`` under its own name; its path (Azure's return)."""
        if self._path is None:
            if self.version is None:
                raise AzureOnlyError("Model.download() of a model registered in this mini-batch",
                                     "use the files you registered; the version exists once the mini-batch succeeds")
            self._path = modelfiles.find(self.name, self.version)[1]
        source = Path(self._path)
        target = Path(target_dir) / source.name
        if target.exists() and not (exist_ok or exists_ok):
            raise FileExistsError(f"Model.download(): {target} exists (pass exist_ok=True to replace it)")
        _copy(source, target)
        return str(target)


def _copy(source: Path, target: Path) -> None:
    """Copy a file or folder as writable files (the cached model is read-only)."""
    files = [source] if source.is_file() else [p for p in source.rglob("*") if p.is_file()]
    for file in files:
        destination = target if source.is_file() else target / file.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.unlink(missing_ok=True)
        shutil.copyfile(file, destination)


def stage(model_name: str, model_path: str | None, tags: dict[str, Any] | None, description: str | None) -> Model:
    """Copy what ``model_path`` names (an uploaded artifact's name, else a path) for the worker
    to register after the mini-batch; the Model (its version unknown until then)."""
    if current.minibatch_index < 0 or staging is None:
        raise AzureOnlyError("register_model() outside run()", "register models in run(): each registration "
                             "belongs to the mini-batch that made it, so a retried mini-batch never makes a second")
    if not model_path:
        raise TypeError("register_model() needs model_path=, the file or folder to register")
    source = current.artifacts.get(model_path) or Path(model_path)
    if not source.exists():
        raise FileNotFoundError(f"register_model(): {model_path} is neither a file uploaded by upload_file() "
                                "nor a path in the working directory")
    target = staging / str(len(pending)) / (source.name or "model")
    _copy(source, target)
    labels = {str(k): str(v) for k, v in (tags or {}).items()}
    pending.append(Registration(model_name, str(target), labels, description or ""))
    return Model._of(None, None, model_name, labels)


class Run:
    """``Run.get_context()``: the running job's run. Its ``id`` is the job id and so is its
    ``parent``'s (a job is one step of no pipeline); ``child_run()`` names runs below it."""

    def __init__(self, name: str = "", parent: Run | None = None) -> None:
        self._name, self._parent = name, parent

    @staticmethod
    def get_context(allow_offline: bool = True, **kwargs: Any) -> Run:
        return Run()

    @property
    def id(self) -> str:  # noqa: A003 - Azure's name
        if not current.job_id:
            raise AzureOnlyError("Run.id in init()", "read it in run(): a scoring process serves every job of its "
                                 "deployment, so the run is known per mini-batch")
        return f"{self._parent.id}_{self._name}" if self._parent else current.job_id

    @property
    def parent(self) -> Run:
        return self._parent or Run("", None)

    @property
    def experiment(self) -> Experiment:
        return Experiment(_THE_WORKSPACE, current.endpoint or "parallelrun")

    @property
    def name(self) -> str:
        return self._name or current.job_id

    def child_run(self, name: str | None = None, run_id: str | None = None, outputs: Any = None) -> Run:
        return Run(run_id or name or "child", self)

    def log(self, name: str, value: Any, description: str = "", step: Any = None) -> None:
        log.info("%s = %s", name, value)

    def log_list(self, name: str, value: Any, description: str = "") -> None:
        log.info("%s = %s", name, list(value))

    def log_row(self, name: str, description: str | None = None, **kwargs: Any) -> None:
        log.info("%s = %s", name, kwargs)

    def log_table(self, name: str, value: Any, description: str = "") -> None:
        log.info("%s = %s", name, value)

    def tag(self, key: str, value: Any = None) -> None:
        log.info("tag %s = %s", key, value)

    def set_tags(self, tags: dict[str, Any]) -> None:
        log.info("tags %s", tags)

    def add_properties(self, properties: dict[str, Any]) -> None:
        log.info("properties %s", properties)

    def complete(self, _set_status: bool = True) -> None:
        log.info("run %s completed", self.id)

    def fail(self, error_details: Any = None, **kwargs: Any) -> None:
        log.warning("run %s failed: %s", self.id, error_details)

    def upload_file(self, name: str, path_or_stream: Any) -> None:
        """The file (a path or a stream) becomes the run's artifact ``name``: a file of the job's
        output folder, as EntryScript().output_dir's files are."""
        if outputs is None:
            raise AzureOnlyError("Run.upload_file() outside a scoring process", "upload files from run()")
        target = safepath.inside(outputs, name, "upload_file(): the name")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(path_or_stream, (str, Path)):
            shutil.copyfile(path_or_stream, target)
        else:
            data = path_or_stream.read()
            target.write_bytes(data.encode() if isinstance(data, str) else data)
        current.artifacts[name] = target

    def register_model(self, model_name: str, model_path: str | None = None, tags: dict[str, Any] | None = None,
                       properties: Any = None, description: str | None = None, **kwargs: Any) -> Model:
        return stage(model_name, model_path, tags, description)

    def __getattr__(self, name: str) -> Refused:
        return Refused(f"Run.{name}", "a parallelrun job's run logs (log, log_row, tag), uploads files (upload_file) "
                                      "and registers models (register_model); its status is `parallelrun status`")
