"""Failure recorder handler: triggered by mini-batches that reach the batch dead-letter queue (SQS)."""

from parallelrun import deadletters


def handler(event, context):
    return deadletters.handle_event(event, context)
