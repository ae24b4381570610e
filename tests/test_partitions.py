"""Partitions (many-models): one partition per run() call, by folder or by column, and a model
chosen per partition by a name template or by tags, resolved when the mini-batch runs."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import pandas as pd
import pytest

from parallelrun import aws
from parallelrun.core.datasets import InputFile
from parallelrun.core.errors import InputError, SettingsError
from parallelrun.core.partitions import PathPattern, check_pattern, file_batches, frame_groups
from parallelrun.pipeline import submit
from parallelrun.pipeline.isolation import PartitionSlice, in_input_order
from parallelrun.scoring import loaded, modelfiles
from parallelrun.store import endpoints, jobs, registry
from tests.conftest import put_files, read_output
from tests.test_pipeline import start

# --- the pure part


def test_path_pattern_takes_fields_from_folders_and_names():
    pattern = PathPattern("{store}/{date}/*.png")
    assert pattern.fields == ("store", "date")
    assert pattern.match("s1/2026-01-02/a.png") == {"store": "s1", "date": "2026-01-02"}
    assert pattern.match("s1/2026-01-02/a.jpg") is None
    assert pattern.match("s1/a.png") is None
    assert pattern.match("s1/d/extra/a.png") is None  # '*' never crosses a folder
    assert PathPattern("region={region}/**").match("region=eu/x/y/z.csv") == {"region": "eu"}
    assert PathPattern("**/{shelf}_?.png").match("a/b/top_1.png") == {"shelf": "top"}
    assert PathPattern("data.{kind}/*").match("data.x/f") == {"kind": "x"}  # '.' is literal
    assert PathPattern("data.{kind}/*").match("dataYx/f") is None
    for bad in ("*/*.png", "{a}/{a}/*", "{a}/{b/*", "{1a}/*"):
        with pytest.raises(ValueError):
            check_pattern(bad)


def test_file_batches_hold_one_partition_each_and_lose_no_file():
    names = [f"s{store}/d{day}/{i}.png" for store in range(3) for day in range(2) for i in range(5)]
    names += ["stray.png", "s9/notes.txt"]
    files = [InputFile("in/" + name, 1) for name in sorted(names)]
    planned = list(file_batches(files, "in/", PathPattern("{store}/{date}/*.png"), ("store",), 4))
    assert sorted(item.key for batch, _ in planned for item in batch) == sorted(f.key for f in files)
    for batch, partition in planned:
        assert 1 <= len(batch) <= 4
        if partition is None:  # what the pattern does not match gathers apart, to be failed with a reason
            assert {item.key for item in batch} == {"in/stray.png", "in/s9/notes.txt"}
        else:
            assert {item.key.split("/")[1] for item in batch} == {partition["store"]}
    assert [p["store"] for _, p in planned if p].count("s0") == 3  # 10 files of s0 → 4 + 4 + 2


def test_frame_groups_keep_first_seen_order_and_row_positions():
    frame = pd.DataFrame({"store": ["b", "a", "b", "a", "c"], "x": range(5)})
    groups = frame_groups(frame, ("store",))
    assert [(p, list(rows.index), list(rows["x"])) for p, rows in groups] == [
        ({"store": "b"}, [0, 2], [0, 2]), ({"store": "a"}, [1, 3], [1, 3]), ({"store": "c"}, [4], [4])]
    assert isinstance(groups[0][0]["store"], str)
    two = frame_groups(frame.assign(day=[1, 1, 2, 1, 1]), ("store", "day"))
    assert [p for p, _ in two][:2] == [{"store": "b", "day": 1}, {"store": "a", "day": 1}]
    assert type(two[0][0]["day"]) is int  # plain values, not numpy scalars
    with pytest.raises(KeyError, match="region"):
        frame_groups(frame, ("region",))


def test_rows_go_back_to_input_order_when_each_partition_returns_one_per_input():
    a, b = PartitionSlice({"s": "a"}, None, [], 2, [1, 3]), PartitionSlice({"s": "b"}, None, [], 2, [0, 2])
    assert in_input_order([(a, ["a1", "a3"]), (b, ["b0", "b2"])]) == ["b0", "a1", "b2", "a3"]
    # a partition that returned fewer rows: which row is whose is unknown, so partition by partition
    assert in_input_order([(a, ["a1"]), (b, ["b0", "b2"])]) == ["a1", "b0", "b2"]


def test_loaded_models_are_kept_within_the_cache_size(tmp_path):
    paths = {}
    for name in ("a", "b", "c"):
        paths[name] = tmp_path / f"{name}.pkl"
        paths[name].write_bytes(pickle.dumps(name) + b" " * 1000)  # about 1 KB each
    loads = []

    def loader(path):
        loads.append(Path(path).stem)
        return Path(path).stem

    loaded.configure(2500)  # room for two
    try:
        for name in ("a", "b", "a", "c", "a", "b"):
            loaded.current = (name, 1, str(paths[name]))
            assert loaded.load_model(loader=loader) == name
        assert loads == ["a", "b", "c", "b"]  # b was least recently used when c came, so it left
        assert loaded.cached() == [("a", 1), ("b", 1)]
    finally:
        loaded.configure(256 * 1024**2)
        loaded.current = None
        loaded._loaded.clear()


# --- on the stack

PARTITIONED = """
import json

