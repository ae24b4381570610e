"""What ``parallelrun worker`` serves and as whom: the stack (deployed, or the running local one),
the queues, and the environment of its worker processes.

The worker processes run with the stack's worker function's environment (its table, buckets,
limits and scoring role), so they score exactly as the Lambda worker does. On AWS it is read with
GetFunctionConfiguration, and they use this host's own credentials (an ECS task role, an instance
profile). Attached to a local stack (``--local``), they take both from the stack's state file: its
worker's variables and credentials of its worker role, so the local server's IAM enforcement holds
for them as for its own workers.

``--endpoint NAME`` serves the queues of that endpoint's deployments that have a queue of their
own (``Deployment.queue_url``), and nothing else. It never sorts a shared queue by endpoint: SQS
cannot give a received message back uncounted, so a worker that received another endpoint's
mini-batch and returned it would spend one of the deliveries its maxReceiveCount allows, and two
fleets sorting one queue would dead-letter each other's mini-batches as failed.
"""

from __future__ import annotations

import os

from parallelrun.aws import control
from parallelrun.aws.config import StackConfig, stack_outputs
from parallelrun.client.api import use_endpoint
from parallelrun.core.errors import InputError, StackError
from parallelrun.local import state
from parallelrun.pipeline.longrun import HostPlan
from parallelrun.store import endpoints


def host_plan(stack_name: str | None, local: bool, endpoint: str | None, processes: int) -> HostPlan:
    """The plan for ``parallelrun worker [--stack NAME | --local] [--endpoint NAME] [--processes N]``."""
    if processes < 1:
        raise InputError(f"--processes {processes}: give 1 or more")
    stack_name = None if local else stack_name or os.environ.get("PARALLELRUN_STACK")
    if not stack_name:  # as every command: without a stack's name, the running local stack
        running = state.load_state()
        if running is None:
            raise StackError("no local stack is running: start one with `parallelrun local up`")
        use_endpoint(running["endpoint_url"], running["region"])
        attach = running["long_running_workers"]
        cfg = StackConfig.from_outputs(running["outputs"])
        environment = {**attach["environment"], **attach["credentials"], "AWS_ENDPOINT_URL": running["endpoint_url"],
                       "AWS_DEFAULT_REGION": running["region"], "AWS_REGION": running["region"]}
    else:
        outputs = stack_outputs(stack_name)
        cfg = StackConfig.from_outputs(outputs)
        environment = control.function_environment(outputs["WorkerFunctionName"])
    queues = endpoint_queues(cfg, endpoint) if endpoint else (cfg.ecs_queue_url,)
    return HostPlan(queues, processes, environment)


def endpoint_queues(cfg: StackConfig, endpoint: str) -> tuple[str, ...]:
    """The queues of the endpoint's deployments that have one of their own."""
    own = sorted({d.queue_url for d in endpoints.list_deployments(cfg, endpoint) if d.queue_url})
    if not own:
        raise InputError(
            f"endpoint {endpoint!r} has no deployment with a queue of its own, so its mini-batches share a queue "
            "with other endpoints'; `parallelrun worker` without --endpoint serves the stack's ECS queue (a worker "
            "never sorts a shared queue by endpoint: each message it gave back would spend one of its deliveries)")
    return tuple(own)
