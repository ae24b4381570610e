"""The HTML report of a job, checked by parsing it: every worker lane, every mini-batch once in
the timeline and coloured by its outcome, the failures by error type, the cost table, and
nothing fetched from outside the file."""

from __future__ import annotations

import html.parser
import re
from typing import Any

import pytest

from parallelrun.client import report, sdk
from parallelrun.client.api import Client
from parallelrun.core.settings import RunSettings
from parallelrun.store import batches, jobs
from tests.conftest import put_files
from tests.test_failures import failures_of, script
from tests.test_pipeline import start

TROUBLE = """
content = [open(p).read() for p in mini_batch]
if any('bad' in c for c in content):
    raise ValueError('cannot score a bad input')
if any('key' in c for c in content):
    raise KeyError('no such key')
if mini_batch_context.attempt == 1 and any('flaky' in c for c in content):
    raise RuntimeError('flaky first attempt')
"""
INPUTS = ["00-ok.txt", "01-ok.txt", "02-bad.txt", "03-ok.txt", "04-key.txt", "05-ok.txt", "06-flaky.txt",
          "07-ok.txt", "08-ok.txt", "09-bad.txt"]


class Page(html.parser.HTMLParser):
    """What a program needs from the page: element ids, the bars' fills, the workers, the tables."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.fills: dict[int, str] = {}
        self.workers: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.references: list[str] = []
        self._bar: int | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        for name in ("src", "href", "xlink:href"):
            if attr.get(name):
                self.references.append(attr[name] or "")
        if tag == "link":
            self.references.append(attr.get("href") or "link")
        if attr.get("id"):
            self.ids.append(attr["id"] or "")
            match = re.fullmatch(r"minibatch-(\d+)", attr["id"] or "")
            self._bar = int(match.group(1)) if match else self._bar
        if tag == "path" and self._bar is not None and self._bar not in self.fills:
            self.fills[self._bar] = re.search(r"fill:\s*(#[0-9a-f]{6})", attr.get("style") or "").group(1)
            self._bar = None
        if tag == "tr" and "data-worker" in attr:
            self.workers.append(attr["data-worker"] or "")
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def table(self, first_header: str) -> list[list[str]]:
        return next(t for t in self.tables if t and t[0] and t[0][0] == first_header)


def parse(page: str) -> Page:
    parsed = Page()
    parsed.feed(page)
    return parsed


@pytest.fixture(scope="module")
def troubled_job(stack, tmp_path_factory) -> jobs.JobRecord:
    """Five mini-batches: two succeed (one after a retry), three fail with two error types."""
    import pickle

    from parallelrun.store import endpoints, registry

    stack.purge()
    folder = tmp_path_factory.mktemp("report")
    (folder / "score.py").write_text(script("troubled", TROUBLE))
    (folder / "model.pkl").write_bytes(pickle.dumps({"offset": 1}))
    registry.register(stack.cfg, folder / "model.pkl", "troubled")
    endpoints.create(stack.cfg, "troubled", folder, "score.py", "troubled")
    put_files(stack.cfg, "troubled/r/", INPUTS)
    return stack.run_until_done(start(stack, "troubled", "troubled/r/", {
        "mini_batch_size": "2", "run_max_try": "2", "isolate_failures": "false"}).job_id)


def test_report_of_a_job_with_failures(stack, troubled_job, tmp_path):
    job = troubled_job
    assert (job.total_batches, job.batches_failed, job.items_failed) == (5, 3, 6)
    path = tmp_path / "report.html"
    page = Client(stack.cfg).report(job.job_id, path)
    assert path.read_text(encoding="utf-8") == page
    parsed = parse(page)
    # every mini-batch exactly once in the timeline, coloured by its outcome
    bars = [i for i in parsed.ids if i.startswith("minibatch-")]
    assert sorted(bars) == [f"minibatch-{n}" for n in range(5)]
    colours = report.COLOURS
    assert parsed.fills == {0: colours["succeeded"], 1: colours["failed"], 2: colours["failed"],
                            3: colours["retried"], 4: colours["failed"]}
    # every worker lane: a label in the picture and a row of the workers table
    workers = {r.worker for r in batches.iter_batches(stack.cfg, job.job_id)}
    assert set(parsed.workers) == workers and len(parsed.workers) == len(workers)
    assert [i for i in parsed.ids if i.startswith("lane-")] == [f"lane-{n}" for n in range(len(workers))]
    # the failures by error type, as failures.jsonl has them
    counted = {row[0]: int(row[1]) for row in parsed.table("error type")[1:]}
    assert counted == {"ValueError": 4, "KeyError": 2}
    assert sum(counted.values()) == len(failures_of(stack, job))
    # the slowest mini-batches and the cost table
    assert len(parsed.table("mini-batch")) == 1 + 5
    cost = {row[0]: row[1:] for row in parsed.table("function")[1:]}
    assert int(cost["worker"][0]) == 5 + job.retries  # invocations, the retried attempts included
    assert "estimate" in page and "id=\"throughput\"" in page
    # self-contained: nothing to fetch; the only references are to the page's own elements
    assert all(ref.startswith("#") for ref in parsed.references), parsed.references
    assert "<script" not in page and "<img" not in page


def test_sdk_job_report_is_the_same_page(stack, troubled_job):
    page = sdk.Job(Client(stack.cfg), troubled_job.job_id).report()
    assert sorted(i for i in parse(page).ids if i.startswith("minibatch-")) == [f"minibatch-{n}" for n in range(5)]


def _record(index: int, worker: str, start: float, seconds: float, **fields: Any) -> batches.BatchRecord:
    values = {"status": jobs.SUCCEEDED, "items": 2, "items_succeeded": 2, "items_failed": 0, "attempt": 1, **fields}
    return batches.BatchRecord(index=index, worker=worker, started_at=start, finished_at=start + seconds, **values)


def test_one_lane_per_worker_in_order_of_first_start_and_the_slowest_first():
    job = jobs.JobRecord(job_id="j", endpoint="e", deployment={}, settings=RunSettings(), input_uri="s3://b/i/",
                   output_uri="s3://b/o/", state=jobs.RUNNING, created_at=1000.0, started_at=1000.0, total_batches=6)
    records = [_record(0, "w-b", 1001.0, 2.0), _record(1, "w-a", 1001.5, 9.0), _record(2, "w-b", 1003.0, 1.0),
               _record(3, "w-c", 1002.0, 0.5, status=jobs.FAILED, items_succeeded=0, items_failed=2),
               _record(4, "w-a", 1011.0, 3.0, attempt=2),
               batches.BatchRecord(index=5, status=jobs.SUCCEEDED, items=2, items_succeeded=2, items_failed=0, attempt=1,
                                worker="reused", reused_from="older", finished_at=1000.2)]
    page = report.render(report.ReportData(job, records, {}, None))
    parsed = parse(page)
    assert parsed.workers == ["reused", "w-b", "w-a", "w-c"]
    assert [i for i in parsed.ids if i.startswith("lane-")] == ["lane-0", "lane-1", "lane-2", "lane-3"]
    assert sorted(i for i in parsed.ids if i.startswith("minibatch-")) == [f"minibatch-{n}" for n in range(6)]
    assert parsed.fills[3] == report.COLOURS["failed"] and parsed.fills[4] == report.COLOURS["retried"]
    assert parsed.fills[5] == report.COLOURS["reused"]
    slowest = parsed.table("mini-batch")[1:]
    assert [row[0] for row in slowest[:3]] == ["1", "4", "0"] and slowest[0][4] == "9.000"
    busy = {row[0]: row[2] for row in parsed.table("worker")[1:]}
    assert busy == {"reused": "0.000", "w-b": "3.000", "w-a": "12.000", "w-c": "0.500"}
    assert "No input failed." in page and "cost table appears once the job has ended" in page


def test_the_client_reads_what_the_report_shows(stack, troubled_job):
    data = Client(stack.cfg).report_data(troubled_job.job_id)
    assert data.job.job_id == troubled_job.job_id and data.job.state == troubled_job.state
    assert sorted(r.index for r in data.batches) == list(range(5))
    assert list(data.failures_by_type.items()) == [("ValueError", 4), ("KeyError", 2)]  # the most first
    assert data.summary is not None and data.summary["errors"] == data.failures_by_type


def test_a_job_not_ended_has_no_summary_to_report_yet(stack, troubled_job):
    put_files(stack.cfg, "troubled/later/", ["00-ok.txt"])
    waiting = start(stack, "troubled", "troubled/later/", {})
    data = Client(stack.cfg).report_data(waiting.job_id)
    assert waiting.output_uri and (data.summary, data.failures_by_type, data.batches) == (None, {}, [])
    assert "The cost table appears once the job has ended" in report.render(data)
