"""The report's plots, drawn with plotly from a run's facts.

Each function returns a figure, or None when the run has nothing to show there (no batches, no
failures); the page then says so in words instead of drawing an empty plot.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import accumulate
from typing import Any

from batchpilot.errors import MissingDependency
from batchpilot.report.facts import REJECTIONS, RunFacts, parse_utc

__all__ = ["FIGURES", "load_plotly"]

COLORWAY = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#B279A2", "#ECA82C", "#9D755D"]
LANE_COLORS = {
    "batch": "#4C78A8",
    "realtime": "#F58518",
    "flex": "#54A24B",
    "cache": "#B279A2",
    "failed": "#E45756",
}
STATE_COLORS = {
    "completed": "#54A24B",
    "in progress": "#4C78A8",
    "expired": "#ECA82C",
    "failed": "#E45756",
    "cancelled": "#9D755D",
    "abandoned": "#BAB0AC",
    "preparing": "#D3D3D3",
}


def load_plotly() -> Any:
    """plotly's graph objects, or a clear error naming the extra to install."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise MissingDependency(
            "the report draws its plots with plotly, which is not installed: "
            "pip install 'batchpilot[report]'"
        ) from None
    return go


AXIS = {"gridcolor": "#EBF0F8", "zerolinecolor": "#EBF0F8", "automargin": True}


def _layout(go: Any, title: str, **extra: Any) -> Any:
    # The empty template: a named one is copied into every figure, which costs more than the
    # rest of the report together.
    for axis in ("xaxis", "yaxis"):
        extra[axis] = {**AXIS, **extra.get(axis, {})}
        title_text = extra.pop(f"{axis}_title", None)
        if title_text is not None:
            extra[axis]["title"] = {"text": title_text}
    return go.Layout(
        title={"text": title, "x": 0.01},
        template="none",
        font={"family": "system-ui, sans-serif", "color": "#2a3f5f"},
        plot_bgcolor="white",
        colorway=COLORWAY,
        height=340,
        margin={"l": 60, "r": 20, "t": 50, "b": 45},
        legend={"orientation": "h", "y": -0.2},
        **extra,
    )


def _times(facts: RunFacts) -> list[datetime]:
    """The end of each time bin."""
    width = facts.series.width_s
    return [facts.started + timedelta(seconds=width * (i + 1)) for i in range(facts.series.bins)]


def _deadline(facts: RunFacts) -> datetime | None:
    """The deadline, when it is near enough to the run's span to be drawn without squashing it
    (the summary says whether it was met either way)."""
    deadline = facts.deadline
    if deadline is None or deadline > facts.ended + (facts.ended - facts.started):
        return None
    return deadline


def _vertical(go: Any, fig: Any, when: datetime, top: float, name: str, color: str) -> None:
    fig.add_trace(
        go.Scatter(
            x=[when, when],
            y=[0, top],
            mode="lines",
            name=name,
            line={"color": color, "dash": "dash"},
        )
    )


def progress(go: Any, facts: RunFacts) -> Any:
    """Answers over time, per lane; the failed for good; the target and its waves."""
    times = _times(facts)
    fig = go.Figure(layout=_layout(go, "Requests done over time, by lane", yaxis_title="requests"))
    top = 1.0
    done = facts.series.done or {"no answers yet": [0] * facts.series.bins}
    for lane, counts in sorted(done.items()):
        running = list(accumulate(counts))
        top = max(top, running[-1])
        label = "failed for good" if lane == "failed" else lane
        color = LANE_COLORS.get(lane)
        fig.add_trace(
            go.Scatter(x=times, y=running, name=label, mode="lines", line={"color": color})
        )
    if facts.target is not None:
        top = max(top, facts.target)
        fig.add_trace(
            go.Scatter(
                x=[times[0], times[-1]],
                y=[facts.target, facts.target],
                name=f"target ({facts.target} valid)",
                mode="lines",
                line={"color": "#54A24B", "dash": "dot"},
            )
        )
        for number, (seconds, _) in enumerate(facts.waves, start=2):
            when = facts.started + timedelta(seconds=seconds)
            _vertical(go, fig, when, top, f"wave {number}", "#BAB0AC")
    deadline = _deadline(facts)
    if deadline is not None:
        _vertical(go, fig, deadline, top, "deadline", "#E45756")
    return fig


