"""Counters kept in the process that counts (prometheus-client), for what no table records.

Importable from anywhere (no Django models here). Under a multi-process server (gunicorn
with several workers) set `PROMETHEUS_MULTIPROC_DIR` in the environment before start:
prometheus-client then keeps each worker's counts in files there and /metrics adds them up
(ops/metrics.py). Label values come from fixed sets only: never an id, an address or text
that a request chose."""

from __future__ import annotations

from prometheus_client import Counter

WEBHOOK_OUTCOMES = ("accepted", "duplicate", "failed", "rejected")

webhook_deliveries = Counter(
    "billing_webhook_deliveries",
    "Stripe webhook deliveries by outcome: accepted (recorded and applied), duplicate (an event id "
    "already recorded), failed (recorded, the reaction raised; Stripe retries), rejected (by reason).",
    ["outcome", "reason"],
)


def webhook_delivery_count(*, outcome: str, reason: str = "") -> None:
    """Count one webhook delivery (billing/stripe/webhooks.py). `reason` is a rejection's
    fixed reason (e.g. "signature mismatch"), empty otherwise."""
    if outcome not in WEBHOOK_OUTCOMES:
        outcome = "failed"
    webhook_deliveries.labels(outcome=outcome, reason=reason[:100]).inc()
