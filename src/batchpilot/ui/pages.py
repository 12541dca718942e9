"""The web view's pages as plain HTML: no script, every value escaped."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from batchpilot.answers import response_content
from batchpilot.formatting import duration, usd
from batchpilot.jsontext import loads
from batchpilot.report.facts import parse_utc
from batchpilot.run.status import RunStatus
from batchpilot.store import BatchRecord, JoinedRow, RunRecord
from batchpilot.store.records import AnswerFilter, AttemptRecord

__all__ = [
    "answer_page",
    "answers_page",
    "layout",
    "run_page",
    "runs_page",
]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1rem 2rem; color: #222; }
table { border-collapse: collapse; font-size: 0.85rem; width: 100%; }
td, th { border: 1px solid #ddd; padding: 0.25rem 0.4rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; max-height: 12rem;
      overflow: auto; font-size: 0.8rem; }
.detail pre { max-height: none; }
nav a, .pager a { margin-right: 1rem; }
form.filters { margin: 0.75rem 0; display: flex; gap: 0.75rem; flex-wrap: wrap; }
.failed { color: #b00020; } .succeeded { color: #1b7a2f; }
.muted { color: #777; }
"""
TEXT_LIMIT = 600
"""Characters of an input, request or answer a page of answers shows; the row's page has all."""


def layout(title: str, body: str, *, refresh: int | None = None) -> str:
    meta = f"<meta http-equiv='refresh' content='{refresh}'>" if refresh else ""
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<link rel='icon' href='data:,'>{meta}<title>{escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><nav><a href='/'>runs</a></nav>"
        f"<h1>{escape(title)}</h1>{body}</body></html>"
    )


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], css: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table class='{css}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _link(href: str, text: str) -> str:
    return f"<a href='{escape(href)}'>{escape(text)}</a>"


def _run_href(run_id: str, tail: str = "") -> str:
    return f"/runs/{quote(run_id, safe='')}{tail}"


def _age(stamp: str | None, now: datetime) -> str:
    return "" if stamp is None else duration((now - parse_utc(stamp)).total_seconds())


def runs_page(runs: Sequence[tuple[RunRecord, RunStatus]]) -> str:
    rows = [
        (
            _link(_run_href(record.id), record.id),
            escape(record.job_name),
            escape(record.status),
            f"{status.done:,} / {status.total:,}",
            str(status.requests.get("succeeded", 0)),
            str(status.requests.get("failed", 0)),
            escape(usd(status.spent_usd)),
            escape(record.created_at_utc[:19].replace("T", " ")),
        )
        for record, status in runs
    ]
    headers = ("run", "job", "status", "done", "succeeded", "failed", "spent", "created (UTC)")
    body = _table(headers, rows, "runs") if rows else "<p>No runs here yet.</p>"
    return layout("Runs", body)


def run_page(
    record: RunRecord,
    status: RunStatus,
    batches: Sequence[BatchRecord],
    events: Sequence[dict[str, Any]],
    steps: Sequence[tuple[str, str]],
) -> str:
    now = datetime.now(UTC)
    budget = f" of {usd(status.budget_usd)}" if status.budget_usd else ""
    counts = ", ".join(f"{n:,} {state}" for state, n in sorted(status.requests.items()))
    facts = [
        ("status", record.status + ("" if status.finished else " (requests still to end)")),
        ("job", record.job_name),
        ("requests", f"{status.done:,} of {status.total:,} ended: {counts or 'none'}"),
        ("spent", f"{usd(status.spent_usd)}{budget}, {usd(status.reserved_usd)} held"),
        ("tokens", f"{status.input_tokens:,} in, {status.output_tokens:,} out"),
    ]
    if status.failures:
        reasons = ", ".join(f"{n} {kind}" for kind, n in sorted(status.failures.items()))
        facts.append(("failed tries", reasons))
    parts = [_table(("", ""), [(escape(k), escape(v)) for k, v in facts], "facts")]
    parts.append(f"<p>{_link(_run_href(record.id, '/answers'), 'Browse the answers')}</p>")
    if steps:
        links = " ".join(_link(_run_href(run_id), name) for name, run_id in steps)
        parts.append(f"<p>Steps of this pipeline: {links}</p>")
    parts.append("<h2>Batches</h2>")
    rows = [
        (
            str(b.id),
            escape(b.state),
            escape(b.remote_status or ""),
            escape(b.remote_id or ""),
            f"{b.completed + b.failed:,} / {b.requests:,}",
            str(b.failed),
            escape(_age(b.created_at_utc, now) if b.finished_at_utc is None else ""),
            escape(b.finished_at_utc[:19].replace("T", " ") if b.finished_at_utc else ""),
        )
        for b in batches
    ]
    headers = ("batch", "state", "remote", "remote id", "done", "failed", "age", "ended (UTC)")
    parts.append(_table(headers, rows, "batches") if rows else "<p>No batches.</p>")
    parts.append("<h2>Latest events</h2>")
    items = "".join(
        f"<li><span class='muted'>{escape(str(e['at_utc'])[:19])}</span> "
        f"{escape(str(e['kind']))}: {escape(str(e['message']))}</li>"
        for e in events
    )
    parts.append(f"<ul class='events'>{items}</ul>")
    live = not status.finished and record.status not in ("cancelled",)
    return layout(f"Run {record.id}", "".join(parts), refresh=5 if live else None)


