"""How a job's progress is shown: the bar drawn while waiting and the status lines printed after.

Shared by the CLI, the SDK's ``Job.wait_for_completion`` and the demo, none of which imports another
for it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from parallelrun.store import jobs


def progress_bar(description: str = "scoring") -> Callable[[jobs.JobRecord], None]:
    """A callback for :meth:`Client.wait` that draws a bar of inputs done out of the total."""
    from tqdm import tqdm  # only a wait with a bar pays for importing tqdm

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
