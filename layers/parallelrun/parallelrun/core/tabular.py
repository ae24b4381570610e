"""Tabular inputs (CSV, JSON lines, Parquet): where a file splits, and reading one piece back.

A big file is scored by many workers: the planner splits CSV and JSON lines by byte ranges
worked out from the file's size alone (it never downloads the file) and Parquet by row groups
(from the footer only). A worker reads its range with a ranged GET: a row belongs to the range
that holds its first byte, so rows straddling a range's end are read once, by the range they
start in; a CSV's header is carried to every range. Column types are decided once per file
(from its start, or Parquet's schema), so every mini-batch of a file has the same dtypes.
Every read is bounded: a line over MAX_LINE, or a gzipped file that decompresses past MAX_WHOLE,
fails its piece (InputTooLarge) before it is read whole, and a file the planner cannot split
becomes one piece that fails alone, saying why. Reading CSV and JSON lines text is
:mod:`parallelrun.core.text_formats`.

The S3 edge is a ``read(start, end) -> bytes`` callable; everything here is testable without it.
"""

from __future__ import annotations

import base64
import gzip
import io
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from parallelrun.core import text_formats
from parallelrun.core.datasets import InputFile, TablePiece
from parallelrun.core.errors import InputError, InputTooLarge
from parallelrun.core.text_formats import MiB, Reader

FORMATS = (("csv.gz", "csv"), ("jsonl.gz", "jsonl"), ("csv", "csv"), ("jsonl", "jsonl"), ("json", "jsonl"),
           ("parquet", "parquet"), ("pq", "parquet"))
# The most text a worker reads whole when the file, not mini_batch_size, decides how much: a
# gzipped file (decompressed; gzip cannot be split into ranges, so one worker reads all of it) or
# a plain file whose start could not be planned into ranges. Parsing holds 3-5x the text at once
# (the bytes, Arrow's table, the DataFrame, run()'s own copies), so 256 MiB of text stays near
# 1 GiB of the worker's default 1769 MB (template.yaml WorkerMemory), with room left for the
# model. A gzip bomb stops here, having decompressed no more than this.
MAX_WHOLE = 256 * MiB
GZIP_CHUNK = 8 * MiB  # compressed bytes fetched per ranged GET while decompressing: few GETs, little memory


def detect_format(key: str, override: str | None = None) -> str:
    """``csv``, ``jsonl`` or ``parquet``: the override, else the extension (``.gz`` included)."""
    if override:
        return override
    lower = key.lower()
    for suffix, fmt in FORMATS:
        if lower.endswith("." + suffix):
            return fmt
    raise InputError(f"{key}: no tabular format for this extension; set input_format to csv, jsonl or parquet")


@dataclass(frozen=True)
class RowGroups:
    """A Parquet piece: row groups ``first`` to ``last`` (inclusive)."""

    first: int
    last: int
    rows: int


def row_group_pieces(metadata: pq.FileMetaData, target: int) -> list[RowGroups]:
    """Consecutive row groups gathered up to about ``target`` bytes each (at least one group)."""
    pieces: list[RowGroups] = []
    first, size, rows = 0, 0, 0
    for number in range(metadata.num_row_groups):
        group = metadata.row_group(number)
        if number > first and size + group.total_byte_size > target:
            pieces.append(RowGroups(first, number - 1, rows))
            first, size, rows = number, 0, 0
        size += group.total_byte_size
        rows += group.num_rows
    if metadata.num_row_groups:
        pieces.append(RowGroups(first, metadata.num_row_groups - 1, rows))
    return pieces


class RangedFile(io.RawIOBase):
    """A read-only file over ``read``: pyarrow reads a Parquet footer and row groups through it,
    fetching only the bytes it asks for."""

    def __init__(self, read: Reader, size: int) -> None:
        self._read, self._size, self._position = read, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        end = min(self._size, self._position + len(buffer))
        if end <= self._position:
            return 0
        data = self._read(self._position, end)
        buffer[:len(data)] = data
        self._position += len(data)
        return len(data)


def parquet_metadata(read: Reader, size: int) -> pq.FileMetaData:
    return pq.ParquetFile(RangedFile(read, size)).metadata


def parquet_frame(read: Reader, size: int, piece: RowGroups) -> object:
    handle = pq.ParquetFile(RangedFile(read, size))
    return handle.read_row_groups(list(range(piece.first, piece.last + 1))).to_pandas()


