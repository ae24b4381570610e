"""How inputs become mini-batches, and how far the planner may send: pure, no stack."""

from __future__ import annotations

import pytest

from parallelrun.core import planning
from parallelrun.core.datasets import InputFile
from parallelrun.core.settings import RunSettings

FILES = [InputFile(f"in/{day}/{i}.txt", 10, "e") for day in ("d1", "d2") for i in range(3)]


def _never(key: str):
    raise AssertionError(f"a file job reads no input while planning ({key})")


def test_files_are_cut_by_count_in_order():
    planned = list(planning.plan_batches(FILES, "in/", RunSettings(mini_batch_size="4"), _never))
    assert [([item.key for item in batch], partition) for batch, partition in planned] == [
        ([f.key for f in FILES[:4]], None), ([f.key for f in FILES[4:]], None)]


def test_partitioned_files_never_share_a_mini_batch_across_partitions():
    settings = RunSettings(mini_batch_size="2", partition_keys=("day",), partition_format="{day}/*.txt")
    planned = list(planning.plan_batches(FILES, "in/", settings, _never))
    assert sorted((partition["day"], len(batch)) for batch, partition in planned) == [
        ("d1", 1), ("d1", 2), ("d2", 1), ("d2", 2)]
    assert all({item.key.split("/")[1] for item in batch} == {partition["day"]} for batch, partition in planned)


def test_a_table_is_cut_into_pieces_read_through_the_reader():
    body = b"".join(f"{i},{'x' * 20}\n".encode() for i in range(100))
    table = InputFile("in/t.csv", len(body), "e")
    read: list[str] = []

    def reader(key: str):
        read.append(key)
        return lambda start, end: body[start:end]

    settings = RunSettings(input_type="tabular", input_format="csv", mini_batch_size="1KB",
                           csv_options={"header": "none"})
    planned = list(planning.plan_batches([table], "in/", settings, reader))
    pieces = [batch[0] for batch, partition in planned]
    assert len(pieces) > 1 and all(len(batch) == 1 and partition is None for batch, partition in planned)
    assert pieces[0].start == 0 and pieces[-1].end == len(body)
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))  # contiguous, none lost
    assert set(read) == {"in/t.csv"}


@pytest.mark.parametrize("cursor, done, total, window, end", [
    (0, 0, 100, 10, 10),  # the first window
    (10, 4, 100, 10, 14),  # six in flight: four more may go
    (10, 0, 100, 10, 10),  # the window is full
    (95, 90, 100, 10, 100),  # never past the plan
    (12, 0, 100, 10, 12),  # more in flight than the window (it was made smaller): none
])
def test_window_end(cursor, done, total, window, end):
    assert planning.window_end(cursor, done, total, window) == end
