"""report.html as its reader sees it, on the memory store: the page parsed back into its sections,
tables and chart lines, for a run stopped and resumed with other settings and for a rollback that
met conflicts; and (where Chromium is installed) laid out at 1400 and 800 pixels, with nothing
running past the page, and screenshotted by scripts/screenshot_report.sh."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from docshift.commands.rollback import RollbackOptions, rollback
from docshift.commands.run import RunOptions, result_of, run
from docshift.config import Config, EngineConfig, StoreConfig
from docshift.engine.controls import Controls
from docshift.engine.hooks import Checkpointed
from docshift.errors import RollbackConflicts, RunStopped
from docshift.reports.html import render_html
from docshift.reports.report import build_report
from docshift.runfolder import read_versioned
from docshift.store import DelegatingStore, Query, Write, WriteResult
from docshift.testing import MemoryStore, RecordingHooks
from tests.unit.engine_support import person, seed

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "migrations"
URL = re.compile(r"(?i)\b(?:https?|ftp|wss?)://|\bsrc\s*=|<script|<link|@import|url\(")
TIER = '''"""Give every person a tier (no rules)."""
collection = "users"

def up(doc):
    return {**doc.data, "tier": "gold"}
'''


class Page(HTMLParser):
    """A report page's sections (by their h2), each with its tables (rows of cell texts) and its
    paragraphs; the badges under the title; the chart SVGs' elements."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.section = "top"
        self.tables: dict[str, list[list[list[str]]]] = {}
        self.texts: dict[str, list[str]] = {}
        self.badges: list[str] = []
        self.svg: list[tuple[str, dict[str, str]]] = []
        self._tag: list[str] = []
        self._cell: list[str] | None = None
        self._text: list[str] = []
        self._in_svg = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self._tag.append(tag)
        if tag == "svg":
            self._in_svg = True
        if self._in_svg:
            self.svg.append((tag, values))
        if tag == "h2":
            self._text = []
        elif tag == "table":
            self.tables.setdefault(self.section, []).append([])
        elif tag == "tr":
            self.tables[self.section][-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "span" and "badge" in values.get("class", ""):
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if self._tag:
            self._tag.pop()
        if tag == "svg":
            self._in_svg = False
        if tag == "h2":
            self.section = "".join(self._text).strip()
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self.section][-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "span" and self.section == "top" and self._text:
            self.badges.append("".join(self._text).strip())
            self._text = []
        elif tag == "p":
            self.texts.setdefault(self.section, []).append(" ".join("".join(self._text).split()))

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_svg and self._tag and self._tag[-1] == "text":
            self.svg.append(("#text", {"text": data}))
        if self._tag and self._tag[-1] in ("h2", "span", "p", "strong", "code"):
            self._text.append(data)
        if self._tag and self._tag[-1] == "p":
            pass

    def table(self, section: str, index: int = 0) -> list[dict[str, str]]:
        header, *rows = self.tables[section][index]
        return [dict(zip(header, row, strict=True)) for row in rows]

    def facts(self) -> dict[str, str]:
        return {row[0]: row[1] for row in self.tables["top"][0]}

    def chart(self, title: str) -> list[tuple[str, dict[str, str]]]:
        """The elements of the chart titled ``title``."""
        start = next(
            i for i, (tag, a) in enumerate(self.svg) if tag == "svg" and a.get("aria-label") == title
        )
        end = next((i for i in range(start + 1, len(self.svg)) if self.svg[i][0] == "svg"), len(self.svg))
        return self.svg[start:end]


def lines_of(chart: list[tuple[str, dict[str, str]]], series: str) -> Iterator[dict[str, str]]:
    return (a for tag, a in chart if tag == "polyline" and a.get("data-series") == series)


def dots_of(chart: list[tuple[str, dict[str, str]]]) -> list[dict[str, str]]:
    return [a for tag, a in chart if tag == "circle"]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    shutil.copy(EXAMPLES / "0001_split_full_name.py", migrations)  # it has inline rules
    (migrations / "0002_tier.py").write_text(TIER, encoding="utf-8")
    return Config(
        store=StoreConfig(project="memory"),
        engine=EngineConfig(batch_size=50, min_batch_size=10, checkpoint_every_docs=50),
        migrations_dir=migrations,
        runs_dir=tmp_path / "runs",
    )


def emailed(index: int) -> dict[str, Any]:
    """A person whose document keeps 0001's rules (it has an email)."""
    return {**person(index), "email": f"p{index}@example.org"}


class StopIn(RecordingHooks):
    """Stops the run at the first checkpoint of a migration whose label starts with ``prefix``."""

    def __init__(self, controls: Controls, prefix: str) -> None:
        super().__init__()
        self.controls, self.prefix = controls, prefix

    def checkpointed(self, event: Checkpointed) -> None:
        super().checkpointed(event)
        if event.migration.startswith(self.prefix):
            self.controls.request_stop("stopped by request (POST /stop)")


def resumed_run(config: Config, store: MemoryStore) -> Path:
    """A run stopped in 0002 (0001 finished before the stop), resumed with --batch-size 25."""
    controls = Controls()
    with pytest.raises(RunStopped) as stopped:
        run(config, RunOptions(execute=True), store=store, hooks=StopIn(controls, "0002"), controls=controls)
    assert type(stopped.value) is RunStopped  # the requested stop, in 0002
    result = result_of(stopped.value)
    assert result is not None
    folder = result.run.folder
    flagged = dataclasses.replace(
        config,
        engine=dataclasses.replace(config.engine, batch_size=25),
        sources={**config.sources, "batch_size": "--batch-size"},
    )
    run(flagged, RunOptions(resume=folder.name), store=store)
    return folder


@pytest.fixture
def resumed(config: Config) -> tuple[dict[str, Any], Page]:
    """The report of :func:`resumed_run`: its JSON body and its page."""
    store = MemoryStore()
    seed(store, 400, make=emailed)
    folder = resumed_run(config, store)
    body = read_versioned(folder / "report.json", "docshift-report", 1)
    return body, Page((folder / "report.html").read_text(encoding="utf-8"))


def test_a_resumed_run_is_marked_with_who_resumed_it_and_what_changed(
    resumed: tuple[dict[str, Any], Page],
) -> None:
    body, page = resumed
    assert "resumed" in page.badges
    facts = page.facts()
    assert facts["started by"] and facts["started by"] == body["run"]["user"]
    assert "batch_size 50 → 25" in facts["resumed (1)"] and body["run"]["user"] in facts["resumed (1)"]
    throughput = page.chart("Throughput (documents per second)")
    assert "resumed" in [a["text"] for tag, a in throughput if tag == "#text"]
    assert any(tag == "line" and "resume" in a.get("class", "") for tag, a in throughput)
    listed = page.texts.get("Stops, resumes and control actions", []) + [
        cell
        for table in page.tables.get("Stops, resumes and control actions", [])
        for row in table
        for cell in row
    ]
    assert "resume" in [m["kind"] for m in body["timeline"]["markers"]] and listed is not None


def test_a_resumed_run_shows_the_settings_it_continued_with_and_what_they_were(
    resumed: tuple[dict[str, Any], Page],
) -> None:
    _, page = resumed
    settings = {row["setting"]: row for row in page.table("Settings")}
    assert settings["engine.batch_size"]["value"] == "25"
    assert settings["engine.batch_size"]["changed on resume"] == "was 50 before resume (1)"
    assert settings["engine.concurrency"]["changed on resume"] == ""


def test_a_resumed_run_keeps_the_validation_of_what_ran_before_the_resume(
    resumed: tuple[dict[str, Any], Page],
) -> None:
    """0001's inline rules checked every document it wrote, in the process before the resume."""
    body, page = resumed
    validation = {(row["migration"], row["phase"]): row for row in page.table("Validation")}
    [row_0001] = [m for m in body["migrations"] if m["migration"].startswith("0001")]
    checked = row_0001["counters"]["checked"]
    assert checked > 0 and validation[("0001_split_full_name", "inline")]["checked"] == f"{checked:,}"


def test_a_resumed_run_draws_each_pass_as_a_line_not_dots(resumed: tuple[dict[str, Any], Page]) -> None:
    _, page = resumed
    throughput = page.chart("Throughput (documents per second)")
    assert dots_of(throughput) == []
    for label in ("0001_split_full_name", "0002_tier"):
        assert list(lines_of(throughput, label)), label


def test_p99_stays_visible_where_it_equals_p95() -> None:
    points = [(float(t), 50.0) for t in range(10)]
    html = render_html(
        {
            "run_id": "r",
            "timeline": {
                "latency_ms": {"p50": [[x, 20.0] for x, _ in points], "p95": points, "p99": points},
                "markers": [],
            },
        }
    )
    latency = Page(html).chart("Commit latency percentiles")
    [p95] = lines_of(latency, "p95")
    [p99] = lines_of(latency, "p99")
    order = [a.get("data-series") for tag, a in latency if tag == "polyline"]
    assert order.index("p99") < order.index("p95")  # p99 underneath, p95 on top
    assert float(p99["stroke-width"]) >= 2 * float(p95["stroke-width"]) and p95.get("stroke-dasharray")
    texts = " ".join(a["text"] for tag, a in latency if tag == "#text")
    assert "p99 equals p95" in texts
    # the legend shows each line as drawn (dashes and width), not a colour square
    legend = [a for tag, a in latency if tag == "line" and a.get("stroke") == p99["stroke"]]
    assert legend and legend[0]["stroke-width"] == p99["stroke-width"]


class SlowCommits(DelegatingStore):
    """Commits that take a while, so that a rollback reports its progress (about every second)."""

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        time.sleep(0.25)
        return super().commit(writes)


def rolled_back(config: Config) -> Path:
    """A run, then the application writing 30 of its documents, then its rollback (conflicts)."""
    store = MemoryStore()
    seed(store, 400, make=emailed)
    done = run(config, RunOptions(execute=True), store=store).run
    docs = list(store.stream(Query("users")))[:30]
    assert all(r.ok for r in store.commit([Write.set(d.path, {**d.data, "app": 1}) for d in docs]))
    with pytest.raises(RollbackConflicts):
        rollback(config, RollbackOptions(run_id=done.folder.name, execute=True), store=SlowCommits(store))
    [folder] = [p for p in config.runs_dir.iterdir() if p.name != done.folder.name]
    return folder


def test_a_rollback_report_charts_the_conflicts_its_table_counts(config: Config) -> None:
    folder = rolled_back(config)
    body = build_report(folder).body
    page = Page((folder / "report.html").read_text(encoding="utf-8"))
    assert body["kind"] == "rollback" and page.facts()["started by"] == body["run"]["user"] != ""
    rows = page.table("Migrations")
    in_table = sum(int(row["conflicts"].replace(",", "")) for row in rows)
    assert in_table == sum(m["counts"]["conflicts"] for m in body["migrations"]) > 0
    conflicts = body["timeline"]["failures"]["conflicts"]
    assert max(y for _, y in conflicts if y is not None) == conflicts[-1][1] == in_table
    # one line per pass of the rollback, named as the table names it, with its rate
    passes = {f"rollback {m['migration']}" for m in body["migrations"]}
    assert set(body["timeline"]["throughput"]) == passes
    assert max(y for points in body["timeline"]["throughput"].values() for _, y in points if y) > 0
    assert {"verified", "mismatched"} <= set(rows[0])
    validation = " ".join(page.texts["Validation"])
    assert "the migrations have no rules" not in validation and "before-image" in validation
    assert not URL.search((folder / "report.html").read_text(encoding="utf-8"))


CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)),
    None,
)
MEASURE = """<script>
window.addEventListener('load', () => {
  const page = document.documentElement.clientWidth;
  const out = [...document.querySelectorAll('table, svg, pre, h1, p')]
    .filter(e => e.getBoundingClientRect().right > page + 0.5)
    .map(e => e.tagName + ':' + (e.closest('div,body').previousElementSibling || {}).textContent);
  const marker = document.createElement('output');
  marker.id = 'overflow';
  marker.textContent = JSON.stringify({page, wide: document.documentElement.scrollWidth, out});
  document.body.appendChild(marker);
});
</script>"""


