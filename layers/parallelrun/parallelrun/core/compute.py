"""Where a deployment's mini-batches run: ``lambda`` (the stack's worker function, the default)
or ``ecs`` (long-running ``parallelrun worker`` tasks polling the stack's ECS queue, which no
Lambda reads), with the task size the deployment needs: ``cpu`` (ECS CPU units, 1024 = 1 vCPU),
``memory`` (MiB), ``gpu`` (a count) and ``image`` (the worker image it is scored by).

These are a deployment's settings, given beside its run settings (``--compute ecs --gpu 1`` or
``--set compute=ecs``); a job cannot change them (its deployment chooses where it runs). The
stack has one ECS worker fleet (template.yaml's ``EcsWorkers``): a deployment's needs are checked
against what that fleet's task gives (``EcsTask``, see :func:`check_fits`). Pure: no AWS here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from parallelrun.core.errors import SettingsError

LAMBDA, ECS = "lambda", "ecs"
KINDS = (LAMBDA, ECS)
FIELDS = ("compute", "cpu", "memory", "gpu", "image")

# Fargate's task sizes: CPU units -> the memory (MiB) each allows; 8 and 16 vCPU need platform
# 1.4.0, the default (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task_definition_parameters.html#task_size).
FARGATE_SIZES: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4097, 1024)),
    1024: tuple(range(2048, 8193, 1024)),
    2048: tuple(range(4096, 16385, 1024)),
    4096: tuple(range(8192, 30721, 1024)),
    8192: tuple(range(16384, 61441, 4096)),
    16384: tuple(range(32768, 122881, 8192)),
}
FARGATE_TEXT = ("256 with 512, 1024 or 2048; 512 with 1024-4096; 1024 with 2048-8192; 2048 with 4096-16384; "
                "4096 with 8192-30720 (each in steps of 1024); 8192 with 16384-61440 in steps of 4096; 16384 with "
                "32768-122880 in steps of 8192")
# A task on EC2 (the GPU instances) may ask 128 to 196,608 CPU units (192 vCPU), as the same page says;
# its memory is bounded by the instance: 2,048 GiB is the largest ECS-optimized GPU instance's
# order (p5.48xlarge), and 8 GPUs the most any GPU instance type has.
EC2_CPU = (128, 196608)
EC2_MEMORY = (128, 2048 * 1024)
MAX_GPUS = 8
DEFAULT_CPU, DEFAULT_MEMORY = 1024, 4096
# An image reference: [registry/]repository[:tag][@sha256:digest], as Docker parses it.
_IMAGE = re.compile(r"^[a-z0-9]+([._\-/:][a-z0-9]+)*(:[\w][\w.\-]{0,127})?(@sha256:[a-f0-9]{64})?$")


@dataclass(frozen=True)
class Compute:
    """A deployment's compute; ``cpu``, ``memory``, ``gpu`` and ``image`` only for ``ecs``."""

    kind: str = LAMBDA
    cpu: int = 0
    memory: int = 0
    gpu: int = 0
    image: str = ""  # empty: whatever image the stack's ECS workers run

    @property
    def is_ecs(self) -> bool:
        return self.kind == ECS

    def to_dict(self) -> dict[str, Any]:
        """Its settings under :data:`FIELDS`' names (a Lambda deployment has only ``compute``)."""
        if not self.is_ecs:
            return {"compute": LAMBDA}
        return {"compute": ECS, "cpu": self.cpu, "memory": self.memory, "gpu": self.gpu, "image": self.image}

    @property
    def label(self) -> str:
        """How listings show it: ``lambda`` or ``ecs 1024 cpu / 4096 MiB / 1 gpu``."""
        if not self.is_ecs:
            return LAMBDA
        return f"ecs {self.cpu} cpu / {self.memory} MiB / {self.gpu} gpu" + (f" ({self.image})" if self.image else "")


