"""`kernelwright report`: a self-contained HTML file, rendered in a real headless browser."""
from __future__ import annotations

import collections
import html.parser
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app  # the package registers every command
from agent.outputs.report import fmt_peak, fmt_speedup
from store import Store


@pytest.fixture(scope="module")
def page(db: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    result = CliRunner().invoke(app, ["report", "--out", str(out), "--db", str(db)])
    assert result.exit_code == 0, result.output
    return out


class Cells(html.parser.HTMLParser):
    """Table cells by table id, and the text of elements with an id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = collections.defaultdict(list)
        self.ids: dict[str, str] = {}
        self._table: str | None = None
        self._open: list[str | None] = []  # ids of open elements, innermost last

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag == "td" and self._table:
            self.tables[self._table][-1].append("")
        self._open.append(a.get("id"))
        if a.get("id"):
            self.ids[a["id"]] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._table and self.tables[self._table] and self.tables[self._table][-1] and self.lasttag == "td":
            self.tables[self._table][-1][-1] += data.strip()
        for i in filter(None, self._open):
            self.ids[i] += data


def parsed(text: str) -> Cells:
    p = Cells()
    p.feed(text)
    return p


def expected_rows(db: Path, run: int | None = None) -> dict[str, list[str]]:
    """Per task, what the leaderboard must show, computed from the store here."""
    with Store.open(str(db), db) as store:
        rows = store.evaluation_rows(run)
    out = {}
    for task in {r["task"] for r in rows}:
        mine = [r for r in rows if r["task"] == task]
        correct = [r for r in mine if r["correct"] and r["speedup"] is not None]
        wrong = {r["candidate_id"] for r in mine if r["status"] in ("incorrect", "rejected")}
        medians = {c: statistics.median(r["speedup"] for r in correct if r["candidate_id"] == c)
                   for c in {r["candidate_id"] for r in correct} - wrong}  # re-measured: the median
        best = next(r for r in correct if r["candidate_id"] == max(medians, key=medians.get))
        peaks = [r for r in correct if r["candidate_id"] == best["candidate_id"]]
        assert all(r["peak_fraction"] is not None for r in peaks)  # the test store's evaluator has ceilings
        peak = fmt_peak(statistics.median(r["peak_fraction"] for r in peaks), peaks[-1]["bound"])
        out[task] = [task, fmt_speedup(medians[best["candidate_id"]]), peak, best["candidate_id"], str(len(mine)),
                     str(len(correct)), "cpu", best["fingerprint_id"]]
    return out


def leaderboard(cells: Cells) -> dict[str, list[str]]:
    return {r[0]: r for r in cells.tables["leaderboard"] if r}


def test_the_report_is_one_file_with_charts_and_the_stores_numbers(db: Path, page: Path):
    text = page.read_text()
    assert "<script" not in text and "<link" not in text and "<img" not in text  # nothing to fetch or run
    assert 'src="http' not in text and 'href="http' not in text
    assert text.count("<svg") == 4  # progress, distribution, failures, LLM spend
    cells = parsed(text)
    assert leaderboard(cells) == expected_rows(db)
    with Store.open(str(db), db) as store:
        rows, calls = store.evaluation_rows(), store.llm_calls()
    assert cells.ids["n-evaluations"] == str(len(rows)) and cells.ids["n-llm-calls"] == str(len(calls))
    assert cells.ids["n-failed"] == str(sum(r["status"] != "ok" for r in rows)) != "0"
    assert cells.ids["cost"] == f"${sum(c['cost_usd'] for c in calls):.4f}"
    lines = [(r["status"], r["reason"].strip().splitlines()[0]) for r in rows if r["status"] != "ok"]
    failures = collections.Counter((s, line if len(line) <= 100 else line[:97] + "...") for s, line in lines)
    shown = {(status, reason): int(n) for status, reason, n in cells.tables["failures"][1:]}
    assert shown == dict(failures) and ("incorrect", "default/none") in {(s, r.split(":")[0]) for s, r in shown}


def test_a_run_filter_and_a_missing_run(db: Path, tmp_path: Path):
    out = tmp_path / "run1.html"
    result = CliRunner().invoke(app, ["report", "--out", str(out), "--run", "1", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    cells = parsed(out.read_text())
    assert leaderboard(cells) == expected_rows(db, run=1) and set(leaderboard(cells)) == {"softmax", "rmsnorm"}
    assert cells.ids["n-llm-calls"] == "0" and "No LLM calls" in out.read_text()
    result = CliRunner().invoke(app, ["report", "--out", str(tmp_path / "x.html"), "--run", "99", "--db", str(db)])
    assert result.exit_code == 2 and result.output.strip() == "Error: no run 99 in the store"
    assert not (tmp_path / "x.html").exists()


def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: the page must need nothing from a network
             f"--user-data-dir={tmp / 'profile'}"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=120, cwd=tmp)


def test_a_headless_browser_renders_the_numbers(db: Path, page: Path, tmp_path: Path):
    dom = chromium("--dump-dom", page.as_uri(), tmp=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    cells = parsed(dom.stdout)
    assert leaderboard(cells) == expected_rows(db)  # what the browser shows, cell by cell
    with Store.open(str(db), db) as store:
        assert cells.ids["n-evaluations"] == str(len(store.evaluation_rows()))
    shot = tmp_path / "report.png"
    r = chromium(f"--screenshot={shot}", "--window-size=1000,2400", page.as_uri(), tmp=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # a blank page compresses to a few kB
