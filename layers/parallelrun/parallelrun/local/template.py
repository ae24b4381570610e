"""template.yaml as the local stack creates it: read with CloudFormation's short tags, its code
folders pointed at a bootstrap bucket, translated offline from SAM to plain CloudFormation with
aws-sam-translator, and stripped of what moto's CloudFormation cannot create.

No AWS call here: :mod:`parallelrun.local.provision` creates the stack from what this returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from samtranslator.metrics.metrics import DummyMetricsPublisher, Metrics
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from samtranslator.yaml_helper import intrinsics_multi_constructor

from parallelrun.core.errors import StackError

# Local code paths of each SAM resource type, rewritten to S3 locations before translation.
_CODE_PROPERTIES = {
    "AWS::Serverless::Function": "CodeUri",
    "AWS::Serverless::LayerVersion": "ContentUri",
}
# Resource types moto's CloudFormation cannot create (it would list a resource with no type).
# The queue policy: moto does not enforce resource policies, so the local stack goes without it.
# The bucket policies deny requests without TLS, which is every request to the local server (plain
# HTTP on 127.0.0.1): enforced, they would refuse everything. The planner's asynchronous invocation
# config (retries, on-failure destination) is read from the translated template instead
# (parallelrun.local.functions), and played by parallelrun.local.destinations.
_NOT_CREATED_LOCALLY = ("AWS::SQS::QueuePolicy", "AWS::S3::BucketPolicy", "AWS::Lambda::EventInvokeConfig")


class _TemplateLoader(yaml.SafeLoader):
    """A YAML loader for CloudFormation short tags (!Ref, !Sub, !GetAtt...).

    A subclass, so that registering the tags does not change ``yaml.safe_load`` process-wide
    (``samtranslator.yaml_helper.yaml_parse`` would).
    """


_TemplateLoader.add_multi_constructor("!", intrinsics_multi_constructor)


def read_template(path: Path, overrides: dict[str, str]) -> dict[str, Any]:
    """The template at ``path``, refused if ``overrides`` name a parameter it does not have."""
    template = yaml.load(path.read_text(), Loader=_TemplateLoader)
    unknown = sorted(set(overrides) - set(template.get("Parameters", {})))
    if unknown:
        raise StackError(f"unknown template parameter(s) {unknown} for {path}")
    return template


def default_template() -> Path:
    """template.yaml at the top of the repository (this file is layers/parallelrun/parallelrun/local/)."""
    repository = Path(__file__).resolve().parents[4]
    for candidate in (repository / "template.yaml", Path.cwd() / "template.yaml"):
        if candidate.is_file():
            return candidate
    raise StackError("template.yaml not found in the repository or the current folder: pass template_path")


def point_code_at_bucket(template: dict[str, Any], base: Path, bucket: str) -> dict[str, Path]:
    """Replace each local CodeUri/ContentUri by an object in ``bucket``; return the folders by logical id.

    SAM accepts only S3 locations without the SAM CLI's packaging step, and moto's Lambda reads
    the code object at create time (the code is never run there).
    """
    folders: dict[str, Path] = {}
    for logical_id, resource in template.get("Resources", {}).items():
        prop = _CODE_PROPERTIES.get(resource.get("Type", ""))
        uri = resource.get("Properties", {}).get(prop) if prop else None
        if isinstance(uri, str) and not uri.startswith("s3://"):
            folder = (base / uri).resolve()
            if not folder.is_dir():
                raise StackError(f"{logical_id}: {prop} {uri!r} is not a folder under {base}")
            folders[logical_id] = folder
            resource["Properties"][prop] = {"Bucket": bucket, "Key": f"code/{logical_id}.zip"}
    return folders


@dataclass(frozen=True)
class _Region:
    """What the translator reads of the boto3 session it is given: only its region (for
    ``AWS::Region``, ``AWS::Partition`` and ARNs); no session, so nothing here could call AWS."""

    region_name: str


def translate(template: dict[str, Any], overrides: dict[str, str], region: str) -> dict[str, Any]:
    """The SAM template as plain CloudFormation, translated offline for ``region``.

    Policy templates ship with samtranslator; the managed-policy map (names to ARNs, normally
    read from IAM) is only needed for policies named by bare name, which the template avoids:
    an empty map (``dict()``) keeps it offline.
    """
    # The translator records usage metrics; publishing them to the dummy publisher (a no-op)
    # keeps its destructor from warning about unpublished metrics on stderr.
    metrics = Metrics("ServerlessTransform", DummyMetricsPublisher())
    translator = Translator(None, Parser(), boto_session=_Region(region), metrics=metrics)  # type: ignore[arg-type]
    translated = translator.translate(
        template, parameter_values=dict(overrides), get_managed_policy_map=dict
    )
    metrics.publish()
    return translated


def locally_creatable(translated: dict[str, Any]) -> dict[str, Any]:
    resources = {k: r for k, r in translated["Resources"].items() if r["Type"] not in _NOT_CREATED_LOCALLY}
    return {**translated, "Resources": resources}
