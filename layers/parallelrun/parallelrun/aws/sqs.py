"""Every SQS message the stack sends, built and parsed here; the SQS calls that send them (and
those that receive them, for the local stack's event sources); and the one loop the four
functions run over the records Lambda hands them.

The queues and their messages:

- planner queue: :class:`Start` (submit, run-now), :class:`Listing` (the planner's own
  continuation while it lists), :class:`Tick` (its delayed continuation while it sends),
  :class:`ScheduleRun` (an EventBridge rule, through :func:`schedule_rule_input`,
  or a waiting run's turn);
- batch queue: :class:`MiniBatch` (the planner; the worker runs it);
- finalize queue: :class:`AggregationRequest` (whoever sees a job complete or stopped),
  :class:`CollateRange` (the aggregator, to itself: one range of a large job's mini-batches);
- the dead-letter queues, read by the failure recorder: any of the above, after its last
  delivery, and Lambda's record of a failed asynchronous invocation (:class:`FailedInvocation`).

The loop (:func:`handle_records`) is written here rather than taken from Powertools'
``BatchProcessor``: the planner is also invoked with S3 event records, and the planner and
aggregator event sources report no batch item failures (a failure must raise, so that the
message comes back), which that processor does not model.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from parallelrun import aws
from parallelrun.aws.config import StackConfig
from parallelrun.core import logs, usage
from parallelrun.core.datasets import InputFile, TablePiece, item_from_json

log = logging.getLogger("parallelrun.aws.sqs")
SEND_BATCH = 10  # SQS SendMessageBatch's limit
# ... and the most its messages may hold together, whatever their count (also one message's limit)
# (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessageBatch.html).
SEND_BYTES = 256 * 1024
SEND_TRIES = 5  # SendMessageBatch calls for the entries SQS refused before giving up


# --- the planner queue


@dataclass(frozen=True)
class Start:
    """Plan a queued job and send its first window."""

    job_id: str

    def body(self) -> str:
        return json.dumps({"action": "start", "job_id": self.job_id})


@dataclass(frozen=True)
class Listing:
    """List the job's next slice of inputs: valid only while the job's planning checkpoint has
    ``token`` (see planner.continue_planning)."""

    job_id: str
    token: str

    def body(self) -> str:
        return json.dumps({"action": "listing", "job_id": self.job_id, "token": self.token})


@dataclass(frozen=True)
class Tick:
    """Top the job's window up: valid only while the job's (planner_tick, planner_token) is its
    own (``since``: when it was sent, to tell a late sender from a dead one)."""

    job_id: str
    tick: int
    token: str
    since: float = field(default_factory=time.time)

    def body(self) -> str:
        return json.dumps({"action": "tick", "job_id": self.job_id, "tick": self.tick, "token": self.token,
                           "since": self.since})


@dataclass(frozen=True)
class ScheduleRun:
    """A run of a schedule is due at ``time`` (the rule's event time names the run)."""

    schedule: str
    time: str
    trigger: str = "rule"  # rule, run-now or waited

    def body(self) -> str:
        return json.dumps({"action": "schedule", "schedule": self.schedule, "time": self.time,
                           "trigger": self.trigger})


@dataclass(frozen=True)
class StepEnded:
    """A pipeline step's job took its final state: hand on to the next step (or end the run)."""

    job_id: str

    def body(self) -> str:
        return json.dumps({"action": "step-ended", "job_id": self.job_id})


PlannerMessage = Union[Start, Listing, Tick, ScheduleRun, StepEnded]


def planner_message(body: str | dict[str, Any]) -> PlannerMessage | None:
    """A planner-queue message; None for one with no known action."""
    message = json.loads(body) if isinstance(body, str) else body
    action = message.get("action")
    if action == "start":
        return Start(message["job_id"])
    if action == "listing":
        return Listing(message["job_id"], message["token"])
    if action == "tick":
        return Tick(message["job_id"], int(message["tick"]), message["token"], float(message["since"]))
    if action == "schedule":
        return ScheduleRun(message["schedule"], message["time"], message.get("trigger", "rule"))
    if action == "step-ended":
        return StepEnded(message["job_id"])
    return None


def schedule_rule_input(name: str) -> dict[str, Any]:
    """A schedule's rule target's input transformer: a :class:`ScheduleRun` carrying the event's time."""
    body = json.dumps({"action": "schedule", "schedule": name, "trigger": "rule"})
    return {"InputPathsMap": {"time": "$.time"}, "InputTemplate": body[:-1] + ', "time": <time>}'}


# --- the batch queue


@dataclass(frozen=True)
class MiniBatch:
    """One mini-batch of a job: its index in the plan, its inputs and, in a job with
    ``partition_keys``, its partition (None for files outside ``partition_format``)."""

    job_id: str
    batch: int
    items: list[InputFile | TablePiece]
    partition: dict[str, str] | None = None
    partitioned: bool = False  # the message names a partition (None included)

    def body(self) -> str:
        message: dict[str, Any] = {"job_id": self.job_id, "batch": self.batch,
                                   "items": [item.to_json() for item in self.items]}
        return json.dumps(message | ({"partition": self.partition} if self.partitioned else {}))

    @classmethod
    def parse(cls, body: str | dict[str, Any]) -> MiniBatch:
        message = json.loads(body) if isinstance(body, str) else body
        return cls(message["job_id"], int(message["batch"]), [item_from_json(item) for item in message["items"]],
                   message.get("partition"), "partition" in message)


# --- the finalize queue


@dataclass(frozen=True)
class AggregationRequest:
    """Collate the job's output (asking twice is harmless: one aggregation runs)."""

    job_id: str

    def body(self) -> str:
        return json.dumps({"job_id": self.job_id})

    @classmethod
    def parse(cls, body: str | dict[str, Any]) -> AggregationRequest:
        message = json.loads(body) if isinstance(body, str) else body
        return cls(message["job_id"])


@dataclass(frozen=True)
class CollateRange:
    """Collate range ``number`` of the job's aggregation ``aggregation`` (a duplicate is harmless:
    a range is recorded once)."""

    job_id: str
    aggregation: str
    number: int

    def body(self) -> str:
        return json.dumps({"job_id": self.job_id, "aggregation": self.aggregation, "range": self.number})


def finalize_message(body: str | dict[str, Any]) -> AggregationRequest | CollateRange:
    """A finalize-queue message, by its shape."""
    message = json.loads(body) if isinstance(body, str) else body
    if "range" in message:
        return CollateRange(message["job_id"], message["aggregation"], int(message["range"]))
    return AggregationRequest.parse(message)


# --- the dead-letter queues


@dataclass(frozen=True)
class FailedInvocation:
    """Lambda's record of an asynchronous invocation it gave up on
    (https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html)."""

    record: dict[str, Any]


@dataclass(frozen=True)
class UnreadablePlannerMessage:
    """A dead-lettered planner message with no known action or a missing field: its job, if it
    names one, still ends (invariant 2), rather than the message coming back for ever."""

    job_id: str | None


DeadLetter = Union[MiniBatch, Start, Listing, Tick, ScheduleRun, StepEnded, AggregationRequest, CollateRange,
                   FailedInvocation, UnreadablePlannerMessage]


def dead_letter(body: str) -> DeadLetter:
    """What reached a dead-letter queue, by its shape."""
    message = json.loads(body)
    if "requestContext" in message:
        return FailedInvocation(message)
    if "batch" in message:
        return MiniBatch.parse(message)
    if "action" in message:
        try:
            found = planner_message(message)
        except (KeyError, TypeError, ValueError):
            found = None
        job_id = message.get("job_id")
        return found or UnreadablePlannerMessage(job_id if isinstance(job_id, str) else None)
    return finalize_message(message)


# --- the calls


Message = Union[Start, Listing, Tick, ScheduleRun, StepEnded, MiniBatch, AggregationRequest, CollateRange]


def send(queue_url: str, message: Message, delay_seconds: int | None = None) -> None:
    send_body(queue_url, message.body(), delay_seconds)


def send_body(queue_url: str, body: str, delay_seconds: int | None = None) -> None:
    """A message built elsewhere: Lambda's invocation record, an EventBridge target's input."""
    delay = {} if delay_seconds is None else {"DelaySeconds": delay_seconds}
    aws.client("sqs").send_message(QueueUrl=queue_url, MessageBody=body, **delay)


def groups_of_ten(bodies: Sequence[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    """(id, body) pairs in consecutive groups one SendMessageBatch takes (SEND_BATCH, SEND_BYTES)."""
    group: list[tuple[str, str]] = []
    size = 0
    for entry in bodies:
        length = len(entry[1].encode())
        if group and (len(group) == SEND_BATCH or size + length > SEND_BYTES):
            yield group
            group, size = [], 0
        group.append(entry)
        size += length
    if group:
        yield group


def send_in_tens(queue_url: str, bodies: Sequence[tuple[str, str]]) -> list[str]:
    """Send (id, body) pairs by SendMessageBatch, group after group, sending again what SQS
    refused; the ids of a group's messages still refused after SEND_TRIES calls (none are sent
    after them), else []."""
    for group in groups_of_ten(bodies):
        refused = send_ten(queue_url, dict(group))
        if refused:
            return refused
    return []


def send_ten(queue_url: str, entries: dict[str, str]) -> list[str]:
    """One group of messages (id → body); the ids SQS still refused after SEND_TRIES calls."""
    sqs = aws.client("sqs")
    for _ in range(SEND_TRIES):
        response = sqs.send_message_batch(
            QueueUrl=queue_url, Entries=[{"Id": k, "MessageBody": v} for k, v in entries.items()]
        )
        entries = {f["Id"]: entries[f["Id"]] for f in response.get("Failed", [])}
        if not entries:
            return []
        time.sleep(0.2)
    return sorted(entries)


def change_visibility(queue_url: str, receipt_handle: str, seconds: int) -> None:
    aws.client("sqs").change_message_visibility(QueueUrl=queue_url, ReceiptHandle=receipt_handle,
                                                VisibilityTimeout=seconds)


def queue_arn(queue_url: str) -> str:
    return queue_attributes(queue_url, ["QueueArn"])["QueueArn"]


def queue_attributes(queue_url: str, names: list[str], client: Any = None) -> dict[str, str]:
    return (client or aws.client("sqs")).get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]


def create_queue(name: str) -> str:
    """A standard queue of SQS's defaults (or the one of that name already there); its URL."""
    return aws.client("sqs").create_queue(QueueName=name)["QueueUrl"]


def queue_url(name: str, owner: str) -> str:
    """The URL of queue ``name`` of account ``owner`` (what an ARN names)."""
    return aws.client("sqs").get_queue_url(QueueName=name, QueueOwnerAWSAccountId=owner)["QueueUrl"]


# --- receiving, as Lambda's event source does (the local stack plays it)


def receive(queue_url: str, max_messages: int, wait_seconds: int, client: Any = None) -> list[dict[str, Any]]:
    """Up to ``max_messages`` messages, with every system and message attribute (what an SQS
    event record carries), waiting up to ``wait_seconds`` for the first."""
    return (client or aws.client("sqs")).receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=max_messages, WaitTimeSeconds=wait_seconds,
        AttributeNames=["All"], MessageAttributeNames=["All"],
    ).get("Messages", [])


def delete_received(queue_url: str, messages: Sequence[dict[str, Any]], client: Any = None) -> None:
    """Delete received messages, ten per DeleteMessageBatch (its limit, as SendMessageBatch's)."""
    sqs = client or aws.client("sqs")
    for start in range(0, len(messages), SEND_BATCH):
        group = messages[start:start + SEND_BATCH]
        sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(group)])


