"""Every DynamoDB key and every S3 key of the stack, in one module.

The table is one table of ``pk``/``sk`` items; each kind of record has a prefix of its own, so
no two kinds can ever share a key and a Scan for one kind filters on its prefix:

==============================  ============================  ==================================
pk                              sk                            what
==============================  ============================  ==================================
``JOB#<id>``                    ``JOB``                       a job
``JOB#<id>``                    ``COUNTS#<shard>``            a shard's counters
``JOB#<id>``                    ``USAGE#<ns>#<nonce>``        what an invocation used for a job
``JOB#<id>#<shard>``            ``BATCH#<index>``             a finished mini-batch
``MODEL#<name>``                ``V#<version>``, ``COUNTER``  a model's versions, its last number
``MODEL#<name>``                ``CLAIM#<claim>``             the version a claimed registration made
``ENDPOINT#<name>``             ``ENDPOINT``,                 an endpoint, its deployments
                                ``DEPLOYMENT#<name>``
``SCHEDULE#<name>``             ``SCHEDULE``                  a schedule
``PIPELINE#<name>``             ``PIPELINE``                  a pipeline's steps
``PIPELINERUN#<id>``            ``RUN``                       a pipeline run: its steps' jobs
``SCORED#<schedule>#<shard>``   the input's S3 key            an input a schedule's run scored
``REUSE#<fingerprint>``         ``BATCH``                     a mini-batch a succeeded job scored
``REUSE#JOB#<fingerprint>``     ``OUTPUT``                    a succeeded job's whole output
==============================  ============================  ==================================

The artifacts bucket holds ``jobs/<id>/`` (plan chunks, result parts, failures, logs, and the
output unless the job names its own), ``code/<sha>.zip`` (scoring code), ``models/<name>/<v>/``
and ``schedules/<name>/<run>/`` (scheduled runs' outputs). Numbers in keys are zero-padded, so
sort order is number order.
"""

from __future__ import annotations

import hashlib

# --- shards

# How many shards a job's mini-batches are spread over. Sized for 1,000 concurrent workers
# committing up to ~1,000 mini-batches a second. A commit is a transaction, which costs 2 WCU per
# KB of each item: the ~1-2 KB record is ~4 WCU, so the records alone are ~4,000 WCU/s, where one
# partition serves about 1,000; over 100 partition keys each takes ~10 commits (~40 WCU) a
# second. The counter items are small (2 WCU a commit) and ~10 commits a second each, so a commit
# seldom overlaps another on its counter (a TransactionConflict, retried). They share the job's
# partition key so that one Query reads them: ~2,000 WCU/s at the very peak, which DynamoDB's
# adaptive capacity serves by isolating frequently written items on partitions of their own.
# https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/bp-partition-key-design.html
# https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/burst-adaptive-capacity.html
# https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html (capacity)
# A job's mini-batches are dealt to a group of SHARD_GROUP shards one at a time, so that
# consecutive mini-batches, which the planner sends together and workers finish together, commit
# to different counter items (consecutive indexes on one item cancelled each other's transactions
# in bursts); after SHARD_GROUP x SHARD_GROUP of them the next group takes over. So a job of a few
# hundred mini-batches still uses a few groups rather than a hundred shards: what is paid per
# shard (creating its counters, the completion check when it fills, the aggregator's query of its
# records) stays a small part of each mini-batch's requests. The planner keeps a window of
# consecutive mini-batches in flight, so about max(SHARD_GROUP, window / SHARDS) of a job's
# commits are ever in flight on one counter item, none of them a neighbour of another.
# The keys of a job still running depend on both: change them only on a stack with no job running.
SHARDS = 100
SHARD_GROUP = 10
# How many partition keys one schedule's scored inputs are spread over (a single key takes
# about 1,000 writes a second; see parallelrun.store.scored).
SCORED_SHARDS = 16


def shard_of(index: int) -> int:
    """The shard (partition key) mini-batch ``index`` is recorded and counted in."""
    group = index // (SHARD_GROUP * SHARD_GROUP) % (SHARDS // SHARD_GROUP)
    return group * SHARD_GROUP + index % SHARD_GROUP


def shards_between(start: int, end: int) -> list[int]:
    """The shards that hold mini-batches ``start`` ≤ index < ``end``, in order."""
    if end - start >= SHARDS * SHARD_GROUP:  # a whole cycle of the groups
        return list(range(SHARDS))
    return sorted({shard_of(index) for index in range(start, end)})


