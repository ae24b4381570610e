"""Schedules: EventBridge expressions parsed and evaluated, rules fired by the local clock, and
incremental runs on in-process moto: each run scores only what is new or changed, an empty run
ends at once, failed inputs and failed runs are tried again, and runs never overlap."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from parallelrun import aws
from parallelrun.aws import sqs
from parallelrun.client.api import Client
from parallelrun.client.cli import main
from parallelrun.core import cron
from parallelrun.core.datasets import InputFile
from parallelrun.core.errors import ConflictError, ExpressionError, InputError, NotFoundError, SettingsError
from parallelrun.local import rules
from parallelrun.pipeline import lifecycle, scheduling
from parallelrun.store import jobs, keys, schedules, scored
from tests.conftest import put_files, read_output
from tests.test_failures import script
from tests.test_pipeline import echo

# --- expressions (pure)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def firings(expression: str, after: str, count: int = 3, anchor: str | None = None) -> list[str]:
    parsed = cron.parse(expression)
    moment, out = at(after), []
    for _ in range(count):
        moment = parsed.next_after(moment, at(anchor or after))
        out.append(moment.strftime("%Y-%m-%d %H:%M %a"))
    return out


@pytest.mark.parametrize("expression, after, expected", [
    ("cron(0 2 * * ? *)", "2026-11-22 22:10", ["2026-11-23 02:00 Mon", "2026-11-24 02:00 Tue", "2026-11-25 02:00 Wed"]),
    ("cron(0/20 * * * ? *)", "2026-11-22 22:10", ["2026-11-22 22:20 Sun", "2026-11-22 22:40 Sun", "2026-11-22 23:00 Sun"]),
    ("cron(*/45 9 * * ? *)", "2026-11-22 08:00", ["2026-11-22 09:00 Sun", "2026-11-22 09:45 Sun", "2026-11-23 09:00 Mon"]),
    ("cron(15 10 ? * MON-FRI *)", "2026-11-20 11:00", ["2026-11-23 10:15 Mon", "2026-11-24 10:15 Tue", "2026-11-25 10:15 Wed"]),
    ("cron(0 8 ? * 1,7 *)", "2026-11-20 00:00", ["2026-11-21 08:00 Sat", "2026-11-22 08:00 Sun", "2026-11-28 08:00 Sat"]),
    ("cron(0 0 L * ? *)", "2027-01-15 00:00", ["2027-01-31 00:00 Sun", "2027-02-28 00:00 Sun", "2027-03-31 00:00 Wed"]),
    ("cron(0 0 L 2 ? 2028)", "2027-06-01 00:00", ["2028-02-29 00:00 Tue"]),
    ("cron(0 0 LW * ? *)", "2027-01-15 00:00", ["2027-01-29 00:00 Fri", "2027-02-26 00:00 Fri", "2027-03-31 00:00 Wed"]),
    # 15 Nov 2026 is a Sunday (the Monday after), 1 Aug 2026 a Saturday (the Monday after: not July)
    ("cron(0 0 15W * ? *)", "2026-11-01 00:00", ["2026-11-16 00:00 Mon", "2026-12-15 00:00 Tue", "2027-01-15 00:00 Fri"]),
    ("cron(0 0 1W 8 ? *)", "2026-07-01 00:00", ["2026-08-03 00:00 Mon"]),
    ("cron(0 0 ? * 6L *)", "2026-11-01 00:00", ["2026-11-27 00:00 Fri", "2026-12-25 00:00 Fri", "2027-01-29 00:00 Fri"]),
    ("cron(30 9 ? * TUE#2 *)", "2026-11-01 00:00", ["2026-11-10 09:30 Tue", "2026-12-08 09:30 Tue", "2027-01-12 09:30 Tue"]),
    ("cron(0 12 1 JAN,jul ? 2027-2028)", "2026-11-22 00:00", ["2027-01-01 12:00 Fri", "2027-07-01 12:00 Thu", "2028-01-01 12:00 Sat"]),
    ("cron(59 23 31 12 ? *)", "2026-12-31 23:59", ["2027-12-31 23:59 Fri"]),
])
def test_cron_next_firings(expression, after, expected):
    assert firings(expression, after, len(expected)) == expected


def test_rate_counts_from_its_anchor_and_never_fires_at_the_instant_given():
    assert firings("rate(5 minutes)", "2026-11-22 22:03", anchor="2026-11-22 22:00") == [
        "2026-11-22 22:05 Sun", "2026-11-22 22:10 Sun", "2026-11-22 22:15 Sun"]
    assert firings("rate(1 hour)", "2026-11-22 22:00", 1) == ["2026-11-22 23:00 Sun"]
    assert firings("rate(2 days)", "2026-11-22 00:00", 2) == ["2026-11-24 00:00 Tue", "2026-11-26 00:00 Thu"]
    # A cron whose minute is the given instant fires at the next one, not again.
    assert firings("cron(0 * * * ? *)", "2026-11-22 22:00", 1) == ["2026-11-22 23:00 Sun"]


def test_a_cron_whose_years_are_past_never_fires_again():
    assert cron.parse("cron(0 0 1 1 ? 2025)").next_after(at("2026-01-01 00:00")) is None
    with pytest.raises(ExpressionError, match="never fires"):
        cron.check_fires(cron.parse("cron(0 0 30 2 ? *)"), at("2026-01-01 00:00"))


@pytest.mark.parametrize("expression, message", [
    ("rate(1 minutes)", "singular for 1 and plural otherwise: rate(1 minute)"),
    ("rate(5 hour)", "rate(5 hours)"),
    ("rate(0 minutes)", "1 or more"),
    ("rate(5 weeks)", "minute(s), hour(s) or day(s)"),
    ("rate(five minutes)", "whole number"),
    ("every 5 minutes", "neither rate(...) nor cron(...)"),
    ("cron(0 2 * * ?)", "6 fields"),
    ("cron(0 2 * * * *)", "exactly one of day-of-month and day-of-week must be '?'"),
    ("cron(0 2 ? * ? *)", "exactly one of day-of-month and day-of-week must be '?'"),
    ("cron(60 2 * * ? *)", "minutes field allows 0-59"),
    ("cron(0 24 * * ? *)", "hours field allows 0-23"),
    ("cron(0 2 32 * ? *)", "day-of-month field allows 1-31"),
    ("cron(0 2 * 13 ? *)", "month field allows 1-12 or JAN-DEC"),
    ("cron(0 2 ? * 8 *)", "day-of-week field allows 1-7 or SUN-SAT"),
    ("cron(0 2 ? * FUN *)", "'FUN' is not a value"),
    ("cron(0 2 * * ? 2200)", "year field allows 1970-2199"),
    ("cron(10-5 * * * ? *)", "runs backwards"),
    ("cron(0/0 * * * ? *)", "step"),
    ("cron(0 2 ? * 2#6 *)", "DAY#N with N from 1 to 5"),
    ("cron(0 2 W * ? *)", "empty"),
])
def test_bad_expressions_are_refused_naming_what_is_wrong(expression, message):
    with pytest.raises(ExpressionError) as raised:
        cron.parse(expression)
    assert message in str(raised.value)


def test_a_target_input_transformer_is_applied_as_eventbridge_does():
    event = {"time": "2026-11-22T22:00:00Z", "detail": {"n": 3}}
    target = {"InputTransformer": {"InputPathsMap": {"time": "$.time", "n": "$.detail.n"},
                                   "InputTemplate": '{"at": <time>, "said": "at <time>, \\"<n>\\"", "n": <n>}'}}
    assert json.loads(rules.target_input(target, event)) == {"at": "2026-11-22T22:00:00Z",
                                                             "said": 'at 2026-11-22T22:00:00Z, "3"', "n": 3}
    assert rules.target_input({"Input": '{"a": 1}'}, event) == '{"a": 1}'
    assert json.loads(rules.target_input({}, event)) == event
    body = json.loads(rules.target_input({"InputTransformer": sqs.schedule_rule_input("nightly")}, event))
    assert body == {"action": "schedule", "schedule": "nightly", "trigger": "rule", "time": "2026-11-22T22:00:00Z"}


# --- schedules on the in-process stack


@pytest.fixture
def make_schedule(stack, make_endpoint) -> Iterator[Callable[..., tuple[str, str]]]:
    """Create an echo endpoint and a schedule over a fresh folder; returns (schedule, folder).
    Schedules are deleted afterwards, so the rule clock of a later test does not fire them."""
    made: list[str] = []

    def make(name: str, expression: str = "rate(1 hour)", settings: dict[str, Any] | None = None,
             overlap: str = schedules.SKIP, source: str | None = None) -> tuple[str, str]:
        endpoint = make_endpoint(source or echo(f"ep-{name}"), name=f"ep-{name}")
        folder = f"{endpoint}/incoming/"
        scheduling.create(stack.cfg, name, endpoint, expression, f"s3://{stack.cfg.input_bucket}/{folder}",
                         {"mini_batch_size": "2", **(settings or {})}, overlap=overlap)
        made.append(name)
        return name, folder

    yield make
    for name in made:
        if schedules.find(stack.cfg, name) is not None:
            schedules.delete(stack.cfg, name)


def fire(stack: Any, name: str, when: str) -> str:
    """Deliver the schedule rule's event for ``when``, as EventBridge would; the run's job id."""
    rule = aws.client("events").describe_rule(Name=rule_of(stack, name))
    rules.deliver(rule, datetime.fromisoformat(when))
    return schedules.run_job_id(name, when)


def fire_and_plan(stack: Any, name: str, when: str) -> str:
    """Fire a run and let the planner start it (no worker runs yet); its job id."""
    job_id = fire(stack, name, when)
    stack.deliver("PlannerFunction")
    return stack.plan(job_id).job_id


def rule_of(stack: Any, name: str) -> str:
    return stack.cfg.schedule_rule_prefix + name


def rows(stack: Any, job_id: str) -> list[str]:
    return read_output(stack.cfg, jobs.get(stack.cfg, job_id)).splitlines()


def test_create_stores_the_schedule_and_a_rule_targeting_the_planner_queue(stack, make_schedule):
    name, folder = make_schedule("stored", "cron(0 2 * * ? *)", {"error_threshold": "5"}, overlap=schedules.WAIT)
    found = schedules.get(stack.cfg, name)
    assert (found.endpoint, found.expression, found.overlap) == ("ep-stored", "cron(0 2 * * ? *)", "wait")
    assert found.settings == {"mini_batch_size": "2", "error_threshold": "5"}
    assert found.input_uri == f"s3://{stack.cfg.input_bucket}/{folder}"
    events = aws.client("events")
    rule = events.describe_rule(Name=rule_of(stack, "stored"))
    assert (rule["ScheduleExpression"], rule["State"]) == ("cron(0 2 * * ? *)", "ENABLED")
    (target,) = events.list_targets_by_rule(Rule=rule_of(stack, "stored"))["Targets"]
    queue_arn = aws.client("sqs").get_queue_attributes(QueueUrl=stack.cfg.planner_queue_url,
                                                       AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    assert target["Arn"] == queue_arn
    assert '"schedule": "stored"' in target["InputTransformer"]["InputTemplate"]
    assert name in [s.name for s in schedules.list_schedules(stack.cfg)]

    schedules.delete(stack.cfg, name)
    assert schedules.find(stack.cfg, name) is None
    assert not events.list_rules(NamePrefix=rule_of(stack, "stored"))["Rules"]
    with pytest.raises(NotFoundError, match="no schedule 'stored'"):
        schedules.delete(stack.cfg, name)


def test_create_refuses_what_a_run_would_refuse(stack, make_schedule):
    name, folder = make_schedule("refuse")
    uri = f"s3://{stack.cfg.input_bucket}/{folder}"
    with pytest.raises(SettingsError, match="mini_batch_size='zero' is not allowed: a file count"):
        scheduling.create(stack.cfg, "refuse2", "ep-refuse", "rate(1 hour)", uri, {"mini_batch_size": "zero"})
    with pytest.raises(SettingsError, match="overlap='sometimes' is not allowed: skip .*; wait"):
        scheduling.create(stack.cfg, "refuse2", "ep-refuse", "rate(1 hour)", uri, overlap="sometimes")
    with pytest.raises(ExpressionError, match="hours field allows 0-23"):
        scheduling.create(stack.cfg, "refuse2", "ep-refuse", "cron(0 24 * * ? *)", uri)
    with pytest.raises(NotFoundError, match="no endpoint 'nope'"):
        scheduling.create(stack.cfg, "refuse2", "nope", "rate(1 hour)", uri)
    with pytest.raises(ConflictError, match="schedule 'refuse' already exists"):
        scheduling.create(stack.cfg, name, "ep-refuse", "rate(1 hour)", uri)
    with pytest.raises(InputError, match="lower-case letters"):
        scheduling.create(stack.cfg, "Bad_Name", "ep-refuse", "rate(1 hour)", uri)
    # Nothing of the refused ones was stored, and no rule was left behind.
    assert schedules.find(stack.cfg, "refuse2") is None
    assert not aws.client("events").list_rules(NamePrefix=rule_of(stack, "refuse2"))["Rules"]


def test_second_run_scores_exactly_the_five_new_files(stack, make_schedule):
    name, folder = make_schedule("grow")
    first = [f"{i:02d}.txt" for i in range(8)]
    put_files(stack.cfg, folder, first + ["_READY", ".hidden"])
    run1 = stack.run_until_done(fire(stack, name, "2026-11-22T10:00:00Z"))
    assert run1.state == jobs.SUCCEEDED, run1.reason
    assert run1.output_uri == f"s3://{stack.cfg.artifacts_bucket}/schedules/grow/20261122T100000Z/"
    assert rows(stack, run1.job_id) == first

    new = [f"new/{i}.txt" for i in range(5)]
    put_files(stack.cfg, folder, new)
    run2 = stack.run_until_done(fire(stack, name, "2026-11-22T11:00:00Z"))
    assert run2.state == jobs.SUCCEEDED, run2.reason
    assert run2.output_uri.endswith("/schedules/grow/20261122T110000Z/")
    assert rows(stack, run2.job_id) == new
    summary = json.loads(read_output(stack.cfg, run2, "summary.json"))
    assert summary["counts"]["items"] == {"total": 5, "succeeded": 5, "failed": 0}
    assert (run2.source, run2.schedule) == ("schedule", name)
    found = schedules.get(stack.cfg, name)
    assert (found.last_job_id, found.last_run_time, found.running_job) == (run2.job_id, "2026-11-22T11:00:00Z", None)


TABLE_SCRIPT = """
def run(mini_batch):
    return list(mini_batch["name"] + ":" + mini_batch["n"].astype(str))
