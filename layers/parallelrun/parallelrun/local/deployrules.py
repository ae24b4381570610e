"""What Lambda refuses at deploy and moto accepts: the local stack refuses it too.

moto creates a function and an SQS event source mapping whatever their settings; AWS fails the
stack. So the local stack checks the resolved stack (each function's configuration, each
mapping, each queue's visibility timeout) against the rules below and refuses to start with the
messages AWS would give, and what passes locally deploys. Each rule cites where AWS states it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# https://docs.aws.amazon.com/lambda/latest/api/API_CreateFunction.html: Timeout is at most
# 900 seconds; MemorySize is 128 to 10,240 MB.
MAX_TIMEOUT = 900
MEMORY = (128, 10240)
# https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-parameters.html: BatchSize for a
# standard queue is at most 10,000 (10 for FIFO), and above 10 needs a batching window of at
# least one second (API_CreateEventSourceMapping, "BatchSize ... Related setting").
BATCH_SIZE = (1, 10000)
FIFO_BATCH_SIZE = 10
# https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-properties-lambda-eventsourcemapping-scalingconfig.html
MAXIMUM_CONCURRENCY = (2, 1000)


@dataclass(frozen=True)
class Function:
    name: str
    timeout: int
    memory: int


@dataclass(frozen=True)
class QueueMapping:
    """One SQS event source mapping, resolved."""

    function: str
    queue_arn: str
    batch_size: int
    batching_window: int
    maximum_concurrency: int | None


def violations(functions: Iterable[Function], mappings: Iterable[QueueMapping],
               visibility: Mapping[str, int]) -> list[str]:
    """Every rule the stack breaks, as AWS would word it; ``visibility`` is each queue's
    visibility timeout by ARN."""
    found: list[str] = []
    by_name = {}
    for function in functions:
        by_name[function.name] = function
        if not 1 <= function.timeout <= MAX_TIMEOUT:
            found.append(f"{function.name}: Timeout {function.timeout} s is outside 1 to {MAX_TIMEOUT} s "
                         "(API_CreateFunction)")
        if not MEMORY[0] <= function.memory <= MEMORY[1]:
            found.append(f"{function.name}: MemorySize {function.memory} MB is outside {MEMORY[0]} to {MEMORY[1]} MB "
                         "(API_CreateFunction)")
    seen: set[tuple[str, str]] = set()
    for mapping in mappings:
        queue = mapping.queue_arn.rsplit(":", 1)[-1]
        where = f"{mapping.function} reading {queue}"
        if (mapping.function, mapping.queue_arn) in seen:
            # Lambda: ResourceConflictException, "An event source mapping with SQS arn ... and function ... already exists".
            found.append(f"{where}: an event source mapping with this queue and function already exists")
        seen.add((mapping.function, mapping.queue_arn))
        function = by_name.get(mapping.function)
        timeout = visibility.get(mapping.queue_arn)
        if function is not None and timeout is not None and timeout < function.timeout:
            # services-sqs-configure.html: "Lambda validates this requirement when you create or
            # update an event source mapping and will return an error".
            found.append(f"{where}: Queue visibility timeout: {timeout} seconds is less than Function timeout: "
                         f"{function.timeout} seconds")
        high = FIFO_BATCH_SIZE if queue.endswith(".fifo") else BATCH_SIZE[1]
        if not BATCH_SIZE[0] <= mapping.batch_size <= high:
            found.append(f"{where}: BatchSize {mapping.batch_size} is outside 1 to {high}")
        elif mapping.batch_size > 10 and mapping.batching_window < 1:
            found.append(f"{where}: BatchSize {mapping.batch_size} above 10 needs MaximumBatchingWindowInSeconds "
                         "of at least 1")
        low, top = MAXIMUM_CONCURRENCY
        if mapping.maximum_concurrency is not None and not low <= mapping.maximum_concurrency <= top:
            found.append(f"{where}: ScalingConfig MaximumConcurrency {mapping.maximum_concurrency} is outside "
                         f"{low} to {top}")
    return found
