"""The worker's side of scoring: one scoring process per deployment, started on first use, kept
for every later mini-batch, and killed when ``run()`` passes its deadline.

``init()`` runs in the scoring process once per deployment (a warm Lambda container or a local
worker keeps it for every later mini-batch), and each ``run()`` gets ``run_invocation_timeout``
seconds. A ``run()`` past its deadline is stopped by killing that process, which a thread could
never be; a crash inside the user's code (a segfault, running out of memory) takes the scoring
process down, not the worker, which reports it as that attempt's failure. The process itself is
:mod:`parallelrun.scoring.child`; what it runs from is :mod:`parallelrun.scoring.code`. A deployment
with requirements of its own runs its scoring process in its environment
(:mod:`parallelrun.scoring.environments`).
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import os
import re
import shutil
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from parallelrun import aws
from parallelrun.aws import control
from parallelrun.aws.config import StackConfig
from parallelrun.core import model_refs, results, safepath
from parallelrun.core import settings as settings_module
from parallelrun.core.errors import ParallelRunError, ScoringScriptError, StackError
from parallelrun.core.settings import RunSettings
from parallelrun.scoring import child, credentials, environments, envstart, modelfiles
from parallelrun.scoring.azure_workspace import Registration
from parallelrun.scoring.child import Failure, MiniBatchContext
from parallelrun.scoring.code import code_dir, fetch_side_inputs
from parallelrun.store import registry

INIT_WAIT_LIMIT = 900  # seconds: no invocation lasts longer (Lambda's limit)
# An argument's reference: {side_input:NAME}, or Azure's ${{inputs.NAME}} / ${{outputs.NAME}}.
_REFERENCE = re.compile(r"\{side_input:(?P<side>[^}]+)\}|\$\{\{\s*(?P<kind>inputs|outputs)\.(?P<azure>[A-Za-z0-9_.-]+)\s*\}\}")


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


class ScoringHost:
    """The scoring process of one deployment, started on first use and replaced after a kill."""

    def __init__(self, cfg: StackConfig, deployment: dict[str, Any], settings: RunSettings) -> None:
        self.cfg, self.deployment, self.settings = cfg, deployment, settings
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.side_inputs: dict[str, str] = {}
        # EntryScript().output_dir and .log_dir: what the script leaves there after a mini-batch
        # is moved to that mini-batch's job (a scoring process runs one mini-batch at a time).
        own = safepath.ENTRY / f"{os.getpid()}-{id(self)}"
        self.entry_dirs = {name: own / name for name in ("output", "logs")}
        # Its working directory, and where the models it registers wait for register_models().
        self.work_dir, self.staging = own / "work", own / "registrations"
        self.registrations: list[Registration] = []  # of the running mini-batch's successful run() calls
        for folder in self.entry_dirs.values():
            folder.mkdir(parents=True, exist_ok=True)

    def _start(self) -> None:
        requirements = tuple(self.deployment.get("requirements") or ())
        # Built here at the latest (a local stack builds it at `deployments create`), once per
        # machine: a package that cannot install fails this attempt, naming it.
        environment = environments.ensure(requirements) if environments.needed(requirements) else None
        self.side_inputs = fetch_side_inputs(settings_module.side_input_uris(self.settings))
        # Verified here, before any import; a no-code deployment has no code to verify.
        root = code_dir(self.cfg, self.deployment["code_sha"]) if self.deployment["code_sha"] else ""
        # What the script may read itself, through the SDK (the worker fetches all of it anyway).
        reads = list(settings_module.side_input_uris(self.settings).values())
        model_path = ""  # a deployment that picks a model per partition: each mini-batch brings its own
        if not model_refs.is_per_partition(self.deployment["model_name"]):
            model = registry.get(self.cfg, self.deployment["model_name"], self.deployment["model_version"])
            model_path = modelfiles.local_path(self.cfg, model)
            reads.append(f"s3://{self.cfg.artifacts_bucket}/{model.prefix}")
        settings = dataclasses.replace(self.settings, arguments=tuple(
            _REFERENCE.sub(lambda m: self._resolve(m, model_path), word) for word in self.settings.arguments))
        for folder in (self.work_dir, self.staging):  # what an earlier scoring process left goes
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        credentials.protect_from_children()
        policy = credentials.read_policy(reads, credentials.role_arn().split(":")[1])
        # The worker's own STS client, bound now: renewals run on a thread later, when the shared
        # client cache may have been reset and a new client would see the narrowed environment.
        assume_role = functools.partial(control.assume_role, client=aws.client("sts"))
        scoped = credentials.ScopedCredentials(assume_role, policy, f"scoring-{os.getpid()}",
                                               safepath.CACHE_ROOT / "credentials" / f"{os.getpid()}-{id(self)}")
        context = multiprocessing.get_context("spawn")  # never fork a process that holds client threads
        parent, child_end = context.Pipe()
        folders = {**{k: str(v) for k, v in self.entry_dirs.items()}, "work": str(self.work_dir),
                   "registrations": str(self.staging)}
        args = (child_end, str(root), self.deployment, settings.to_json(), model_path, folders)
        target: Any = child.main
        if environment is not None:
            target, args = envstart.enter, (str(environment.site_packages), *args)
        self.process = context.Process(target=target, name="parallelrun-scoring", daemon=True, args=args)
        with scoped.applied(), environments.starting(environment):
            self.process.start()
        scoped.keep_fresh(self.process.sentinel)
        child_end.close()
        self.conn = parent

    def _resolve(self, found: re.Match, model_path: str) -> str:
        """What an argument's reference names, as Azure's parallel jobs resolve program_arguments
        (https://learn.microsoft.com/en-us/azure/machine-learning/reference-yaml-job-parallel):
        ``{side_input:NAME}`` and ``${{inputs.NAME}}`` a side input's local path, any other
        ``${{inputs.NAME}}`` the deployment's model (Azure's samples call it ``model`` or
        ``score_model``: its file or folder), ``${{outputs.NAME}}`` the folder collected into the
        job's output (a job has one output folder, so every output name is it)."""
        kind, name = found.group("kind"), found.group("side") or found.group("azure")
        if kind == "outputs":
            return str(self.entry_dirs["output"])
        if name in self.side_inputs:
            return self.side_inputs[name]
        if not kind:
            raise ScoringScriptError(f"arguments name side input {name!r}, but the job's side inputs are "
                                     f"{sorted(self.side_inputs) or 'none'}")
        if not model_path:
            raise ScoringScriptError(f"arguments name {found.group(0)}, which is no side input, and this deployment picks "
                                     "its model per partition: read mini_batch_context.model_path in run()")
        return model_path

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
        try:
            reply = self._reply(timeout)
        except (EOFError, OSError):
            code = self.process.exitcode if self.process.join(5) is None else None
            self.stop()
            raise AttemptFailed(Failure("ScoringProcessDied", f"the scoring process died (exit code {code}): "
                                                              "killed, out of memory or crashed in native code"))
        if reply is None:
            self.stop()
            raise AttemptFailed(Failure("RunTimeout", f"run() took longer than run_invocation_timeout={timeout:g} s; "
                                                      "the scoring process was stopped"))
        status, payload, log_lines = reply
        if status == "ok":
            self.registrations += payload["registrations"]
            return Outcome(payload["rows"], log_lines, payload["header"])
        raise AttemptFailed(Failure(*payload), log_lines)

    def _reply(self, wait: float) -> tuple | None:
        """The scoring process's reply within ``wait`` seconds (None if none came), answering its
        questions to the worker meanwhile; raises EOFError or OSError if it died."""
        assert self.conn is not None
        end = time.monotonic() + wait
        while wait > 0 and self.conn.poll(max(0.0, end - time.monotonic())):
            message = self.conn.recv()
            if message[0] != "ask":
                return message
            self.conn.send(self._answer(*message[1]))
        return None

    def _answer(self, request: str, arguments: tuple) -> tuple[str, Any]:
        """A registry lookup the scoring process cannot make with its credentials: ("answer", the
        value) or ("refused", the error to raise there). Models fetched for it stay on disk within
        the job's ``model_cache_size``, as partition models do."""
        try:
            if request == "model":
                model = registry.get(self.cfg, *arguments)
                return "answer", (model, modelfiles.partition_model_path(self.cfg, model, self.settings.model_cache_bytes))
            if request == "models":
                return "answer", registry.find(self.cfg, *arguments)
            raise ScoringScriptError(f"the scoring process asked for {request!r}, which the worker does not answer")
        except ParallelRunError as error:
            return "refused", error
        except Exception as error:  # the registry unreachable: the script sees why, as an error of ours
            return "refused", StackError(f"the model registry could not be read: {type(error).__name__}: {error}")

    def register_models(self, job_id: str, index: int) -> None:
        """Register what the mini-batch's run() calls registered, now that it succeeded, each
        under a claim naming the mini-batch and the registration's place in it, so that a retried
        or duplicated mini-batch returns the version the first made instead of making another."""
        seen: dict[str, int] = {}
        try:
            for made in self.registrations:
                seen[made.name] = seen.get(made.name, -1) + 1
                registry.register(self.cfg, made.path, made.name, made.tags, made.description,
                                  claim=f"{job_id}/{index}/{seen[made.name]}")
        finally:
            self.drop_registrations()

    def drop_registrations(self) -> None:
        """Forget the staged registrations (a failed attempt's are never registered)."""
        self.registrations = []
        for staged in self.staging.glob("*"):
            shutil.rmtree(staged, ignore_errors=True)

    def _await_init(self, deadline: float) -> None:
        """Wait for ``init()``: it has the invocation's time, not run()'s (a big model loads slowly)."""
        try:
            reply = self._reply(min(deadline - time.time(), INIT_WAIT_LIMIT))
        except (EOFError, OSError):
            self.stop()
            raise AttemptFailed(Failure("ScoringProcessDied", "the scoring process died during init()")) from None
        if reply is None:
            self.stop()
            raise AttemptFailed(Failure("InitTimeout", "init() did not finish in the time the invocation had left"))
        status, payload, log_lines = reply
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


def host_for(cfg: StackConfig, deployment: dict[str, Any], settings: RunSettings) -> ScoringHost:
    """The scoring process for this deployment and these arguments, kept across mini-batches."""
    key = (deployment["code_sha"], deployment["entry_script"], deployment["model_name"],
           deployment["model_version"], tuple(deployment.get("requirements") or ()), settings.arguments, tuple(sorted(settings.environment_variables.items())),
           settings.side_inputs, settings.logging_level, settings.output_format, settings.append_row_separator,
           settings.model_cache_size)
    if key not in _hosts:
        _hosts[key] = ScoringHost(cfg, deployment, settings)
    return _hosts[key]
