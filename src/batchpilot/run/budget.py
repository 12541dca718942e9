"""A run's budget: what must be known before one can be kept, and stopping when it is used up.

The money itself is counted by the store (spent, reserved) and by the lanes' share (held,
in flight: `run/share.py`); each lane reserves a request's worst case (`plan/worst.py`)
before sending it.
"""

from __future__ import annotations

from batchpilot.errors import BudgetExceeded, UserInputError
from batchpilot.formatting import usd
from batchpilot.pricing import PriceTable
from batchpilot.store import RunState, Store

__all__ = ["OutOfMoney", "check_worst_cases", "stop_for_budget"]


class OutOfMoney(Exception):
    """The next request's worst case no longer fits the money left: raised inside a store
    transaction, which rolls back, and turned into `stop_for_budget` once outside it."""

    def __init__(self, left: float, next_worst: float) -> None:
        super().__init__(f"{left} left, {next_worst} needed")
        self.left = left
        self.next_worst = next_worst


RAISE = "raise budget.max_usd (or --budget) and run again"


def check_worst_cases(
    store: Store, run_id: str, budget_usd: float | None, prices: PriceTable | None
) -> None:
    """Under a budget, every request still to send needs a worst case in USD."""
    if budget_usd is None:
        return
    for model, bounded in store.unpriced(run_id):
        if not bounded:
            raise UserInputError(
                f"nothing bounds the output of model {model!r} (no max_tokens in its "
                "requests, and its maximum output and context window are unknown), so a "
                "budget cannot be kept; set params.max_tokens (or limits.max_output_tokens, "
                "the model's maximum output), or run without a budget"
            )
        if prices is None or not prices.has(model):
            raise UserInputError(
                f"no price for model {model!r}, so a budget cannot be kept; add one under "
                f"`prices:` in the job file: prices: {{{model}: {{input: ..., output: ...}}}}"
            )


def stop_for_budget(
    store: Store,
    run_id: str,
    budget_usd: float | None,
    *,
    left: float | None = None,
    next_worst: float | None = None,
) -> BudgetExceeded:
    """Stop the run for its budget (an event, the run stopped) and return the error to raise:
    what is spent, and, when the next request waits for money, what is left and what it may
    cost."""
    spent, _ = store.money(run_id)
    if left is None or next_worst is None:
        message = f"the budget of {usd(budget_usd)} is used up ({usd(spent)} spent); {RAISE}"
    else:
        pending = store.request_counts(run_id)["pending"]
        message = (
            f"the budget of {usd(budget_usd)} is used up: {usd(spent)} spent, {usd(left)} left, "
            f"and the next request may cost up to {usd(next_worst)} (its worst case: every "
            f"answer in full); {pending} requests are still pending. {RAISE.capitalize()}"
        )
    store.event(run_id, "budget", message)
    record = store.run(run_id)
    if record is None or record.status != RunState.STOPPED:  # a co-driver may have stopped it
        store.move_run(run_id, RunState.STOPPED)
    return BudgetExceeded(message)
