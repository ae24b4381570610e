"""local.queues: a queue's attributes are moto's own, computed one at a time, so a send or a
receive no longer passes over the whole queue to look one attribute up (in-process moto)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws
from moto.sqs import models as sqs_models
from moto.sqs.models import Queue

from parallelrun.local import queues

RUN = uuid.uuid4().hex[:8]  # queues of its own, whichever mock is active around it


@pytest.fixture
def sqs(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    queues.install()
    with mock_aws():
        yield boto3.client("sqs", region_name="us-east-1")


def _queue(url: str) -> Queue:
    name = url.rsplit("/", 1)[1]
    return sqs_models.sqs_backends["123456789012"]["us-east-1"].get_queue(name)


def test_every_attribute_is_the_one_moto_computes(sqs):
    dlq = sqs.create_queue(QueueName=f"dead-{RUN}.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    plain = sqs.create_queue(QueueName=f"plain-{RUN}", Attributes={"VisibilityTimeout": "90"})["QueueUrl"]
    fancy = sqs.create_queue(QueueName=f"fancy-{RUN}.fifo", Attributes={
        "FifoQueue": "true", "ContentBasedDeduplication": "true", "KmsMasterKeyId": "alias/aws/sqs",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3}),
        "Policy": json.dumps({"Version": "2012-10-17", "Statement": []})})["QueueUrl"]
    sqs.send_message(QueueUrl=plain, MessageBody="one", DelaySeconds=5)
    sqs.send_message(QueueUrl=plain, MessageBody="two")
    sqs.send_message(QueueUrl=fancy, MessageBody="three", MessageGroupId="g")
    for url in (plain, fancy, dlq):
        queue = _queue(url)
        assert dict(queue.attributes) == queues.eager(queue)
        assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"] == {
            name: str(value) for name, value in queues.eager(queue).items() if value is not None}
    counts = sqs.get_queue_attributes(QueueUrl=plain, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"])["Attributes"]
    assert counts == {"ApproximateNumberOfMessages": "1", "ApproximateNumberOfMessagesDelayed": "1"}
    with pytest.raises(KeyError):
        _queue(plain).attributes["FifoQueue"]


def test_a_send_and_a_receive_count_no_messages(sqs, monkeypatch: pytest.MonkeyPatch):
    url = sqs.create_queue(QueueName=f"deep-{RUN}", Attributes={"VisibilityTimeout": "600"})["QueueUrl"]
    for start in range(0, 300, 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": f"m{start + n}"} for n in range(10)])
    counted: list[str] = []
    for name in ("approximate_number_of_messages", "approximate_number_of_messages_delayed",
                 "approximate_number_of_messages_not_visible"):
        real = getattr(Queue, name)
        monkeypatch.setattr(Queue, name, property(lambda queue, real=real, name=name: counted.append(name) or real.fget(queue)))
    received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": "more"} for n in range(10)])
    sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]}
                                                    for n, m in enumerate(received)])
    assert [m["Body"] for m in received] == [f"m{n}" for n in range(10)]
    assert counted == []
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    assert attributes == {"ApproximateNumberOfMessages": "300"}
    assert set(counted) == {"approximate_number_of_messages"}  # moto reads the one it is asked for
