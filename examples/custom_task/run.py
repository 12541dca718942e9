"""A task class: support tickets triaged, then a reply drafted for each, in two rounds.

    python examples/custom_task/run.py                                  # local model, no key
    python examples/custom_task/run.py --provider openai --model gpt-4o-mini

Round 1 asks for a structured triage of every ticket; round 2 is made from those results: a
reply in the tone the triage calls for. Everything the task learns lives in `self.state`,
saved with each result: stop it at any moment (Ctrl-C, or kill it) and run it again, and it
goes on from where it was without sending anything twice. The results are written to
`results.json` beside this file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

import batchpilot
from batchpilot.errors import BatchpilotError

HERE = Path(__file__).parent

TRIAGE_PROMPT = (
    "Triage this support ticket. category: billing, bug, account or other. urgent: true when "
    "the customer is blocked or at risk. Answer in JSON."
)


class Triage(BaseModel):
    category: Literal["billing", "bug", "account", "other"]
    urgent: bool


class SupportTickets(batchpilot.Task):
    name = "support-tickets"
    model = "smollm2"
    params = {"temperature": 0, "max_tokens": 40}

    def __init__(self, tickets: dict[str, dict[str, str]], **options: Any) -> None:
        super().__init__(**options)
        self.tickets = tickets

    def initial_state(self) -> dict[str, Any]:
        return {"triage": {}, "replies": {}, "failed": {}}

    def requests(self) -> Iterator[batchpilot.TaskRequest]:
        for key, ticket in self.tickets.items():
            yield batchpilot.TaskRequest(
                key,
                [
                    {"role": "system", "content": TRIAGE_PROMPT},
                    {"role": "user", "content": ticket["text"]},
                ],
                schema=Triage,
                meta={"customer": ticket["customer"]},
            )
        # Round 2 exists only once round 1's answers are in the state.
        for key, triage in self.state["triage"].items():
            tone = "urgent and reassuring" if triage["urgent"] else "friendly"
            ticket = self.tickets[key]
            yield batchpilot.TaskRequest(
                f"{key}/reply",
                [
                    {
                        "role": "system",
                        "content": f"Write a short {tone} reply to a {triage['category']} "
                        "support ticket. Two sentences.",
                    },
                    {"role": "user", "content": f"{ticket['customer']} wrote: {ticket['text']}"},
                ],
                meta={"ticket": key},
                params={"max_tokens": 48},
            )

    def on_result(self, result: batchpilot.TaskResult) -> None:
        if not result.ok:
            self.state["failed"][result.key] = result.error
        elif "ticket" in result.meta:
            self.state["replies"][result.meta["ticket"]] = (result.text or "").strip()
        else:
            self.state["triage"][result.key] = result.answer.model_dump()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", default=".batchpilot", help="state directory")
    parser.add_argument("--provider", default="local", help="local, openai or compatible")
    parser.add_argument("--model", help="the model (default: smollm2 on the local model)")
    parser.add_argument("--budget", type=float, help="hard limit in USD")
    args = parser.parse_args(argv)

    lines = (HERE / "tickets.jsonl").read_text().splitlines()
    tickets = {row["id"]: row for row in map(json.loads, lines)}
    task = SupportTickets(
        tickets, provider=args.provider, state_dir=args.state, budget_usd=args.budget
    )
    if args.model:
        task.model = args.model
    try:
        report = task.run()
    except BatchpilotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    state = report.state
    results = {
        key: {
            **ticket,
            "triage": state["triage"].get(key),
            "reply": state["replies"].get(key),
            "error": state["failed"].get(key) or state["failed"].get(f"{key}/reply"),
        }
        for key, ticket in tickets.items()
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for key, row in results.items():
        triage = row["triage"] or {}
        print(
            f"{key} {triage.get('category', '-'):8} urgent={triage.get('urgent', '-')!s:5} ", end=""
        )
        print((row["reply"] or row["error"] or "")[:60].replace("\n", " "))
    status = report.status
    print(
        f"{report.rounds} rounds, {status.requests['succeeded']} answered, "
        f"{status.requests['failed']} failed, ${status.spent_usd:.4f} "
        f"({'finished' if report.finished else 'stopped: run again to go on'})"
    )
    return 0 if report.finished else 130


if __name__ == "__main__":
    sys.exit(main())
