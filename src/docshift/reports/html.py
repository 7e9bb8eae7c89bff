"""``report.html``: one self-contained page (inline CSS and SVG; no script, no link, no font or image
fetched), so it can be attached to a ticket or opened offline years later."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any

from docshift.reports.charts import PALETTE, Mark, Series, line_chart
from docshift.runfolder.record import COUNT_COLUMNS

__all__ = ["render_html"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;
color:#111827;background:#fff;padding:0 16px}
h1{font-size:22px;margin:0 0 4px;overflow-wrap:anywhere}h2{font-size:17px;margin:28px 0 8px;
border-bottom:1px solid #e5e7eb;padding-bottom:4px}
.scroll{overflow-x:auto;max-width:100%}td strong{white-space:nowrap}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{padding:4px 8px;border-bottom:1px solid
#e5e7eb;text-align:left;vertical-align:top}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;
white-space:nowrap}td{overflow-wrap:anywhere}
th{background:#f9fafb;font-weight:600}.badge{display:inline-block;border-radius:4px;padding:2px 8px;
font-size:13px;font-weight:600;margin:0 6px 4px 0;color:#fff;white-space:nowrap}
.HEALTHY,.finished{background:#16a34a}
.DEGRADED,.stopped,.interrupted,.conflicts,.resumed,.partly_rolled_back{background:#d97706}
.CRITICAL,.failed,.rolled_back{background:#dc2626}
.running,.dry-run{background:#2563eb}code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;
font-size:13px}pre{background:#f3f4f6;padding:8px 10px;border-radius:4px;margin:4px 0;white-space:pre-wrap;
overflow-wrap:anywhere}
.muted{color:#6b7280;font-size:13px}svg.chart{display:block;margin:8px 0;max-width:100%;height:auto}
.chart .grid{stroke:#e5e7eb;stroke-width:1}.chart .frame{fill:none;stroke:#9ca3af}
.chart .tick,.chart .legend{font-size:11px;fill:#374151}.chart .axis{font-size:12px;fill:#374151}
.chart .chart-title{font-size:14px;font-weight:600;fill:#111827}.chart .no-data{font-size:13px;fill:#6b7280}
.chart .mark{stroke:#6b7280;stroke-width:1;stroke-dasharray:4 3}.chart .mark.resume{stroke:#d97706;
stroke-width:1.5;stroke-dasharray:none}
.chart .mark-label{font-size:10px;fill:#6b7280}.chart .mark-label.resume{fill:#b45309;font-weight:600}
.chart .note{font-size:11px;fill:#6b7280}
ul{margin:4px 0;padding-left:20px;font-size:13px}
@media (max-width:900px){
table.cards,table.cards tbody{display:block}table.cards thead{display:none}
table.cards tr{display:grid;grid-template-columns:repeat(auto-fill,minmax(104px,1fr));border:1px solid
#e5e7eb;border-radius:4px;margin:0 0 8px;padding:4px 0}
table.cards td{border:0;text-align:left}table.cards td:first-child{grid-column:1/-1;font-weight:600}
table.cards td::before{content:attr(data-label);display:block;font-size:11px;color:#6b7280;font-weight:400}
table.cards td:first-child::before{content:none}}
"""

_COUNTS = COUNT_COLUMNS
_ALWAYS = ("verified", "mismatched")
"""A rollback's check of what it undid: shown even at zero (no mismatch is the news)."""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    return f"{value:,.0f}" if isinstance(value, int | float) else _e(value)


def _ms(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value * 1000:,.0f} ms"


def _when(unix: Any) -> str:
    if not isinstance(unix, int | float):
        return "-"
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    whole = int(seconds)
    return (
        f"{whole // 3600}h {whole % 3600 // 60:02d}m {whole % 60:02d}s"
        if whole >= 3600
        else (f"{whole // 60}m {whole % 60:02d}s" if whole >= 60 else f"{seconds:.1f}s")
    )


