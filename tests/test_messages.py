"""Every SQS message body round trip, the limits SQS puts on them, and the one loop the four
functions run: pure, with a stand-in for the SQS client."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from parallelrun.aws import sqs
from parallelrun.aws.config import StackConfig
from parallelrun.core import settings
from parallelrun.core.datasets import InputFile, TablePiece

FILE = InputFile("in/a.txt", 12, '"0123"')
PIECE = TablePiece("in/t.csv", 1000, '"etag"', "csv", 0, 500, "c2NoZW1h")


@pytest.mark.parametrize("message", [
    sqs.MiniBatch("job-1", 3, [FILE, InputFile("in/b.txt", 0, "")]),
    sqs.MiniBatch("job-1", 0, [PIECE]),
    sqs.MiniBatch("job-1", 7, [FILE], {"region": "eu", "day": "01"}, partitioned=True),
    sqs.MiniBatch("job-1", 8, [FILE], None, partitioned=True),  # a file outside partition_format
    sqs.AggregationRequest("job-1"),
])
def test_a_queue_message_parses_back_to_itself(message):
    assert type(message).parse(message.body()) == message
    assert type(message).parse(json.loads(message.body())) == message


@pytest.mark.parametrize("message", [sqs.Start("job-1"), sqs.Listing("job-1", "cd34"),
                                     sqs.Tick("job-1", 4, "ab12", 1700000000.5),
                                     sqs.ScheduleRun("nightly", "2026-11-22T22:00:00Z", "waited")])
def test_a_planner_message_parses_back_to_itself(message):
    assert sqs.planner_message(message.body()) == message
    assert sqs.dead_letter(message.body()) == message  # after its last delivery, the same message


def test_a_mini_batch_names_its_partition_only_in_a_partitioned_job():
    assert "partition" not in json.loads(sqs.MiniBatch("j", 0, [FILE]).body())
    assert json.loads(sqs.MiniBatch("j", 0, [FILE], None, partitioned=True).body())["partition"] is None


def test_the_planner_ignores_an_unknown_action_and_the_recorder_still_ends_its_job():
    assert sqs.planner_message('{"action": "dance", "job_id": "j"}') is None
    assert sqs.dead_letter('{"action": "dance", "job_id": "j"}') == sqs.UnreadablePlannerMessage("j")
    # a known action missing a field (it failed in the planner for that reason) is no different
    assert sqs.dead_letter('{"action": "tick", "job_id": "j"}') == sqs.UnreadablePlannerMessage("j")
    assert sqs.dead_letter('{"action": "dance"}') == sqs.UnreadablePlannerMessage(None)


def test_dead_letters_are_told_apart_by_shape():
    batch = sqs.MiniBatch("job-1", 2, [FILE])
    assert sqs.dead_letter(batch.body()) == batch
    assert sqs.dead_letter('{"job_id": "job-1"}') == sqs.AggregationRequest("job-1")
    record = {"requestContext": {"condition": "RetriesExhausted"}, "requestPayload": {"Records": []}}
    assert sqs.dead_letter(json.dumps(record)) == sqs.FailedInvocation(record)


def test_a_rule_input_becomes_a_schedule_run_with_the_event_time():
    template = sqs.schedule_rule_input("nightly")
    body = template["InputTemplate"].replace("<time>", '"2026-11-22T22:00:00Z"')
    assert template["InputPathsMap"] == {"time": "$.time"}
    assert sqs.planner_message(body) == sqs.ScheduleRun("nightly", "2026-11-22T22:00:00Z", "rule")


def test_the_largest_mini_batch_fits_one_message():
    """MAX_FILES_PER_BATCH files of S3's longest keys, with the largest size and an ETag, in a
    partitioned job: within SQS's 256 KiB."""
    items = [InputFile(f"{i:04d}" + "k" * 1020, 10**13 - 1, '"' + "f" * 32 + '-10000"')
             for i in range(settings.MAX_FILES_PER_BATCH)]
    message = sqs.MiniBatch("endpoint-" + "e" * 54 + "-20261122-220000-abcdef", 10**6, items,
                            {"region": "r" * 64, "day": "d" * 64}, partitioned=True)
    assert len(message.body().encode()) <= sqs.SEND_BYTES


def test_groups_hold_ten_and_never_more_than_the_batch_limit():
    small = [(str(i), "x" * 10) for i in range(25)]
    assert [len(group) for group in sqs.groups_of_ten(small)] == [10, 10, 5]
    big = [(str(i), "y" * 100_000) for i in range(7)]  # about 98 KiB each: two fit
    groups = list(sqs.groups_of_ten(big))
    assert [len(group) for group in groups] == [2, 2, 2, 1]
    assert all(sum(len(body) for _, body in group) <= sqs.SEND_BYTES for group in groups)
    assert [entry for group in groups for entry in group] == big  # in order, each once


class FakeSQS:
    """send_message_batch refusing each id the first ``refusals[id]`` times."""

    def __init__(self, refusals: dict[str, int]) -> None:
        self.refusals, self.calls = dict(refusals), []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        self.calls.append([entry["Id"] for entry in Entries])
        failed = []
        for entry in Entries:
            if self.refusals.get(entry["Id"], 0) > 0:
                self.refusals[entry["Id"]] -= 1
                failed.append({"Id": entry["Id"], "Code": "InternalError", "SenderFault": False})
        return {"Failed": failed}


@pytest.fixture
def fake_sqs(monkeypatch: pytest.MonkeyPatch):
    def install(refusals: dict[str, int]) -> FakeSQS:
        fake = FakeSQS(refusals)
        monkeypatch.setattr(sqs.aws, "client", lambda service: fake)
        monkeypatch.setattr(sqs.time, "sleep", lambda seconds: None)
        return fake
    return install


