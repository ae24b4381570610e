"""``parallelrun pipelines create|list|show|run|delete`` and a pipeline run's ``status``: the
commands, the lines they print, and their place in the command line (:func:`add_commands`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from parallelrun.client.api import Client
from parallelrun.core.settings import parse_assignments
from parallelrun.store import jobs
from parallelrun.store.pipelines import PipelineRun


def add_commands(sub: Any, add: Any) -> None:
    """The ``pipelines`` command group, on the CLI's subcommands (``add`` makes one command)."""
    group = sub.add_parser("pipelines", help="Pipelines of steps: each step's output is the next one's input."
                           ).add_subparsers(dest="pipelines_command", required=True, metavar="COMMAND")
    create = add(group, "create", cmd_pipelines_create, "Create a pipeline from a YAML or JSON file of steps.")
    create.add_argument("name", nargs="?", help="the pipeline's name (default: the file's `name:`)")
    create.add_argument("--file", required=True, metavar="PIPELINE_YML",
                        help="`steps:`, each with endpoint, and optionally name, deployment, settings and "
                             "feed (table, the default, or files)")
    add(group, "list", cmd_pipelines_list, "List the pipelines with their steps and last run.")
    show = add(group, "show", cmd_pipelines_show, "Show a pipeline's steps and its newest runs as JSON.")
    show.add_argument("name")
    show.add_argument("--runs", type=int, default=10, help="how many of its newest runs (default 10)")
    run = add(group, "run", cmd_pipelines_run, "Run a pipeline on a folder of inputs; prints the run id.")
    run.add_argument("name")
    run.add_argument("--input", required=True, metavar="S3_URI", help="the first step's input folder")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="a run setting of the first step, over the pipeline's")
    run.add_argument("--wait", action="store_true", help="wait for the run; exit 0 only if it succeeded")
    add(group, "delete", cmd_pipelines_delete, "Delete a pipeline; runs under way finish.").add_argument("name")


def cmd_pipelines_create(args: argparse.Namespace) -> int:
    pipeline = Client.connect(args.stack).create_pipeline_from_file(args.file, args.name)
    steps = pipeline.steps
    print(f"created pipeline {pipeline.name}: " + " -> ".join(_step_label(step) for step in steps))
    return 0


def _step_label(step: Any) -> str:
    target = step.endpoint + (f":{step.deployment}" if step.deployment else "")
    return f"{step.name} ({target}, feeds {step.feed})"


def cmd_pipelines_list(args: argparse.Namespace) -> int:
    client = Client.connect(args.stack)
    for pipeline in client.pipelines():
        runs = client.pipeline_runs(pipeline.name, limit=1)
        last = f"last run {runs[0].run_id} {runs[0].state}" if runs else "not run yet"
        print(f"{pipeline.name}\t{' -> '.join(step.name for step in pipeline.steps)}\t{last}")
    return 0


def cmd_pipelines_show(args: argparse.Namespace) -> int:
    client = Client.connect(args.stack)
    pipeline = client.pipeline(args.name)
    runs = client.pipeline_runs(args.name, args.runs)
    print(json.dumps({"name": pipeline.name, "description": pipeline.description, "created_at": pipeline.created_at,
                      "steps": [step.to_dict() for step in pipeline.steps],
                      "runs": [{"run_id": r.run_id, "state": r.state, "step": r.step + 1, "input": r.input_uri,
                                "reason": r.reason, "created_at": r.created_at} for r in runs]}, indent=2))
    return 0


def cmd_pipelines_run(args: argparse.Namespace) -> int:
    client = Client.connect(args.stack)
    run = client.run_pipeline(args.name, args.input, parse_assignments(args.set))
    print(run.run_id)
    return wait_run(client, run.run_id) if args.wait else 0


def wait_run(client: Client, run_id: str) -> int:
    """Wait for a pipeline run, then print it step by step; 0 only if it succeeded."""
    ended = client.wait_pipeline(run_id)
    print("\n".join(run_lines(ended, client.step_jobs(ended))))
    return 0 if ended.state == jobs.SUCCEEDED else 1


def cmd_pipelines_delete(args: argparse.Namespace) -> int:
    Client.connect(args.stack).delete_pipeline(args.name)
    print(f"deleted pipeline {args.name}; runs under way finish with the steps they started with")
    return 0


def run_lines(run: PipelineRun, step_jobs: list[jobs.JobRecord | None]) -> list[str]:
    """A run as `status` prints it: its state, then one line per step."""
    lines = [f"pipeline run {run.run_id} of {run.pipeline}: {run.state}" + (f" ({run.reason})" if run.reason else ""),
             f"input: {run.input_uri}"]
    for number, (step, job) in enumerate(zip(run.steps, step_jobs), 1):
        if job is None:
            lines.append(f"  step {number} {step.name}: not started")
            continue
        # A table's inputs are records, counted as they are read: the total is known once it ended.
        done = job.items_succeeded + job.items_failed
        total = job.total_items if job.total_items is not None else done if job.state in jobs.TERMINAL else "?"
        reused = f", reused from {job.reused_from}" if job.reused_from else (
            f", {job.batches_reused} mini-batch(es) reused" if job.batches_reused else "")
        lines.append(f"  step {number} {step.name}: {job.state}  items {job.items_succeeded}/{total} succeeded, "
                     f"{job.items_failed} failed  job {job.job_id}{reused}")
        if job.state in jobs.TERMINAL and job.output_uri:
            lines.append(f"    output: {job.output_uri}")
    return lines


def print_run(client: Client, run: PipelineRun, as_json: bool) -> int:
    """`status RUN_ID` for a pipeline run: every step's state, counts and job id."""
    step_jobs = client.step_jobs(run)
    if as_json:
        steps = [{**step.to_dict(), "job_id": job.job_id if job else None, "state": job.state if job else None,
                  "items_succeeded": job.items_succeeded if job else None,
                  "items_failed": job.items_failed if job else None, "reused_from": job.reused_from if job else None,
                  "output": job.output_uri if job else None} for step, job in zip(run.steps, step_jobs)]
        json.dump({**{k: v for k, v in run.__dict__.items() if k != "steps"}, "steps": steps}, sys.stdout,
                  indent=2, default=str)
        print()
    else:
        print("\n".join(run_lines(run, step_jobs)))
    return 0