def _table(
    headers: list[str], rows: list[list[str]], numeric: set[int] | None = None, *, cards: bool = False
) -> str:
    """A table in a horizontally scrolling box (a wide one never runs past the page); ``cards``: on
    a narrow page each row becomes a card of labelled values instead."""
    numeric = numeric or set()
    head = "".join(f'<th class="{"n" if i in numeric else ""}">{_e(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"n" if i in numeric else ""}" data-label="{_e(headers[i])}">{cell}</td>'
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    kind = ' class="cards"' if cards else ""
    return f'<div class="scroll"><table{kind}>{thead}<tbody>{body}</tbody></table></div>'


_LATENCY_LOOK = {"p50": (None, 1.8), "p95": ("7 4", 2.2), "p99": (None, 5.0)}
"""How each percentile is drawn: p99 wide and pale underneath, p95 dashed on top of it, so the two
stay visible where they are equal (a commit latency histogram's top buckets often coincide)."""


def _series(group: dict[str, list[list[Any]]], dashes: tuple[str | None, ...] = (None,)) -> list[Series]:
    return [
        Series(
            name,
            [(float(x), None if y is None else float(y)) for x, y in points],
            PALETTE[index % len(PALETTE)],
            dashes[index % len(dashes)],
        )
        for index, (name, points) in enumerate(group.items())
    ]


def _latency_series(group: dict[str, list[list[Any]]]) -> list[Series]:
    """p99 first (drawn underneath), then p95, then p50."""
    colours = {"p50": PALETTE[0], "p95": PALETTE[1], "p99": PALETTE[2]}
    drawn = sorted(group.items(), key=lambda item: -int(item[0][1:]) if item[0][1:].isdigit() else 0)
    return [
        Series(
            name,
            [(float(x), None if y is None else float(y)) for x, y in points],
            colours.get(name, PALETTE[3]),
            _LATENCY_LOOK.get(name, (None, 1.8))[0],
            width=_LATENCY_LOOK.get(name, (None, 1.8))[1],
            opacity=0.45 if name == "p99" else 1.0,
        )
        for name, points in drawn
    ]


def _equal_share(group: dict[str, list[list[Any]]], first: str, second: str) -> float:
    """The share of the points at which two percentiles are equal (their lines coincide)."""
    one, two = group.get(first) or [], group.get(second) or []
    pairs = [(a[1], b[1]) for a, b in zip(one, two, strict=False) if a[1] is not None and b[1] is not None]
    return sum(1 for a, b in pairs if abs(a - b) < 0.05) / len(pairs) if pairs else 0.0


def _marks(timeline: dict[str, Any]) -> list[Mark]:
    labels = {"stop": "stopped", "resume": "resumed"}
    return [
        Mark(float(m["t"]), labels.get(m["kind"]) or str(m["text"])[:16], m["kind"])
        for m in timeline.get("markers", [])
        if m.get("kind") in ("control", "stop", "resume")
    ]


def _charts(timeline: dict[str, Any]) -> str:
    groups = [timeline.get(name) or {} for name in ("throughput", "latency_ms", "failures")]
    ends = [float(x) for group in groups for points in group.values() for x, _ in points]
    span = (0.0, max(ends)) if ends and max(ends) > 0 else None
    marks = _marks(timeline)
    equal = _equal_share(groups[1], "p95", "p99")
    note = (
        f"p99 equals p95 at {equal:.0%} of the points: the wide pale p99 line runs under the dashed p95"
        if equal >= 0.05
        else None
    )
    return "".join(
        [
            line_chart(
                "Throughput (documents per second)",
                _series(groups[0]),
                y_label="docs/s",
                x_range=span,
                marks=marks,
            ),
            line_chart(
                "Commit latency percentiles",
                _latency_series(groups[1]),
                y_label="ms",
                x_range=span,
                marks=marks,
                note=note,
            ),
            line_chart(
                "Failures, conflicts and retries (cumulative)",
                _series(groups[2], (None, "7 4", "2 3")),
                y_label="count",
                x_range=span,
                marks=marks,
            ),
        ]
    )


def _counts(migration: dict[str, Any]) -> dict[str, Any]:
    """A migration's counts under the table's column names (a restore's too; see checkpoints/record.py)."""
    counts = migration.get("counts")
    return counts if isinstance(counts, dict) else dict(migration.get("counters") or {})


def _count_columns(migrations: list[dict[str, Any]]) -> list[str]:
    """The usual counters, plus any other a run kept (a restore's ``restored``, ``verified``…)."""
    extra = sorted(
        {
            name
            for m in migrations
            for name, value in _counts(m).items()
            if (value or name in _ALWAYS)
            and name not in _COUNTS
            and name not in ("read", "rejected", "checked")
        }
    )
    return [*_COUNTS, *extra]


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        items: list[tuple[str, Any]] = []
        for key, item in value.items():
            items.extend(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return items
    return [(prefix, value)]


def _validation(validation: dict[str, Any] | None, kind: str) -> str:
    if not validation:
        if kind == "rollback":
            return (
                '<p class="muted">A rollback is not checked against the migrations\' rules: every '
                "document it undid was compared with its before-image (the verified and mismatched "
                "counts above).</p>"
            )
        return '<p class="muted">No validation results for this run (the migrations have no rules).</p>'
    parts = []
    if validation.get("gate"):
        parts.append(f"<p><strong>Integrity gate:</strong> {_e(validation['gate'])}</p>")
    reports = validation.get("reports") or []
    rows = [
        [
            _e(r.get("label")),
            _e(r.get("phase")),
            _n(r.get("checked")),
            _n(r.get("failed")),
            f"{float(r.get('score') or 0):.1f}%",
            _e(r.get("level")),
        ]
        for r in reports
    ]
    if rows:
        headers = ["migration", "phase", "checked", "failed", "integrity", "level"]
        parts.append(_table(headers, rows, {2, 3, 4}))
    failing = [
        [
            _e(r.get("label")),
            _e(r.get("phase")),
            _e(rule.get("rule")),
            _n(rule.get("failures")),
            _e(
                "; ".join(f"{ex.get('path')}: {ex.get('message')}" for ex in (rule.get("examples") or [])[:3])
            ),
        ]
        for r in reports
        for rule in (r.get("rules") or [])
        if rule.get("failures")
    ]
    if failing:
        parts.append(_table(["migration", "phase", "rule", "failures", "examples"], failing, {3}))
    return "".join(parts) or '<p class="muted">No validation reports.</p>'


def _changes(overrides: Any) -> str:
    """A resume's overrides as ``batch_size 100 → 50``."""
    if not isinstance(overrides, dict) or not overrides:
        return "with the run's own settings"
    return ", ".join(
        f"{name} {change.get('was')} → {change.get('now')}"
        for name, change in overrides.items()
        if isinstance(change, dict)
    )


def _iso(text: Any) -> str:
    """An ISO time (run.json's) as the report shows times."""
    try:
        return _when(datetime.fromisoformat(str(text)).timestamp())
    except ValueError:
        return _e(text)


def _facts(body: dict[str, Any], mode: str) -> list[tuple[str, str]]:
    run, outcome = body.get("run", {}), body.get("outcome", {})
    facts = [
        ("mode", _e(mode)),
        *([("reads", _e(run["reads"]))] if run.get("reads") else []),
        ("target", _e(run.get("target"))),
        ("started by", _e(run.get("user") or "(not recorded)")),
        ("created", _iso(run.get("created_at"))),
    ]
    for number, resume in enumerate(body.get("resumes") or [], 1):
        facts.append(
            (
                f"resumed ({number})",
                f"{_iso(resume.get('at'))} by {_e(resume.get('user') or '(not recorded)')}: "
                f"{_e(_changes(resume.get('overrides')))}",
            )
        )
    facts += [
        ("first event", _when(body.get("first_event_at"))),
        ("last event", _when(body.get("last_event_at"))),
        ("working time", _duration(body.get("duration_seconds"))),
        ("exit code", _e(outcome.get("exit_code"))),
        ("folder", f"<code>{_e(body.get('folder'))}</code>"),
    ]
    if outcome.get("error"):
        facts.append(("stopped because", _e(outcome.get("error"))))
    if outcome.get("hint"):
        facts.append(("hint", _e(outcome.get("hint"))))
    return facts


def _migration_tables(body: dict[str, Any]) -> str:
    """Two tables, so that each fits the page: what each migration did (counts), and how fast."""
    migrations = body.get("migrations", [])
    if not migrations:
        return '<p class="muted">No migration started.</p>'
    counts = _count_columns(migrations)
    verb = "" if body.get("execute") else "would "
    headers = [
        "migration",
        "state",
        *(f"{verb}{k}" if k in ("updated", "created", "deleted") else k for k in counts),
        "dead letters",
    ]
    rows, speed, rolled_back = [], [], []
    for m in migrations:
        counters = _counts(m)
        name = _e(m.get("migration"))
        if m.get("rollback"):
            undone = ", ".join(f"{k} {_n(v)}" for k, v in m["rollback"].items() if v) or "nothing to undo"
            rolled_back.append(
                f"<p><strong>{name}</strong>: every stage was rolled back from the before-images "
                f"({undone}).</p>"
            )
        retried = m.get("retry")
        if isinstance(retried, dict):
            rolled_back.append(f"<p><strong>{name}</strong>: {_retry_text(retried)}.</p>")
        landed = m.get("landed_after_cursor") or {}
        if any(landed.values()):
            kinds = ", ".join(f"{_n(v)} {_e(k)}" for k, v in landed.items() if v)
            resumed = (
                "a resume counts them once"
                if m.get("backup", True)
                else "with no before-image journal, a resume finds them migrated and counts them unchanged"
            )
            rolled_back.append(
                f"<p><strong>{name}</strong>: besides these counts (settled behind the cursor), "
                f"{kinds} landed after the cursor when the run stopped; {resumed}.</p>"
            )
        if m.get("write_rate"):
            rolled_back.append(
                f"<p><strong>{name}</strong>: the store refused {_n(m.get('throttled'))} requests for "
                f"load; the write rate settled at {_n(m.get('write_rate'))} ops/s.</p>"
            )
        state = _e(m.get("state"))
        rows.append(
            [
                name,
                f'<span class="badge {state}">{state}</span>',
                *(_n(counters.get(k, 0)) for k in counts),
                _n(m.get("dead_letters")),
            ]
        )
        speed.append(
            [
                name,
                _duration(m.get("elapsed_seconds")),
                _n(m.get("docs_per_second_avg")),
                _n(m.get("commits")),
                _ms(m.get("commit_p50")),
                _ms(m.get("commit_p95")),
                _ms(m.get("commit_p99")),
            ]
        )
    speed_headers = ["migration", "working time", "docs/s", "commits", "commit p50", "p95", "p99"]
    return "".join(
        [
            _table(headers, rows, set(range(2, len(headers))), cards=True),
            *rolled_back,
            _table(speed_headers, speed, set(range(1, len(speed_headers))), cards=True),
        ]
    )


def _retry_text(retried: dict[str, Any]) -> str:
    """What became of a retry's listed documents, as ``docshift retry`` says it."""
    listed, gone, unmatched = (int(retried.get(k) or 0) for k in ("listed", "gone", "unmatched"))
    left_out = int(retried.get("left_out") or 0)
    parts = [f"{_n(listed - gone - unmatched - left_out)} retried"]
    if gone:
        parts.append(f"{_n(gone)} gone (deleted since)")
    if unmatched:
        parts.append(f"{_n(unmatched)} no longer in the target")
    if left_out:
        parts.append(f"{_n(left_out)} deleted or changed out of the target while the retry ran")
    return f"{_n(listed)} dead letters listed: " + ", ".join(parts)


def _settings(body: dict[str, Any]) -> str:
    """The settings the run's latest process used; a row a resume changed says what it was before."""
    flat = [
        (k, v) for k, v in _flatten(body.get("settings") or {}) if not k.startswith("overridden on resume")
    ]
    if not flat:
        return '<p class="muted">No settings recorded.</p>'
    changed: dict[str, str] = {}
    for number, resume in enumerate(body.get("resumes") or [], 1):
        for name, change in (resume.get("overrides") or {}).items():
            if isinstance(change, dict):
                changed[name] = f"was {change.get('was')} before resume ({number})"
    rows = [[f"<code>{_e(k)}</code>", _e(v), _e(changed.get(k.rsplit(".", 1)[-1], ""))] for k, v in flat]
    headers = ["setting", "value", "changed on resume"] if changed else ["setting", "value"]
    return _table(headers, [row[: len(headers)] for row in rows])


def _badges(body: dict[str, Any], state: str, mode: str) -> str:
    health = body.get("health") or {}
    resumes = len(body.get("resumes") or [])
    times = "" if resumes == 1 else f" {resumes} times"
    resumed = f'<span class="badge resumed">resumed{times}</span>' if resumes else ""
    return (
        f'<p><span class="badge {_e(state)}">{_e(state)}</span>'
        f'<span class="badge {_e(health.get("status"))}">health {_e(health.get("score"))}/100 '
        f"{_e(health.get('status'))}</span>"
        f'<span class="badge {"dry-run" if mode == "dry run" else "running"}">{_e(mode)}</span>{resumed}</p>'
    )


def _list(items: list[str]) -> str:
    return (
        "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"
        if items
        else '<p class="muted">None.</p>'
    )


def render_html(body: dict[str, Any]) -> str:
    """The report page for a report body (see :func:`docshift.reports.report.collect_report`)."""
    health = body.get("health") or {}
    state = str(body.get("state") or "unknown")
    mode = "execute" if body.get("execute") else "dry run"
    kind = str(body.get("kind", "run"))
    title = f"docshift {kind} {body.get('run_id')}"
    issues = health.get("issues") or []
    markers = [
        m
        for m in body.get("timeline", {}).get("markers", [])
        if m.get("kind") in ("stop", "control", "resume")
    ]
    commands = "".join(
        f'<p class="muted">{_e(name)}</p><pre>{_e(command)}</pre>'
        for name, command in (body.get("commands") or {}).items()
    )
    page = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        _badges(body, state, mode),
        _table(["", ""], [[f"<strong>{_e(k)}</strong>", v] for k, v in _facts(body, mode)]),
        "<h2>Next steps</h2>",
        commands,
        "<h2>Migrations</h2>",
        _migration_tables(body),
        "<h2>Over time</h2>",
        _charts(body.get("timeline") or {}),
        "<h2>Health</h2>",
        f"<p>Score {_e(health.get('score'))}/100, {_e(health.get('status'))}: 100 - 5 per warning "
        "- 15 per error - 30 per critical issue.</p>",
        _list([f"<strong>{_e(i.get('severity'))}</strong>: {_e(i.get('message'))}" for i in issues])
        if issues
        else '<p class="muted">No issues.</p>',
        "<h2>Stops, resumes and control actions</h2>",
        _list([f"{_duration(m.get('t'))}: {_e(m.get('kind'))} - {_e(m.get('text'))}" for m in markers]),
        "<h2>Warnings</h2>",
        _list([_e(w) for w in body.get("warnings", [])]),
        "<h2>Validation</h2>",
        _validation(body.get("validation"), kind),
        "<h2>Settings</h2>",
        _settings(body),
        f'<p class="muted">Generated by docshift at {_when(datetime.now(UTC).timestamp())}.</p>',
        "</body></html>",
    ]
    return "\n".join(page)
