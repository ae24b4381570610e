"""Run settings with ParallelRunConfig's names and defaults, validated at submit.

Every value a user gives (``--set key=value``, a ``_READY`` marker's JSON body, an endpoint's
defaults) passes through :func:`resolve`, which refuses a bad value with the setting's name,
the value and what is allowed, so nothing invalid ever reaches a worker. What each setting may
hold is :mod:`parallelrun.core.setting_rules`; Azure ML v2's names for them are :data:`V2_NAMES`.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from parallelrun.core import setting_rules
from parallelrun.core.errors import SettingsError
from parallelrun.core.partitions import PathPattern
from parallelrun.core.setting_rules import MAX_BYTES_PER_BATCH, MAX_FILES_PER_BATCH, StackLimits, parse_size


DEFAULT_FILES_PER_BATCH = 10
DEFAULT_BYTES_PER_BATCH = 1024 * 1024
DEFAULT_FILE_NAME = "parallel_run_step.txt"

# What a _READY marker may set. Whoever can write to the input bucket may shape how a job runs
# (batching, thresholds, retries, output layout) but not what the scoring process sees or can
# reach: environment_variables steer its runtime, side_inputs read any S3 object the worker's role
# can read into the script, and arguments change what the endpoint owner's script does. Those come
# from the CLI/SDK or the deployment's settings.
DROP_FOLDER_SETTINGS = frozenset({
    "mini_batch_size", "error_threshold", "allowed_failed_count", "allowed_failed_percent", "output_action",
    "append_row_file_name", "run_invocation_timeout", "run_max_try", "process_count_per_node", "node_count",
    "logging_level", "partition_keys", "partition_format", "allow_reuse", "isolate_failures",
    "max_inflight_batches", "output_path", "output_format", "append_row_separator", "input_type", "input_format",
    "csv_options", "model_cache_size",
})


@dataclass(frozen=True)
class RunSettings:
    """The settings of one job. Field names are ParallelRunConfig's."""

    mini_batch_size: str | None = None  # files per batch, or a byte size for tabular input
    error_threshold: int = -1
    allowed_failed_count: int = -1
    allowed_failed_percent: float = 100.0
    output_action: str = "append_row"
    append_row_file_name: str = DEFAULT_FILE_NAME
    run_invocation_timeout: int = 60
    run_max_try: int = 3
    process_count_per_node: int | None = None
    node_count: int = 1
    logging_level: str = "INFO"
    side_inputs: tuple[str, ...] = ()
    arguments: tuple[str, ...] = ()
    partition_keys: tuple[str, ...] = ()
    allow_reuse: bool = True
    isolate_failures: bool = True
    max_inflight_batches: int | None = None
    output_path: str | None = None
    environment_variables: dict[str, str] = field(default_factory=dict)
    output_format: str = "txt"  # txt: ParallelRunStep's rows; csv: a header once at the top; parquet: typed
    append_row_separator: str = " "  # between a DataFrame row's values in txt output
    input_type: str = "files"  # or "tabular": run() gets DataFrames (TabularDataset)
    input_format: str | None = None  # csv, jsonl or parquet; None: by each file's extension
    csv_options: dict[str, str] = field(default_factory=dict)  # delimiter, quote_char, encoding
    partition_format: str | None = None  # files: a path pattern naming partition fields, {store}/{date}/*.png
    # Partition models a worker keeps, loaded and on disk (Lambda's /tmp is 512 MB by default).
    model_cache_size: str = "256MB"

    @property
    def files_per_batch(self) -> int:
        return DEFAULT_FILES_PER_BATCH if self.mini_batch_size is None else int(self.mini_batch_size)

    @property
    def bytes_per_batch(self) -> int:
        return DEFAULT_BYTES_PER_BATCH if self.mini_batch_size is None else parse_size(self.mini_batch_size)

    @property
    def model_cache_bytes(self) -> int:
        return parse_size(self.model_cache_size)

    @property
    def output_file_name(self) -> str:
        """The collated file's name: ``append_row_file_name``, but parquet output left at the
        default name is ``parallel_run_step.parquet`` (a ``.txt`` name would mislead every tool)."""
        if self.output_format == "parquet" and self.append_row_file_name == DEFAULT_FILE_NAME:
            return "parallel_run_step.parquet"
        return self.append_row_file_name

    @property
    def concurrency(self) -> int | None:
        """The job's worker cap (process_count_per_node × node_count), or None for no cap."""
        if self.process_count_per_node is None:
            return None
        return self.process_count_per_node * self.node_count

    def window(self, limits: StackLimits) -> int:
        """How many of this job's mini-batches may be in flight at once (DESIGN invariant 6)."""
        window = self.max_inflight_batches or limits.max_inflight_batches
        return min(window, self.concurrency) if self.concurrency else window

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunSettings:
        raw = json.loads(text)
        for name in ("side_inputs", "arguments", "partition_keys"):
            raw[name] = tuple(raw.get(name) or ())
        return cls(**raw)


