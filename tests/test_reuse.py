"""allow_reuse: mini-batches a succeeded job already scored are not scored again."""

from __future__ import annotations

from parallelrun import aws
from parallelrun.core.datasets import split_s3_uri
from parallelrun.store import jobs
from tests.conftest import put_files, read_output
from tests.test_pipeline import echo, parts, start


def run(stack, endpoint: str, folder: str, **settings: str) -> jobs.JobRecord:
    return stack.run_until_done(start(stack, endpoint, folder, {"mini_batch_size": "10", **settings}).job_id)


def test_resubmitting_reuses_and_changes_rerun_only_what_changed(stack, make_endpoint):
    endpoint = make_endpoint(echo("reuse"), name="reuse")
    inputs = [f"{i:03d}.txt" for i in range(100)]
    put_files(stack.cfg, "reuse/r/", inputs)
    first = run(stack, endpoint, "reuse/r/")
    assert (first.state, first.batches_reused) == (jobs.SUCCEEDED, 0)

    same = run(stack, endpoint, "reuse/r/")
    assert (same.state, same.batches_reused, same.items_succeeded) == (jobs.SUCCEEDED, 10, 100)
    assert parts(stack, same.job_id) == []  # nothing was scored again
    assert (same.reused_from, same.output_uri) == (first.job_id, first.output_uri)  # its output, at once
    assert read_output(stack.cfg, same) == read_output(stack.cfg, first)

    put_files(stack.cfg, "reuse/r/", ["042.txt"], lambda name: b"changed " + name.encode())
    put_files(stack.cfg, "reuse/r/", [f"{i:03d}.txt" for i in range(100, 110)])  # 10 appended files
    changed = run(stack, endpoint, "reuse/r/")
    assert (changed.total_batches, changed.batches_reused) == (11, 9)  # the changed file's and the new one
    rows = read_output(stack.cfg, changed).splitlines()
    assert rows[42] == "changed 042.txt" and rows[100:] == [f"{i:03d}.txt" for i in range(100, 110)]
    assert len(rows) == 110

    other_setting = run(stack, endpoint, "reuse/r/", arguments="--mode strict")
    assert other_setting.batches_reused == 0  # a setting that reaches the script re-runs all
    no_reuse = run(stack, endpoint, "reuse/r/", allow_reuse="false")
    assert no_reuse.batches_reused == 0 and len(parts(stack, no_reuse.job_id)) == 11
    operational = run(stack, endpoint, "reuse/r/", run_max_try="2", logging_level="DEBUG")
    assert operational.batches_reused == 11  # how a job runs does not change its rows
    assert operational.reused_from == no_reuse.job_id  # the latest identical job that succeeded
    elsewhere = run(stack, endpoint, "reuse/r/", output_path=f"s3://{stack.cfg.artifacts_bucket}/mine/")
    assert elsewhere.reused_from is None and elsewhere.batches_reused == 11  # its own output, from reused parts
    assert read_output(stack.cfg, elsewhere) == read_output(stack.cfg, changed)


def test_failed_inputs_are_never_reused(stack, make_endpoint):
    endpoint = make_endpoint(echo("noreuse").replace(
        "return [", "if any(open(p).read() == 'bad.txt' for p in mini_batch):\n        raise ValueError('bad')\n    return ["),
        name="noreuse")
    put_files(stack.cfg, "noreuse/r/", ["a.txt", "bad.txt"])
    first = run(stack, endpoint, "noreuse/r/", mini_batch_size="1", run_max_try="1")
    assert (first.items_failed, first.items_succeeded) == (1, 1)
    again = run(stack, endpoint, "noreuse/r/", mini_batch_size="1", run_max_try="1")
    assert (again.batches_reused, again.items_failed) == (1, 1)  # a.txt reused, bad.txt tried again
    summary = aws.client("s3").get_object(Bucket=split_s3_uri(again.output_uri)[0],
                                          Key=split_s3_uri(again.output_uri)[1] + "summary.json")["Body"].read()
    assert b'"reused_batches": 1' in summary
