"""A deployment chooses its compute: `compute: ecs` jobs go to the ECS queue, which no Lambda-like
worker reads; what Lambda cannot honour is refused at submit naming `compute: ecs`; every compute
value is checked (Fargate's task sizes, GPUs, images) and must fit the stack's ECS task."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from parallelrun import aws
from parallelrun.aws import sqs
from parallelrun.client import cli, commands
from parallelrun.client.api import Client
from parallelrun.client.demo import load_example
from parallelrun.core import compute, settings
from parallelrun.core.azure_yaml import read_deployment
from parallelrun.core.errors import SettingsError
from parallelrun.core.setting_rules import MAX_ECS_RUN_INVOCATION_TIMEOUT, StackLimits
from parallelrun.local import lambdas
from parallelrun.pipeline import submit
from parallelrun.store import endpoints, jobs
from tests.conftest import put_files, read_output

SCRIPT = """
def init():
    pass

def run(mini_batch):
    return [p.rsplit("/", 1)[-1] for p in mini_batch]
"""
ECS = {"compute": "ecs", "run_invocation_timeout": "7200"}


def _bodies(queue_url: str) -> list[dict[str, Any]]:
    """The queue's messages, left on it (made visible again at once)."""
    client = aws.client("sqs")
    found = []
    while messages := client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                             VisibilityTimeout=30).get("Messages", []):
        found += messages
    for message in found:
        client.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"],
                                         VisibilityTimeout=0)
    return [json.loads(m["Body"]) for m in found]


def test_an_ecs_deployment_s_job_goes_to_the_ecs_queue_and_no_lambda_takes_it(stack: Any, make_endpoint: Any) -> None:
    name = make_endpoint(SCRIPT, settings=ECS)
    folder = f"{name}/in/"
    inputs = [f"{i:02d}.txt" for i in range(5)]
    put_files(stack.cfg, folder, inputs)
    job = submit.prepare(stack.cfg, name, f"s3://{stack.cfg.input_bucket}/{folder}", {"mini_batch_size": "2"})
    assert job.deployment["compute"]["compute"] == "ecs" and job.settings.run_invocation_timeout == 7200
    submit.start(stack.cfg, job)
    stack.plan(job.job_id)
    assert sorted(b["batch"] for b in _bodies(stack.cfg.ecs_queue_url) if b["job_id"] == job.job_id) == [0, 1, 2]
    assert [b for b in _bodies(stack.cfg.batch_queue_url) if b["job_id"] == job.job_id] == []

    # Every Lambda-like function polls its template event sources: none is the ECS queue, so the
    # job stays running with nothing done however long they run.
    for _ in range(3):
        for function in ("PlannerFunction", "WorkerFunction", "FailureRecorderFunction", "AggregatorFunction"):
            stack.deliver(function, max_rounds=20)
    running = jobs.get(stack.cfg, job.job_id)
    assert running.state not in jobs.TERMINAL
    assert len([b for b in _bodies(stack.cfg.ecs_queue_url) if b["job_id"] == job.job_id]) == 3

    # The same worker core, fed from the ECS queue (as `parallelrun worker` polls it), completes it.
    context = lambdas.LambdaContext("ecs-worker", 4096, MAX_ECS_RUN_INVOCATION_TIMEOUT, "ecs")
    arn = sqs.queue_arn(stack.cfg.ecs_queue_url)
    for _ in range(20):
        lambdas.poll_once(stack.cfg.ecs_queue_url, arn, stack.spec.region, 1, True,
                          lambda event: stack.handlers["WorkerFunction"](event, context), wait_seconds=0)
        stack.deliver("AggregatorFunction", max_rounds=5)
        if jobs.get(stack.cfg, job.job_id).state in jobs.TERMINAL:
            break
    done = jobs.get(stack.cfg, job.job_id)
    assert done.state == jobs.SUCCEEDED, done
    assert read_output(stack.cfg, done).splitlines() == inputs


