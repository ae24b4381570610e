"""Running the user's scoring script: in a child process, ``init()`` once, ``run()`` on a deadline.

The script runs in a *scoring process* the worker starts and keeps: ``init()`` runs there once
per deployment (a warm Lambda container or a local worker keeps it for every later mini-batch),
and each ``run()`` gets ``run_invocation_timeout`` seconds. A ``run()`` past its deadline is
stopped by killing that process, which a thread could never be; a crash inside the user's code
(a segfault, running out of memory) takes the scoring process down, not the worker, which
reports it as that attempt's failure. The script's code arrives as a zip stored under its
SHA-256; every time a scoring process starts, the unpacked files are checked against the zip's
before anything in them is imported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import inspect
import io
import logging
import multiprocessing
import os
import re
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from parallelrun import aws
from parallelrun.aws.config import StackConfig
from parallelrun.core import logs, results, safepath
from parallelrun.core import settings as settings_module
from parallelrun.core.errors import IntegrityError, ScoringScriptError
from parallelrun.core.failures import Failure
from parallelrun.core.settings import RunSettings
from parallelrun.scoring import azure, credentials, loaded
from parallelrun.store import registry

INIT_WAIT_LIMIT = 900  # seconds: no invocation lasts longer (Lambda's limit)


@dataclass
class MiniBatchContext:
    """What ``run(mini_batch, mini_batch_context)`` receives; attributes and ``[]`` both work."""

    job_id: str
    minibatch_index: int
    attempt: int
    partition_key_value: dict[str, Any] = field(default_factory=dict)
    side_inputs: dict[str, str] = field(default_factory=dict)  # name → local path
    input_files: list[str] = field(default_factory=list)  # s3:// URIs of the mini-batch's files
    # The partition's own model, when the deployment picks one per partition (many-models).
    model_name: str = ""
    model_version: int | None = None
    model_path: str = ""

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)


class AttemptFailed(Exception):
    """``run()`` raised, returned nothing usable, ran out of time, or its process died."""

    def __init__(self, failure: Failure, log_lines: list[str] | None = None) -> None:
        super().__init__(f"{failure.error_type}: {failure.message}")
        self.failure = failure
        self.log_lines = log_lines or []


@dataclass
class Outcome:
    rows: results.Rows
    log_lines: list[str]
    header: str | None = None  # a DataFrame's column names, for csv output


# --- the worker's side


class ScoringHost:
    """The scoring process of one deployment, started on first use and replaced after a kill."""

    def __init__(self, cfg: StackConfig, deployment: dict[str, Any], settings: RunSettings) -> None:
        self.cfg, self.deployment, self.settings = cfg, deployment, settings
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.side_inputs: dict[str, str] = {}
        # EntryScript().output_dir and .log_dir: what the script leaves there after a mini-batch
        # is moved to that mini-batch's job (a scoring process runs one mini-batch at a time).
        self.entry_dirs = {name: safepath.ENTRY / f"{os.getpid()}-{id(self)}" / name
                           for name in ("output", "logs")}
        for folder in self.entry_dirs.values():
            folder.mkdir(parents=True, exist_ok=True)

    def _start(self) -> None:
        self.side_inputs = fetch_side_inputs(settings_module.side_input_uris(self.settings))
        arguments = tuple(re.sub(r"\{side_input:([^}]+)\}", lambda m: self._side_path(m.group(1)), word)
                          for word in self.settings.arguments)
        settings = dataclasses.replace(self.settings, arguments=arguments)
        root = code_dir(self.cfg, self.deployment["code_sha"])  # verified here, before any import
        # What the script may read itself, through the SDK (the worker fetches all of it anyway).
        reads = list(settings_module.side_input_uris(self.settings).values())
        if registry.is_per_partition(self.deployment["model_name"]):
            model_path, single_file = "", False  # each mini-batch brings its partition's model
        else:
            model = registry.get(self.cfg, self.deployment["model_name"], self.deployment["model_version"])
            model_path, single_file = registry.local_path(self.cfg, model), model.single_file
            reads.append(f"s3://{self.cfg.artifacts_bucket}/{model.prefix}")
        credentials.protect_from_children()
        policy = credentials.read_policy(reads, credentials.role_arn().split(":")[1])
        scoped = credentials.ScopedCredentials(aws.client("sts"), policy, f"scoring-{os.getpid()}",
                                               safepath.CACHE_ROOT / "credentials" / f"{os.getpid()}-{id(self)}")
        context = multiprocessing.get_context("spawn")  # never fork a process that holds client threads
        parent, child = context.Pipe()
        self.process = context.Process(
            target=_host_main, name="parallelrun-scoring", daemon=True,
            args=(child, str(root), self.deployment, settings.to_json(), model_path, single_file,
                  {k: str(v) for k, v in self.entry_dirs.items()}),
        )
        with scoped.applied():
            self.process.start()
        scoped.keep_fresh(self.process.sentinel)
        child.close()
        self.conn = parent

    def _side_path(self, name: str) -> str:
        if name not in self.side_inputs:
            raise ScoringScriptError(f"arguments name side input {name!r}, but the job's side inputs are "
                                     f"{sorted(self.side_inputs) or 'none'}")
        return self.side_inputs[name]

    def run(self, mini_batch: Any, context: MiniBatchContext, timeout: float,
            deadline: float = float("inf")) -> Outcome:
        """``run(mini_batch)`` in the scoring process, started first if need be (``init()`` may take
        until ``deadline``, ``run()`` gets ``timeout``); raises :class:`AttemptFailed`."""
        if self.process is None or not self.process.is_alive():
            try:
                self._start()
            except Exception as error:  # code that fails its check, a missing model: this attempt fails
                self.stop()
                raise AttemptFailed(Failure.from_exception(error)) from error
            self._await_init(deadline)
        assert self.conn is not None and self.process is not None
        context.side_inputs = dict(self.side_inputs)
        self.conn.send((mini_batch, context.__dict__))
        if not self.conn.poll(timeout):
            self.stop()
            raise AttemptFailed(Failure("RunTimeout", f"run() took longer than run_invocation_timeout={timeout:g} s; "
                                                      "the scoring process was stopped"))
        try:
            status, payload, log_lines = self.conn.recv()
        except (EOFError, OSError):
            code = self.process.exitcode if self.process.join(5) is None else None
            self.stop()
            raise AttemptFailed(Failure("ScoringProcessDied", f"the scoring process died (exit code {code}): "
                                                              "killed, out of memory or crashed in native code"))
        if status == "ok":
            return Outcome(payload["rows"], log_lines, payload["header"])
        raise AttemptFailed(Failure(*payload), log_lines)

    def _await_init(self, deadline: float) -> None:
        """Wait for ``init()``: it has the invocation's time, not run()'s (a big model loads slowly)."""
        assert self.conn is not None
        wait = min(deadline - time.time(), INIT_WAIT_LIMIT)
        if wait <= 0 or not self.conn.poll(wait):
            self.stop()
            raise AttemptFailed(Failure("InitTimeout", "init() did not finish in the time the invocation had left"))
        try:
            status, payload, log_lines = self.conn.recv()
        except (EOFError, OSError):
            self.stop()
            raise AttemptFailed(Failure("ScoringProcessDied", "the scoring process died during init()")) from None
        if status != "ready":
            self.stop()  # init() failed: a later attempt starts afresh
            raise AttemptFailed(Failure(*payload), log_lines)

    def stop(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.process = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None


_hosts: dict[tuple, ScoringHost] = {}


def host(cfg: StackConfig, deployment: dict[str, Any], settings: RunSettings) -> ScoringHost:
    """The scoring process for this deployment and these arguments, kept across mini-batches."""
    key = (deployment["code_sha"], deployment["entry_script"], deployment["model_name"],
           deployment["model_version"], settings.arguments, tuple(sorted(settings.environment_variables.items())),
           settings.side_inputs, settings.logging_level, settings.output_format, settings.append_row_separator,
           settings.model_cache_size)
    if key not in _hosts:
        _hosts[key] = ScoringHost(cfg, deployment, settings)
    return _hosts[key]


def fetch_side_inputs(uris: dict[str, str]) -> dict[str, str]:
    """Each side input on local disk, fetched once per machine: an object → a file, a prefix
    (ending in '/') → a folder of its objects."""
    paths = {}
    for name, uri in uris.items():
        bucket, key = aws.split_s3_uri(uri)
        folder = safepath.SIDE_INPUTS / hashlib.sha256(uri.encode()).hexdigest()[:16]
        target = safepath.inside(folder, name, f"side input {uri}: the name")
        done = folder / ".complete"
        if not done.exists():
            if key.endswith("/") or not key:
                aws.download_prefix(bucket, key, target)
                target.mkdir(parents=True, exist_ok=True)
            else:
                folder.mkdir(parents=True, exist_ok=True)
                aws.client("s3").download_file(bucket, key, str(target))
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
        data = aws.client("s3").get_object(Bucket=cfg.artifacts_bucket, Key=f"code/{sha}.zip")["Body"].read()
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha:
            raise IntegrityError(f"scoring code code/{sha}.zip has SHA-256 {actual}: refusing to import it")
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
            f"scoring code {target}: {name} {found}, but in code/{sha}.zip it {expected}{more}: refusing to "
            "import it (the folder is removed; the next attempt unpacks the zip again)")


# --- the scoring process's side


class LogCapture(logging.Handler):
    """Keeps the JSON lines of one run() (the user's logging included) to return with its result."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(logs.JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class _PrintToLog(io.TextIOBase):
    """``print()`` inside the user's script becomes a log line of its mini-batch."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger, self.pending = logger, ""

    def write(self, text: str) -> int:
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            if line.strip():
                self.logger.info(line)
        return len(text)


def _host_main(conn: Connection, root: str, deployment: dict[str, Any], settings_json: str,
               model_path: str, single_file: bool, entry_dirs: dict[str, str]) -> None:
    settings = RunSettings.from_json(settings_json)
    os.environ[azure.OUTPUT_DIR_VAR], os.environ[azure.LOG_DIR_VAR] = entry_dirs["output"], entry_dirs["logs"]
    azure.install()  # Azure ML's modules for its entry scripts, where the real ones are absent
    logs.setup(settings.logging_level)
    capture = LogCapture()
    logging.getLogger().addHandler(capture)
    user_log = logging.getLogger("user")
    if model_path:
        registry.pinned[deployment["model_name"]] = (deployment["model_version"], model_path)
        os.environ["AZUREML_MODEL_DIR"] = str(Path(model_path).parent if single_file else model_path)
    loaded.configure(settings.model_cache_bytes)
    os.environ.update(settings.environment_variables)
    try:
        with contextlib.redirect_stdout(_PrintToLog(user_log)):
            module, takes_context = _import_and_init(Path(root), deployment["entry_script"], settings.arguments)
        ready: tuple = ("ready", None, capture.lines)
    except BaseException as error:  # noqa: BLE001 - the user's init() may raise anything
        ready = ("init", tuple(Failure.from_exception(error).__dict__.values()), capture.lines)
    try:
        conn.send(ready)
    except (BrokenPipeError, EOFError, OSError):
        return
    if ready[0] != "ready":
        return
    while True:
        try:
            paths, raw_context = conn.recv()
        except EOFError:
            return
        context = MiniBatchContext(**raw_context)
        if context.model_path:  # this partition's model: what get_model_path and load_model give
            registry.pinned[context.model_name] = (context.model_version, context.model_path)
            os.environ["AZUREML_MODEL_DIR"] = str(Path(context.model_path).parent if Path(context.model_path).is_file()
                                                  else context.model_path)
            loaded.current = (context.model_name, context.model_version, context.model_path)
        capture.lines = []
        with logs.context(context.job_id, context.minibatch_index), contextlib.redirect_stdout(_PrintToLog(user_log)):
            try:
                result = module.run(paths, context) if takes_context else module.run(paths)
                header, rows = to_rows(result, settings.output_format, settings.append_row_separator)
                reply = ("ok", {"rows": rows, "header": header}, capture.lines)
            except BaseException as error:  # noqa: BLE001 - the user's run() may raise anything
                failure = Failure.from_exception(error)
                user_log.error("run() failed: %s: %s", failure.error_type, failure.message)
                reply = ("error", tuple(failure.__dict__.values()), capture.lines)
        try:
            conn.send(reply)
        except (BrokenPipeError, EOFError, OSError):
            return  # the worker is gone (killed): so is this process's purpose


def _import_and_init(root: Path, entry_script: str, arguments: tuple[str, ...]) -> tuple[Any, bool]:
    entry = root / entry_script
    spec = importlib.util.spec_from_file_location(f"parallelrun_user_{entry.stem}", entry)
    if spec is None or spec.loader is None:
        raise ScoringScriptError(f"cannot import entry script {entry_script}")
    module = importlib.util.module_from_spec(spec)
    # Compiled files written beside the code would be imported next time without a check.
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(root))  # the script's own helper modules sit beside it
    sys.argv = [str(entry), *arguments]  # argparse in init() sees the job's arguments
    spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise ScoringScriptError(f"entry script {entry_script} defines no run(mini_batch)")
    if callable(getattr(module, "init", None)):
        module.init()
    return module, len(inspect.signature(module.run).parameters) >= 2


def to_rows(result: Any, output_format: str = "txt", separator: str = " ") -> tuple[str | None, results.Rows]:
    """``run()``'s return value as output rows, and a DataFrame's header line for csv output.

    txt (ParallelRunStep's): ``str()`` of each element, a DataFrame's values joined by
    ``separator``, no header. csv: a DataFrame's rows quoted as CSV, its header kept to be
    written once. Either way a row never spans lines, so no input's rows merge with another's.
    parquet: a table (see :func:`results.table_of`).
    """
    if result is None:
        raise ScoringScriptError("run() returned None: return a list, tuple, array or DataFrame")
    if output_format == "parquet":
        return None, results.table_of(result)
    header = None
    if hasattr(result, "itertuples") and hasattr(result, "columns"):
        if output_format == "csv":
            lines = result.to_csv(index=False, lineterminator="\n").split("\n")
            header, rows = lines[0], [line for line in lines[1:] if line]
            if len(rows) != len(result):
                raise ScoringScriptError("run() returned values with newlines: csv output needs one line per row")
            return header, rows
        rows = (separator.join(str(value) for value in row) for row in result.itertuples(index=False, name=None))
    elif isinstance(result, (list, tuple)) or hasattr(result, "tolist"):
        rows = (str(value) for value in (result.tolist() if hasattr(result, "tolist") else result))
    else:
        raise ScoringScriptError(
            f"run() returned {type(result).__name__}: return a list, tuple, array or DataFrame"
        )
    return header, [row.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r") for row in rows]
