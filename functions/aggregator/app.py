"""Aggregator handler: triggered by a finalize-queue message when a job's counters reach its total (SQS)."""

from parallelrun.pipeline import aggregator


def handler(event, context):
    return aggregator.handle_event(event, context)
