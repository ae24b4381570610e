"""Reading and translating template.yaml for the local stack (:mod:`parallelrun.local.template`)
and picking its functions (:mod:`parallelrun.local.functions`), offline: no moto, no AWS call."""

from __future__ import annotations

from pathlib import Path

import pytest

from parallelrun.core.errors import StackError
from parallelrun.local import functions, template

SAM = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  Timeout:
    Type: Number
    Default: 30
Resources:
  Inbox:
    Type: AWS::SQS::Queue
  InboxPolicy:
    Type: AWS::SQS::QueuePolicy
    Properties:
      Queues: [!Ref Inbox]
      PolicyDocument: {Statement: []}
  Echo:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: code/
      Handler: app.handler
      Runtime: python3.11
      Timeout: !Ref Timeout
      Environment:
        Variables:
          QUEUE: !GetAtt Inbox.Arn
"""


@pytest.fixture
def template_path(tmp_path: Path) -> Path:
    (tmp_path / "code").mkdir()
    path = tmp_path / "template.yaml"
    path.write_text(SAM)
    return path


def test_short_tags_are_read_without_changing_yaml_safe_load(template_path: Path) -> None:
    import yaml

    read = template.read_template(template_path, {"Timeout": "5"})
    assert read["Resources"]["Echo"]["Properties"]["Timeout"] == {"Ref": "Timeout"}
    assert read["Resources"]["Echo"]["Properties"]["Environment"]["Variables"]["QUEUE"] == {"Fn::GetAtt": ["Inbox", "Arn"]}
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load("x: !Ref Inbox")


def test_an_unknown_parameter_is_refused(template_path: Path) -> None:
    with pytest.raises(StackError, match=r"unknown template parameter\(s\) \['Timout'\]"):
        template.read_template(template_path, {"Timout": "5"})


def test_code_folders_become_objects_of_the_bootstrap_bucket(template_path: Path) -> None:
    read = template.read_template(template_path, {})
    folders = template.point_code_at_bucket(read, template_path.parent, "boot")
    assert folders == {"Echo": (template_path.parent / "code").resolve()}
    assert read["Resources"]["Echo"]["Properties"]["CodeUri"] == {"Bucket": "boot", "Key": "code/Echo.zip"}
    read["Resources"]["Echo"]["Properties"]["CodeUri"] = "missing/"
    with pytest.raises(StackError, match="'missing/' is not a folder"):
        template.point_code_at_bucket(read, template_path.parent, "boot")


def test_the_translation_is_plain_cloudformation_without_what_moto_cannot_create(template_path: Path) -> None:
    read = template.read_template(template_path, {})
    template.point_code_at_bucket(read, template_path.parent, "boot")
    translated = template.translate(read, {}, "us-east-1")
    types = {logical_id: r["Type"] for logical_id, r in translated["Resources"].items()}
    assert types["Echo"] == "AWS::Lambda::Function" and types["InboxPolicy"] == "AWS::SQS::QueuePolicy"
    creatable = template.locally_creatable(translated)
    assert "InboxPolicy" not in creatable["Resources"] and "Echo" in creatable["Resources"]
    assert "InboxPolicy" in translated["Resources"]  # the translation itself is left whole
    assert functions.function_ids(translated, {"Echo": "echo-123"}) == ["Echo"]
    assert functions.function_ids(translated, {}) == []  # a false Condition: not created, not run


def test_an_image_function_is_refused_locally() -> None:
    translated = {"Resources": {"Worker": {"Type": "AWS::Lambda::Function", "Properties": {"PackageType": "Image"}}}}
    with pytest.raises(StackError, match="runs Zip functions only"):
        functions.function_ids(translated, {"Worker": "worker-1"})