def run(mini_batch, mini_batch_context):
    value = json.dumps(mini_batch_context.partition_key_value, separators=(",", ":"))
    return [f"{open(path).read()} {value} {mini_batch_context.minibatch_index}" for path in mini_batch]
"""


def test_file_partitions_from_folder_names(stack, make_endpoint):
    endpoint = make_endpoint(PARTITIONED, name="byfolder")
    names = [f"{store}/{day}/{i}.png" for store in ("north", "south") for day in ("d1", "d2") for i in range(3)]
    put_files(stack.cfg, "byfolder/run1/", names + ["readme.txt"])
    job = stack.run_until_done(start(stack, endpoint, "byfolder/run1/", {
        "partition_format": "{store}/{date}/*.png", "partition_keys": "store", "mini_batch_size": "4"}).job_id)
    assert job.settings.partition_keys == ("store",)
    rows = read_output(stack.cfg, job).splitlines()
    assert sorted(r.split(" ")[0] for r in rows) == sorted(names)  # each input once
    batches: dict[str, set] = {}
    for row in rows:
        name, value, batch = row.split(" ")
        assert json.loads(value) == {"store": name.split("/")[0]}
        batches.setdefault(batch, set()).add(value)
    assert all(len(values) == 1 for values in batches.values())  # one partition per mini-batch
    assert len(batches) == 4  # 6 files a store, 4 a batch
    failures = [json.loads(line) for line in read_output(stack.cfg, job, "failures.jsonl").splitlines()]
    assert [(f["input"], f["error_type"]) for f in failures] == [("byfolder/run1/readme.txt", "PartitionMismatch")]
    assert "{store}/{date}/*.png" in failures[0]["message"]
    assert (job.items_succeeded, job.items_failed) == (12, 1)


def test_partition_keys_default_to_every_field_and_are_checked_at_submit(stack, make_endpoint):
    endpoint = make_endpoint(PARTITIONED, name="bychecks")
    folder = f"s3://{stack.cfg.input_bucket}/bychecks/r/"
    job = submit.prepare(stack.cfg, endpoint, folder, {"partition_format": "{store}/{date}/*"})
    assert job.settings.partition_keys == ("store", "date")
    as_keys = submit.prepare(stack.cfg, endpoint, folder, {"partition_keys": "{store}/*.png"})
    assert (as_keys.settings.partition_format, as_keys.settings.partition_keys) == ("{store}/*.png", ("store",))
    with pytest.raises(SettingsError, match=r"partition_keys='\{store\}/\{store\}'.*path pattern"):
        submit.prepare(stack.cfg, endpoint, folder, {"partition_keys": "{store}/{store}"})
    with pytest.raises(SettingsError, match=r"partition_keys='region'.*fields of partition_format"):
        submit.prepare(stack.cfg, endpoint, folder, {"partition_format": "{store}/*", "partition_keys": "region"})
    with pytest.raises(SettingsError, match=r"partition_format=.*nothing for tabular input"):
        submit.prepare(stack.cfg, endpoint, folder, {"input_type": "tabular", "partition_format": "{store}/*"})


SALES = """
import parallelrun

def run(mini_batch, mini_batch_context):
    model = parallelrun.load_model()  # the partition's own model, kept loaded between mini-batches
    store = mini_batch_context.partition_key_value["store"]
    result = mini_batch[["id"]].copy()
    result["prediction"] = mini_batch["units"] * model["factor"]
    result["model"] = f"{mini_batch_context.model_name}:{mini_batch_context.model_version}/{store}"
    return result
