"""A job's report: one self-contained HTML page of where its time went and what it cost.

The page holds a timeline (one lane per worker, one bar per mini-batch, coloured by outcome),
the throughput over time, the slowest mini-batches, the failures by error type and the cost
table of ``summary.json``. Pictures are drawn with matplotlib into inline SVG, so the file opens
anywhere with nothing to fetch. In the timeline each bar is the SVG element
``id="minibatch-<index>"`` and each lane label ``id="lane-<n>"``, and the workers table carries
``data-worker``, so the page can be checked by a program as well as read.
"""

from __future__ import annotations

import html
import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from parallelrun.store import batches, jobs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# matplotlib is imported where a picture is drawn: the CLI and the client import this module, and
# only a report should pay for loading matplotlib (about 0.6 s).

SUCCEEDED, RETRIED, FAILED, REUSED = "succeeded", "retried", "failed", "reused"
COLOURS = {SUCCEEDED: "#2e7d32", RETRIED: "#f9a825", FAILED: "#c62828", REUSED: "#9e9e9e"}
SLOWEST = 10  # rows of the slowest mini-batches table
THROUGHPUT_BINS = 30


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows, read from the stack by :meth:`parallelrun.client.api.Client.report_data`."""

    job: jobs.JobRecord
    batches: list[batches.BatchRecord]
    failures_by_type: dict[str, int]
    summary: dict[str, Any] | None


@dataclass(frozen=True)
class Bar:
    """One mini-batch on the timeline, in seconds since the job started."""

    index: int
    worker: str
    start: float
    end: float
    outcome: str
    items: int
    items_failed: int
    attempt: int

    @property
    def seconds(self) -> float:
        return self.end - self.start


def outcome(record: batches.BatchRecord) -> str:
    if record.reused_from is not None:
        return REUSED
    if record.status == jobs.FAILED:
        return FAILED
    return RETRIED if record.attempt > 1 else SUCCEEDED


def bars(job: jobs.JobRecord, batches: Iterable[batches.BatchRecord]) -> list[Bar]:
    """The timeline's bars. A mini-batch with no start of its own (reused, or recorded before
    starts were kept) is a mark at its finish."""
    records = list(batches)
    starts = [r.started_at or r.finished_at for r in records]
    origin = min([job.started_at or job.created_at, *starts])
    return [Bar(index=r.index, worker=r.worker or "?", start=start - origin, end=max(start, r.finished_at) - origin,
                outcome=outcome(r), items=r.items, items_failed=r.items_failed, attempt=r.attempt)
            for r, start in zip(records, starts)]


def lanes(timeline: list[Bar]) -> list[str]:
    """The workers, in the order they first started a mini-batch."""
    first: dict[str, float] = {}
    for bar in sorted(timeline, key=lambda b: b.start):
        first.setdefault(bar.worker, bar.start)
    return list(first)


def _svg(figure: Figure) -> str:
    import matplotlib

    buffer = io.StringIO()
    # Text stays text: no glyph definitions whose ids would clash between the page's pictures.
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # inline: no XML prolog or doctype


def timeline_svg(timeline: list[Bar], workers: list[str]) -> str:
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    lane_of = {worker: n for n, worker in enumerate(workers)}
    figure = Figure(figsize=(10, 1.2 + 0.35 * max(1, len(workers))))
    axes = figure.add_subplot()
    span = max([b.end for b in timeline] + [1e-3])
    shortest = span / 400  # a bar too short to see still shows
    for bar in timeline:
        [rectangle] = axes.barh(lane_of[bar.worker], max(bar.seconds, shortest), left=bar.start, height=0.7,
                                color=COLOURS[bar.outcome], edgecolor="white", linewidth=0.3)
        rectangle.set_gid(f"minibatch-{bar.index}")
    axes.set_yticks(range(len(workers)), labels=workers)
    for n, label in enumerate(axes.get_yticklabels()):
        label.set_gid(f"lane-{n}")
    axes.invert_yaxis()
    axes.set_xlabel("seconds since the job started")
    axes.set_xlim(0, span * 1.02)
    present = sorted({b.outcome for b in timeline}, key=list(COLOURS).index)
    axes.legend(handles=[Patch(color=COLOURS[o], label=o) for o in present], loc="upper left", bbox_to_anchor=(1.01, 1),
                fontsize="small")
    return _svg(figure)


def throughput_svg(timeline: list[Bar]) -> str:
    """Inputs finished per second over the job's time, and their running total."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3))
    axes = figure.add_subplot()
    span = max([b.end for b in timeline] + [1e-3])
    width = span / THROUGHPUT_BINS
    counts = [0.0] * THROUGHPUT_BINS
    for bar in timeline:
        counts[min(THROUGHPUT_BINS - 1, int(bar.end / width))] += bar.items - bar.items_failed
    axes.bar([width * (n + 0.5) for n in range(THROUGHPUT_BINS)], [c / width for c in counts], width=width * 0.9,
             color="#1565c0")
    axes.set_xlabel("seconds since the job started")
    axes.set_ylabel("inputs scored / s")
    total = axes.twinx()
    ends = sorted(timeline, key=lambda b: b.end)
    running, points = 0, []
    for bar in ends:
        running += bar.items - bar.items_failed
        points.append(running)
    total.step([b.end for b in ends], points, where="post", color="#424242")
    total.set_ylabel("inputs scored, total")
    return _svg(figure)


