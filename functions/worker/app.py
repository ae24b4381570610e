"""Worker handler: triggered by mini-batch messages on the batch queue (SQS)."""

from parallelrun.pipeline import worker


def handler(event, context):
    return worker.handle_event(event, context)