"""


def _sales_stack(stack, tmp_path: Path, name: str, model_ref: str, register: dict[str, dict]) -> str:
    for model_name, (factor, tags) in register.items():
        path = tmp_path / f"{model_name}.pkl"
        path.write_bytes(pickle.dumps({"factor": factor}))
        registry.register(stack.cfg, path, model_name, tags)
    code = tmp_path / f"code-{name}"
    code.mkdir()
    (code / "score.py").write_text(SALES)
    endpoints.create(stack.cfg, name, code, "score.py", model_ref, {"input_type": "tabular", "partition_keys": "store"})
    return name


def test_tabular_partitions_by_column_with_a_model_per_partition_by_tag(stack, tmp_path):
    stack.purge()
    endpoint = _sales_stack(stack, tmp_path, "sales-tags", "tags:store={store},kind=forecast", {
        "forecast-east": (10, {"store": "east", "kind": "forecast"}),
        "forecast-west": (100, {"store": "west", "kind": "forecast"}),
        "other-west": (7, {"store": "west", "kind": "other"}),  # same store, other kind: not chosen
    })
    stores = ["east", "west", "east", "nowhere", "west", "east", "nowhere", "west"]
    table = pd.DataFrame({"id": range(8), "store": stores, "units": range(1, 9)})
    aws.client("s3").put_object(Bucket=stack.cfg.input_bucket, Key="sales-tags/t/sales.csv",
                                Body=table.to_csv(index=False).encode())
    job = stack.run_until_done(start(stack, endpoint, "sales-tags/t/", {"output_format": "csv"}).job_id)
    assert job.state == jobs.SUCCEEDED, job.reason
    out = pd.read_csv(io.StringIO(read_output(stack.cfg, job)))
    assert list(out["id"]) == [0, 1, 2, 4, 5, 7]  # input order; the store with no model is left out
    factors = {"east": 10, "west": 100}
    for _, row in out.iterrows():
        store = stores[row["id"]]
        assert row["prediction"] == (row["id"] + 1) * factors[store]
        assert row["model"] == f"forecast-{store}:1/{store}"
    failures = [json.loads(line) for line in read_output(stack.cfg, job, "failures.jsonl").splitlines()]
    assert [f["error_type"] for f in failures] == ["NoModelForPartition"]
    assert "{'store': 'nowhere'}" in failures[0]["message"] and "store=nowhere,kind=forecast" in failures[0]["message"]
    assert (job.items_succeeded, job.items_failed) == (6, 2)  # counted in records


def test_a_model_per_partition_by_name_template_is_resolved_when_the_mini_batch_runs(stack, tmp_path):
    stack.purge()
    endpoint = _sales_stack(stack, tmp_path, "sales-names", "shop-{store}", {"shop-a": (2, {}), "shop-b": (3, {})})
    for number, store in enumerate(("a", "b", "c")):
        table = pd.DataFrame({"id": [number], "store": [store], "units": [1]})
        aws.client("s3").put_object(Bucket=stack.cfg.input_bucket, Key=f"sales-names/t/{number}.csv",
                                    Body=table.to_csv(index=False).encode())
    submitted = start(stack, endpoint, "sales-names/t/")
    # Registered after submit, before any mini-batch runs: resolved at run time, version 2 scores b.
    registry.register(stack.cfg, tmp_path / "shop-b.pkl", "shop-b")
    job = stack.run_until_done(submitted.job_id)
    assert job.deployment["model_name"] == "shop-{store}" and job.deployment["model_version"] is None
    rows = read_output(stack.cfg, job).splitlines()
    assert rows == ["0 2 shop-a:1/a", "1 3 shop-b:2/b"]
    failures = [json.loads(line) for line in read_output(stack.cfg, job, "failures.jsonl").splitlines()]
    assert [(f["input"], f["error_type"]) for f in failures] == [("sales-names/t/2.csv", "NoModelForPartition")]
    assert "register one named 'shop-c'" in failures[0]["message"]


def test_a_model_per_partition_needs_its_fields_in_partition_keys(stack, tmp_path):
    stack.purge()
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(SALES)
    endpoints.create(stack.cfg, "sales-keys", code, "score.py", "shop-{store}", {"input_type": "tabular"})
    with pytest.raises(SettingsError, match=r"partition_keys=None.*names including store.*shop-\{store\}"):
        submit.prepare(stack.cfg, "sales-keys", f"s3://{stack.cfg.input_bucket}/sales-keys/t/")
    with pytest.raises(InputError, match="name template"):
        endpoints.create(stack.cfg, "sales-bad", code, "score.py", "shop-{store", {})


def test_the_sdk_file_dataset_takes_azure_s_partition_format():
    from parallelrun.client.sdk import FileDataset

    dataset = FileDataset.from_files("s3://bucket/sales/", partition_format="/{store}/{date}/*.png")
    assert dataset.partition_format == "{store}/{date}/*.png"  # Azure's leading '/' is below the folder here


def test_partition_models_on_disk_stay_within_the_cache_size(stack, tmp_path):
    versions = []
    for name in ("disk-a", "disk-b", "disk-c"):
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(b"x" * 1000)
        versions.append(registry.register(stack.cfg, path, name))
    a, b, c = versions
    paths = [modelfiles.partition_model_path(stack.cfg, model, 2500) for model in (a, b, a, c)]
    assert Path(paths[0]).exists() and Path(paths[3]).exists()
    assert not Path(paths[1]).exists()  # b was least recently used when c came
    again = modelfiles.partition_model_path(stack.cfg, b, 2500)  # downloaded again when needed
    assert Path(again).read_bytes() == b"x" * 1000


FOLDER_MODELS = """
import parallelrun

