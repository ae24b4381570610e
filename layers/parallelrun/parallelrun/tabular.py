"""Tabular inputs (CSV, JSON lines, Parquet): where a file splits, and reading one piece back.

A big file is scored by many workers: the planner splits CSV and JSON lines by byte ranges
worked out from the file's size alone (it never downloads the file) and Parquet by row groups
(from the footer only). A worker reads its range with a ranged GET: a row belongs to the range
that holds its first byte, so rows straddling a range's end are read once, by the range they
start in; a CSV's header is carried to every range. Column types are decided once per file
(from its start, or Parquet's schema), so every mini-batch of a file has the same dtypes.

The S3 edge is a ``read(start, end) -> bytes`` callable; everything here is testable without it.
"""

from __future__ import annotations

import base64
import gzip
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from parallelrun.datasets import InputFile, TablePiece
from parallelrun.errors import InputError

Reader = Callable[[int, int], bytes]  # bytes [start, end) of one object
FORMATS = (("csv.gz", "csv"), ("jsonl.gz", "jsonl"), ("csv", "csv"), ("jsonl", "jsonl"), ("json", "jsonl"),
           ("parquet", "parquet"), ("pq", "parquet"))
STEP = 64 * 1024  # bytes fetched at a time when looking for a line's end
SAMPLE = 256 * 1024  # bytes of a file's start its column types are decided from


def detect_format(key: str, override: str | None = None) -> str:
    """``csv``, ``jsonl`` or ``parquet``: the override, else the extension (``.gz`` included)."""
    if override:
        return override
    lower = key.lower()
    for suffix, fmt in FORMATS:
        if lower.endswith("." + suffix):
            return fmt
    raise InputError(f"{key}: no tabular format for this extension; set input_format to csv, jsonl or parquet")


