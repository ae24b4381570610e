"""Azure ML v2 batch endpoint and deployment YAML imported as it is, and Azure's v2 setting names
wherever settings are given."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest

from parallelrun.client import sdk
from parallelrun.client.api import Client
from parallelrun.client.cli import main
from parallelrun.core import azure_yaml, settings
from parallelrun.core.errors import InputError, SettingsError
from parallelrun.core.setting_rules import StackLimits
from parallelrun.pipeline import submit
from parallelrun.store import endpoints, jobs, registry
from tests.conftest import put_files, read_output

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "azure_v2"
SCRIPT = """
import os
def init():
    global prefix
    prefix = os.environ.get("ROW_PREFIX", "")
def run(mini_batch):
    return [prefix + os.path.basename(p) for p in mini_batch]
"""


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _code(folder: Path) -> None:
    _write(folder, "src/score.py", SCRIPT)


def _deployment_yaml(folder: Path, endpoint: str, model: str, extra: str = "", name: str = "blue") -> Path:
    _code(folder)
    return _write(folder, f"{name}.yml", textwrap.dedent(f"""\
        name: {name}
        endpoint_name: {endpoint}
        type: model
        model: {model}
        code_configuration:
          code: src
          scoring_script: score.py
        """) + textwrap.dedent(extra))


def test_every_supported_field_reaches_the_deployment_and_the_job(stack, tmp_path, unique):
    endpoint = f"yaml-{unique}"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.pkl").write_bytes(pickle.dumps({"w": 1}))
    _write(tmp_path, "env/conda.yaml", """\
        name: scoring
        channels: [conda-forge]
        dependencies:
          - python=3.11
          - pip
          - pip:
              - tqdm>=4
              - azureml-core==1.57
        """)
    _write(tmp_path, "endpoint.yml", f"""\
        $schema: https://azuremlschemas.azureedge.net/latest/batchEndpoint.schema.json
        name: {endpoint}
        description: an endpoint
        tags: {{team: ml}}
        auth_mode: aad_token
        """)
    model = "{name: yaml-inline, path: model, type: custom_model, description: weights, tags: {kind: test}}"
    path = _deployment_yaml(tmp_path, endpoint, model, name="green", extra="""\
        $schema: https://azuremlschemas.azureedge.net/latest/modelBatchDeployment.schema.json
        description: every field
        tags: {stage: test}
        compute: azureml:batch-cluster
        environment:
          name: scoring-env
          version: 1
          image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:latest
          conda_file: env/conda.yaml
          os_type: linux
        resources:
          instance_count: 2
        settings:
          max_concurrency_per_instance: 3
          mini_batch_size: 5
          output_action: summary_only
          output_file_name: preds.txt
          retry_settings:
            max_retries: 2
            timeout: 45
          error_threshold: 7
          logging_level: debug
          environment_variables:
            ROW_PREFIX: "row-"
        """)
    notes: list[str] = []
    client = Client(stack.cfg)
    assert client.create_endpoint_from_file(tmp_path / "endpoint.yml", on_note=notes.append) == {
        "name": endpoint, "default_deployment": ""}
    created = client.create_deployment_from_file(path, on_note=notes.append)

    stored = endpoints.get_deployment(stack.cfg, endpoint)  # the first deployment is the default
    assert (stored.name, created.name, stored.entry_script) == ("green", "green", "score.py")
    assert stored.settings == {
        "process_count_per_node": 3, "node_count": 2, "mini_batch_size": 5, "output_action": "summary_only",
        "append_row_file_name": "preds.txt", "run_max_try": 2, "run_invocation_timeout": 45, "error_threshold": 7,
        "logging_level": "debug", "environment_variables": {"ROW_PREFIX": "row-"}}
    assert stored.requirements == ("tqdm>=4",)
    model = registry.get(stack.cfg, "yaml-inline", stored.model_version)
    assert (stored.model_name, model.tags, model.description, model.files) == (
        "yaml-inline", {"kind": "test"}, "weights", ("weights.pkl",))
    assert any("compute 'azureml:batch-cluster' is not used" in n for n in notes)
    assert any("environment.image" in n for n in notes) and any("azureml-core==1.57 is not installed" in n for n in notes)
    assert any("auth_mode aad_token" in n for n in notes)

    put_files(stack.cfg, f"{endpoint}/in/", ["a.txt"])
    job = submit.prepare(stack.cfg, endpoint, f"s3://{stack.cfg.input_bucket}/{endpoint}/in/")
    s = job.settings
    assert (s.process_count_per_node, s.node_count, s.concurrency, s.mini_batch_size, s.output_action) == (
        3, 2, 6, "5", "summary_only")
    assert (s.append_row_file_name, s.run_max_try, s.run_invocation_timeout, s.error_threshold, s.logging_level) == (
        "preds.txt", 2, 45, 7, "DEBUG")
    assert s.environment_variables == {"ROW_PREFIX": "row-"} and job.deployment["requirements"] == ["tqdm>=4"]


def test_each_model_form(stack, tmp_path, unique):
    endpoint = f"models-{unique}"
    endpoints.new_endpoint(stack.cfg, endpoint)
    for content in (b"one", b"two"):
        (tmp_path / "m.bin").write_bytes(content)
        registry.register(stack.cfg, tmp_path / "m.bin", f"reg-{unique}")
    client = Client(stack.cfg)

    def deploy(name: str, model: str) -> endpoints.Deployment:
        return client.create_deployment_from_file(_deployment_yaml(tmp_path, endpoint, model, name=name))

    assert deploy("pinned", f"azureml:reg-{unique}:1").model_ref == f"reg-{unique}:1"
    assert deploy("latest", f"azureml:reg-{unique}@latest").model_ref == f"reg-{unique}:2"  # resolved now
    (tmp_path / "local.pkl").write_bytes(b"local")
    assert deploy("path", "local.pkl").model_ref == f"{endpoint}-path:1"  # a path, named after its deployment
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.bin").write_bytes(b"a")
    inline = f"{{name: inline-{unique}, path: folder}}"
    assert deploy("inline", inline).model_ref == f"inline-{unique}:1"
    assert deploy("again", inline).model_ref == f"inline-{unique}:1"  # the same content is not registered twice
    assert deploy("pin-one", f"{{name: inline-{unique}, path: folder, version: 1}}").model_ref == f"inline-{unique}:1"
    (tmp_path / "folder" / "a.bin").write_bytes(b"changed")
    assert deploy("changed", inline).model_ref == f"inline-{unique}:2"
    with pytest.raises(InputError, match=f"model.version 1: .*inline-{unique}:1 holds other content"):
        deploy("clash", f"{{name: inline-{unique}, path: folder, version: 1}}")
    for refused in (f"azureml:reg-{unique}", f"azureml:reg-{unique}@prod",
                    "azureml://registries/azureml/models/digits/versions/1", "azureml://datastores/d/paths/m"):
        with pytest.raises(InputError, match="azureml:NAME:VERSION or azureml:NAME@latest"):
            deploy("refused", refused)
    with pytest.raises(InputError, match="model.path: 'https://example.com/m.pkl' is not supported: a local path"):
        deploy("refused", "{path: 'https://example.com/m.pkl'}")


@pytest.mark.parametrize("extra, error, where, allowed", [
    ("environment: azureml:my-env:1\n", InputError, "environment: 'azureml:my-env:1' is not supported",
     "a registered Azure environment cannot be read outside Azure"),
    ("environment: {build: {path: docker}}\n", InputError, "environment.build", "a Docker build context"),
    ("modle: azureml:x:1\n", InputError, "modle: not a field", "it reads $schema, name"),
    ("settings: {mini_batch_sise: 3}\n", InputError, "settings.mini_batch_sise: not a field",
     "max_concurrency_per_instance"),
    ("resources: {instance_type: Standard_DS3_v2}\n", InputError, "resources.instance_type", "it reads instance_count"),
    ("settings: {output_action: append}\n", SettingsError, "setting settings.output_action='append'",
     "append_row, summary_only"),
    ("settings: {retry_settings: {max_retries: 9}}\n", SettingsError, "settings.retry_settings.max_retries=9",
     "MaxReceiveCount"),
    ("environment: {conda_file: {dependencies: [python, numpy=1.26]}}\n", InputError,
     "environment.conda_file.dependencies[1]: 'numpy=1.26'", "list it under pip:"),
    ("environment: {conda_file: {dependencies: [{pip: [--extra-index-url x]}]}}\n", InputError,
     "environment.conda_file.dependencies[0].pip[0]", "pip options"),
])
def test_a_field_it_cannot_honour_is_refused_by_its_path(tmp_path, extra, error, where, allowed):
    path = _deployment_yaml(tmp_path, "ep", "azureml:m:1", extra)
    with pytest.raises(error) as caught:
        azure_yaml.read_deployment(path, StackLimits())
    assert where in str(caught.value) and allowed in str(caught.value)


def test_type_pipeline_auth_keys_and_the_legacy_root_settings(tmp_path):
    with pytest.raises(InputError, match="type: 'pipeline' is not supported: pipeline component deployments"):
        azure_yaml.read_deployment(_write(tmp_path, "p.yml", "type: pipeline\nmodel: azureml:m:1\n"))
    with pytest.raises(InputError, match="auth_mode: 'key' is not supported: aad_token"):
        azure_yaml.read_endpoint(_write(tmp_path, "e.yml", "name: e\nauth_mode: key\n"))
    assert azure_yaml.read_endpoint(_write(tmp_path, "d.yml", "name: e\ndefaults: {deployment_name: blue}\n")) \
        .default_deployment == "blue"
    # Before type: (CLI 1.7) the settings sat at the root; with type: model they must be under settings:.
    _code(tmp_path)
    legacy = _write(tmp_path, "legacy.yml", "model: azureml:m:1\nmini_batch_size: 4\nretry_settings: {timeout: 9}\n"
                    "code_configuration: {code: src, scoring_script: score.py}\n")
    assert azure_yaml.read_deployment(legacy).settings == {"mini_batch_size": 4, "retry_settings.timeout": 9}
    with pytest.raises(InputError, match="^.*: mini_batch_size: not a field"):
        azure_yaml.read_deployment(_write(tmp_path, "typed.yml", "type: model\nmodel: azureml:m:1\nmini_batch_size: 4\n"))


def test_the_conda_pip_list_becomes_the_requirements(tmp_path):
    path = _deployment_yaml(tmp_path, "ep", "azureml:m:1", """\
        environment:
          conda_file:
            channels: [conda-forge]
            dependencies:
              - python
              - pip<24
              - pip: ["pandas==3.1.1", " scikit-learn>=1.5 ", Azureml_Core, "azureml-dataset-runtime[fuse]"]
        """)
    spec = azure_yaml.read_deployment(path)
    assert spec.requirements == ("pandas==3.1.1", "scikit-learn>=1.5")
    assert [n.split(" is not installed")[0] for n in spec.notes] == ["Azureml_Core", "azureml-dataset-runtime[fuse]"]
    assert azure_yaml.read_deployment(_deployment_yaml(tmp_path, "ep", "azureml:m:1", "environment: {image: x}\n")) \
        .requirements == ()


def test_the_example_reads_as_documented():
    spec = azure_yaml.read_deployment(EXAMPLES / "deployment.yml")
    assert (spec.endpoint, spec.name, spec.entry_script) == ("digits-batch", "digits-dpl", "batch_driver.py")
    assert spec.code_dir == EXAMPLES / "code" and spec.model == azure_yaml.ModelSpec(name="digits-folder")
    assert spec.requirements == ("numpy", "pandas", "pillow", "scikit-learn")
    assert azure_yaml.read_endpoint(EXAMPLES / "endpoint.yml").name == spec.endpoint


def test_the_cli_imports_azure_yaml_and_takes_v2_names_end_to_end(stack, tmp_path, unique, capsys):
    stack.purge()
    cli = ["--stack", stack.spec.stack_name]
    endpoint = f"cli-yaml-{unique}"
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(0))
    assert main([*cli, "models", "register", str(tmp_path / "model.pkl"), "--name", f"m-{unique}"]) == 0
    _write(tmp_path, "endpoint.yml", f"name: {endpoint}\ndescription: from YAML\n")
    path = _deployment_yaml(tmp_path, endpoint, f"azureml:m-{unique}@latest", """\
        settings:
          mini_batch_size: 2
          max_concurrency_per_instance: 2
          output_file_name: predictions.csv
        """)
    assert main([*cli, "endpoints", "create", "--file", str(tmp_path / "endpoint.yml")]) == 0
    assert main([*cli, "deployments", "create", "--file", str(path)]) == 0
    assert f"created deployment blue of endpoint {endpoint} (model m-{unique}:1), the endpoint's default" \
        in capsys.readouterr().out
    assert main([*cli, "deployments", "create", endpoint, "green", "--file", str(path), "--set-default",
                 "--set", "max_concurrency_per_instance=1"]) == 0  # CLI names win over the YAML's
    assert endpoints.get_deployment(stack.cfg, endpoint).settings["process_count_per_node"] == "1"
    assert main([*cli, "endpoints", "update", endpoint, "--set", "max_concurrency_per_instance=3"]) == 0
    assert endpoints.get_deployment(stack.cfg, endpoint, "green").settings["process_count_per_node"] == "3"
    capsys.readouterr()

    bad = _deployment_yaml(tmp_path, endpoint, f"azureml:m-{unique}:1", "environment: azureml:my-env:1\n", name="red")
    assert main([*cli, "deployments", "create", "--file", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "environment: 'azureml:my-env:1' is not supported" in err
    assert main([*cli, "deployments", "create", "--file", str(bad), "--code", "x"]) == 1
    assert "--code: not with --file" in capsys.readouterr().err

    put_files(stack.cfg, f"{endpoint}/in/", [f"{i}.txt" for i in range(5)])
    uri = f"s3://{stack.cfg.input_bucket}/{endpoint}/in/"
    assert main([*cli, "submit", "--endpoint", endpoint, "--input", uri, "--deployment", "blue",
                 "--set", "instance_count=2", "--set", "node_count=3"]) == 1
    assert "node_count and instance_count name one setting, and instance_count is given as '2'" in capsys.readouterr().err
    out = f"s3://{stack.cfg.artifacts_bucket}/exports/{endpoint}/"
    assert main([*cli, "submit", "--endpoint", endpoint, "--input", uri, "--deployment", "blue",
                 "--set", "retry_settings.max_retries=2", "--set", "retry_settings.timeout=40",
                 "--set", "mini_batch_error_threshold=0", "--set", "instance_count=2",
                 "--set", f"append_row_to={out}"]) == 0
    job = stack.run_until_done(capsys.readouterr().out.strip())
    assert job.state == jobs.SUCCEEDED, job.reason
    s = job.settings
    assert (s.run_max_try, s.run_invocation_timeout, s.allowed_failed_count, s.node_count, s.concurrency) == (
        2, 40, 0, 2, 4)
    assert job.output_uri == out and s.output_file_name == "predictions.csv"
    assert read_output(stack.cfg, job).splitlines() == [f"{i}.txt" for i in range(5)]
    client = Client(stack.cfg)  # a schedule keeps its settings under one name each: its runs write below output_path
    schedule = client.create_schedule(endpoint, f"nightly-{unique}", uri, "rate(1 day)",
                                      {"append_row_to": f"{out}nightly/", "instance_count": 2})
    assert schedule.settings == {"output_path": f"{out}nightly/", "node_count": 2}
    client.delete_schedule(schedule.name)
    again = sdk.Job(client, job.job_id).resubmit(max_concurrency_per_instance=1)  # over the kept setting
    assert stack.run_until_done(again.job_id).settings.concurrency == 2  # 1 per instance, 2 instances


def test_v2_names_are_one_setting_with_parallelrunconfigs(tmp_path):
    resolved = settings.resolve({"max_concurrency_per_instance": "4", "retry_settings": {"max_retries": 1, "timeout": 5},
                                 "output_file_name": "out.csv", "mini_batch_error_threshold": 2, "instance_count": 3,
                                 "append_row_to": "s3://bucket-a/out/", "process_count_per_node": 4})
    assert (resolved.process_count_per_node, resolved.run_max_try, resolved.run_invocation_timeout,
            resolved.append_row_file_name, resolved.allowed_failed_count, resolved.node_count, resolved.output_path) == (
        4, 1, 5, "out.csv", 2, 3, "s3://bucket-a/out/")
    with pytest.raises(SettingsError) as caught:
        settings.resolve({"output_file_name": "a.txt", "append_row_file_name": "b.txt"})
    assert caught.value.setting == "append_row_file_name" and "output_file_name" in caught.value.allowed
    with pytest.raises(SettingsError) as caught:  # a bad value is named as it was given
        settings.resolve({"append_row_to": "${{outputs.job_output}}"})
    assert caught.value.setting == "append_row_to" and "s3://bucket/prefix" in caught.value.allowed
    with pytest.raises(SettingsError, match="retry_settings.max_retry.*Azure ML v2's names too"):
        settings.resolve({"retry_settings": {"max_retry": 2}})
    # A drop folder's marker may set them where it may set ParallelRunConfig's names.
    settings.check_drop_overrides({"max_concurrency_per_instance": 2, "retry_settings.timeout": 30})
    with pytest.raises(SettingsError, match="one value"):
        settings.check_drop_overrides({"instance_count": 2, "node_count": 1})
