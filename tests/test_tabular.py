"""Splitting tabular files without downloading them, and reading each piece back exactly once."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from parallelrun.core import tabular, text_formats
from parallelrun.core.datasets import InputFile
from parallelrun.core.errors import InputError


class Counting:
    """An in-memory object behind a ranged reader that counts the bytes asked for."""

    def __init__(self, data: bytes) -> None:
        self.data, self.read_bytes = data, 0

    def __call__(self, start: int, end: int) -> bytes:
        self.read_bytes += end - start
        return self.data[start:end]


def pieces(data: bytes, target: int, fmt: str = "csv") -> list:
    """Every range's DataFrame, as the worker would read them."""
    read, size = Counting(data), len(data)
    first_row = text_formats.header_end(read, size) if fmt == "csv" else 0
    header = read(0, first_row)
    schema = text_formats.infer_schema(fmt, text_formats.sample(read, size))
    frames = []
    for start, end in text_formats.byte_ranges(size, target):
        lines = text_formats.read_lines(read, size, start, end, first_row)
        if fmt == "csv":
            text_formats.check_quotes("f.csv", lines, size)
        frames.append(text_formats.frame(fmt, header, lines, schema))
    return frames


def test_a_50_mb_csv_in_1_mb_ranges_gives_every_row_once():
    rows = 1_000_000
    data = b"id,name,value\n" + b"".join(b"%d,name-%d-padding-padding-padding-pad,%d.5\n" % (i, i % 977, i)
                                         for i in range(rows))
    assert len(data) > 50 * 1024 * 1024
    frames = pieces(data, 1024 * 1024)
    assert len(frames) > 50
    ids = [i for f in frames for i in f["id"].tolist()]
    assert ids == list(range(rows))  # straddling rows read once, by the range they start in
    assert all(list(f.columns) == ["id", "name", "value"] for f in frames)  # the header in every range
    assert len({tuple(map(str, f.dtypes)) for f in frames}) == 1


@pytest.mark.parametrize("data, expected", [
    (b"a,b\r\n1,x\r\n2,y\r\n3,z\r\n", [1, 2, 3]),  # CRLF
    (b"a,b\n1,x\n2,y\n3,z", [1, 2, 3]),  # no trailing newline
    (b"a,b\n", []),  # header only
])
def test_small_ranges_over_edge_cases(data, expected):
    for target in (1, 3, 5, 100):
        frames = pieces(data, target)
        assert [v for f in frames for v in f["a"].tolist()] == expected
        assert all(str(v) in ("x", "y", "z") for f in frames for v in f["b"].tolist())


def test_an_empty_file_is_one_empty_range():
    assert text_formats.byte_ranges(0, 1024) == [(0, 0)]
    assert text_formats.read_lines(Counting(b""), 0, 0, 0) == b""


def test_a_quoted_newline_is_refused_when_split_and_read_whole_otherwise():
    data = b'id,text\n1,"two\nlines"\n2,plain\n'
    with pytest.raises(InputError, match="quoted field spans lines.*above the file's size"):
        pieces(data, 10)
    [whole] = pieces(b'id,text\n1,"two lines"\n2,plain\n', 1024)
    assert whole["text"].tolist() == ["two lines", "plain"]


def test_dtypes_are_the_files_even_where_a_range_has_no_value():
    rows = [b"%d,,%d\n" % (i, i) for i in range(20000)] + [b"%d,late,%d\n" % (i, i) for i in range(20000, 20010)]
    data = b"id,note,n\n" + b"".join(rows)
    frames = pieces(data, 64 * 1024)
    assert len({tuple(map(str, f.dtypes)) for f in frames}) == 1  # note is text everywhere
    assert frames[-1]["note"].tolist()[-1] == "late"


def test_json_lines_split_by_bytes():
    data = b"".join(b'{"id": %d, "tag": "t%d"}\n' % (i, i) for i in range(5000))
    frames = pieces(data, 4096, fmt="jsonl")
    assert [i for f in frames for i in f["id"].tolist()] == list(range(5000))


@pytest.mark.parametrize("row_group_size, target, expected_pieces", [(10_000, 1, 1), (100, 10_000, None)])
def test_parquet_by_row_groups_from_the_footer_only(row_group_size, target, expected_pieces):
    table = pa.table({"id": list(range(10_000)), "x": [float(i) for i in range(10_000)]})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=row_group_size)
    read = Counting(sink.getvalue())
    metadata = tabular.parquet_metadata(read, len(read.data))
    assert read.read_bytes < len(read.data) / 2 or metadata.num_row_groups == 1  # the footer, not the file
    planned = tabular.row_group_pieces(metadata, target)
    if expected_pieces:
        assert len(planned) == expected_pieces
    else:
        assert 1 < len(planned) < metadata.num_row_groups
    ids = [i for p in planned for i in tabular.parquet_frame(read, len(read.data), p)["id"].tolist()]
    assert ids == list(range(10_000)) and sum(p.rows for p in planned) == 10_000


