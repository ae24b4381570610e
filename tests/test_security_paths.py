"""A key never names a path, and what a scoring process loads is checked every time it loads it
(DESIGN invariant 9): each attack below planted code or a model on a worker before."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import pytest

from parallelrun import aws
from parallelrun.core import safepath
from parallelrun.core.datasets import split_s3_uri
from parallelrun.core.errors import IntegrityError, NotFoundError, UnsafeKey
from parallelrun.scoring import code, host, modelfiles
from parallelrun.store import jobs, keys, registry
from tests.conftest import put_files, read_output
from tests.test_pipeline import echo, start


@pytest.mark.parametrize("name", [
    "/tmp/parallelrun/code/x/score.py", "a//b", "a/", "", ".", "a/./b", "..", "a/../../b", "a\\b", "a\0b",
])
def test_unsafe_names_are_refused(tmp_path, name):
    with pytest.raises(UnsafeKey, match="cannot be a local file name"):
        safepath.inside(tmp_path, name)


def test_a_name_through_a_link_out_of_its_folder_is_refused(tmp_path):
    folder, outside = tmp_path / "folder", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (folder / "link").symlink_to(outside)
    assert safepath.inside(folder, "sub/file.png") == folder / "sub" / "file.png"
    with pytest.raises(UnsafeKey, match="leads outside its folder"):
        safepath.inside(folder, "link/file.png")


def _failures(stack: Any, job: jobs.JobRecord) -> list[dict[str, Any]]:
    return [json.loads(line) for line in read_output(stack.cfg, job, "failures.jsonl").splitlines()]


def _code_file(stack: Any, job: jobs.JobRecord) -> Path:
    return safepath.CODE / job.deployment["code_sha"] / "score.py"


def test_an_absolute_or_dotted_input_key_fails_alone_and_writes_nothing(stack, make_endpoint):
    endpoint = make_endpoint(echo("abs"), name="abs")
    put_files(stack.cfg, "abs/first/", ["a.txt"])
    first = stack.run_until_done(start(stack, endpoint, "abs/first/").job_id)
    code = _code_file(stack, first)
    original = code.read_bytes()
    # The attack: a key whose name below the folder is the worker's own unpacked scoring code.
    planted = "import os\nos.environ['PWNED'] = '1'\ndef run(mini_batch):\n    return ['pwned'] * len(mini_batch)\n"
    keys = ["abs/second/a.txt", f"abs/second/{code}", "abs/second/sub/../../../escaped.txt", "abs/second/z.txt"]
    for key in keys:
        aws.client("s3").put_object(Bucket=stack.cfg.input_bucket, Key=key,
                                    Body=planted.encode() if "score.py" in key else key.rsplit("/", 1)[1].encode())
    for running in host._hosts.values():
        running.stop()  # the next mini-batch starts a scoring process, which would import a planted script
    job = stack.run_until_done(start(stack, endpoint, "abs/second/", {"mini_batch_size": "4"}).job_id)
    assert job.state == jobs.SUCCEEDED
    assert read_output(stack.cfg, job).splitlines() == ["a.txt", "z.txt"]
    assert (job.items_succeeded, job.items_failed) == (2, 2)
    refused = {f["input"]: f for f in _failures(stack, job)}
    assert set(refused) == set(keys[1:3])
    assert {f["error_type"] for f in refused.values()} == {"UnsafeKey"}
    assert "an absolute name" in refused[keys[1]]["message"]
    assert "'..' segment" in refused[keys[2]]["message"]
    assert code.read_bytes() == original
    assert not list(safepath.CACHE_ROOT.rglob("escaped.txt"))


def test_a_prefix_download_refuses_a_dotted_key(stack, tmp_path):
    s3 = aws.client("s3")
    for key in ("side/words/ok.txt", "side/words/../../escaped.txt"):
        s3.put_object(Bucket=stack.cfg.input_bucket, Key=key, Body=b"x")
    target = tmp_path / "deep" / "folder"
    with pytest.raises(UnsafeKey, match="'..' segment"):
        aws.download_prefix(stack.cfg.input_bucket, "side/words/", target)
    assert not list(tmp_path.rglob("escaped.txt"))


def test_a_prefix_side_input_with_a_dotted_key_fails_the_job_not_the_worker(stack, make_endpoint):
    endpoint = make_endpoint(echo("sidedots"), name="sidedots")
    put_files(stack.cfg, "sidedots/r/", ["a.txt"])
    s3 = aws.client("s3")
    s3.put_object(Bucket=stack.cfg.input_bucket, Key="sidedots-side/ok.txt", Body=b"x")
    s3.put_object(Bucket=stack.cfg.input_bucket, Key="sidedots-side/../../../escaped-side.txt", Body=b"x")
    job = stack.run_until_done(start(stack, endpoint, "sidedots/r/", {
        "side_inputs": f"words=s3://{stack.cfg.input_bucket}/sidedots-side/", "run_max_try": "1"}).job_id)
    assert job.items_failed == 1
    [failure] = _failures(stack, job)
    assert failure["error_type"] == "UnsafeKey" and "'..' segment" in failure["message"]
    assert not list(safepath.CACHE_ROOT.rglob("escaped-side.txt"))


def test_registering_a_model_from_s3_refuses_a_dotted_key(stack):
    s3 = aws.client("s3")
    for key in ("trained/run1/model.pkl", "trained/run1/../../../../escaped-model.pkl"):
        s3.put_object(Bucket=stack.cfg.input_bucket, Key=key, Body=b"x")
    with pytest.raises(UnsafeKey, match="'..' segment"):
        registry.register(stack.cfg, f"s3://{stack.cfg.input_bucket}/trained/run1/", "dotted")
    with pytest.raises(NotFoundError):
        registry.get(stack.cfg, "dotted")


def _writable(path: Path) -> None:
    path.chmod(path.stat().st_mode | stat.S_IWUSR)


@pytest.mark.parametrize("known", [True, False], ids=["same-worker", "new-worker"])
def test_a_tampered_unpacked_code_bundle_is_refused_then_unpacked_again(stack, make_endpoint, known):
    name = f"tamper-{str(known).lower()}"
    endpoint = make_endpoint(echo(name), name=name)
    put_files(stack.cfg, f"{name}/first/", ["a.txt"])
    first = stack.run_until_done(start(stack, endpoint, f"{name}/first/").job_id)
    script = _code_file(stack, first)
    assert not script.stat().st_mode & stat.S_IWUSR  # read-only: a script's mistake fails, tampering is caught below
    _writable(script)
    script.write_text("def run(mini_batch):\n    return ['tampered'] * len(mini_batch)\n")
    (script.parent / "pandas.py").write_text("raise SystemExit('a planted module shadowing pandas')\n")
    for running in host._hosts.values():
        running.stop()
    if not known:
        code._manifests.clear()  # a worker that never saw the zip: it checks it first too
    put_files(stack.cfg, f"{name}/second/", ["b.txt"])
    job = stack.run_until_done(start(stack, endpoint, f"{name}/second/").job_id)
    assert read_output(stack.cfg, job).splitlines() == ["b.txt"]  # the next attempt unpacked the zip again
    assert job.retries == 1
    log = aws.client("s3").get_object(Bucket=stack.cfg.artifacts_bucket,
                                      Key=keys.log_key(job.job_id, 0, 1))["Body"].read().decode()
    sha = first.deployment["code_sha"]
    assert "IntegrityError" in log and f"code/{sha}.zip" in log and "SHA-256" in log
    assert not (script.parent / "pandas.py").exists()


def test_code_whose_zip_does_not_match_its_name_is_refused(stack):
    sha = "0" * 64
    aws.client("s3").put_object(Bucket=stack.cfg.artifacts_bucket, Key=f"code/{sha}.zip", Body=b"not the code")
    with pytest.raises(IntegrityError, match=f"code/{sha}.zip has SHA-256 [0-9a-f]{{64}}"):
        code.code_dir(stack.cfg, sha)
    with pytest.raises(IntegrityError, match="not named by a SHA-256"):
        code.code_dir(stack.cfg, "../../etc")


def test_a_tampered_model_file_is_refused_then_downloaded_again(stack, make_endpoint):
    endpoint = make_endpoint(echo("tmodel"), name="tmodel")
    put_files(stack.cfg, "tmodel/first/", ["a.txt"])
    stack.run_until_done(start(stack, endpoint, "tmodel/first/").job_id)
    model = registry.get(stack.cfg, "tmodel")
    path = Path(modelfiles.local_path(stack.cfg, model))
    _writable(path)
    path.write_bytes(pickle.dumps({"offset": 666}))
    with pytest.raises(IntegrityError) as refused:
        modelfiles.local_path(stack.cfg, model)
    assert f"s3://{model.prefix}" in str(refused.value) and model.sha256 in str(refused.value)
    assert "has SHA-256" in str(refused.value)
    # Tampered again, then through a job: the attempt fails, the next one downloads the model anew.
    path = Path(modelfiles.local_path(stack.cfg, model))
    _writable(path)
    path.write_bytes(pickle.dumps({"offset": 666}))
    (path.parent / "planted.pkl").write_bytes(b"x")
    for running in host._hosts.values():
        running.stop()
    put_files(stack.cfg, "tmodel/second/", ["b.txt"])
    job = stack.run_until_done(start(stack, endpoint, "tmodel/second/").job_id)
    assert read_output(stack.cfg, job).splitlines() == ["b.txt"]
    assert job.retries == 1
    assert pickle.loads(Path(modelfiles.local_path(stack.cfg, model)).read_bytes()) == {"offset": 1}
    assert not (path.parent / "planted.pkl").exists()


ENTRY_WRITER = """
import os
from azureml_user.parallel_run import EntryScript

def run(mini_batch):
    out = EntryScript().output_dir
    open(os.path.join(out, "stats.txt"), "w").write("mine")
    os.symlink("/etc/hostname", os.path.join(out, "leak.txt"))
    return [open(p).read() for p in mini_batch]
"""


def test_collected_script_files_never_overwrite_another_jobs_nor_follow_links(stack, make_endpoint):
    endpoint = make_endpoint(ENTRY_WRITER, name="entrywriter")
    put_files(stack.cfg, "entrywriter/r/", ["a.txt"])
    job = start(stack, endpoint, "entrywriter/r/")
    bucket, prefix = split_s3_uri(job.output_uri)
    s3 = aws.client("s3")
    # Another job's file landed in this job's folder after submit (two jobs raced for one folder).
    s3.put_object(Bucket=bucket, Key=prefix + "stats.txt", Body=b"theirs", Metadata={"parallelrun-job": "other"})
    job = stack.run_until_done(job.job_id)
    assert read_output(stack.cfg, job).splitlines() == ["a.txt"]
    assert s3.get_object(Bucket=bucket, Key=prefix + "stats.txt")["Body"].read() == b"theirs"
    listed = {o["Key"][len(prefix):] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    assert "leak.txt" not in listed
