"""What /metrics serves (prometheus-client's text format).

- Requests: django-prometheus's middleware (counts and latencies by view name, method and
  status; never a raw path, so no id appears in a label).
- Webhook deliveries: ops.counters, counted in the process that answered.
- Everything that is state — invoices by push state, offices by subscription status, the
  billing runs and the latest finished one, dunning transitions, the audit sealer's lag,
  the billing-run tick and the dead-man alerts — is read from the database at scrape time
  by `DatabaseCollector`: every process answers the same, with no shared memory between
  gunicorn workers. Dunning transitions are counters because they are counted from the
  append-only audit trail.

Multi-process servers: with `PROMETHEUS_MULTIPROC_DIR` set (before the process starts),
the in-process counters of every worker are read back from that folder and added up
(prometheus-client's MultiProcessCollector); see docs/compliance.md for the folder's
care. Without it, the serving process's own registry is used (runserver, one worker)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

from django.db.models import Count
from django.utils import timezone
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from config.outages import discard_broken_connections

logger = logging.getLogger("ops.metrics")

# The audit actions that are dunning transitions (billing/dunning.py), by their metric label.
DUNNING_TRANSITIONS = {
    "invoice.past_due": "invoice_past_due",
    "subscription.past_due": "office_past_due",
    "subscription.suspended": "office_suspended",
    "subscription.reactivated": "office_reactivated",
}


def _ts(value: Any) -> float:
    return float(value.timestamp())


def _by(family: GaugeMetricFamily, counts: dict[str, int], labels: Iterable[str]) -> GaugeMetricFamily:
    """One sample per known label value (zero when absent), then any other value seen."""
    known = list(labels)
    for value in known:
        family.add_metric([value], counts.get(value, 0))
    for value, n in sorted(counts.items()):
        if value not in known:
            family.add_metric([value], n)
    return family


class DatabaseCollector:
    """The state-like figures, read from the database at each scrape (about ten indexed queries)."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("ops_metrics_database_up", "1 when this scrape could read the database.")
        try:
            families = list(self._families())
        except Exception as exc:  # a scrape during a database outage still answers, saying so
            logger.warning("metrics: database unreadable (%s)", type(exc).__name__)
            discard_broken_connections()
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Metric]:
        from audit.models import AuditChainHead, AuditEvent
        from billing.models import BillingRun, BillingRunStatus, Invoice, PushState, StripeEvent, StripeEventStatus
        from offices.models import Office, SubscriptionStatus
        from ops.selectors import audit_sealing_status, billing_tick_status

        now = timezone.now()

        def counts(rows: Iterable[Any], key: str) -> dict[str, int]:
            return {str(row[key]): int(row["n"]) for row in rows}

        yield _by(
            GaugeMetricFamily(
                "billing_invoices_by_push_state", "Invoices by Stripe push state.", labels=["push_state"]
            ),
            counts(Invoice.objects.order_by().values("push_state").annotate(n=Count("id")), "push_state"),
            PushState.values,
        )
        yield _by(
            GaugeMetricFamily(
                "billing_offices_by_subscription_status", "Offices by subscription status.", labels=["status"]
            ),
            counts(
                Office.objects.order_by().values("subscription_status").annotate(n=Count("id")), "subscription_status"
            ),
            SubscriptionStatus.values,
        )
        yield _by(
            GaugeMetricFamily(
                "billing_stripe_events_by_status", "Recorded Stripe events by status.", labels=["status"]
            ),
            counts(StripeEvent.objects.order_by().values("status").annotate(n=Count("id")), "status"),
            StripeEventStatus.values,
        )
        yield _by(
            GaugeMetricFamily("billing_runs_by_status", "Billing runs by status.", labels=["status"]),
            counts(BillingRun.objects.order_by().values("status").annotate(n=Count("id")), "status"),
            BillingRunStatus.values,
        )

        latest = BillingRun.objects.order_by("-started_at", "-id").first()
        if latest is not None:
            started = GaugeMetricFamily(
                "billing_run_latest_started_timestamp_seconds", "When the most recent billing run started (Unix time)."
            )
            started.add_metric([], _ts(latest.started_at))
            yield started
        done = BillingRun.objects.filter(finished_at__isnull=False).order_by("-finished_at", "-id").first()
        if done is not None and done.finished_at is not None:
            run_figures: list[tuple[str, str, float]] = [
                (
                    "finished_timestamp_seconds",
                    "When it finished or was marked failed (Unix time).",
                    _ts(done.finished_at),
                ),
                (
                    "duration_seconds",
                    "From its start to its end.",
                    max(0.0, (done.finished_at - done.started_at).total_seconds()),
                ),
                ("offices_due", "Offices it found due.", done.offices_due),
                ("offices_done", "Offices it processed.", done.offices_done),
                ("errors", "Offices it could not bill (retried by the next run).", done.error_count),
                ("invoices_finalized", "Invoices it finalized.", done.invoices_finalized),
                ("invoices_opened", "Cycle invoices it opened.", done.invoices_opened),
                ("lines_created", "Invoice lines it created.", done.lines_created),
            ]
            for suffix, text, value in run_figures:
                family = GaugeMetricFamily(
                    f"billing_run_last_completed_{suffix}", f"The most recent finished or failed billing run: {text}"
                )
                family.add_metric([], value)
                yield family
            failed = GaugeMetricFamily(
                "billing_run_last_completed_failed", "1 when the most recent completed billing run failed."
            )
            failed.add_metric([], 1 if done.status == BillingRunStatus.FAILED else 0)
            yield failed

        transitions = CounterMetricFamily(
            "billing_dunning_transitions",
            "Dunning transitions so far, counted from the audit trail (billing/dunning.py).",
            labels=["transition"],
        )
        seen = counts(
            AuditEvent.objects.filter(action__in=list(DUNNING_TRANSITIONS))
            .order_by()
            .values("action")
            .annotate(n=Count("id")),
            "action",
        )
        for action, label in DUNNING_TRANSITIONS.items():
            transitions.add_metric([label], seen.get(action, 0))
        yield transitions

        sealing = audit_sealing_status(now=now)
        unsealed = GaugeMetricFamily("audit_unsealed_events", "Committed audit entries not yet sealed into the chain.")
        unsealed.add_metric([], sealing.unsealed)
        yield unsealed
        lag = GaugeMetricFamily(
            "audit_oldest_unsealed_age_seconds", "How long the oldest unsealed audit entry has waited (0: none)."
        )
        lag.add_metric([], sealing.oldest_age_seconds or 0.0)
        yield lag
        head = AuditChainHead.objects.filter(pk=1).values_list("seq", flat=True).first()
        head_seq = GaugeMetricFamily("audit_chain_head_seq", "Sequence number of the last sealed audit entry.")
        head_seq.add_metric([], head or 0)
        yield head_seq

        tick = billing_tick_status(now=now)
        if tick.last_success_at is not None:
            last_tick = GaugeMetricFamily(
                "billing_tick_last_success_timestamp_seconds",
                "When the hourly billing-run tick last succeeded (Unix time).",
            )
            last_tick.add_metric([], _ts(tick.last_success_at))
            yield last_tick
        alert = GaugeMetricFamily(
            "ops_deadman_alert", "1 when a dead-man switch has fired (ops/selectors.py).", labels=["check"]
        )
        alert.add_metric(["billing_tick"], 0 if tick.ok else 1)
        alert.add_metric(["audit_sealer"], 0 if sealing.ok else 1)
        yield alert


class _ThisProcess:
    """The serving process's own registry (request and webhook counters, process figures)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def metrics_text() -> bytes:
    """One scrape: the process counters (every worker's under PROMETHEUS_MULTIPROC_DIR) and the database's figures."""
    registry = CollectorRegistry(auto_describe=False)
    folder = multiprocess_dir()
    if folder:
        MultiProcessCollector(registry, path=folder)
    else:
        registry.register(_ThisProcess())
    registry.register(DatabaseCollector())
    return generate_latest(registry)
