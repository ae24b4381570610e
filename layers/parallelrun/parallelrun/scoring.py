"""Running the user's scoring script: load it once per process and deployment, call ``run``.

The script's code arrives as a zip stored under its SHA-256; it is verified before anything in
it is imported. ``init()`` runs once per (process, deployment): a warm Lambda container or a
local worker process keeps the loaded model for every later mini-batch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import io
import os
import shutil
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parallelrun import aws, registry
from parallelrun.config import StackConfig
from parallelrun.errors import ScoringScriptError
from parallelrun.settings import RunSettings


@dataclass
class MiniBatchContext:
    """What ``run(mini_batch, mini_batch_context)`` receives; attributes and ``[]`` both work."""

    job_id: str
    minibatch_index: int
    attempt: int
    partition_key_value: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)


@dataclass
class Script:
    module: Any
    takes_context: bool

    def run(self, mini_batch: Any, context: MiniBatchContext) -> Any:
        return self.module.run(mini_batch, context) if self.takes_context else self.module.run(mini_batch)


_lock = threading.Lock()
_scripts: dict[tuple, Script] = {}


def code_dir(cfg: StackConfig, sha: str) -> Path:
    """The scoring code, unpacked once per process from its zip after checking its SHA-256."""
    target = registry.CACHE_ROOT / "code" / sha
    if (target / ".verified").exists():
        return target
    data = aws.client("s3").get_object(Bucket=cfg.artifacts_bucket, Key=f"code/{sha}.zip")["Body"].read()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha:
        raise ScoringScriptError(f"scoring code code/{sha}.zip has SHA-256 {actual}: refusing to import it")
    staging = target.with_name(f"{sha}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(staging)
    (staging / ".verified").touch()
    try:
        staging.rename(target)
    except OSError:  # another process unpacked it first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load(cfg: StackConfig, deployment: dict[str, Any], settings: RunSettings) -> Script:
    """The deployment's script, imported and ``init()``-ed once in this process."""
    key = (deployment["code_sha"], deployment["entry_script"], deployment["model_name"],
           deployment["model_version"], settings.arguments, tuple(sorted(settings.environment_variables.items())))
    with _lock:
        if key not in _scripts:
            _scripts[key] = _import_and_init(cfg, deployment, settings, len(_scripts))
        return _scripts[key]


def _import_and_init(cfg: StackConfig, deployment: dict[str, Any], settings: RunSettings, number: int) -> Script:
    root = code_dir(cfg, deployment["code_sha"])
    registry.pinned_versions[deployment["model_name"]] = deployment["model_version"]
    model = registry.get(cfg, deployment["model_name"], deployment["model_version"])
    model_path = Path(registry.local_path(cfg, model))
    os.environ["AZUREML_MODEL_DIR"] = str(model_path.parent if model.single_file else model_path)
    os.environ.update(settings.environment_variables)
    entry = root / deployment["entry_script"]
    spec = importlib.util.spec_from_file_location(f"parallelrun_user_{number}_{entry.stem}", entry)
    if spec is None or spec.loader is None:
        raise ScoringScriptError(f"cannot import entry script {deployment['entry_script']}")
    module = importlib.util.module_from_spec(spec)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # the script's own helper modules sit beside it
    saved_argv = sys.argv
    sys.argv = [str(entry), *settings.arguments]  # argparse in init() sees the job's arguments
    try:
        spec.loader.exec_module(module)
        if not callable(getattr(module, "run", None)):
            raise ScoringScriptError(f"entry script {deployment['entry_script']} defines no run(mini_batch)")
        if callable(getattr(module, "init", None)):
            module.init()
    finally:
        sys.argv = saved_argv
    parameters = inspect.signature(module.run).parameters
    return Script(module, takes_context=len(parameters) >= 2)


def to_rows(result: Any) -> list[str]:
    """``run()``'s return value as output rows: ``str()`` of each element, a DataFrame's rows
    space-separated. A row never spans lines, so no input's rows can merge with another's."""
    if result is None:
        raise ScoringScriptError("run() returned None: return a list, tuple, array or DataFrame")
    if hasattr(result, "itertuples") and hasattr(result, "columns"):
        rows = (" ".join(str(value) for value in row) for row in result.itertuples(index=False, name=None))
    elif isinstance(result, (list, tuple)) or hasattr(result, "tolist"):
        rows = (str(value) for value in (result.tolist() if hasattr(result, "tolist") else result))
    else:
        raise ScoringScriptError(
            f"run() returned {type(result).__name__}: return a list, tuple, array or DataFrame"
        )
    return [row.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r") for row in rows]
