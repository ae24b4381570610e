"""Lambda's asynchronous invocation, played locally: retries, then the on-failure destination.

On AWS, S3 invokes the planner asynchronously: Lambda queues the event, runs the function, and
when the function returns an error runs it again up to MaximumRetryAttempts times (two by
default, one then two minutes apart); when every try failed it sends an invocation record to the
function's on-failure destination, or discards the event if it has none
(https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html). The record
holds the original event and the last error, in the shape documented at
https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html, which
:func:`failure_record` builds, so the consumer (the failure recorder) reads the same bytes here as
on AWS.

Locally the tries follow each other without AWS's waits, so a marker the planner cannot handle
ends its job within seconds, not minutes. A function's timeout is not enforced here: a try fails
only by raising.
"""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from datetime import UTC, datetime
from typing import Any

from parallelrun.aws import sqs
from parallelrun.local import functions, lambdas

log = logging.getLogger("parallelrun.local")
# What Lambda writes for the version it ran: functions here are never published as versions.
LATEST = "$LATEST"


def invoke_async(spec: functions.FunctionSpec, handler: lambdas.Handler, event: dict[str, Any]) -> bool:
    """One asynchronous invocation of ``spec``'s function with ``event``: True if a try succeeded.

    After 1 + MaximumRetryAttempts failed tries the invocation record goes to the on-failure
    queue (or, with none, the event is dropped with an error logged, as Lambda discards it).
    Raises only if sending the record failed, so a caller polling a queue gets the event again.
    """
    request_id = str(uuid.uuid4())  # one per event: Lambda's retries keep the request id
    tries = 1 + spec.async_invoke.maximum_retry_attempts
    for number in range(1, tries + 1):
        context = lambdas.LambdaContext(spec.logical_id, spec.memory, spec.timeout, f"local-{spec.logical_id}")
        context.aws_request_id = request_id
        try:
            handler(event, context)
            return True
        except Exception as error:
            log.warning("asynchronous invocation of %s failed (try %d of %d)", spec.logical_id, number, tries,
                        exc_info=True)
            last_error = error
    record = failure_record(spec, event, last_error, request_id, tries)
    if spec.async_invoke.on_failure_queue_url is None:
        log.error("%s failed on every try and has no on-failure destination: event discarded", spec.logical_id,
                  extra={"fields": {"record": record}})
        return False
    sqs.send_body(spec.async_invoke.on_failure_queue_url, json.dumps(record))
    return False


def failure_record(spec: functions.FunctionSpec, event: dict[str, Any], error: BaseException, request_id: str,
                   tries: int) -> dict[str, Any]:
    """The invocation record Lambda sends to an on-failure destination when every try raised."""
    now = datetime.now(UTC)
    return {
        "version": "1.0",
        "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "requestContext": {
            "requestId": request_id,
            "functionArn": f"{spec.function_arn}:{LATEST}",
            "condition": "RetriesExhausted",
            "approximateInvokeCount": tries,
        },
        "requestPayload": event,
        "responseContext": {"statusCode": 200, "executedVersion": LATEST, "functionError": "Unhandled"},
        # What the Python runtime reports for an exception raised out of the handler.
        "responsePayload": {
            "errorMessage": str(error),
            "errorType": type(error).__name__,
            "stackTrace": traceback.format_list(traceback.extract_tb(error.__traceback__)),
        },
    }
