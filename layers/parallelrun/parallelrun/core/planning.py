"""How a job's inputs become mini-batches, where a planner invocation stops listing, and how far
the planner may send: pure, so the planner's decisions are tested without a stack.

The planner (:mod:`parallelrun.pipeline.planner`) lists the inputs a bounded slice per
invocation (:class:`Slice`), cuts them here, stores the plan and sends it a window at a time;
the worker runs one mini-batch per message. Between two invocations, planning stands at a
:class:`Checkpoint`, and the mini-batches still filling are carried along whole, so the plan is
the same however the listing was sliced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from parallelrun.core import partitions
from parallelrun.core.datasets import InputFile, TablePiece
from parallelrun.core.settings import RunSettings

Planned = tuple[list[InputFile] | list[TablePiece], dict[str, str] | None]
Reader = Callable[[int, int], bytes]  # bytes [start, end) of one object


START = "start"  # the token of a job's first checkpoint, and of the message that starts its planning


@dataclass(frozen=True)
class Checkpoint:
    """Where a job's planning stands between two planner invocations (kept in its job record):
    the listing is consumed up to ``after`` (S3's StartAfter for the next page), ``batches`` and
    ``items`` are planned, ``fingerprint`` is the job's fingerprint folded so far. ``token``
    names this checkpoint, and the continuation message that carries it is valid only while the
    job's checkpoint has it; ``previous`` is the token it was made from, and ``sent`` says that
    its continuation is on the queue (so a redelivery of the message that made it knows whether
    its sender died before sending it on)."""

    token: str = START
    previous: str = ""
    sent: bool = False
    step: int = 0  # invocations that made it
    after: str = ""
    batches: int = 0
    items: int = 0
    fingerprint: str = ""

    def to_item(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Checkpoint:
        return cls(**item)


class Slice:
    """At most ``bound`` files of a listing, handed on as they are consumed: ``last_key`` is the
    last one handed on (where the next invocation starts after), ``complete`` says whether the
    listing ended within the bound (known once the slice is consumed). It stops only between
    files, and the planner carries the mini-batches still filling, so no mini-batch is split."""

    def __init__(self, files: Iterable[InputFile], bound: int) -> None:
        self._files, self._bound = iter(files), max(1, bound)
        self.last_key: str | None = None
        self.count = 0
        self.complete = False

    def __iter__(self) -> Iterator[InputFile]:
        for item in self._files:
            self.last_key = item.key
            self.count += 1
            yield item
            if self.count == self._bound:
                # One more key tells an ended listing from a full slice, and saves a successor
                # that would find nothing; it is listed again by the next invocation.
                self.complete = next(self._files, None) is None
                return
        self.complete = True


def plan_batches(files: Iterable[InputFile], prefix: str, settings: RunSettings,
                 reader: Callable[[str], Reader],
                 open_batches: partitions.OpenBatches | None = None) -> Iterator[Planned]:
    """The mini-batches of ``files`` (below ``prefix``) and their partitions: files by count
    (one partition each when ``partition_format`` is set), or tables by byte size (a mini-batch
    never crosses a file; a big file is split into pieces, read through ``reader(key)``, all
    within the file's turn; column partitions are found by the worker, which reads them).
    Given ``open_batches``, file mini-batches still filling at the end stay there (see
    :func:`partitions.file_batches`)."""
    s = settings
    if s.input_type != "tabular":
        pattern = partitions.PathPattern(s.partition_format) if s.partition_format else None
        yield from partitions.file_batches(files, prefix, pattern, s.partition_keys, s.files_per_batch, open_batches)
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