def spend(go: Any, facts: RunFacts) -> Any:
    """Money spent over time against the budget and the deadline."""
    times = _times(facts)
    running = list(accumulate(facts.series.cost_usd))
    fig = go.Figure(layout=_layout(go, "Spend over time", yaxis_title="USD"))
    fig.add_trace(go.Scatter(x=times, y=running, name="spent", mode="lines", fill="tozeroy"))
    top = max(running[-1] if running else 0.0, 1e-9)
    budget = facts.status.budget_usd
    if budget is not None:
        top = max(top, budget)
        fig.add_trace(
            go.Scatter(
                x=[times[0], times[-1]],
                y=[budget, budget],
                name="budget",
                mode="lines",
                line={"color": "#E45756", "dash": "dot"},
            )
        )
    deadline = _deadline(facts)
    if deadline is not None:
        _vertical(go, fig, deadline, top, "deadline", "#9D755D")
    return fig


def _batch_state(state: str, remote: str | None) -> str:
    if state == "finished":
        return remote if remote in STATE_COLORS else "completed"
    if state in ("abandoned", "cancelled", "failed"):
        return state
    return "in progress"


def batches(go: Any, facts: RunFacts) -> Any | None:
    """Each batch as a bar: preparing (until it was submitted), then at the provider until it
    ended (or until now), coloured by how it ended."""
    if not facts.batches:
        return None
    now = facts.ended
    groups: dict[str, tuple[list[str], list[str], list[float], list[str]]] = {}
    for batch in facts.batches:
        label = f"batch {batch.id}"
        created = parse_utc(batch.created_at_utc)
        submitted = parse_utc(batch.submitted_at_utc) if batch.submitted_at_utc else None
        finished = parse_utc(batch.finished_at_utc) if batch.finished_at_utc else None
        prepared = submitted or finished or now
        spans = [("preparing", created, prepared)]
        if submitted is not None:
            spans.append(
                (_batch_state(batch.state, batch.remote_status), submitted, finished or now)
            )
        for name, start, end in spans:
            ys, bases, lengths, texts = groups.setdefault(name, ([], [], [], []))
            ys.append(label)
            bases.append(start.isoformat())
            lengths.append(max(1.0, (end - start).total_seconds() * 1000))
            texts.append(f"{batch.requests} requests, {batch.completed} ok, {batch.failed} failed")
    height = max(260, 60 + 22 * len(facts.batches))
    fig = go.Figure(
        layout=_layout(go, "Batches on a timeline", barmode="overlay", xaxis={"type": "date"})
    )
    fig.update_layout(height=min(height, 900), yaxis={"autorange": "reversed"})
    for name, (ys, bases, lengths, texts) in groups.items():
        fig.add_trace(
            go.Bar(
                y=ys,
                base=bases,
                x=lengths,
                orientation="h",
                name=name,
                hovertext=texts,
                marker={"color": STATE_COLORS.get(name, "#4C78A8")},
            )
        )
    return fig


def turnaround(go: Any, facts: RunFacts) -> Any | None:
    """How long batches took at the provider (submitted to ended), in minutes."""
    minutes = [
        (parse_utc(b.finished_at_utc) - parse_utc(b.submitted_at_utc)).total_seconds() / 60
        for b in facts.batches
        if b.submitted_at_utc and b.finished_at_utc
    ]
    if not minutes:
        return None
    fig = go.Figure(
        layout=_layout(go, "Batch turnaround", xaxis_title="minutes", yaxis_title="batches")
    )
    fig.add_trace(go.Histogram(x=minutes, name="batches", marker={"color": "#4C78A8"}))
    return fig


def arrivals(go: Any, facts: RunFacts) -> Any | None:
    """When answers arrived, per lane: minutes from the run's start to each answer."""
    minutes = [facts.series.width_s * (i + 0.5) / 60 for i in range(facts.series.bins)]
    lanes = {k: v for k, v in facts.series.done.items() if k != "failed" and any(v)}
    if not lanes:
        return None
    fig = go.Figure(
        layout=_layout(
            go,
            "Time to answer, by lane",
            xaxis_title="minutes from the run's start",
            yaxis_title="answers",
            barmode="stack",
            bargap=0,
        )
    )
    for lane, counts in sorted(lanes.items()):
        fig.add_trace(
            go.Bar(x=minutes, y=counts, name=lane, marker={"color": LANE_COLORS.get(lane)})
        )
    return fig


