"""The aggregator's parts that stand alone: the fetch-ahead."""

from __future__ import annotations

def test_parts_are_fetched_ahead_in_order_and_bounded():
    import random
    import threading
    import time

    from parallelrun.pipeline.collation import fetched_in_order

    running, most, read = [0], [0], []
    lock = threading.Lock()

    def items():
        for number in range(200):
            read.append(number)
            yield number

    def fetch(number: int) -> str:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(random.uniform(0, 0.004))  # a GET's wait, finishing out of order
        with lock:
            running[0] -= 1
        return f"part-{number}"

    for number, fetched in fetched_in_order(items(), fetch, ahead=8):
        assert fetched == f"part-{number}"  # each result with its own item, in the items' order
        assert len(read) <= number + 8  # never read more than `ahead` past the one written
    assert read == list(range(200))
    assert 1 < most[0] <= 8  # fetches overlap, never more than `ahead` at once
