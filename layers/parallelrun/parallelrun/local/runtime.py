"""The local stack: a moto server, the stack from template.yaml, and Lambda played by pollers.

Every function runs in processes of its own (:mod:`parallelrun.local.workerproc`), each one a warm
Lambda container: one per control function (planner, aggregator, failure recorder), N for the
worker, which keep ``init()`` state across mini-batches. Each runs with credentials of its own
execution role from the template, and the server enforces IAM (:mod:`parallelrun.local.iam`), so
a permission the template lacks fails here as on AWS; this process keeps the administrator's
credentials, for the CLI, the SDK and the tests. S3 notifications, which moto cannot deliver to a
function, go to a local queue this runtime wires and the function's process polls; schedule
rules, which moto stores but never fires, are fired by a clock thread (:mod:`parallelrun.local.rules`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from parallelrun import aws
from parallelrun.aws import control, s3, sqs
from parallelrun.core import logs
from parallelrun.core.errors import StackError
from parallelrun.local import functions, iam, lambdas, provision, rules, server, state

log = logging.getLogger("parallelrun.local")
WORKER_FUNCTION = "WorkerFunction"  # the one function that scales out: it gets processes
# Local defaults: AWS's 15-minute function and 90-minute visibility would make a killed local
# worker's mini-batch wait that long to come back.
LOCAL_PARAMETERS = {
    "WorkerTimeout": "120",
    "BatchVisibilityTimeout": "150",
    "PlannerInterval": "1",
}

@dataclass
class FunctionProcess:
    """One local container of a function: what it runs, as which role, fed by which notification queues."""

    spec: functions.FunctionSpec
    number: int
    role_arn: str
    notifications: list[tuple[str, str]]  # (queue URL, queue ARN) of each of its S3 event sources
    popen: subprocess.Popen | None = None


class LocalStack:
    """Start with :meth:`start`, stop with :meth:`stop` (or use it as a context manager)."""

    def __init__(self, workers: int = 2, port: int | None = None, parameters: dict[str, str] | None = None,
                 write_state: bool = True, worker_env: dict[str, str] | None = None,
                 stack_name: str = "parallelrun", latency: str | None = None) -> None:
        self.workers = workers
        self.latency = latency  # a profile of server.LATENCY: every request waits as from Lambda on AWS
        self.stack_name = stack_name
        self.port = port
        self.parameters = {**LOCAL_PARAMETERS, **(parameters or {})}
        self.write_state = write_state
        self.worker_env = worker_env or {}
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.processes: list[FunctionProcess] = []
        self.admin: dict[str, str] = {}
        self.server: Any = None
        self.stack: provision.ProvisionedStack | None = None
        self.endpoint_url = ""
        self.saved_environment: dict[str, str | None] = {}
        self.restarts = 0
        self.attach: dict[str, dict[str, str]] = {}

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def log_dir(self) -> Path:
        """Where the local functions' JSON log lines go (on AWS: CloudWatch Logs)."""
        return state.home() / "logs"

    @property
    def outputs(self) -> dict[str, str]:
        assert self.stack is not None
        return self.stack.outputs

    def start(self) -> None:
        if self.write_state and (running := state.load_state()) is not None:
            raise StackError(f"a local stack is already running at {running['endpoint_url']} (process "
                             f"{running['pid']}): stop it first, or set PARALLELRUN_HOME to run another beside it")
        self.server, self.endpoint_url = server.start(self.port, self.latency)
        with iam.suspended():
            self.stack = provision.provision(self.endpoint_url, stack_name=self.stack_name,
                                             parameters=self.parameters)
        any_function = next(iter(self.stack.functions.values()))
        # This process keeps the stack's variables (given back at stop) and the administrator's
        # credentials, which are the ones it was started with.
        environment = lambdas.lambda_environment(any_function.environment, self.endpoint_url, self.stack.region)
        self.saved_environment = {name: os.environ.get(name) for name in environment}
        os.environ.update(environment)
        aws.reset_clients()
        self.admin = {name: environment[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        with iam.suspended():
            roles = self._roles()
        # What long-running workers attaching to this stack (`parallelrun worker --local`) run
        # with, as an ECS task gets its task definition's environment and its task role: the
        # worker function's variables and its role's credentials; the state file hands them out.
        self.attach = {"environment": self.stack.functions[WORKER_FUNCTION].environment,
                       "credentials": iam.assume_role(roles[WORKER_FUNCTION], "local-long-running", self.stack.region)}
        iam.enable(self.admin["AWS_ACCESS_KEY_ID"], self.admin["AWS_SECRET_ACCESS_KEY"])
        self.log_dir.mkdir(parents=True, exist_ok=True)
        logs.setup()
        for spec in self.stack.functions.values():
            count = self.workers if spec.logical_id == WORKER_FUNCTION else 1
            notifications = [self._notification_queue(spec.logical_id, n, source)
                             for n, source in enumerate(spec.bucket_sources)]
            self.processes += [FunctionProcess(spec, number, roles[spec.logical_id], notifications)
                               for number in range(count)]
        for process in self.processes:
            process.popen = self._spawn(process)
        supervisor = threading.Thread(target=self._supervise, name="supervise-functions", daemon=True)
        supervisor.start()
        self.threads.append(supervisor)
        self._start_rule_clock()
        if self.write_state:
            state.save_state({**self.state(), "long_running_workers": self.attach})

    def _roles(self) -> dict[str, str]:
        """Each function's execution role ARN, by function logical id."""
        assert self.stack is not None
        names = {logical_id: name for logical_id, name in control.stack_resources(self.stack.stack_name).items()
                 if logical_id in self.stack.functions}
        return {logical_id: control.function_role(name) for logical_id, name in names.items()}

    def state(self) -> dict[str, Any]:
        assert self.stack is not None
        return {"endpoint_url": self.endpoint_url, "region": self.stack.region, "stack_name": self.stack.stack_name,
                "outputs": self.stack.outputs, "workers": self.workers, "pid": os.getpid(),
                "logs": str(self.log_dir)}

    def _start_rule_clock(self) -> None:
        """Fire the schedule rules, which moto stores but never fires (see parallelrun.local.rules)."""
        clock = rules.RuleClock()

        def loop() -> None:
            while not self.stop_event.wait(1.0):
                try:
                    clock.fire_due(datetime.now(UTC))
                except Exception:
                    log.exception("firing the schedule rules failed; trying again in a second")

        thread = threading.Thread(target=loop, name="schedule-rules", daemon=True)
        thread.start()
        self.threads.append(thread)

    def _notification_queue(self, function: str, number: int, source: functions.BucketSource) -> tuple[str, str]:
        """A queue that receives the bucket's notifications in place of the function moto can't call."""
        url = sqs.create_queue(f"local-{function}-s3-{number}")
        arn = sqs.queue_arn(url)
        s3.notify_queue(source.bucket, arn, source.events, source.prefix, source.suffix)
        return url, arn

    def _spawn(self, process: FunctionProcess) -> subprocess.Popen:
        """A new container of the function: fresh credentials of its role, as Lambda gives each one."""
        assert self.stack is not None
        spec = process.spec
        worker = spec.logical_id == WORKER_FUNCTION
        name = f"local-worker-{process.number}" if worker else f"local-{spec.logical_id}"
        credentials = iam.assume_role(process.role_arn, name, self.stack.region)
        env = {**os.environ, **lambdas.lambda_environment(spec.environment, self.endpoint_url, self.stack.region),
               **credentials, **(self.worker_env if worker else {}),
               "PARALLELRUN_LOG_FILE": str(self.log_dir / (f"worker-{process.number}.jsonl" if worker
                                                           else "control.jsonl"))}
        args = {"spec": base64.b64encode(pickle.dumps(spec)).decode(), "name": name,
                "notifications": process.notifications, "notifier": self.admin}
        return subprocess.Popen([sys.executable, "-m", "parallelrun.local.workerproc", json.dumps(args)], env=env)

    def _supervise(self) -> None:
        """A function process that died (killed, out of memory) is replaced, as Lambda starts a new
        container; a worker's mini-batch comes back to some worker when its visibility timeout ends."""
        while not self.stop_event.wait(0.2):
            for process in self.processes:
                if process.popen is not None and process.popen.poll() is not None and not self.stop_event.is_set():
                    log.warning("%s process %s died (exit code %s): starting another", process.spec.logical_id,
                                process.popen.pid, process.popen.returncode)
                    self.restarts += 1
                    process.popen = self._spawn(process)

    def stop(self) -> None:
        self.stop_event.set()
        popens = [p.popen for p in self.processes if p.popen is not None]
        for popen in popens:
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
        deadline = time.time() + 10
        for popen in popens:
            try:
                popen.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                popen.kill()
        for thread in self.threads:
            thread.join(timeout=5)
        if self.write_state:
            state.remove_state(os.getpid())
        iam.disable()
        if self.server is not None:
            self.server.stop()
        for name, value in self.saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        aws.reset_clients()
