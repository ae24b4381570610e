"""The aggregator's parts that stand alone: the streamed writer and the fetch-ahead."""

from __future__ import annotations

from parallelrun import aws
from parallelrun.pipeline import aggregator


def test_stream_writer_uses_multipart_and_bounded_memory(stack):
    bucket = stack.cfg.artifacts_bucket
    writer = aggregator.S3StreamWriter(bucket, "bench/big.txt", part_size=5 * 1024 * 1024)
    chunk = b"x" * (256 * 1024)
    buffered = []
    for i in range(48):  # 12 MiB in 256 KiB writes
        writer.write(bytes([65 + i % 26]) + chunk[1:])
        buffered.append(len(writer.buffer))
    writer.close()
    assert len(writer.parts) == 3  # 5 MiB + 5 MiB + 2 MiB
    # What the writer holds never passes one part (in-process moto's own copy of the object
    # would swamp a tracemalloc reading, so the writer's buffer is what is measured).
    assert max(buffered) < 5 * 1024 * 1024
    body = aws.client("s3").get_object(Bucket=bucket, Key="bench/big.txt")["Body"].read()
    assert len(body) == 12 * 1024 * 1024
    assert [body[i * len(chunk)] for i in range(48)] == [65 + i % 26 for i in range(48)]


def test_stream_writer_small_output_is_one_put(stack):
    writer = aggregator.S3StreamWriter(stack.cfg.artifacts_bucket, "bench/small.txt")
    writer.write(b"a\n")
    writer.write(b"b\n")
    writer.close()
    assert writer.upload_id is None
    assert aws.client("s3").get_object(Bucket=stack.cfg.artifacts_bucket, Key="bench/small.txt")["Body"].read() == b"a\nb\n"


def test_parts_are_fetched_ahead_in_order_and_bounded():
    import random
    import threading
    import time

    from parallelrun.pipeline.aggregator import fetched_in_order

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