def test_refused_messages_are_sent_again(fake_sqs):
    fake = fake_sqs({"1": 2})
    assert sqs.send_in_tens("q", [(str(i), "b") for i in range(12)]) == []
    assert fake.calls == [[str(i) for i in range(10)], ["1"], ["1"], ["10", "11"]]


def test_a_group_refused_every_time_stops_the_sending(fake_sqs):
    fake = fake_sqs({"3": 99, "4": 99})
    assert sqs.send_in_tens("q", [(str(i), "b") for i in range(12)]) == ["3", "4"]
    assert len(fake.calls) == sqs.SEND_TRIES and ["10", "11"] not in fake.calls


class Expected(Exception):
    pass


def _records(*ids: str) -> dict[str, Any]:
    return {"Records": [{"messageId": i, "body": i, "eventSource": "aws:sqs"} for i in ids]}


@pytest.fixture
def handled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr(StackConfig, "from_env", classmethod(lambda cls: "cfg"))
    return []


class Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_the_loop_reports_only_the_records_that_failed(handled):
    collected = Collected()
    logging.getLogger("parallelrun.aws.sqs").addHandler(collected)
    def handle(cfg: Any, record: dict[str, Any], context: Any) -> None:
        handled.append((cfg, record["body"], context))
        if record["body"] == "b":
            raise Expected()
        if record["body"] == "c":
            raise RuntimeError("broken")

    try:
        response = sqs.handle_records(_records("a", "b", "c", "d"), "ctx", "worker", handle, report_failures=True,
                                      expected=(Expected,), failed="it failed")
    finally:
        logging.getLogger("parallelrun.aws.sqs").removeHandler(collected)
    assert response == {"batchItemFailures": [{"itemIdentifier": "b"}, {"itemIdentifier": "c"}]}
    assert handled == [("cfg", body, "ctx") for body in "abcd"]  # a failure stops no other record
    assert [(r.getMessage(), r.exc_info[0]) for r in collected.records] == [("it failed", RuntimeError)]  # c, not b


def test_without_reported_failures_a_failure_raises(handled):
    def handle(cfg: Any, record: dict[str, Any], context: Any) -> None:
        handled.append(record["body"])
        if record["body"] == "b":
            raise RuntimeError("broken")

    assert sqs.handle_records(_records("a"), None, "planner", handle, report_failures=False) == {}
    with pytest.raises(RuntimeError, match="broken"):  # every message of the event comes back
        sqs.handle_records(_records("a", "b", "c"), None, "planner", handle, report_failures=False)
    assert handled == ["a", "a", "b"]


class Calls:
    """A stand-in SQS client that records each call and answers it from ``answers``."""

    def __init__(self, **answers: Any) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.answers = answers

    def __getattr__(self, name: str) -> Any:
        def call(**kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            return self.answers.get(name)
        return call


def test_a_built_body_is_sent_as_it_is_with_a_delay_only_when_given(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Calls()
    monkeypatch.setattr(sqs.aws, "client", lambda service: fake)
    sqs.send_body("q", '{"raw": 1}')
    sqs.send("q", sqs.Start("j1"), delay_seconds=5)
    assert fake.calls == [("send_message", {"QueueUrl": "q", "MessageBody": '{"raw": 1}'}),
                          ("send_message", {"QueueUrl": "q", "MessageBody": sqs.Start("j1").body(), "DelaySeconds": 5})]


def test_queues_are_created_and_found_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Calls(create_queue={"QueueUrl": "http://q/local-x"}, get_queue_url={"QueueUrl": "http://q/planner"},
                 get_queue_attributes={"Attributes": {"QueueArn": "arn:aws:sqs:us-east-1:1:local-x"}})
    monkeypatch.setattr(sqs.aws, "client", lambda service: fake)
    assert sqs.create_queue("local-x") == "http://q/local-x"
    assert sqs.queue_url("planner", "123456789012") == "http://q/planner"
    assert sqs.queue_arn("http://q/local-x") == "arn:aws:sqs:us-east-1:1:local-x"
    assert fake.calls[1] == ("get_queue_url", {"QueueName": "planner", "QueueOwnerAWSAccountId": "123456789012"})
    assert fake.calls[2] == ("get_queue_attributes", {"QueueUrl": "http://q/local-x", "AttributeNames": ["QueueArn"]})


def test_received_messages_carry_every_attribute_and_are_deleted_ten_at_a_time() -> None:
    messages = [{"MessageId": str(i), "ReceiptHandle": f"r{i}"} for i in range(23)]
    fake = Calls(receive_message={"Messages": messages})
    assert sqs.receive("q", 10, 1, fake) == messages
    assert fake.calls[0] == ("receive_message", {"QueueUrl": "q", "MaxNumberOfMessages": 10, "WaitTimeSeconds": 1,
                                                 "AttributeNames": ["All"], "MessageAttributeNames": ["All"]})
    assert sqs.receive("q", 10, 1, Calls(receive_message={})) == []
    sqs.delete_received("q", messages, fake)
    deletes = [kwargs["Entries"] for name, kwargs in fake.calls if name == "delete_message_batch"]
    assert [len(entries) for entries in deletes] == [10, 10, 3]
    assert deletes[2] == [{"Id": "0", "ReceiptHandle": "r20"}, {"Id": "1", "ReceiptHandle": "r21"},
                          {"Id": "2", "ReceiptHandle": "r22"}]
    sqs.delete_received("q", [], fake)
    assert len(fake.calls) == 4  # nothing to delete: no call
