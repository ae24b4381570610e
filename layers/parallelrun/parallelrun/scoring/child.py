"""The scoring process: the user's script imported, ``init()`` once, then ``run()`` for each
mini-batch the worker sends down the pipe, its logging and ``print()`` captured as that
mini-batch's log lines and its return value turned into output rows.

The worker's side of the pipe is :mod:`parallelrun.scoring.host`, which starts :func:`main` in a
spawned process (so this module is imported there by name). The records that cross the pipe
(:class:`MiniBatchContext` down, :class:`Failure` up) live here because this side builds them
from what arrives.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import io
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from parallelrun.core import logs, results
from parallelrun.core.errors import ScoringScriptError
from parallelrun.core.failures import Failure
from parallelrun.core.settings import RunSettings
from parallelrun.scoring import azure, azure_workspace, loaded, modelfiles, nocode



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
    dataset: Any = None  # the mini-batch's subset of the input, set in the scoring process

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)


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


def main(conn: Connection, root: str, deployment: dict[str, Any], settings_json: str,
         model_path: str, folders: dict[str, str]) -> None:
    """The scoring process's life: "ready" (or init()'s failure), then one reply per mini-batch
    until the worker closes the pipe. Between them, the script's questions to the worker
    (``("ask", ...)``, see :func:`_ask`)."""
    settings = RunSettings.from_json(settings_json)
    _prepare(conn, Path(root), folders)
    logs.setup(settings.logging_level)
    capture = LogCapture()
    logging.getLogger().addHandler(capture)
    user_log = logging.getLogger("user")
    if model_path:
        modelfiles.pinned[deployment["model_name"]] = (deployment["model_version"], model_path)
        _use_model_dir(model_path)
    loaded.configure(settings.model_cache_bytes)
    os.environ.update(settings.environment_variables)
    try:
        with contextlib.redirect_stdout(_PrintToLog(user_log)):
            if deployment["entry_script"]:
                module, takes_context = _import_and_init(Path(root), deployment["entry_script"], settings.arguments)
            else:  # no scoring script: the built-in scorer, its model loaded here as init() would
                module, takes_context = nocode.Scorer.load(model_path), True
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
            modelfiles.pinned[context.model_name] = (context.model_version, context.model_path)
            _use_model_dir(context.model_path)
            loaded.current = (context.model_name, context.model_version, context.model_path)
        context.dataset = azure.MiniBatchDataset(paths, context.partition_key_value)
        azure_workspace.current = azure_workspace.Current(context.job_id, context.minibatch_index,
                                                          deployment.get("endpoint", ""))
        azure_workspace.pending.clear()
        capture.lines = []
        with logs.context(context.job_id, context.minibatch_index), contextlib.redirect_stdout(_PrintToLog(user_log)):
            try:
                result = module.run(paths, context) if takes_context else module.run(paths)
                header, rows = to_rows(result, settings.output_format, settings.append_row_separator)
                reply = ("ok", {"rows": rows, "header": header, "registrations": list(azure_workspace.pending)},
                         capture.lines)
            except BaseException as error:  # noqa: BLE001 - the user's run() may raise anything
                failure = Failure.from_exception(error)
                user_log.error("run() failed: %s: %s", failure.error_type, failure.message)
                reply = ("error", tuple(failure.__dict__.values()), capture.lines)
        azure_workspace.current = azure_workspace.Current()  # register_model() outside run() is refused
        try:
            conn.send(reply)
        except (BrokenPipeError, EOFError, OSError):
            return  # the worker is gone (killed): so is this process's purpose


def _prepare(conn: Connection, root: Path, folders: dict[str, str]) -> None:
    """The process as Azure's entry scripts expect it: the shims installed (after the code's
    folder is on the path, so a real package shipped with the code wins), EntryScript's and
    AZUREML_BI_OUTPUT_PATH's folder, and a writable working directory."""
    os.environ[azure.OUTPUT_DIR_VAR] = os.environ[azure.BI_OUTPUT_VAR] = folders["output"]
    os.environ[azure.LOG_DIR_VAR] = folders["logs"]
    azure_workspace.staging, azure_workspace.outputs = Path(folders["registrations"]), Path(folders["output"])
    modelfiles.ask_worker = functools.partial(_ask, conn)
    # Lambda's disk is read-only but /tmp: the script runs in a folder of its own there, in
    # which each of its code's files and folders is linked, so relative paths reach them and
    # files it writes land beside them (https://docs.aws.amazon.com/lambda/latest/dg/configuration-ephemeral-storage.html).
    work = Path(folders["work"])
    for entry in sorted(root.iterdir()):
        (work / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    os.chdir(work)
    sys.path.insert(0, str(root))  # the script's own helper modules sit beside it
    azure.install()  # Azure ML's modules for its entry scripts, where the real ones are absent


def _use_model_dir(model_path: str) -> None:
    """AZUREML_MODEL_DIR is the version's folder, in which the model sits under its own name."""
    os.environ["AZUREML_MODEL_DIR"] = str(Path(model_path).parent)
    azure.offline_layout(model_path)


def _ask(conn: Connection, request: str, arguments: tuple) -> Any:
    """Ask the worker (see :data:`parallelrun.scoring.modelfiles.ask_worker`); its error is raised here."""
    conn.send(("ask", (request, arguments), []))
    status, answer = conn.recv()
    if status == "refused":
        raise answer
    return answer


def _import_and_init(root: Path, entry_script: str, arguments: tuple[str, ...]) -> tuple[Any, bool]:
    entry = root / entry_script
    spec = importlib.util.spec_from_file_location(f"parallelrun_user_{entry.stem}", entry)
    if spec is None or spec.loader is None:
        raise ScoringScriptError(f"cannot import entry script {entry_script}")
    module = importlib.util.module_from_spec(spec)
    # Compiled files written beside the code would be imported next time without a check.
    sys.dont_write_bytecode = True
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
    if isinstance(result, Iterator):  # a generator: what it yields, tables joined into one
        items = list(result)
        if items and all(hasattr(item, "itertuples") and hasattr(item, "columns") for item in items):
            import pandas

            result = pandas.concat(items, ignore_index=True)
        else:
            result = items
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
