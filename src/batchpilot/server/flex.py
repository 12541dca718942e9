"""The local server's flex tier (`service_tier: "flex"` on a real-time request): answered like
the standard tier but after its own latency, refused at a configurable rate with 429
`resource_unavailable` (not a rate limit: nothing is counted against the limits), and recorded
in the ledger under its tier, so that a test can price it at batch rates.

Which tries are refused is decided from the request's id (its `x-batchpilot-custom-id`, else
its body's digest) and how often it was tried, so that a run is reproducible.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from starlette.responses import JSONResponse

from batchpilot.server.config import ServerConfig
from batchpilot.server.web import error_response

__all__ = ["FLEX", "FlexTier", "answered_tier", "mark_tier"]

FLEX = "flex"
REFUSAL = (
    "Resource unavailable: the flex tier has no capacity for this request now; try again "
    "later or use the default service tier. (local server, flex tier)"
)


def answered_tier(body: dict[str, Any]) -> str | None:
    """The `service_tier` an answer to `body` reports: `flex` when asked for, `default` for any
    other tier asked for, None (left out) when none was."""
    asked = body.get("service_tier")
    if asked is None:
        return None
    return FLEX if asked == FLEX else "default"


class FlexTier:
    """The server's flex tier, with its latency and refusal rate from the config."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._tries: dict[str, int] = {}
        self._lock = threading.Lock()

    def latency_s(self, flex: bool) -> float:
        """Wall-clock seconds an answer takes at the flex tier, or at the standard one."""
        config = self.config
        if flex and config.flex_latency_s is not None:
            return config.flex_latency_s
        return config.realtime_latency_s

    def refusal(self, key: str) -> JSONResponse | None:
        """The 429 `resource_unavailable` answer when this try of the request `key` is
        refused, else None."""
        rate = self.config.flex_refusal_rate
        if rate <= 0:
            return None
        with self._lock:
            tries = self._tries[key] = self._tries.get(key, 0) + 1
        digest = hashlib.sha256(f"{key}\0{tries}".encode()).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 >= rate:
            return None
        return error_response(429, REFUSAL, "resource_unavailable", "resource_unavailable")


def mark_tier(response: dict[str, Any], tier: str | None) -> None:
    """Put the tier that answered into a chat or responses body (an answer, not an error)."""
    if tier is not None and "object" in response:
        response["service_tier"] = tier
