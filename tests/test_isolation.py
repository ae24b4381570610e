"""Scoring a mini-batch's partition slices and isolating what failed, with a stand-in for the
scoring host: no stack, no scoring process."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from parallelrun.core.datasets import InputFile, TablePiece
from parallelrun.core.failures import Failure
from parallelrun.core.settings import RunSettings
from parallelrun.pipeline import isolation
from parallelrun.scoring.host import AttemptFailed, Outcome
from parallelrun.store import jobs
from parallelrun.scoring.child import MiniBatchContext

FILES = [InputFile(f"in/{name}.txt", 1, "e") for name in "abcd"]
PIECE = TablePiece("in/t.csv", 100, "e", "csv", 0, 100)


class FakeHost:
    """run(): one row per input, "<input>!" ; an input named in ``failing`` fails the call, one
    in ``silent`` returns no row."""

    def __init__(self, failing: set[str] = frozenset(), silent: set[str] = frozenset()) -> None:
        self.failing, self.silent, self.calls = failing, silent, []

    def run(self, mini_batch: Any, context: Any, timeout: float, deadline: float) -> Outcome:
        inputs = list(mini_batch["x"]) if isinstance(mini_batch, pd.DataFrame) else list(mini_batch)
        self.calls.append(inputs)
        if self.failing & set(inputs):
            raise AttemptFailed(Failure("ValueError", f"bad {sorted(self.failing & set(inputs))}"), [f"log {inputs}"])
        return Outcome([f"{i}!" for i in inputs if i not in self.silent], [f"ran {inputs}"], "x")


def _job(**settings: Any) -> jobs.JobRecord:
    return jobs.JobRecord(job_id="j", endpoint="e", deployment={"model_name": "m"}, settings=RunSettings(**settings),
                    input_uri="s3://b/in/", output_uri="s3://b/out/")


def _context() -> MiniBatchContext:
    return MiniBatchContext(job_id="j", minibatch_index=0, attempt=3)


def test_isolating_inputs_fails_only_those_that_fail_alone():
    host, lines = FakeHost(failing={"b"}, silent={"c"}), ["before"]
    scored = isolation.isolate(host, FILES, ["a", "b", "c", "d"], _context(), 1.0, float("inf"),
                               Failure("ValueError", "batch"), lines)
    assert scored.rows == ["a!", "d!"] and host.calls == [["a"], ["b"], ["c"], ["d"]]
    assert [(item.key, failure.error_type) for item, failure in scored.failed] == [
        ("in/b.txt", "ValueError"), ("in/c.txt", "MissingResults")]
    assert scored.unscored == 2
    assert lines == ["before", "ran ['a']", "log ['b']", "ran ['c']", "ran ['d']"]  # in the order they came


def test_inputs_past_the_deadline_fail_with_the_mini_batch_failure_unrun():
    host = FakeHost()
    scored = isolation.isolate(host, FILES, ["a", "b", "c", "d"], _context(), 60.0, 0.0,
                               Failure("RunTimeout", "too slow", ("tb",)), [])
    assert host.calls == [] and scored.rows == [] and scored.unscored == 4
    assert {(f.error_type, f.traceback) for _, f in scored.failed} == {("RunTimeout", ("tb",))}
    assert "not run alone" in scored.failed[0][1].message and "too slow" in scored.failed[0][1].message


def test_one_slice_without_partition_keys():
    [only] = isolation.slices_of(_job(), FILES, ["a", "b", "c", "d"], None)
    assert (only.partition, only.count, only.positions) == ({}, 4, None)


def test_a_table_is_sliced_by_its_partition_keys_keeping_row_positions():
    frame = pd.DataFrame({"x": ["r0", "r1", "r2", "r3"], "s": ["b", "a", "b", "a"]})
    slices = isolation.slices_of(_job(input_type="tabular", partition_keys=("s",)), [PIECE], frame, None)
    assert [(s.partition, s.count, s.positions) for s in slices] == [({"s": "b"}, 2, [0, 2]), ({"s": "a"}, 2, [1, 3])]
    with pytest.raises(AttemptFailed) as missing:
        isolation.slices_of(_job(input_type="tabular", partition_keys=("region",)), [PIECE], frame, None)
    assert missing.value.failure.error_type == "PartitionKeyMissing"


def test_a_file_outside_partition_format_fails_alone():
    job = _job(partition_keys=("day",), partition_format="{day}/*")
    slices = [isolation.PartitionSlice(None, ["a"], FILES[:1], 1), isolation.PartitionSlice({"day": "1"}, ["b"],
                                                                                             FILES[1:2], 1)]
    scored = isolation.score_partitions(None, job, FakeHost(), slices, _context(), float("inf"))
    assert scored.rows == ["b!"] and scored.unscored == 1
    assert [(item.key, f.error_type) for item, f in scored.failed] == [("in/a.txt", "PartitionMismatch")]


def test_after_the_last_attempt_only_failing_slices_lose_their_rows():
    frame = pd.DataFrame({"x": ["r0", "r1", "r2", "r3"], "s": ["b", "a", "b", "a"]})
    job = _job(input_type="tabular", partition_keys=("s",), isolate_failures=True)
    slices = isolation.slices_of(job, [PIECE], frame, None)
    scored = isolation.last_attempt(None, job, FakeHost(failing={"r1"}), [PIECE], frame, slices, _context(),
                                    float("inf"), Failure("ValueError", "batch"), 4, [])
    assert scored.rows == ["r0!", "r2!"] and scored.unscored == 2  # the slice's two rows
    [(item, failure)] = scored.failed
    assert item == PIECE and failure.message == "partition {'s': 'a'}: bad ['r1']"
    assert scored.log_lines == ["ran ['r0', 'r2']", "log ['r1', 'r3']"]  # slice by slice


def test_a_slice_returning_too_few_rows_fails_the_rest_when_isolated():
    frame = pd.DataFrame({"x": ["r0", "r1", "r2"], "s": ["a", "a", "b"]})
    job = _job(input_type="tabular", partition_keys=("s",), isolate_failures=True)
    slices = isolation.slices_of(job, [PIECE], frame, None)
    scored = isolation.isolate_partitions(None, job, FakeHost(silent={"r1"}), slices, _context(), float("inf"))
    assert scored.rows == ["r0!", "r2!"] and scored.unscored == 1
    assert [(item, f.error_type) for item, f in scored.failed] == [(None, "MissingResults")]


@pytest.mark.parametrize("settings, items, readable, unscored", [
    ({"isolate_failures": False}, FILES, 4, 4),  # no isolation: every file fails
    ({"isolate_failures": True}, FILES[:1], 1, 1),  # one file: nothing to isolate
    ({"input_type": "tabular"}, [PIECE], 250, 250),  # one slice  # a table's inputs are its records
])
def test_without_isolation_every_input_fails_with_the_attempt(settings, items, readable, unscored):
    failure = Failure("ValueError", "batch")
    scored = isolation.last_attempt(None, _job(**settings), FakeHost(), items, None, [], _context(), float("inf"),
                                    failure, readable, [])
    assert scored.rows == [] and scored.failed == [(item, failure) for item in items]
    assert scored.unscored == unscored