def laid_out(html: Path, width: int, tmp_path: Path) -> dict[str, Any]:
    """What overflows the page at ``width`` pixels: a copy of the page with a measuring script,
    loaded in headless Chromium (the report itself has no script)."""
    import json

    probe = tmp_path / f"probe-{width}.html"
    probe.write_text(
        html.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"), encoding="utf-8"
    )
    assert CHROMIUM is not None
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--window-size={width},2000",
            "--virtual-time-budget=2000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    found = re.search(r'<output id="overflow">(.*?)</output>', dom)
    assert found, dom[-2000:]
    result: dict[str, Any] = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    return result


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (scripts/screenshot_report.sh installs it)")
def test_the_reports_fit_the_page_at_1400_and_800_pixels_and_screenshot(
    config: Config, tmp_path: Path
) -> None:
    store = MemoryStore()
    seed(store, 400, make=emailed)
    resumed = resumed_run(config, store)
    store.commit([Write.set("users/u00003", {"app": 1})])
    with pytest.raises(RollbackConflicts):
        rollback(config, RollbackOptions(run_id=resumed.name, execute=True), store=store)
    [undone] = [p for p in config.runs_dir.iterdir() if p.name != resumed.name]
    for folder in (resumed, undone):
        for width in (1400, 800):
            layout = laid_out(folder / "report.html", width, tmp_path)
            assert layout["wide"] <= layout["page"] and layout["out"] == [], (folder.name, width, layout)
            shot = tmp_path / f"{folder.name}-{width}.png"
            done = subprocess.run(
                [str(ROOT / "scripts" / "screenshot_report.sh"), str(folder), str(shot), str(width)],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and shot.stat().st_size > 20_000
