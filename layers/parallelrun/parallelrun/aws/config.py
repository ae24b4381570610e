"""Where the stack's resources are: read from a function's environment or a stack's outputs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from parallelrun import aws
from parallelrun.aws import control
from parallelrun.core.errors import StackError
from parallelrun.core.setting_rules import StackLimits

# Environment variable of each resource name, as template.yaml's Globals set them.
_ENV = {
    "table": "PARALLELRUN_TABLE",
    "input_bucket": "PARALLELRUN_INPUT_BUCKET",
    "artifacts_bucket": "PARALLELRUN_ARTIFACTS_BUCKET",
    "batch_queue_url": "PARALLELRUN_BATCH_QUEUE_URL",
    "ecs_queue_url": "PARALLELRUN_ECS_QUEUE_URL",
    "planner_queue_url": "PARALLELRUN_PLANNER_QUEUE_URL",
    "finalize_queue_url": "PARALLELRUN_FINALIZE_QUEUE_URL",
}
# The same names as template.yaml's Outputs, for clients outside the stack.
_OUTPUTS = {
    "table": "TableName",
    "input_bucket": "InputBucketName",
    "artifacts_bucket": "ArtifactsBucketName",
    "batch_queue_url": "BatchQueueUrl",
    "ecs_queue_url": "EcsBatchQueueUrl",
    "planner_queue_url": "PlannerQueueUrl",
    "finalize_queue_url": "FinalizeQueueUrl",
}
_LIMIT_OUTPUTS = {
    "worker_timeout": "WorkerTimeout",
    "worker_batch_size": "WorkerBatchSize",
    "max_receive_count": "MaxReceiveCount",
    "max_inflight_batches": "MaxInflightBatches",
    "worker_max_concurrency": "WorkerMaxConcurrency",
    "aggregate_batches_per_invocation": "AggregateBatchesPerInvocation",
    "planner_inputs_per_invocation": "PlannerInputsPerInvocation",
}

# A stack in one of these states has no resources to use (a failed create rolls everything back).
_UNUSABLE = {
    "CREATE_IN_PROGRESS", "CREATE_FAILED", "ROLLBACK_IN_PROGRESS", "ROLLBACK_FAILED", "ROLLBACK_COMPLETE",
    "DELETE_IN_PROGRESS", "DELETE_FAILED",
}


@dataclass(frozen=True)
class StackConfig:
    table: str
    input_bucket: str
    artifacts_bucket: str
    batch_queue_url: str
    planner_queue_url: str
    finalize_queue_url: str
    # Mini-batches of `compute: ecs` deployments, read by long-running workers, never by Lambda.
    ecs_queue_url: str
    limits: StackLimits = field(default_factory=StackLimits)
    planner_interval: int = 2
    # Names of the schedules' EventBridge rules start with it (the planner queue's policy lets
    # only those rules send); clients create rules, functions never do.
    schedule_rule_prefix: str = "parallelrun-schedule-"
    # A deployment's own worker (aws.workers) is named with it (the roles' grants name it too).
    deployment_worker_prefix: str = "parallelrun-Worker-"
    # What the stack's ECS workers' task gives (core.compute.EcsTask's text); "" without them.
    ecs_task: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackConfig:
        env = os.environ if env is None else env
        missing = [var for var in _ENV.values() if not env.get(var)]
        if missing:
            raise StackError(f"this process is not inside a parallelrun stack: {', '.join(missing)} not set")
        return cls(
            **{attr: env[var] for attr, var in _ENV.items()},
            limits=StackLimits.from_env(env),
            planner_interval=int(env.get("PARALLELRUN_PLANNER_INTERVAL") or 2),
            ecs_task=env.get("PARALLELRUN_ECS_TASK") or "",
        )

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, str]) -> StackConfig:
        missing = [name for name in _OUTPUTS.values() if name not in outputs]
        if missing:
            raise StackError(f"the stack's outputs lack {', '.join(missing)}: is it a parallelrun stack?")
        limits = StackLimits(**{a: int(outputs[o]) for a, o in _LIMIT_OUTPUTS.items() if o in outputs})
        prefix = {attr: outputs[name] for attr, name in (("schedule_rule_prefix", "ScheduleRulePrefix"),
                                                          ("deployment_worker_prefix", "DeploymentWorkerPrefix"))
                  if name in outputs}
        return cls(
            **{attr: outputs[name] for attr, name in _OUTPUTS.items()},
            limits=limits,
            planner_interval=int(outputs.get("PlannerInterval") or 2),
            ecs_task=outputs.get("EcsTask") or "",
            **prefix,
        )

    @classmethod
    def from_stack(cls, stack_name: str) -> StackConfig:
        """The stack's resources, from its outputs as CloudFormation gives them."""
        return cls.from_outputs(stack_outputs(stack_name))


def stack_outputs(stack_name: str) -> dict[str, str]:
    """A CloudFormation stack's outputs by key, in the region (and at the endpoint) boto3 is set to.

    The same call reads a stack deployed with ``sam deploy`` and the local stack on moto.
    """
    stack = control.describe_stack(stack_name)
    if stack is None:
        raise StackError(
            f"stack {stack_name!r} does not exist in region {aws.region()}: check --stack "
            "(or PARALLELRUN_STACK) and AWS_REGION, or deploy it (README: Deploy to AWS)"
        )
    if stack["StackStatus"] in _UNUSABLE:
        raise StackError(f"stack {stack_name!r} is {stack['StackStatus']}: it cannot be used")
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