def test_a_200_mb_csv_is_planned_without_downloading_it():
    line = 40
    size = 200 * 1024 * 1024 // line * line + len(b"id,payload\n")

    def read(start: int, end: int) -> bytes:  # a 200 MB file made up on demand
        read.total += end - start
        header = b"id,payload\n"
        text = bytearray()
        for position in range(start, end):
            if position < len(header):
                text.append(header[position])
            else:
                offset = position - len(header)
                row = b"%09d,%s\n" % (offset // line, b"p" * (line - 11))
                text.append(row[offset % line])
        return bytes(text)

    read.total = 0
    ranges = text_formats.byte_ranges(size, 1024 * 1024)
    schema = text_formats.infer_schema("csv", text_formats.sample(read, size, 4096))
    assert len(ranges) == -(-size // (1024 * 1024)) >= 200 and [f.name for f in schema] == ["id", "payload"]
    assert read.total < 256 * 1024  # the planner read a sample, not the 200 MB


def read_all(data: bytes, key: str, target: int) -> tuple[list, list[str]]:
    """Plan a file as the planner does and read every piece as a worker does: rows and malformed rows."""
    read = Counting(data)
    item = InputFile(key, len(data), "etag")
    frames, bad = [], []
    for piece in tabular.plan_file(read, item, None, target):
        found: list[str] = []
        frames.append(tabular.read_piece(read, piece, found))
        bad += [f"{piece.describe()}, {text}" for text in found]
    return frames, bad


def test_a_malformed_csv_row_is_placed_by_line_in_a_whole_file_and_by_byte_in_a_range():
    data = b"a,b\n1,2\n3,4,5\n6,7\n3,4,5\r\n8\n"
    frames, bad = read_all(data, "t.csv", 1024)
    assert [v for f in frames for v in f["a"].tolist()] == [1, 6]
    assert bad == ["whole file, line 3: expected 2 columns, got 3: 3,4,5",  # the same text twice, each found
                   "whole file, line 5: expected 2 columns, got 3: 3,4,5",
                   "whole file, line 6: expected 2 columns, got 1: 8"]
    rows = [b"%d,%d\n" % (i, i) if i % 500 else b"%d,broken,row\n" % i for i in range(1, 3000)]
    data = b"a,b\n" + b"".join(rows)
    frames, bad = read_all(data, "t.csv", 4096)
    assert len(frames) > 5 and sum(len(f) for f in frames) == 2994
    offsets = [int(text.split("line starting at byte ")[1].split(":")[0]) for text in bad]
    assert [data[o:data.index(b"\n", o)] for o in offsets] == [b"%d,broken,row" % i for i in range(500, 3000, 500)]
    assert all(text.startswith("bytes ") and "expected 2 columns, got 3" in text for text in bad)


def test_a_malformed_json_line_fails_alone_wherever_it_is():
    data = (b'{"id": 1, "tag": "a"}\n{"id": \n[2]\n{"id": "three"}\n\n{"id": 4, "tag": "d"}\n5\n'
            b'{"id": 6.5}\n\xff\n{"id": 7}\n')
    frames, bad = read_all(data, "t.jsonl", 1024)
    [frame] = frames
    assert frame["id"].tolist() == [1, 4, 7] and str(frame["id"].dtype) == "int64"
    assert [text.split(":")[0] for text in bad] == [f"whole file, line {n}" for n in (2, 3, 4, 7, 8, 9)]
    assert "line 2: not valid JSON" in bad[0] and "line 3: not a JSON object: [2]" in bad[1]
    assert "line 4: does not fit the file's column types" in bad[2] and '{"id": "three"}' in bad[2]
    rows = [b'{"id": %d}\n' % i if i % 700 else b'{"id": "x%d"}\n' % i for i in range(1, 3000)]
    rows[1500] = b'{"id": 1501, oops}\n'
    data = b"".join(rows)
    frames, bad = read_all(data, "t.jsonl", 8000)
    assert len(frames) > 3 and {str(f["id"].dtype) for f in frames} == {"int64"}
    ids = [i for f in frames for i in f["id"].tolist()]
    assert ids == [i for i in range(1, 3000) if i % 700 and i != 1501]
    offsets = [int(text.split("line starting at byte ")[1].split(":")[0]) for text in bad]
    assert [data[o:data.index(b"\n", o)] for o in offsets] == [
        b'{"id": "x700"}', b'{"id": "x1400"}', b'{"id": 1501, oops}', b'{"id": "x2100"}', b'{"id": "x2800"}']


def test_a_split_quoted_newline_names_the_byte_its_line_starts_at():
    data = b"id,text\n" + b"".join(b"%d,plain\n" % i for i in range(200)) + b'200,"two\nlines"\n'
    with pytest.raises(InputError, match=rf"the line starting at byte {data.index(b'200,')}\)"):
        read_all(data, "q.csv", 1024)


def test_a_row_with_undecodable_bytes_fails_alone_and_its_column_stays_text():
    data = b"id,name,score\n1,alice,3\n2,b\xff\xfeob,4\n3,carol,5\n4,dan\n"
    frames, bad = read_all(data, "t.csv", 1024)
    [frame] = frames
    assert frame["name"].tolist() == ["alice", "carol"] and frame["score"].tolist() == [3, 5]
    assert bad == ["whole file, line 3: bytes that are not utf-8 text: 2,b\ufffd\ufffdob,4",
                   "whole file, line 5: expected 3 columns, got 2: 4,dan"]
    rows = [b"%d,n%d\n" % (i, i) for i in range(3000)]
    rows[2500], rows[2600] = b"2500,n\xff\n", b"2600\n"  # places after a dropped line stay right
    data = b"id,name\n" + b"".join(rows)
    frames, bad = read_all(data, "t.csv", 4096)
    assert sum(len(f) for f in frames) == 2998 and {str(f["name"].dtype) for f in frames} == {"str"}
    offsets = [int(text.split("line starting at byte ")[1].split(":")[0]) for text in bad]
    assert [data[o:data.index(b"\n", o)] for o in offsets] == [b"2500,n\xff", b"2600"]
    latin = b"id,name\n1,caf\xe9\n"  # with csv_options' encoding the same bytes are text
    read = Counting(latin)
    [piece] = tabular.plan_file(read, InputFile("l.csv", len(latin), "e"), None, 1024, {"encoding": "latin-1"})
    none: list[str] = []
    assert tabular.read_piece(read, piece, none, {"encoding": "latin-1"})["name"].tolist() == ["café"] and not none