def _short(text: str | None) -> str:
    if text is None:
        return ""
    cut = text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + " …"
    return f"<pre>{escape(cut)}</pre>"


def _prompt(body: bytes) -> str:
    """The request as a reader wants it: its messages' text, else its JSON."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return body.decode("utf-8", "replace")
    messages = data.get("messages") if isinstance(data, dict) else None
    if isinstance(messages, list):
        lines = []
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                content = " ".join(
                    str(part.get("text", f"[{part.get('type')}]"))
                    for part in content
                    if isinstance(part, dict)
                )
            lines.append(f"{message.get('role', '?')}: {content}")
        return "\n".join(lines)
    return json.dumps(data, ensure_ascii=False)


def _answer(row: JoinedRow) -> str | None:
    if row.response_json is None:
        return row.error
    text, embedding = response_content(loads(row.response_json))
    if embedding is not None:
        return f"[embedding of {len(embedding)} numbers]"
    return text


def _select(name: str, options: Iterable[str], chosen: str | None) -> str:
    items = ["<option value=''>any</option>"] + [
        f"<option value='{escape(o)}'{' selected' if o == chosen else ''}>{escape(o)}</option>"
        for o in options
    ]
    label = "reason" if name == "reason" else name
    return f"<label>{label} <select name='{name}'>{''.join(items)}</select></label>"


def answers_page(
    record: RunRecord,
    rows: Sequence[tuple[JoinedRow, bytes]],
    where: AnswerFilter,
    *,
    page: int,
    size: int,
    total: int,
    complete: bool = True,
    states: Iterable[str],
    reasons: Iterable[str],
    steps: Sequence[tuple[str, str]],
) -> str:
    query = {
        key: value
        for key, value in (
            ("state", where.state),
            ("reason", where.reason),
            ("lane", where.lane),
            ("q", where.search),
        )
        if value
    }
    form = (
        "<form class='filters' method='get'>"
        + _select("state", states, where.state)
        + _select("reason", reasons, where.reason)
        + _select("lane", ("batch", "realtime", "flex", "cache"), where.lane)
        + f"<label>search <input name='q' value='{escape(where.search or '')}'></label>"
        + "<button type='submit'>filter</button></form>"
    )
    parts = []
    if steps:
        links = " ".join(_link(_run_href(run_id, "/answers"), name) for name, run_id in steps)
        parts.append(f"<p>Step: {links}</p>")
    parts.append(form)
    first = page * size
    more = "" if complete else "more than "
    shown = f"rows {first + 1:,}-{first + len(rows):,} of {more}{total:,}" if rows else "no rows"
    pages = max(1, -(-total // size))
    pager = [f"<span class='count'>{shown} (page {page + 1} of {more}{pages:,})</span>"]
    if page > 0:
        pager.insert(0, _link("?" + urlencode({**query, "page": page - 1}), "previous"))
    if first + size < total or not complete:
        pager.append(_link("?" + urlencode({**query, "page": page + 1}), "next"))
    parts.append(f"<p class='pager'>{' '.join(pager)}</p>")
    table = [
        (
            _link(_run_href(record.id, f"/answers/{row.row_index}"), row.row_id),
            f"<span class='{escape(row.state or 'skipped')}'>{escape(row.state or 'skipped')}"
            "</span>",
            escape(row.lane or ""),
            str(row.attempts or 0),
            _short(row.data_json),
            _short(_prompt(body) if body else row.skip_reason),
            _short(_answer(row)),
        )
        for row, body in rows
    ]
    headers = ("row", "status", "lane", "tries", "input", "request", "answer or error")
    parts.append(_table(headers, table, "answers"))
    return layout(f"Answers of {record.id}", "".join(parts))


def _pretty(text: str | bytes | None) -> str:
    if text is None:
        return "<p class='muted'>none</p>"
    try:
        shown = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):  # not JSON, or nested too deeply to show as such
        shown = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"<pre>{escape(shown)}</pre>"


def answer_page(
    record: RunRecord, row: JoinedRow, body: bytes | None, attempts: Sequence[AttemptRecord]
) -> str:
    facts = [
        ("row", f"{row.row_id} (index {row.row_index}, {row.source})"),
        ("request", row.request_id or f"none: {row.skip_reason}"),
        ("status", row.state or "skipped"),
        ("error", row.error or ""),
    ]
    parts = [
        _table(("", ""), [(escape(k), escape(v)) for k, v in facts], "facts"),
        "<h2>Input row</h2>",
        _pretty(row.data_json),
        "<h2>Request</h2>",
        _pretty(body),
        "<h2>Answer</h2>",
        _pretty(row.response_json),
        "<h2>Attempts</h2>",
    ]
    history = [
        (
            str(a.attempt),
            escape(a.lane),
            "" if a.batch_id is None else str(a.batch_id),
            escape(a.outcome),
            escape(a.error or ""),
            f"{a.input_tokens:,} / {a.output_tokens:,}",
            escape(usd(a.cost_usd)),
            escape(a.at_utc[:19].replace("T", " ")),
        )
        for a in attempts
    ]
    headers = ("attempt", "lane", "batch", "outcome", "error", "tokens in / out", "cost", "at")
    parts.append(_table(headers, history, "attempts") if history else "<p>No attempts.</p>")
    back = _link(_run_href(record.id, "/answers"), "back to the answers")
    return layout(
        f"Row {row.row_id} of {record.id}",
        f"<p>{back}</p><div class='detail'>" + "".join(parts) + "</div>",
    )
