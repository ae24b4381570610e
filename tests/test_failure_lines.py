"""core.failures: the one shape of a failure and of its line in failures.jsonl, without a stack."""

from __future__ import annotations

import json

from parallelrun.core.datasets import InputFile, TablePiece
from parallelrun.core.failures import TRACEBACK_LINES, Failure, failure_line


def _raise(depth: int) -> None:
    if depth:
        _raise(depth - 1)
    raise ValueError("bad pixel")


def test_a_failure_keeps_the_type_the_message_and_the_last_lines_of_its_traceback():
    try:
        _raise(40)
    except ValueError as error:
        failure = Failure.from_exception(error)
    assert (failure.error_type, failure.message) == ("ValueError", "bad pixel")
    assert len(failure.traceback) == TRACEBACK_LINES
    assert failure.traceback[-1] == "ValueError: bad pixel"  # the end of the traceback is what is kept


def test_a_file_line_names_the_file_its_mini_batch_its_attempts_and_why():
    line = failure_line(InputFile("in/a.png", 10, "e"), 7, 3, Failure("ValueError", "bad pixel", ("t1", "t2")), "w-1")
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == {"input": "in/a.png", "minibatch": 7, "attempts": 3, "error_type": "ValueError",
                                "message": "bad pixel", "traceback": ["t1", "t2"], "worker": "w-1"}


def test_a_table_line_names_the_range_of_the_file_it_covers():
    piece = TablePiece("in/t.csv", 100, "e", "csv", 10, 60)
    record = json.loads(failure_line(piece, 0, 1, Failure("ParseError", "row 3"), "w-1"))
    assert record["input"] == "in/t.csv" and record["range"] == piece.describe()


def test_a_line_with_no_input_stands_for_the_whole_mini_batch():
    record = json.loads(failure_line(None, 2, 5, Failure("WorkerLost", "killed"), "dead-letter queue"))
    assert record["input"] is None and "range" not in record and record["worker"] == "dead-letter queue"