def tokens(go: Any, facts: RunFacts) -> Any | None:
    """Input and output tokens each lane used (every try, retries included)."""
    if not facts.lanes:
        return None
    names = sorted(facts.lanes)
    fig = go.Figure(layout=_layout(go, "Tokens in and out, by lane", barmode="group"))
    fig.add_trace(go.Bar(x=names, y=[facts.lanes[n][1] for n in names], name="input tokens"))
    fig.add_trace(go.Bar(x=names, y=[facts.lanes[n][2] for n in names], name="output tokens"))
    return fig


def failures(go: Any, facts: RunFacts) -> Any | None:
    """Failed tries by the kind of reason: retried later, or failed for good."""
    kinds = sorted(set(facts.retried) | set(facts.failed))
    if not kinds:
        return None
    fig = go.Figure(layout=_layout(go, "Failures by reason", barmode="stack"))
    fig.add_trace(
        go.Bar(x=kinds, y=[facts.retried[k] for k in kinds], name="retried", marker_color="#ECA82C")
    )
    fig.add_trace(
        go.Bar(
            x=kinds,
            y=[facts.failed[k] for k in kinds],
            name="failed for good",
            marker_color="#E45756",
        )
    )
    return fig


def retries(go: Any, facts: RunFacts) -> Any | None:
    """Tries by attempt number and how they ended."""
    if len(facts.by_attempt) < 2 and not facts.retried:
        return None
    numbers = sorted(facts.by_attempt)
    fig = go.Figure(layout=_layout(go, "Tries by attempt", barmode="stack", xaxis_title="attempt"))
    outcomes = (("succeeded", "#54A24B"), ("pending", "#ECA82C"), ("failed", "#E45756"))
    for outcome, color in outcomes:
        label = "retried" if outcome == "pending" else outcome
        fig.add_trace(
            go.Bar(
                x=[str(n) for n in numbers],
                y=[facts.by_attempt[n][outcome] for n in numbers],
                name=label,
                marker_color=color,
            )
        )
    return fig


def rejections(go: Any, facts: RunFacts) -> Any | None:
    """Answers that came back but failed the job's checks, by kind."""
    counts = {k: facts.retried[k] + facts.failed[k] for k in REJECTIONS}
    counts = {k: v for k, v in counts.items() if v}
    if not counts:
        return None
    fig = go.Figure(layout=_layout(go, "Answers rejected by the checks"))
    fig.add_trace(go.Bar(x=list(counts), y=list(counts.values()), name="rejected"))
    return fig


def plan_vs_actual(go: Any, facts: RunFacts) -> Any | None:
    """The plan's estimate beside what the run cost and how long it took."""
    estimate = facts.estimate
    if estimate is None:
        return None
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("cost (USD)", "makespan (minutes)"))
    fig.update_layout(_layout(go, f"Plan estimate ({estimate.strategy}) and actual"))
    names = ["estimate", "actual" if facts.finished else "so far"]
    colors = ["#BAB0AC", "#4C78A8"]
    cost = [estimate.cost_usd or 0.0, facts.status.spent_usd]
    fig.add_trace(go.Bar(x=names, y=cost, marker_color=colors, showlegend=False), row=1, col=1)
    makespan = [estimate.makespan_s / 60, facts.elapsed_s / 60]
    fig.add_trace(go.Bar(x=names, y=makespan, marker_color=colors, showlegend=False), row=1, col=2)
    return fig


FIGURES = (
    ("progress", progress),
    ("spend", spend),
    ("batches", batches),
    ("turnaround", turnaround),
    ("arrivals", arrivals),
    ("tokens", tokens),
    ("failures", failures),
    ("retries", retries),
    ("rejections", rejections),
    ("estimate", plan_vs_actual),
)
"""(name, figure function) in the order the page shows them."""
