"""The long-running worker host: the worker core (:mod:`parallelrun.pipeline.worker`) on ECS or
EC2, for GPUs and mini-batches longer than Lambda's 15 minutes (``parallelrun worker``).

It is the third host of one core (Lambda, the local stack, this): each worker process polls its
queues as Lambda's SQS event source does (:func:`parallelrun.pipeline.eventsource.poll_once`,
ReportBatchItemFailures) and hands each message to the same handler, so commits, retries,
isolation, thresholds and the dead-letter queue after maxReceiveCount are the worker's own.
What differs is what Lambda did for it:

- One message a receive: a mini-batch may run for hours, and a message held behind it would wait.
- A heartbeat (:class:`Lease`) makes the message invisible again for the queue's visibility
  timeout every third of it while ``run()`` works, so it is not delivered twice; SQS allows that
  up to 12 hours after the receive ("If you try to extend the visibility timeout beyond 12 hours,
  your request is rejected",
  https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ChangeMessageVisibility.html),
  which is the longest a mini-batch can run here. A dead host stops beating: its message comes
  back within one visibility timeout.
- No invocation deadline: the context has no remaining time, so each ``run()`` gets the job's
  ``run_invocation_timeout``, whatever a Lambda deployment's function timeout is.
- A stop: ECS stops a task, and Fargate Spot or EC2 Spot reclaim one, with SIGTERM and then
  SIGKILL after the container's ``stopTimeout`` (at most 120 s on Fargate; Spot's notice is two
  minutes: https://repost.aws/knowledge-center/fargate-spot-termination-notice,
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html).
  A worker process then takes no new message, lets the running mini-batch finish within
  ``PARALLELRUN_WORKER_GRACE_SECONDS``, else hands its message back (visibility 0) and exits:
  nothing is lost, and a commit racing the hand-back is the conditional one (invariant 1).
- Health: each worker process touches a file on every poll and every heartbeat;
  ``parallelrun worker --health`` exits 0 only while every one is fresh (an ECS container health
  check: https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_HealthCheck.html).
- Processes: ``serve`` runs N worker processes, one GPU each on a host with GPUs, and starts
  another when one dies (out of memory, say).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parallelrun import aws
from parallelrun.aws import sqs
from parallelrun.core import logs
from parallelrun.pipeline import eventsource, worker

log = logging.getLogger("parallelrun.pipeline.longrun")
GRACE_VAR = "PARALLELRUN_WORKER_GRACE_SECONDS"
# Inside ECS's longest stopTimeout (120 s) and Spot's two minutes, with time left to hand back.
DEFAULT_GRACE = 90.0
POLL_VAR = "PARALLELRUN_WORKER_POLL_SECONDS"
DEFAULT_POLL = 20  # SQS's longest ReceiveMessage wait: an idle queue costs three requests a minute
HEALTH_VAR = "PARALLELRUN_WORKER_HEALTH_DIR"
RESTART_DELAY = 1.0  # seconds before a dead worker process is replaced, so a crash loop does not spin
_GPU_LINE = re.compile(r"^GPU (?P<index>\d+):[^\n]*?(?:\(UUID: (?P<uuid>[^)\s]+)\))?[ \t]*$", re.M)


@dataclass(frozen=True)
class HostPlan:
    """What ``parallelrun worker`` runs: the queues it serves, how many worker processes, and
    the variables their environment adds to this one's (the stack's worker's, and on a local
    stack its endpoint and the worker role's credentials)."""

    queue_urls: tuple[str, ...]
    processes: int = 1
    environment: dict[str, str] = field(default_factory=dict)


def grace_seconds() -> float:
    return float(os.environ.get(GRACE_VAR) or DEFAULT_GRACE)


def health_dir() -> Path:
    return Path(os.environ.get(HEALTH_VAR) or Path(tempfile.gettempdir()) / "parallelrun-worker")


# --- GPUs


