"""The PostgreSQL store's runs and tasks: created, read, and moved by `RUN_MOVES` only."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime

from batchpilot.errors import IllegalTransition, StateError
from batchpilot.store import postgres_reads as reads
from batchpilot.store.postgres_moves import Db
from batchpilot.store.records import RunRecord, TaskStateRecord
from batchpilot.store.states import RUN_MOVES, RequestState, RunState, check_move

__all__ = ["RunsMixin"]

_RUN_COLUMNS = (
    "id, job_name, spec_json, provider, endpoint, status, budget_usd, created_at_utc, "
    "finished_at_utc, kind"
)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class RunsMixin:
    """Runs and tasks, over the connection and transactions of the store it is part of."""

    @property
    def where(self) -> str:
        raise NotImplementedError

    @property
    def _db(self) -> Db:
        raise NotImplementedError

    def _tx(self) -> AbstractContextManager[Db]:
        raise NotImplementedError

    def create_run(self, run: RunRecord) -> None:
        with self._tx() as db:
            db.execute(
                f"INSERT INTO runs({_RUN_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    run.id,
                    run.job_name,
                    run.spec_json,
                    run.provider,
                    run.endpoint,
                    run.status,
                    run.budget_usd,
                    run.created_at_utc,
                    run.finished_at_utc,
                    str(run.kind),
                ),
            )
            db.execute(
                "INSERT INTO request_counts(run_id, state, n) SELECT %s, unnest(%s::text[]), 0",
                (run.id, [state.value for state in RequestState]),
            )

    def run(self, run_id: str) -> RunRecord | None:
        row = self._db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = %s", (run_id,)
        ).fetchone()
        return None if row is None else RunRecord(*row)

    def runs(self, job_name: str | None = None) -> list[RunRecord]:
        where, params = ("", ()) if job_name is None else (" WHERE job_name = %s", (job_name,))
        rows = self._db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs{where} ORDER BY created_at_utc DESC, id".encode(),
            params,
        ).fetchall()
        return [RunRecord(*row) for row in rows]

    def move_run(self, run_id: str, target: RunState) -> RunRecord:
        """The only way a run's status changes: checked against the table and the row."""
        with self._tx() as db:
            current = self.run(run_id)
            if current is None:
                raise StateError(f"no run {run_id} in {self.where}")
            check_move(RUN_MOVES, current.status, target, f"run {run_id}")
            ended = target in (RunState.FINISHED, RunState.CANCELLED)
            row = db.execute(
                f"UPDATE runs SET status = %s, finished_at_utc = %s WHERE id = %s "
                f"AND status = %s RETURNING {_RUN_COLUMNS}",
                (target, _now() if ended else None, run_id, current.status),
            ).fetchone()
            if row is None:
                raise IllegalTransition(f"run {run_id} changed status under us")
            return RunRecord(*row)

    def set_run_spec(self, run_id: str, spec_json: str, budget_usd: float | None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET spec_json = %s, budget_usd = %s WHERE id = %s",
                (spec_json, budget_usd, run_id),
            )

    def set_budget(self, run_id: str, budget_usd: float | None) -> None:
        with self._tx() as db:
            db.execute("UPDATE runs SET budget_usd = %s WHERE id = %s", (budget_usd, run_id))

    def create_task(self, run: RunRecord, state_json: str) -> None:
        """A task's run and its first state, together."""
        with self._tx() as db:
            self.create_run(run)
            db.execute(
                "INSERT INTO task_state(run_id, state_json, updated_at_utc) VALUES (%s, %s, %s)",
                (run.id, state_json, _now()),
            )

    def task_state(self, run_id: str) -> TaskStateRecord | None:
        return reads.task_state(self._db, run_id)

    def request_of_row(self, run_id: str, row_id: str) -> str | None:
        return reads.request_of_row(self._db, run_id, row_id)

    def count_task_round(self, run_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE task_state SET rounds = rounds + 1 WHERE run_id = %s", (run_id,))
