"""The planner's listing, a bounded slice per invocation (DESIGN invariant 7): where a slice
stops and how the job's fingerprint folds, without a stack; then, on in-process moto with a
bound of a few inputs, a planner killed at random between its continuations, duplicated
continuations, a late loser of a race, and plans that do not depend on the bound."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from parallelrun import aws
from parallelrun.aws import s3, sqs
from parallelrun.core import partitions, planning
from parallelrun.core.datasets import InputFile
from parallelrun.core.settings import RunSettings
from parallelrun.pipeline import lifecycle, planner
from parallelrun.store import jobs, keys, plan, reuse, scored
from tests.conftest import put_files, read_output
from tests.test_pipeline import echo, start
from tests.test_plan import FakeS3
from tests.test_schedules import fire, make_schedule  # noqa: F401 - the fixture

BOUND_VARIABLE = "PARALLELRUN_PLANNER_INPUTS_PER_INVOCATION"


def _files(count: int) -> list[InputFile]:
    return [InputFile(f"in/{i:03d}.txt", i, f"e{i}") for i in range(count)]


# --- pure: where a slice stops, how mini-batches carry over, how the fingerprint folds


@pytest.mark.parametrize("count, bound, taken, complete", [
    (0, 3, 0, True),  # nothing to list
    (2, 3, 2, True),  # the listing ends within the bound
    (3, 3, 3, True),  # ends exactly at it: one more key says so, no empty successor
    (7, 3, 3, False),  # a full slice, more to come
])
def test_a_slice_stops_at_its_bound_and_knows_whether_the_listing_ended(count, bound, taken, complete):
    listed = planning.Slice(_files(count), bound)
    assert [item.key for item in listed] == [f.key for f in _files(count)[:taken]]
    assert (listed.count, listed.complete) == (taken, complete)
    assert listed.last_key == (_files(count)[taken - 1].key if taken else None)


def _sliced(files: list[InputFile], settings: RunSettings, bound: int) -> list[tuple[list[str], Any]]:
    """Plan ``files`` a slice of ``bound`` at a time, as the planner's invocations do, carrying the
    mini-batches still filling through the carry's JSON."""
    planned, after, stored = [], "", FakeS3()
    cfg = type("Cfg", (), {"artifacts_bucket": "art"})()
    carry = plan.Carry()
    while True:
        listed = planning.Slice((f for f in files if f.key > after), bound)
        batches = list(planning.plan_batches(listed, "in/", settings, lambda key: None, carry.open_batches))
        if listed.complete:
            batches += list(partitions.remainder(carry.open_batches))
        planned += [([item.key for item in batch], partition) for batch, partition in batches]
        if listed.complete:
            return planned
        after = listed.last_key or after
        plan.put_carry(cfg, "j", "t", carry, s3=stored)  # handed to the next invocation through S3
        carry = plan.read_carry(cfg, "j", "t", s3=stored)


@pytest.mark.parametrize("settings", [
    RunSettings(mini_batch_size="4"),
    RunSettings(mini_batch_size="3", partition_keys=("store",), partition_format="{day}/{store}.txt"),
], ids=["files", "partition_format"])
def test_mini_batches_are_the_same_however_the_listing_is_sliced(settings):
    # Stores interleave in key order, so each slice ends with several partitions' mini-batches open.
    files = [InputFile(f"in/d{day}/{store}.txt", 1) for day in range(7) for store in ("east", "north", "south")]
    files += [InputFile("in/stray.png", 1)]  # outside the pattern: its own partition, None
    whole = _sliced(files, settings, len(files) + 1)
    assert sorted(key for batch, _ in whole for key in batch) == sorted(f.key for f in files)
    for bound in (1, 2, 3, 5, len(files)):
        assert _sliced(files, settings, bound) == whole, bound


def test_the_job_fingerprint_folds_the_same_whatever_the_cut():
    prints = [f"{i:064x}" for i in range(7)]
    whole = reuse.job_fingerprint(prints)
    for cut in range(len(prints) + 1):
        assert reuse.job_fingerprint(prints[cut:], reuse.job_fingerprint(prints[:cut])) == whole
    assert reuse.job_fingerprint(prints[::-1]) != whole  # the order of the mini-batches counts
    assert reuse.job_fingerprint(prints[:-1]) != whole
    assert reuse.job_fingerprint([]) == ""