def parse_assignments(pairs: Iterable[str]) -> dict[str, str]:
    """``["k=v", ...]`` from the command line into a dict; a pair without '=' is refused."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SettingsError(pair, pair, "write each setting as key=value, for example mini_batch_size=20")
        out[key.strip()] = value
    return out


def side_input_uris(settings: RunSettings) -> dict[str, str]:
    """Side inputs by name: ``labels=s3://b/labels.txt`` is named ``labels``; a bare URI is
    named after its last path part without extension (``s3://b/vocab/`` → ``vocab``)."""
    named = {}
    for entry in settings.side_inputs:
        name, _, uri = entry.partition("=") if not entry.startswith("s3://") else ("", "", entry)
        named[name or posixpath.splitext(posixpath.basename(uri.rstrip("/")))[0]] = uri
    return named


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(RunSettings))

# Azure ML v2's names (batch deployments and parallel jobs) for ParallelRunConfig's settings: the
# one place they are mapped, accepted wherever settings are given. max_retries counts tries, as
# run_max_try does ("the number of maximum tries for a failed or timeout mini batch", range 1..:
# https://learn.microsoft.com/en-us/python/api/azure-ai-ml/azure.ai.ml.entities.retrysettings);
# mini_batch_error_threshold counts failed mini-batches, as allowed_failed_count does, not inputs
# as error_threshold does; append_row_to is where the collated file goes, our output place
# (https://learn.microsoft.com/en-us/azure/machine-learning/reference-yaml-job-parallel).
V2_NAMES = {
    "max_concurrency_per_instance": "process_count_per_node",
    "instance_count": "node_count",
    "mini_batch_error_threshold": "allowed_failed_count",
    "retry_settings.max_retries": "run_max_try",
    "retry_settings.timeout": "run_invocation_timeout",
    "output_file_name": "append_row_file_name",
    "append_row_to": "output_path",
}


