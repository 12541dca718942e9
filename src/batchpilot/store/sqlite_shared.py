"""The SQLite store's shared parts (see `store/shared.py`): one machine's workers take leases
and reserve from an organisation's limits in the store's write transactions, which SQLite runs
one at a time (so no row needs locking); expiries by this machine's clock."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from batchpilot.store import sqlite_moves as moves
from batchpilot.store import sqlite_queries as queries
from batchpilot.store.database import Connection
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


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" for _ in values)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_STATES = [str(s) for s in CLAIMABLE_STATES]
_KINDS = [str(k) for k in CLAIMABLE_KINDS]
_QUEUED = [str(s) for s in QUEUED_BATCHES]
_LIVE_DRIVERS = "SELECT COUNT(*) FROM run_leases l WHERE l.run_id = r.id AND l.expires_at >= ?"
_PARTS = (
    "(SELECT COALESCE(SUM(spent_usd), 0) FROM run_totals WHERE run_id = ?)",
    "(SELECT COALESCE(SUM(reserved_usd), 0) FROM batches WHERE run_id = ? "
    "AND state IN ('creating', 'submitted'))",
    "(SELECT COALESCE(SUM(held_usd), 0) FROM batches WHERE run_id = ? "
    "AND state IN ('planned', 'uploading', 'uploaded'))",
    "(SELECT COALESCE(SUM(held_usd), 0) FROM requests WHERE run_id = ? AND state = 'realtime')",
)
_HOLDINGS = ", ".join(_PARTS)
"""(spent, reserved, held, in flight) of a run, from its four run ids."""
_COMMITTED = "SELECT " + " + ".join(_PARTS)


class SharedMixin:
    """Leases and an organisation's limits, over the store's connection and transactions."""

    @property
    def _db(self) -> Connection:
        raise NotImplementedError

    def _tx(self) -> AbstractContextManager[Connection]:
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
        with self._tx() as db:
            now = time.time()
            only = "" if run_ids is None else f" AND r.id IN ({_marks(run_ids)})"
            only += f" AND r.id NOT IN ({_marks(skip)})" if skip else ""
            room = "" if per_run is None else f" AND ({_LIVE_DRIVERS}) < ?"
            row = db.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs r "
                f"WHERE r.status IN ({_marks(_STATES)}) AND r.kind IN ({_marks(_KINDS)}) "
                "AND NOT EXISTS (SELECT 1 FROM run_leases m WHERE m.run_id = r.id "
                f"AND m.worker_id = ? AND m.expires_at >= ?){room}{only} "
                "ORDER BY r.created_at_utc, r.id LIMIT 1",
                (
                    *_STATES,
                    *_KINDS,
                    worker_id,
                    now,
                    *(() if per_run is None else (now, per_run)),
                    *(run_ids or []),
                    *skip,
                ),
            ).fetchone()
            if row is None:
                return None
            previous = self._lease(db, str(row[0]), worker_id, ttl_s)
            return Claim(RunRecord(*row[:10]), previous)

    def _lease(self, db: Connection, run_id: str, worker_id: str, ttl_s: float) -> str | None:
        """Lease the run to the worker; the leases that ran out go (a worker that held one is
        named)."""
        now = time.time()
        gone = db.execute(
            "DELETE FROM run_leases WHERE run_id = ? AND expires_at < ? AND worker_id <> ? "
            "RETURNING worker_id",
            (run_id, now, worker_id),
        ).fetchall()
        db.execute(
            "INSERT INTO run_leases(run_id, worker_id, expires_at, taken_at_utc) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (run_id, worker_id) DO UPDATE SET "
            "expires_at = excluded.expires_at, taken_at_utc = excluded.taken_at_utc",
            (run_id, worker_id, now + ttl_s, _now()),
        )
        return str(gone[0][0]) if gone else None

    def take_run(
        self, run_id: str, worker_id: str, ttl_s: float, per_run: int | None = 1
    ) -> str | None:
        with self._tx() as db:
            others = db.execute(
                "SELECT worker_id FROM run_leases WHERE run_id = ? AND expires_at >= ? "
                "AND worker_id <> ? ORDER BY expires_at DESC",
                (run_id, time.time(), worker_id),
            ).fetchall()
            if per_run is not None and len(others) >= per_run:
                return str(others[0][0])
            self._lease(db, run_id, worker_id, ttl_s)
            return None

    def renew_lease(self, run_id: str, worker_id: str, ttl_s: float) -> bool:
        with self._tx() as db:
            now = time.time()
            cursor = db.execute(
                "UPDATE run_leases SET expires_at = ? WHERE run_id = ? AND worker_id = ? "
                "AND expires_at >= ?",
                (now + ttl_s, run_id, worker_id, now),
            )
            return cursor.rowcount == 1

    def release_run(self, run_id: str, worker_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM run_leases WHERE run_id = ? AND worker_id = ?", (run_id, worker_id)
            )

    def lease_of(self, run_id: str) -> tuple[str, float] | None:
        row = self._db.execute(
            "SELECT worker_id, expires_at FROM run_leases WHERE run_id = ? "
            "ORDER BY expires_at DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        return None if row is None else (str(row[0]), float(row[1]) - time.time())

    def drivers(self, run_id: str) -> list[str]:
        rows = self._db.execute(
            "SELECT worker_id FROM run_leases WHERE run_id = ? AND expires_at >= ? "
            "ORDER BY worker_id",
            (run_id, time.time()),
        ).fetchall()
        return [str(row[0]) for row in rows]

    # many workers on one run ----------------------------------------------------------------

    def lock_run(self, run_id: str) -> None:
        """Nothing to lock: SQLite runs one write transaction at a time."""

    def holdings(self, run_id: str) -> tuple[float, float, float, float]:
        row = self._db.execute(f"SELECT {_HOLDINGS}", (run_id,) * 4).fetchone()
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
        where = "id = ?"
        params: tuple[Any, ...] = (request_id,)
        if budget_usd is not None:
            where += f" AND ({_COMMITTED}) + ? <= ? + 1e-9"
            params += (run_id,) * 4 + (held_usd, budget_usd)
        with self._tx() as db:
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
                "UPDATE batches SET worker_id = ? WHERE run_id = ? "
                f"AND state IN ({_marks(_QUEUED)}) AND (worker_id IS NULL OR (worker_id <> ? "
                "AND NOT EXISTS (SELECT 1 FROM run_leases l WHERE l.run_id = batches.run_id "
                "AND l.worker_id = batches.worker_id AND l.expires_at >= ?))) RETURNING id",
                (worker_id, run_id, *_QUEUED, worker_id, time.time()),
            ).fetchall()
        return sorted(int(row[0]) for row in rows)

    def orphans_in_flight(self, run_id: str, worker_id: str) -> list[PendingRequest]:
        columns = queries.request_columns("requests", bodies=False)
        rows = self._db.execute(
            f"SELECT {columns} FROM requests WHERE run_id = ? AND state = 'realtime' "
            "AND (worker_id IS NULL OR (worker_id <> ? AND NOT EXISTS (SELECT 1 FROM "
            "run_leases l WHERE l.run_id = requests.run_id AND l.worker_id = requests.worker_id "
            "AND l.expires_at >= ?))) ORDER BY first_row",
            (run_id, worker_id, time.time()),
        ).fetchall()
        return [PendingRequest(**dict(row)) for row in rows]

    # one organisation's limits --------------------------------------------------------------

    def queue_left(self, account: str, model: str) -> int | None:
        with self._tx() as db:
            row = db.execute(
                "SELECT queue_tokens FROM org_limits WHERE account = ? AND model = ?",
                (account, model),
            ).fetchone()
            if row is None or row[0] is None:
                return None
            return int(row[0]) - self._queued(db, account, model)

    def _queued(self, db: Connection, account: str, model: str) -> int:
        db.execute(
            "DELETE FROM queue_holds WHERE account = ? AND model = ? AND NOT EXISTS "
            "(SELECT 1 FROM batches b WHERE b.run_id = queue_holds.run_id "
            f"AND b.id = queue_holds.batch_id AND b.state IN ({_marks(_QUEUED)}))",
            (account, model, *_QUEUED),
        )
        row = db.execute(
            "SELECT COALESCE(SUM(tokens), 0) FROM queue_holds WHERE account = ? AND model = ?",
            (account, model),
        ).fetchone()
        return int(row[0]) if row else 0

    def hold_queue(self, account: str, model: str, run_id: str, batch_id: int, tokens: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO queue_holds(run_id, batch_id, account, model, tokens) "
                "VALUES (?, ?, ?, ?, ?)",
                (run_id, batch_id, account, model, tokens),
            )

    def take_rate(self, account: str, model: str, tokens: int) -> float:
        with self._tx() as db:
            row = db.execute(
                "SELECT rpm, tpm FROM org_limits WHERE account = ? AND model = ?",
                (account, model),
            ).fetchone()
            if row is None or (row[0] is None and row[1] is None):
                return 0.0
            now = time.time()
            db.execute(
                "DELETE FROM rate_spend WHERE account = ? AND model = ? AND at < ?",
                (account, model, now - RATE_WINDOW_S),
            )
            spent = db.execute(
                "SELECT at, tokens FROM rate_spend WHERE account = ? AND model = ? ORDER BY at",
                (account, model),
            ).fetchall()
            window = [(float(at) + RATE_WINDOW_S - now, int(used)) for at, used in spent]
            wait = rate_wait(window, tokens, row[0], row[1])
            if wait <= 0:
                db.execute(
                    "INSERT INTO rate_spend(account, model, at, tokens) VALUES (?, ?, ?, ?)",
                    (account, model, now, tokens),
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
                    "DELETE FROM org_limits WHERE account = ? AND model = ?", (account, model)
                )
                return
            db.execute(
                "INSERT INTO org_limits(account, model, queue_tokens, rpm, tpm) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (account, model) DO UPDATE SET "
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
                    "SELECT queue_tokens, rpm, tpm FROM org_limits WHERE account = ? AND model = ?",
                    (account, model),
                ).fetchone()
                queue, rpm, tpm = row if row is not None else (None, None, None)
                queued = self._queued(db, account, model)
                if row is None and not queued:
                    continue
                found.append(OrgLimit(account, model, queue, rpm, tpm, queued))
            return found