def scored_shard(input_key: str) -> int:
    """The shard a scored input is recorded in: spread by a hash, since input keys share prefixes."""
    return int.from_bytes(hashlib.sha256(input_key.encode()).digest()[:4], "big") % SCORED_SHARDS


# --- DynamoDB: jobs

JOB_PREFIX = "JOB#"
JOB_SK = "JOB"
BATCH_PREFIX = "BATCH#"
COUNTS_PREFIX = "COUNTS#"
USAGE_PREFIX = "USAGE#"
COLLATED_PREFIX = "COLLATED#"


def job_pk(job_id: str) -> str:
    return f"{JOB_PREFIX}{job_id}"


def job_key(job_id: str) -> dict[str, str]:
    return {"pk": job_pk(job_id), "sk": JOB_SK}


def batch_pk(job_id: str, shard: int) -> str:
    """The partition key of one shard's mini-batch records."""
    return f"{JOB_PREFIX}{job_id}#{shard}"


def batch_key(job_id: str, index: int) -> dict[str, str]:
    return {"pk": batch_pk(job_id, shard_of(index)), "sk": f"{BATCH_PREFIX}{index:09d}"}


def counts_key(job_id: str, shard: int) -> dict[str, str]:
    """A shard's counters: beside the job's item (sorting just before it), so one Query reads both."""
    return {"pk": job_pk(job_id), "sk": f"{COUNTS_PREFIX}{shard:03d}"}


def usage_key(job_id: str, at_ns: int, nonce: str) -> dict[str, str]:
    """One usage item of a job: by time, with a nonce so that two invocations never collide."""
    return {"pk": job_pk(job_id), "sk": f"{USAGE_PREFIX}{at_ns:020d}#{nonce}"}


def collated_key(job_id: str, aggregation: str, number: int) -> dict[str, str]:
    """What one collated range of an aggregation holds (see parallelrun.store.collated)."""
    return {"pk": job_pk(job_id), "sk": f"{collated_prefix(aggregation)}{number:06d}"}


def collated_prefix(aggregation: str) -> str:
    return f"{COLLATED_PREFIX}{aggregation}#"


# --- DynamoDB: models, endpoints, schedules

MODEL_PREFIX = "MODEL#"
VERSION_PREFIX = "V#"
ENDPOINT_PREFIX = "ENDPOINT#"
ENDPOINT_SK = "ENDPOINT"
DEPLOYMENT_PREFIX = "DEPLOYMENT#"
SCHEDULE_PREFIX = "SCHEDULE#"
SCHEDULE_SK = "SCHEDULE"


def model_pk(name: str) -> str:
    return f"{MODEL_PREFIX}{name}"


def model_key(name: str, version: int) -> dict[str, str]:
    return {"pk": model_pk(name), "sk": f"{VERSION_PREFIX}{version:09d}"}


def model_counter_key(name: str) -> dict[str, str]:
    """The item whose ``latest`` numbers a model's versions."""
    return {"pk": model_pk(name), "sk": "COUNTER"}


def model_claim_key(name: str, claim: str) -> dict[str, str]:
    """The item naming the version a registration with ``claim`` made (one per claim, ever)."""
    return {"pk": model_pk(name), "sk": f"CLAIM#{claim}"}


def endpoint_pk(name: str) -> str:
    return f"{ENDPOINT_PREFIX}{name}"


def endpoint_key(name: str) -> dict[str, str]:
    return {"pk": endpoint_pk(name), "sk": ENDPOINT_SK}


def deployment_key(endpoint: str, name: str) -> dict[str, str]:
    return {"pk": endpoint_pk(endpoint), "sk": f"{DEPLOYMENT_PREFIX}{name}"}


def schedule_key(name: str) -> dict[str, str]:
    return {"pk": f"{SCHEDULE_PREFIX}{name}", "sk": SCHEDULE_SK}


# --- DynamoDB: pipelines

PIPELINE_PREFIX = "PIPELINE#"
PIPELINE_SK = "PIPELINE"
PIPELINE_RUN_PREFIX = "PIPELINERUN#"
PIPELINE_RUN_SK = "RUN"


def pipeline_key(name: str) -> dict[str, str]:
    return {"pk": f"{PIPELINE_PREFIX}{name}", "sk": PIPELINE_SK}


def pipeline_run_key(run_id: str) -> dict[str, str]:
    return {"pk": f"{PIPELINE_RUN_PREFIX}{run_id}", "sk": PIPELINE_RUN_SK}


