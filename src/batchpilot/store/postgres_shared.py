"""The PostgreSQL store's shared parts: leases on runs claimed with `FOR UPDATE SKIP LOCKED`
(expiries by the server's clock, so that the workers' clocks need not agree), and one
organisation's limits reserved from under a row lock (see `store/shared.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from batchpilot.store import postgres_moves as moves
from batchpilot.store.postgres_moves import Db
from batchpilot.store.postgres_queries import REQUEST_COLUMNS
from batchpilot.store.records import PendingRequest, RunRecord
from batchpilot.store.shared import (
    CLAIMABLE_KINDS,
    CLAIMABLE_STATES,
    QUEUED_BATCHES,
    RATE_WINDOW_S,
    Claim,
    OrgLimit,
    rate_wait,
)
from batchpilot.store.states import RequestState

__all__ = ["SharedMixin"]

_RUN_COLUMNS = (
    "r.id, r.job_name, r.spec_json, r.provider, r.endpoint, r.status, r.budget_usd, "
    "r.created_at_utc, r.finished_at_utc, r.kind"
)
_STATES = [str(s) for s in CLAIMABLE_STATES]
_KINDS = [str(k) for k in CLAIMABLE_KINDS]
_QUEUED = [str(s) for s in QUEUED_BATCHES]
_MINE = (
    "SELECT 1 FROM run_leases m WHERE m.run_id = r.id AND m.worker_id = %(worker)s "
    "AND m.expires_at >= clock_timestamp()"
)
_LIVE_DRIVERS = (
    "SELECT COUNT(*) FROM run_leases l WHERE l.run_id = r.id "
    "AND l.expires_at >= clock_timestamp() AND l.worker_id <> %(worker)s"
)
_PARTS = (
    "(SELECT COALESCE(SUM(spent_usd), 0) FROM run_totals WHERE run_id = %s)",
    "(SELECT COALESCE(SUM(reserved_usd), 0) FROM batches WHERE run_id = %s "
    "AND state IN ('creating', 'submitted'))",
    "(SELECT COALESCE(SUM(held_usd), 0) FROM batches WHERE run_id = %s "
    "AND state IN ('planned', 'uploading', 'uploaded'))",
    "(SELECT COALESCE(SUM(held_usd), 0) FROM requests WHERE run_id = %s AND state = 'realtime')",
)
_HOLDINGS = ", ".join(_PARTS)
"""(spent, reserved, held, in flight) of a run, from its four run ids."""
_COMMITTED = "SELECT " + " + ".join(_PARTS)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SharedMixin:
    """Leases and an organisation's limits, over the store's connection and transactions."""

    @property
    def _db(self) -> Db:
        raise NotImplementedError

    def _tx(self) -> AbstractContextManager[Db]:
        raise NotImplementedError

    # leases ---------------------------------------------------------------------------------

    def claim_run(
        self,
        worker_id: str,
        ttl_s: float,
        run_ids: Sequence[str] | None = None,
        skip: Sequence[str] = (),
        per_run: int | None = 1,
    ) -> Claim | None:
        passed = list(skip)
        while True:
            with self._tx() as db:
                only = "" if run_ids is None else " AND r.id = ANY(%(ids)s)"
                only += " AND NOT r.id = ANY(%(skip)s)" if passed else ""
                room = "" if per_run is None else f" AND ({_LIVE_DRIVERS}) < %(per_run)s"
                row = db.execute(
                    f"SELECT {_RUN_COLUMNS} FROM runs r "
                    "WHERE r.status = ANY(%(states)s) AND r.kind = ANY(%(kinds)s) "
                    f"AND NOT EXISTS ({_MINE}){room}{only} "
                    "ORDER BY r.created_at_utc, r.id LIMIT 1 FOR UPDATE OF r SKIP LOCKED".encode(),
                    {
                        "states": _STATES,
                        "kinds": _KINDS,
                        "ids": list(run_ids or []),
                        "skip": passed,
                        "worker": worker_id,
                        "per_run": per_run,
                    },
                ).fetchone()
                if row is None:
                    return None
                run_id = str(row[0])
                # The select saw the leases as they were when it began; a worker that claimed
                # this run and committed meanwhile left the run's row unlocked, so the leases
                # are read again now that the row is ours.
                again = db.execute(
                    f"SELECT NOT EXISTS ({_MINE}), ({_LIVE_DRIVERS}) FROM runs r "
                    "WHERE r.id = %(run)s",
                    {"run": run_id, "worker": worker_id},
                ).fetchone()
                assert again is not None
                if again[0] and (per_run is None or int(again[1]) < per_run):
                    previous = self._lease(db, run_id, worker_id, ttl_s)
                    return Claim(RunRecord(*row[:10]), previous)
            passed.append(run_id)

    def _lease(self, db: Db, run_id: str, worker_id: str, ttl_s: float) -> str | None:
        """Lease the run to the worker; the leases that ran out go (a worker that held one is
        named)."""
        gone = db.execute(
            "DELETE FROM run_leases WHERE run_id = %s AND expires_at < clock_timestamp() "
            "AND worker_id <> %s RETURNING worker_id",
            (run_id, worker_id),
        ).fetchall()
        db.execute(
            "INSERT INTO run_leases(run_id, worker_id, expires_at, taken_at_utc) "
            "VALUES (%s, %s, clock_timestamp() + make_interval(secs => %s), %s) "
            "ON CONFLICT (run_id, worker_id) DO UPDATE SET expires_at = excluded.expires_at, "
            "taken_at_utc = excluded.taken_at_utc",
            (run_id, worker_id, ttl_s, _now()),
        )
        return str(gone[0][0]) if gone else None

    def take_run(
        self, run_id: str, worker_id: str, ttl_s: float, per_run: int | None = 1
    ) -> str | None:
        with self._tx() as db:
            db.execute("SELECT id FROM runs WHERE id = %s FOR UPDATE", (run_id,))
            others = db.execute(
                "SELECT worker_id FROM run_leases WHERE run_id = %s "
                "AND expires_at >= clock_timestamp() AND worker_id <> %s "
                "ORDER BY expires_at DESC",
                (run_id, worker_id),
            ).fetchall()
            if per_run is not None and len(others) >= per_run:
                return str(others[0][0])
            self._lease(db, run_id, worker_id, ttl_s)
            return None

    def renew_lease(self, run_id: str, worker_id: str, ttl_s: float) -> bool:
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE run_leases SET expires_at = clock_timestamp() + make_interval(secs => %s) "
                "WHERE run_id = %s AND worker_id = %s AND expires_at >= clock_timestamp()",
                (ttl_s, run_id, worker_id),
            )
            return cursor.rowcount == 1

    def release_run(self, run_id: str, worker_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM run_leases WHERE run_id = %s AND worker_id = %s", (run_id, worker_id)
            )

    def lease_of(self, run_id: str) -> tuple[str, float] | None:
        row = self._db.execute(
            "SELECT worker_id, EXTRACT(EPOCH FROM expires_at - clock_timestamp()) "
            "FROM run_leases WHERE run_id = %s ORDER BY expires_at DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        return None if row is None else (str(row[0]), float(row[1]))

    def drivers(self, run_id: str) -> list[str]:
        rows = self._db.execute(
            "SELECT worker_id FROM run_leases WHERE run_id = %s "
            "AND expires_at >= clock_timestamp() ORDER BY worker_id",
            (run_id,),
        ).fetchall()
        return [str(row[0]) for row in rows]

    # many workers on one run ----------------------------------------------------------------

    def lock_run(self, run_id: str) -> None:
        """Inside a transaction: the run's row stays locked until it ends, so that every
        worker's check of the money left and what it then takes are one step."""
        self._db.execute("SELECT id FROM runs WHERE id = %s FOR UPDATE", (run_id,))

    def holdings(self, run_id: str) -> tuple[float, float, float, float]:
        row = self._db.execute(f"SELECT {_HOLDINGS}".encode(), (run_id,) * 4).fetchone()
        assert row is not None
        return float(row[0]), float(row[1]), float(row[2]), float(row[3])

    def claim_realtime(
        self,
        run_id: str,
        request_id: str,
        *,
        worker: str | None = None,
        held_usd: float = 0.0,
        budget_usd: float | None = None,
    ) -> bool:
        where = "id = %s"
        params: tuple[Any, ...] = (request_id,)
        if budget_usd is not None:
            where += f" AND ({_COMMITTED}) + %s <= %s + 1e-9"
            params += (run_id,) * 4 + (held_usd, budget_usd)
        with self._tx() as db:
            if budget_usd is not None:
                self.lock_run(run_id)
            claimed = moves.move(
                db,
                run_id,
                RequestState.PENDING,
                RequestState.REALTIME,
                where,
                params,
                worker_id=worker,
                held_usd=held_usd,
            )
        return claimed == 1

    def adopt_batches(self, run_id: str, worker_id: str) -> list[int]:
        with self._tx() as db:
            rows = db.execute(
                "UPDATE batches b SET worker_id = %s WHERE b.run_id = %s AND b.state = ANY(%s) "
                "AND (b.worker_id IS NULL OR (b.worker_id <> %s AND NOT EXISTS (SELECT 1 FROM "
                "run_leases l WHERE l.run_id = b.run_id AND l.worker_id = b.worker_id "
                "AND l.expires_at >= clock_timestamp()))) RETURNING b.id",
                (worker_id, run_id, _QUEUED, worker_id),
            ).fetchall()
        return sorted(int(row[0]) for row in rows)

    def orphans_in_flight(self, run_id: str, worker_id: str) -> list[PendingRequest]:
        columns = REQUEST_COLUMNS.replace("body", "''::bytea AS body")
        rows = self._db.execute(
            f"SELECT {columns} FROM requests q WHERE q.run_id = %s AND q.state = 'realtime' "
            "AND (q.worker_id IS NULL OR (q.worker_id <> %s AND NOT EXISTS (SELECT 1 FROM "
            "run_leases l WHERE l.run_id = q.run_id AND l.worker_id = q.worker_id "
            "AND l.expires_at >= clock_timestamp()))) ORDER BY q.first_row".encode(),
            (run_id, worker_id),
        ).fetchall()
        return [PendingRequest(*row) for row in rows]

    # one organisation's limits --------------------------------------------------------------

    def queue_left(self, account: str, model: str) -> int | None:
        with self._tx() as db:
            row = db.execute(
                "SELECT queue_tokens FROM org_limits WHERE account = %s AND model = %s FOR UPDATE",
                (account, model),
            ).fetchone()
            if row is None or row[0] is None:
                return None
            return int(row[0]) - self._queued(db, account, model)

    def _queued(self, db: Db, account: str, model: str) -> int:
        db.execute(
            "DELETE FROM queue_holds h WHERE h.account = %s AND h.model = %s AND NOT EXISTS "
            "(SELECT 1 FROM batches b WHERE b.run_id = h.run_id AND b.id = h.batch_id "
            "AND b.state = ANY(%s))",
            (account, model, _QUEUED),
        )
        row = db.execute(
            "SELECT COALESCE(SUM(tokens), 0) FROM queue_holds WHERE account = %s AND model = %s",
            (account, model),
        ).fetchone()
        return int(row[0]) if row else 0

    def hold_queue(self, account: str, model: str, run_id: str, batch_id: int, tokens: int) -> None:
        self._db.execute(
            "INSERT INTO queue_holds(run_id, batch_id, account, model, tokens) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (run_id, batch_id) DO NOTHING",
            (run_id, batch_id, account, model, tokens),
        )

    def take_rate(self, account: str, model: str, tokens: int) -> float:
        with self._tx() as db:
            row = db.execute(
                "SELECT rpm, tpm FROM org_limits WHERE account = %s AND model = %s FOR UPDATE",
                (account, model),
            ).fetchone()
            if row is None or (row[0] is None and row[1] is None):
                return 0.0
            rpm, tpm = row
            db.execute(
                "DELETE FROM rate_spend WHERE account = %s AND model = %s "
                "AND at < clock_timestamp() - make_interval(secs => %s)",
                (account, model, RATE_WINDOW_S),
            )
            spent = db.execute(
                "SELECT at, tokens, EXTRACT(EPOCH FROM at + make_interval(secs => %s) "
                "- clock_timestamp()) FROM rate_spend WHERE account = %s AND model = %s "
                "ORDER BY at",
                (RATE_WINDOW_S, account, model),
            ).fetchall()
            wait = rate_wait([(float(w), int(t)) for _, t, w in spent], tokens, rpm, tpm)
            if wait <= 0:
                db.execute(
                    "INSERT INTO rate_spend(account, model, at, tokens) "
                    "VALUES (%s, %s, clock_timestamp(), %s)",
                    (account, model, tokens),
                )
            return wait

    def set_limits(
        self,
        account: str,
        model: str,
        *,
        queue_tokens: int | None,
        rpm: int | None,
        tpm: int | None,
    ) -> None:
        with self._tx() as db:
            if queue_tokens is None and rpm is None and tpm is None:
                db.execute(
                    "DELETE FROM org_limits WHERE account = %s AND model = %s", (account, model)
                )
                return
            db.execute(
                "INSERT INTO org_limits(account, model, queue_tokens, rpm, tpm) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (account, model) DO UPDATE SET "
                "queue_tokens = excluded.queue_tokens, rpm = excluded.rpm, tpm = excluded.tpm",
                (account, model, queue_tokens, rpm, tpm),
            )

    def limits(self) -> list[OrgLimit]:
        with self._tx() as db:
            keys = db.execute(
                "SELECT account, model FROM org_limits UNION "
                "SELECT DISTINCT account, model FROM queue_holds ORDER BY 1, 2"
            ).fetchall()
            found = []
            for account, model in keys:
                row = db.execute(
                    "SELECT queue_tokens, rpm, tpm FROM org_limits WHERE account = %s "
                    "AND model = %s",
                    (account, model),
                ).fetchone()
                queue, rpm, tpm = row if row is not None else (None, None, None)
                queued = self._queued(db, account, model)
                if row is None and not queued:
                    continue
                found.append(OrgLimit(account, model, queue, rpm, tpm, queued))
            return found
