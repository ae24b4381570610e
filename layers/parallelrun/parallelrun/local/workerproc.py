"""A local worker process: one warm Lambda container polling the mini-batch queue.

``python -m parallelrun.local.workerproc '<json args>'``; stops on SIGTERM or when its parent
(the local stack) is gone.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

from parallelrun.local import lambdas


def main(raw: str) -> None:
    args = json.loads(raw)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    parent = os.getppid()
    handler = lambdas.load_handler(args["code_dir"], args["handler"])

    def invoke(event: dict) -> object:
        context = lambdas.LambdaContext(args["name"], args["memory"], args["timeout"], f"{args['name']}-{os.getpid()}")
        return handler(event, context)

    threading.Thread(target=_watch_parent, args=(parent, stop), daemon=True).start()
    lambdas.poll_forever(stop, queue_url=args["queue_url"], queue_arn=args["queue_arn"], region=args["region"],
                         batch_size=args["batch_size"], report_failures=args["report_failures"], invoke=invoke)


def _watch_parent(parent: int, stop: threading.Event) -> None:
    """An orphaned worker (its stack was killed) stops instead of polling forever."""
    while not stop.wait(1):
        if os.getppid() != parent:
            stop.set()


if __name__ == "__main__":
    main(sys.argv[1])