def byte_ranges(size: int, target: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of about ``target`` bytes covering a file of ``size`` bytes."""
    if size <= target:
        return [(0, size)]
    return [(start, min(size, start + target)) for start in range(0, size, target)]


def _find_newline(read: Reader, size: int, position: int) -> int:
    """Index just past the first b'\\n' at or after ``position`` (``size`` if there is none)."""
    while position < size:
        chunk = read(position, min(size, position + STEP))
        found = chunk.find(b"\n")
        if found >= 0:
            return position + found + 1
        position += len(chunk)
    return size


def header_end(read: Reader, size: int) -> int:
    """Where a CSV's header line ends (its first line)."""
    return _find_newline(read, size, 0)


def range_bounds(read: Reader, size: int, start: int, end: int, first_row: int = 0) -> tuple[int, int]:
    """The byte span of the whole lines that start in ``[start, end)``; ``first_row`` is where
    rows begin (past a CSV's header)."""
    begin = max(start, first_row)
    if begin > first_row:  # a line starts at begin only if the byte before it ends a line
        begin = _find_newline(read, size, begin - 1)
    if begin >= end or begin >= size:
        return begin, begin
    return begin, _find_newline(read, size, end - 1)


def read_lines(read: Reader, size: int, start: int, end: int, first_row: int = 0) -> bytes:
    begin, stop = range_bounds(read, size, start, end, first_row)
    return read(begin, stop) if stop > begin else b""


def check_quotes(key: str, lines: bytes, size: int, quote: bytes = b'"') -> None:
    """A CSV row broken over lines by a quoted newline cannot be split by bytes: refuse it."""
    for number, line in enumerate(lines.split(b"\n")):
        if line.count(quote) % 2:
            raise InputError(
                f"{key}: a quoted field spans lines (near line {number + 1} of its range), which splitting by "
                f"bytes would cut; set mini_batch_size above the file's size ({size} bytes) to read it whole")


def sample(read: Reader, size: int, limit: int = SAMPLE) -> bytes:
    """The whole lines in a file's first ``limit`` bytes (a CSV's header among them)."""
    return read_lines(read, size, 0, min(size, limit))


def infer_schema(fmt: str, sample: bytes, csv_options: dict[str, str] | None = None) -> pa.Schema:
    """Column types from a file's start; a column with no value there is read as text."""
    table = _parse(fmt, sample, None, [], csv_options)  # a malformed row in the sample does not decide the types
    return pa.schema([pa.field(f.name, pa.string() if pa.types.is_null(f.type) else f.type) for f in table.schema])


def _parse(fmt: str, data: bytes, schema: pa.Schema | None, bad: list[str] | None = None,
           csv_options: dict[str, str] | None = None) -> pa.Table:
    """Rows of CSV or JSON lines text; a CSV row with the wrong number of columns is skipped and
    described in ``bad`` (the other rows still count)."""
    if fmt == "csv":
        options = pa_csv.ConvertOptions(column_types=schema) if schema is not None else None
        given = csv_options or {}
        read_options = pa_csv.ReadOptions(encoding=given["encoding"]) if "encoding" in given else None

        def skip(row: Any) -> str:
            where = f"row {row.number}" if row.number is not None else "a row"
            (bad if bad is not None else []).append(
                f"{where}: expected {row.expected_columns} columns, got {row.actual_columns}: {row.text[:200]}")
            return "skip"

        parse = pa_csv.ParseOptions(invalid_row_handler=skip, delimiter=given.get("delimiter", ","),
                                    quote_char=given.get("quote_char", '"'))
        return pa_csv.read_csv(io.BytesIO(data), read_options=read_options, convert_options=options,
                               parse_options=parse)
    if fmt == "jsonl":
        options = pa_json.ParseOptions(explicit_schema=schema) if schema is not None else None
        return pa_json.read_json(io.BytesIO(data), parse_options=options)
    raise InputError(f"cannot parse {fmt!r} text: use csv or jsonl")


def frame(fmt: str, header: bytes, lines: bytes, schema: pa.Schema, bad: list[str] | None = None,
          csv_options: dict[str, str] | None = None) -> object:
    """One range's rows as a pandas DataFrame with the file's columns and types."""
    if not lines.strip():
        return schema.empty_table().to_pandas()
    return _parse(fmt, header + lines if fmt == "csv" else lines, schema, bad, csv_options).to_pandas()


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
        return [piece(p.first, p.last) for p in row_group_pieces(parquet_metadata(read, item.size), target)]
    if item.key.lower().endswith(".gz") or item.size == 0:
        return [piece(0, item.size)]
    try:
        schema = _encode(infer_schema(fmt, sample(read, item.size), csv_options))
    except (pa.ArrowInvalid, ValueError):
        return [piece(0, item.size)]  # malformed from the start: one piece, which fails saying why
    return [piece(start, end, schema) for start, end in byte_ranges(item.size, target)]


def read_piece(read: Reader, piece: TablePiece, bad: list[str] | None = None,
               csv_options: dict[str, str] | None = None) -> Any:
    """A piece's rows as a pandas DataFrame; malformed CSV rows are left out and described in ``bad``."""
    if piece.fmt == "parquet":
        return parquet_frame(read, piece.size, RowGroups(piece.start, piece.end, 0))
    if piece.size == 0:
        return pa.table({}).to_pandas()
    schema = _decode(piece.schema) if piece.schema else None
    if piece.whole:  # read as one: quoted newlines and all
        data = read(0, piece.size)
        data = gzip.decompress(data) if piece.key.lower().endswith(".gz") else data
        return _parse(piece.fmt, data, schema, bad, csv_options).to_pandas()
    assert schema is not None
    first_row = header_end(read, piece.size) if piece.fmt == "csv" else 0
    lines = read_lines(read, piece.size, piece.start, piece.end, first_row)
    if piece.fmt == "csv":
        check_quotes(piece.key, lines, piece.size, (csv_options or {}).get("quote_char", '"').encode())
    return frame(piece.fmt, read(0, first_row), lines, schema, bad, csv_options)
