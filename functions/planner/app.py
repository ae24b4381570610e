"""Planner handler: triggered by a _READY marker in the input bucket (S3) or a planner-queue message (submit or continuation)."""

from parallelrun.pipeline import planner


def handler(event, context):
    return planner.handle_event(event, context)
