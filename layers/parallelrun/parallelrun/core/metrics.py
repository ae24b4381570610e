"""Metrics as CloudWatch Embedded Metric Format log lines.

A log line that carries the ``_aws`` envelope becomes CloudWatch metrics when Lambda ships it to
CloudWatch Logs: a deployed stack gets its dashboards (items scored and failed, mini-batch
duration, queue wait) with no agent and no PutMetricData call. The line is an ordinary
structured log line as well, with the ``job_id`` and ``minibatch`` of every other line.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from parallelrun.core import logs

log = logging.getLogger("parallelrun.core.metrics")
log.setLevel(logging.INFO)  # metrics are not chatter: PARALLELRUN_LOG_LEVEL=WARNING keeps them
NAMESPACE = "parallelrun"


def envelope(metrics: dict[str, tuple[float, str]], dimensions: dict[str, str],
             timestamp: float | None = None) -> dict[str, Any]:
    """The EMF object: ``metrics`` maps a name to (value, unit); each name and dimension is a
    top-level key, as EMF requires."""
    return {
        "_aws": {
            "Timestamp": int((time.time() if timestamp is None else timestamp) * 1000),
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [sorted(dimensions)],
                "Metrics": [{"Name": name, "Unit": unit} for name, (_, unit) in metrics.items()],
            }],
        },
        **dimensions,
        **{name: value for name, (value, _) in metrics.items()},
    }


def queue_wait_ms(record: dict[str, Any], started: float) -> int | None:
    """Time from the message's send to the start of its processing (SQS's SentTimestamp)."""
    sent = record.get("attributes", {}).get("SentTimestamp")
    return max(0, int(started * 1000) - int(sent)) if sent else None


def emit(metrics: dict[str, tuple[float, str]], endpoint: str) -> None:
    logs.event(log, "metrics", **envelope(metrics, {"Endpoint": endpoint}))


def mini_batch_done(endpoint: str, items_succeeded: int, items_failed: int, failed: bool, duration_ms: int,
                    queue_wait: int | None) -> None:
    """One recorded mini-batch."""
    metrics: dict[str, tuple[float, str]] = {
        "ItemsScored": (items_succeeded, "Count"),
        "ItemsFailed": (items_failed, "Count"),
        "MiniBatchesFailed": (int(failed), "Count"),
        "MiniBatchDuration": (duration_ms, "Milliseconds"),
    }
    if queue_wait is not None:
        metrics["QueueWait"] = (queue_wait, "Milliseconds")
    emit(metrics, endpoint)


def attempt_retried(endpoint: str, queue_wait: int | None) -> None:
    """An attempt failed and the mini-batch will be delivered again."""
    metrics: dict[str, tuple[float, str]] = {"AttemptsRetried": (1, "Count")}
    if queue_wait is not None:
        metrics["QueueWait"] = (queue_wait, "Milliseconds")
    emit(metrics, endpoint)
