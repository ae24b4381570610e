"""A moto server on 127.0.0.1: the AWS of the local stack, shared by every local process.

It counts the requests it serves, by service, so the local stack can say what a job would have
asked of AWS (requests per mini-batch in the benchmark), and it can answer a share of them with
the throttling errors AWS sends under load, so that retries are proven across processes. Its
DynamoDB cancels a transaction that touches an item another one holds, as DynamoDB does and moto
never does (parallelrun.local.conflicts), for as long as the server runs. With a latency
profile (``latency="aws"``) each request first waits what the same request waits from Lambda on
AWS, while others are served meanwhile, so overlapping I/O is measured as it would pay off there.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from typing import Any

from moto import backends
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

from parallelrun.local import conflicts, keepalive, queries, queues, serialization, transactions
from parallelrun.local.latency import LATENCY, latency_of

_SERVICE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/")
# What AWS answers a throttled request with, per service: status, content type, body.
THROTTLE = {
    "s3": ("503 Slow Down", "application/xml",
           b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"),
    "dynamodb": ("400 Bad Request", "application/x-amz-json-1.0",
                 b'{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",'
                 b'"message":"The level of configured provisioned throughput for the table was exceeded."}'),
    "sqs": ("400 Bad Request", "application/x-amz-json-1.0",
            b'{"__type":"com.amazonaws.sqs#ThrottlingException","message":"Rate exceeded"}'),
}


class CountingMotoServer(ThreadedMotoServer):
    """ThreadedMotoServer whose app counts each request by the service its signature names."""

    def __init__(self, ip_address: str, port: int, latency: str | None = None) -> None:
        super().__init__(ip_address=ip_address, port=port, verbose=False)
        if latency is not None and latency not in LATENCY:
            raise ValueError(f"latency profile {latency!r}: use one of {sorted(LATENCY)}")
        self.latency = LATENCY[latency] if latency else {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.actions: collections.Counter[tuple[str, str]] = collections.Counter()  # (service, action)
        self.throttled: collections.Counter[str] = collections.Counter()
        self.throttle_every: dict[str, int] = {}  # service → throttle one request in N
        self.conflicts = conflicts.Conflicts(hold_seconds=conflicts.AWS_HOLD_SECONDS)
        self._undo_conflicts: Any = None
        self._count_lock = threading.Lock()
        # moto's tables are plain dicts with no locking: a query iterating a partition while
        # another thread writes to it fails ("dictionary changed size during iteration", a 500),
        # and a transaction another request sees half-applied is not atomic as on AWS. One
        # DynamoDB request at a time keeps both (measured when moto still copied whole tables:
        # locking writes alone left the 500s).
        self._dynamodb_lock = threading.Lock()

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ: dict[str, Any], start_response: Any) -> Any:
            match = _SERVICE.search(environ.get("HTTP_AUTHORIZATION", ""))
            service = match.group(1) if match else "other"
            with self._count_lock:
                self.counts[service] += 1
                self.actions[service, action_of(service, environ)] += 1
                every = self.throttle_every.get(service)
                throttle = bool(every) and self.counts[service] % every == 0
                if throttle:
                    self.throttled[service] += 1
            if self.latency:
                time.sleep(latency_of(self.latency, service, environ))  # outside every lock: others go on
            if throttle:
                status, content_type, body = THROTTLE[service]
                start_response(status, [("Content-Type", content_type), ("x-amzn-RequestId", "throttled"),
                                        ("Content-Length", str(len(body)))])
                return [body]
            if service == "dynamodb":
                with self._dynamodb_lock:
                    return app(environ, start_response)
            return app(environ, start_response)

        self._server = make_server(self._ip_address, self._port, counting, True, request_handler=keepalive.KeepAliveRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()

    def start(self) -> None:
        transactions.install()
        queries.install()
        serialization.install()
        queues.install()
        keepalive.install()
        _list_moto_modules_once()
        self._undo_conflicts = conflicts.install(self.conflicts)
        super().start()

    def stop(self) -> None:
        super().stop()
        if self._undo_conflicts is not None:
            self._undo_conflicts()  # the patch is process-wide: in-process tests after this see moto as it is

    def snapshot(self) -> dict[str, int]:
        with self._count_lock:
            return dict(self.counts)

    def snapshot_actions(self) -> dict[tuple[str, str], int]:
        """The requests served so far by (service, action), to say which a job's cost is made of."""
        with self._count_lock:
            return dict(self.actions)


def _list_moto_modules_once() -> None:
    """moto's dispatcher lists moto's package folder, a stat per entry, twice on every request
    to tell whether a host names a service (about 0.5 ms of each request, timed here). The folder
    does not change while the server runs."""
    if not getattr(backends.list_of_moto_modules, "listed_once", False):
        modules = tuple(backends.list_of_moto_modules())

        def listed() -> tuple[str, ...]:
            return modules

        listed.listed_once = True  # type: ignore[attr-defined]
        backends.list_of_moto_modules = listed  # type: ignore[assignment]


def action_of(service: str, environ: dict[str, Any]) -> str:
    """The request's operation: DynamoDB's and SQS's X-Amz-Target (the JSON protocols botocore
    speaks to both), else, for S3's REST API, the HTTP method with the sub-resource that names
    the operation (``GET ?list-type`` is a listing, ``POST ?uploads`` starts a multipart upload)."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        return target.rpartition(".")[2]
    method = environ.get("REQUEST_METHOD", "")
    query = environ.get("QUERY_STRING", "")
    names = [pair.partition("=")[0] for pair in query.split("&") if pair]
    marker = next((n for n in names if n in ("list-type", "uploads", "uploadId", "partNumber", "delete", "tagging")), "")
    if service == "s3" and method == "PUT" and environ.get("HTTP_X_AMZ_COPY_SOURCE"):
        marker = marker or "copy"
    return f"{method} ?{marker}" if marker else method


def start(port: int | None = None, latency: str | None = None) -> tuple[CountingMotoServer, str]:
    """Start a moto server in this process (a thread), with a latency profile if named; return it
    and its endpoint URL."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # it logs every request otherwise
    server = CountingMotoServer("127.0.0.1", port or 0, latency)
    server.start()
    host, bound = server.get_host_and_port()
    return server, f"http://{host}:{bound}"
