"""The local stack: a moto server, the stack from template.yaml, and Lambda played by pollers.

Control functions (planner, aggregator, failure recorder) are polled by threads of this
process; the worker function runs in N long-lived processes, each one a warm Lambda container
that keeps ``init()`` state across mini-batches. S3 notifications, which moto cannot deliver to
a function, go to a local queue this runtime wires and polls; schedule rules, which moto stores
but never fires, are fired by a clock thread (:mod:`parallelrun.local.rules`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from parallelrun import aws, logs
from parallelrun.local import lambdas, provision, rules, server

log = logging.getLogger("parallelrun.local")
WORKER_FUNCTION = "WorkerFunction"  # the one function that scales out: it gets processes
# Local defaults: AWS's 15-minute function and 90-minute visibility would make a killed local
# worker's mini-batch wait that long to come back.
LOCAL_PARAMETERS = {
    "WorkerTimeout": "120",
    "BatchVisibilityTimeout": "150",
    "PlannerInterval": "1",
}
STATE_FILE = "local.json"


def home() -> Path:
    return Path(os.environ.get("PARALLELRUN_HOME") or Path.home() / ".parallelrun")


def save_state(state: dict[str, Any]) -> Path:
    path = home() / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2))
    return path


def load_state() -> dict[str, Any] | None:
    path = home() / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


class LocalStack:
    """Start with :meth:`start`, stop with :meth:`stop` (or use it as a context manager)."""

    def __init__(self, workers: int = 2, port: int | None = None, parameters: dict[str, str] | None = None,
                 write_state: bool = True, worker_env: dict[str, str] | None = None,
                 stack_name: str = "parallelrun") -> None:
        self.workers = workers
        self.stack_name = stack_name
        self.port = port
        self.parameters = {**LOCAL_PARAMETERS, **(parameters or {})}
        self.write_state = write_state
        self.worker_env = worker_env or {}
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.processes: list[subprocess.Popen] = []
        self.server: Any = None
        self.stack: provision.LocalStack | None = None
        self.endpoint_url = ""
        self.saved_environment: dict[str, str | None] = {}
        self.restarts = 0

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def log_dir(self) -> Path:
        """Where the local functions' JSON log lines go (on AWS: CloudWatch Logs)."""
        return home() / "logs"

    @property
    def outputs(self) -> dict[str, str]:
        assert self.stack is not None
        return self.stack.outputs

    def start(self) -> None:
        self.server, self.endpoint_url = server.start(self.port)
        self.stack = provision.provision(self.endpoint_url, stack_name=self.stack_name,
                                         parameters=self.parameters)
        any_function = next(iter(self.stack.functions.values()))
        # The control functions run in this process: it takes their environment, given back at stop.
        environment = {**lambdas.lambda_environment(any_function.environment, self.endpoint_url, self.stack.region),
                       "PARALLELRUN_LOG_FILE": str(self.log_dir / "control.jsonl")}
        self.saved_environment = {name: os.environ.get(name) for name in environment}
        os.environ.update(environment)
        aws.reset_clients()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        logs.setup()
        for spec in self.stack.functions.values():
            if spec.logical_id == WORKER_FUNCTION:
                self.processes += [self._spawn_worker(spec, n) for n in range(self.workers)]
                supervisor = threading.Thread(target=self._supervise, args=(spec,), name="supervise-workers",
                                              daemon=True)
                supervisor.start()
                self.threads.append(supervisor)
            else:
                self._start_threads(spec)
        self._start_rule_clock()
        if self.write_state:
            save_state(self.state())

    def state(self) -> dict[str, Any]:
        assert self.stack is not None
        return {"endpoint_url": self.endpoint_url, "region": self.stack.region, "stack_name": self.stack.stack_name,
                "outputs": self.stack.outputs, "workers": self.workers, "pid": os.getpid(),
                "logs": str(self.log_dir)}

    def _start_threads(self, spec: provision.FunctionSpec) -> None:
        assert self.stack is not None
        handler = lambdas.load_handler(spec.code_dir, spec.handler)

        def invoke(event: dict[str, Any]) -> Any:
            context = lambdas.LambdaContext(spec.logical_id, spec.memory, spec.timeout, f"local-{spec.logical_id}")
            return handler(event, context)

        for source in spec.queue_sources:
            self._thread(spec.logical_id, queue_url=source.queue_url, queue_arn=source.queue_arn,
                         region=self.stack.region, batch_size=source.batch_size,
                         report_failures=source.report_batch_item_failures, invoke=invoke)
        for number, source in enumerate(spec.bucket_sources):
            queue_url, queue_arn = self._notification_queue(spec.logical_id, number, source)
            self._thread(spec.logical_id, queue_url=queue_url, queue_arn=queue_arn, region=self.stack.region,
                         batch_size=10, report_failures=False, invoke=lambda e: invoke(s3_event(e)))

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

    def _thread(self, name: str, **kwargs: Any) -> None:
        thread = threading.Thread(target=lambdas.poll_forever, args=(self.stop_event,), kwargs=kwargs,
                                  name=f"poll-{name}", daemon=True)
        thread.start()
        self.threads.append(thread)

    def _notification_queue(self, function: str, number: int, source: provision.BucketSource) -> tuple[str, str]:
        """A queue that receives the bucket's notifications in place of the function moto can't call."""
        sqs, s3 = aws.client("sqs"), aws.client("s3")
        url = sqs.create_queue(QueueName=f"local-{function}-s3-{number}")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        rules = [{"Name": n, "Value": v} for n, v in (("prefix", source.prefix), ("suffix", source.suffix)) if v]
        config: dict[str, Any] = {"QueueArn": arn, "Events": source.events}
        if rules:
            config["Filter"] = {"Key": {"FilterRules": rules}}
        s3.put_bucket_notification_configuration(Bucket=source.bucket,
                                                 NotificationConfiguration={"QueueConfigurations": [config]})
        return url, arn

    def _spawn_worker(self, spec: provision.FunctionSpec, number: int) -> subprocess.Popen:
        assert self.stack is not None
        source = spec.queue_sources[0]
        env = {**os.environ, **lambdas.lambda_environment(spec.environment, self.endpoint_url, self.stack.region),
               **self.worker_env, "PARALLELRUN_LOG_FILE": str(self.log_dir / f"worker-{number}.jsonl")}
        args = {"code_dir": spec.code_dir, "handler": spec.handler, "queue_url": source.queue_url,
                "queue_arn": source.queue_arn, "region": self.stack.region, "batch_size": source.batch_size,
                "report_failures": source.report_batch_item_failures, "timeout": spec.timeout,
                "memory": spec.memory, "name": f"local-worker-{number}"}
        return subprocess.Popen([sys.executable, "-m", "parallelrun.local.workerproc", json.dumps(args)], env=env)

    def _supervise(self, spec: provision.FunctionSpec) -> None:
        """A worker process that died (killed, out of memory) is replaced, as Lambda starts a new
        container; its mini-batch comes back to some worker when its visibility timeout ends."""
        while not self.stop_event.wait(0.2):
            for number, process in enumerate(self.processes):
                if process.poll() is not None and not self.stop_event.is_set():
                    log.warning("worker process %s died (exit code %s): starting another", process.pid,
                                process.returncode)
                    self.restarts += 1
                    self.processes[number] = self._spawn_worker(spec, number)

    def stop(self) -> None:
        self.stop_event.set()
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.time() + 10
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                process.kill()
        for thread in self.threads:
            thread.join(timeout=5)
        if self.write_state and (home() / STATE_FILE).exists():
            state = load_state() or {}
            if state.get("pid") == os.getpid():
                (home() / STATE_FILE).unlink()
        if self.server is not None:
            self.server.stop()
        for name, value in self.saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        aws.reset_clients()


def s3_event(event: dict[str, Any]) -> dict[str, Any]:
    """S3 notifications received through SQS, unwrapped into the event S3 gives a function
    directly; the test event a bucket sends when it is wired up is dropped."""
    records = []
    for record in event["Records"]:
        body = json.loads(record["body"])
        records += [r for r in body.get("Records", []) if r.get("eventSource") == "aws:s3"]
    return {"Records": records}
