"""The CLI's commands: one function per ``parallelrun`` command, given the parsed arguments, and
the formatting of what they print. :mod:`parallelrun.client.cli` maps the command line to them.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

from parallelrun.client import hosting, pipeline_commands
from parallelrun.client.api import Client
from parallelrun.client.progress import progress_bar, status_lines
from parallelrun.core import compute
from parallelrun.core.errors import NotFoundError, ParallelRunError
from parallelrun.core.settings import parse_assignments
from parallelrun.local import state
from parallelrun.pipeline import longrun, scheduling
from parallelrun.store import jobs

NO_CODE = "(no code: the built-in scorer)"  # what listings show for a no-code deployment's script


def _job_dict(job: jobs.JobRecord) -> dict[str, Any]:
    return ({k: v for k, v in job.__dict__.items() if k not in ("settings", "planning")}
            | {"settings": json.loads(job.settings.to_json()), "planning": job.planning.to_item()})


def cmd_local_up(args: argparse.Namespace) -> int:
    # The local stack (moto and the SAM translator, most of a second to import) is loaded by
    # the commands that run one, so every other command starts without it.
    from parallelrun.local import runtime

    stack = runtime.LocalStack(workers=args.workers, port=args.port, parameters=parse_assignments(args.param),
                               latency=args.latency)
    # `kill` (SIGTERM) stops the stack as Ctrl-C does, worker processes included.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    stack.start()
    print(json.dumps(stack.state(), indent=2))
    print(f"local stack running at {stack.endpoint_url} with {args.workers} worker processes; Ctrl-C stops it",
          file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    if args.health:
        problems = longrun.health_problems()
        print("; ".join(problems) or "healthy", file=sys.stderr if problems else sys.stdout)
        return 1 if problems else 0
    return longrun.serve(hosting.host_plan(args.stack, args.local, args.endpoint, args.processes))


def cmd_local_outputs(args: argparse.Namespace) -> int:
    running = state.load_state()
    if running is None:
        raise ParallelRunError("no local stack is running: start one with `parallelrun local up`")
    print(json.dumps({"EndpointUrl": running["endpoint_url"], "Region": running["region"], **running["outputs"]},
                     indent=2))
    return 0


def cmd_models_register(args: argparse.Namespace) -> int:
    model = Client.connect(args.stack).register_model(args.path, args.name, parse_assignments(args.tag), args.description)
    print(f"registered model {model.name} version {model.version} (sha256 {model.sha256[:12]}...)")
    return 0


def _model_line(m: Any) -> str:
    tags = ",".join(f"{k}={v}" for k, v in sorted(m.tags.items()))
    archived = "\tarchived" if m.archived else ""
    return f"{m.name}:{m.version}\t{m.sha256[:12]}\t{len(m.files)} file(s)\t{tags}\t{m.description}{archived}"


def cmd_models_list(args: argparse.Namespace) -> int:
    for m in Client.connect(args.stack).models(parse_assignments(args.tag)):
        print(_model_line(m))
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    m = Client.connect(args.stack).model(args.model)
    print(json.dumps({**m.__dict__, "files": list(m.files)}, indent=2))
    return 0


def cmd_models_archive(args: argparse.Namespace) -> int:
    m = Client.connect(args.stack).archive_model(args.model)
    print(f"archived {m.name}:{m.version}: \"latest\" no longer resolves to it")
    return 0


def _deployment_dict(d: Any) -> dict[str, Any]:
    return {**d.__dict__, "model": d.model_label, "compute": d.compute.to_dict()}


def _deployment_settings(args: argparse.Namespace) -> dict[str, Any]:
    """A deployment's settings: ``--set``'s, and its compute options (``--compute ecs --gpu 1``)."""
    given = {name: getattr(args, name) for name in compute.FIELDS if getattr(args, name, None) is not None}
    return {**parse_assignments(args.set), **given}


def cmd_endpoints_show(args: argparse.Namespace) -> int:
    client = Client.connect(args.stack)
    endpoint = client.endpoint(args.name)
    print(json.dumps({**endpoint, "deployments": [_deployment_dict(d) for d in client.deployments(args.name)]},
                     indent=2, default=str))
    return 0


def cmd_endpoints_delete(args: argparse.Namespace) -> int:
    Client.connect(args.stack).delete_endpoint(args.name)
    print(f"deleted endpoint {args.name} and its deployments")
    return 0


def cmd_endpoints_set_default(args: argparse.Namespace) -> int:
    Client.connect(args.stack).set_default(args.endpoint, args.deployment)
    print(f"endpoint {args.endpoint}: new jobs go to deployment {args.deployment}; running jobs keep theirs")
    return 0


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def _check_file_or_options(args: argparse.Namespace, *names: str) -> None:
    """--file or the options it replaces (--model, with --code and --entry-script unless the
    deployment is a no-code one), and the positional names the YAML may give."""
    options = ("code", "entry_script", "model")
    if args.file is not None:
        given = [f"--{o.replace('_', '-')}" for o in options if getattr(args, o) is not None]
        if given:
            raise ParallelRunError(f"{', '.join(given)}: not with --file, whose YAML gives the code and model")
        return
    missing = [n.upper() for n in names if getattr(args, n) is None]
    missing += ["--model"] if args.model is None else []
    if missing:
        raise ParallelRunError(f"give {', '.join(missing)} (or --file with Azure ML v2 YAML)")


def cmd_deployments_create(args: argparse.Namespace) -> int:
    _check_file_or_options(args, "endpoint", "name")
    client = Client.connect(args.stack)
    if args.file is not None:
        d = client.create_deployment_from_file(args.file, args.endpoint, args.name, _deployment_settings(args),
                                               args.default, on_note=_note)
    else:
        d = client.add_deployment(args.endpoint, args.name, args.code, args.entry_script, args.model,
                                  _deployment_settings(args), args.default)
    default = client.endpoint(d.endpoint)["default_deployment"] == d.name
    print(f"created deployment {d.name} of endpoint {d.endpoint} (model {d.model_label})"
          + (", the endpoint's default" if default else ""))
    return 0


def cmd_deployments_list(args: argparse.Namespace) -> int:
    client = Client.connect(args.stack)
    default = client.endpoint(args.endpoint)["default_deployment"]
    for d in client.deployments(args.endpoint):
        mark = "*" if d.name == default else " "
        print(f"{mark} {d.name}\t{d.entry_script or NO_CODE}\t{d.model_label}\t{(d.code_sha or '-')[:12]}\t"
              f"{d.compute.label}")
    return 0


def cmd_deployments_show(args: argparse.Namespace) -> int:
    print(json.dumps(_deployment_dict(Client.connect(args.stack).deployment(args.endpoint, args.name)), indent=2, default=str))
    return 0


def cmd_deployments_delete(args: argparse.Namespace) -> int:
    Client.connect(args.stack).delete_deployment(args.endpoint, args.name)
    print(f"deleted deployment {args.name} of endpoint {args.endpoint}")
    return 0


def cmd_endpoints_create(args: argparse.Namespace) -> int:
    _check_file_or_options(args, "name")
    if args.file is not None:
        if _deployment_settings(args):
            raise ParallelRunError("--set, --compute: not with --file; settings belong to deployments (their YAML, "
                                   "or `deployments create ... --set`)")
        endpoint = Client.connect(args.stack).create_endpoint_from_file(args.file, args.name, on_note=_note)
        print(f"created endpoint {endpoint['name']} with no deployment yet: add one with "
              f"`parallelrun deployments create {endpoint['name']} NAME --file deployment.yml`")
        return 0
    deployment = Client.connect(args.stack).create_endpoint(args.name, args.code, args.entry_script, args.model,
                                                            _deployment_settings(args))
    print(f"created endpoint {args.name} (deployment {deployment.name}: {deployment.entry_script or NO_CODE}, "
          f"model {deployment.model_label}, code {(deployment.code_sha or 'none')[:12]})")
    return 0


def cmd_endpoints_update(args: argparse.Namespace) -> int:
    deployment = Client.connect(args.stack).update_endpoint(args.name, args.code, args.entry_script, args.model,
                                                            _deployment_settings(args))
    print(f"updated endpoint {args.name} (deployment {deployment.name}: {deployment.entry_script or NO_CODE}, "
          f"code {(deployment.code_sha or 'none')[:12]}); running jobs keep what they started with")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    client = Client.connect(args.stack)
    if client.find_pipeline_run(args.job) is not None:
        run = client.cancel_pipeline_run(args.job)
        print(f"pipeline run {run.run_id}: {run.state} ({run.reason}); no later step starts")
        return 0
    job = client.cancel(args.job)
    print(f"job {job.job_id}: {job.state} ({job.reason}); the output will hold what succeeded")
    return 0


def cmd_redrive(args: argparse.Namespace) -> int:
    client = Client.connect(args.stack)
    again = client.redrive(args.job)
    print(f"job {args.job}: running {len(again)} mini-batch(es) again")
    return _wait(client, args.job) if args.wait else 0


def cmd_logs(args: argparse.Namespace) -> int:
    for line in Client.connect(args.stack).logs(args.job, args.minibatch):
        print(line)
    return 0


def cmd_endpoints_list(args: argparse.Namespace) -> int:
    for endpoint in Client.connect(args.stack).endpoints():
        print(f"{endpoint['name']}\tdefault deployment: {endpoint['default_deployment'] or '(none yet)'}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    client = Client.connect(args.stack)
    job = client.submit(args.endpoint, args.input, parse_assignments(args.set), args.deployment)
    print(job.job_id)
    if not args.wait:
        return 0
    return _wait(client, job.job_id)


def _wait(client: Client, job_id: str) -> int:
    job = client.wait(job_id, on_progress=progress_bar() if sys.stderr.isatty() else None)
    print("\n".join(status_lines(job)))
    return 0 if job.state == jobs.SUCCEEDED else 1


def cmd_wait(args: argparse.Namespace) -> int:
    client = Client.connect(args.stack)
    if client.find_pipeline_run(args.job) is not None:
        return pipeline_commands.wait_run(client, args.job)
    return _wait(client, args.job)


def cmd_status(args: argparse.Namespace) -> int:
    client = Client.connect(args.stack)
    run = client.find_pipeline_run(args.job)
    if run is not None:
        return pipeline_commands.print_run(client, run, args.json)
    job = client.job(args.job)
    print(json.dumps(_job_dict(job), indent=2, default=str) if args.json else "\n".join(status_lines(job)))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    for job in Client.connect(args.stack).jobs(args.limit):
        done = job.items_succeeded + job.items_failed
        print(f"{job.job_id}\t{job.state}\t{done}/{job.total_items if job.total_items is not None else '?'}\t"
              f"{job.input_uri}")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    chunks = Client.connect(args.stack).read_output(args.job, args.file)
    if args.output:
        with open(args.output, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
    else:
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
    return 0


def _expression(args: argparse.Namespace) -> str:
    """--cron or --rate as EventBridge writes it; the bare fields are accepted too."""
    kind, text = ("cron", args.cron) if args.cron is not None else ("rate", args.rate)
    text = text.strip()
    return text if text.startswith(("cron(", "rate(")) else f"{kind}({text})"


def cmd_schedules_create(args: argparse.Namespace) -> int:
    s = Client.connect(args.stack).create_schedule(args.endpoint, args.name, args.input, _expression(args),
                                                   parse_assignments(args.set), args.deployment, overlap=args.overlap)
    print(f"created schedule {s.name}: endpoint {s.endpoint} over {s.input_uri} on {s.expression} "
          f"(overlap {s.overlap}, rule {s.rule_name})")
    return 0


def _schedule_dict(client: Client, s: Any) -> dict[str, Any]:
    """A schedule as `schedules show` prints it: its last run's job state read from the job."""
    last = None
    if s.last_job_id:
        try:
            job: jobs.JobRecord | None = client.job(s.last_job_id)
        except NotFoundError:
            job = None
        run = client.find_pipeline_run(s.last_job_id) if job is None else None  # a schedule of a pipeline
        ended = job or run
        last = {"time": s.last_run_time, "job_id": s.last_job_id, "trigger": s.last_trigger,
                "state": ended.state if ended else "unknown", "reason": ended.reason if ended else "",
                "items_succeeded": job.items_succeeded if job else None,
                "output": job.output_uri if job else None}
    return {**{k: v for k, v in s.__dict__.items() if not k.startswith("last_")}, "last_run": last,
            "last_skipped": s.last_skipped}


