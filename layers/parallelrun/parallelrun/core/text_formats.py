"""CSV and JSON lines read by byte ranges: finding a range's first and last line, bounding
every line at MAX_LINE, deciding a file's column types from its start, and parsing a range's
lines with those types, malformed rows left out and described.

The entry points (a file's pieces, a piece read back, Parquet and gzip) are :mod:`parallelrun.core.tabular`.
"""

from __future__ import annotations

import bisect
import io
import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from parallelrun.core.errors import InputError, InputTooLarge

Reader = Callable[[int, int], bytes]  # bytes [start, end) of one object
STEP = 64 * 1024  # bytes fetched at a time when looking for a line's end
SAMPLE = 256 * 1024  # bytes of a file's start its column types are decided from
NEWLINE = b"\n"
MiB = 1024 * 1024
# The longest line (a CSV's header, a CSV row, a JSON line) read. Room for a row carrying a long
# document or an embedded image, small next to a worker's memory; a longer line is refused
# before it is searched to its end or read, so a file that is one giant line cannot exhaust the
# planner or a worker. pyarrow parses text in blocks that must hold a whole row: see BLOCK.
MAX_LINE = 8 * MiB
BLOCK = MAX_LINE + 1  # pyarrow's parse block (its default, 1 MiB, refuses any longer row)


def byte_ranges(size: int, target: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of about ``target`` bytes covering a file of ``size`` bytes."""
    if size <= target:
        return [(0, size)]
    return [(start, min(size, start + target)) for start in range(0, size, target)]


def _find_newline(read: Reader, size: int, position: int, stop: int) -> int | None:
    """Index just past the first b'\\n' in ``[position, stop)``: ``size`` if the file ends
    first, None if ``stop`` comes first."""
    while position < min(size, stop):
        chunk = read(position, min(size, stop, position + STEP))
        found = chunk.find(NEWLINE)
        if found >= 0:
            return position + found + 1
        position += len(chunk)
    return size if stop >= size else None


def _too_long(key: str, place: str) -> InputTooLarge:
    return InputTooLarge(
        f"{key}: {place} is longer than {MAX_LINE} bytes, the longest line a worker reads; keep big values "
        "out of the table (for example in files of their own, listed by key) or split them over rows")


def header_end(read: Reader, size: int, key: str = "the file") -> int:
    """Where a CSV's header line ends (its first line)."""
    end = _find_newline(read, size, 0, MAX_LINE + 1)
    if end is None:
        raise _too_long(key, "its header (first line)")
    return end


def range_bounds(read: Reader, size: int, start: int, end: int, first_row: int = 0,
                 key: str = "the file") -> tuple[int, int]:
    """The byte span of the whole lines that start in ``[start, end)``; ``first_row`` is where
    rows begin (past a CSV's header)."""
    begin = max(start, first_row)
    if begin > first_row:  # a line starts at begin only if the byte before it ends a line
        found = _find_newline(read, size, begin - 1, end)  # no end before ``end``: no line starts here
        begin = end if found is None else found
    if begin >= end or begin >= size:
        return begin, begin
    stop = _find_newline(read, size, end - 1, end + MAX_LINE)
    if stop is None:  # one more read, made only on the way to failing, tells where the line starts
        raise _too_long(key, f"the line starting at byte {begin + read(begin, end).rfind(NEWLINE) + 1}")
    return begin, stop


def read_lines(read: Reader, size: int, start: int, end: int, first_row: int = 0, key: str = "the file") -> bytes:
    begin, stop = range_bounds(read, size, start, end, first_row, key)
    return read(begin, stop) if stop > begin else b""


def check_line_lengths(key: str, lines: bytes, origin: int, fmt: str) -> None:
    """Refuse ``lines`` (from byte ``origin`` of the file) if one is longer than MAX_LINE, wherever
    it lies. Looks at one newline per MAX_LINE bytes, so a piece of short lines costs nothing."""
    position = 0
    while len(lines) - position > MAX_LINE:
        last = lines.rfind(NEWLINE, position, position + MAX_LINE + 1)
        if last < 0:
            start = origin + position
            raise _too_long(key, "its header (first line)" if fmt == "csv" and start == 0
                            else f"the line starting at byte {start}")
        position = last + 1


def check_quotes(key: str, lines: bytes, size: int, quote: bytes = b'"', origin: int = 0) -> None:
    """A CSV row broken over lines by a quoted newline cannot be split by bytes: refuse it.
    ``lines`` start at byte ``origin`` of the file."""
    offset = 0
    for line in lines.split(NEWLINE):
        if line.count(quote) % 2:
            raise InputError(
                f"{key}: a quoted field spans lines (the line starting at byte {origin + offset}), which splitting "
                f"by bytes would cut; set mini_batch_size above the file's size ({size} bytes) to read it whole")
        offset += len(line) + 1


def sample(read: Reader, size: int, limit: int = SAMPLE, key: str = "the file") -> bytes:
    """The whole lines in a file's first ``limit`` bytes (a CSV's header among them)."""
    return read_lines(read, size, 0, min(size, limit), key=key)


def infer_schema(fmt: str, sample: bytes, csv_options: dict[str, str] | None = None) -> pa.Schema:
    """Column types from a file's start; a column with no value there is read as text."""
    table = parse(fmt, sample, None, [], csv_options)  # a malformed row in the sample does not decide the types
    return _text_for_null(table.schema)


def _text_for_null(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, pa.string() if pa.types.is_null(f.type) else f.type) for f in schema])


