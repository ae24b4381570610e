"""Pipelines of steps, as a user writes them: an ordered list of steps, each an endpoint (or one
of its deployments) with its settings, and what each step feeds the next.

A step's output folder is the next step's input: either its collated table (``feed: table``,
the default: images → a features table → a classifier scoring that table) or the files its
script wrote to ``EntryScript().output_dir`` (``feed: files``). ``summary.json``,
``failures.jsonl`` and the script's ``logs/`` are never fed on. Nothing here talks to AWS: the
stored records are :mod:`parallelrun.store.pipelines`', the hand-on from step to step
:mod:`parallelrun.pipeline.chaining`'s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from parallelrun.core.errors import InputError, SettingsError
from parallelrun.core.settings import RunSettings, canonical

TABLE, FILES = "table", "files"
FEEDS = {TABLE: "the step's collated table (parallel_run_step.txt/csv/parquet) only",
         FILES: "the files its script wrote to EntryScript().output_dir / AZUREML_BI_OUTPUT_PATH"}
# A pipeline and an endpoint share the drop bucket's top-level folders, and a run's id starts
# with the pipeline's name: the same rule as an endpoint's name.
NAME = re.compile(r"^[a-z0-9][a-z0-9\-]{0,62}$")
MAX_STEPS = 20  # a run record holds every step's job id; a longer chain is a design smell, not a need
# What a step's output folder holds besides what it feeds: never an input of the next step.
NEVER_FED = ("summary.json", "failures.jsonl", "logs/")
# Table formats a tabular step can read, by the producing step's output_format.
READABLE_TABLES = ("csv", "parquet")


@dataclass(frozen=True)
class Step:
    """One step: the endpoint (and deployment) that runs it, its settings over the deployment's,
    and what it feeds the next step."""

    name: str
    endpoint: str
    deployment: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    feed: str = TABLE

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "endpoint": self.endpoint, "deployment": self.deployment,
                "settings": dict(self.settings), "feed": self.feed}


@dataclass(frozen=True)
class Feed:
    """Which objects of the producing step's output folder are the next step's inputs, by their
    names relative to that folder: ``only`` those (a table), or all but ``skip`` (a name ending
    in '/' is a folder)."""

    only: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()

    def feeds(self, relative: str) -> bool:
        if self.only:
            return relative in self.only
        return not any(relative == name or (name.endswith("/") and relative.startswith(name)) for name in self.skip)

    def to_dict(self) -> dict[str, list[str]]:
        return {"only": list(self.only), "skip": list(self.skip)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Feed:
        return cls(tuple(raw.get("only") or ()), tuple(raw.get("skip") or ()))


def feed_of(step: Step, produced: RunSettings) -> Feed:
    """What ``step`` (which ran with ``produced``) feeds the next step."""
    if step.feed == TABLE:
        return Feed(only=(produced.output_file_name,))
    return Feed(skip=(produced.output_file_name, *NEVER_FED))


def next_overrides(step: Step, producer: Step, produced: RunSettings) -> dict[str, Any]:
    """``step``'s settings when ``producer`` feeds it: a table's format is the producer's output
    format (its file may be named ``.txt``), unless the step names its own."""
    overrides = dict(step.settings)
    if producer.feed == TABLE and produced.output_format in READABLE_TABLES:
        overrides.setdefault("input_format", produced.output_format)
    return overrides


def check_feed(producer: Step, produced: RunSettings, consumer: Step, consumed: RunSettings) -> None:
    """Refuse a chain whose step cannot read what the step before feeds it, naming both."""
    if producer.feed != TABLE:
        return
    if produced.output_action != "append_row":
        raise SettingsError("feed", TABLE, f"step {producer.name!r} writes no table (output_action="
                            f"{produced.output_action}): feed its files, or give it output_action=append_row")
    if consumed.input_type == "tabular" and produced.output_format not in READABLE_TABLES:
        raise SettingsError("feed", TABLE, f"step {producer.name!r} feeds its table to tabular step "
                            f"{consumer.name!r}: give {producer.name!r} output_format csv or parquet "
                            f"(txt rows have no header to name their columns)")


def parse_steps(raw: Any) -> list[Step]:
    """The ``steps`` of a pipeline file (YAML or JSON): a list of mappings with ``endpoint`` and
    optionally ``name``, ``deployment``, ``settings`` and ``feed``; each is checked here."""
    if not isinstance(raw, list) or not raw:
        raise InputError("a pipeline needs `steps:`, a list of at least one step (each with an `endpoint`)")
    if len(raw) > MAX_STEPS:
        raise InputError(f"a pipeline has at most {MAX_STEPS} steps, not {len(raw)}")
    steps = [_step(number, entry) for number, entry in enumerate(raw, 1)]
    names = [step.name for step in steps]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(f"step names must differ: {', '.join(repeated)} is used twice; give each step a `name`")
    return steps


def _step(number: int, entry: Any) -> Step:
    where = f"step {number}"
    if not isinstance(entry, Mapping) or not isinstance(entry.get("endpoint"), str):
        raise InputError(f"{where}: a mapping with at least `endpoint: NAME`")
    unknown = sorted(set(entry) - {"name", "endpoint", "deployment", "settings", "feed"})
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}; a step has name, endpoint, deployment, "
                         "settings and feed")
    name = str(entry.get("name") or entry["endpoint"])
    if not NAME.match(name):
        raise InputError(f"{where}: name {name!r}: use lower-case letters, digits and '-'")
    settings = entry.get("settings") or {}
    if not isinstance(settings, Mapping):
        raise InputError(f"{where} ({name}): `settings` is a mapping of run settings")
    if "output_path" in canonical(settings):
        # Each run's step writes a folder of its own (an output folder is written once), and a
        # step on its job's own folder can take an identical earlier step's output whole.
        raise SettingsError("output_path", settings.get("output_path"), "not on a pipeline step: each step writes "
                            "its job's own folder; `parallelrun results` reads the last step's")
    feed = entry.get("feed") or TABLE
    if feed not in FEEDS:
        raise SettingsError("feed", feed, "; ".join(f"{k} ({v})" for k, v in FEEDS.items()))
    deployment = entry.get("deployment")
    if deployment is not None and not isinstance(deployment, str):
        raise InputError(f"{where} ({name}): `deployment` is the name of one of the endpoint's deployments")
    return Step(name, entry["endpoint"], deployment, canonical(dict(settings)), feed)


@dataclass(frozen=True)
class Definition:
    """A pipeline file's content: its name (if it gives one), description and steps."""

    name: str | None
    description: str
    steps: list[Step]


def parse_file(path: str | Path) -> Definition:
    """A pipeline file, YAML or JSON (JSON is YAML)::

        name: digits-chain            # optional: `pipelines create NAME` gives it otherwise
        description: images to features to labels
        steps:
          - name: features
            endpoint: featurize
            settings: {mini_batch_size: 20, output_format: csv}
            feed: table               # what this step feeds the next: table (default) or files
          - name: classify
            endpoint: classifier
            deployment: blue          # optional: the endpoint's default otherwise
            settings: {input_type: tabular}
    """
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise InputError(f"pipeline file {path}: {error}") from None
    if not isinstance(raw, Mapping):
        raise InputError(f"pipeline file {path}: a mapping with `steps:` (and optionally `name:`, `description:`)")
    unknown = sorted(set(raw) - {"name", "description", "steps"})
    if unknown:
        raise InputError(f"pipeline file {path}: unknown key(s) {', '.join(map(str, unknown))}")
    name = raw.get("name")
    return Definition(str(name) if name is not None else None, str(raw.get("description") or ""),
                      parse_steps(raw.get("steps")))


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise InputError(f"pipeline name {name!r}: use lower-case letters, digits and '-', at most 63 characters")
