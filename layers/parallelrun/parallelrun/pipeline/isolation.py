"""Scoring a mini-batch's partition slices, and after its last attempt isolating what failed.

A mini-batch is scored as one run() call per :class:`PartitionSlice` (one, unless a table has
``partition_keys``). When its last attempt fails and ``isolate_failures`` is set, each input
(files) or each partition slice (a table) is run alone, so that only what fails by itself is
failed and the rest of the mini-batch still succeeds. Every outcome is a :class:`Scored`: the
rows, and the failure lines with how many inputs they stand for.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from parallelrun.aws.config import StackConfig
from parallelrun.core import logs, model_refs, results
from parallelrun.core.datasets import InputFile, InputSpec, relative_name
from parallelrun.core.errors import IntegrityError, NotFoundError
from parallelrun.core.failures import Failure
from parallelrun.core.partitions import frame_groups
from parallelrun.scoring.host import AttemptFailed, ScoringHost
from parallelrun.store import jobs
from parallelrun.scoring import modelfiles, selection
from parallelrun.scoring.child import MiniBatchContext

log = logging.getLogger("parallelrun.pipeline.isolation")


@dataclass
class PartitionSlice:
    """The inputs of one partition within a mini-batch: one run() call."""

    partition: dict[str, Any] | None
    mini_batch: Any  # local paths, or a DataFrame
    items: list  # the files (or the one table piece) these inputs come from
    count: int  # inputs: files, or records
    positions: list[int] | None = None  # a table's rows: where each sits in the piece


@dataclass
class Scored:
    """What scoring a mini-batch (or slices of it) gave: rows, and failure lines."""

    rows: results.Rows = field(default_factory=list)
    header: str | None = None
    failed: list[tuple[Any, Failure]] = field(default_factory=list)  # inputs that failed
    unscored: int = 0  # how many inputs the failure lines stand for (a table's lines stand for rows)
    log_lines: list[str] = field(default_factory=list)


def slices_of(job: jobs.JobRecord, items: list, mini_batch: Any, partition: dict[str, str] | None) -> list[PartitionSlice]:
    """The mini-batch's run() calls: one, or with ``partition_keys`` on a table one per distinct
    value of the key columns (a file mini-batch was planned as one partition already)."""
    keys = job.settings.partition_keys
    if job.settings.input_type != "tabular" or not keys:
        count = len(mini_batch) if job.settings.input_type == "tabular" else len(items)
        return [PartitionSlice(partition if keys else {}, mini_batch, items, count)]
    try:
        groups = frame_groups(mini_batch, keys)
    except KeyError as error:
        raise AttemptFailed(Failure("PartitionKeyMissing", str(error.args[0]))) from error
    return [PartitionSlice(value, rows.reset_index(drop=True), items, len(rows), list(rows.index))
            for value, rows in groups]


def score_partitions(cfg: StackConfig, job: jobs.JobRecord, host: ScoringHost, slices: list[PartitionSlice],
                     context: MiniBatchContext, deadline: float) -> Scored:
    """run() once per partition, with that partition's model when the deployment picks one per
    partition. A partition with no model (or a file outside ``partition_format``) fails its own
    inputs at once, not the mini-batch; any run() that fails fails the attempt."""
    scored, placed = Scored(), []
    selector = model_refs.ModelSelector(job.deployment["model_name"]) if model_refs.is_per_partition(
        job.deployment["model_name"]) else None
    for part_slice in slices:
        if job.settings.partition_keys and part_slice.partition is None:
            reason = f"its path does not match partition_format {job.settings.partition_format}"
            scored.failed += [(item, Failure("PartitionMismatch", reason)) for item in part_slice.items]
            scored.unscored += part_slice.count
            continue
        context.partition_key_value = dict(part_slice.partition or {})
        if selector is not None:
            try:
                model = selection.resolve(cfg, selector, part_slice.partition)
            except NotFoundError as error:
                scored.failed += [(item, Failure("NoModelForPartition", str(error))) for item in part_slice.items]
                scored.unscored += part_slice.count
                continue
            context.model_name, context.model_version = model.name, model.version
            try:
                context.model_path = modelfiles.partition_model_path(cfg, model, job.settings.model_cache_bytes)
            except IntegrityError as error:  # a changed copy on disk: this attempt fails, the next fetches it again
                raise AttemptFailed(Failure.from_exception(error)) from error
        outcome = host.run(part_slice.mini_batch, context, job.settings.run_invocation_timeout, deadline)
        scored.log_lines += outcome.log_lines
        scored.header = scored.header or outcome.header
        placed.append((part_slice, outcome.rows))
    scored.rows = in_input_order(placed)
    return scored


def isolate_partitions(cfg: StackConfig, job: jobs.JobRecord, host: ScoringHost, slices: list[PartitionSlice],
                       context: MiniBatchContext, deadline: float) -> Scored:
    """After a table's last attempt: each partition alone, so only the partitions whose run()
    fails lose their rows."""
    isolated, placed, spec = Scored(), [], InputSpec.from_uri(job.input_uri)
    for part_slice in slices:
        try:
            scored = score_partitions(cfg, job, host, [part_slice], context, deadline)
        except AttemptFailed as error:
            isolated.log_lines += error.log_lines
            failure = dataclasses.replace(error.failure,
                                          message=f"partition {part_slice.partition}: {error.failure.message}")
            isolated.failed += [(item, failure) for item in part_slice.items]
            isolated.unscored += part_slice.count
            continue
        isolated.log_lines += scored.log_lines
        isolated.header = isolated.header or scored.header
        isolated.failed += scored.failed
        isolated.unscored += scored.unscored
        short = short_results(part_slice.items, part_slice.count - scored.unscored, len(scored.rows), spec)
        isolated.failed += short
        isolated.unscored += len(short)
        placed.append((part_slice, scored.rows))
    isolated.rows = in_input_order(placed)
    logs.event(log, "isolated the failed mini-batch's partitions", partitions=len(slices),
               failed=len(slices) - len(placed))
    return isolated


def in_input_order(placed: list[tuple[PartitionSlice, results.Rows]]) -> results.Rows:
    """Rows back in the order of the inputs they came from when every partition returned one
    row per input; otherwise partition by partition (which row belongs where is unknown)."""
    joined = results.concat([rows for _, rows in placed])
    if placed and all(part_slice.positions is not None and len(rows) == len(part_slice.positions)
                      for part_slice, rows in placed):
        positions = [position for part_slice, _ in placed for position in part_slice.positions]
        return results.take(joined, sorted(range(len(positions)), key=positions.__getitem__))
    return joined


def short_results(items: list, inputs: int, returned: int, spec: InputSpec) -> list[tuple[Any, Failure]]:
    """``run()`` returned fewer results than inputs: that many inputs failed, which ones unknown."""
    missing = inputs - returned
    if missing <= 0:
        return []
    failure = Failure("MissingResults", f"run() returned {returned} results for {inputs} inputs "
                                        f"({relative_name(items[0].key, spec.prefix)} .. "
                                        f"{relative_name(items[-1].key, spec.prefix)}): return one per input")
    return [(None, failure)] * missing


def isolate(host: ScoringHost, items: list[InputFile], paths: list[str], context: MiniBatchContext,
            timeout: float, deadline: float, batch_failure: Failure, log_lines: list[str]) -> Scored:
    """Run each input alone: keep the rows of those that succeed, fail only those that fail alone.
    The runs' log lines go to ``log_lines`` as they come, in order with what is logged meanwhile."""
    isolated = Scored()
    for item, path in zip(items, paths):
        if time.time() + timeout > deadline:
            isolated.failed.append((item, Failure(batch_failure.error_type, "not run alone: the invocation ran out of "
                                                  f"time; the mini-batch failed with: {batch_failure.message}",
                                                  batch_failure.traceback)))
            continue
        try:
            outcome = host.run([path], context, timeout, deadline)
        except AttemptFailed as error:
            log_lines += error.log_lines
            isolated.failed.append((item, error.failure))
            continue
        log_lines += outcome.log_lines
        isolated.rows = results.concat([isolated.rows, outcome.rows])
        if not len(outcome.rows):
            isolated.failed.append((item, Failure("MissingResults", "run() returned no result for this input alone")))
    isolated.unscored = len(isolated.failed)  # one input each
    logs.event(log, "isolated the failed mini-batch's inputs", inputs=len(items), failed=len(isolated.failed))
    return isolated


def last_attempt(cfg: StackConfig, job: jobs.JobRecord, host: ScoringHost, items: list, mini_batch: Any,
                 slices: list[PartitionSlice], context: MiniBatchContext, deadline: float,
                 failure: Failure, readable: int, log_lines: list[str]) -> Scored:
    """The mini-batch's last attempt failed with ``failure``: with ``isolate_failures``, its files
    or its table's partition slices alone; otherwise every input fails with it. (``log_lines``:
    the attempt's log, see :func:`isolate`.)"""
    if job.settings.isolate_failures and len(items) > 1:
        return isolate(host, items, mini_batch, context, job.settings.run_invocation_timeout, deadline, failure,
                       log_lines)
    if job.settings.isolate_failures and len(slices) > 1:
        return isolate_partitions(cfg, job, host, slices, context, deadline)
    return Scored(failed=[(item, failure) for item in items],
                  unscored=readable if job.settings.input_type == "tabular" else len(items))
