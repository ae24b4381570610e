"""How a job's inputs become mini-batches, and how far the planner may send them: pure, so the
planner's decisions are tested without a stack.

The planner (:mod:`parallelrun.pipeline.planner`) lists the inputs, cuts them here, stores the
plan and sends it a window at a time; the worker runs one mini-batch per message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from parallelrun.core import datasets, partitions
from parallelrun.core.datasets import InputFile, TablePiece
from parallelrun.core.settings import RunSettings

Planned = tuple[list[InputFile] | list[TablePiece], dict[str, str] | None]
Reader = Callable[[int, int], bytes]  # bytes [start, end) of one object


def plan_batches(files: Iterable[InputFile], prefix: str, settings: RunSettings,
                 reader: Callable[[str], Reader]) -> Iterator[Planned]:
    """The mini-batches of ``files`` (below ``prefix``) and their partitions: files by count
    (one partition each when ``partition_format`` is set), or tables by byte size (a mini-batch
    never crosses a file; a big file is split into pieces, read through ``reader(key)``; column
    partitions are found by the worker, which reads them)."""
    s = settings
    if s.input_type != "tabular":
        if s.partition_format:
            yield from partitions.file_batches(files, prefix, partitions.PathPattern(s.partition_format),
                                               s.partition_keys, s.files_per_batch)
        else:
            yield from ((batch, None) for batch in datasets.batches(files, s.files_per_batch))
        return
    from parallelrun.core import tabular  # pyarrow: only a tabular job pays for importing it

    for item in files:
        for piece in tabular.plan_file(reader(item.key), item, s.input_format, s.bytes_per_batch, s.csv_options):
            yield [piece], None


def window_end(cursor: int, batches_done: int, total_batches: int, window: int) -> int:
    """How far the cursor may move now: in-flight mini-batches (sent, not yet done) stay within
    the window."""
    in_flight = cursor - batches_done
    return min(total_batches, cursor + max(0, window - in_flight))