"""


def test_a_tabular_schedule_reads_only_new_tables_split_or_whole(stack, make_schedule):
    name, folder = make_schedule("tables", settings={"input_type": "tabular", "mini_batch_size": "64"},
                                 source=TABLE_SCRIPT)

    def table(n: int) -> Callable[[str], bytes]:
        return lambda key: ("name,n\n" + "".join(f"{key},{i}\n" for i in range(n))).encode()

    put_files(stack.cfg, folder, ["big.csv"], table(20))  # split in several pieces of 64 bytes
    put_files(stack.cfg, folder, ["small.csv"], table(1))
    run1 = stack.run_until_done(fire(stack, name, "2026-11-22T10:00:00Z"))
    assert run1.total_batches > 2 and len(rows(stack, run1.job_id)) == 21
    put_files(stack.cfg, folder, ["later.csv"], table(2))
    run2 = stack.run_until_done(fire(stack, name, "2026-11-22T11:00:00Z"))
    assert rows(stack, run2.job_id) == ["later.csv:0", "later.csv:1"]


def test_a_changed_file_is_scored_again_and_an_unchanged_one_is_not(stack, make_schedule):
    name, folder = make_schedule("change")
    put_files(stack.cfg, folder, ["a.txt", "b.txt", "c.txt"])
    assert stack.run_until_done(fire(stack, name, "2026-11-22T10:00:00Z")).state == jobs.SUCCEEDED
    put_files(stack.cfg, folder, ["b.txt"], body=lambda n: b"b, edited")  # a new ETag
    put_files(stack.cfg, folder, ["c.txt"])  # written again, same bytes: same ETag
    run2 = stack.run_until_done(fire(stack, name, "2026-11-22T11:00:00Z"))
    assert rows(stack, run2.job_id) == ["b, edited"]


def test_a_run_with_nothing_new_ends_at_once_with_zero_items(stack, make_schedule):
    name, folder = make_schedule("idle")
    put_files(stack.cfg, folder, ["a.txt"])
    assert stack.run_until_done(fire(stack, name, "2026-11-22T10:00:00Z")).state == jobs.SUCCEEDED
    job_id = fire(stack, name, "2026-11-22T11:00:00Z")
    stack.deliver("PlannerFunction")  # the planner alone: no worker or aggregator turn is needed
    job = jobs.get(stack.cfg, job_id)
    assert (job.state, job.total_batches, job.total_items, job.items_succeeded) == (jobs.SUCCEEDED, 0, 0, 0)
    summary = json.loads(read_output(stack.cfg, job, "summary.json"))
    assert summary["counts"]["items"]["total"] == 0
    assert schedules.get(stack.cfg, name).running_job is None


def test_failed_inputs_and_runs_that_did_not_succeed_are_tried_again(stack, make_schedule):
    source = script("ep-retry", "if any(open(p).read() == 'bad.txt' for p in mini_batch):\n"
                                "    raise ValueError('cannot score bad.txt')")
    name, folder = make_schedule("retry", settings={"run_max_try": "1"}, source=source)
    put_files(stack.cfg, folder, ["a.txt", "bad.txt", "c.txt"])
    run1 = stack.run_until_done(fire(stack, name, "2026-11-22T10:00:00Z"))
    assert (run1.state, run1.items_failed) == (jobs.SUCCEEDED, 1)  # error_threshold -1: the run succeeds
    assert rows(stack, run1.job_id) == ["a.txt", "c.txt"]

    put_files(stack.cfg, folder, ["d.txt"])
    run2_id = fire_and_plan(stack, name, "2026-11-22T11:00:00Z")
    Client(stack.cfg).cancel(run2_id)
    assert stack.run_until_done(run2_id).state == jobs.CANCELED

    run3 = stack.run_until_done(fire(stack, name, "2026-11-22T12:00:00Z"))
    assert run3.items_failed == 1  # bad.txt once more, and d.txt, which the canceled run did not score
    assert rows(stack, run3.job_id) == ["d.txt"]


def test_overlap_skip_skips_a_run_due_while_one_runs(stack, make_schedule):
    name, folder = make_schedule("skip")
    put_files(stack.cfg, folder, ["a.txt", "b.txt", "c.txt"])
    run1 = fire_and_plan(stack, name, "2026-11-22T10:00:00Z")
    assert jobs.get(stack.cfg, run1).state == jobs.RUNNING
    skipped = fire(stack, name, "2026-11-22T10:05:00Z")
    stack.deliver("PlannerFunction")
    assert jobs.find(stack.cfg, skipped) is None
    found = schedules.get(stack.cfg, name)
    assert (found.skipped_runs, found.last_skipped, found.running_job) == (1, "2026-11-22T10:05:00Z", run1)
    assert Client(stack.cfg).run_schedule_now(name) == scheduling.Firing(scheduling.SKIPPED, holder=run1)
    assert schedules.get(stack.cfg, name).skipped_runs == 2

    assert stack.run_until_done(run1).state == jobs.SUCCEEDED
    put_files(stack.cfg, folder, ["d.txt"])
    run3 = stack.run_until_done(fire(stack, name, "2026-11-22T10:10:00Z"))
    assert rows(stack, run3.job_id) == ["d.txt"]


def test_overlap_wait_starts_the_waiting_run_when_the_running_one_ends(stack, make_schedule):
    name, folder = make_schedule("wait", overlap=schedules.WAIT)
    put_files(stack.cfg, folder, ["a.txt", "b.txt", "c.txt"])
    run1 = fire_and_plan(stack, name, "2026-11-22T10:00:00Z")
    waiting = fire(stack, name, "2026-11-22T10:05:00Z")
    fire(stack, name, "2026-11-22T10:10:00Z")  # a second one waiting: the two are one run
    stack.deliver("PlannerFunction", max_rounds=5)
    assert jobs.find(stack.cfg, waiting) is None
    assert schedules.get(stack.cfg, name).waiting == "2026-11-22T10:05:00Z"
    put_files(stack.cfg, folder, ["d.txt", "e.txt"])

    assert stack.run_until_done(run1).state == jobs.SUCCEEDED
    run2 = stack.run_until_done(waiting)  # the aggregator of run 1 handed it to the planner
    assert run2.state == jobs.SUCCEEDED
    assert rows(stack, run1) == ["a.txt", "b.txt", "c.txt"]
    assert rows(stack, waiting) == ["d.txt", "e.txt"]
    found = schedules.get(stack.cfg, name)
    assert (found.last_job_id, found.last_trigger, found.running_job, found.waiting) == (waiting, "waited", None, None)
    assert jobs.find(stack.cfg, schedules.run_job_id(name, "2026-11-22T10:10:00Z")) is None


def test_a_repeated_event_does_not_start_a_second_run(stack, make_schedule):
    name, folder = make_schedule("twice")
    put_files(stack.cfg, folder, ["a.txt"])
    run1 = fire(stack, name, "2026-11-22T10:00:00Z")
    fire(stack, name, "2026-11-22T10:00:00Z")  # EventBridge delivers at least once
    assert stack.run_until_done(run1).state == jobs.SUCCEEDED
    fire(stack, name, "2026-11-22T10:00:00Z")  # a late copy, after the run ended
    stack.deliver("PlannerFunction", max_rounds=5)
    assert rows(stack, run1) == ["a.txt"]
    assert schedules.get(stack.cfg, name).running_job is None
    assert schedules.get(stack.cfg, name).skipped_runs == 0  # a copy of a run's event is not an overlap
    assert [j.job_id for j in jobs.list_jobs(stack.cfg, 1000) if j.schedule == name] == [run1]


def test_a_run_whose_endpoint_is_gone_fails_visibly_and_frees_the_schedule(stack, make_schedule):
    name, folder = make_schedule("orphan")
    Client(stack.cfg).delete_endpoint("ep-orphan")
    fired = scheduling.run_now(stack.cfg, name)
    assert fired.outcome == scheduling.REFUSED
    job = jobs.get(stack.cfg, fired.job_id)
    assert job.state == jobs.FAILED and "no endpoint 'ep-orphan'" in job.reason
    found = schedules.get(stack.cfg, name)
    assert (found.last_job_id, found.running_job) == (fired.job_id, None)


def test_a_run_whose_planner_gave_up_ends_failed_and_frees_the_schedule(stack, make_schedule):
    name, folder = make_schedule("gaveup")
    put_files(stack.cfg, folder, ["a.txt"])
    when = "2026-11-22T10:00:00Z"
    assert scheduling.fire(stack.cfg, name, when).outcome == scheduling.STARTED  # the job exists, never planned
    dead_letters = stack.source("FailureRecorderFunction", "PlannerDeadLetterQueue").queue_url
    for fired_at in (when, "2026-11-22T09:00:00Z"):  # the second never created a job: only logged
        aws.client("sqs").send_message(QueueUrl=dead_letters, MessageBody=json.dumps(
            {"action": "schedule", "schedule": name, "time": fired_at, "trigger": "rule"}))
    stack.deliver("FailureRecorderFunction")
    job = stack.run_until_done(schedules.run_job_id(name, when))
    assert job.state == jobs.FAILED and "planner failed" in job.reason
    assert schedules.get(stack.cfg, name).running_job is None
    assert aws.client("sqs").receive_message(QueueUrl=dead_letters).get("Messages") is None


def test_the_local_rule_clock_fires_a_rate_rule_when_due(stack, make_schedule):
    name, folder = make_schedule("clock", "rate(7 minutes)")
    put_files(stack.cfg, folder, ["a.txt", "b.txt"])
    clock = rules.RuleClock()
    t0 = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
    assert rule_of(stack, name) not in clock.fire_due(t0)  # the rate counts from here
    assert rule_of(stack, "clock") not in clock.fire_due(t0 + timedelta(minutes=6, seconds=59))
    assert rule_of(stack, "clock") in clock.fire_due(t0 + timedelta(minutes=7))
    assert rule_of(stack, "clock") not in clock.fire_due(t0 + timedelta(minutes=8))
    run = stack.run_until_done(schedules.run_job_id(name, "2026-11-22T10:07:00Z"))
    assert (run.state, rows(stack, run.job_id)) == (jobs.SUCCEEDED, ["a.txt", "b.txt"])
    assert rule_of(stack, "clock") in clock.fire_due(t0 + timedelta(minutes=14))


def test_run_now_starts_a_run_at_once(stack, make_schedule):
    name, folder = make_schedule("now")
    put_files(stack.cfg, folder, ["x.txt", "y.txt"])
    fired = Client(stack.cfg).run_schedule_now(name)
    assert fired.outcome == scheduling.STARTED
    assert fired.job_id.startswith("now-") and fired.job_id.endswith("Z")
    assert rows(stack, stack.run_until_done(fired.job_id).job_id) == ["x.txt", "y.txt"]


def test_the_scored_record_is_merged_across_shards_in_key_order(stack):
    listing = [InputFile(f"m/{i:04d}.bin", 1, f"etag{i}") for i in range(300)]
    assert scored.mark(stack.cfg, "merge", listing[::2]) == 150
    changed = [InputFile(f.key, 1, "edited") if i % 10 == 0 else f for i, f in enumerate(listing)]
    left = list(scored.unscored(stack.cfg, "merge", changed))
    assert [f.key for f in left] == [f.key for i, f in enumerate(listing) if i % 2 or i % 10 == 0]
    assert len({keys.scored_key("merge", f.key)["pk"] for f in listing}) == keys.SCORED_SHARDS
    assert scored.forget(stack.cfg, "merge") == 150
    assert len(list(scored.unscored(stack.cfg, "merge", listing))) == 300


# --- the command line


@pytest.fixture
def cli(stack, monkeypatch) -> Client:
    """The CLI on the in-process stack (it would otherwise look for `parallelrun local up`)."""
    monkeypatch.setattr(Client, "local", classmethod(lambda cls: cls(stack.cfg)))
    return Client(stack.cfg)


def test_cli_refuses_bad_expressions_and_settings_in_one_line(cli, stack, make_schedule, capsys):
    name, folder = make_schedule("clibase")
    uri = f"s3://{stack.cfg.input_bucket}/{folder}"
    for flags, message in ((["--cron", "0 25 * * ? *"], "the hours field allows 0-23"),
                           (["--rate", "1 minutes"], "rate(1 minute)"),
                           (["--cron", "cron(0 2 * * * *)"], "exactly one of day-of-month and day-of-week"),
                           (["--rate", "5 minutes", "--set", "run_max_try=99"], "setting run_max_try='99'")):
        assert main(["schedules", "create", "ep-clibase", "cli2", *flags, "--input", uri]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit):
        main(["schedules", "create", "ep-clibase", "cli2", "--cron", "0 2 * * ? *", "--rate", "1 hour",
              "--input", uri])
    assert "not allowed with argument" in capsys.readouterr().err
    assert schedules.find(stack.cfg, "cli2") is None


def test_cli_create_list_show_run_now_delete(cli, stack, make_schedule, capsys):
    name, folder = make_schedule("clibase2")  # for its endpoint and folder
    put_files(stack.cfg, folder, ["p.txt"])
    uri = f"s3://{stack.cfg.input_bucket}/{folder}"
    assert main(["schedules", "create", "ep-clibase2", "cli3", "--cron", "0 2 * * ? *", "--input", uri,
                 "--set", "mini_batch_size=5", "--overlap", "wait"]) == 0
    assert "created schedule cli3: endpoint ep-clibase2" in capsys.readouterr().out
    assert main(["schedules", "run-now", "cli3"]) == 0
    job_id = capsys.readouterr().out.strip()
    assert job_id.startswith("cli3-")
    assert stack.run_until_done(job_id).state == jobs.SUCCEEDED
    assert main(["schedules", "list"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("cli3\t")]
    assert "cron(0 2 * * ? *)" in line and f"{job_id} SUCCEEDED" in line and "overlap wait" in line
    assert main(["schedules", "show", "cli3"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["last_run"]["job_id"] == job_id and shown["last_run"]["state"] == "SUCCEEDED"
    assert shown["settings"] == {"mini_batch_size": "5"} and shown["skipped_runs"] == 0
    assert main(["schedules", "delete", "cli3"]) == 0
    assert main(["schedules", "show", "cli3"]) == 1
    assert "no schedule 'cli3'" in capsys.readouterr().err


def test_every_schedules_command_has_help(capsys):
    from parallelrun.client.cli import parser

    for words in (["schedules"], ["schedules", "create"], ["schedules", "list"], ["schedules", "show"],
                  ["schedules", "delete"], ["schedules", "run-now"]):
        with pytest.raises(SystemExit) as exit_info:
            parser().parse_args([*words, "--help"])
        assert exit_info.value.code == 0
        assert "usage: parallelrun schedules" in capsys.readouterr().out


def test_the_template_lets_only_the_stacks_schedule_rules_reach_the_planner_queue():
    from cfnlint.decode import decode

    from tests.test_template import TEMPLATE

    template, matches = decode(str(TEMPLATE))
    assert not matches
    policy = template["Resources"]["PlannerQueuePolicy"]["Properties"]
    assert policy["Queues"] == [{"Ref": "PlannerQueue"}]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert (statement["Principal"], statement["Action"]) == ({"Service": "events.amazonaws.com"}, "sqs:SendMessage")
    source = statement["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Sub"]
    prefix = template["Outputs"]["ScheduleRulePrefix"]["Value"]["Fn::Sub"]
    assert source.endswith(f":rule/{prefix}*")
    # The aggregator hands a waiting run to the planner when the running one ends; so does the
    # failure recorder, when it ends a scheduled job whose aggregation gave up.
    for role in ("AggregatorRole", "FailureRecorderRole"):
        statements = [statement for policy in template["Resources"][role]["Properties"]["Policies"]
                      for statement in policy["PolicyDocument"]["Statement"]]
        assert any("sqs:SendMessage" in statement["Action"] and {"Fn::GetAtt": ["PlannerQueue", "Arn"]}
                   in statement["Resource"] for statement in statements), role


def test_a_run_whose_aggregation_gave_up_ends_failed_and_frees_the_schedule(stack, make_schedule):
    name, folder = make_schedule("aggdead")
    put_files(stack.cfg, folder, ["a.txt"])
    run1 = fire_and_plan(stack, name, "2026-11-22T10:00:00Z")
    assert schedules.get(stack.cfg, name).running_job == run1
    dead_letters = stack.source("FailureRecorderFunction", "FinalizeDeadLetterQueue").queue_url
    aws.client("sqs").send_message(QueueUrl=dead_letters, MessageBody=json.dumps({"job_id": run1}))
    stack.deliver("FailureRecorderFunction")
    job = jobs.get(stack.cfg, run1)
    assert job.state == jobs.FAILED and "collating the output failed" in job.reason
    assert schedules.get(stack.cfg, name).running_job is None  # the next run need not wait for a takeover


def test_a_crash_between_a_runs_end_and_handing_over_loses_no_waiting_run(stack, make_schedule):
    name, folder = make_schedule("handover", overlap=schedules.WAIT)
    put_files(stack.cfg, folder, ["a.txt"])
    run1 = fire_and_plan(stack, name, "2026-11-22T10:00:00Z")
    waiting = fire(stack, name, "2026-11-22T10:05:00Z")
    stack.deliver("PlannerFunction", max_rounds=5)
    original = scheduling.run_ended
    scheduling.run_ended = lambda cfg, job: None  # the aggregator dies right after the final state
    try:
        assert stack.run_until_done(run1).state == jobs.SUCCEEDED
    finally:
        scheduling.run_ended = original
    assert schedules.get(stack.cfg, name).running_job == run1 and jobs.find(stack.cfg, waiting) is None
    lifecycle.job_complete(stack.cfg, run1)  # the unacknowledged request comes back
    stack.deliver("AggregatorFunction")
    stack.deliver("PlannerFunction", max_rounds=5)
    assert stack.run_until_done(waiting).state == jobs.SUCCEEDED
    assert schedules.get(stack.cfg, name).running_job is None
