"""The report as one HTML file: a text summary on top, then the plots, plotly's script inlined.

A content security policy forbids every fetch, so the file shows the same with no network and
can never call out when it is opened.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

from batchpilot.formatting import duration, usd
from batchpilot.report.facts import RunFacts
from batchpilot.report.figures import FIGURES, load_plotly

__all__ = ["duration", "render_page", "summary_lines", "usd"]

POLICY = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'unsafe-inline'; img-src data: blob:; font-src data:"
)
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1100px;
       color: #222; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
ul.summary li { margin: 0.2rem 0; }
.none { color: #777; font-style: italic; }
table { border-collapse: collapse; font-size: 0.9rem; }
td, th { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
.plot { min-height: 260px; }
"""


def summary_lines(facts: RunFacts) -> list[str]:
    """A few sentences that say how the run went, before any plot."""
    status, record = facts.status, facts.record
    counts = ", ".join(f"{n} {state}" for state, n in sorted(status.requests.items()) if n)
    state = "finished" if facts.finished else f"{record.status}, not finished yet"
    lines = [
        f"{record.job_name} (run {record.id}): {state}; {status.total} requests: "
        f"{counts or 'none'}.",
    ]
    budget = status.budget_usd
    spent = f"Spent {usd(status.spent_usd)}"
    if budget:
        spent += f" of a {usd(budget)} budget ({status.spent_usd / budget:.1%})"
    if status.reserved_usd:
        spent += f", {usd(status.reserved_usd)} held for live batches"
    lines.append(
        f"{spent}; {status.input_tokens:,} tokens in, {status.output_tokens:,} tokens out."
    )
    took = f"{'Took' if facts.finished else 'Running for'} {duration(facts.elapsed_s)}"
    if facts.deadline is not None:
        met = facts.ended <= facts.deadline
        verb = "met" if met else ("missed" if facts.finished else "passed")
        took += f"; the deadline ({_when(facts.deadline)}) was {verb}"
    lines.append(took + ".")
    if facts.lanes:
        shares = ", ".join(f"{n[0]:,} {lane}" for lane, n in sorted(facts.lanes.items()))
        lines.append(f"Answers by lane: {shares}.")
    if facts.estimate is not None:
        estimate = facts.estimate
        lines.append(
            f"The plan ({estimate.strategy}) estimated {usd(estimate.cost_usd)} and "
            f"{duration(estimate.makespan_s)}; {'actual' if facts.finished else 'so far'}: "
            f"{usd(status.spent_usd)} and {duration(facts.elapsed_s)}."
        )
    failed = status.requests.get("failed", 0)
    if facts.failed or facts.retried:
        worst = (facts.failed + facts.retried).most_common(3)
        reasons = ", ".join(f"{n} {kind}" for kind, n in worst)
        share = failed / status.total if status.total else 0.0
        lines.append(
            f"{failed} requests failed for good ({share:.1%}); failed tries by reason: {reasons}."
        )
    if facts.target is not None:
        valid = status.valid if status.valid is not None else status.requests.get("succeeded", 0)
        lines.append(
            f"Target: {valid} of {facts.target} valid after {len(facts.waves) + 1} wave(s)."
        )
    return lines


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _examples(facts: RunFacts) -> str:
    if not facts.examples:
        return ""
    rows = "".join(
        f"<tr><td>{escape(kind)}</td><td><code>{escape(rid)}</code></td><td>{attempt}</td>"
        f"<td>{escape(reason)}</td></tr>"
        for kind, kept in sorted(facts.examples.items())
        for rid, attempt, reason in kept
    )
    return (
        "<h3>Examples of rejected answers</h3><table class='examples'><tr><th>kind</th>"
        f"<th>request</th><th>attempt</th><th>reason</th></tr>{rows}</table>"
    )


def _section(go: Any, facts: RunFacts, key: str, title: str | None) -> str:
    parts = [f"<section id='{escape(key)}'>"]
    if title is not None:
        parts.append(f"<h2>{escape(title)}</h2>")
    parts.append("<ul class='summary'>")
    parts += [f"<li>{escape(line)}</li>" for line in summary_lines(facts)]
    parts.append("</ul>")
    missing = []
    for name, draw in FIGURES:
        figure = draw(go, facts)
        if figure is None:
            missing.append(name)
            continue
        drawn = figure.to_html(
            include_plotlyjs=False,
            full_html=False,
            div_id=f"{key}-{name}",
            config={"displaylogo": False, "responsive": True},
        )
        parts.append(f"<div class='plot' data-plot='{escape(name)}'>{drawn}</div>")
        if name == "rejections":
            parts.append(_examples(facts))
    if missing:
        parts.append(f"<p class='none'>Nothing to plot yet for: {escape(', '.join(missing))}.</p>")
    parts.append("</section>")
    return "\n".join(parts)


def render_page(title: str, sections: list[tuple[str, str | None, RunFacts]], intro: str) -> str:
    """The whole file: `sections` are (anchor, heading, facts), one per run (per step)."""
    go = load_plotly()
    from plotly.offline import get_plotlyjs

    body = "\n".join(_section(go, facts, key, heading) for key, heading, facts in sections)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{POLICY}\">"
        f"<title>{escape(title)}</title><style>{STYLE}</style>"
        f"<script>{get_plotlyjs()}</script></head>\n<body>"
        f"<h1>{escape(title)}</h1><p>{escape(intro)}</p>\n{body}\n</body></html>\n"
    )
