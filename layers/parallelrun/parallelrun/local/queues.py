"""SQS at SQS's cost, not the queue's depth: moto computes every attribute of a queue, its three
approximate counts among them (each a pass over every message, reading the clock through
``datetime`` for each), whenever it looks one attribute up: on every send (is the queue
content-deduplicated?) and for every message a receive hands out (its retention period), so
a receive of 10 costs 30 passes over the queue (about 0.4 s at a depth of 1,000 here) and the
local pipeline had to keep its queues shallow. SQS's own cost does not depend on the depth.

Installed, a queue's attributes are computed one at a time, when asked for, and moto's SQS
reads the clock with ``time.time``: the same answers, each costing what it is. A receive still
passes once over the queue's messages, as moto keeps them in one list.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

from moto.core import utils as moto_utils
from moto.core.utils import camelcase_to_underscores
from moto.sqs import models as sqs_models
from moto.sqs.models import Queue

_ORIGINAL = Queue.attributes


def _unix_time(dt: Any = None) -> float:
    return time.time() if dt is None else moto_utils.unix_time(dt)


def _unix_time_millis(dt: Any = None) -> float:
    return _unix_time(dt) * 1000.0


class QueueAttributes(Mapping[str, Any]):
    """A queue's attributes as moto's ``Queue.attributes`` gives them (the same names, the same
    values: booleans as ``"true"``/``"false"``, a redrive policy as JSON), each computed only
    when it is read."""

    def __init__(self, queue: Queue) -> None:
        self._queue = queue

    def _names(self) -> list[str]:
        queue = self._queue
        names = list(queue.BASE_ATTRIBUTES)
        names += queue.FIFO_ATTRIBUTES if queue.fifo_queue else []
        names += queue.KMS_ATTRIBUTES if queue.kms_master_key_id else []
        return names

    def __getitem__(self, name: str) -> Any:
        if name not in self._names():
            raise KeyError(name)
        if name == "RedrivePolicy" and self._queue.redrive_policy:
            return json.dumps(self._queue.redrive_policy)
        value = getattr(self._queue, camelcase_to_underscores(name))
        return str(value).lower() if isinstance(value, bool) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


def install() -> None:
    """Make moto's SQS compute an attribute only when it is read, in this process. Once is enough
    and it is never undone: what SQS answers is unchanged, only what it costs."""
    if isinstance(Queue.__dict__["attributes"], property) and Queue.__dict__["attributes"].fget is _lazy:
        return
    Queue.attributes = property(_lazy)  # type: ignore[assignment,method-assign]
    sqs_models.unix_time = _unix_time  # type: ignore[attr-defined]
    sqs_models.unix_time_millis = _unix_time_millis  # type: ignore[attr-defined]


def _lazy(queue: Queue) -> QueueAttributes:
    return QueueAttributes(queue)


def eager(queue: Queue) -> dict[str, Any]:
    """moto's own attributes of ``queue``, all computed at once (the tests compare the two)."""
    return _ORIGINAL.fget(queue)  # type: ignore[union-attr]