def _encode(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def _decode(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def plan_file(read: Reader, item: InputFile, fmt_override: str | None, target: int,
              csv_options: dict[str, str] | None = None) -> list[TablePiece]:
    """A file's mini-batches: byte ranges of about ``target`` bytes (its types read from its
    start), Parquet row groups (from its footer), or the whole file when it is small or gzipped.
    Never reads more than a sample, a footer, or a few line ends."""
    fmt = detect_format(item.key, fmt_override)
    piece = lambda start, end, schema="": TablePiece(item.key, item.size, item.etag, fmt, start, end, schema)  # noqa: E731
    if fmt == "parquet":
        try:
            metadata = parquet_metadata(read, item.size)
        except pa.ArrowInvalid:
            return [piece(0, 0)]  # not Parquet: it fails alone, on the worker that opens it, not the whole job
        return [piece(p.first, p.last) for p in row_group_pieces(metadata, target)]
    if item.key.lower().endswith(".gz") or item.size == 0:
        return [piece(0, item.size)]
    try:
        start = text_formats.sample(read, item.size, key=item.key)
        if fmt == "csv":  # a header over MAX_LINE would fail every range: fail the file once instead
            text_formats.check_line_lengths(item.key, start.partition(text_formats.NEWLINE)[0], 0, fmt)
        schema = _encode(text_formats.infer_schema(fmt, start, csv_options))
    except (pa.ArrowInvalid, ValueError, InputTooLarge):
        # Malformed, or a line over MAX_LINE, from the start: one piece, which fails saying why.
        return [piece(0, item.size)]
    return [piece(start, end, schema) for start, end in text_formats.byte_ranges(item.size, target)]


def _read_whole(read: Reader, piece: TablePiece) -> bytes:
    """A piece read whole: a plain file within mini_batch_size (bounded at submit), else (a gzipped
    file, decompressed as a stream, or one whose start could not be planned) in MAX_WHOLE bytes."""
    if not piece.key.lower().endswith(".gz"):
        if not piece.schema and piece.size > MAX_WHOLE:
            raise InputTooLarge(
                f"{piece.key}: its start does not parse or has a line over {text_formats.MAX_LINE} bytes, so it could "
                f"not be split into ranges, and its {piece.size} bytes are more than the {MAX_WHOLE} a worker reads "
                "whole; fix its first lines or split the file")
        return read(0, piece.size)
    parts: list[bytes] = []
    total = 0
    compressed = io.BufferedReader(RangedFile(read, piece.size), min(GZIP_CHUNK, piece.size))
    with gzip.GzipFile(fileobj=compressed) as stream:
        while part := stream.read(min(GZIP_CHUNK, MAX_WHOLE + 1 - total)):
            parts.append(part)
            total += len(part)
            if total > MAX_WHOLE:
                raise InputTooLarge(
                    f"{piece.key}: decompresses to more than {MAX_WHOLE} bytes, the most a worker reads whole (a "
                    "gzipped file cannot be split into ranges); split it into smaller gzipped files, or store it "
                    "uncompressed so that it is read in ranges of mini_batch_size")
    return b"".join(parts)


def read_piece(read: Reader, piece: TablePiece, bad: list[str] | None = None,
               csv_options: dict[str, str] | None = None) -> Any:
    """A piece's rows as a pandas DataFrame; malformed rows are left out and described in ``bad``."""
    if piece.fmt == "parquet":
        return parquet_frame(read, piece.size, RowGroups(piece.start, piece.end, 0))
    if piece.size == 0:
        return pa.table({}).to_pandas()
    schema = _decode(piece.schema) if piece.schema else None
    if piece.whole:  # read as one: quoted newlines and all
        data = _read_whole(read, piece)
        text_formats.check_line_lengths(piece.key, data, 0, piece.fmt)
        return text_formats.parse(piece.fmt, data, schema, bad, csv_options).to_pandas()
    assert schema is not None
    first_row = text_formats.header_end(read, piece.size, piece.key) if piece.fmt == "csv" else 0
    begin, stop = text_formats.range_bounds(read, piece.size, piece.start, piece.end, first_row, piece.key)
    lines = read(begin, stop) if stop > begin else b""
    text_formats.check_line_lengths(piece.key, lines, begin, piece.fmt)
    if piece.fmt == "csv":
        quote = (csv_options or {}).get("quote_char", '"').encode()
        text_formats.check_quotes(piece.key, lines, piece.size, quote, begin)
    return text_formats.frame(piece.fmt, read(0, first_row), lines, schema, bad, csv_options, begin)
