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
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1000px;
color:#111827;background:#fff;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e5e7eb;
padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{padding:4px 8px;border-bottom:1px solid
#e5e7eb;text-align:left;vertical-align:top}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f9fafb;font-weight:600}.badge{display:inline-block;border-radius:4px;padding:2px 8px;
font-size:13px;font-weight:600;margin-right:6px;color:#fff}.HEALTHY,.finished{background:#16a34a}
.DEGRADED,.stopped,.interrupted,.conflicts{background:#d97706}.CRITICAL,.failed,.rolled_back{background:#dc2626}
.running,.dry-run{background:#2563eb}code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;
font-size:13px}pre{background:#f3f4f6;padding:8px 10px;border-radius:4px;margin:4px 0;white-space:pre-wrap}
.muted{color:#6b7280;font-size:13px}svg.chart{display:block;margin:8px 0;max-width:100%;height:auto}
.chart .grid{stroke:#e5e7eb;stroke-width:1}.chart .frame{fill:none;stroke:#9ca3af}
.chart .tick,.chart .legend{font-size:11px;fill:#374151}.chart .axis{font-size:12px;fill:#374151}
.chart .chart-title{font-size:14px;font-weight:600;fill:#111827}.chart .no-data{font-size:13px;fill:#6b7280}
.chart .mark{stroke:#6b7280;stroke-width:1;stroke-dasharray:4 3}
.chart .mark-label{font-size:10px;fill:#6b7280}
ul{margin:4px 0;padding-left:20px;font-size:13px}
"""

_COUNTS = COUNT_COLUMNS


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


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f'<th class="{"n" if i in numeric else ""}">{_e(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"n" if i in numeric else ""}">{cell}</td>' for i, cell in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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


def _charts(timeline: dict[str, Any]) -> str:
    groups = [timeline.get(name) or {} for name in ("throughput", "latency_ms", "failures")]
    ends = [float(x) for group in groups for points in group.values() for x, _ in points]
    span = (0.0, max(ends)) if ends and max(ends) > 0 else None
    marks = [
        Mark(float(m["t"]), "stopped" if m["kind"] == "stop" else str(m["text"])[:16])
        for m in timeline.get("markers", [])
        if m.get("kind") in ("control", "stop")
    ]
    dashes = (None, "7 4", "2 3")
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
                _series(groups[1], dashes),
                y_label="ms",
                x_range=span,
                marks=marks,
            ),
            line_chart(
                "Failures, conflicts and retries (cumulative)",
                _series(groups[2], dashes),
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
            if value and name not in _COUNTS and name not in ("read", "rejected", "checked")
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


def _validation(validation: dict[str, Any] | None) -> str:
    if not validation:
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


def render_html(body: dict[str, Any]) -> str:
    """The report page for a report body (see :func:`docshift.reports.report.collect_report`)."""
    run, outcome, health = body.get("run", {}), body.get("outcome", {}), body.get("health") or {}
    state = str(body.get("state") or "unknown")
    mode = "execute" if body.get("execute") else "dry run"
    title = f"docshift {body.get('kind', 'run')} {body.get('run_id')}"
    facts = [
        ("mode", _e(mode)),
        ("target", _e(run.get("target"))),
        ("started by", _e(run.get("user"))),
        ("created", _e(run.get("created_at"))),
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
    counts = _count_columns(body.get("migrations", []))
    rows = []
    rolled_back = []
    for m in body.get("migrations", []):
        counters = _counts(m)
        if m.get("rollback"):
            undone = ", ".join(f"{k} {_n(v)}" for k, v in m["rollback"].items() if v) or "nothing to undo"
            rolled_back.append(
                f"<p><strong>{_e(m.get('migration'))}</strong>: every stage was rolled back "
                f"from the before-images ({undone}).</p>"
            )
        rows.append(
            [
                _e(m.get("migration")),
                f'<span class="badge {_e(m.get("state"))}">{_e(m.get("state"))}</span>',
                *(_n(counters.get(k, 0)) for k in counts),
                _n(m.get("dead_letters")),
                _duration(m.get("elapsed_seconds")),
                _n(m.get("docs_per_second_avg")),
                _ms(m.get("commit_p50")),
                _ms(m.get("commit_p95")),
                _ms(m.get("commit_p99")),
            ]
        )
    verb = "" if body.get("execute") else "would "
    headers = [
        "migration",
        "state",
        *(f"{verb}{k}" if k in ("updated", "created", "deleted") else k for k in counts),
        "dead letters",
        "time",
        "docs/s",
        "p50",
        "p95",
        "p99",
    ]
    issues = health.get("issues") or []
    markers = [m for m in body.get("timeline", {}).get("markers", []) if m.get("kind") in ("stop", "control")]
    commands = "".join(
        f'<p class="muted">{_e(name)}</p><pre>{_e(command)}</pre>'
        for name, command in (body.get("commands") or {}).items()
    )
    settings = [[f"<code>{_e(k)}</code>", _e(v)] for k, v in _flatten(body.get("settings") or {})]
    page = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p><span class="badge {_e(state)}">{_e(state)}</span>'
        f'<span class="badge {_e(health.get("status"))}">health {_e(health.get("score"))}/100 '
        f"{_e(health.get('status'))}</span>"
        f'<span class="badge {"dry-run" if mode == "dry run" else "running"}">{_e(mode)}</span></p>',
        _table(["", ""], [[f"<strong>{_e(k)}</strong>", v] for k, v in facts]),
        "<h2>Next steps</h2>",
        commands,
        "<h2>Migrations</h2>",
        _table(headers, rows, set(range(2, len(headers))))
        if rows
        else '<p class="muted">No migration started.</p>',
        *rolled_back,
        "<h2>Over time</h2>",
        _charts(body.get("timeline") or {}),
        "<h2>Health</h2>",
        f"<p>Score {_e(health.get('score'))}/100, {_e(health.get('status'))}: 100 - 5 per warning "
        "- 15 per error - 30 per critical issue.</p>",
        "<ul>"
        + "".join(
            f"<li><strong>{_e(i.get('severity'))}</strong>: {_e(i.get('message'))}</li>" for i in issues
        )
        + "</ul>"
        if issues
        else '<p class="muted">No issues.</p>',
        "<h2>Stops and control actions</h2>",
        "<ul>"
        + "".join(
            f"<li>{_duration(m.get('t'))}: {_e(m.get('kind'))} - {_e(m.get('text'))}</li>" for m in markers
        )
        + "</ul>"
        if markers
        else '<p class="muted">None.</p>',
        "<h2>Warnings</h2>",
        "<ul>" + "".join(f"<li>{_e(w)}</li>" for w in body.get("warnings", [])) + "</ul>"
        if body.get("warnings")
        else '<p class="muted">None.</p>',
        "<h2>Validation</h2>",
        _validation(body.get("validation")),
        "<h2>Settings</h2>",
        _table(["setting", "value"], settings) if settings else '<p class="muted">No settings recorded.</p>',
        f'<p class="muted">Generated by docshift at {_when(datetime.now(UTC).timestamp())}.</p>',
        "</body></html>",
    ]
    return "\n".join(page)