def split(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``values`` cut into its compute settings and the rest (run settings)."""
    given = {k: v for k, v in values.items() if k in FIELDS}
    return given, {k: v for k, v in values.items() if k not in FIELDS}


def of_settings(values: Mapping[str, Any] | None) -> Compute:
    """The compute a new deployment's settings (compute beside run settings) choose."""
    return parse(split(values or {})[0])


def from_dict(values: Mapping[str, Any] | None) -> Compute:
    """A compute read back from a deployment or job record (already checked); none is Lambda."""
    return parse(values or {})


def updated(current: Compute, given: Mapping[str, Any]) -> Compute:
    """``current`` with ``given`` applied; a new ``compute`` starts from that kind's defaults."""
    return parse(given if "compute" in given else {**current.to_dict(), **given})


def parse(values: Mapping[str, Any]) -> Compute:
    """A deployment's compute from its settings, each checked: refused with the setting's name,
    the value and what is allowed."""
    kind = str(values.get("compute", LAMBDA)).strip().lower()
    if kind not in KINDS:
        raise SettingsError("compute", values.get("compute"), "lambda (the stack's worker function, at most 15 "
                            "minutes and 10,240 MB a mini-batch) or ecs (long-running workers on Fargate or GPU "
                            "instances)")
    if kind == LAMBDA:
        extra = sorted(set(values) - {"compute"})
        if extra:
            raise SettingsError(extra[0], values[extra[0]], "nothing with compute: lambda (a Lambda worker's memory "
                                "is the stack's WorkerMemory): give compute: ecs for a task of this size")
        return Compute()
    gpu = _count("gpu", values.get("gpu", 0), 0, MAX_GPUS, f"a whole number of GPUs from 0 to {MAX_GPUS} (an EC2 "
                 "GPU instance's; 0 runs on Fargate)")
    cpu = _count("cpu", values.get("cpu", DEFAULT_CPU), *EC2_CPU, "CPU units (1024 = 1 vCPU): " + (
        f"from {EC2_CPU[0]} to {EC2_CPU[1]} on a GPU instance" if gpu else FARGATE_TEXT))
    memory_rule = (f"MiB from {EC2_MEMORY[0]} to {EC2_MEMORY[1]} on a GPU instance" if gpu else
                   f"MiB that Fargate gives with cpu {cpu}: {FARGATE_TEXT}")
    memory = _count("memory", values.get("memory", DEFAULT_MEMORY), *EC2_MEMORY, memory_rule)
    if not gpu and memory not in FARGATE_SIZES.get(cpu, ()):
        if cpu not in FARGATE_SIZES:
            raise SettingsError("cpu", cpu, f"one of Fargate's sizes (no GPU): {FARGATE_TEXT}")
        raise SettingsError("memory", memory, memory_rule)
    image = str(values.get("image") or "").strip()
    if image and (len(image) > 1024 or not _IMAGE.match(image)):
        raise SettingsError("image", image, "an image reference such as 123456789012.dkr.ecr.us-east-1.amazonaws.com/"
                            "parallelrun-worker:gpu (registry/repository:tag or @sha256:digest, lower case), or "
                            "empty for the stack's")
    return Compute(ECS, cpu, memory, gpu, image)


def _count(name: str, value: Any, low: int, high: int, allowed: str) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = value if isinstance(value, int) else int(str(value).strip())
    except ValueError:
        raise SettingsError(name, value, allowed) from None
    if not low <= number <= high:
        raise SettingsError(name, value, allowed)
    return number


def check_requirements(compute: Compute, requirements: tuple[str, ...]) -> None:
    """An ECS deployment's packages are its image's: requirements are built for Lambda workers
    (a layer on AWS) and would not reach the ECS tasks."""
    if compute.is_ecs and requirements:
        raise SettingsError("requirements", ", ".join(requirements), "none with compute: ecs: install them in the "
                            "worker image (docker build --build-arg REQUIREMENTS=..., README: Deploy to AWS) and "
                            "leave requirements.txt out of the code folder")


def refuse_per_job(overrides: Mapping[str, Any]) -> None:
    """A job runs where its deployment does: compute settings cannot be given per job."""
    given, _ = split(overrides)
    for name, value in given.items():
        raise SettingsError(name, value, "nothing per job: it is a deployment's setting (deployments create "
                            f"--{name} ...); submit to a deployment that has it")


def runs_on_ecs(deployment: Mapping[str, Any]) -> bool:
    """Whether a job's deployment snapshot (``submit.snapshot``) sends its mini-batches to ECS."""
    return (deployment.get("compute") or {}).get("compute") == ECS


@dataclass(frozen=True)
class EcsTask:
    """What the stack's ECS workers' task gives (template.yaml's output ``EcsTask``)."""

    cpu: int
    memory: int
    gpu: int
    image: str

    def text(self) -> str:
        return f"cpu={self.cpu},memory={self.memory},gpu={self.gpu},image={self.image}"

    @classmethod
    def from_text(cls, text: str) -> EcsTask | None:
        """``cpu=1024,memory=4096,gpu=0,image=URI``, or None for "" (a stack without ECS workers)."""
        if not text.strip():
            return None
        fields = dict(part.partition("=")[::2] for part in text.split(","))
        return cls(int(fields["cpu"]), int(fields["memory"]), int(fields["gpu"]), fields["image"])


def check_fits(compute: Compute, task: EcsTask | None) -> None:
    """An ECS deployment's needs within the stack's ECS task. A stack without ECS workers
    (``EcsWorkers=none``, the local stack) takes any: its ECS queue is served by whatever runs
    ``parallelrun worker`` against it, which this cannot know."""
    if not compute.is_ecs or task is None:
        return
    for name, needed, given in (("cpu", compute.cpu, task.cpu), ("memory", compute.memory, task.memory),
                                ("gpu", compute.gpu, task.gpu)):
        if needed > given:
            raise SettingsError(name, needed, f"at most {given}, what this stack's ECS task gives (its EcsTaskCpu, "
                                "EcsTaskMemory, EcsWorkers=gpu and EcsTaskGpus parameters): deploy the stack with more")
    if compute.image and compute.image != task.image:
        raise SettingsError("image", compute.image, f"{task.image}, the image this stack's ECS workers run (its "
                            "EcsWorkerImage parameter), or empty")
