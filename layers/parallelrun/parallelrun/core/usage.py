"""What each function invocation uses: its duration, its memory, and the AWS requests it makes.

A :class:`Meter` lives for one handler invocation (:func:`invocation`). A botocore hook on every
client of :mod:`parallelrun.aws` counts each request into the meter in force, found through a
context variable, so a planner and an aggregator polled by threads of one local process each
count their own. Nothing is kept in the process beyond the invocation (DESIGN invariant 5): a
handler *takes* the usage so far and writes it with a record that must survive anyway — a
mini-batch's record, or a small usage item of the job — and the aggregator sums them.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

WORKER, PLANNER, AGGREGATOR, FAILURE_RECORDER = "worker", "planner", "aggregator", "failure_recorder"
FUNCTIONS = (WORKER, PLANNER, AGGREGATOR, FAILURE_RECORDER)
# Counted requests and request units, by what they are priced as (see parallelrun.core.pricing).
REQUEST_KEYS = ("sqs", "s3_put", "s3_get", "s3_free", "dynamodb", "dynamodb_read_units", "dynamodb_write_units")
# The requests Lambda's SQS event source makes for one invocation: it receives the messages and
# deletes those that succeeded. Our code does not make them, but the account pays for them.
EVENT_SOURCE_SQS_REQUESTS = 2
_S3_PUT_CLASS = ("Put", "Copy", "Create", "Complete", "Upload", "List", "Post", "Restore")
_S3_FREE = ("Delete", "Abort")
_DYNAMODB_READS = {"GetItem": 1, "Query": 1, "Scan": 1}
_DYNAMODB_WRITES = {"PutItem": 1, "UpdateItem": 1, "DeleteItem": 1}

_current: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("usage_meter", default=None)
T = TypeVar("T")


@dataclass
class Usage:
    """One span of an invocation: ``invocations`` is 1 for the first span taken, 0 after."""

    function: str
    invocations: int = 0
    ms: int = 0
    memory_mb: int = 0
    requests: dict[str, int] = field(default_factory=dict)

    @property
    def gb_seconds(self) -> float:
        return self.ms / 1000.0 * self.memory_mb / 1024.0

    def to_dict(self) -> dict[str, Any]:
        """Whole numbers only, so DynamoDB stores it as a plain map."""
        return {"function": self.function, "invocations": self.invocations, "ms": self.ms,
                "memory_mb": self.memory_mb, **{k: v for k, v in self.requests.items() if v}}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Usage:
        return cls(function=str(raw["function"]), invocations=int(raw.get("invocations", 0)), ms=int(raw.get("ms", 0)),
                   memory_mb=int(raw.get("memory_mb", 0)),
                   requests={k: int(raw[k]) for k in REQUEST_KEYS if k in raw})


def classify(service: str, operation: str, params: dict[str, Any]) -> dict[str, int]:
    """What one API call counts as. DynamoDB request units are estimated from the call's shape
    (one unit per item, two in a transaction), not from the item sizes."""
    if service == "sqs":
        return {"sqs": 1}
    if service == "s3":
        if operation.startswith(_S3_FREE):
            return {"s3_free": 1}
        return {"s3_put": 1} if operation.startswith(_S3_PUT_CLASS) else {"s3_get": 1}
    if service == "dynamodb":
        counts = {"dynamodb": 1}
        if operation in _DYNAMODB_READS:
            counts["dynamodb_read_units"] = _DYNAMODB_READS[operation]
        elif operation in _DYNAMODB_WRITES:
            counts["dynamodb_write_units"] = _DYNAMODB_WRITES[operation]
        elif operation == "TransactWriteItems":
            counts["dynamodb_write_units"] = 2 * len(params.get("TransactItems", []))
        elif operation == "TransactGetItems":
            counts["dynamodb_read_units"] = 2 * len(params.get("TransactItems", []))
        elif operation == "BatchWriteItem":
            counts["dynamodb_write_units"] = sum(len(v) for v in params.get("RequestItems", {}).values())
        elif operation == "BatchGetItem":
            counts["dynamodb_read_units"] = sum(len(v.get("Keys", [])) for v in params.get("RequestItems", {}).values())
        return counts
    return {}


class Meter:
    """Counts one invocation's requests and time; :meth:`take` hands over what was used since
    the last take."""

    def __init__(self, function: str, memory_mb: int, event_source_requests: int = 0) -> None:
        self.function, self.memory_mb = function, memory_mb
        self._lock = threading.Lock()  # the worker fetches inputs from a thread pool
        self._requests: collections.Counter[str] = collections.Counter({"sqs": event_source_requests})
        self._since = time.monotonic()
        self._taken = False

    def count(self, service: str, operation: str, params: dict[str, Any], sign: int = 1) -> None:
        with self._lock:
            for key, value in classify(service, operation, params).items():
                self._requests[key] += sign * value

    def take(self, including: Iterable[tuple[str, str, dict[str, Any]]] = ()) -> Usage:
        """The usage since the last take. ``including`` names calls about to be made with the
        record this usage goes into (its own write): counted here, and not again when made."""
        including = list(including)
        for call in including:
            self.count(*call)
        now = time.monotonic()
        with self._lock:
            usage = Usage(self.function, invocations=0 if self._taken else 1,
                          ms=math.ceil((now - self._since) * 1000), memory_mb=self.memory_mb,
                          requests={k: v for k, v in self._requests.items() if v})
            self._requests.clear()
            self._since, self._taken = now, True
        for call in including:
            self.count(*call, sign=-1)
        return usage


def memory_of(context: Any) -> int:
    """The function's configured memory in MB: Lambda's context says it (the local stack's
    context takes it from template.yaml), else the variable Lambda sets; 0 if neither."""
    memory = getattr(context, "memory_limit_in_mb", None) or os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
    return int(memory or 0)


@contextlib.contextmanager
def invocation(function: str, context: Any, event: dict[str, Any] | None = None) -> Iterator[Meter]:
    """Meter a handler invocation: every request made inside (by this thread, or a function
    wrapped with :func:`bind`) is counted."""
    from_sqs = any(r.get("eventSource") == "aws:sqs" for r in (event or {}).get("Records", []))
    meter = Meter(function, memory_of(context), EVENT_SOURCE_SQS_REQUESTS if from_sqs else 0)
    token = _current.set(meter)
    try:
        yield meter
    finally:
        _current.reset(token)


def take(including: Iterable[tuple[str, str, dict[str, Any]]] = ()) -> Usage | None:
    """The running invocation's usage since its last take; None outside a metered invocation
    (a client calling the core directly is not a Lambda invocation)."""
    meter = _current.get()
    return meter.take(including) if meter is not None else None


def bind(func: Callable[..., T]) -> Callable[..., T]:
    """``func`` counting into the meter in force here, when a pool thread calls it."""
    meter = _current.get()

    def bound(*args: Any, **kwargs: Any) -> T:
        token = _current.set(meter)
        try:
            return func(*args, **kwargs)
        finally:
            _current.reset(token)

    return bound


def on_request(model: Any, params: dict[str, Any], **_: Any) -> None:
    """botocore's ``before-parameter-build`` hook, which sees the call's own parameters once
    per call: count the call into the meter in force."""
    meter = _current.get()
    if meter is not None:
        meter.count(model.service_model.service_name, model.name, params)


class Tally:
    """A job's usage summed by function, as ``summary.json``'s cost section reports it."""

    def __init__(self) -> None:
        self.functions: dict[str, dict[str, Any]] = {}
        self.requests: collections.Counter[str] = collections.Counter()

    def add(self, spent: Usage | dict[str, Any] | None) -> None:
        if spent is None:
            return
        if isinstance(spent, dict):
            spent = Usage.from_dict(spent)
        row = self.functions.setdefault(spent.function, {"invocations": 0, "ms": 0, "memory_mb": 0,
                                                         "gb_seconds": 0.0})
        row["invocations"] += spent.invocations
        row["ms"] += spent.ms
        row["memory_mb"] = max(row["memory_mb"], spent.memory_mb)
        row["gb_seconds"] += spent.gb_seconds
        self.requests.update(spent.requests)

    def merge(self, other: Tally) -> None:
        """Add another tally's sums (a collated range's, say) to this one."""
        for name, row in other.functions.items():
            mine = self.functions.setdefault(name, {"invocations": 0, "ms": 0, "memory_mb": 0, "gb_seconds": 0.0})
            for counted in ("invocations", "ms", "gb_seconds"):
                mine[counted] += row[counted]
            mine["memory_mb"] = max(mine["memory_mb"], row["memory_mb"])
        self.requests.update(other.requests)

    def to_json(self) -> str:
        """The sums as they are, to be read back by :meth:`from_json`."""
        return json.dumps({"functions": self.functions, "requests": dict(self.requests)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Tally:
        raw = json.loads(text)
        tally = cls()
        tally.functions, tally.requests = raw["functions"], collections.Counter(raw["requests"])
        return tally

    def to_dict(self) -> dict[str, Any]:
        """Per function: invocations, measured seconds, configured memory and GB-seconds; the
        requests by kind. Every function appears, with zeros if it did not run for the job."""
        functions = {}
        for name in FUNCTIONS:
            row = self.functions.get(name, {"invocations": 0, "ms": 0, "memory_mb": 0, "gb_seconds": 0.0})
            functions[name] = {"invocations": row["invocations"], "seconds": round(row["ms"] / 1000.0, 3),
                               "memory_mb": row["memory_mb"], "gb_seconds": round(row["gb_seconds"], 6)}
        return {"functions": functions, "requests": {key: self.requests.get(key, 0) for key in REQUEST_KEYS}}
