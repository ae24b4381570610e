"""Lambda's SQS event source, played by a poll loop: the local stack's function processes
(:mod:`parallelrun.local.workerproc`) run it, and so does the long-running worker host on ECS or
EC2 (:mod:`parallelrun.pipeline.longrun`), which Lambda's own event source cannot serve.

A round receives up to ``batch_size`` messages (the queue's visibility timeout applies), invokes
the handler with a Lambda-shaped event, then deletes the messages that succeeded: all of them on
success, all but the reported ``batchItemFailures`` with ReportBatchItemFailures, none if the
handler raised. A message received more often than the queue's maxReceiveCount moves to the DLQ
(SQS does this on receive, and so does moto).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable

from parallelrun.aws import sqs as queues

log = logging.getLogger("parallelrun.pipeline.eventsource")


def sqs_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """A received SQS message in the shape Lambda's SQS event carries it."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": message.get("MessageAttributes", {}),
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def poll_once(queue_url: str, queue_arn: str, region: str, batch_size: int, report_failures: bool,
              invoke: Callable[[dict[str, Any]], Any], wait_seconds: int = 1, sqs: Any = None) -> int:
    """One receive → invoke → delete round; returns how many messages it received.

    ``sqs`` is the client of the event source (by default this process's, with the function's
    credentials: Lambda's SQS event source polls with the function's execution role).
    """
    messages = queues.receive(queue_url, batch_size, wait_seconds, sqs)
    if not messages:
        return 0
    event = {"Records": [sqs_record(m, queue_arn, region) for m in messages]}
    try:
        response = invoke(event)
    except Exception:
        log.exception("handler raised: every message of the batch will be delivered again")
        return len(messages)
    failed: set[str] = set()
    if report_failures and isinstance(response, dict):
        failed = {f["itemIdentifier"] for f in response.get("batchItemFailures") or []}
    queues.delete_received(queue_url, [m for m in messages if m["MessageId"] not in failed], sqs)
    return len(messages)


def watch_parent(parent: int, stop: threading.Event) -> None:
    """An orphaned poller (its supervisor was killed) stops instead of polling forever."""
    while not stop.wait(1):
        if os.getppid() != parent:
            stop.set()
