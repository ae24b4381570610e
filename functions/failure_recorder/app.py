"""Failure recorder handler: triggered by mini-batches that reach the batch dead-letter queue (SQS)."""

from parallelrun.pipeline import failure_recorder


def handler(event, context):
    return failure_recorder.handle_event(event, context)
