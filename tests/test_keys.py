"""Every key of the table and the artifacts bucket (parallelrun.store.keys), pure: kinds never
share a key, numbers sort as numbers, shards spread, and what is parsed back comes back."""

from __future__ import annotations

import collections

import pytest

from parallelrun.store import batches, keys


def _all_table_keys() -> dict[str, dict[str, str]]:
    """One key of each kind, for one job, model, endpoint and schedule all named "x"."""
    return {
        "job": keys.job_key("x"), "counts": keys.counts_key("x", 0), "usage": keys.usage_key("x", 1, "n"),
        "batch": keys.batch_key("x", 0), "model": keys.model_key("x", 1), "counter": keys.model_counter_key("x"),
        "endpoint": keys.endpoint_key("x"), "deployment": keys.deployment_key("x", "x"),
        "schedule": keys.schedule_key("x"), "scored": keys.scored_key("x", "x"), "reuse": keys.reuse_key("x"),
        "reuse_job": keys.reuse_job_key("x"),
    }


def test_no_two_kinds_of_record_share_a_key_even_with_the_same_names():
    found = _all_table_keys()
    assert len({(k["pk"], k["sk"]) for k in found.values()}) == len(found)
    # A job's own items share its partition key, told apart by their sort keys' prefixes.
    assert {found[kind]["pk"] for kind in ("job", "counts", "usage")} == {keys.job_pk("x")}
    assert found["batch"]["pk"] != keys.job_pk("x")
    # A listing's Scan for one kind filters on its prefix: no other kind's key starts with it.
    assert [kind for kind, k in found.items() if k["pk"].startswith(keys.MODEL_PREFIX)] == ["model", "counter"]
    assert [kind for kind, k in found.items() if k["pk"].startswith(keys.SCHEDULE_PREFIX)] == ["schedule"]
    assert [kind for kind, k in found.items() if k["pk"].startswith(keys.ENDPOINT_PREFIX)
            and k["sk"] == keys.ENDPOINT_SK] == ["endpoint"]
    assert [kind for kind, k in found.items() if k["pk"].startswith(keys.JOB_PREFIX) and k["sk"] == keys.JOB_SK] == ["job"]


def test_a_jobs_counters_sort_just_before_it_so_one_query_reads_them_all():
    shards = [keys.counts_key("j", shard)["sk"] for shard in range(keys.SHARDS)]
    assert shards == sorted(shards) and all(keys.COUNTS_PREFIX <= sk < keys.JOB_SK for sk in shards)
    assert keys.usage_key("j", 1, "n")["sk"] > keys.JOB_SK  # usage items are outside that range


def test_numbers_in_keys_sort_as_numbers():
    indexes = [0, 9, 10, 99, 100, 123_456_789]
    assert sorted(keys.batch_key("j", i)["sk"] for i in indexes) == [keys.batch_key("j", i)["sk"] for i in indexes]
    assert sorted(keys.model_key("m", v)["sk"] for v in (2, 10)) == [keys.model_key("m", 2)["sk"], keys.model_key("m", 10)["sk"]]
    assert sorted(keys.plan_chunk_key("j", c) for c in (2, 10)) == [keys.plan_chunk_key("j", 2), keys.plan_chunk_key("j", 10)]
    assert sorted(keys.usage_key("j", t, "z")["sk"] for t in (5, 40)) == [keys.usage_key("j", 5, "z")["sk"],
                                                                          keys.usage_key("j", 40, "z")["sk"]]


def test_a_jobs_mini_batches_spread_over_every_shard_evenly():
    pks = [keys.batch_key("j", index)["pk"] for index in range(3 * keys.SHARD_GROUP * keys.SHARDS)]
    assert len(set(pks)) == keys.SHARDS
    assert {pks.count(pk) for pk in set(pks)} == {3 * keys.SHARD_GROUP}
    assert keys.batch_key("j", 7)["pk"] == keys.batch_pk("j", keys.shard_of(7))
    # neighbours never share a shard: SHARD_GROUP consecutive mini-batches take SHARD_GROUP shards
    assert all(len({keys.shard_of(i) for i in range(start, start + keys.SHARD_GROUP)}) == keys.SHARD_GROUP
               for start in range(0, 3 * keys.SHARD_GROUP * keys.SHARDS, 7))
    # a group of SHARD_GROUP shards takes SHARD_GROUP x SHARD_GROUP of them, then the next group
    first = {keys.shard_of(i) for i in range(keys.SHARD_GROUP ** 2)}
    assert first == set(range(keys.SHARD_GROUP)) and keys.shard_of(keys.SHARD_GROUP ** 2) == keys.SHARD_GROUP
    assert keys.shard_of(7) == keys.shard_of(7 + keys.SHARD_GROUP * keys.SHARDS)