def test_a_lambda_deployment_refuses_a_timeout_lambda_cannot_honour_naming_compute_ecs(
        stack: Any, make_endpoint: Any) -> None:
    lam, ecs = make_endpoint(SCRIPT), make_endpoint(SCRIPT, settings={"compute": "ecs"})
    put_files(stack.cfg, f"{lam}/in/", ["a.txt"])
    uri = f"s3://{stack.cfg.input_bucket}/{lam}/in/"
    bound = stack.cfg.limits.max_run_invocation_timeout
    with pytest.raises(SettingsError, match=rf"run_invocation_timeout.*3600.*1 to {bound}.*compute: ecs") as refused:
        submit.prepare(stack.cfg, lam, uri, {"run_invocation_timeout": "3600"})
    assert "WorkerTimeout" in str(refused.value)
    assert submit.prepare(stack.cfg, ecs, uri, {"run_invocation_timeout": "3600"}).settings.run_invocation_timeout == 3600
    over = str(MAX_ECS_RUN_INVOCATION_TIMEOUT + 1)
    with pytest.raises(SettingsError, match=rf"run_invocation_timeout.*{over}.*1 to {MAX_ECS_RUN_INVOCATION_TIMEOUT}"):
        submit.prepare(stack.cfg, ecs, uri, {"run_invocation_timeout": over})
    # A job cannot move itself to other compute: its deployment chooses.
    with pytest.raises(SettingsError, match=r"setting compute='ecs' is not allowed: nothing per job: it is a deployment's setting"):
        submit.prepare(stack.cfg, lam, uri, {"compute": "ecs"})
    # An hour is refused at create too, where the deployment runs on Lambda.
    with pytest.raises(SettingsError, match="compute: ecs"):
        make_endpoint(SCRIPT, settings={"run_invocation_timeout": "3600"})


@pytest.mark.parametrize(("given", "setting", "allowed"), [
    ({"compute": "k8s"}, "compute", "lambda .* or ecs"),
    ({"compute": "lambda", "gpu": "1"}, "gpu", "nothing with compute: lambda"),
    ({"compute": "ecs", "cpu": "300"}, "cpu", "Fargate's sizes .*256 with 512, 1024 or 2048"),
    ({"compute": "ecs", "cpu": "256", "memory": "4096"}, "memory", "Fargate gives with cpu 256: 256 with 512, 1024 or 2048"),
    ({"compute": "ecs", "cpu": "1024", "memory": "1024"}, "memory", "1024 with 2048-8192"),
    ({"compute": "ecs", "cpu": "8192", "memory": "18432"}, "memory", "8192 with 16384-61440 in steps of 4096"),
    ({"compute": "ecs", "cpu": "1 vCPU"}, "cpu", "CPU units"),
    ({"compute": "ecs", "gpu": "9"}, "gpu", "from 0 to 8"),
    ({"compute": "ecs", "gpu": "-1"}, "gpu", "from 0 to 8"),
    ({"compute": "ecs", "gpu": "1", "cpu": "100"}, "cpu", "from 128 to 196608 on a GPU instance"),
    ({"compute": "ecs", "image": "My Image:latest"}, "image", "an image reference"),
])
def test_bad_compute_values_are_refused_with_what_is_allowed(given: dict[str, str], setting: str, allowed: str) -> None:
    with pytest.raises(SettingsError, match=rf"setting {setting}=.* is not allowed: .*{allowed}"):
        compute.parse(given)


def test_good_compute_values_and_their_defaults() -> None:
    assert compute.parse({}) == compute.Compute() and not compute.parse({"compute": "LAMBDA"}).is_ecs
    assert compute.parse({"compute": "ecs"}) == compute.Compute("ecs", 1024, 4096, 0, "")
    # Every size Fargate lists is taken, and a GPU task is not held to them.
    for cpu, memories in compute.FARGATE_SIZES.items():
        assert {compute.parse({"compute": "ecs", "cpu": cpu, "memory": m}).memory for m in memories} == set(memories)
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/parallelrun-worker:gpu-1.0"
    gpu = compute.parse({"compute": "ecs", "gpu": 1, "cpu": "3000", "memory": "15000", "image": image})
    assert (gpu.cpu, gpu.memory, gpu.gpu, gpu.image) == (3000, 15000, 1, image)
    assert compute.parse({"compute": "ecs", "image": "pytorch/pytorch:2.3.1-cuda12.1-cudnn8-runtime"}).image
    assert compute.from_dict(gpu.to_dict()) == gpu and compute.from_dict(None) == compute.Compute()


