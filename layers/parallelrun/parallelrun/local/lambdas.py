"""Playing Lambda's part locally: call a function's handler as Lambda would.

The event source's poll loop is :mod:`parallelrun.pipeline.eventsource`, which the long-running
worker host on ECS or EC2 runs too; :func:`poll_forever` keeps one local function's source going.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from parallelrun.aws import sqs as queues
from parallelrun.pipeline.eventsource import poll_once

log = logging.getLogger("parallelrun.local")
Handler = Callable[[dict[str, Any], Any], Any]


@dataclass
class LambdaContext:
    """The attributes of Lambda's context object that handlers use."""

    function_name: str
    memory_limit_in_mb: int
    timeout: int
    log_stream_name: str

    def __post_init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.time() + self.timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


def load_handler(code_dir: str, handler: str) -> Handler:
    """Import ``app.handler`` from a function's folder, as the Lambda runtime does."""
    module_name, _, attr = handler.rpartition(".")
    path = Path(code_dir) / f"{module_name}.py"
    spec = importlib.util.spec_from_file_location(f"lambda_{Path(code_dir).name}_{module_name}", path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, attr)


def timed(handler: Handler, timeout: float) -> Handler:
    """``handler`` as Lambda runs it: an invocation still running at its function's timeout ends
    with the whole execution environment ("If the function times out ... Lambda resets the
    execution environment", https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html,
    Failures during the invoke phase). Locally the function's process is killed; its supervisor
    starts another, and the event source's messages come back after their visibility timeout."""

    def call(event: dict[str, Any], context: Any) -> Any:
        watchdog = threading.Timer(timeout, _time_out, args=(timeout,))
        watchdog.daemon = True
        watchdog.start()
        try:
            return handler(event, context)
        finally:
            watchdog.cancel()

    return call


def _time_out(timeout: float) -> None:
    log.error("Task timed out after %.2f seconds", timeout)  # what Lambda writes in the function's log
    os.kill(os.getpid(), signal.SIGKILL)


def poll_forever(stop: threading.Event, **kwargs: Any) -> None:
    """Poll until ``stop`` is set; a failed round (server gone, network) backs off and goes on.

    It first reads the queue's attributes, as Lambda does with the function's role when it creates
    an SQS event source (it refuses a role without sqs:GetQueueAttributes): a role that lacks it
    fails here too.
    """
    queues.queue_attributes(kwargs["queue_url"], ["VisibilityTimeout"], kwargs.get("sqs"))
    while not stop.is_set():
        try:
            poll_once(**kwargs)
        except Exception:
            if stop.is_set():
                return
            log.exception("poll round failed")
            time.sleep(1)


def lambda_environment(function_env: dict[str, str], endpoint_url: str, region: str) -> dict[str, str]:
    """What a local function process sees: the stack's variables plus moto's endpoint."""
    return {
        **function_env,
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
    }


def s3_event(event: dict[str, Any]) -> dict[str, Any]:
    """S3 notifications received through SQS, unwrapped into the event S3 gives a function
    directly; the test event a bucket sends when it is wired up is dropped."""
    records = []
    for record in event["Records"]:
        body = json.loads(record["body"])
        records += [r for r in body.get("Records", []) if r.get("eventSource") == "aws:s3"]
    return {"Records": records}
