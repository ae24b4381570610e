"""``parallelrun``: the command line, its table of commands and options. Each command is a thin
call into :class:`Client` (see :mod:`parallelrun.client.commands`).

A failure prints one line (``error: ...``) and exits non-zero; ``wait`` exits 0 only if the job
succeeded.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from parallelrun.client import pipeline_commands
from parallelrun.client.commands import (
    cmd_cancel, cmd_demo, cmd_deployments_create, cmd_deployments_delete, cmd_deployments_list,
    cmd_deployments_show, cmd_endpoints_create, cmd_endpoints_delete, cmd_endpoints_list,
    cmd_endpoints_set_default, cmd_endpoints_show, cmd_endpoints_update, cmd_jobs, cmd_local_outputs,
    cmd_local_up, cmd_logs, cmd_models_archive, cmd_models_list, cmd_models_register, cmd_models_show,
    cmd_redrive, cmd_report, cmd_results, cmd_schedules_create, cmd_schedules_delete, cmd_schedules_list,
    cmd_schedules_run_now, cmd_schedules_show, cmd_status, cmd_submit, cmd_wait, cmd_worker)
from parallelrun.core.errors import ParallelRunError
from parallelrun.local.latency import LATENCY


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

    def add_compute(command: argparse.ArgumentParser) -> None:
        """Where a deployment runs (parallelrun.core.compute), also settable as --set compute=ecs."""
        command.add_argument("--compute", choices=("lambda", "ecs"), default=None,
                             help="lambda (default) or ecs: long-running workers, for GPUs or mini-batches "
                                  "longer than Lambda's 15 minutes")
        command.add_argument("--cpu", default=None, help="with --compute ecs: CPU units, 1024 = 1 vCPU (default 1024)")
        command.add_argument("--memory", default=None, help="with --compute ecs: MiB (default 4096)")
        command.add_argument("--gpu", default=None, help="with --compute ecs: GPUs (default 0: Fargate)")
        command.add_argument("--image", default=None, help="with --compute ecs: the worker image it needs "
                             "(default: the stack's EcsWorkerImage)")

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

    worker = add(sub, "worker", cmd_worker, "Run long-running workers (ECS, EC2, GPUs) on the stack's ECS queue "
                 "until SIGTERM: the Lambda worker's core, for mini-batches past 15 minutes or needing a GPU.")
    where = worker.add_mutually_exclusive_group()
    # SUPPRESS: unset here, the root's --stack (or PARALLELRUN_STACK) stands.
    where.add_argument("--stack", default=argparse.SUPPRESS, metavar="NAME", help="a deployed stack's name")
    where.add_argument("--local", action="store_true", help="attach to the running local stack (`local up`)")
    worker.add_argument("--endpoint", default=None, metavar="NAME",
                        help="serve only the queues of this endpoint's deployments that have their own")
    worker.add_argument("--processes", type=int, default=1, metavar="N",
                        help="worker processes (default 1); on a host with GPUs each gets one GPU")
    worker.add_argument("--health", action="store_true",
                        help="exit 0 if this host's worker processes reported lately (a container health check)")

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
    create = add(endpoints, "create", cmd_endpoints_create, "Create a batch endpoint with its default deployment, "
                 "or from Azure ML v2 batch endpoint YAML (--file) with none yet.")
    create.add_argument("name", nargs="?", help="the endpoint's name (with --file: default the YAML's name)")
    create.add_argument("--file", default=None, metavar="ENDPOINT_YML",
                        help="Azure ML v2 batch endpoint YAML; its first deployment becomes its default")
    create.add_argument("--code", help="folder with the scoring code (none for a no-code deployment of an MLflow, "
                        "scikit-learn or ONNX model)")
    create.add_argument("--entry-script", help="the scoring script, relative to --code")
    create.add_argument("--model", metavar="NAME[:VERSION]",
                        help="a registered model; per partition: a name template such as 'sales-{store}' "
                             "or tags such as 'tags:store={store}'")
    create.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a default run setting")
    add_compute(create)
    update = add(endpoints, "update", cmd_endpoints_update,
                 "Change an endpoint's default deployment (new code, entry script, model or settings).")
    update.add_argument("name")
    update.add_argument("--code", default=None, help="folder with the new scoring code")
    update.add_argument("--entry-script", default=None)
    update.add_argument("--model", default=None, metavar="NAME[:VERSION]",
                        help="a registered model, or a model per partition ('sales-{store}', 'tags:store={store}')")
    update.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    add_compute(update)
    add(endpoints, "list", cmd_endpoints_list, "List the endpoints.")
    add(endpoints, "show", cmd_endpoints_show, "Show an endpoint and its deployments.").add_argument("name")
    add(endpoints, "delete", cmd_endpoints_delete, "Delete an endpoint and its deployments.").add_argument("name")
    set_default = add(endpoints, "set-default", cmd_endpoints_set_default,
                      "Route an endpoint's new jobs to another deployment.")
    set_default.add_argument("endpoint")
    set_default.add_argument("deployment")

    deployments = sub.add_parser("deployments", help="An endpoint's named deployments.").add_subparsers(
        dest="deployments_command", required=True, metavar="COMMAND")
    dcreate = add(deployments, "create", cmd_deployments_create, "Add a deployment to an endpoint, or one read "
                  "from Azure ML v2 batch deployment YAML (--file) as it is.")
    dcreate.add_argument("endpoint", nargs="?", help="(with --file: default the YAML's endpoint_name)")
    dcreate.add_argument("name", nargs="?", help="(with --file: default the YAML's name)")
    dcreate.add_argument("--file", default=None, metavar="DEPLOYMENT_YML",
                         help="Azure ML v2 batch deployment YAML: code_configuration, model, environment, "
                              "resources and settings (--set wins over its settings)")
    dcreate.add_argument("--code", help="folder with the scoring code (none for a no-code deployment of an MLflow, "
                         "scikit-learn or ONNX model)")
    dcreate.add_argument("--entry-script")
    dcreate.add_argument("--model", metavar="NAME[:VERSION]",
                        help="a registered model; per partition: a name template such as 'sales-{store}' "
                             "or tags such as 'tags:store={store}'")
    dcreate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    add_compute(dcreate)
    dcreate.add_argument("--default", "--set-default", dest="default", action="store_true",
                         help="make it the endpoint's default (an endpoint's first deployment is, unless it "
                              "named another)")
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

    pipeline_commands.add_commands(sub, add)

    status = add(sub, "status", cmd_status, "Show a job's (or a pipeline run's, step by step) state and counts.")
    status.add_argument("job")
    status.add_argument("--json", action="store_true")
    add(sub, "wait", cmd_wait, "Wait for a job (with a progress bar) or a pipeline run; exit 0 only if it "
        "succeeded.").add_argument("job")
    add(sub, "cancel", cmd_cancel, "Stop a job (or a pipeline run); its output holds what succeeded.").add_argument("job")
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
        if isinstance(error, (BotoCoreError, ClientError)):
            print(f"error: {error}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
