"""Cancelling a run's remote batches: one routine for Ctrl-C, `batchpilot cancel`, a near
deadline and a met target. Every batch is tried; one that cannot be cancelled (it has already
ended, or the provider is unreachable) is reported and the others are still cancelled."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from batchpilot.errors import ProviderRejected, ProviderUnavailable
from batchpilot.providers.base import AuthenticationFailed, Provider
from batchpilot.store import BatchRecord, Store

__all__ = ["Cancelled", "cancel_batches"]


@dataclass(frozen=True)
class Cancelled:
    """What cancelling one batch did: `outcome` is "cancelled", "ended" (the provider will not
    cancel it: it has ended or is ending; it is ingested as usual) or "failed" (try again)."""

    batch: BatchRecord
    outcome: str
    detail: str = ""

    @property
    def line(self) -> str:
        remote = f" ({self.batch.remote_id})" if self.batch.remote_id else ""
        said = {"cancelled": "cancelled", "ended": "not cancelled", "failed": "cancel failed"}
        detail = f": {self.detail}" if self.detail else ""
        return f"batch {self.batch.id}{remote} {said[self.outcome]}{detail}"


def cancel_batches(
    store: Store,
    provider: Provider,
    run_id: str,
    batches: Iterable[BatchRecord],
    why: str,
    kind: str = "cancelled",
) -> list[Cancelled]:
    """Ask the provider to cancel each batch that has a remote id; record one event each (of
    `kind` for a cancelled one, a warning for the others)."""
    done: list[Cancelled] = []
    for batch in batches:
        if batch.remote_id is None:
            continue
        try:
            provider.batches.cancel(batch.remote_id)
        except AuthenticationFailed:
            raise  # no batch can be cancelled with this key
        except ProviderRejected as exc:
            result = Cancelled(batch, "ended", str(exc))
        except ProviderUnavailable as exc:
            result = Cancelled(batch, "failed", str(exc))
        else:
            result = Cancelled(batch, "cancelled", why)
        store.event(run_id, kind if result.outcome == "cancelled" else "warning", result.line)
        done.append(result)
    return done
