"""Reconciliation with Stripe (spec §8): daily and on demand, report only.

Every local invoice that is open, or changed in the last `STRIPE_RECONCILE_DAYS` (35)
days, and was meant for Stripe (zero-total invoices never are) is compared with its Stripe
invoice: amount (`total`), currency, status and customer. Stripe is read by listing each
customer's invoices (one paginated list per office, from a little before the oldest
invoice checked), never one call per invoice; only an invoice missing from its
customer's list is fetched by id, to tell "under another customer" from "missing".

Customers are compared too, from one paginated list of the account's customers: each
office's customer must exist, point back at the office (`metadata.office_id`), carry its
name and billing email (unless a sync is still under way, for less than an hour), and be
the only customer that claims the office.

Mismatches are returned, printed by `manage.py reconcile_stripe`, and audited one by one
(`reconciliation.mismatch`). Nothing is changed, least of all money: a wrong invoice is
an operator's decision (void and reissue, or a Stripe-side fix)."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from audit.models import Outcome
from audit.services import audit_record
from billing.models import Invoice, InvoiceStatus, PushState
from billing.stripe.gateway import Gateway, Permanent, stripe_field
from offices.models import Office

logger = logging.getLogger("billing.reconcile")

# Stripe creates its invoice when we push, shortly after finalization; list from a margin
# before the oldest finalization.
LIST_MARGIN = timedelta(days=1)
UNSETTLED = (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE)
# A push still pending this long after finalization is reported (normally seconds).
PUSH_OVERDUE = timedelta(hours=1)


@dataclass(frozen=True)
class Mismatch:
    """One field where a local invoice and Stripe disagree."""

    # amount | currency | status | customer | amount_remaining | past_due | missing_in_stripe |
    # not_pushed | duplicate | unknown_in_stripe; per office (invoice_id None):
    # customer_missing | customer_office | customer_name | customer_email | duplicate_customer
    field: str
    local: str
    stripe: str
    invoice_id: int | None = None
    number: str = ""
    office_id: int | None = None
    stripe_invoice_id: str = ""


@dataclass
class ReconcileReport:
    """What one reconciliation pass compared and found."""

    since: datetime
    checked: int = 0
    customers_listed: int = 0
    customers_seen: int = 0
    stripe_invoices_seen: int = 0
    fetched_by_id: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)


def invoices_to_reconcile(*, now: datetime, days: int, office_ids: list[int] | None = None) -> QuerySet[Invoice]:
    """Finalized invoices of the last `days` days that Stripe should know (spec §8)."""
    qs = (
        Invoice.objects.exclude(status=InvoiceStatus.DRAFT)
        .exclude(push_state=PushState.NOT_REQUIRED)
        .filter(Q(status=InvoiceStatus.OPEN) | Q(updated_at__gte=now - timedelta(days=days)))
        .select_related("office")
        .order_by("office_id", "id")
    )
    if office_ids:
        qs = qs.filter(office_id__in=office_ids)
    return qs


_get = stripe_field


def _ref(value: Any) -> str:
    if value is None:
        return ""
    found = _get(value, "id") if not isinstance(value, str) else value
    return str(found or "")


def _local_id(stripe_invoice: Any) -> str:
    metadata = _get(stripe_invoice, "metadata")
    value = _get(metadata, "invoice_id") if metadata else None
    return str(value) if value else ""


def _compare(invoice: Invoice, remote: Any, customer_id: str) -> list[Mismatch]:
    def mismatch(name: str, local: Any, stripe: Any) -> Mismatch:
        return Mismatch(
            field=name,
            local=str(local),
            stripe=str(stripe),
            invoice_id=invoice.pk,
            number=invoice.number or "",
            office_id=invoice.office_id,
            stripe_invoice_id=_ref(remote),
        )

    found: list[Mismatch] = []
    total = _get(remote, "total")
    if total is None or int(total) != invoice.total_cents:
        found.append(mismatch("amount", invoice.total_cents, total))
    currency = str(_get(remote, "currency") or "")
    if currency.lower() != invoice.currency.lower():
        found.append(mismatch("currency", invoice.currency, currency))
    status = str(_get(remote, "status") or "")
    if status != invoice.status:
        found.append(mismatch("status", invoice.status, status))
    remote_customer = _ref(_get(remote, "customer"))
    if remote_customer != customer_id:
        found.append(mismatch("customer", customer_id, remote_customer))
    if status == invoice.status:  # when the statuses differ, that one mismatch says it
        remaining = _get(remote, "amount_remaining")
        local_remaining = invoice.total_cents if invoice.status in UNSETTLED else 0
        if remaining is not None and int(remaining) != local_remaining:
            found.append(mismatch("amount_remaining", local_remaining, remaining))
    attempts = int(_get(remote, "attempt_count") or 0)
    if status == "open" and attempts > 0 and invoice.status == InvoiceStatus.OPEN and invoice.past_due_at is None:
        # Stripe tried to collect and failed, and we never heard (a webhook missed):
        # locally the office looks paid up (spec §8 dunning would mark it past due).
        found.append(mismatch("past_due", "not past due", f"{attempts} failed payment attempt(s)"))
    return found


def reconcile_stripe(
    *,
    gateway: Gateway | None = None,
    now: datetime | None = None,
    days: int | None = None,
    office_ids: list[int] | None = None,
    audit: bool = True,
) -> ReconcileReport:
    """Compare, report, audit. Reads Stripe; writes nothing but audit entries."""
    now = now or timezone.now()
    days = settings.STRIPE_RECONCILE_DAYS if days is None else days
    gw = gateway or Gateway()
    report = ReconcileReport(since=now - timedelta(days=days))

    by_office: dict[int, list[Invoice]] = defaultdict(list)
    for invoice in invoices_to_reconcile(now=now, days=days, office_ids=office_ids):
        by_office[invoice.office_id].append(invoice)
        report.checked += 1

    for invoices in by_office.values():
        office = invoices[0].office
        customer_id = office.payment_provider_customer_id or ""
        remote_invoices: list[Any] = []
        if customer_id:
            oldest = min(inv.finalized_at or now for inv in invoices) - LIST_MARGIN
            params: Any = {"customer": customer_id, "limit": 100, "created": {"gte": int(oldest.timestamp())}}
            remote_invoices = list(gw.invoices_list(params=params))
            report.customers_listed += 1
            report.stripe_invoices_seen += len(remote_invoices)
        report.mismatches.extend(_office_mismatches(gw, report, invoices, remote_invoices, customer_id, now))
    report.mismatches.extend(_customer_mismatches(gw, report, now=now, office_ids=office_ids))

    if audit:
        for item in report.mismatches:
            if item.invoice_id:
                target_type, target_id = Invoice._meta.label, str(item.invoice_id)
            elif item.field in CUSTOMER_FIELDS:
                target_type, target_id = Office._meta.label, str(item.office_id)
            else:
                target_type, target_id = "stripe.invoice", item.stripe_invoice_id
            audit_record(
                action="reconciliation.mismatch",
                target_type=target_type,
                target_id=target_id,
                office_id=item.office_id,
                outcome=Outcome.FAILURE,
                reason=item.field,
                data={
                    "field": item.field,
                    "local": item.local,
                    "stripe": item.stripe,
                    "number": item.number,
                    "stripe_invoice_id": item.stripe_invoice_id,
                },
            )
        audit_record(
            action="reconciliation.finished",
            data={
                "since": report.since.isoformat(),
                "checked": report.checked,
                "customers_listed": report.customers_listed,
                "customers_seen": report.customers_seen,
                "stripe_invoices_seen": report.stripe_invoices_seen,
                "fetched_by_id": report.fetched_by_id,
                "mismatches": len(report.mismatches),
            },
        )
    if report.mismatches:
        logger.warning("reconciliation: %s mismatches over %s invoices", len(report.mismatches), report.checked)
    return report


def _office_mismatches(
    gw: Gateway,
    report: ReconcileReport,
    invoices: list[Invoice],
    remote_invoices: list[Any],
    customer_id: str,
    now: datetime,
) -> list[Mismatch]:
    found: list[Mismatch] = []
    by_id = {_ref(r): r for r in remote_invoices}
    by_local: dict[str, list[Any]] = defaultdict(list)
    for remote in remote_invoices:
        if _local_id(remote):
            by_local[_local_id(remote)].append(remote)
    office_id = invoices[0].office_id

    for invoice in invoices:
        copies = by_local.get(str(invoice.pk), [])
        if len(copies) > 1:
            found.append(
                Mismatch(
                    field="duplicate",
                    local=invoice.stripe_invoice_id or "",
                    stripe=",".join(sorted(_ref(c) for c in copies)),
                    invoice_id=invoice.pk,
                    number=invoice.number or "",
                    office_id=office_id,
                    stripe_invoice_id=invoice.stripe_invoice_id or "",
                )
            )
        if not invoice.stripe_invoice_id:
            pending_since = invoice.finalized_at or now
            if not copies and now - pending_since > PUSH_OVERDUE:
                found.append(
                    Mismatch(
                        field="not_pushed",
                        local=f"{invoice.status}, push {invoice.push_state}",
                        stripe="absent",
                        invoice_id=invoice.pk,
                        number=invoice.number or "",
                        office_id=office_id,
                    )
                )
            elif copies:
                found.extend(_compare(invoice, copies[0], customer_id))
            continue
        remote = by_id.get(invoice.stripe_invoice_id)
        if remote is None:
            remote = _fetch(gw, report, invoice.stripe_invoice_id)
            if remote is None:
                found.append(
                    Mismatch(
                        field="missing_in_stripe",
                        local=invoice.status,
                        stripe="absent",
                        invoice_id=invoice.pk,
                        number=invoice.number or "",
                        office_id=office_id,
                        stripe_invoice_id=invoice.stripe_invoice_id,
                    )
                )
                continue
        found.extend(_compare(invoice, remote, customer_id))

    # Stripe invoices of this customer that point at no invoice of ours.
    local_ids = {str(inv.pk) for inv in invoices}
    unknown = [r for r in remote_invoices if _local_id(r) not in local_ids]
    claimed = {_local_id(r) for r in unknown if _local_id(r).isdigit()}
    existing = {
        str(pk)
        for pk in Invoice.objects.filter(pk__in=[int(x) for x in claimed], office_id=office_id).values_list(
            "pk", flat=True
        )
    }
    for remote in unknown:
        if _local_id(remote) in existing:
            continue  # one of ours outside the window: not checked this time
        found.append(
            Mismatch(
                field="unknown_in_stripe",
                local="absent",
                stripe=f"{_get(remote, 'status')} {_get(remote, 'total')}",
                office_id=office_id,
                stripe_invoice_id=_ref(remote),
            )
        )
    return found


CUSTOMER_FIELDS = ("customer_missing", "customer_office", "customer_name", "customer_email", "duplicate_customer")


def _customer_mismatches(
    gw: Gateway, report: ReconcileReport, *, now: datetime, office_ids: list[int] | None
) -> list[Mismatch]:
    """Each office's Stripe customer against the office (spec §8: one customer per office,
    carrying its business name and billing email, nothing else)."""
    offices = Office.objects.exclude(payment_provider_customer_id__isnull=True).exclude(payment_provider_customer_id="")
    if office_ids:
        offices = offices.filter(pk__in=office_ids)
    by_customer = {str(office.payment_provider_customer_id): office for office in offices.order_by("pk")}
    if not by_customer:
        return []
    wanted = {str(office.pk) for office in by_customer.values()}
    seen: dict[str, Any] = {}
    claims: dict[str, list[str]] = defaultdict(list)
    for customer in gw.customers_list():
        report.customers_seen += 1
        customer_id = _ref(customer)
        claimed = str(_get(_get(customer, "metadata"), "office_id") or "")
        if claimed in wanted:
            claims[claimed].append(customer_id)
        if customer_id in by_customer:
            seen[customer_id] = customer

    found: list[Mismatch] = []

    def mismatch(office: Office, name: str, local: Any, stripe: Any, customer_id: str) -> Mismatch:
        return Mismatch(
            field=name, local=str(local), stripe=str(stripe), office_id=office.pk, stripe_invoice_id=customer_id
        )

    for customer_id, office in by_customer.items():
        customer = seen.get(customer_id)
        if customer is None:
            found.append(mismatch(office, "customer_missing", customer_id, "absent or deleted", customer_id))
            continue
        claimed = str(_get(_get(customer, "metadata"), "office_id") or "")
        if claimed != str(office.pk):
            found.append(mismatch(office, "customer_office", office.pk, claimed or "none", customer_id))
        syncing = (
            office.customer_identity_changed_at is not None and now - office.customer_identity_changed_at < PUSH_OVERDUE
        )
        if not syncing:
            if str(_get(customer, "name") or "") != office.name:
                found.append(mismatch(office, "customer_name", office.name, _get(customer, "name") or "", customer_id))
            if str(_get(customer, "email") or "").lower() != office.billing_email.lower():
                found.append(
                    mismatch(office, "customer_email", office.billing_email, _get(customer, "email") or "", customer_id)
                )
        copies = claims.get(str(office.pk), [])
        if len(copies) > 1:
            found.append(mismatch(office, "duplicate_customer", customer_id, ",".join(sorted(copies)), customer_id))
    return found


def _fetch(gw: Gateway, report: ReconcileReport, stripe_invoice_id: str) -> Any:
    report.fetched_by_id += 1
    try:
        return gw.invoice_retrieve(stripe_invoice_id=stripe_invoice_id)
    except Permanent:
        return None
