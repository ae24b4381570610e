"""A local function process: one warm Lambda container of one function, polling its event sources.

``python -m parallelrun.local.workerproc '<json args>'``; stops on SIGTERM or when its parent
(the local stack) is gone. Its environment holds the credentials of the function's execution role,
as Lambda's does, so every call of the function's code is made as that role. Its SQS event sources
are polled with them too (Lambda's event source uses the function's role); its S3 notification
queues, which stand in for S3 invoking the function, are polled with the credentials the stack
gives for them (``notifier``), which the function's role must not need.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import sys
import threading

from parallelrun import aws
from parallelrun.local import destinations, lambdas
from parallelrun.pipeline import eventsource

LONG_POLL_SECONDS = 20  # SQS's longest ReceiveMessage wait


def main(raw: str) -> None:
    args = json.loads(raw)
    spec = pickle.loads(base64.b64decode(args["spec"]))  # a functions.FunctionSpec from the local stack
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    parent = os.getppid()
    handler = lambdas.timed(lambdas.load_handler(spec.code_dir, spec.handler), spec.timeout)
    running = Running()

    def invoke(event: dict) -> object:
        context = lambdas.LambdaContext(args["name"], spec.memory, spec.timeout, f"{args['name']}-{os.getpid()}")
        with running:
            return handler(event, context)

    threading.Thread(target=eventsource.watch_parent, args=(parent, stop), daemon=True).start()
    # Lambda's event source long-polls a queue until it becomes active
    # (https://docs.aws.amazon.com/lambda/latest/dg/with-sqs.html), so an idle queue costs a
    # ReceiveMessage every LONG_POLL_SECONDS, not every second.
    pollers = [dict(queue_url=s.queue_url, queue_arn=s.queue_arn, batch_size=s.batch_size,
                    report_failures=s.report_batch_item_failures, invoke=invoke, wait_seconds=LONG_POLL_SECONDS)
               for s in spec.queue_sources]
    notifier = aws.client_as("sqs", args["notifier"]["AWS_ACCESS_KEY_ID"], args["notifier"]["AWS_SECRET_ACCESS_KEY"])

    def notified(event: dict) -> None:
        # S3 invokes a function asynchronously, once per event record: Lambda's retries and
        # on-failure destination apply to each (parallelrun.local.destinations).
        with running:
            for record in lambdas.s3_event(event)["Records"]:
                destinations.invoke_async(spec, handler, {"Records": [record]})

    pollers += [dict(queue_url=url, queue_arn=arn, batch_size=10, report_failures=False, sqs=notifier,
                     invoke=notified, wait_seconds=LONG_POLL_SECONDS) for url, arn in args["notifications"]]
    threads = [threading.Thread(target=lambdas.poll_forever, args=(stop,), kwargs={**poller, "region": aws.region()},
                                daemon=True) for poller in pollers]
    for thread in threads:
        thread.start()
    stop.wait()
    running.wait_idle()  # invocations finish; pollers blocked in a long poll end with the process


class Running:
    """The handler invocations running in this process: at its stop it waits for them, not for
    the pollers waiting on a long poll (a message such a poll still receives comes back after
    its visibility timeout, as when Lambda's environment is shut down)."""

    def __init__(self) -> None:
        self._count = 0
        self._changed = threading.Condition()

    def __enter__(self) -> None:
        with self._changed:
            self._count += 1

    def __exit__(self, *_: object) -> None:
        with self._changed:
            self._count -= 1
            self._changed.notify_all()

    def wait_idle(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._count == 0)


if __name__ == "__main__":
    main(sys.argv[1])