def _named(overrides: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """Each setting by ParallelRunConfig's name → (the name it was given under, its value). A
    ``retry_settings`` object is read as its dotted names; one setting given under both its names
    with different values is refused."""
    given: list[tuple[str, Any]] = []
    for name, value in overrides.items():
        if name == "retry_settings" and isinstance(value, Mapping):
            given.extend((f"retry_settings.{part}", inner) for part, inner in value.items())
        else:
            given.append((name, value))
    named: dict[str, tuple[str, Any]] = {}
    for name, value in given:
        target = V2_NAMES.get(name, name)
        if target in named and str(named[target][1]) != str(value):
            first, other = named[target]
            raise SettingsError(name, value, f"one value: {name} and {first} name one setting, and {first} is "
                                f"given as {other!r}")
        named[target] = (name, value)
    return named


def canonical(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` under ParallelRunConfig's names (see :data:`V2_NAMES`)."""
    return {target: value for target, (_, value) in _named(overrides).items()}


def resolve(
    overrides: Mapping[str, Any],
    base: RunSettings | None = None,
    limits: StackLimits | None = None,
    ecs: bool = False,
) -> RunSettings:
    """``base`` with ``overrides`` applied, each value checked; raises :class:`SettingsError`.
    ``ecs``: the settings of a compute: ecs deployment (its run_invocation_timeout may be hours)."""
    limits = limits or StackLimits()
    rules = setting_rules.rules(limits, ecs)
    values: dict[str, Any] = {}
    for name, (given, value) in _named(overrides).items():
        if name not in rules:
            raise SettingsError(given, value, "known settings are " + ", ".join(sorted(rules)) +
                                " (Azure ML v2's names too: " + ", ".join(sorted(V2_NAMES)) + ")")
        coerce, allowed = rules[name]
        try:
            values[name] = coerce(value)
        except (ValueError, TypeError, json.JSONDecodeError):
            raise SettingsError(given, value, allowed) from None
    settings = dataclasses.replace(base or RunSettings(), **values)
    check(settings, limits, ecs)
    return settings


def check(settings: RunSettings, limits: StackLimits, ecs: bool = False) -> None:
    """Checks that span settings, and a stored base re-checked against this stack's limits."""
    rules = setting_rules.rules(limits, ecs)
    for name in ("run_invocation_timeout", "run_max_try"):
        value = getattr(settings, name)
        try:
            rules[name][0](value)
        except ValueError:
            raise SettingsError(name, value, rules[name][1]) from None
    _check_batch_size(settings)
    if settings.concurrency is not None and settings.concurrency > limits.worker_max_concurrency:
        raise SettingsError(
            "process_count_per_node",
            settings.process_count_per_node,
            f"process_count_per_node x node_count at most {limits.worker_max_concurrency} "
            f"(now {settings.concurrency}; raise the stack's WorkerMaxConcurrency for more)",
        )


def _check_batch_size(settings: RunSettings) -> None:
    """mini_batch_size within its bound, which depends on the input type (files or bytes)."""
    size = settings.mini_batch_size
    if size is None:
        return
    if settings.input_type == "files":
        if size.isdigit() and int(size) > MAX_FILES_PER_BATCH:
            raise SettingsError("mini_batch_size", size, f"at most {MAX_FILES_PER_BATCH} files per mini-batch (each "
                                "mini-batch travels as one SQS message of at most 256 KiB)")
    elif parse_size(size) > MAX_BYTES_PER_BATCH:
        raise SettingsError("mini_batch_size", size, f"at most 1GB ({MAX_BYTES_PER_BATCH} bytes) per tabular mini-batch, "
                            "which a worker holds in memory")


def check_drop_overrides(overrides: Mapping[str, Any]) -> None:
    """Refuse a known setting a ``_READY`` marker may not set (see DROP_FOLDER_SETTINGS); unknown
    names are left to :func:`resolve`, which lists the known ones."""
    for name, value in canonical(overrides).items():
        if name in SETTING_NAMES and name not in DROP_FOLDER_SETTINGS:
            raise SettingsError(name, value, "it cannot be set from a drop folder's _READY marker: set it with the "
                                "CLI or SDK (submit --set) or in the deployment's settings")


def check_partitions(settings: RunSettings) -> RunSettings:
    """Partition settings that fit the input type; for files, ``partition_keys`` defaults to
    every field of ``partition_format``, and a pattern given as ``partition_keys`` is taken as
    ``partition_format`` with all its fields."""
    keys, pattern = settings.partition_keys, settings.partition_format
    if settings.input_type == "files" and not pattern and len(keys) == 1 and "{" in keys[0]:
        try:
            pattern = setting_rules.partition_format(keys[0])
        except ValueError:
            raise SettingsError("partition_keys", keys[0], "a path pattern naming each field once, such as "
                                "{store}/{date}/*.png, or names of partition_format's fields") from None
        keys = ()
        settings = dataclasses.replace(settings, partition_format=pattern, partition_keys=())
    if settings.input_type == "tabular":
        if pattern:
            raise SettingsError("partition_format", pattern, "nothing for tabular input, which is partitioned by "
                                "the values of the columns named in partition_keys")
        return settings
    if not pattern:
        if keys:
            raise SettingsError("partition_keys", ",".join(keys), "for file input, names of partition_format's "
                                "fields: set partition_format too, such as {store}/{date}/*.png")
        return settings
    fields = PathPattern(pattern).fields
    if not keys:
        return dataclasses.replace(settings, partition_keys=fields)
    unknown = [key for key in keys if key not in fields]
    if unknown:
        raise SettingsError("partition_keys", ",".join(keys), f"fields of partition_format {pattern} "
                            f"({', '.join(fields)}); {', '.join(unknown)} is not one")
    return settings


def check_for_files(settings: RunSettings) -> None:
    """File inputs are batched by count: a byte size makes no sense for them."""
    if settings.input_type != "files":
        return
    if settings.mini_batch_size is not None and not settings.mini_batch_size.isdigit():
        raise SettingsError(
            "mini_batch_size", settings.mini_batch_size, "a file count such as 10 for file inputs (sizes are for tabular input)"
        )