def step_job_id(run_id: str, index: int) -> str:
    """The job of step ``index`` (from 0) of a pipeline run: fixed by the run, so that a
    hand-on made twice creates one job (a second create of one id is refused)."""
    return f"{run_id}-s{index + 1}"


# --- DynamoDB: what schedules scored, reuse

REUSE_PREFIX = "REUSE#"


def scored_pk(schedule: str, shard: int) -> str:
    return f"SCORED#{schedule}#{shard:02d}"


def scored_key(schedule: str, input_key: str) -> dict[str, str]:
    """Where an input a run of ``schedule`` scored is recorded: its shard's key, and its S3 key
    as the sort key (a shard's Query comes back in S3's listing order)."""
    return {"pk": scored_pk(schedule, scored_shard(input_key)), "sk": input_key}


def reuse_key(fingerprint: str) -> dict[str, str]:
    """A remembered mini-batch, by its fingerprint (see parallelrun.store.reuse)."""
    return {"pk": f"{REUSE_PREFIX}{fingerprint}", "sk": "BATCH"}


def reuse_fingerprint(pk: str) -> str:
    """The fingerprint of a remembered mini-batch's partition key (:func:`reuse_key` undone)."""
    if not pk.startswith(REUSE_PREFIX):
        raise ValueError(f"not a remembered mini-batch's key: {pk!r}")
    return pk[len(REUSE_PREFIX):]


def reuse_job_key(fingerprint: str) -> dict[str, str]:
    """A succeeded job's whole output, by the job's fingerprint."""
    return {"pk": f"{REUSE_PREFIX}{JOB_PREFIX}{fingerprint}", "sk": "OUTPUT"}


# --- S3: the artifacts bucket

JOBS_PREFIX = "jobs/"
CODE_PREFIX = "code/"
MODELS_PREFIX = "models/"
SCHEDULES_PREFIX = "schedules/"  # scheduled runs' outputs, unless a schedule names its own place


def job_prefix(job_id: str) -> str:
    return f"{JOBS_PREFIX}{job_id}/"


def output_prefix(job_id: str) -> str:
    """A job's output folder when its settings name none."""
    return f"{job_prefix(job_id)}output/"


def plan_chunk_key(job_id: str, chunk: int) -> str:
    return f"{job_prefix(job_id)}plan/{chunk:06d}.json"


def plan_carry_key(job_id: str, token: str) -> str:
    """What a planner invocation hands the next (see plan.Carry), under its checkpoint's token:
    an invocation that lost the race to a checkpoint writes its own, never the winner's."""
    return f"{job_prefix(job_id)}plan/carry-{token}.json"


def part_key(job_id: str, index: int, attempt: int, suffix: str = "txt") -> str:
    """A mini-batch attempt's result part. The attempt is in the key: a late duplicate can never
    overwrite the committed part."""
    return f"{job_prefix(job_id)}parts/{index:09d}.{attempt}.{suffix}"


def failures_key(job_id: str, index: int, attempt: int) -> str:
    return f"{job_prefix(job_id)}failures/{index:09d}.{attempt}.jsonl"


def range_object_key(job_id: str, aggregation: str, number: int, name: str) -> str:
    """A collated range's output or failure lines (``name``), joined into the job's files at the
    end. The aggregation is in the key: a redrive's aggregation never reads an earlier one's."""
    return f"{job_prefix(job_id)}collated/{aggregation}/{number:06d}/{name}"


def logs_prefix(job_id: str, index: int | None = None) -> str:
    """Where a job's attempt logs are: all of them, or those of mini-batch ``index``."""
    return f"{job_prefix(job_id)}logs/" + (f"{index:09d}." if index is not None else "")


def log_key(job_id: str, index: int, attempt: int) -> str:
    return f"{logs_prefix(job_id, index)}{attempt}.jsonl"


def code_key(sha: str) -> str:
    """A deployment's scoring code, stored under its zip's SHA-256 (the same code once)."""
    return f"{CODE_PREFIX}{sha}.zip"


def model_prefix(name: str, version: int) -> str:
    """Where a model version's files are, each under its path relative to the model's root."""
    return f"{MODELS_PREFIX}{name}/{version}/"


def schedule_run_folder(schedule: str, stamp: str) -> str:
    """A scheduled run's output folder, below the schedule's output prefix."""
    return f"{schedule}/{stamp}/"
