"""The scoring process's pure parts (scoring.child): run()'s return value as rows, print() as
log lines, and the failure a raised exception becomes."""

from __future__ import annotations

import contextlib
import json
import logging

import pandas as pd
import pytest

from parallelrun.core.errors import ScoringScriptError
from parallelrun.core.failures import TRACEBACK_LINES
from parallelrun.scoring import child


def test_txt_rows_are_one_line_each_and_a_frame_is_joined_by_the_separator():
    assert child.to_rows(["a", 2, "multi\nline\r\nrow"]) == (None, ["a", "2", "multi\\nline\\nrow"])
    frame = pd.DataFrame({"name": ["x", "y"], "score": [1, 2]})
    assert child.to_rows(frame, "txt", ",") == (None, ["x,1", "y,2"])


def test_csv_rows_keep_the_frame_s_header_and_refuse_newlines_inside_values():
    frame = pd.DataFrame({"name": ["x", "a,b"], "score": [1, 2]})
    assert child.to_rows(frame, "csv") == ("name,score", ["x,1", '"a,b",2'])
    with pytest.raises(ScoringScriptError, match="one line per row"):
        child.to_rows(pd.DataFrame({"name": ["two\nlines"]}), "csv")


def test_what_run_may_not_return():
    with pytest.raises(ScoringScriptError, match="returned None"):
        child.to_rows(None)
    with pytest.raises(ScoringScriptError, match="returned dict"):
        child.to_rows({"a": 1})


def test_print_becomes_one_log_line_per_line_and_the_capture_keeps_json():
    logger = logging.getLogger("test_child.user")
    logger.setLevel(logging.INFO)
    capture = child.LogCapture()
    logger.addHandler(capture)
    try:
        with contextlib.redirect_stdout(child._PrintToLog(logger)):
            print("first", end="")
            print(" half")
            print("\nsecond")
    finally:
        logger.removeHandler(capture)
    assert [json.loads(line)["message"] for line in capture.lines] == ["first half", "second"]


def test_a_failure_keeps_the_last_lines_of_its_traceback():
    def deep(n: int) -> None:
        if n == 0:
            raise ValueError("bad input")
        deep(n - 1)

    try:
        deep(20)
    except ValueError as error:
        failure = child.Failure.from_exception(error)
    assert (failure.error_type, failure.message) == ("ValueError", "bad input")
    assert len(failure.traceback) == TRACEBACK_LINES and failure.traceback[-1] == "ValueError: bad input"


def test_a_context_reads_as_attributes_and_as_keys():
    context = child.MiniBatchContext(job_id="j", minibatch_index=3, attempt=1, partition_key_value={"store": "a"})
    assert context["minibatch_index"] == context.minibatch_index == 3
    assert context["partition_key_value"] == {"store": "a"}