# --- on the stack, with a bound of a few inputs per planner invocation


@pytest.fixture
def bound(monkeypatch) -> Callable[[int], None]:
    """Set the stack's inputs per planner invocation, as its functions' environment does; plan
    chunks of 4 mini-batches, so that chunks fill and are written across invocations too."""
    monkeypatch.setattr(plan, "CHUNK", 4)
    return lambda inputs: monkeypatch.setenv(BOUND_VARIABLE, str(inputs))


def _slices_listed(monkeypatch) -> list[str]:
    """The checkpoint tokens every slice was listed from (a duplicate would list one twice)."""
    listed: list[str] = []
    original = planner.list_slice

    def counted(cfg, job, held):
        listed.append(held.token)
        return original(cfg, job, held)

    monkeypatch.setattr(planner, "list_slice", counted)
    return listed


class Killer:
    """Kills the planner (its handler raises, so its message comes back) at random points, each
    planner message at most once, so no message reaches its dead-letter queue."""

    def __init__(self, seed: int, chance: float) -> None:
        self.random, self.chance = random.Random(seed), chance
        self.current: str | None = None
        self.killed: set[str] = set()

    def handler(self, original: Callable) -> Callable:
        def invoke(event: dict[str, Any], context: Any) -> Any:
            self.current = event["Records"][0]["body"]  # the planner's event source: one message at a time
            try:
                return original(event, context)
            finally:
                self.current = None

        return invoke

    def around(self, call: Callable) -> Callable:
        def killable(*args: Any, **kwargs: Any) -> Any:
            self.maybe()
            result = call(*args, **kwargs)
            self.maybe()
            return result

        return killable

    def maybe(self) -> None:
        if self.current is not None and self.current not in self.killed and self.random.random() < self.chance:
            self.killed.add(self.current)
            raise RuntimeError("planner killed")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_planner_killed_at_random_between_continuations_still_plans_every_input_once(
        stack, make_endpoint, monkeypatch, bound, seed):
    endpoint = make_endpoint(echo(f"kill{seed}"), name=f"kill{seed}")
    inputs = [f"{i:02d}.txt" for i in range(23)]
    put_files(stack.cfg, f"{endpoint}/r/", inputs + ["_READY"])
    bound(3)
    killer = Killer(seed, 0.15)
    monkeypatch.setitem(stack.handlers, "PlannerFunction", killer.handler(stack.handlers["PlannerFunction"]))
    for module, name in ((jobs, "advance_listing"), (jobs, "transition"), (sqs, "send"), (plan, "put_carry"),
                         (plan, "put_chunk"), (plan, "read_carry")):
        monkeypatch.setattr(module, name, killer.around(getattr(module, name)))
    job = stack.run_until_done(start(stack, endpoint, f"{endpoint}/r/", {"mini_batch_size": "2"}).job_id)
    assert len(killer.killed) >= 3
    assert job.state == jobs.SUCCEEDED, job.reason
    assert read_output(stack.cfg, job).splitlines() == inputs
    assert (job.total_batches, job.total_items, job.items_succeeded, job.items_failed) == (12, 23, 23, 0)
    assert job.planning.step == 8  # 23 inputs, 3 an invocation