def _table(headers: list[str] | None, rows: list[list[Any]], attrs: list[str] | None = None) -> str:
    head = "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr></thead>" if headers else ""
    body = "".join(
        f"<tr{(' ' + attrs[n]) if attrs else ''}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
        for n, row in enumerate(rows))
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _workers_table(timeline: list[Bar], workers: list[str]) -> str:
    rows, attrs = [], []
    for worker in workers:
        mine = [b for b in timeline if b.worker == worker]
        rows.append([worker, len(mine), f"{sum(b.seconds for b in mine):.3f}"])
        attrs.append(f'data-worker="{html.escape(worker, quote=True)}"')
    return _table(["worker", "mini-batches", "busy seconds"], rows, attrs)


def _cost_html(summary: dict[str, Any] | None) -> str:
    cost = (summary or {}).get("cost")
    if not cost:
        return "<p>The cost table appears once the job has ended (it comes from its summary.json).</p>"
    functions = _table(["function", "invocations", "seconds", "memory (MB)", "GB-seconds"],
                       [[name, f["invocations"], f"{f['seconds']:.3f}", f["memory_mb"], f"{f['gb_seconds']:.4f}"]
                        for name, f in cost["functions"].items()])
    requests = _table(["requests", "count"], [[k, v] for k, v in cost["requests"].items()])
    usd = _table(["service", "estimated USD"], [[k, f"{v:.6f}"] for k, v in cost["usd"].items()])
    return (f'<p class="note">{html.escape(cost["note"])}</p>'
            f'<div class="cost" id="cost">{functions}{requests}{usd}</div>')


def render(data: ReportData) -> str:
    """The report page (pure: no AWS call)."""
    job = data.job
    timeline = bars(job, data.batches)
    workers = lanes(timeline)
    slowest = sorted(timeline, key=lambda b: b.seconds, reverse=True)[:SLOWEST]
    total_items = job.total_items if job.total_items is not None else job.items_succeeded + job.items_failed
    planned = job.total_batches if job.total_batches is not None else "?"
    facts = [("job", job.job_id), ("state", job.state), ("endpoint", job.endpoint), ("input", job.input_uri),
             ("mini-batches", f"{job.batches_done} done of {planned} ({job.batches_failed} failed)"),
             ("inputs", f"{job.items_succeeded} scored, {job.items_failed} failed, of {total_items}"),
             ("retries", job.retries)]
    if job.ended_at:
        facts.append(("duration", f"{job.ended_at - job.created_at:.1f} s"))
    if job.reason:
        facts.append(("reason", job.reason))
    if job.reused_from:
        facts.append(("reused", f"the output of job {job.reused_from}, which ran nothing again: see its report"))
    failures = (_table(["error type", "failed inputs"], [[k, v] for k, v in data.failures_by_type.items()])
                if data.failures_by_type else "<p>No input failed.</p>")
    pictures = (f'<div class="figure" id="timeline">{timeline_svg(timeline, workers)}</div>'
                f"{_workers_table(timeline, workers)}"
                f"<h2>Throughput</h2><div class=\"figure\" id=\"throughput\">{throughput_svg(timeline)}</div>"
                if timeline else "<p>No mini-batch has been recorded yet.</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>parallelrun report: {html.escape(job.job_id)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #212121; }}
table {{ border-collapse: collapse; margin: 0.5em 1.5em 1em 0; display: inline-table; vertical-align: top; }}
th, td {{ border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f5f5f5; }}
.figure svg {{ max-width: 100%; height: auto; }}
.note {{ color: #616161; font-style: italic; }}
</style></head>
<body>
<h1>Job {html.escape(job.job_id)}</h1>
{_table(None, [[k, v] for k, v in facts])}
<h2>Timeline</h2>
<p>One lane per worker; each mini-batch is a bar from the start of its recorded attempt to its record,
coloured by outcome ({", ".join(COLOURS)}).</p>
{pictures}
<h2>Slowest mini-batches</h2>
{_table(["mini-batch", "worker", "attempt", "inputs", "seconds", "outcome"],
        [[b.index, b.worker, b.attempt, b.items, f"{b.seconds:.3f}", b.outcome] for b in slowest])}
<h2>Failures by error type</h2>
<div id="failures">{failures}</div>
<h2>Cost</h2>
{_cost_html(data.summary)}
</body></html>
"""
