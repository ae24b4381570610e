"""Reads with a size bound: a gzip bomb or a giant line fails its piece with a clear message,
having read and held no more than the bound, and the rest of the job is scored."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib

import pyarrow as pa
import pytest

from parallelrun import aws
from parallelrun.core import tabular, text_formats
from parallelrun.core.datasets import InputFile, TablePiece
from parallelrun.core.errors import InputTooLarge
from parallelrun.store import jobs
from tests.conftest import read_output
from tests.test_pipeline import start
from tests.test_tabular import Counting

KiB, MiB = 1024, 1024 * 1024


def bomb(text_bytes: int) -> bytes:
    """A gzipped CSV of ``text_bytes`` bytes of rows, made without holding them: a few KB per MB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip header and trailer
    rows = b"1,2\n" * (MiB // 4)
    return packer.compress(b"a,b\n") + b"".join(packer.compress(rows) for _ in range(text_bytes // MiB)) + packer.flush()


def planned(read: Counting, key: str, target: int) -> list[TablePiece]:
    return tabular.plan_file(read, InputFile(key, len(read.data), "etag"), None, target)


def test_a_gzip_bomb_fails_its_piece_having_decompressed_no_more_than_the_bound(monkeypatch):
    monkeypatch.setattr(tabular, "MAX_WHOLE", MiB)
    monkeypatch.setattr(tabular, "GZIP_CHUNK", 2 * KiB)
    read = Counting(bomb(128 * MiB))
    [piece] = planned(read, "in/bomb.csv.gz", MiB)
    tracemalloc.start()
    try:
        with pytest.raises(InputTooLarge) as raised:
            tabular.read_piece(read, piece)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(raised.value)
    assert message.startswith("in/bomb.csv.gz: decompresses to more than 1048576 bytes")
    assert "split it into smaller gzipped files, or store it uncompressed" in message
    assert peak < 4 * MiB  # the bound and a chunk or two, not the 128 MiB it expands to
    assert read.read_bytes < len(read.data) // 8  # decompression stopped early: the rest was never fetched


def test_a_gzipped_file_under_the_bound_is_read_whole_in_chunks(monkeypatch):
    monkeypatch.setattr(tabular, "GZIP_CHUNK", 4 * KiB)
    text = b"id,name\n" + b"".join(b"%d,n%d\n" % (i, i * 7919 % 10007) for i in range(20_000))
    body = gzip.compress(text) + gzip.compress(b"20000,last\n")  # two members, as `cat a.gz b.gz` makes
    monkeypatch.setattr(tabular, "MAX_WHOLE", len(text) + len(b"20000,last\n"))  # exactly at the bound: read
    read = Counting(body)
    [piece] = planned(read, "in/t.csv.gz", MiB)
    assert tabular.read_piece(read, piece)["id"].tolist() == list(range(20_001))
    assert read.read_bytes == len(body)


def test_a_csv_header_over_the_bound_fails_the_file_once_saying_so(monkeypatch):
    columns = [f"column_number_{i}" for i in range(100)]  # a 1.7 KB header
    data = (",".join(columns) + "\n" + "".join(",".join(["1"] * 100) + "\n" for _ in range(30))).encode()
    ranged = planned(Counting(data), "in/wide.csv", 2 * KiB)[1]  # planned before the bound was lowered
    monkeypatch.setattr(text_formats, "MAX_LINE", KiB)
    header = r"^in/wide\.csv: its header \(first line\) is longer than 1024 bytes, the longest line a worker reads"
    for target in (MiB, 2 * KiB):  # small enough to read whole, or to be split into ranges
        read = Counting(data)
        [piece] = planned(read, "in/wide.csv", target)  # every range would fail: one piece does, once
        with pytest.raises(InputTooLarge, match=header):
            tabular.read_piece(read, piece)
    read = Counting(data)
    with pytest.raises(InputTooLarge, match=header):
        tabular.read_piece(read, ranged)
    assert read.read_bytes <= KiB + 1  # the search for the header's end stopped at the bound


def test_a_file_that_is_one_giant_line_is_planned_and_failed_reading_a_bounded_start(monkeypatch):
    monkeypatch.setattr(text_formats, "MAX_LINE", 64 * KiB)
    monkeypatch.setattr(tabular, "MAX_WHOLE", MiB)
    size = 512 * MiB

    def read(start: int, end: int) -> bytes:  # half a GB with no newline, made up on demand
        read.total += end - start
        return b"x" * (end - start)

    read.total = 0
    for key in ("in/one.csv", "in/one.jsonl"):
        [piece] = tabular.plan_file(read, InputFile(key, size, "etag"), None, MiB)
        assert piece.whole  # not split: its types cannot be read from its start
        with pytest.raises(InputTooLarge, match=rf"^{key}: its start does not parse or has a line over 65536 bytes, "
                                                rf"so it could not be split into ranges, and its {size} bytes are "
                                                rf"more than the {MiB} a worker reads whole"):
            tabular.read_piece(read, piece)
    assert read.total < 2 * MiB  # each file's bounded start, not the GB that is there


def test_a_json_line_over_the_bound_fails_only_the_piece_it_starts_in(monkeypatch):
    monkeypatch.setattr(text_formats, "MAX_LINE", 2 * KiB)
    lines = [json.dumps({"id": i, "text": "short"}).encode() + b"\n" for i in range(200)]
    lines[120] = json.dumps({"id": 120, "text": "long" * 1500}).encode() + b"\n"  # 6 KB
    lines[60] = json.dumps({"id": 60, "text": "edge" * 500}).encode() + b"\n"  # 2 KB: at most the bound
    data = b"".join(lines)
    long_start = data.index(b'{"id": 120,')
    read = Counting(data)
    scored, failed = [], []
    for piece in planned(read, "in/t.jsonl", KiB):
        try:
            scored += tabular.read_piece(read, piece)["id"].tolist()
        except InputTooLarge as error:
            failed.append((piece.start, piece.end, str(error)))
    [(start, end, message)] = failed
    assert start <= long_start < end
    assert message.startswith(f"in/t.jsonl: the line starting at byte {long_start} is longer than 2048 bytes")
    lost = [i for i in range(200) if start <= data.index(b'{"id": %d,' % i) < end]  # the lines starting there
    assert 120 in lost and scored == [i for i in range(200) if i not in lost]  # the pieces it spans are empty


def test_a_line_over_the_bound_inside_a_piece_fails_it_wherever_it_falls(monkeypatch):
    monkeypatch.setattr(text_formats, "MAX_LINE", 2 * KiB)
    data = b'{"id": 0}\n' + json.dumps({"id": 1, "text": "x" * 3000}).encode() + b'\n{"id": 2}\n'
    for target in (MiB, 4 * KiB):  # read whole, or a range that holds the whole line
        read = Counting(data)
        with pytest.raises(InputTooLarge, match=r"^in/t\.jsonl: the line starting at byte 10 is longer than 2048"):
            for piece in planned(read, "in/t.jsonl", target):
                tabular.read_piece(read, piece)


def test_a_file_that_is_not_parquet_fails_alone_instead_of_stopping_the_planner():
    read = Counting(b"id,x\n1,2\n")
    [piece] = planned(read, "in/fake.parquet", MiB)
    with pytest.raises(pa.ArrowInvalid, match="Parquet magic bytes not found"):
        tabular.read_piece(read, piece)


def test_oversized_inputs_fail_alone_in_failures_jsonl_and_the_job_scores_the_rest(stack, make_endpoint, monkeypatch):
    monkeypatch.setattr(text_formats, "MAX_LINE", 2 * KiB)
    monkeypatch.setattr(tabular, "MAX_WHOLE", MiB)
    endpoint = make_endpoint("def run(mini_batch):\n    return mini_batch[['id']]\n", name="bounded")
    s3 = aws.client("s3")
    put = lambda name, body: s3.put_object(Bucket=stack.cfg.input_bucket, Key=f"bounded/r/{name}", Body=body)  # noqa: E731
    put("a.csv", b"id,x\n" + b"".join(b"%d,%d\n" % (i, i) for i in range(100)))
    put("b.csv.gz", bomb(8 * MiB))
    put("c.csv", ("id," + ",".join(f"c{i}" for i in range(600)) + "\n1" + ",0" * 600 + "\n").encode())
    # d.jsonl in 1 KB pieces: the first holds id 1000 and the start of id 1001's 5 KB line, and
    # fails; the pieces inside that line are empty; id 1002 starts in the last and is scored.
    put("d.jsonl", b'{"id": 1000}\n' + json.dumps({"id": 1001, "t": "y" * 5000}).encode() + b'\n{"id": 1002}\n')
    put("e.jsonl", b"".join(b'{"id": %d}\n' % i for i in range(2000, 2050)))
    put("f.parquet", b"id\n3000\n")  # not Parquet: planning it used to fail the whole job
    job = stack.run_until_done(start(stack, endpoint, "bounded/r/", {"input_type": "tabular", "run_max_try": "1",
                                                                    "mini_batch_size": "1KB"}).job_id)
    assert job.state == jobs.SUCCEEDED, job.reason
    assert [int(r) for r in read_output(stack.cfg, job).splitlines()] == [*range(100), 1002, *range(2000, 2050)]
    failures = [json.loads(line) for line in read_output(stack.cfg, job, "failures.jsonl").splitlines()]
    assert [(f["input"], f["range"], f["error_type"]) for f in failures] == [
        ("bounded/r/b.csv.gz", "whole file", "InputTooLarge"), ("bounded/r/c.csv", "whole file", "InputTooLarge"),
        ("bounded/r/d.jsonl", "bytes 0-1024", "InputTooLarge"), ("bounded/r/f.parquet", "row groups 0-0", "ArrowInvalid")]
    assert failures[0]["message"].startswith("bounded/r/b.csv.gz: decompresses to more than 1048576 bytes")
    assert failures[1]["message"].startswith("bounded/r/c.csv: its header (first line) is longer than 2048 bytes")
    assert failures[2]["message"].startswith("bounded/r/d.jsonl: the line starting at byte 13 is longer than 2048")
    assert "Parquet magic bytes not found" in failures[3]["message"]