# --- the loop


Handle = Callable[[StackConfig, dict[str, Any], Any], None]


def handle_records(event: dict[str, Any], context: Any, function: str, handle: Handle, *,
                   report_failures: bool, expected: tuple[type[Exception], ...] = (),
                   failed: str = "a message failed; SQS will deliver it again") -> dict[str, Any]:
    """``handle(cfg, record, context)`` for each of the event's records, within the
    invocation's usage (``function`` is its :mod:`parallelrun.core.usage` name).

    With ``report_failures`` (an event source with ReportBatchItemFailures), a record that
    raises is reported in ``batchItemFailures`` and the others carry on: only it comes back.
    An ``expected`` exception is such an outcome and not logged; any other is logged as
    ``failed``. Without, the first exception raises out of the invocation, so that every
    message of the event comes back (or, for an asynchronous invocation, Lambda tries again).
    """
    cfg = StackConfig.from_env()
    logs.setup()
    failures = []
    with usage.invocation(function, context, event):
        for record in event.get("Records", []):
            if not report_failures:
                handle(cfg, record, context)
                continue
            try:
                handle(cfg, record, context)
            except expected:
                failures.append({"itemIdentifier": record["messageId"]})
            except Exception:
                log.exception(failed)
                failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures} if report_failures else {}
