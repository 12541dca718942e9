"""`batchpilot ui`: a read-only web view of a state directory, on loopback by default.

The runs; each run's progress, batches and latest events (the page refreshes itself while the
run goes); and a browser of its answers, a page at a time: each input row beside its request
and its answer, filtered by status, failure reason, lane or text (a pipeline by step), and one
row's whole history of attempts. It only reads the store, so it is safe beside `batchpilot run`.
With the `metrics` extra, `/metrics` gives every run's progress, spend, tokens and failures to
Prometheus.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html import escape
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from batchpilot.errors import MissingDependency, UserInputError
from batchpilot.run.identity import job_of
from batchpilot.run.status import run_status
from batchpilot.run.workspace import open_store
from batchpilot.store import RunRecord, Store
from batchpilot.store.opening import store_exists
from batchpilot.store.records import AnswerFilter
from batchpilot.ui import pages

__all__ = ["COUNT_AHEAD", "PAGE_SIZE", "ui_app"]

PAGE_SIZE = 50
COUNT_AHEAD = 5_000
"""Rows past the page a filter the store cannot count by its counts (a text search, say)
counts before it says "more than": counting them all would read every row of the run."""
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers=HEADERS)


def _not_found(what: str) -> HTMLResponse:
    return _html(pages.layout("Not found", f"<p>{escape(what)}</p>"), 404)


def _steps(store: Store, record: RunRecord) -> list[tuple[str, str]]:
    """(step name, run id) of each started step, when the run is a step of a pipeline."""
    job = job_of(record)
    if job is None or job.steps is None:
        return []
    from batchpilot.run.identity import step_runs

    return [(s.step.name, s.run_id) for s in step_runs(job) if store.run(s.run_id) is not None]


LARGEST_NUMBER = 10**12
"""A page or row number past any run's (larger ones, such as a mistyped URL's, are taken as it)."""


def _number(text: str | None, default: int = 0) -> int:
    try:
        return min(max(0, int(text)), LARGEST_NUMBER) if text else default
    except ValueError:
        return default


def ui_app(state_dir: Path) -> Starlette:
    """The web view's application over the store in `state_dir` (which must hold one)."""
    if not store_exists(Path(state_dir)):
        raise UserInputError(f"{state_dir}: no runs here (no store); check --state")
    store = open_store(Path(state_dir))

    def find(request: Request) -> RunRecord | None:
        return store.run(request.path_params["run_id"])

    def runs(request: Request) -> Response:
        found = [(record, run_status(store, record.id)) for record in store.runs()]
        return _html(pages.runs_page(found))

    def run(request: Request) -> Response:
        record = find(request)
        if record is None:
            return _not_found("no such run")
        status = run_status(store, record.id)
        events = store.events(record.id)[-15:]
        batches = store.batches(record.id)
        return _html(pages.run_page(record, status, batches, events, _steps(store, record)))

    def answers(request: Request) -> Response:
        record = find(request)
        if record is None:
            return _not_found("no such run")
        args = request.query_params
        where = AnswerFilter(
            state=args.get("state") or None,
            reason=args.get("reason") or None,
            lane=args.get("lane") or None,
            search=(args.get("q") or "").strip() or None,
        )
        page = _number(args.get("page"))
        found = store.answer_page(record.id, where, page * PAGE_SIZE, PAGE_SIZE, COUNT_AHEAD)
        if not found.rows and page > 0 and found.total > 0:  # past the end: the last page
            page = (found.total - 1) // PAGE_SIZE
            found = store.answer_page(record.id, where, page * PAGE_SIZE, PAGE_SIZE, COUNT_AHEAD)
        rows, total, complete = found
        bodies = [
            store.request_body(record.id, row.request_id) if row.request_id else b"" for row in rows
        ]
        states = sorted({*store.request_counts(record.id), "skipped"})
        reasons = sorted(store.failure_reasons(record.id))
        text = pages.answers_page(
            record,
            list(zip(rows, bodies, strict=True)),
            where,
            page=page,
            size=PAGE_SIZE,
            total=total,
            complete=complete,
            states=states,
            reasons=reasons,
            steps=_steps(store, record),
        )
        return _html(text)

    def answer(request: Request) -> Response:
        record = find(request)
        index = _number(request.path_params["row"], -1)
        found = store.answers(record.id, AnswerFilter(row=index), 0, 1) if record else []
        if record is None or not found:
            return _not_found("no such row")
        row = found[0]
        body = store.request_body(record.id, row.request_id) if row.request_id else None
        attempts = list(store.attempts(record.id, row.request_id)) if row.request_id else []
        return _html(pages.answer_page(record, row, body, attempts))

    def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    def metrics(request: Request) -> Response:
        from batchpilot.ui.metrics import metrics_page

        try:
            body, content_type = metrics_page(store)
        except MissingDependency as exc:
            return PlainTextResponse(str(exc), status_code=501)
        return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})

    routes = [
        Route("/", runs),
        Route("/health", health),
        Route("/metrics", metrics),
        Route("/runs/{run_id}", run),
        Route("/runs/{run_id}/answers", answers),
        Route("/runs/{run_id}/answers/{row}", answer),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            store.close()

    return Starlette(routes=routes, lifespan=lifespan)