def test_a_small_job_uses_few_shards_and_each_knows_its_size():
    for total in (1, 7, keys.SHARD_GROUP, keys.SHARD_GROUP + 1, 55, 100, 105, 1_000, keys.SHARD_GROUP * keys.SHARDS + 3,
                  123_457):
        held = collections.Counter(keys.shard_of(index) for index in range(total))
        assert sorted(held) == list(batches.shards_of(total))  # every shard used, none opened for nothing
        assert all(held[shard] == batches.shard_size(total, shard) for shard in held)
    assert len(batches.shards_of(7)) == 7 and len(batches.shards_of(250)) == 30


def test_a_schedules_scored_inputs_spread_by_hash_whatever_their_prefix():
    inputs = [f"folder/day-2026-11-22/{i:05d}.jpg" for i in range(1_000)]
    pks = [keys.scored_key("s", key)["pk"] for key in inputs]
    assert len(set(pks)) == keys.SCORED_SHARDS
    assert max(pks.count(pk) for pk in set(pks)) < 2 * len(inputs) / keys.SCORED_SHARDS  # none much fuller
    assert set(pks) == {keys.scored_pk("s", shard) for shard in range(keys.SCORED_SHARDS)}
    assert keys.scored_key("s", inputs[0]) == keys.scored_key("s", inputs[0])  # stable: the next run finds it
    assert keys.scored_key("s", inputs[0])["sk"] == inputs[0]


def test_a_remembered_mini_batches_fingerprint_is_parsed_back():
    assert keys.reuse_fingerprint(keys.reuse_key("abc123")["pk"]) == "abc123"
    with pytest.raises(ValueError):
        keys.reuse_fingerprint(keys.job_pk("abc123"))
    # A whole job's output is another kind, under the same prefix but never a mini-batch's key.
    assert keys.reuse_job_key("abc123") != keys.reuse_key("abc123")


def test_a_jobs_objects_are_all_under_its_prefix_and_never_collide():
    prefix = keys.job_prefix("j")
    objects = [keys.plan_chunk_key("j", 0), keys.part_key("j", 0, 1), keys.part_key("j", 0, 2),
               keys.part_key("j", 0, 1, "parquet"), keys.failures_key("j", 0, 1), keys.log_key("j", 0, 1),
               keys.output_prefix("j")]
    assert all(key.startswith(prefix) for key in objects) and len(set(objects)) == len(objects)
    assert not keys.job_prefix("j1").startswith(keys.job_prefix("j"))  # 'j' never covers 'j1'
    assert keys.log_key("j", 3, 2).startswith(keys.logs_prefix("j", 3)) and keys.logs_prefix("j", 3).startswith(
        keys.logs_prefix("j"))
    assert not keys.log_key("j", 30, 1).startswith(keys.logs_prefix("j", 3))


def test_the_buckets_own_folders_are_distinct():
    own = [keys.JOBS_PREFIX, keys.CODE_PREFIX, keys.MODELS_PREFIX, keys.SCHEDULES_PREFIX]
    assert len(set(own)) == len(own) and all(p.endswith("/") for p in own)
    assert keys.job_prefix("j").startswith(keys.JOBS_PREFIX)
    assert keys.code_key("ab12") == "code/ab12.zip" and keys.code_key("ab12").startswith(keys.CODE_PREFIX)
    assert keys.model_prefix("digits", 3) == "models/digits/3/"
    assert not keys.model_prefix("digits", 30).startswith(keys.model_prefix("digits", 3))
    assert keys.schedule_run_folder("nightly", "20261122T220000Z") == "nightly/20261122T220000Z/"


def test_the_shards_of_a_range_of_mini_batches_are_those_holding_them():
    for start, end in [(0, 1), (0, 10), (5, 15), (9, 11), (95, 105), (0, 999), (3, 1003), (995, 1010), (0, 1000),
                       (12, 2500), (1234, 1999)]:
        assert keys.shards_between(start, end) == sorted({keys.shard_of(i) for i in range(start, end)}), (start, end)