def gpu_devices(env: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs this host gives its workers: ``CUDA_VISIBLE_DEVICES``'s listing where it is set,
    else the ones ``nvidia-smi -L`` lists (by UUID, which CUDA_VISIBLE_DEVICES accepts), else none.
    In an ECS task nvidia-smi sees only the GPUs the agent pinned to the container
    (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/ecs-gpu-specifying.html)."""
    env = os.environ if env is None else env
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [device.strip() for device in listed.split(",") if device.strip()]
    if shutil.which("nvidia-smi", path=env.get("PATH")) is None:
        return []
    try:
        found = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True,
                               env=dict(env)).stdout
    except (OSError, subprocess.SubprocessError):
        log.warning("nvidia-smi -L failed: the workers run without GPUs", exc_info=True)
        return []
    return [m.group("uuid") or m.group("index") for m in _GPU_LINE.finditer(found)]


def process_environments(processes: int, devices: list[str]) -> list[dict[str, str]]:
    """What each worker process's environment adds: with GPUs and more than one process, process
    i sees GPU i only (GPUs are shared in turn when processes outnumber them); one process sees
    every GPU the host has, to use as its model likes."""
    if processes > 1 and devices:
        return [{"CUDA_VISIBLE_DEVICES": devices[number % len(devices)]} for number in range(processes)]
    return [{} for _ in range(processes)]


# --- health


@dataclass
class Health:
    """One worker process's health file: touched on every poll and heartbeat; fresh while it is
    younger than ``max_age`` (which the file holds, for the check run from another process)."""

    path: Path
    max_age: float

    def touch(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"pid": os.getpid(), "max_age": self.max_age}))
        os.replace(temporary, self.path)  # the check never reads half a file


def health_problems(folder: Path | None = None, now: float | None = None) -> list[str]:
    """Why this host's workers are not healthy: none reported, or one has not for too long."""
    folder = folder or health_dir()
    now = time.time() if now is None else now
    files = sorted(folder.glob("process-*.json")) if folder.is_dir() else []
    if not files:
        return [f"no worker process has reported in {folder}"]
    problems = []
    for path in files:
        try:
            max_age, age = float(json.loads(path.read_text())["max_age"]), now - path.stat().st_mtime
        except (OSError, ValueError, KeyError):
            problems.append(f"{path.name} is unreadable")
            continue
        if age > max_age:
            problems.append(f"{path.stem} last reported {age:.0f} s ago (more than {max_age:.0f} s)")
    return problems


# --- one worker process


@dataclass(frozen=True)
class Source:
    """A queue a worker process serves, with the visibility timeout its heartbeat renews."""

    queue_url: str
    queue_arn: str
    visibility: int

    @classmethod
    def of(cls, queue_url: str) -> Source:
        found = sqs.queue_attributes(queue_url, ["QueueArn", "VisibilityTimeout"])
        return cls(queue_url, found["QueueArn"], int(found["VisibilityTimeout"]))


class Lease:
    """Keeps one invocation's messages invisible while it works: every third of the queue's
    visibility timeout each is made invisible for that timeout again. Under one lock, so that
    once :meth:`end`, :meth:`retry_later` or :meth:`hand_back` returns no beat follows."""

    def __init__(self, source: Source, receipts: list[str], health: Health) -> None:
        self.source, self.health = source, health
        self._held = set(receipts)
        self._lock = threading.Lock()
        self._ended = threading.Event()
        threading.Thread(target=self._beat, name="heartbeat", daemon=True).start()

    def _beat(self) -> None:
        while not self._ended.wait(max(1, self.source.visibility) / 3):
            with self._lock:
                for receipt in sorted(self._held):
                    try:
                        sqs.change_visibility(self.source.queue_url, receipt, self.source.visibility)
                    except Exception:  # past SQS's 12 hours, or the network: the message may come back
                        log.warning("could not extend a mini-batch's visibility", exc_info=True)
            self.health.touch()

    def retry_later(self, receipt: str, seconds: int) -> None:
        """The worker's back-off for a failed attempt: no more beats for it, then ``seconds``."""
        with self._lock:
            self._held.discard(receipt)
            sqs.change_visibility(self.source.queue_url, receipt, seconds)

    def end(self) -> None:
        with self._lock:
            self._ended.set()
            self._held.clear()

    def hand_back(self) -> None:
        """Give the messages still held back to the queue now (visibility 0), for another worker."""
        with self._lock:
            self._ended.set()
            for receipt in sorted(self._held):
                sqs.change_visibility(self.source.queue_url, receipt, 0)
            self._held.clear()


@dataclass
class HostContext:
    """What the worker core reads from a Lambda context: a name for its log stream and records,
    and no remaining time; plus the hook its retries use (``retry_later``)."""

    log_stream_name: str
    lease: Lease

    def retry_later(self, receipt: str, seconds: int) -> None:
        self.lease.retry_later(receipt, seconds)


class Current:
    """The invocation a worker process runs, and its stop: once stopping, none starts."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._lease: Lease | None = None
        self._stopping = False

    def begin(self, lease: Lease) -> bool:
        with self._changed:
            if not self._stopping:
                self._lease = lease
            return not self._stopping

    def end(self) -> None:
        with self._changed:
            self._lease = None
            self._changed.notify_all()

    def stop(self, grace: float) -> Lease | None:
        """Take no more work; the lease of an invocation still running ``grace`` seconds later."""
        with self._changed:
            self._stopping = True
            self._changed.wait_for(lambda: self._lease is None, timeout=grace)
            return self._lease


def work(queue_urls: list[str], number: int, parent: int) -> None:
    """One worker process: serve the queues in turn, one mini-batch at a time, until SIGTERM."""
    logs.setup()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=eventsource.watch_parent, args=(parent, stop), daemon=True).start()
    sources = [Source.of(url) for url in queue_urls]
    poll = int(os.environ.get(POLL_VAR) or DEFAULT_POLL)
    health = Health(health_dir() / f"process-{number}.json",
                    3 * max([poll] + [s.visibility / 3 for s in sources]) + 30)
    health.touch()
    current = Current()
    threading.Thread(target=_stop_when_asked, args=(stop, current, grace_seconds()), daemon=True).start()
    name = f"ecs-worker-{number}-{os.getpid()}"
    logs.event(log, "worker process started", queues=queue_urls, process_number=number,
               gpu=os.environ.get("CUDA_VISIBLE_DEVICES"))
    while not stop.is_set():
        for source in sources:
            health.touch()
            if stop.is_set():
                break
            try:
                eventsource.poll_once(source.queue_url, source.queue_arn, aws.region(), 1, True,
                                      lambda event, s=source: _invoke(event, s, current, health, name), poll)
            except Exception:
                log.exception("poll round failed")
                stop.wait(1)
    logs.event(log, "worker process stopped")


def _invoke(event: dict[str, Any], source: Source, current: Current, health: Health, name: str) -> dict[str, Any]:
    lease = Lease(source, [record["receiptHandle"] for record in event["Records"]], health)
    if not current.begin(lease):  # received after the stop: back at once, never started
        lease.hand_back()
        return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event["Records"]]}
    try:
        return worker.handle_event(event, HostContext(name, lease))
    finally:
        lease.end()
        current.end()


def _stop_when_asked(stop: threading.Event, current: Current, grace: float) -> None:
    """At SIGTERM: the running mini-batch has ``grace`` seconds; past them its message goes back
    and the process ends, its scoring processes with it (they share its process group)."""
    stop.wait()
    unfinished = current.stop(grace)
    if unfinished is None:
        return  # the poll loop ends after its current receive
    unfinished.hand_back()
    logs.event(log, "stopped mid-batch: its message is back on the queue", level=logging.WARNING,
               grace_seconds=grace)
    logging.shutdown()
    if os.getpgid(0) == os.getpid():  # serve() made it a group leader: nothing outside the group
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(0)


# --- the supervisor


def serve(plan: HostPlan) -> int:
    """Run ``plan.processes`` worker processes until SIGTERM or SIGINT, replacing one that dies;
    then stop them (each within its grace period) and return 0."""
    logs.setup()
    devices = gpu_devices()
    extra = process_environments(plan.processes, devices)
    folder = health_dir()
    for stale in folder.glob("process-*.json") if folder.is_dir() else []:
        stale.unlink()  # an earlier run's files would read as this one's processes
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    logs.event(log, "starting worker processes", processes=plan.processes, gpus=devices, queues=plan.queue_urls)

    def spawn(number: int) -> subprocess.Popen:
        args = json.dumps({"queues": list(plan.queue_urls), "number": number, "parent": os.getpid()})
        # A session of its own: a terminal's Ctrl-C reaches this supervisor only, which stops the
        # processes in order, and a process past its grace kills its own group and no other.
        return subprocess.Popen([sys.executable, "-m", "parallelrun.pipeline.longrun", args],
                                env={**os.environ, **plan.environment, **extra[number]}, start_new_session=True)

    processes = [spawn(number) for number in range(plan.processes)]
    while not stop.wait(0.5):
        for number, process in enumerate(processes):
            if process.poll() is not None and not stop.wait(RESTART_DELAY):
                logs.event(log, "a worker process died: starting another", level=logging.WARNING,
                           process_number=number, exit_code=process.returncode)
                processes[number] = spawn(number)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait()
    logs.event(log, "worker processes stopped")
    return 0


if __name__ == "__main__":
    _args = json.loads(sys.argv[1])
    work(_args["queues"], _args["number"], _args["parent"])
