"""What each run setting may hold: the stack's limits, the upper bounds every value is kept
within, and one coercer per setting that turns a string or JSON value into the field's type or
raises. :func:`rules` pairs each coercer with the sentence a refusal shows; applying them is
:func:`parallelrun.core.settings.resolve`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from parallelrun.core.datasets import READY_MARKER
from parallelrun.core.errors import SettingsError
from parallelrun.core.partitions import check_pattern


# Seconds an invocation needs besides run(): fetching inputs, writing the part, committing.
INVOCATION_MARGIN = 30
LOGGING_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
OUTPUT_ACTIONS = ("append_row", "summary_only")
INPUT_TYPES = ("files", "tabular")
OUTPUT_FORMATS = ("txt", "csv", "parquet")
INPUT_FORMATS = ("csv", "jsonl", "parquet")
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|MB|GB)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}

# --- upper bounds. A job's settings live in its DynamoDB item (at most 400 KB with its counters
# and deployment: https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/ServiceQuotas.html)
# and are copied into summary.json, so every list and text is bounded as well as every size.
#
# A mini-batch's SQS message (planner.batch_message) lists each file as [key, size, ETag]: a key
# of up to 1,024 bytes (https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-keys.html),
# 13 digits and a 38-character ETag make about 1.1 KB of JSON a file, and a message holds at most
# 256 KiB (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/quotas-messages.html):
# 200 files leave room for the job id, the index and the partition. (JSON writes a non-ASCII
# character as six bytes: keys in other alphabets fit up to about 500 bytes each.)
MAX_FILES_PER_BATCH = 200
# A worker holds a tabular mini-batch in memory as a DataFrame, several times its bytes on disk,
# and Lambda's largest function has 10,240 MB; /tmp, where models are cached, is at most 10,240 MB
# too (https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html).
MAX_BYTES_PER_BATCH = 1024**3
MAX_MODEL_CACHE_BYTES = 10240 * 1024**2
# summary.json's readers (JavaScript, jq) keep integers exactly only up to 2**53 - 1.
MAX_COUNT = 2**53 - 1
# Many jobs share one batch queue, and a standard queue holds about 120,000 messages in flight
# (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/quotas-queues.html);
# the local server's receive still passes over every message of the queue once (local.queues).
MAX_INFLIGHT_BATCHES = 10000
# A compute: ecs mini-batch is kept invisible by its worker's heartbeat, but SQS keeps a received
# message invisible at most 12 hours from its receipt, however often that is extended
# (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ChangeMessageVisibility.html):
# 11 hours leave one for fetching the inputs, writing the part and committing it.
MAX_ECS_RUN_INVOCATION_TIMEOUT = 11 * 3600
# Far past real use, and together (100 KB of arguments, 20 URIs of at most 1.1 KB, 50 KB of
# variables, partition names) well inside the job's 400 KB item.
MAX_ARGUMENTS, MAX_ARGUMENT_CHARS = 100, 1024
MAX_SIDE_INPUTS = 20
MAX_PARTITION_KEYS, MAX_NAME_CHARS = 10, 128
MAX_ENV_VARIABLES, MAX_ENV_VALUE_CHARS = 50, 1024
# The output's keys are this prefix and the names below it (a collated file's name alone may have
# 255 characters), within S3's 1,024 bytes a key.
MAX_OUTPUT_PREFIX_BYTES = 512
MAX_PATTERN_CHARS = 1024

# Variables that steer the scoring process's runtime rather than the script: where the model is
# and where the files it writes are collected from, parallelrun's own switches, the AWS SDK's
# credentials and endpoints, the interpreter's import path, the dynamic linker, and where HTTPS
# goes and which certificates it trusts.
RESERVED_ENV_NAMES = frozenset({
    "AZUREML_MODEL_DIR", "AZUREML_BI_OUTPUT_PATH", "PATH", "HOME", "TMPDIR", "TMP", "TEMP", "TZ", "_HANDLER", "_X_AMZN_TRACE_ID",
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
})
RESERVED_ENV_PREFIXES = ("PARALLELRUN_", "AWS_", "AMAZON_", "LAMBDA_", "BOTO", "PYTHON", "LD_")


@dataclass(frozen=True)
class StackLimits:
    """What the deployed functions can honour; read from the stack, not chosen per job."""

    worker_timeout: int = 900
    worker_batch_size: int = 1
    max_receive_count: int = 3
    max_inflight_batches: int = 200
    worker_max_concurrency: int = 100
    # Mini-batches one aggregator invocation collates (DESIGN invariant 7): a larger job is
    # collated in ranges of this many, in parallel, and joined. 20,000 parts fetched 16 at a
    # time at S3's 15-30 ms a GET take 20-40 s, far inside the aggregator's 900 s.
    aggregate_batches_per_invocation: int = 20_000
    # Inputs one planner invocation lists before it hands on to the next (DESIGN invariant 7).
    # A file input costs the planner a 1,000th of a ListObjectsV2 request (S3 returns up to
    # 1,000 keys a page: https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListObjectsV2.html);
    # a table costs one or two ranged GETs (its first 256 KiB or its Parquet footer), tens of
    # milliseconds each, so 2,000 of them take a few minutes at worst, far inside the planner's
    # 900 s, while a 10,000,000-file job plans in 5,000 invocations.
    planner_inputs_per_invocation: int = 2000

    @property
    def max_run_invocation_timeout(self) -> int:
        # One invocation may carry worker_batch_size mini-batches and must finish them all
        # inside the function timeout, or Lambda kills it and every message's try is spent.
        return max(1, (self.worker_timeout - INVOCATION_MARGIN) // self.worker_batch_size)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackLimits:
        env = os.environ if env is None else env
        names = {
            "worker_timeout": "PARALLELRUN_WORKER_TIMEOUT",
            "worker_batch_size": "PARALLELRUN_WORKER_BATCH_SIZE",
            "max_receive_count": "PARALLELRUN_MAX_RECEIVE_COUNT",
            "max_inflight_batches": "PARALLELRUN_MAX_INFLIGHT_BATCHES",
            "worker_max_concurrency": "PARALLELRUN_WORKER_MAX_CONCURRENCY",
            "aggregate_batches_per_invocation": "PARALLELRUN_AGGREGATE_BATCHES_PER_INVOCATION",
            "planner_inputs_per_invocation": "PARALLELRUN_PLANNER_INPUTS_PER_INVOCATION",
        }
        return cls(**{attr: int(env[var]) for attr, var in names.items() if env.get(var)})


def parse_size(value: str | int) -> int:
    """Bytes in ``1024``, ``1024KB``, ``10MB`` or ``1GB`` (binary units, as ParallelRunConfig)."""
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(value)
    return int(match.group(1)) * _UNITS[(match.group(2) or "B").upper()]


# --- one coercer per setting: it turns a string or JSON value into the field's type or raises.


def _int(low: int, high: int | None = None) -> Callable[[Any], int]:
    def coerce(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError
        number = int(str(value).strip()) if not isinstance(value, int) else value
        if number < low or (high is not None and number > high):
            raise ValueError
        return number

    return coerce


def _optional(coerce: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None or str(value).strip().lower() in ("", "none") else coerce(value)


def _percent(value: Any) -> float:
    number = float(value)
    if isinstance(value, bool) or math.isnan(number) or not 0 <= number <= 100:
        raise ValueError
    return number


def _choice(options: tuple[str, ...], upper: bool = False) -> Callable[[Any], str]:
    def coerce(value: Any) -> str:
        text = str(value).strip()
        text = text.upper() if upper else text
        if text not in options:
            raise ValueError
        return text

    return coerce


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError


def _mini_batch_size(value: Any) -> str:
    if isinstance(value, bool):
        raise ValueError
    text = str(value).strip().upper().replace(" ", "")
    if parse_size(text) < 1:
        raise ValueError
    return text


def _size(value: Any) -> str:
    text = _mini_batch_size(value)
    return text if text[-1].isalpha() else text + "B"


def _model_cache_size(value: Any) -> str:
    text = _size(value)
    if parse_size(text) > MAX_MODEL_CACHE_BYTES:
        raise ValueError
    return text


def partition_format(value: Any) -> str:
    """A path pattern such as ``{store}/{date}/*.png``, bounded and checked."""
    if len(str(value)) > MAX_PATTERN_CHARS:
        raise ValueError
    return check_pattern(str(value)).text


def _file_name(value: Any) -> str:
    text = str(value)
    if not text or len(text) > 255 or "/" in text or "\\" in text or text.startswith(".") or text != text.strip():
        raise ValueError
    if text == READY_MARKER:  # written into the input bucket, the output would start a job of its own
        raise ValueError
    return text


def _separator(value: Any) -> str:
    text = {"\\t": "\t", "tab": "\t", "space": " "}.get(str(value), str(value))
    if len(text) != 1 or text in "\r\n":
        raise ValueError
    return text


def _csv_options(value: Any) -> dict[str, str]:
    raw = json.loads(value) if isinstance(value, str) else value
    if not isinstance(raw, dict) or not set(raw) <= {"delimiter", "quote_char", "encoding"}:
        raise ValueError
    for name in ("delimiter", "quote_char"):
        if name in raw and (len(str(raw[name])) != 1 or str(raw[name]) in "\r\n"):
            raise ValueError
    if "encoding" in raw:
        try:  # ranges are cut at newline bytes: the encoding must write them as such
            if "a\n".encode(str(raw["encoding"])) != b"a\n":
                raise ValueError
        except LookupError:
            raise ValueError from None
    return {str(k): str(v) for k, v in raw.items()}


def _words(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(shlex.split(value))
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
        return tuple(str(v) for v in value)
    raise ValueError


def _arguments(value: Any) -> tuple[str, ...]:
    words = _words(value)
    if len(words) > MAX_ARGUMENTS or any(len(word) > MAX_ARGUMENT_CHARS for word in words):
        raise ValueError
    return words


def _names(value: Any) -> tuple[str, ...]:
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(_words(value))
    if any(not item for item in items):
        raise ValueError
    return tuple(items)


def _partition_keys(value: Any) -> tuple[str, ...]:
    names = _names(value)
    # A pattern given as partition_keys (see check_partitions) is bounded as partition_format is.
    longest = MAX_PATTERN_CHARS if len(names) == 1 and "{" in names[0] else MAX_NAME_CHARS
    if len(names) > MAX_PARTITION_KEYS or any(len(name) > longest for name in names):
        raise ValueError
    return names


def _s3_uri(value: Any) -> str:
    text = str(value).strip()
    if not re.match(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$", text):
        raise ValueError
    return text


def _output_path(value: Any) -> str:
    text = _s3_uri(value)
    if len(text[len("s3://"):].partition("/")[2].encode()) > MAX_OUTPUT_PREFIX_BYTES:
        raise ValueError
    return text


def _side_inputs(value: Any) -> tuple[str, ...]:
    entries = []
    listed = _names(value)
    if len(listed) > MAX_SIDE_INPUTS:
        raise ValueError
    for entry in listed:
        name, sep, uri = entry.partition("=") if not entry.startswith("s3://") else ("", "", entry)
        if sep and not re.match(r"^[A-Za-z_][A-Za-z0-9_\-]*$", name):
            raise ValueError
        entries.append(f"{name}={_s3_uri(uri)}" if sep else _s3_uri(uri))
    return tuple(entries)



def _env(value: Any) -> dict[str, str]:
    raw = json.loads(value) if isinstance(value, str) else value
    if not isinstance(raw, dict) or len(raw) > MAX_ENV_VARIABLES:
        raise ValueError
    if not all(isinstance(k, str) and len(k) <= MAX_NAME_CHARS and re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k) for k in raw):
        raise ValueError
    variables = {k: str(v) for k, v in raw.items()}
    if any(len(v) > MAX_ENV_VALUE_CHARS for v in variables.values()):
        raise ValueError
    for name in variables:
        if _reserved(name):
            raise SettingsError("environment_variables", value,
                                f"names the scoring process's runtime does not depend on: {name} is parallelrun's, "
                                "the AWS SDK's, Lambda's or the interpreter's own and cannot be set")
    return variables


def _reserved(name: str) -> bool:
    # Compared in upper case: proxies are read in lower case too.
    upper = name.upper()
    return upper in RESERVED_ENV_NAMES or upper.startswith(RESERVED_ENV_PREFIXES)


def _run_invocation_timeout(limits: StackLimits, ecs: bool) -> tuple[Callable[[Any], Any], str]:
    """Lambda's bound is the worker function's timeout; ECS's, SQS's cap on a message's invisibility."""
    if ecs:
        return (_int(1, MAX_ECS_RUN_INVOCATION_TIMEOUT), f"whole seconds from 1 to {MAX_ECS_RUN_INVOCATION_TIMEOUT} "
                "(11 hours) with compute: ecs (SQS keeps a mini-batch's message invisible at most 12 hours)")
    return (
        _int(1, limits.max_run_invocation_timeout),
        f"whole seconds from 1 to {limits.max_run_invocation_timeout} (the worker's timeout of "
        f"{limits.worker_timeout} s, less {INVOCATION_MARGIN} s, shared by {limits.worker_batch_size} "
        "mini-batch(es) per invocation; raise the stack's WorkerTimeout for more, or deploy with compute: ecs for up "
        f"to {MAX_ECS_RUN_INVOCATION_TIMEOUT} s)",
    )


def rules(limits: StackLimits, ecs: bool = False) -> dict[str, tuple[Callable[[Any], Any], str]]:
    """Each setting's coercer and the sentence that says what is allowed (``ecs``: for a
    deployment with compute: ecs, whose mini-batches may run for hours)."""
    return {
        "mini_batch_size": (
            _mini_batch_size,
            "a file count such as 10, or for tabular input a size such as 1024, 1024KB, 10MB or 1GB",
        ),
        "error_threshold": (_int(-1, MAX_COUNT), f"an integer >= -1 and at most {MAX_COUNT} (-1 ignores every "
                                                 "failed input)"),
        "allowed_failed_count": (_int(-1, MAX_COUNT), f"an integer >= -1 and at most {MAX_COUNT} (-1 allows any "
                                                      "number of failed mini-batches)"),
        "allowed_failed_percent": (_percent, "a number from 0 to 100"),
        "output_action": (_choice(OUTPUT_ACTIONS), "one of " + ", ".join(OUTPUT_ACTIONS)),
        "append_row_file_name": (_file_name, "a file name without '/' that does not start with '.', other than "
                                             "_READY"),
        "run_invocation_timeout": _run_invocation_timeout(limits, ecs),
        "run_max_try": (
            _int(1, limits.max_receive_count),
            f"an integer from 1 to {limits.max_receive_count} (the stack's MaxReceiveCount)",
        ),
        "process_count_per_node": (
            _optional(_int(1, limits.worker_max_concurrency)),
            f"an integer from 1 to {limits.worker_max_concurrency}, or none for no cap",
        ),
        "node_count": (_int(1, limits.worker_max_concurrency), f"an integer from 1 to {limits.worker_max_concurrency}"),
        "logging_level": (_choice(LOGGING_LEVELS, upper=True), "one of " + ", ".join(LOGGING_LEVELS)),
        "side_inputs": (_side_inputs, f"a comma-separated list of at most {MAX_SIDE_INPUTS} s3://bucket/key URIs, "
                                      "each optionally named as name=s3://bucket/key"),
        "arguments": (_arguments, f"at most {MAX_ARGUMENTS} command-line words of at most {MAX_ARGUMENT_CHARS} "
                                  "characters each, such as '--model_name digits --top 3'"),
        "partition_keys": (_partition_keys, "a comma-separated list of column names (tabular input) or of "
                                            f"partition_format's fields (file input): at most {MAX_PARTITION_KEYS} "
                                            f"names of at most {MAX_NAME_CHARS} characters"),
        "partition_format": (_optional(partition_format), "a path pattern below the input folder naming each field once, "
                                                  "such as {store}/{date}/*.png (* any name part, ** any folders), "
                                                  f"of at most {MAX_PATTERN_CHARS} characters"),
        "model_cache_size": (_model_cache_size, "a size such as 512MB or 2GB, at most 10240MB (Lambda's largest /tmp)"),
        "allow_reuse": (_bool, "true or false"),
        "isolate_failures": (_bool, "true or false"),
        "max_inflight_batches": (_optional(_int(1, MAX_INFLIGHT_BATCHES)), f"an integer from 1 to {MAX_INFLIGHT_BATCHES}"),
        "output_path": (_optional(_output_path), f"an s3://bucket/prefix URI whose key part has at most "
                                                 f"{MAX_OUTPUT_PREFIX_BYTES} bytes"),
        "environment_variables": (_env, 'a JSON object of names to values, such as {"MODE": "fast"}: at most '
                                        f"{MAX_ENV_VARIABLES} names of at most {MAX_NAME_CHARS} characters, values of "
                                        f"at most {MAX_ENV_VALUE_CHARS}"),
        "input_type": (_choice(INPUT_TYPES), "one of " + ", ".join(INPUT_TYPES)),
        "output_format": (_choice(OUTPUT_FORMATS), "one of " + ", ".join(OUTPUT_FORMATS)),
        "csv_options": (_csv_options, 'a JSON object of delimiter, quote_char (one character each) and encoding '
                                      '(one that keeps newlines as bytes, such as latin-1), e.g. {"delimiter": ";"}'),
        "append_row_separator": (_separator, "one character other than a newline, such as ',' or a tab"),
        "input_format": (_optional(_choice(INPUT_FORMATS)), "one of " + ", ".join(INPUT_FORMATS) +
                         ", or none to go by each file's extension"),
    }
