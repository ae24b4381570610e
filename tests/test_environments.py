"""An environment per deployment: requirement lines checked, a virtual environment per
requirements hash built once (under a file lock) and the scoring process run in it, two
deployments pinning different versions of one library side by side in one stack, and on AWS a
deployment's own worker (layer, queue, function, event source) made and removed on moto.

Each environment is built once per test session (the session's worker cache; pip's own wheel
cache makes a rebuild cost about a second): tabulate is not among the project's dependencies,
and tqdm is one of the worker's own, pinned older here to show the environment's version wins.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import re
import time
import zipfile
from pathlib import Path

import pytest

from parallelrun import aws
from parallelrun.aws import workers
from parallelrun.client.api import Client
from parallelrun.core import environments as core_env
from parallelrun.core import safepath
from parallelrun.core.errors import ConflictError, EnvironmentBuildError, InputError, NotFoundError
from parallelrun.pipeline import submit
from parallelrun.scoring import environments
from parallelrun.store import endpoints, jobs, registry
from tests.conftest import put_files, read_output
from tests.test_pipeline import start

OLD = ("tabulate==0.8.10", "tqdm==4.66.1")
NEW = ("tabulate==0.9.0",)
MISSING = "parallelrun-no-such-package==1.0"

SCORE = """
import os
import tabulate
import tqdm

def init():
    pass

def run(mini_batch):
    return [f"{os.path.basename(p)} tabulate={tabulate.__version__} tqdm={tqdm.__version__}" for p in mini_batch]
