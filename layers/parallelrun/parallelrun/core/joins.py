"""How collated ranges become one S3 object: the parts of a multipart upload, planned.

A job's output too big for one invocation is collated in ranges of mini-batches, each its own
object, and joined server-side: a multipart upload whose parts are copied from those objects
(``UploadPartCopy``) without passing through the aggregator. S3 takes parts of 5 MiB to 5 GiB
but the last, and at most 10,000 of them
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html), so a range smaller than the
least part, or the tail of one, is read and uploaded together with what follows it: the bytes
read are under one least part per range, whatever the size of the output.
"""

from __future__ import annotations

from dataclasses import dataclass

from parallelrun.core.errors import ParallelRunError

MIN_PART = 5 * 1024 * 1024
MAX_PART = 5 * 1024 * 1024 * 1024
MAX_PARTS = 10_000


@dataclass(frozen=True)
class Piece:
    """Bytes ``start`` ≤ b < ``end`` of source ``source``."""

    source: int
    start: int
    end: int


@dataclass(frozen=True)
class Part:
    """One part of the upload: copied server-side (one piece) or uploaded (its pieces read and joined)."""

    pieces: tuple[Piece, ...]
    copied: bool

    @property
    def size(self) -> int:
        return sum(piece.end - piece.start for piece in self.pieces)


def plan_join(sizes: list[int], min_part: int = MIN_PART, max_part: int = MAX_PART,
              max_parts: int = MAX_PARTS) -> list[Part]:
    """The parts that join sources of these ``sizes``, in order: a source's bytes are copied
    while at least ``min_part`` of them remain and nothing is waiting, else gathered until a part
    is full; only the last part may be smaller than ``min_part``."""
    parts: list[Part] = []
    waiting: list[Piece] = []
    gathered = 0
    for source, size in enumerate(sizes):
        position = 0
        while position < size:
            remaining = size - position
            if not waiting and remaining >= min_part:
                taken = min(remaining, max_part)
                parts.append(Part((Piece(source, position, position + taken),), copied=True))
            else:
                taken = min(remaining, min_part - gathered)
                waiting.append(Piece(source, position, position + taken))
                gathered += taken
                if gathered >= min_part:
                    parts.append(Part(tuple(waiting), copied=False))
                    waiting, gathered = [], 0
            position += taken
    if waiting:
        parts.append(Part(tuple(waiting), copied=False))
    if len(parts) > max_parts:
        raise ParallelRunError(f"the output would need {len(parts)} upload parts, more than S3's {max_parts}: "
                               "collate fewer, larger ranges (AggregateBatchesPerInvocation)")
    return parts
