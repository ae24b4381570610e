"""Why an input failed, and the line of ``failures.jsonl`` that says so: one shape for the
worker, the failure recorder and the aggregator's readers."""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass

from parallelrun.core.datasets import InputFile, TablePiece

TRACEBACK_LINES = 12


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed, as ``failures.jsonl`` reports it."""

    error_type: str
    message: str
    traceback: tuple[str, ...] = ()

    @classmethod
    def from_exception(cls, error: BaseException) -> Failure:
        lines = "".join(traceback.format_exception(error)).rstrip().splitlines()
        return cls(type(error).__name__, str(error), tuple(lines[-TRACEBACK_LINES:]))


def failure_line(item: InputFile | TablePiece | None, index: int, attempts: int, failure: Failure, worker: str) -> str:
    """One line of ``failures.jsonl``: what failed (a file, or a table's range), where, how often, and why."""
    where = {"range": item.describe()} if isinstance(item, TablePiece) else {}
    return json.dumps({
        "input": item.key if item is not None else None, **where, "minibatch": index, "attempts": attempts,
        "error_type": failure.error_type, "message": failure.message, "traceback": list(failure.traceback),
        "worker": worker,
    }) + "\n"
