"""Transaction conflicts: what DynamoDB does under concurrency and moto never does (DESIGN §4).

On AWS a ``TransactWriteItems`` that touches an item another transaction is writing is cancelled
as a whole; moto serializes its transactions and never cancels one. :func:`install` makes moto's
DynamoDB backend cancel a chosen share of them with AWS's own error, so the core's retry is
proven. The backend is the same object in process (the tests' ``mock_aws``) and in the local
server (it serves every process of the local stack), so one patch serves both.

AWS's answer, as its API reference lists the reason and SDK maintainers have quoted real
responses (HTTP 400, JSON body)::

    {"__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
     "CancellationReasons": [{"Code": "None"},
                             {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}],
     "Message": "Transaction cancelled, please refer cancellation reasons for specific reasons "
                "[None, TransactionConflict]"}

One reason per item, in the request's order, ``{"Code": "None"}`` for an item that did not
cause it. https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html
(CancellationReasons: "Transaction Conflict: Code: TransactionConflict, Message: Transaction is
ongoing for the item."); the shape of the body: https://github.com/pynamodb/PynamoDB/pull/1144.
moto's ``TransactionCanceledException`` renders exactly this body from a list of reasons.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from moto.dynamodb.exceptions import TransactionCanceledException
from moto.dynamodb.models import DynamoDBBackend

# How long a served transaction is taken to hold its items: DynamoDB's TransactWriteItems p50
# from Lambda (DESIGN §6). What the local server should use.
AWS_HOLD_SECONDS = 0.025
SEEN = 10_000  # transactions whose keys are kept: a long-running server must not grow with its jobs
CONFLICT = ("TransactionConflict", "Transaction is ongoing for the item", None)
NO_REASON = (None, None, None)  # moto renders it {"Code": "None"}, as AWS does
# An item key as the injector records it: (table, ((attribute, value), ...)) with the key's
# attributes sorted, e.g. ("table", (("pk", "JOB#j#3"), ("sk", "COUNTS"))).
ItemKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Conflicts:
    """Which transactions are cancelled: one in ``every`` (2: every other one, whatever it
    touches; for tests), and/or, with ``hold_seconds``, every one that touches an item a
    transaction served less than ``hold_seconds`` ago still holds (AWS's conflicts between
    transactions in flight at once; moto serves them one at a time, so a served transaction is
    taken to last that long: :data:`AWS_HOLD_SECONDS`). ``seen`` keeps the item keys of the
    last :data:`SEEN` transactions asked for, served or not."""

    every: int = 0
    hold_seconds: float = 0.0
    seen: collections.deque[list[ItemKey]] = field(default_factory=lambda: collections.deque(maxlen=SEEN),
                                                   repr=False)
    asked: int = 0
    cancelled: int = 0
    _held: dict[ItemKey, float] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def conflicting(self, keys: list[ItemKey], now: float) -> set[int]:
        """The positions of ``keys`` that cancel this transaction (empty: it is served, and
        holds its items from now on)."""
        with self._lock:
            self.seen.append(keys)
            self.asked += 1
            if self.every and self.asked % self.every == 0:
                found = {len(keys) - 1}  # a commit's counter item, the one that is shared
            else:
                found = {i for i, key in enumerate(keys) if self._held.get(key, 0.0) > now}
            if found:
                self.cancelled += 1
            elif self.hold_seconds:
                self._held = {key: until for key, until in self._held.items() if until > now}
                self._held.update((key, now + self.hold_seconds) for key in keys)
            return found

    def release(self, keys: list[ItemKey]) -> None:
        """A transaction moto cancelled (a failed condition) wrote nothing and holds nothing:
        its caller's next try (batches.commit_batch's second, when its first found the shard's
        last mini-batch) comes after it ended, as on DynamoDB."""
        with self._lock:
            for key in keys:
                self._held.pop(key, None)


def install(conflicts: Conflicts) -> Callable[[], None]:
    """Make moto's DynamoDB cancel transactions as ``conflicts`` says, in this process (the
    in-process mock and a server started here alike); returns the function that undoes it."""
    original = DynamoDBBackend.transact_write_items

    def transact_write_items(backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        keys = [_item_key(backend, item) for item in transact_items]
        found = conflicts.conflicting(keys, time.monotonic())
        if found:
            raise TransactionCanceledException([CONFLICT if i in found else NO_REASON for i in range(len(keys))])
        try:
            original(backend, transact_items)
        except TransactionCanceledException:
            conflicts.release(keys)
            raise

    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]

    def undo() -> None:
        DynamoDBBackend.transact_write_items = original  # type: ignore[method-assign]

    return undo


@contextlib.contextmanager
def injected(conflicts: Conflicts) -> Iterator[Conflicts]:
    """:func:`install` for the length of a ``with`` block."""
    undo = install(conflicts)
    try:
        yield conflicts
    finally:
        undo()


def _item_key(backend: DynamoDBBackend, item: dict[str, Any]) -> ItemKey:
    """The table and key of one action of a transaction (as DynamoDB JSON: a Put names its key
    inside its item, by the table's key schema)."""
    (kind, action), = item.items()
    table = action["TableName"]
    if kind == "Put":
        schema = backend.get_table(table)
        names = [schema.hash_key_attr] + ([schema.range_key_attr] if schema.range_key_attr else [])
        key = {name: action["Item"][name] for name in names}
    else:
        key = action["Key"]
    return table, tuple(sorted((name, next(iter(value.values()))) for name, value in key.items()))
