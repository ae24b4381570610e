"""Endpoints with named deployments, default switching, and the model registry's versions."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from parallelrun import aws
from parallelrun.core.errors import ConflictError, InputError, NotFoundError
from parallelrun.store import endpoints, registry
from tests.conftest import put_files, read_output
from tests.test_pipeline import start

VERSIONED = """
def run(mini_batch):
    return [TAG + open(p).read() for p in mini_batch]
"""


def code(tmp_path: Path, tag: str) -> Path:
    folder = tmp_path / tag
    folder.mkdir()
    (folder / "score.py").write_text(f"TAG = {tag!r}\n" + VERSIONED)
    return folder


def test_default_switch_routes_new_jobs_and_leaves_running_ones(stack, tmp_path: Path):
    stack.purge()
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(0))
    registry.register(stack.cfg, tmp_path / "m.pkl", "route")
    endpoints.create(stack.cfg, "route", code(tmp_path, "green:"), "score.py", "route")
    put_files(stack.cfg, "route/r/", ["a.txt", "b.txt"])
    running = start(stack, "route", "route/r/")
    stack.plan(running.job_id)  # planned and sent under the old default

    endpoints.add_deployment(stack.cfg, "route", "blue", code(tmp_path, "blue:"), "score.py", "route",
                             make_default=True)
    assert endpoints.get_endpoint(stack.cfg, "route")["default_deployment"] == "blue"
    new = start(stack, "route", "route/r/")
    assert new.deployment["deployment"] == "blue"

    assert read_output(stack.cfg, stack.run_until_done(running.job_id)).splitlines() == ["green:a.txt", "green:b.txt"]
    assert read_output(stack.cfg, stack.run_until_done(new.job_id)).splitlines() == ["blue:a.txt", "blue:b.txt"]


def test_a_named_deployment_and_the_rules_of_deleting(stack, tmp_path: Path):
    stack.purge()
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(0))
    registry.register(stack.cfg, tmp_path / "m.pkl", "named")
    endpoints.create(stack.cfg, "named", code(tmp_path, "one:"), "score.py", "named")
    endpoints.add_deployment(stack.cfg, "named", "two", code(tmp_path, "two:"), "score.py", "named")
    put_files(stack.cfg, "named/r/", ["x.txt"])
    from parallelrun.pipeline import submit

    job = submit.prepare(stack.cfg, "named", f"s3://{stack.cfg.input_bucket}/named/r/", deployment="two")
    submit.start(stack.cfg, job)
    assert read_output(stack.cfg, stack.run_until_done(job.job_id)).splitlines() == ["two:x.txt"]
    assert sorted(d.name for d in endpoints.list_deployments(stack.cfg, "named")) == ["default", "two"]
    with pytest.raises(ConflictError, match="is the default"):
        endpoints.delete_deployment(stack.cfg, "named", "default")
    with pytest.raises(ConflictError, match="already exists"):
        endpoints.add_deployment(stack.cfg, "named", "two", code(tmp_path, "dup:"), "score.py", "named")
    with pytest.raises(InputError, match="deployment name 'Bad_Name'"):
        endpoints.add_deployment(stack.cfg, "named", "Bad_Name", code(tmp_path, "bad:"), "score.py", "named")
    endpoints.delete_deployment(stack.cfg, "named", "two")
    with pytest.raises(NotFoundError, match="no deployment 'two'"):
        submit.prepare(stack.cfg, "named", f"s3://{stack.cfg.input_bucket}/named/r/", deployment="two")
    endpoints.delete_endpoint(stack.cfg, "named")
    with pytest.raises(NotFoundError, match="no endpoint 'named'"):
        endpoints.get_endpoint(stack.cfg, "named")


def test_model_versions_tags_archive_and_s3_sources(stack, tmp_path: Path):
    (tmp_path / "a.bin").write_bytes(b"first")
    first = registry.register(stack.cfg, tmp_path / "a.bin", "reg", {"stage": "dev"}, "first")
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"w")
    (folder / "sub" / "vocab.txt").write_text("v")
    second = registry.register(stack.cfg, folder, "reg", {"stage": "prod"})
    assert (first.version, second.version) == (1, 2)
    assert second.files == ("sub/vocab.txt", "weights.bin") and not second.single_file
    assert registry.get(stack.cfg, "reg").version == 2
    assert [m.version for m in registry.list_models(stack.cfg, {"stage": "dev"}) if m.name == "reg"] == [1]

    registry.archive(stack.cfg, "reg", 2)
    assert registry.get(stack.cfg, "reg").version == 1  # latest skips the archived one
    assert registry.get(stack.cfg, "reg", 2).archived

    s3 = aws.client("s3")
    s3.put_object(Bucket=stack.cfg.input_bucket, Key="training/out/model.pkl", Body=b"trained")
    s3.put_object(Bucket=stack.cfg.input_bucket, Key="training/out/extra/config.json", Body=b"{}")
    from_object = registry.register(stack.cfg, f"s3://{stack.cfg.input_bucket}/training/out/model.pkl", "froms3")
    assert (from_object.files, from_object.single_file) == (("model.pkl",), True)
    from_prefix = registry.register(stack.cfg, f"s3://{stack.cfg.input_bucket}/training/out/", "froms3")
    assert from_prefix.files == ("extra/config.json", "model.pkl") and from_prefix.version == 2
    with pytest.raises(InputError, match="no object there"):
        registry.register(stack.cfg, f"s3://{stack.cfg.input_bucket}/training/none/", "froms3")
