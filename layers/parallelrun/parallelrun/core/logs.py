"""Structured logs: one JSON object per line, each with the ``job_id`` and ``minibatch`` in force.

The context is kept in context variables so that the user's own ``logging`` calls inside
``run()`` carry the same fields as parallelrun's lines.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator

job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
minibatch_var: contextvars.ContextVar[int | None] = contextvars.ContextVar("minibatch", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "job_id": job_id_var.get(),
            "minibatch": minibatch_var.get(),
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup(level: str | None = None) -> None:
    """Send every log line, the user's included, as JSON to stderr (Lambda ships it to
    CloudWatch) or, where ``PARALLELRUN_LOG_FILE`` is set (the local stack), to that file."""
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        for handler in list(root.handlers):
            root.removeHandler(handler)
        path = os.environ.get("PARALLELRUN_LOG_FILE")
        handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level or os.environ.get("PARALLELRUN_LOG_LEVEL", "INFO"))
    for noisy in ("botocore", "boto3", "urllib3", "werkzeug", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def context(job_id: str | None, minibatch: int | None = None) -> Iterator[None]:
    """Every line logged inside carries this job and mini-batch."""
    job_token = job_id_var.set(job_id)
    batch_token = minibatch_var.set(minibatch)
    try:
        yield
    finally:
        minibatch_var.reset(batch_token)
        job_id_var.reset(job_token)


def event(logger: logging.Logger, message: str, level: int = logging.INFO, **fields: object) -> None:
    """Log ``message`` with extra JSON fields (durations, counts) beside the context."""
    logger.log(level, message, extra={"fields": fields})