def test_duplicated_continuations_and_a_late_loser_change_nothing(stack, make_endpoint, monkeypatch, bound):
    endpoint = make_endpoint(echo("dupl"), name="dupl")
    inputs = [f"{i:02d}.txt" for i in range(17)]
    put_files(stack.cfg, f"{endpoint}/r/", inputs)
    bound(4)
    original, sent = sqs.send, []

    def send_continuations_twice(queue_url, message, delay_seconds=None):
        sent.append(message)
        original(queue_url, message, delay_seconds)
        if isinstance(message, sqs.Listing):
            original(queue_url, message, delay_seconds)

    monkeypatch.setattr(sqs, "send", send_continuations_twice)
    listed = _slices_listed(monkeypatch)
    job = start(stack, endpoint, f"{endpoint}/r/", {"mini_batch_size": "3"})
    stack.deliver("PlannerFunction")  # the first slice
    first = jobs.get(stack.cfg, job.job_id)
    stack.deliver("PlannerFunction")  # the second slice, and its duplicate, which ends at once
    second = aws.client("dynamodb").get_item(TableName=stack.cfg.table, Key=_job_key(job.job_id))["Item"]
    assert jobs.get(stack.cfg, job.job_id).planning.step == 2
    # Each continuation delivered once more changes nothing and sends nothing.
    before = len(sent)
    for token in (planning.START, first.planning.token):
        planner.continue_planning(stack.cfg, sqs.Listing(job.job_id, token))
    assert aws.client("dynamodb").get_item(TableName=stack.cfg.table, Key=_job_key(job.job_id))["Item"] == second
    assert len(sent) == before

    # The first slice's planner, late, redoes its work from the checkpoint it had read, after
    # the chain went on: that checkpoint's carry is gone, so it stops and writes nothing.
    same_bound = dataclasses.replace(stack.cfg, limits=dataclasses.replace(stack.cfg.limits,
                                                                           planner_inputs_per_invocation=4))
    assert planner._plan_slice(same_bound, first, first.planning) is False
    assert jobs.get(stack.cfg, job.job_id).planning.step == 2
    done = stack.run_until_done(job.job_id)
    assert done.state == jobs.SUCCEEDED, done.reason
    assert read_output(stack.cfg, done).splitlines() == inputs
    assert (done.total_batches, done.items_succeeded) == (6, 17)
    assert len(listed) == len(set(listed)) + 1  # only the late loser listed a slice twice
    assert done.planning.step == 5
    # Each checkpoint's carry went once its successor was recorded, so the late loser found its
    # own gone and stopped there: the job leaves no carry behind.
    assert list(s3.under(stack.cfg.artifacts_bucket, keys.plan_carry_key(job.job_id, ""))) == []


def _job_key(job_id: str) -> dict[str, Any]:
    return {name: {"S": value} for name, value in keys.job_key(job_id).items()}


def _planned(stack: Any, endpoint: str, folder: str, settings: dict[str, str]) -> tuple[jobs.JobRecord, list]:
    job = stack.run_until_done(start(stack, endpoint, folder, settings).job_id)
    assert job.state == jobs.SUCCEEDED, job.reason
    return job, list(plan.read(stack.cfg, job.job_id, 0, job.total_batches))


def test_the_fingerprint_does_not_depend_on_the_bound_so_reuse_finds_the_identical_job(stack, make_endpoint, bound):
    endpoint = make_endpoint(echo("fpbound"), name="fpbound")
    put_files(stack.cfg, "fpbound/r/", [f"{i:02d}.txt" for i in range(11)])
    bound(2)
    sliced, sliced_plan = _planned(stack, endpoint, "fpbound/r/", {"mini_batch_size": "3", "allow_reuse": "false"})
    bound(1000)
    whole, whole_plan = _planned(stack, endpoint, "fpbound/r/", {"mini_batch_size": "3", "allow_reuse": "false"})
    assert (sliced.planning.step, whole.planning.step) == (6, 1)
    assert sliced_plan == whole_plan and sliced.fingerprint == whole.fingerprint
    bound(4)
    same = stack.run_until_done(start(stack, endpoint, "fpbound/r/", {"mini_batch_size": "3"}).job_id)
    assert same.reused_from == whole.job_id and same.batches_reused == 4


PARTITIONED = """
def run(mini_batch, mini_batch_context):
    return [f"{open(p).read()} {mini_batch_context.partition_key_value['store']}" for p in mini_batch]
"""

TABLES = """
def run(mini_batch):
    return list(mini_batch["n"].astype(str))
"""


def test_a_partition_format_job_planned_in_slices_gives_the_plan_of_one(stack, make_endpoint, bound):
    endpoint = make_endpoint(PARTITIONED, name="partslices")
    names = [f"d{day}/{store}.txt" for day in range(7) for store in ("east", "north", "south")]
    put_files(stack.cfg, "partslices/r/", names)
    settings = {"partition_format": "{day}/{store}.txt", "partition_keys": "store", "mini_batch_size": "3",
                "allow_reuse": "false"}
    bound(2)
    sliced, sliced_plan = _planned(stack, endpoint, "partslices/r/", settings)
    bound(1000)
    whole, whole_plan = _planned(stack, endpoint, "partslices/r/", settings)
    assert sliced.planning.step == 11 and sliced_plan == whole_plan
    assert [partition["store"] for _, _, partition in whole_plan] == ["east", "north", "south"] * 3
    assert read_output(stack.cfg, sliced) == read_output(stack.cfg, whole)
    assert sorted(read_output(stack.cfg, sliced).splitlines()) == sorted(f"{n} {n[3:-4]}" for n in names)


