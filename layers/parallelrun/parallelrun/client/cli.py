"""``parallelrun``: the command line. Each command is a thin call into :class:`Client`.

A failure prints one line (``error: ...``) and exits non-zero; ``wait`` exits 0 only if the job
succeeded.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

from parallelrun.client.api import Client
from parallelrun.core.errors import NotFoundError, ParallelRunError
from parallelrun.core.settings import parse_assignments
from parallelrun.local.latency import LATENCY
from parallelrun.pipeline import scheduling
from parallelrun.store import jobs


def progress_bar(description: str = "scoring") -> Any:
    """A callback for :meth:`Client.wait` that draws a bar of inputs done out of the total."""
    from tqdm import tqdm

    bar = tqdm(total=0, unit="input", desc=description, dynamic_ncols=True, file=sys.stderr)

    def update(job: jobs.JobRecord) -> None:
        if job.total_items is not None and bar.total != job.total_items:
            bar.total = job.total_items
            bar.refresh()
        bar.n = job.items_succeeded + job.items_failed
        bar.set_postfix_str(f"{job.state.lower()}, {job.items_failed} failed", refresh=True)
        if job.state in jobs.TERMINAL:
            bar.close()

    return update


def status_lines(job: jobs.JobRecord) -> list[str]:
    total_b = "?" if job.total_batches is None else job.total_batches
    total_i = "?" if job.total_items is None else job.total_items
    lines = [
        f"job:        {job.job_id}",
        f"state:      {job.state}" + (f" ({job.reason})" if job.reason else ""),
        f"endpoint:   {job.endpoint}",
        f"input:      {job.input_uri}",
        f"output:     {job.output_uri}",
        f"batches:    {job.batches_done}/{total_b} done ({job.batches_succeeded} succeeded, {job.batches_failed} failed)",
        f"inputs:     {job.items_succeeded + job.items_failed}/{total_i} done ({job.items_succeeded} succeeded, "
        f"{job.items_failed} failed), {job.retries} retries",
    ]
    if job.reused_from:
        lines.append(f"reused:     the output of job {job.reused_from} (same deployment, settings and inputs)")
    elif job.batches_reused:
        lines.append(f"reused:     {job.batches_reused} mini-batch(es) scored by an earlier job (allow_reuse)")
    if job.ended_at and job.started_at:
        lines.append(f"duration:   {job.ended_at - job.created_at:.1f} s")
    return lines


def _job_dict(job: jobs.JobRecord) -> dict[str, Any]:
    return {k: v for k, v in job.__dict__.items() if k != "settings"} | {"settings": json.loads(job.settings.to_json())}


def cmd_local_up(args: argparse.Namespace) -> int:
    from parallelrun.local.runtime import LocalStack

    stack = LocalStack(workers=args.workers, port=args.port, parameters=parse_assignments(args.param),
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


def cmd_local_outputs(args: argparse.Namespace) -> int:
    from parallelrun.local import runtime

    state = runtime.load_state()
    if state is None:
        raise ParallelRunError("no local stack is running: start one with `parallelrun local up`")
    print(json.dumps({"EndpointUrl": state["endpoint_url"], "Region": state["region"], **state["outputs"]}, indent=2))
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
    return {**d.__dict__, "model": d.model_label}


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


def cmd_deployments_create(args: argparse.Namespace) -> int:
    d = Client.connect(args.stack).add_deployment(args.endpoint, args.name, args.code, args.entry_script, args.model,
                                      parse_assignments(args.set), args.default)
    print(f"created deployment {d.name} of endpoint {d.endpoint}" + (" (now the default)" if args.default else ""))
    return 0


def cmd_deployments_list(args: argparse.Namespace) -> int:
    client = Client.connect(args.stack)
    default = client.endpoint(args.endpoint)["default_deployment"]
    for d in client.deployments(args.endpoint):
        mark = "*" if d.name == default else " "
        print(f"{mark} {d.name}\t{d.entry_script}\t{d.model_label}\t{d.code_sha[:12]}")
    return 0


def cmd_deployments_show(args: argparse.Namespace) -> int:
    print(json.dumps(_deployment_dict(Client.connect(args.stack).deployment(args.endpoint, args.name)), indent=2, default=str))
    return 0


def cmd_deployments_delete(args: argparse.Namespace) -> int:
    Client.connect(args.stack).delete_deployment(args.endpoint, args.name)
    print(f"deleted deployment {args.name} of endpoint {args.endpoint}")
    return 0


def cmd_endpoints_create(args: argparse.Namespace) -> int:
    deployment = Client.connect(args.stack).create_endpoint(args.name, args.code, args.entry_script, args.model,
                                                parse_assignments(args.set))
    print(f"created endpoint {args.name} (deployment {deployment.name}: {deployment.entry_script}, "
          f"model {deployment.model_label}, code {deployment.code_sha[:12]})")
    return 0


def cmd_endpoints_update(args: argparse.Namespace) -> int:
    deployment = Client.connect(args.stack).update_endpoint(args.name, args.code, args.entry_script, args.model,
                                                parse_assignments(args.set))
    print(f"updated endpoint {args.name} (deployment {deployment.name}: {deployment.entry_script}, "
          f"code {deployment.code_sha[:12]}); running jobs keep what they started with")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    job = Client.connect(args.stack).cancel(args.job)
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
        print(f"{endpoint['name']}\tdefault deployment: {endpoint['default_deployment']}")
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
    return _wait(Client.connect(args.stack), args.job)


def cmd_status(args: argparse.Namespace) -> int:
    job = Client.connect(args.stack).job(args.job)
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
        last = {"time": s.last_run_time, "job_id": s.last_job_id, "trigger": s.last_trigger,
                "state": job.state if job else "unknown", "reason": job.reason if job else "",
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
    from parallelrun.client import demo

    return demo.run(workers=args.workers, count=args.count)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="parallelrun", description="Serverless batch inference on AWS Lambda, "
                                   "in ParallelRunStep's words; runs locally on moto with no AWS account.")
    root.add_argument("--stack", default=None, metavar="NAME",
                      help="a deployed stack's name (default: $PARALLELRUN_STACK, else the running local stack)")
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(parent: Any, name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        command = parent.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(func=func)
        return command

    demo = add(sub, "demo", cmd_demo, "Run the digits demo end to end on a local stack.")
    demo.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    demo.add_argument("--count", type=int, default=None, help="how many digit images (default all 1,797)")

    local = sub.add_parser("local", help="Run the stack locally on moto.").add_subparsers(
        dest="local_command", required=True, metavar="COMMAND")
    up = add(local, "up", cmd_local_up, "Run the local stack in the foreground until Ctrl-C.")
    up.add_argument("--port", type=int, default=None, help="moto server port (default: a free one)")
    up.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    up.add_argument("--latency", choices=sorted(LATENCY), default=None,
                    help="make every request wait as it would from Lambda (aws: S3 GET 27 ms, PUT 60 ms, ...)")
    up.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a template.yaml parameter, e.g. WorkerBatchSize=2")
    add(local, "outputs", cmd_local_outputs, "Print the running local stack's outputs as JSON.")

    models = sub.add_parser("models", help="The model registry.").add_subparsers(
        dest="models_command", required=True, metavar="COMMAND")
    register = add(models, "register", cmd_models_register, "Register a file or folder as the next version of a model.")
    register.add_argument("path")
    register.add_argument("--name", required=True)
    register.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    register.add_argument("--description", default="")
    model_list = add(models, "list", cmd_models_list, "List registered model versions.")
    model_list.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="only versions with this tag")
    add(models, "show", cmd_models_show, "Show a model version (the latest unless NAME:VERSION).").add_argument(
        "model", metavar="NAME[:VERSION]")
    add(models, "archive", cmd_models_archive, "Archive a model version: \"latest\" skips it.").add_argument(
        "model", metavar="NAME:VERSION")

    endpoints = sub.add_parser("endpoints", help="Batch endpoints.").add_subparsers(
        dest="endpoints_command", required=True, metavar="COMMAND")
    create = add(endpoints, "create", cmd_endpoints_create, "Create a batch endpoint with its default deployment.")
    create.add_argument("name")
    create.add_argument("--code", required=True, help="folder with the scoring code")
    create.add_argument("--entry-script", required=True, help="the scoring script, relative to --code")
    create.add_argument("--model", required=True, metavar="NAME[:VERSION]",
                        help="a registered model; per partition: a name template such as 'sales-{store}' "
                             "or tags such as 'tags:store={store}'")
    create.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a default run setting")
    update = add(endpoints, "update", cmd_endpoints_update,
                 "Change an endpoint's default deployment (new code, entry script, model or settings).")
    update.add_argument("name")
    update.add_argument("--code", default=None, help="folder with the new scoring code")
    update.add_argument("--entry-script", default=None)
    update.add_argument("--model", default=None, metavar="NAME[:VERSION]",
                        help="a registered model, or a model per partition ('sales-{store}', 'tags:store={store}')")
    update.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    add(endpoints, "list", cmd_endpoints_list, "List the endpoints.")
    add(endpoints, "show", cmd_endpoints_show, "Show an endpoint and its deployments.").add_argument("name")
    add(endpoints, "delete", cmd_endpoints_delete, "Delete an endpoint and its deployments.").add_argument("name")
    set_default = add(endpoints, "set-default", cmd_endpoints_set_default,
                      "Route an endpoint's new jobs to another deployment.")
    set_default.add_argument("endpoint")
    set_default.add_argument("deployment")

    deployments = sub.add_parser("deployments", help="An endpoint's named deployments.").add_subparsers(
        dest="deployments_command", required=True, metavar="COMMAND")
    dcreate = add(deployments, "create", cmd_deployments_create, "Add a deployment to an endpoint.")
    dcreate.add_argument("endpoint")
    dcreate.add_argument("name")
    dcreate.add_argument("--code", required=True, help="folder with the scoring code")
    dcreate.add_argument("--entry-script", required=True)
    dcreate.add_argument("--model", required=True, metavar="NAME[:VERSION]",
                        help="a registered model; per partition: a name template such as 'sales-{store}' "
                             "or tags such as 'tags:store={store}'")
    dcreate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    dcreate.add_argument("--default", action="store_true", help="make it the endpoint's default")
    add(deployments, "list", cmd_deployments_list, "List an endpoint's deployments (* marks the default).").add_argument(
        "endpoint")
    for name, func, text in (("show", cmd_deployments_show, "Show a deployment."),
                             ("delete", cmd_deployments_delete, "Delete a deployment that is not the default.")):
        command = add(deployments, name, func, text)
        command.add_argument("endpoint")
        command.add_argument("name")

    submit = add(sub, "submit", cmd_submit, "Submit a job on a folder of inputs; prints the job id.")
    submit.add_argument("--endpoint", required=True)
    submit.add_argument("--input", required=True, metavar="S3_URI")
    submit.add_argument("--deployment", default=None, help="a named deployment instead of the default one")
    submit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a run setting")
    submit.add_argument("--wait", action="store_true", help="wait for the job, with a progress bar")

    scheds = sub.add_parser("schedules", help="Scheduled incremental runs (EventBridge rules).").add_subparsers(
        dest="schedules_command", required=True, metavar="COMMAND")
    screate = add(scheds, "create", cmd_schedules_create,
                  "Run an endpoint over a folder on a schedule; each run scores only new or changed inputs.")
    screate.add_argument("endpoint")
    screate.add_argument("name")
    when = screate.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR", help="EventBridge cron (UTC): \"cron(0 2 * * ? *)\" is 02:00 daily")
    when.add_argument("--rate", metavar="EXPR", help="EventBridge rate: \"rate(15 minutes)\", \"rate(1 hour)\"")
    screate.add_argument("--input", required=True, metavar="S3_URI", help="the folder whose new files each run scores")
    screate.add_argument("--deployment", default=None, help="a named deployment instead of the default one")
    screate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="a run setting; output_path is the prefix runs write <schedule>/<run time>/ under")
    screate.add_argument("--overlap", choices=("skip", "wait"), default="skip",
                         help="a run due while the last one runs: skip it (default) or start it when that one ends")
    add(scheds, "list", cmd_schedules_list, "List the schedules with their last run and skipped runs.")
    add(scheds, "show", cmd_schedules_show, "Show a schedule and its last run as JSON.").add_argument("name")
    add(scheds, "delete", cmd_schedules_delete,
        "Delete a schedule, its rule and its record of what was scored.").add_argument("name")
    run_now = add(scheds, "run-now", cmd_schedules_run_now, "Run a schedule now, as its rule would; prints the job id.")
    run_now.add_argument("name")
    run_now.add_argument("--wait", action="store_true", help="wait for the run, with a progress bar")

    status = add(sub, "status", cmd_status, "Show a job's state and counts.")
    status.add_argument("job")
    status.add_argument("--json", action="store_true")
    add(sub, "wait", cmd_wait, "Wait for a job with a progress bar; exit 0 only if it succeeded.").add_argument("job")
    add(sub, "cancel", cmd_cancel, "Stop a job; its output holds what succeeded.").add_argument("job")
    redrive = add(sub, "redrive", cmd_redrive,
                  "Run an ended job's failed mini-batches again (with the endpoint's current code).")
    redrive.add_argument("job")
    redrive.add_argument("--wait", action="store_true")
    job_logs = add(sub, "logs", cmd_logs, "Print the log lines of a job's mini-batches, the script's own included.")
    job_logs.add_argument("job")
    job_logs.add_argument("--minibatch", type=int, default=None, metavar="N")
    listing = add(sub, "jobs", cmd_jobs, "List the newest jobs.")
    listing.add_argument("--limit", type=int, default=20)
    results = add(sub, "results", cmd_results, "Print or save a job's collated output.")
    results.add_argument("job")
    results.add_argument("-o", "--output", default=None, metavar="FILE")
    results.add_argument("--file", default=None, help="another output file: summary.json or failures.jsonl")
    report = add(sub, "report", cmd_report, "Write a job's HTML report: timeline, throughput, slowest "
                 "mini-batches, failures by type and the cost estimate.")
    report.add_argument("job")
    report.add_argument("-o", "--output", default=None, metavar="FILE", help="default: JOB.html")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ParallelRunError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # an AWS or network failure: one line, not a traceback
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(error, (BotoCoreError, ClientError)):
            print(f"error: {error}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
