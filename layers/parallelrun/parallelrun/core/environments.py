"""What a deployment's environment is, with nothing run: its requirement lines checked for safety,
its identity (the hash that names its cached virtual environment and its Lambda worker), what
pip's output says failed, and Lambda's size limits for the layer that carries it on AWS.

A requirement line reaches ``pip install`` on the workers' machines, so only a plain PEP 508
requirement is accepted: a project name, optional extras, version specifiers and an environment
marker. Everything else pip reads from a requirement line can do more than pick a release:
options (``-e``, ``-r``, ``--index-url``, ``--extra-index-url``, ``--global-option``, ...) change
where pip looks or run build steps, and a local path, a URL or a direct reference (``name @ URL``)
installs code from somewhere other than the package index the worker's pip is configured with.
A private index belongs in pip's own configuration (``PIP_INDEX_URL``), not in a deployment.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from parallelrun.core.errors import InputError

# The interpreter every environment is built for: Lambda's runtime (template.yaml: python3.11)
# and the project's own requires-python.
PYTHON_VERSION = "3.11"
LAMBDA_PLATFORM = "manylinux2014_x86_64"

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_VERSION = r"[A-Za-z0-9.*+!_-]+"
_SPEC = rf"(?:~=|===|==|!=|<=|>=|<|>)\s*{_VERSION}"
_MARKER = r"[A-Za-z0-9_.'\"<>=!~ ()]+"  # no '@', '/', ':', '-' runs: a marker cannot smuggle an option or URL
_REQUIREMENT = re.compile(
    rf"^(?P<name>{_NAME})\s*(?:\[\s*{_NAME}(?:\s*,\s*{_NAME})*\s*\])?\s*"
    rf"(?:\(?\s*{_SPEC}(?:\s*,\s*{_SPEC})*\s*\)?)?\s*(?:;\s*{_MARKER})?$")


def parse_requirements_file(text: str) -> list[str]:
    """The requirement lines of a requirements.txt: comments and blank lines dropped (each line is
    then checked by :func:`check`, which refuses the options a file may also hold)."""
    lines = []
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if line:
            lines.append(line)
    return lines


def check(lines: Iterable[str]) -> tuple[str, ...]:
    """The lines, stripped, each a plain requirement; an :class:`InputError` names the first that
    is not and says why (see the module doc)."""
    checked = []
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if "--" in line or line.startswith("-"):
            raise InputError(f"requirement {line!r}: pip options are not allowed in a deployment's requirements "
                             "(a private index goes in pip's configuration, PIP_INDEX_URL)")
        if "://" in line or "@" in line or "/" in line or "\\" in line or line.startswith((".", "~")):
            raise InputError(f"requirement {line!r}: a URL, a local path or a direct reference would install code "
                             "from outside the package index; name a released package (name==version)")
        if not _REQUIREMENT.match(line):
            raise InputError(f"requirement {line!r} is not a package name with optional extras, version "
                             "specifiers and a marker (PEP 508), such as 'six==1.16.0'")
        checked.append(line)
    return tuple(checked)


def environment_id(requirements: Iterable[str]) -> str:
    """The environment's identity: the same requirements (in any order) for the same Python give
    the same id, so one environment serves every deployment that asks for them."""
    text = "\n".join(sorted(line.strip() for line in requirements)) + f"\npython{PYTHON_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


_FAILED = [
    re.compile(r"No matching distribution found for ([^\s]+)"),
    re.compile(r"Could not find a version that satisfies the requirement ([^\s]+)"),
    re.compile(r"Failed (?:building wheel for|to build) ([^\s]+)"),
    re.compile(r"Cannot install ([^\s]+(?: and [^\s]+)?) because these package versions have conflicting"),
    re.compile(r"Invalid requirement: '([^']+)'"),
]


def failed_package(pip_output: str) -> str | None:
    """The requirement pip's output says it could not install, or None if it names none."""
    for pattern in _FAILED:
        found = pattern.search(pip_output)
        if found:
            return found.group(1).rstrip(",.")
    return None


def pip_error(pip_output: str) -> str:
    """pip's own words for why it stopped: its last ``ERROR:`` line (else its last line)."""
    lines = [line.strip() for line in pip_output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["pip gave no output"])[-1]


# --- Lambda's limits for a function built from a layer
# https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html: a deployment package
# uploaded directly is at most 50 MB zipped; a function and all its layers at most 250 MB
# unzipped; a function has at most five layers.
MAX_ZIPPED_UPLOAD = 50 * 1024 * 1024
MAX_UNZIPPED = 250 * 1024 * 1024
MAX_LAYERS = 5


@dataclass(frozen=True)
class LambdaSizes:
    """What a deployment's worker function would weigh: its new layer, and the stack's worker's
    code and layers it shares."""

    layer_zipped: int
    layer_unzipped: int
    shared_unzipped: int  # the worker's own code and layers, extracted
    shared_layers: int

    def problems(self) -> list[str]:
        """Every limit the function would break, each with the figures (empty when it fits)."""
        found = []
        if self.layer_zipped > MAX_ZIPPED_UPLOAD:
            found.append(f"the layer is {_mb(self.layer_zipped)} zipped, over Lambda's {_mb(MAX_ZIPPED_UPLOAD)} "
                         "for a direct upload")
        total = self.layer_unzipped + self.shared_unzipped
        if total > MAX_UNZIPPED:
            found.append(f"the function and its layers would be {_mb(total)} unzipped (this layer "
                         f"{_mb(self.layer_unzipped)}, the stack's worker {_mb(self.shared_unzipped)}), over "
                         f"Lambda's {_mb(MAX_UNZIPPED)}")
        if self.shared_layers + 1 > MAX_LAYERS:
            found.append(f"the function would have {self.shared_layers + 1} layers, over Lambda's {MAX_LAYERS}")
        return found


def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"