"""


# --- the requirement lines


@pytest.mark.parametrize("line", ["-e .", "--index-url https://example.org/simple", "-r other.txt",
                                  "./wheels/pkg.whl", "/abs/pkg", "https://example.org/pkg.tar.gz",
                                  "pkg @ https://example.org/pkg.zip", "pkg==1.0 --global-option=--x",
                                  "git+https://github.com/a/b", "pkg; os_name == 'posix' --hash=sha256:00",
                                  "not a requirement"])
def test_a_line_that_is_not_a_plain_requirement_is_refused_naming_it(line):
    with pytest.raises(InputError, match="requirement " + re.escape(repr(line))):
        core_env.check(["six==1.16.0", line])


def test_plain_requirements_pass_and_a_file_loses_its_comments():
    lines = core_env.parse_requirements_file(
        "# pinned\ntabulate==0.9.0  # the table\n\nrequests[socks]>=2.0,<3 ; python_version >= '3.8'\nsix\n")
    assert core_env.check(lines) == ("tabulate==0.9.0", "requests[socks]>=2.0,<3 ; python_version >= '3.8'", "six")
    assert core_env.environment_id(["b==1", "a==2"]) == core_env.environment_id(["a==2", "b==1"])
    assert core_env.environment_id(["a==2"]) != core_env.environment_id(["a==3"])


def test_pips_output_names_the_package_that_failed():
    assert core_env.failed_package(
        "Collecting nope==9\nERROR: Could not find a version that satisfies the requirement nope==9 (from versions: "
        "1.0)\nERROR: No matching distribution found for nope==9\n") == "nope==9"
    assert core_env.failed_package("Building wheel for lxml\nerror\nFailed to build lxml\n") == "lxml"
    assert core_env.failed_package("ERROR: Cannot install a==1 and b==2 because these package versions have "
                                   "conflicting dependencies.") == "a==1 and b==2"
    assert core_env.pip_error("Collecting x\nERROR: one\nERROR: the last\n") == "ERROR: the last"


def test_lambdas_size_limits_are_each_named_with_the_figures():
    mb = 1024 * 1024
    assert core_env.LambdaSizes(10 * mb, 40 * mb, 200 * mb, 4).problems() == []
    problems = core_env.LambdaSizes(51 * mb, 60 * mb, 200 * mb, 5).problems()
    assert len(problems) == 3
    assert "51.0 MB zipped" in problems[0] and "260.0 MB unzipped" in problems[1] and "6 layers" in problems[2]


# --- the local environment


def _ask(requirements: tuple[str, ...]) -> bool:
    return environments.ensure(requirements).built


def test_requirements_the_worker_already_meets_need_no_environment():
    have = __import__("tqdm").__version__
    assert not environments.needed(("numpy", f"tqdm=={have}", "pandas>=1; python_version < '3'", "tqdm>=1"))
    for unmet in (OLD[1], NEW[0], "tqdm[notebook]", MISSING):
        assert environments.needed((f"tqdm=={have}", unmet)), unmet


def test_two_processes_asking_at_once_build_the_environment_once(tmp_path, monkeypatch):
    monkeypatch.setattr(safepath, "ENVS", tmp_path / "envs")  # a cache of its own: it must be built here
    with multiprocessing.get_context("fork").Pool(2) as pool:
        built = pool.map(_ask, [NEW, NEW])
    assert sorted(built) == [False, True]
    assert [p.name for p in (tmp_path / "envs").iterdir() if p.is_dir()] == [core_env.environment_id(NEW)]


def _build_stuck(requirements: tuple[str, ...]) -> None:
    environments.pip_install = lambda *args, **kwargs: time.sleep(600)  # this process only: killed mid-build
    environments.ensure(requirements)


def test_a_builder_killed_mid_way_leaves_no_environment_and_holds_no_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(safepath, "ENVS", tmp_path / "envs")
    builder = multiprocessing.get_context("fork").Process(target=_build_stuck, args=(NEW,))
    builder.start()
    root = tmp_path / "envs" / core_env.environment_id(NEW)
    deadline = time.time() + 30
    while not any(p.name.startswith(".") for p in (tmp_path / "envs").glob("*")) and time.time() < deadline:
        time.sleep(0.05)  # until its venv is being made
    builder.kill()
    builder.join()
    assert not root.exists()
    env = environments.ensure(NEW)  # not blocked: the lock died with its holder
    assert env.built and env.root == root and (env.site_packages / "tabulate" / "__init__.py").is_file()


def test_a_package_that_cannot_install_is_refused_at_create_on_a_local_stack(stack, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(SCORE)
    (code / "requirements.txt").write_text(f"tabulate==0.9.0\n{MISSING}\n")
    registry.register(stack.cfg, _model(tmp_path), "env-bad")
    with pytest.raises(EnvironmentBuildError, match=f"requirement '{MISSING}' could not be installed: "
                                                    "ERROR: No matching distribution found"):
        Client(stack.cfg).create_endpoint("env-bad", code, "score.py", "env-bad")
    with pytest.raises(NotFoundError):
        endpoints.get_endpoint(stack.cfg, "env-bad")  # nothing was stored
    (code / "requirements.txt").write_text("-e ../elsewhere\n")
    with pytest.raises(InputError, match="requirement '-e ../elsewhere': pip options are not allowed"):
        endpoints.create(stack.cfg, "env-bad", code, "score.py", "env-bad")


def _model(tmp_path: Path) -> Path:
    model = tmp_path / "model.txt"
    model.write_text("unused")
    return model


def test_two_endpoints_pinning_different_versions_score_side_by_side(stack, tmp_path):
    stack.purge()
    client = Client(stack.cfg)
    for name, requirements in (("env-old", OLD), ("env-new", NEW)):
        code = tmp_path / name
        code.mkdir()
        (code / "score.py").write_text(SCORE)
        registry.register(stack.cfg, _model(tmp_path), name)
        if name == "env-old":  # requirements.txt beside the code is picked up
            (code / "requirements.txt").write_text("# the old table\n" + "\n".join(OLD) + "\n")
            created = client.create_endpoint(name, code, "score.py", name, {"mini_batch_size": "2"})
        else:  # given, as an Azure conda file's pip: list is
            created = client.create_endpoint(name, code, "score.py", name, {"mini_batch_size": "2"},
                                             requirements=NEW)
        assert created.requirements == requirements
        assert (safepath.ENVS / core_env.environment_id(requirements)).is_dir()  # built at create
        put_files(stack.cfg, f"{name}/r/", ["a.txt", "b.txt", "c.txt"])
    started = [start(stack, name, f"{name}/r/") for name in ("env-old", "env-new")]
    for job in started:
        stack.plan(job.job_id)  # both jobs' mini-batches are in the queue together
    ended = {job.job_id: stack.run_until_done(job.job_id) for job in started}
    old, new = (ended[job.job_id] for job in started)
    assert old.state == new.state == jobs.SUCCEEDED, (old.reason, new.reason)
    worker_tqdm = __import__("tqdm").__version__
    assert worker_tqdm != "4.66.1"
    assert read_output(stack.cfg, old).splitlines() == [f"{n}.txt tabulate=0.8.10 tqdm=4.66.1" for n in "abc"]
    assert read_output(stack.cfg, new).splitlines() == [f"{n}.txt tabulate=0.9.0 tqdm={worker_tqdm}" for n in "abc"]


def test_new_code_brings_its_requirements_txt_or_keeps_the_requirements(stack, tmp_path):
    plain, pinned = tmp_path / "plain", tmp_path / "pinned"
    for folder in (plain, pinned):
        folder.mkdir()
        (folder / "score.py").write_text(SCORE)
    (pinned / "requirements.txt").write_text("\n".join(OLD) + "\n")
    registry.register(stack.cfg, _model(tmp_path), "env-upd")
    endpoints.create(stack.cfg, "env-upd", plain, "score.py", "env-upd", requirements=NEW)
    with pytest.raises(ConflictError, match="changes its requirements"):  # its AWS worker was built for NEW
        Client(stack.cfg, deployed=True).update_endpoint("env-upd", pinned)
    assert Client(stack.cfg).update_endpoint("env-upd", plain).requirements == NEW
    assert Client(stack.cfg).update_endpoint("env-upd", pinned).requirements == OLD
    assert (safepath.ENVS / core_env.environment_id(OLD)).is_dir()


def test_a_package_that_cannot_install_at_first_use_fails_each_attempt_naming_it(stack, tmp_path):
    stack.purge()
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(SCORE)
    registry.register(stack.cfg, _model(tmp_path), "env-late")
    # Stored without a build (another machine's cache, say): the worker builds at first use.
    endpoints.create(stack.cfg, "env-late", code, "score.py", "env-late", requirements=(MISSING,))
    put_files(stack.cfg, "env-late/r/", ["a.txt"])
    job = stack.run_until_done(start(stack, "env-late", "env-late/r/", {"run_max_try": "2"}).job_id)
    assert (job.items_failed, job.items_succeeded) == (1, 0)
    (failure,) = [json.loads(line) for line in read_output(stack.cfg, job, "failures.jsonl").splitlines()]
    assert (failure["error_type"], failure["attempts"]) == ("EnvironmentBuildError", 2)
    assert f"requirement '{MISSING}' could not be installed" in failure["message"]
    assert not (safepath.ENVS / core_env.environment_id((MISSING,))).exists()  # a failed build leaves nothing


# --- a deployment's own worker on AWS (moto in process)


def _zip(size: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("python/blob.bin", b"\0" * size)
    return buffer.getvalue()


def _own_worker_parts(name: str) -> dict[str, object]:
    lam, sqs = aws.client("lambda"), aws.client("sqs")
    functions = [f["FunctionName"] for f in lam.list_functions()["Functions"] if f["FunctionName"] == name]
    queues = sqs.list_queues(QueueNamePrefix=name).get("QueueUrls", [])
    return {"functions": functions, "queues": queues,
            "layers": lam.list_layer_versions(LayerName=name).get("LayerVersions", []),
            "mappings": lam.list_event_source_mappings(FunctionName=name)["EventSourceMappings"] if functions else []}


@pytest.fixture
def deployed(stack, monkeypatch):
    """The stack seen as a deployed one; the stack worker's code and layers, which Lambda would give
    through presigned URLs, are small zips."""
    monkeypatch.setattr(workers, "_download", lambda url: _zip(1000))
    return Client(stack.cfg, deployed=True)


def test_a_deployment_with_requirements_gets_its_own_worker_and_its_mini_batches(stack, deployed, tmp_path):
    stack.purge()
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(SCORE)
    (code / "requirements.txt").write_text("tabulate==0.9.0\n")
    registry.register(stack.cfg, _model(tmp_path), "env-aws")
    endpoints.create(stack.cfg, "env-aws", code, "score.py", "env-aws")  # the default: the stack's worker
    added = deployed.add_deployment("env-aws", "pinned", code, "score.py", "env-aws", {"mini_batch_size": "1"})
    name = workers.worker_name(stack.cfg, "env-aws", "pinned")
    assert added.queue_url.endswith("/" + name) and name.startswith(stack.cfg.deployment_worker_prefix)
    lam, sqs = aws.client("lambda"), aws.client("sqs")
    base = workers.stack_worker(stack.cfg).configuration
    config = lam.get_function(FunctionName=name)["Configuration"]
    for key in ("Runtime", "Handler", "Role", "Timeout", "MemorySize"):
        assert config[key] == base[key], key
    layers = [layer["Arn"] for layer in config["Layers"]]
    (version,) = _own_worker_parts(name)["layers"]
    assert layers == [layer["Arn"] for layer in base.get("Layers", [])] + [version["LayerVersionArn"]]
    variables = config["Environment"]["Variables"]
    assert variables[workers.QUEUE_VAR] == added.queue_url
    assert variables[workers.ENVIRONMENT_VAR] == core_env.environment_id(NEW)
    assert variables["PARALLELRUN_TABLE"] == stack.cfg.table
    queue = sqs.get_queue_attributes(QueueUrl=added.queue_url, AttributeNames=["All"])["Attributes"]
    batch = sqs.get_queue_attributes(QueueUrl=stack.cfg.batch_queue_url, AttributeNames=["All"])["Attributes"]
    assert int(queue["VisibilityTimeout"]) >= int(config["Timeout"])
    assert json.loads(queue["RedrivePolicy"]) == json.loads(batch["RedrivePolicy"])  # the stack's DLQ
    (mapping,) = _own_worker_parts(name)["mappings"]
    assert mapping["EventSourceArn"] == queue["QueueArn"] and mapping["FunctionArn"] == config["FunctionArn"]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # The layer holds the package for Lambda's platform, under python/.
    layer_zip = zipfile.ZipFile(io.BytesIO(_layer_bytes(version["LayerVersionArn"])))
    assert "python/tabulate/__init__.py" in layer_zip.namelist() or "python/tabulate.py" in layer_zip.namelist()

    # Its job's mini-batches go to its queue; the stack's queue gets none.
    put_files(stack.cfg, "env-aws/r/", ["a.txt", "b.txt"])
    job = submit.prepare(stack.cfg, "env-aws", f"s3://{stack.cfg.input_bucket}/env-aws/r/", None, "pinned")
    submit.start(stack.cfg, job)
    assert job.deployment["queue_url"] == added.queue_url  # snapshotted with the job
    stack.plan(job.job_id)
    bodies = _drain(added.queue_url, keep=True)
    assert sorted(json.loads(body)["batch"] for body in bodies) == [0, 1]
    assert all(json.loads(body)["job_id"] == job.job_id for body in bodies)
    assert _drain(stack.cfg.batch_queue_url, keep=False) == []

    # Removed with the deployment, but not while its queue holds a job's mini-batches.
    with pytest.raises(ConflictError, match="still scoring mini-batches"):
        deployed.delete_deployment("env-aws", "pinned")
    deployed.cancel(job.job_id)
    _drain(added.queue_url, keep=False)
    deployed.delete_deployment("env-aws", "pinned")
    assert _own_worker_parts(name) == {"functions": [], "queues": [], "layers": [], "mappings": []}
    with pytest.raises(NotFoundError):
        endpoints.get_deployment(stack.cfg, "env-aws", "pinned")


def _layer_bytes(arn: str) -> bytes:
    """The layer as moto stored it (its presigned location is not served in process)."""
    from moto.awslambda.models import lambda_backends

    backend = lambda_backends["123456789012"]["us-east-1"]
    name, version = arn.split(":")[-2], int(arn.split(":")[-1])
    return backend._layers._layers[name].layer_versions[str(version)].code_bytes


def _drain(queue_url: str, keep: bool) -> list[str]:
    """The queue's message bodies; deleted unless ``keep`` (then made visible again)."""
    sqs = aws.client("sqs")
    bodies = []
    while messages := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                          VisibilityTimeout=30).get("Messages", []):
        bodies += [m["Body"] for m in messages]
        for message in messages:
            if keep:
                sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"],
                                              VisibilityTimeout=0)
            else:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        if keep:
            break
    return bodies


def test_a_worker_over_lambdas_size_limits_is_refused_before_anything_is_made(stack, deployed, tmp_path,
                                                                               monkeypatch):
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(SCORE)
    registry.register(stack.cfg, _model(tmp_path), "env-big")
    endpoints.create(stack.cfg, "env-big", code, "score.py", "env-big")
    big = _zip(251 * 1024 * 1024)  # the stack worker's code alone, extracted, over the limit
    monkeypatch.setattr(workers, "_download", lambda url: big)
    with pytest.raises(InputError, match=r"do not fit a Lambda worker: the function and its layers would be "
                                         r"\d+\.\d MB unzipped .* over Lambda's 250\.0 MB"):
        deployed.add_deployment("env-big", "pinned", code, "score.py", "env-big", requirements=NEW)
    assert _own_worker_parts(workers.worker_name(stack.cfg, "env-big", "pinned")) == {
        "functions": [], "queues": [], "layers": [], "mappings": []}
    with pytest.raises(NotFoundError):  # the deployment stored first is removed again
        endpoints.get_deployment(stack.cfg, "env-big", "pinned")
