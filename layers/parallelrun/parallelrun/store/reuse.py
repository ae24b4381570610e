"""Reuse: a mini-batch already scored by a succeeded job is not scored again.

A mini-batch's fingerprint covers what decides its rows: the deployment (code SHA-256, entry
script, model version; the built-in scorer's version where there is no script), the settings
that reach the script, and its inputs by key and ETag.
When a job succeeds, its fully successful mini-batches are remembered under their fingerprints;
a later job with ``allow_reuse`` (the default, as in Azure) records a matching mini-batch as
done with the earlier part instead of sending it. Appending 10 files to a folder of 10,000 and
resubmitting runs only the mini-batches that hold new or changed files. A job whose every
mini-batch matches a succeeded job (same deployment, settings and inputs) takes that job's
output at once and says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from typing import Any

from parallelrun.aws import dynamo
from parallelrun.aws.config import StackConfig
from parallelrun.core import nocode
from parallelrun.core.datasets import InputFile, TablePiece
from parallelrun.core.settings import RunSettings
from parallelrun.store import keys

# Settings that change how a job runs, never what a mini-batch's rows are.
OPERATIONAL = ("allow_reuse", "output_path", "max_inflight_batches", "process_count_per_node", "node_count",
               "logging_level", "run_invocation_timeout", "run_max_try", "error_threshold",
               "allowed_failed_count", "allowed_failed_percent", "isolate_failures")


def fingerprint(deployment: dict[str, Any], settings: RunSettings, items: Iterable[InputFile | TablePiece]) -> str:
    """What a mini-batch's rows depend on, hashed."""
    relevant = {k: v for k, v in dataclasses.asdict(settings).items() if k not in OPERATIONAL}
    scored_by = {k: deployment.get(k) for k in ("code_sha", "entry_script", "model_name", "model_version")}
    if not deployment.get("code_sha"):  # no script: the built-in scorer, by its version, scored it
        scored_by["scorer"] = nocode.SCORER
    if deployment.get("requirements"):  # only then: mini-batches scored before requirements existed stay found
        scored_by["requirements"] = deployment["requirements"]
    content = json.dumps([scored_by, relevant, [i.to_json() for i in items]], sort_keys=True, default=str)
    return hashlib.sha256(content.encode()).hexdigest()


def lookup(cfg: StackConfig, fingerprints: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The remembered mini-batches among ``fingerprints``: fingerprint → part and counts."""
    wanted = list(dict.fromkeys(fingerprints))
    found = dynamo.batch_get(cfg.table, [keys.reuse_key(fp) for fp in wanted])
    return {keys.reuse_fingerprint(item["pk"]): item for item in found}


def job_fingerprint(batch_fingerprints: Iterable[str], running: str = "") -> str:
    """A whole job's fingerprint: its mini-batches', in order, folded one at a time into
    ``running`` (the value so far; "" before the first). A fold, not one digest over them all,
    because a digest's state cannot be stored: each planner invocation folds its own mini-batches
    into the value the last one left, and the result does not depend on where the listing was cut."""
    for fp in batch_fingerprints:
        running = hashlib.sha256(f"{running}{fp}".encode()).hexdigest()
    return running


def find_job(cfg: StackConfig, fp: str) -> dict[str, Any] | None:
    """The succeeded job with this fingerprint: its id and output."""
    return dynamo.get(cfg.table, keys.reuse_job_key(fp))


def remember_job(cfg: StackConfig, fp: str, job_id: str, output_uri: str) -> None:
    dynamo.put(cfg.table, {**keys.reuse_job_key(fp), "job_id": job_id, "output_uri": output_uri})


def remember(cfg: StackConfig, job_id: str, entries: Iterable[tuple[str, str, int, int, str | None]]) -> int:
    """Remember a succeeded job's mini-batches: (fingerprint, part key, rows, items, csv header) each."""
    count = 0
    with dynamo.writer(cfg.table, overwrite_by_pkeys=["pk", "sk"]) as writer:
        for fp, part_key, rows, items, header in entries:
            writer.put_item(Item={**keys.reuse_key(fp), "part_key": part_key, "rows": rows, "items": items,
                                  "job_id": job_id, **({"header": header} if header else {})})
            count += 1
    return count
