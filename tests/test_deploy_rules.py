"""The local stack refuses what Lambda refuses at deploy and moto accepts (parallelrun.local.deployrules),
and ends an invocation past its timeout as Lambda does (parallelrun.local.lambdas.timed)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from parallelrun.core.errors import StackError
from parallelrun.local import deployrules
from parallelrun.local.deployrules import Function, QueueMapping
from parallelrun.local.provision import provision
from tests.test_provision import endpoint  # noqa: F401 - the module's moto server

ROOT = Path(__file__).resolve().parents[1]
QUEUE = "arn:aws:sqs:us-east-1:123456789012:batch"


def test_each_rule_is_worded_as_aws_words_it():
    functions = [Function("worker", 901, 64), Function("recorder", 60, 256)]
    mappings = [QueueMapping("worker", QUEUE, 10001, 0, 1), QueueMapping("recorder", QUEUE + "-dlq", 11, 0, 1001),
                QueueMapping("recorder", QUEUE + "-dlq", 10, 0, None), QueueMapping("recorder", QUEUE + ".fifo", 11, 5, 2)]
    found = deployrules.violations(functions, mappings, {QUEUE: 5400, QUEUE + "-dlq": 30})
    assert found == [
        "worker: Timeout 901 s is outside 1 to 900 s (API_CreateFunction)",
        "worker: MemorySize 64 MB is outside 128 to 10240 MB (API_CreateFunction)",
        "worker reading batch: BatchSize 10001 is outside 1 to 10000",
        "worker reading batch: ScalingConfig MaximumConcurrency 1 is outside 2 to 1000",
        "recorder reading batch-dlq: Queue visibility timeout: 30 seconds is less than Function timeout: 60 seconds",
        "recorder reading batch-dlq: BatchSize 11 above 10 needs MaximumBatchingWindowInSeconds of at least 1",
        "recorder reading batch-dlq: ScalingConfig MaximumConcurrency 1001 is outside 2 to 1000",
        "recorder reading batch-dlq: an event source mapping with this queue and function already exists",
        "recorder reading batch-dlq: Queue visibility timeout: 30 seconds is less than Function timeout: 60 seconds",
        "recorder reading batch.fifo: BatchSize 11 is outside 1 to 10",
    ]


def test_a_stack_within_every_rule_passes():
    functions = [Function("worker", 900, 10240), Function("recorder", 1, 128)]
    mappings = [QueueMapping("worker", QUEUE, 10000, 1, 1000), QueueMapping("recorder", QUEUE, 10, 0, 2)]
    assert deployrules.violations(functions, mappings, {QUEUE: 900}) == []


def _template(tmp_path: Path, *replacements: tuple[str, str]) -> str:
    """template.yaml with each (old, new) replaced, beside links to the code it names."""
    text = (ROOT / "template.yaml").read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    for folder in ("functions", "layers"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    (tmp_path / "template.yaml").write_text(text)
    return str(tmp_path / "template.yaml")


def test_the_shipped_template_passes_and_its_old_dead_letter_queue_would_not(endpoint, tmp_path):  # noqa: F811
    provision(endpoint, stack_name="rules-shipped")  # defaults: what `sam deploy` creates
    old = _template(tmp_path, ("""      # The failure recorder's timeout is 60 s: 6 x 60 (SQS's default 30 s fails the deploy).
      VisibilityTimeout: 360
""", ""))
    with pytest.raises(StackError, match="FailureRecorderFunction reading .*PlannerDeadLetterQueue.*: Queue "
                                         "visibility timeout: 30 seconds is less than Function timeout: 60 seconds"):
        provision(endpoint, template_path=old, stack_name="rules-old-dlq")


def test_parameters_out_of_lambdas_ranges_are_refused(endpoint):  # noqa: F811
    with pytest.raises(StackError) as refused:
        provision(endpoint, stack_name="rules-parameters", parameters={
            "WorkerTimeout": "1000", "WorkerMemory": "64", "WorkerMaxConcurrency": "1", "BatchVisibilityTimeout": "600"})
    message = str(refused.value)
    assert "would not deploy on AWS" in message
    for expected in ("WorkerFunction: Timeout 1000 s is outside 1 to 900 s",
                     "WorkerFunction: MemorySize 64 MB is outside 128 to 10240 MB",
                     "MaximumConcurrency 1 is outside 2 to 1000",
                     "Queue visibility timeout: 600 seconds is less than Function timeout: 1000 seconds"):
        assert expected in message


def test_a_second_mapping_and_a_big_batch_without_a_window_are_refused(endpoint, tmp_path):  # noqa: F811
    changed = _template(tmp_path, ("""        FinalizeDeadLetters:
          Type: SQS
          Properties:
            Queue: !GetAtt FinalizeDeadLetterQueue.Arn
            BatchSize: 10
""", """        FinalizeDeadLetters:
          Type: SQS
          Properties:
            Queue: !GetAtt FinalizeDeadLetterQueue.Arn
            BatchSize: 11
"""), ("""        PlannerFailures:
          Type: SQS
""", """        FinalizeAgain:
          Type: SQS
          Properties:
            Queue: !GetAtt FinalizeDeadLetterQueue.Arn
        PlannerFailures:
          Type: SQS
"""))
    with pytest.raises(StackError) as refused:
        provision(endpoint, template_path=changed, stack_name="rules-mappings")
    assert "FinalizeDeadLetterQueue" in str(refused.value)
    assert "BatchSize 11 above 10 needs MaximumBatchingWindowInSeconds of at least 1" in str(refused.value)
    assert "an event source mapping with this queue and function already exists" in str(refused.value)


TIMED = """
import sys, time
from parallelrun.local import lambdas

def handler(event, context):
    time.sleep(event["seconds"])
    return "done"

timed = lambdas.timed(handler, 1)
print(timed({"seconds": 0.1}, None), flush=True)  # within its timeout: answered, and nothing left armed
time.sleep(1.5)
print("still alive", flush=True)
timed({"seconds": 30}, None)
print("not reached", flush=True)
"""


def test_an_invocation_past_its_function_timeout_is_killed_as_on_lambda():
    import signal
    import subprocess
    import sys

    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", TIMED], capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGKILL
    assert result.stdout.splitlines() == ["done", "still alive"]
    assert "Task timed out after 1.00 seconds" in result.stderr
    assert time.monotonic() - started < 20  # killed at its timeout, not after the 30 s it asked for