def cmd_schedules_list(args: argparse.Namespace) -> int:
    client = Client.connect(args.stack)
    for s in client.schedules():
        d = _schedule_dict(client, s)
        last = d["last_run"]
        run = f"last run {last['time']} {last['job_id']} {last['state']}" if last else "not run yet"
        skipped = f", {s.skipped_runs} skipped (last {s.last_skipped})" if s.skipped_runs else ""
        print(f"{s.name}\t{s.expression}\t{s.endpoint}\t{s.input_uri}\toverlap {s.overlap}\t{run}{skipped}")
    return 0


def cmd_schedules_show(args: argparse.Namespace) -> int:
    client = Client.connect(args.stack)
    print(json.dumps(_schedule_dict(client, client.schedule(args.name)), indent=2, default=str))
    return 0


def cmd_schedules_delete(args: argparse.Namespace) -> int:
    Client.connect(args.stack).delete_schedule(args.name)
    print(f"deleted schedule {args.name}, its rule and its record of what was scored")
    return 0


def cmd_schedules_run_now(args: argparse.Namespace) -> int:
    client = Client.connect(args.stack)
    fired = client.run_schedule_now(args.name)
    if fired.outcome == scheduling.SKIPPED:
        print(f"schedule {args.name}: run skipped, job {fired.holder} is still running (overlap skip)")
        return 1
    if fired.outcome == scheduling.WAITING:
        print(f"schedule {args.name}: the run will start when job {fired.holder} ends (overlap wait)")
        return 0
    if fired.job_id is None:
        raise ParallelRunError(f"schedule {args.name}: no run started")
    print(fired.job_id)
    return _wait(client, fired.job_id) if args.wait or fired.outcome == scheduling.REFUSED else 0


def cmd_report(args: argparse.Namespace) -> int:
    path = args.output or f"{args.job}.html"
    Client.connect(args.stack).report(args.job, path)
    print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from parallelrun.client import demo  # it runs a local stack: loaded only here, as above

    return demo.run(workers=args.workers, count=args.count)