def test_a_deployment_must_fit_the_stack_s_ecs_task(stack: Any, make_endpoint: Any, monkeypatch: Any) -> None:
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/parallelrun-worker:cpu"
    task = compute.EcsTask(cpu=2048, memory=8192, gpu=0, image=image)
    assert compute.EcsTask.from_text(task.text()) == task and compute.EcsTask.from_text("") is None
    compute.check_fits(compute.parse({"compute": "ecs", "cpu": 2048, "memory": 8192, "image": image}), task)
    with pytest.raises(SettingsError, match=r"setting gpu=1 is not allowed: at most 0, what this stack's ECS task gives"):
        compute.check_fits(compute.parse({"compute": "ecs", "gpu": 1}), task)
    with pytest.raises(SettingsError, match=r"setting memory=16384 is not allowed: at most 8192"):
        compute.check_fits(compute.parse({"compute": "ecs", "cpu": 2048, "memory": 16384}), task)
    with pytest.raises(SettingsError, match=rf"setting image='other/image:1' is not allowed: {image}, the image this stack's"):
        compute.check_fits(compute.parse({"compute": "ecs", "image": "other/image:1"}), task)
    # Checked against the stack when the deployment is made, and again at submit.
    name = make_endpoint(SCRIPT, settings={"compute": "ecs", "gpu": "1"})
    small = dataclasses.replace(stack.cfg, ecs_task=task.text())
    with pytest.raises(SettingsError, match="setting gpu=1 is not"):
        submit.prepare(small, name, f"s3://{stack.cfg.input_bucket}/{name}/in/")
    with pytest.raises(SettingsError, match="setting gpu=1 is not"):
        endpoints.add_deployment(small, name, "big", None, None, name, {"compute": "ecs", "gpu": 1})


def test_requirements_belong_in_an_ecs_deployment_s_image(stack: Any, make_endpoint: Any, tmp_path: Path) -> None:
    name = make_endpoint(SCRIPT)
    code = tmp_path / "with-requirements"
    code.mkdir()
    (code / "score.py").write_text(SCRIPT)
    (code / "requirements.txt").write_text("tabulate==0.9.0\n")
    with pytest.raises(SettingsError, match=r"setting requirements='tabulate==0.9.0' is not allowed: none with compute: ecs: install them in the worker image"):
        endpoints.add_deployment(stack.cfg, name, "gpu", code, "score.py", name, {"compute": "ecs"})


def test_compute_is_kept_changed_and_dropped_with_the_deployment(stack: Any, make_endpoint: Any) -> None:
    name = make_endpoint(SCRIPT, settings={"compute": "ecs", "cpu": "2048", "memory": "8192", "mini_batch_size": "3"})
    stored = endpoints.get_deployment(stack.cfg, name)
    assert stored.compute == compute.Compute("ecs", 2048, 8192, 0, "")
    assert stored.settings == {"mini_batch_size": "3"}  # run settings and compute kept apart
    # An update changes one size and keeps the rest; naming another kind starts from its defaults.
    assert endpoints.update(stack.cfg, name, overrides={"memory": "16384"}).compute.memory == 16384
    assert endpoints.get_deployment(stack.cfg, name).compute.cpu == 2048
    with pytest.raises(SettingsError, match="run_invocation_timeout"):  # 7200 s would not fit Lambda
        endpoints.update(stack.cfg, name, overrides={"run_invocation_timeout": "7200", "compute": "lambda"})
    assert endpoints.update(stack.cfg, name, overrides={"compute": "lambda"}).compute == compute.Compute()
    assert endpoints.update(stack.cfg, name, overrides={"compute": "ecs", "gpu": 2}).compute.gpu == 2


def test_the_cli_gives_compute_options_as_deployment_settings() -> None:
    args = cli.parser().parse_args(["deployments", "create", "ep", "gpu", "--code", "c", "--entry-script", "s.py",
                                    "--model", "m", "--compute", "ecs", "--gpu", "1", "--set", "mini_batch_size=4"])
    assert commands._deployment_settings(args) == {"compute": "ecs", "gpu": "1", "mini_batch_size": "4"}
    lam = cli.parser().parse_args(["endpoints", "update", "ep", "--set", "compute=ecs"])
    assert commands._deployment_settings(lam) == {"compute": "ecs"}