Problems = list[tuple[int | None, str]]  # malformed rows: (offset in the parsed text or None, what is wrong)


def parse(fmt: str, body: bytes, schema: pa.Schema | None, bad: list[str] | None = None,
          csv_options: dict[str, str] | None = None, header: bytes = b"", origin: int | None = None) -> pa.Table:
    """Rows of CSV (``header`` then ``body``) or JSON lines text. A malformed row is skipped and
    described in ``bad`` (the other rows still count) with its place: its line number when
    ``body`` is a whole file (``origin`` None), else the file byte its line starts at (``body``
    starting at byte ``origin``; a line number would need the file's earlier bytes)."""
    problems: Problems = []
    encoding = (csv_options or {}).get("encoding", "utf-8") if fmt == "csv" else "utf-8"
    text, original = _without_undecodable(body, encoding, problems)
    parsed: Problems = []
    if fmt == "csv":
        table = _parse_csv(header, text, schema, parsed, csv_options or {})
    elif fmt == "jsonl":
        table = _parse_json_lines(text, schema, parsed if bad is not None else None)
    else:
        raise InputError(f"cannot parse {fmt!r} text: use csv or jsonl")
    problems += [(None if offset is None else original(offset), fault) for offset, fault in parsed]
    if bad is not None:
        bad += _describe(problems, body, origin)
    return table


def _without_undecodable(body: bytes, encoding: str, problems: Problems) -> tuple[bytes, Callable[[int], int]]:
    """``body`` less the lines that are not text in ``encoding`` (each a malformed row: left in,
    pyarrow would read a CSV's whole column as bytes, or refuse a JSON piece), and a function
    from an offset in what is left to the same line's offset in ``body``."""
    try:
        body.decode(encoding)
        return body, lambda offset: offset
    except UnicodeDecodeError:
        pass
    kept, starts, position = [], [], 0  # starts: (offset in what is left, offset in body) per kept line
    left = 0
    for line in body.split(NEWLINE):
        start, position = position, position + len(line) + 1
        try:
            line.decode(encoding)
        except UnicodeDecodeError:
            problems.append((start, f"bytes that are not {encoding} text: {_shown(line)}"))
            continue
        kept.append(line)
        starts.append((left, start))
        left += len(line) + 1
    lefts = [pair[0] for pair in starts]

    def original(offset: int) -> int:
        left_start, body_start = starts[bisect.bisect_right(lefts, offset) - 1]
        return body_start + offset - left_start

    return NEWLINE.join(kept), original


def _describe(problems: Problems, body: bytes, origin: int | None) -> list[str]:
    """Each malformed row's place and fault, in file order (line numbers counted in one pass)."""
    described, line, counted = [], 1, 0
    for offset, fault in sorted(problems, key=lambda p: (p[0] is None, p[0] or 0)):
        if offset is None:
            place = "a row"
        elif origin is None:
            line, counted = line + body.count(NEWLINE, counted, offset), offset
            place = f"line {line}"
        else:
            place = f"line starting at byte {origin + offset}"
        described.append(f"{place}: {fault}")
    return described


def _shown(text: bytes | str) -> str:
    return (text.decode("utf-8", "replace") if isinstance(text, bytes) else text)[:200]


def _parse_csv(header: bytes, body: bytes, schema: pa.Schema | None, problems: Problems,
               given: dict[str, str]) -> pa.Table:
    """pyarrow's reader, with rows of the wrong column count skipped and then found in ``body``
    (pyarrow tells their text, not where they are)."""
    options = pa_csv.ConvertOptions(column_types=schema) if schema is not None else None
    # One thread: a Python row handler called from many threads fights for the GIL (a piece of
    # bad rows took 25x longer), and one thread reports the rows in file order.
    read_options = pa_csv.ReadOptions(use_threads=False, block_size=BLOCK,
                                      **({"encoding": given["encoding"]} if "encoding" in given else {}))
    skipped: list[Any] = []

    def skip(row: Any) -> str:
        skipped.append((row.text, row.expected_columns, row.actual_columns))
        return "skip"

    parse = pa_csv.ParseOptions(invalid_row_handler=skip, delimiter=given.get("delimiter", ","),
                                quote_char=given.get("quote_char", '"'))
    table = pa_csv.read_csv(io.BytesIO(header + body), read_options=read_options, convert_options=options,
                            parse_options=parse)
    raws = [_encoded(text, given.get("encoding", "utf-8")) for text, _, _ in skipped]
    for (text, expected, actual), offset in zip(skipped, _find_lines(body, raws)):
        problems.append((offset, f"expected {expected} columns, got {actual}: {_shown(text)}"))
    return table