def test_a_tabular_job_planned_in_slices_gives_the_plan_of_one(stack, make_endpoint, bound):
    endpoint = make_endpoint(TABLES, name="tabslices", settings={"input_type": "tabular"})
    s3 = aws.client("s3")
    for number, rows in enumerate((40, 3, 120, 1, 75)):  # big ones cut into pieces, small ones whole
        body = "n,pad\n" + "".join(f"{number * 1000 + i},{'x' * 30}\n" for i in range(rows))
        s3.put_object(Bucket=stack.cfg.input_bucket, Key=f"tabslices/r/{number}.csv", Body=body.encode())
    settings = {"input_type": "tabular", "mini_batch_size": "1KB", "allow_reuse": "false"}
    bound(1)
    sliced, sliced_plan = _planned(stack, endpoint, "tabslices/r/", settings)
    bound(1000)
    whole, whole_plan = _planned(stack, endpoint, "tabslices/r/", settings)
    assert sliced.planning.step == 5 and sliced_plan == whole_plan and len(whole_plan) > 5
    assert read_output(stack.cfg, sliced) == read_output(stack.cfg, whole)
    expected = [str(number * 1000 + i) for number, rows in enumerate((40, 3, 120, 1, 75)) for i in range(rows)]
    assert read_output(stack.cfg, sliced).splitlines() == expected


def test_cancel_between_slices_ends_the_chain_and_sends_nothing(stack, make_endpoint, monkeypatch, bound):
    endpoint = make_endpoint(echo("cancelslices"), name="cancelslices")
    put_files(stack.cfg, "cancelslices/r/", [f"{i:02d}.txt" for i in range(9)])
    bound(2)
    listed = _slices_listed(monkeypatch)
    job = start(stack, endpoint, "cancelslices/r/", {"mini_batch_size": "1"})
    stack.deliver("PlannerFunction")
    assert jobs.get(stack.cfg, job.job_id).planning.step == 1
    lifecycle.cancel(stack.cfg, job.job_id)
    done = stack.run_until_done(job.job_id)
    assert (done.state, done.total_batches, done.batches_succeeded) == (jobs.CANCELED, None, 0)
    assert len(listed) == 1  # the continuation found the job canceled and listed nothing
    received = aws.client("sqs").receive_message(QueueUrl=stack.cfg.batch_queue_url, MaxNumberOfMessages=10)
    assert not [m for m in received.get("Messages", []) if json.loads(m["Body"])["job_id"] == job.job_id]


def test_a_schedules_run_planned_in_slices_plans_only_what_is_new(stack, make_schedule, bound):
    name, folder = make_schedule("slices")
    first = [f"{i:02d}.txt" for i in range(8)]
    put_files(stack.cfg, folder, first)
    bound(3)
    run1 = stack.run_until_done(fire(stack, name, "2026-11-23T10:00:00Z"))
    assert (run1.state, run1.planning.step) == (jobs.SUCCEEDED, 3)
    assert read_output(stack.cfg, run1).splitlines() == first

    # New files between the scored ones, and a changed one: slices of two, most of them with
    # nothing new, still plan exactly these.
    new = ["00a.txt", "03a.txt", "zz.txt"]
    put_files(stack.cfg, folder, new)
    put_files(stack.cfg, folder, ["05.txt"], lambda n: b"changed " + n.encode())
    bound(2)
    run2 = stack.run_until_done(fire(stack, name, "2026-11-23T11:00:00Z"))
    assert (run2.state, run2.planning.step) == (jobs.SUCCEEDED, 6)
    assert read_output(stack.cfg, run2).splitlines() == ["00a.txt", "03a.txt", "changed 05.txt", "zz.txt"]
    # A resumed slice reads the schedule's records from where its listing starts, not from the first.
    after = f"{folder}05.txt"
    assert [key for key, _ in scored._all_scored(stack.cfg, name, after)] == [
        f"{folder}{n}" for n in sorted(first + new) if f"{folder}{n}" > after]