def test_settings_alone_know_no_compute() -> None:
    """``resolve`` refuses compute names as unknown run settings: only a deployment splits them off."""
    with pytest.raises(SettingsError, match="known settings are"):
        settings.resolve({"gpu": 1}, limits=StackLimits())


def test_azure_yaml_compute_is_noted_not_mapped(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text(SCRIPT)
    yml = tmp_path / "deployment.yml"
    yml.write_text("name: gpu\nendpoint_name: ep\nmodel: azureml:m:1\ncompute: azureml:gpu-cluster\n"
                   "code_configuration:\n  code: code\n  scoring_script: score.py\n")
    (note,) = read_deployment(yml).notes
    assert "azureml:gpu-cluster" in note and "--compute ecs" in note


def test_the_local_stack_creates_no_ecs_resource(stack: Any) -> None:
    """The local stack provisions template.yaml with EcsWorkers=none: its conditions keep every ECS
    resource out (moto's ECS is partial), and the ECS queue is there for `parallelrun worker --local`."""
    listed = aws.client("cloudformation").describe_stack_resources(StackName=stack.spec.stack_name)["StackResources"]
    types = {r["ResourceType"] for r in listed if "ResourceType" in r}
    assert "AWS::SQS::Queue" in types and "AWS::Lambda::Function" in types
    assert not [t for t in types if t.startswith(("AWS::ECS::", "AWS::ApplicationAutoScaling::", "AWS::AutoScaling::",
                                                  "AWS::EC2::", "AWS::CloudWatch::"))], types
    assert stack.cfg.ecs_task == "" and stack.cfg.ecs_queue_url not in ("", stack.cfg.batch_queue_url)


def test_the_pytorch_example_deploys_on_ecs_without_torch(stack: Any, tmp_path: Path) -> None:
    """examples/pytorch_ecs as far as it runs without torch, which is not a parallelrun dependency
    (too heavy for this suite): its scripts compile, and its deployment (compute: ecs on a GPU, an
    hour a mini-batch) is made through the Client as the example makes it. Training and scoring
    need `pip install torch` (examples/pytorch_ecs/README.md); they are not run here."""
    example = Path(load_example("pytorch_ecs", "deploy").__file__).parent
    for script in ("code/score.py", "make_model.py", "deploy.py"):
        compile((example / script).read_text(), script, "exec")
    assert "torch.cuda.is_available()" in (example / "code" / "score.py").read_text()
    deploy = load_example("pytorch_ecs", "deploy")
    given, run = compute.split(deploy.SETTINGS)
    with pytest.raises(SettingsError, match="compute: ecs"):  # an hour a mini-batch is past Lambda
        settings.resolve(run, limits=stack.cfg.limits)
    model = tmp_path / "model.pt"
    model.write_bytes(b"a TorchScript model, never loaded here")
    ref = deploy.deploy(Client(stack.cfg), model)
    made = endpoints.get_deployment(stack.cfg, deploy.ENDPOINT)
    assert (made.compute, made.model_ref, made.entry_script) == (compute.parse(given), ref, "score.py")
    assert made.compute.gpu == 1 and made.settings["run_invocation_timeout"] == 3600


def test_an_azure_yaml_deployment_given_compute_ecs_keeps_its_long_timeout(stack: Any, tmp_path: Path) -> None:
    """Azure's retry_settings.timeout of hours is refused for Lambda, kept with --compute ecs."""
    from parallelrun.client import azure_import
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text(SCRIPT)
    model = tmp_path / "model.pkl"
    model.write_bytes(b"model")
    yml = tmp_path / "deployment.yml"
    yml.write_text(f"name: gpu\nendpoint_name: ep\nmodel: {{name: azure-long, path: {model}}}\n"
                   "code_configuration:\n  code: code\n  scoring_script: score.py\n"
                   "settings:\n  retry_settings:\n    timeout: 7200\n")
    with pytest.raises(SettingsError, match=r"settings.retry_settings.timeout.*compute: ecs"):
        azure_import.deployment_args(stack.cfg, yml)
    found = azure_import.deployment_args(stack.cfg, yml, overrides={"compute": "ecs", "gpu": "1"})
    assert found.settings["run_invocation_timeout"] == 7200 and found.settings["compute"] == "ecs"
