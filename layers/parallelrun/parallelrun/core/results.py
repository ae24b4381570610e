"""A mini-batch's results: the rows ``run()`` returned, as a worker stores them (its part) and the
aggregator collates them.

Text output (``txt``, ``csv``) is lines: a part is their bytes and the output is the parts one
after the other. ``parquet`` output keeps a DataFrame's types: a part is a small Parquet file
and the aggregator writes every part, cast to the first part's schema, as row groups of one
Parquet file streamed to S3 (:class:`ParquetCollator`), holding a row group and one upload part
at most. pyarrow is imported only where Parquet is asked for, so jobs with text output never
pay for it.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, Protocol, Union

from parallelrun.core.errors import ScoringScriptError

if TYPE_CHECKING:
    import pyarrow as pa

Rows = Union[list[str], "pa.Table"]  # text lines, or a table for parquet output
RESULT_COLUMN = "result"  # the one column of a list run() returned, in parquet output
ROW_GROUP_BYTES = 8 * 1024 * 1024  # parts are gathered into row groups of about this (Arrow) size


def suffix(rows: Rows) -> str:
    """The part object's extension."""
    return "txt" if isinstance(rows, list) else "parquet"


def encode(rows: Rows) -> bytes:
    """A part's bytes: one line per row, or a Parquet file of the table."""
    if isinstance(rows, list):
        return "".join(row + "\n" for row in rows).encode()
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(rows, sink)
    return sink.getvalue()


def concat(pieces: list[Rows]) -> Rows:
    """Rows of several runs of one mini-batch (its partitions, or its inputs run alone), in order."""
    tables = [piece for piece in pieces if not isinstance(piece, list)]
    if not tables:
        return [row for piece in pieces for row in piece]
    import pyarrow as pa

    return pa.concat_tables(tables, promote_options="permissive")  # lists here are empty: runs with no rows


def take(rows: Rows, order: list[int]) -> Rows:
    """``rows`` in the given order of their positions."""
    return [rows[i] for i in order] if isinstance(rows, list) else rows.take(order)


def table_of(result: Any) -> pa.Table:
    """``run()``'s return value as a table for parquet output: a DataFrame's columns and types
    (its index left out, as csv output does), or a list's ``str()`` values in one column
    ``result``."""
    import pyarrow as pa

    if hasattr(result, "itertuples") and hasattr(result, "columns"):
        try:
            return pa.Table.from_pandas(result, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
            raise ScoringScriptError(f"run() returned a DataFrame that Parquet cannot store ({error}): give each "
                                     "column one type, or use output_format=csv") from None
    if isinstance(result, (list, tuple)) or hasattr(result, "tolist"):
        values = result.tolist() if hasattr(result, "tolist") else result
        return pa.table({RESULT_COLUMN: pa.array([str(value) for value in values], pa.string())})
    raise ScoringScriptError(f"run() returned {type(result).__name__}: return a list, tuple, array or DataFrame")


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...


class SchemaMismatch(Exception):
    """A part whose columns cannot be cast to the output's schema (the first part's)."""


class _Stream:
    """What pyarrow needs of a file it writes to, over a :class:`Sink` that only appends."""

    closed = False

    def __init__(self, sink: Sink) -> None:
        self.sink, self.position = sink, 0

    def write(self, data: bytes) -> int:
        self.sink.write(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        """Nothing to flush: the sink uploads whole parts itself."""


class ParquetCollator:
    """Parts in mini-batch order into one Parquet file, in bounded memory.

    The schema is the first part's; each later part is cast to it (its columns taken by name),
    or refused with :class:`SchemaMismatch`, leaving the file as it was. Parts are gathered
    into row groups of about ``row_group_bytes``, so memory holds one row group, one part and
    whatever the sink buffers.
    """

    def __init__(self, sink: Sink, row_group_bytes: int = ROW_GROUP_BYTES) -> None:
        self.stream, self.row_group_bytes = _Stream(sink), row_group_bytes
        self.writer: Any = None
        self.pending: list[pa.Table] = []
        self.pending_bytes = 0
        self.first: int | None = None  # the mini-batch whose part set the schema

    def add(self, index: int, body: bytes) -> int:
        """Mini-batch ``index``'s part; returns its row count."""
        import pyarrow.parquet as pq

        return self.add_table(index, pq.read_table(io.BytesIO(body)))

    def add_table(self, index: int, table: pa.Table) -> int:
        """Rows from mini-batch ``index`` on (a part, or a row group of collated parts); returns their count."""
        import pyarrow.parquet as pq

        if self.writer is None:
            self.writer, self.first = pq.ParquetWriter(self.stream, table.schema), index
        else:
            table = self._cast(index, table)
        self.pending.append(table)
        self.pending_bytes += table.nbytes
        if self.pending_bytes >= self.row_group_bytes:
            self._flush()
        return table.num_rows

    def _cast(self, index: int, table: pa.Table) -> pa.Table:
        import pyarrow as pa

        schema = self.writer.schema
        if sorted(table.column_names) != sorted(schema.names):
            raise SchemaMismatch(f"mini-batch {index} returned columns {table.column_names}, but the output's "
                                 f"columns (from mini-batch {self.first}) are {schema.names}")
        try:
            return table.select(schema.names).cast(schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
            raise SchemaMismatch(f"mini-batch {index} returned columns of other types than the output's (from "
                                 f"mini-batch {self.first}, {_types(schema)}): {error}") from None

    def _flush(self) -> None:
        import pyarrow as pa

        if self.pending:
            self.writer.write_table(pa.concat_tables(self.pending))
        self.pending, self.pending_bytes = [], 0

    def close(self) -> None:
        """Write what is pending and the footer; with no part at all, a valid file of no columns."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            self.writer = pq.ParquetWriter(self.stream, pa.schema([]))
        self._flush()
        self.writer.close()


def _types(schema: pa.Schema) -> str:
    return ", ".join(f"{field.name}: {field.type}" for field in schema)