def _encoded(text: str, encoding: str) -> bytes:
    try:
        return text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return b""  # not findable: reported as "a row"


def _find_lines(body: bytes, lines: list[bytes]) -> list[int | None]:
    """Where each of ``lines`` starts in ``body`` (None if nowhere), in one pass over its lines;
    identical lines are matched to their occurrences in turn. A row spanning lines (a quoted
    newline in a file read whole) is searched for."""
    wanted = set(lines)
    starts: dict[bytes, list[int]] = {}
    position = 0
    for line in body.split(NEWLINE):
        text = line[:-1] if line.endswith(b"\r") else line
        if text in wanted:
            starts.setdefault(text, []).append(position)
        position += len(line) + 1
    found: list[int | None] = []
    used: dict[bytes, int] = {}
    for line in lines:
        if line and NEWLINE in line and line not in starts:
            offset = body.find(line)
            starts[line] = [offset] if offset >= 0 else []
        turn = used[line] = used.get(line, -1) + 1
        candidates = starts.get(line, [])
        found.append(candidates[turn] if line and turn < len(candidates) else None)
    return found


def _read_json(lines: bytes, schema: pa.Schema | None) -> pa.Table:
    options = pa_json.ParseOptions(explicit_schema=schema) if schema is not None else None
    return pa_json.read_json(io.BytesIO(lines), read_options=pa_json.ReadOptions(block_size=BLOCK),
                             parse_options=options)


def _parse_json_lines(body: bytes, schema: pa.Schema | None, problems: Problems | None) -> pa.Table:
    """pyarrow's reader at full speed; if it refuses the text and malformed rows are wanted, a
    line-by-line pass sets aside the lines that are not JSON objects, and the rest are read with
    the file's types, a line whose values cannot take them found by halving (a few bad lines
    cost a few reads, not one per line)."""
    try:
        return _read_json(body, schema)
    except pa.ArrowInvalid:
        if problems is None:
            raise
    good: list[tuple[int, bytes]] = []
    position = 0
    for line in body.split(NEWLINE):
        start, position = position, position + len(line) + 1
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as error:
            problems.append((start, f"not valid JSON ({error}): {_shown(line)}"))
            continue
        if not isinstance(value, dict):
            problems.append((start, f"not a JSON object: {_shown(line)}"))
            continue
        good.append((start, line))
    schema = schema if schema is not None else _schema_of(good)
    tables = _read_typed(good, schema, problems)
    return pa.concat_tables(tables, promote_options="permissive") if tables else schema.empty_table()


def _schema_of(lines: list[tuple[int, bytes]]) -> pa.Schema:
    """A whole file's types, from its first good lines (from its first line if those disagree)."""
    if not lines:
        return pa.schema([])
    first, size = [], 0
    for _, line in lines:
        first.append(line)
        size += len(line) + 1
        if size >= SAMPLE:
            break
    try:
        return _text_for_null(_read_json(NEWLINE.join(first), None).schema)
    except pa.ArrowInvalid:
        return _text_for_null(_read_json(first[0], None).schema)


def _read_typed(lines: list[tuple[int, bytes]], schema: pa.Schema, problems: Problems) -> list[pa.Table]:
    """``lines`` read with ``schema``, in order; the lines that cannot be go to ``problems``."""
    if not lines:
        return []
    try:
        return [_read_json(NEWLINE.join(line for _, line in lines), schema)]
    except pa.ArrowInvalid as error:
        if len(lines) == 1:
            start, line = lines[0]
            message = str(error).removeprefix("JSON parse error: ").split(" in row ")[0]
            problems.append((start, f"does not fit the file's column types ({message}): {_shown(line)}"))
            return []
    half = len(lines) // 2
    return _read_typed(lines[:half], schema, problems) + _read_typed(lines[half:], schema, problems)


def frame(fmt: str, header: bytes, lines: bytes, schema: pa.Schema, bad: list[str] | None = None,
          csv_options: dict[str, str] | None = None, origin: int = 0) -> object:
    """One range's rows (``lines``, from byte ``origin`` of the file) as a pandas DataFrame with
    the file's columns and types."""
    if not lines.strip():
        return schema.empty_table().to_pandas()
    return parse(fmt, lines, schema, bad, csv_options, header if fmt == "csv" else b"", origin).to_pandas()