def run(mini_batch, mini_batch_context):
    factor = parallelrun.load_model()["factor"]
    return [f"{open(path).read()} {factor}" for path in mini_batch]
"""


def test_file_partitions_with_a_model_per_folder(stack, tmp_path):
    stack.purge()
    for store, factor in (("n", 2), ("s", 3)):
        (tmp_path / f"{store}.pkl").write_bytes(pickle.dumps({"factor": factor}))
        registry.register(stack.cfg, tmp_path / f"{store}.pkl", f"folder-model-{store}")
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(FOLDER_MODELS)
    endpoints.create(stack.cfg, "byfoldermodel", code, "score.py", "folder-model-{store}",
                     {"partition_format": "{store}/*.txt"})
    names = [f"{store}/{i}.txt" for store in ("n", "s", "w") for i in range(3)]
    put_files(stack.cfg, "byfoldermodel/r/", names)
    job = stack.run_until_done(start(stack, "byfoldermodel", "byfoldermodel/r/").job_id)
    assert read_output(stack.cfg, job).splitlines() == [f"{n} {2 if n[0] == 'n' else 3}" for n in names[:6]]
    failures = [json.loads(line) for line in read_output(stack.cfg, job, "failures.jsonl").splitlines()]
    assert sorted(f["input"] for f in failures) == [f"byfoldermodel/r/{n}" for n in names[6:]]
    assert {f["error_type"] for f in failures} == {"NoModelForPartition"}
    assert (job.items_succeeded, job.items_failed, job.retries) == (6, 3, 0)  # no attempt spent on it


FLAKY_PARTITION = """
def run(mini_batch, mini_batch_context):
    store = mini_batch_context.partition_key_value["store"]
    if store == "broken":
        raise ValueError("this store's data is bad")
    if store == "short":
        return [str(i) for i in mini_batch["id"]][:1]
    return [f"{i} {store}" for i in mini_batch["id"]]
"""


def test_after_the_last_attempt_only_the_failing_partitions_of_a_table_lose_their_rows(stack, make_endpoint):
    endpoint = make_endpoint(FLAKY_PARTITION, name="isoparts")
    stores = ["ok", "broken", "ok", "fine", "broken", "short", "short"]
    table = pd.DataFrame({"id": range(7), "store": stores})
    aws.client("s3").put_object(Bucket=stack.cfg.input_bucket, Key="isoparts/t/t.csv",
                                Body=table.to_csv(index=False).encode())
    job = stack.run_until_done(start(stack, endpoint, "isoparts/t/", {
        "input_type": "tabular", "partition_keys": "store", "run_max_try": "2"}).job_id)
    assert job.state == jobs.SUCCEEDED, job.reason
    assert read_output(stack.cfg, job).splitlines() == ["0 ok", "2 ok", "3 fine", "5"]
    failures = [json.loads(line) for line in read_output(stack.cfg, job, "failures.jsonl").splitlines()]
    assert [(f["error_type"], f["attempts"]) for f in failures] == [("ValueError", 2), ("MissingResults", 2)]
    assert failures[0]["message"] == "partition {'store': 'broken'}: this store's data is bad"
    assert (job.items_succeeded, job.items_failed, job.retries) == (4, 3, 1)
