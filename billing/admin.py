"""Operator console for billing (spec §1, §3, §6, §7; house style 9).

Everything the billing engine owns is read-only here: invoices (drafts included), their
lines, plan changes, invoice numbers and billing runs; none of them can be deleted.
Operator writes go through the services — plans (`plan_create`/`plan_update`), voids
(`invoice_void`), one-off invoices (`invoice_create_one_off`) and billing runs
(`billing.engine.run.billing_run`) — so the same rules, PHI guard and audit entries apply as
through the API, and a refusal comes back as a message or a form error, not a 500."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from unfold.admin import ModelAdmin, TabularInline
from unfold.decorators import action as unfold_action

from audit.export import csv_cell
from audit.models import AuditEvent
from audit.services import audit_record
from billing.console_office import ConfirmForm, OfficeActionsMixin, OneOffLineFormSet, one_off_lines
from billing.dates import local_day, local_minute, local_period, local_today
from billing.engine.cycles import local_midnight, zone
from billing.engine.run import PREVIEW_HORIZON, InvoiceSummary, billing_run, billing_run_preview, next_boundary
from billing.models import (
    FROZEN_PLAN_FIELDS,
    BillingRun,
    BillingRunChunk,
    BillingRunError,
    Invoice,
    InvoiceNumberSequence,
    InvoiceStatus,
    LineItem,
    Plan,
    PlanChange,
    PushState,
    StripeEvent,
    WebhookRejectionWindow,
)
from billing.money import cents_to_major, format_cents, major_to_cents
from billing.selectors import office_currency
from billing.services import invoice_create_one_off, invoice_mark_uncollectible, invoice_void, plan_create, plan_update
from billing.stripe.events import PAYMENT_METHODS, invoice_mark_paid_out_of_band
from billing.stripe.gateway import GatewayError
from billing.stripe.push import invoice_push, stripe_items
from config.admin_mixins import ConsoleFormMixin, ReadOnlyAdminMixin
from config.console import arrange_third_party_pages
from config.errors import ApplicationError
from offices.admin import AuditedReadsMixin, OfficeAdmin, ServiceAdminMixin, ServiceModelForm
from offices.models import Office

# --- Money, formatted at the edge ------------------------------------------------------

# Currencies whose minor unit is the unit itself (Stripe's zero-decimal list).


# --- Plans -----------------------------------------------------------------------------

PLAN_FIELDS = ("code", "name", "currency", "per_patient_cents", "minimum_cents", "setup_fee_cents", "trial_days")
PLAN_EDITABLE = (*PLAN_FIELDS, "is_active")


class PlanForm(ServiceModelForm):
    class Meta:
        model = Plan
        fields = PLAN_EDITABLE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("per_patient_cents", "minimum_cents", "setup_fee_cents"):
            if name in self.fields:
                self.fields[name].validators.append(MinValueValidator(0))
                self.fields[name].help_text = "Integer cents (minor units), e.g. 450 for $4.50."

    def clean_currency(self) -> str:
        return str(self.cleaned_data["currency"]).strip().lower()


@admin.register(Plan)
class PlanAdmin(ServiceAdminMixin, ModelAdmin):
    form = PlanForm
    list_display = (
        "code",
        "name",
        "currency",
        "per_patient",
        "minimum",
        "setup_fee",
        "trial_days",
        "is_active",
        "locked",
    )
    list_filter = ("is_active", "locked", "currency")
    search_fields = ("code", "name")
    fields = (*PLAN_EDITABLE, "locked", "created_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is not None and obj.locked:  # spec §3: only name and is_active may change
            return (*FROZEN_PLAN_FIELDS, "locked", "created_at")
        return ("locked", "created_at")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # retire a plan with is_active; plans are referenced by history

    @admin.display(description="Per patient", ordering="per_patient_cents")
    def per_patient(self, obj: Plan) -> str:
        return format_cents(obj.per_patient_cents, obj.currency)

    @admin.display(description="Minimum", ordering="minimum_cents")
    def minimum(self, obj: Plan) -> str:
        return format_cents(obj.minimum_cents, obj.currency)

    @admin.display(description="Setup fee", ordering="setup_fee_cents")
    def setup_fee(self, obj: Plan) -> str:
        return format_cents(obj.setup_fee_cents, obj.currency)

    def service_save(self, request: HttpRequest, form: ServiceModelForm, obj: Any) -> models.Model:
        if obj is None:
            data = {name: form.cleaned_data[name] for name in PLAN_EDITABLE}
            return plan_create(actor=request.user, **data)
        changes = form.changed_model_fields(PLAN_EDITABLE)
        if not changes:
            return obj
        return plan_update(plan=obj, actor=request.user, **changes)


@admin.register(PlanChange)
class PlanChangeAdmin(ReadOnlyAdminMixin, ModelAdmin):
    list_display = ("id", "office", "plan", "kind", "requested_at", "requested_by")
    list_filter = ("kind", "plan")
    list_select_related = ("office", "plan", "requested_by")
    search_fields = ("office__name", "plan__code")
    date_hierarchy = "requested_at"


# --- Invoices and lines ----------------------------------------------------------------


class LineItemInline(ReadOnlyAdminMixin, TabularInline):
    model = LineItem
    fields = ("kind", "description", "patient_ref", "quantity", "unit", "amount")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False

    @admin.display(description="Unit")
    def unit(self, obj: LineItem) -> str:
        return format_cents(obj.unit_amount_cents, obj.invoice.currency)

    @admin.display(description="Amount")
    def amount(self, obj: LineItem) -> str:
        return format_cents(obj.amount_cents, obj.invoice.currency)

    def get_queryset(self, request: HttpRequest) -> QuerySet[LineItem]:
        return super().get_queryset(request).select_related("invoice")


INVOICE_FIELDS = (
    "number",
    "office",
    "kind",
    "status",
    "plan",
    "is_setup_fee",
    "period_start",
    "period_end",
    "currency",
    "subtotal",
    "total",
    "line_count",
    "finalized_at",
    "due_at",
    "paid_at",
    "voided_at",
    "marked_uncollectible_at",
    "past_due_at",
    "payment_note",
    "stripe_invoice_id",
    "push_state",
    "push_attempts",
    "push_error",
    "created_at",
    "updated_at",
)


INVOICE_CSV_HEADER = [
    "number", "office_id", "office", "kind", "status", "currency", "total_cents", "total",
    "period_start_local", "period_end_local", "finalized_at_utc", "due_at_utc", "paid_at_utc",
    "voided_at_utc", "stripe_invoice_id", "push_state",
]  # fmt: skip


def invoice_csv_rows(invoices: list[Invoice]) -> list[list[Any]]:
    def utc(value: datetime | None) -> str:
        return value.isoformat() if value else ""

    rows: list[list[Any]] = [INVOICE_CSV_HEADER]
    for inv in invoices:
        tz = inv.office.timezone
        rows.append(
            [
                inv.number or f"draft #{inv.pk}",
                inv.office_id,
                inv.office.name,
                inv.kind,
                inv.status,
                inv.currency,
                inv.total_cents,
                cents_to_major(inv.total_cents, inv.currency),
                local_day(inv.period_start, tz) if inv.period_start else "",
                local_day(inv.period_end, tz) if inv.period_end else "",
                utc(inv.finalized_at),
                utc(inv.due_at),
                utc(inv.paid_at),
                utc(inv.voided_at),
                inv.stripe_invoice_id or "",
                inv.push_state,
            ]
        )
    return rows


def audit_entries_html(events: Any, tz_name: str) -> str:
    """Audit entries as a list people read: local time, what happened, by whom, why."""
    rows = format_html_join(
        "",
        '<li class="py-1"><span class="font-semibold">{}</span> — {}{}{}</li>',
        (
            (
                local_minute(event.ts, tz_name),
                event.action.replace("_", " ").replace(".", ": "),
                f" by {event.actor_label or event.actor_type}",
                f" ({event.reason})" if event.reason else "",
            )
            for event in events
        ),
    )
    return format_html('<ul class="text-sm">{}</ul>', rows) if rows else "Nothing recorded yet."


def csv_response(filename: str, rows: list[list[Any]]) -> HttpResponse:
    """A CSV download; every cell formula-escaped as the audit export does (CSV injection)."""
    import csv

    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    writer = csv.writer(response)
    for row in rows:
        writer.writerow([csv_cell(value) for value in row])
    return response


class VoidForm(ConsoleFormMixin, forms.Form):
    """Why the invoices are voided, in the operator's words (PHI-guarded by `invoice_void`)."""

    reason = forms.CharField(
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Required; kept in the audit trail. No patient information.",
    )

    def clean_reason(self) -> str:
        reason = str(self.cleaned_data["reason"]).strip()
        if not reason:
            raise forms.ValidationError("Say why these invoices are voided.")
        return reason


class WriteOffForm(ConsoleFormMixin, forms.Form):
    """Why the invoices are written off (PHI-guarded by `invoice_mark_uncollectible`)."""

    reason = forms.CharField(
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Required; kept in the audit trail. No patient information.",
        error_messages={"required": "Say why these invoices are written off."},
    )


class OutOfBandPaymentForm(ConsoleFormMixin, forms.Form):
    """A cheque, wire or other payment received outside Stripe, as the operator reads it:
    the amount in major units of the invoice's currency, the date in the office's zone."""

    method = forms.ChoiceField(choices=list(PAYMENT_METHODS.items()))
    reference = forms.CharField(
        max_length=80,
        help_text="Cheque number, wire reference… Required: it is how the payment is found again.",
        error_messages={"required": "Give the payment's reference (the cheque number, the wire reference)."},
    )
    received_on = forms.DateField(help_text="The date the payment was received (YYYY-MM-DD).")
    amount = forms.DecimalField(min_value=0, max_digits=14, decimal_places=2)
    note = forms.CharField(max_length=120, required=False)

    def __init__(self, *args: Any, invoice: Invoice, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.invoice = invoice
        self.fields["amount"].label = f"Amount ({invoice.currency.upper()})"
        if not self.is_bound:
            self.initial["amount"] = cents_to_major(invoice.total_cents, invoice.currency)
            self.initial["received_on"] = local_today(invoice.office.timezone)

    def clean_amount(self) -> Decimal:
        amount: Decimal = self.cleaned_data["amount"]
        try:
            self.cleaned_data["amount_cents"] = major_to_cents(amount, self.invoice.currency)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return amount

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        cleaned.setdefault("amount_cents", None)
        return cleaned


@admin.register(Invoice)
class InvoiceAdmin(AuditedReadsMixin, ReadOnlyAdminMixin, ModelAdmin):
    """Read-only: finalized content is frozen (spec §6) and drafts belong to the engine."""

    audit_read_action = "invoice"

    list_display = ("display_number", "office", "kind", "status", "period", "finalized", "total", "push_state")
    list_display_links = ("display_number",)
    list_filter = ("status", "kind", "push_state")
    list_select_related = ("office",)
    search_fields = ("number", "office__name")
    date_hierarchy = "period_start"
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "number",
                    "office",
                    "kind",
                    "status",
                    "plan",
                    "local_period",
                    "subtotal",
                    "total",
                    "local_due",
                    "payment_note",
                    "document",
                )
            },
        ),
        ("As Stripe sees it", {"fields": ("stripe_lines",)}),
        ("What happened to it", {"fields": ("timeline",)}),
        ("Stripe", {"fields": ("stripe_invoice_id", "push_state", "push_attempts", "push_error")}),
        ("Stored values (UTC)", {"classes": ("collapse",), "fields": tuple(f for f in INVOICE_FIELDS if f not in (
            "number", "office", "kind", "status", "plan", "subtotal", "total", "payment_note",
            "stripe_invoice_id", "push_state", "push_attempts", "push_error"))}),
    )  # fmt: skip
    readonly_fields = (*INVOICE_FIELDS, "local_period", "local_due", "document", "stripe_lines", "timeline")
    inlines = (LineItemInline,)
    actions = ("void_invoices", "mark_paid_out_of_band", "mark_uncollectible", "push_to_stripe", "export_csv")
    # The same actions as buttons on an invoice's page, shown when they apply to it.
    actions_detail = ("void_this", "record_payment_this", "write_off_this", "push_this")

    def get_urls(self) -> list[Any]:
        from django.urls import path

        return [
            path(
                "aging.csv",
                self.admin_site.admin_view(self.aging_csv_view),
                name="billing_invoice_aging_csv",
            ),
            *super().get_urls(),
        ]

    @admin.action(description="Export selected invoices as CSV", permissions=("view",))
    def export_csv(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> HttpResponse:
        """The selected invoices as CSV (amounts in cents and in major units, local dates),
        formula-escaped; the export is audited with its count."""
        rows = list(queryset.select_related("office").order_by("pk"))
        audit_record(action="invoice.exported", actor=request.user, data={"count": len(rows), "format": "csv"})
        return csv_response("invoices.csv", invoice_csv_rows(rows))

    def aging_csv_view(self, request: HttpRequest) -> HttpResponse:
        """Receivables by age as CSV: one row per office and bucket (open invoices, now)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        from billing.overview import overview

        report = overview()
        rows: list[list[Any]] = [["bucket", "currency", "office_id", "office", "amount_cents", "amount"]]
        for bucket in report.aging:
            for office_id, name, cents in bucket.offices:
                rows.append(
                    [bucket.label, bucket.currency, office_id, name, cents, cents_to_major(cents, bucket.currency)]
                )
        audit_record(action="aging.exported", actor=request.user, data={"rows": len(rows) - 1, "format": "csv"})
        return csv_response("aging.csv", rows)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Invoice]:
        return super().get_queryset(request).annotate(_line_count=Count("lines"))

    @admin.display(description="Number", ordering="number")
    def display_number(self, obj: Invoice) -> str:
        return str(obj)  # the number, or "draft #id" before finalization

    @admin.display(description="Billing period (office's dates)")
    def local_period(self, obj: Invoice) -> str:
        return self.period(obj)

    @admin.display(description="Due (office's time)")
    def local_due(self, obj: Invoice) -> str:
        return local_minute(obj.due_at, obj.office.timezone) if obj.due_at else "—"

    @admin.display(description="Document")
    def document(self, obj: Invoice) -> str:
        if obj.status == InvoiceStatus.DRAFT:
            return "A draft has no document yet."
        return format_html('<a href="/api/v1/invoices/{}/pdf/" class="text-primary-600">PDF</a>', obj.pk)

    @admin.display(description="Items")
    def stripe_lines(self, obj: Invoice) -> str:
        """The lines grouped as the office and Stripe see them (patients per kind and unit
        price); each patient's line is in the list below, by billing reference."""
        rows = format_html_join(
            "",
            '<tr><td class="py-1 pr-4">{}</td><td class="text-right pr-4">{}</td>'
            '<td class="text-right pr-4">{}</td><td class="text-right">{}</td></tr>',
            (
                (
                    item.description,
                    item.quantity,
                    format_cents(item.unit_amount_cents, obj.currency),
                    format_cents(item.unit_amount_cents * item.quantity, obj.currency),
                )
                for item in stripe_items(obj)
            ),
        )
        return format_html(
            '<table class="text-sm"><thead><tr><th class="text-left pr-4">Description</th>'
            '<th class="text-right pr-4">Quantity</th><th class="text-right pr-4">Unit</th>'
            '<th class="text-right">Amount</th></tr></thead><tbody>{}</tbody></table>',
            rows or format_html('<tr><td colspan="4">No lines.</td></tr>'),
        )

    @admin.display(description="Timeline")
    def timeline(self, obj: Invoice) -> str:
        """From the audit trail: every entry about this invoice, oldest first, in the
        office's time (created, finalized, pushed, webhook events, payments, void)."""
        events = (
            AuditEvent.objects.filter(target_type=Invoice._meta.label, target_id=str(obj.pk))
            .exclude(action__endswith="viewed")  # reads of the invoice are in the audit trail, not its story
            .order_by("seq")
        )
        return audit_entries_html(events[:200], obj.office.timezone)

    @admin.display(description="Period (office's dates)", ordering="period_start")
    def period(self, obj: Invoice) -> str:
        if obj.period_start is None or obj.period_end is None:
            return "—"
        return local_period(obj.period_start, obj.period_end, obj.office.timezone)

    @admin.display(description="Finalized (office's time)", ordering="finalized_at")
    def finalized(self, obj: Invoice) -> str:
        return local_minute(obj.finalized_at, obj.office.timezone) if obj.finalized_at else "—"

    @admin.display(description="Subtotal", ordering="subtotal_cents")
    def subtotal(self, obj: Invoice) -> str:
        return format_cents(obj.subtotal_cents, obj.currency)

    @admin.display(description="Total", ordering="total_cents")
    def total(self, obj: Invoice) -> str:
        return format_cents(obj.total_cents, obj.currency)

    @admin.display(description="Lines")
    def line_count(self, obj: Any) -> int:
        return int(getattr(obj, "_line_count", None) or obj.lines.count())

    def has_void_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("billing.change_invoice"))

    @admin.action(description="Void selected invoices…", permissions=("void",))
    def void_invoices(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> HttpResponse | None:
        """Void the selected open invoices through `invoice_void`, after a confirmation page
        that asks for the reason (free text: PHI-guarded, kept in the audit entry); Stripe
        follows after commit (spec §7, §8)."""
        invoices = list(queryset.select_related("office").order_by("pk"))
        form = VoidForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            reason = form.cleaned_data["reason"]
            self._each(
                request, invoices, lambda inv: invoice_void(invoice=inv, actor=request.user, reason=reason), "Voided"
            )
            return None
        return self._confirm_page(
            request,
            invoices,
            form=form,
            title=f"Void {len(invoices)} invoice(s)",
            intro=(
                "These invoices will be voided. Their content stays as it is; a voided invoice is never "
                "collected, and Stripe is told to void its copy. A correction is a new invoice."
            ),
            submit=f"Void {len(invoices)} invoice(s)",
            action_name="void_invoices",
        )

    @admin.action(description="Record payment made outside Stripe (cheque, wire)", permissions=("void",))
    def mark_paid_out_of_band(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> HttpResponse | None:
        """Record a payment made outside Stripe — method, reference, date received and
        amount — for one invoice (spec §8). Runs outside a transaction, as Stripe calls must."""
        invoices = list(queryset.select_related("office")[:2])
        if len(invoices) != 1:
            self.message_user(request, "Select exactly one invoice to record a payment for.", messages.ERROR)
            return None
        invoice = invoices[0]
        form = OutOfBandPaymentForm(request.POST if "apply" in request.POST else None, invoice=invoice)
        if form.is_bound and form.is_valid():
            data = form.cleaned_data
            try:
                paid = invoice_mark_paid_out_of_band(
                    invoice=invoice,
                    actor=request.user,
                    method=data["method"],
                    reference=data["reference"],
                    received_on=data["received_on"],
                    amount_cents=data["amount_cents"],
                    note=data["note"],
                )
            except (ApplicationError, GatewayError) as exc:
                field = (getattr(exc, "extra", None) or {}).get("field")
                form.add_error(field if field in form.fields else None, getattr(exc, "message", str(exc)))
            else:
                self.message_user(request, f"{paid}: recorded as paid ({paid.payment_note}).", messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:billing_invoice_change", args=[paid.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Record a payment outside Stripe for {invoice}",
            "opts": self.model._meta,
            "invoice": invoice,
            "total": format_cents(invoice.total_cents, invoice.currency),
            "form": form,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/billing/out_of_band_payment.html", context)

    @admin.action(description="Write off selected invoices (uncollectible)…", permissions=("void",))
    def mark_uncollectible(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> HttpResponse | None:
        """Write off the selected open invoices through `invoice_mark_uncollectible`, after a
        confirmation page that asks for the reason; Stripe follows after commit (spec §12)."""
        invoices = list(queryset.select_related("office").order_by("pk"))
        form = WriteOffForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            reason = form.cleaned_data["reason"]
            self._each(
                request,
                invoices,
                lambda inv: invoice_mark_uncollectible(invoice=inv, actor=request.user, reason=reason),
                "Wrote off",
            )
            return None
        return self._confirm_page(
            request,
            invoices,
            form=form,
            title=f"Write off {len(invoices)} invoice(s)",
            intro=(
                "These invoices will be marked uncollectible: nothing more is collected for them, they no "
                "longer count as past due, and Stripe is told to stop collecting. A payment that arrives "
                "later is still recorded."
            ),
            submit=f"Write off {len(invoices)} invoice(s)",
            action_name="mark_uncollectible",
        )

    def _each(self, request: HttpRequest, invoices: list[Invoice], call: Any, done_verb: str) -> None:
        """Apply a service to each invoice; each refusal is a warning, the successes one message."""
        done: list[str] = []
        for invoice in invoices:
            try:
                call(invoice)
            except ApplicationError as exc:
                self.message_user(request, exc.message, messages.WARNING)
            else:
                done.append(str(invoice))
        if done:
            self.message_user(request, f"{done_verb} {len(done)} invoice(s): {', '.join(done)}.", messages.SUCCESS)

    def _confirm_page(
        self,
        request: HttpRequest,
        invoices: list[Invoice],
        *,
        form: forms.Form,
        title: str,
        intro: str,
        submit: str,
        action_name: str,
    ) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "intro": intro,
            "opts": self.model._meta,
            "invoices": [
                {
                    "pk": invoice.pk,
                    "label": str(invoice),
                    "office": invoice.office.name,
                    "status": invoice.get_status_display(),
                    "total": format_cents(invoice.total_cents, invoice.currency),
                }
                for invoice in invoices
            ],
            "form": form,
            "submit_label": submit,
            "action_name": action_name,
            "cancel_url": reverse("admin:billing_invoice_changelist"),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/billing/invoices_confirm.html", context)

    @admin.action(description="Push pending invoices to Stripe now…", permissions=("void",))
    def push_to_stripe(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> HttpResponse | None:
        """Push the selected pending or failed invoices to Stripe now, after a confirmation
        page listing them (spec §8)."""
        pending = list(
            queryset.filter(push_state__in=[PushState.PENDING, PushState.FAILED])
            .select_related("office")
            .order_by("pk")
        )
        if not pending:
            self.message_user(request, "No selected invoice is waiting for a Stripe push.", messages.INFO)
            return None
        form = ConfirmForm(request.POST if "apply" in request.POST else None)
        if not (form.is_bound and form.is_valid()):
            return self._confirm_page(
                request,
                pending,
                form=form,
                title=f"Push {len(pending)} invoice(s) to Stripe now",
                intro=(
                    "These invoices are waiting for Stripe (or Stripe refused them). They are sent now, "
                    "in this request; one already in flight elsewhere is left to that push. Sending twice "
                    "never creates a second Stripe invoice."
                ),
                submit=f"Push {len(pending)} invoice(s) now",
                action_name="push_to_stripe",
            )
        audit_record(
            action="invoice.push_requested",
            actor=request.user,
            target_type="billing.Invoice",
            data={"invoice_ids": [invoice.pk for invoice in pending]},
        )
        for invoice in pending:
            try:
                pushed = invoice_push(invoice_id=invoice.pk)
            except GatewayError as exc:
                self.message_user(request, f"{invoice}: Stripe refused or is unavailable ({exc}).", messages.WARNING)
            else:
                if pushed.push_state == PushState.PUSHED:
                    self.message_user(request, f"{invoice}: pushed.", messages.SUCCESS)
                else:
                    reason = pushed.push_error or "another push or void of it is in progress"
                    self.message_user(request, f"{invoice}: not pushed ({reason}).", messages.WARNING)
        return None

    # -- the buttons of one invoice's page (unfold detail actions) ---------------------------
    def _this(self, request: HttpRequest, object_id: Any) -> Invoice | None:
        cache: dict[str, Invoice | None] = request.__dict__.setdefault("_console_invoices", {})
        if str(object_id) not in cache:
            cache[str(object_id)] = Invoice.objects.filter(pk=object_id).first()
        return cache[str(object_id)]

    def has_open_invoice_permission(self, request: HttpRequest, object_id: Any = None) -> bool:
        invoice = self._this(request, object_id)
        return self.has_void_permission(request) and invoice is not None and invoice.status == InvoiceStatus.OPEN

    def has_voidable_invoice_permission(self, request: HttpRequest, object_id: Any = None) -> bool:
        invoice = self._this(request, object_id)
        return (
            self.has_void_permission(request)
            and invoice is not None
            and invoice.status in (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE)
        )

    def has_pushable_invoice_permission(self, request: HttpRequest, object_id: Any = None) -> bool:
        invoice = self._this(request, object_id)
        return (
            self.has_void_permission(request)
            and invoice is not None
            and invoice.status != InvoiceStatus.DRAFT
            and invoice.push_state in (PushState.PENDING, PushState.FAILED)
        )

    def _on_this(self, request: HttpRequest, object_id: Any, run: Any) -> HttpResponse:
        response = run(request, Invoice.objects.filter(pk=object_id))
        return response or HttpResponseRedirect(reverse("admin:billing_invoice_change", args=[object_id]))

    @unfold_action(description="Void…", url_path="void", permissions=["voidable_invoice"], icon="block")
    def void_this(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Void this invoice, with a reason (spec §6, §8)."""
        return self._on_this(request, object_id, self.void_invoices)

    @unfold_action(
        description="Record payment…", url_path="record-payment", permissions=["voidable_invoice"], icon="payments"
    )
    def record_payment_this(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Record a cheque or wire for this invoice, with its reference (spec §8)."""
        return self._on_this(request, object_id, self.mark_paid_out_of_band)

    @unfold_action(description="Write off…", url_path="write-off", permissions=["open_invoice"], icon="money_off")
    def write_off_this(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Write this invoice off (uncollectible), with a reason (spec §12)."""
        return self._on_this(request, object_id, self.mark_uncollectible)

    @unfold_action(description="Push to Stripe now…", url_path="push", permissions=["pushable_invoice"], icon="send")
    def push_this(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Push this invoice to Stripe now, after a confirmation (spec §8)."""
        return self._on_this(request, object_id, self.push_to_stripe)


@admin.register(WebhookRejectionWindow)
class WebhookRejectionWindowAdmin(ReadOnlyAdminMixin, ModelAdmin):
    """Rejected webhook deliveries counted per source, reason and minute."""

    list_display = ("window_start", "source_ip", "reason", "count", "last_at", "summarized_at")
    list_filter = ("reason",)
    search_fields = ("source_ip", "reason")
    date_hierarchy = "window_start"


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdminMixin, ModelAdmin):
    """Verified webhook events, once per event id (no bodies, no secrets)."""

    list_display = ("event_id", "type", "status", "office", "deliveries", "attempts", "mirrored", "stripe_created")
    list_filter = ("status", "type", "mirrored")
    search_fields = ("event_id", "object_id")
    date_hierarchy = "stripe_created"


@admin.register(LineItem)
class LineItemAdmin(AuditedReadsMixin, ReadOnlyAdminMixin, ModelAdmin):
    audit_read_action = "invoice_line"
    audit_office_path = "invoice__office_id"

    list_display = ("id", "invoice", "kind", "description", "patient_ref", "quantity", "unit", "amount")
    list_filter = ("kind",)
    list_select_related = ("invoice",)
    search_fields = ("invoice__number", "patient_ref")
    fields = ("invoice", "kind", "description", "patient_ref", "quantity", "unit", "amount", "created_at")
    readonly_fields = fields

    @admin.display(description="Unit", ordering="unit_amount_cents")
    def unit(self, obj: LineItem) -> str:
        return format_cents(obj.unit_amount_cents, obj.invoice.currency)

    @admin.display(description="Amount", ordering="amount_cents")
    def amount(self, obj: LineItem) -> str:
        return format_cents(obj.amount_cents, obj.invoice.currency)


@admin.register(InvoiceNumberSequence)
class InvoiceNumberSequenceAdmin(ReadOnlyAdminMixin, ModelAdmin):
    list_display = ("year", "last_value")
    search_fields = ("year",)
    list_filter = ("year",)


# --- Billing runs ----------------------------------------------------------------------


class BillingRunErrorInline(ReadOnlyAdminMixin, TabularInline):
    model = BillingRunError
    fields = ("office", "message", "created_at")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False


class BillingRunChunkInline(ReadOnlyAdminMixin, TabularInline):
    model = BillingRunChunk
    fields = ("seq", "office_ids", "deliveries", "done_at")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False


RUN_FIGURES = ("offices_due", "offices_done", "invoices_finalized", "invoices_opened", "lines_created", "error_count")


def run_amount(run: BillingRun) -> str:
    """A run's finalized amount in money. The run keeps one sum; it is shown in the currency
    only where every plan bills in one currency, never converted or mixed silently."""
    currencies = sorted(set(Plan.objects.values_list("currency", flat=True)))
    if len(currencies) <= 1:
        return format_cents(
            run.amount_finalized_cents, currencies[0] if currencies else settings.BILLING_DEFAULT_CURRENCY
        )
    return "several currencies: see the invoices of the run's offices"


@admin.register(BillingRun)
class BillingRunAdmin(ReadOnlyAdminMixin, ModelAdmin):
    """What each billing run was asked to do and what it did, in people's terms (spec §6)."""

    list_display = (
        "id",
        "as_of_local",
        "trigger",
        "status",
        "offices_due",
        "offices_done",
        "invoices_finalized",
        "amount",
        "error_count",
        "duration",
    )
    list_display_links = ("id", "as_of_local")
    list_filter = ("status", "trigger")
    search_fields = ("trigger",)
    date_hierarchy = "as_of"
    fieldsets = (
        (None, {"fields": ("as_of_local", "trigger", "offices", "status", "started", "finished", "duration")}),
        ("Figures", {"fields": ("offices_due", "offices_done", "invoices_finalized", "invoices_opened",
                                "lines_created", "amount", "error_count", "chunks")}),
        ("Sent to Stripe", {"fields": ("push_progress",)}),
    )  # fmt: skip
    readonly_fields = (
        "as_of_local",
        "trigger",
        "offices",
        "status",
        "started",
        "finished",
        "duration",
        *RUN_FIGURES,
        "amount",
        "chunks",
        "push_progress",
    )
    inlines = (BillingRunErrorInline, BillingRunChunkInline)

    @admin.display(description="Pushes of its invoices")
    def push_progress(self, obj: BillingRun) -> str:
        """Where the paced Stripe pushes of the run's invoices stand (billing/stripe/selectors.py)."""
        from billing.stripe.selectors import run_push_progress

        p = run_push_progress(obj)
        if not p["total"]:
            return "No invoice of this run is meant for Stripe."
        text = f"{p['pushed']} of {p['total']} sent, {p['pending']} waiting, {p['failed']} refused"
        return text + (f"; {p['rate']:.2f} a second over the last minute" if p["pending"] else "")

    @admin.display(description="As of", ordering="as_of")
    def as_of_local(self, obj: BillingRun) -> str:
        return _when(obj.as_of)

    @admin.display(description="Started")
    def started(self, obj: BillingRun) -> str:
        return _when(obj.started_at)

    @admin.display(description="Finished")
    def finished(self, obj: BillingRun) -> str:
        return _when(obj.finished_at) if obj.finished_at else "still running"

    @admin.display(description="Took")
    def duration(self, obj: BillingRun) -> str:
        if obj.finished_at is None:
            return "—"
        seconds = max(0.0, (obj.finished_at - obj.started_at).total_seconds())
        return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"

    @admin.display(description="Amount finalized")
    def amount(self, obj: BillingRun) -> str:
        return run_amount(obj)

    @admin.display(description="Offices asked for")
    def offices(self, obj: BillingRun) -> str:
        if not obj.office_filter:
            return "every office that was due"
        names = dict(Office.objects.filter(pk__in=obj.office_filter).values_list("pk", "name"))
        return ", ".join(names.get(pk, f"office #{pk} (gone)") for pk in obj.office_filter)

    @admin.display(description="Work units done")
    def chunks(self, obj: BillingRun) -> str:
        return f"{obj.chunks_done} of {obj.chunks_total}"


@admin.register(BillingRunError)
class BillingRunErrorAdmin(ReadOnlyAdminMixin, ModelAdmin):
    list_display = ("id", "run", "office", "message", "created_at")
    list_select_related = ("run", "office")
    list_filter = ("office",)
    search_fields = ("office__name", "message")


@admin.register(BillingRunChunk)
class BillingRunChunkAdmin(ReadOnlyAdminMixin, ModelAdmin):
    list_display = ("id", "run", "seq", "deliveries", "done_at")
    list_select_related = ("run",)
    list_filter = (("done_at", admin.EmptyFieldListFilter),)


# --- Billing actions on offices --------------------------------------------------------


# Labels of a run's figures as the preview shows them (amounts in money, below).
PREVIEW_FIGURES = (
    ("offices_due", "Offices with a boundary to process"),
    ("offices_done", "Offices processed"),
    ("invoices_finalized", "Invoices finalized"),
    ("invoices_opened", "Billing periods opened"),
    ("lines_created", "Invoice lines added"),
    ("error_count", "Offices that failed"),
)


def _money_by_currency(rows: list[InvoiceSummary]) -> str:
    """The total of these invoices in major units, one figure per currency ("—" if none)."""
    totals: dict[str, int] = {}
    for row in rows:
        totals[row.currency] = totals.get(row.currency, 0) + row.total_cents
    return ", ".join(format_cents(cents, currency) for currency, cents in sorted(totals.items())) or "—"


def _invoice_rows(rows: list[InvoiceSummary]) -> list[dict[str, Any]]:
    return [
        {
            "office": row.office,
            "kind": row.kind_label,
            "status": InvoiceStatus(row.status).label,
            "period": (
                local_period(row.period_start, row.period_end, row.timezone)  # the office's dates
                if row.period_start is not None and row.period_end is not None
                else "—"
            ),
            "lines": row.lines,
            "total": format_cents(row.total_cents, row.currency),
        }
        for row in sorted(rows, key=lambda r: (r.office, r.invoice_id))
    ]


def _readable_instant(instant: datetime, tz_name: str) -> str:
    return f"{local_minute(instant, tz_name)} ({tz_name})"


def end_of_local_day(day: date, tz_name: str) -> datetime:
    """The end of `day` in the zone: its next local midnight (the first instant of the next day)."""
    return local_midnight(day + timedelta(days=1), zone(tz_name))


class PreviewAsOfForm(ConsoleFormMixin, forms.Form):
    """The date a preview looks at, in the reporting zone: the preview runs as of the end of it."""

    preview_on = forms.DateField(label="Preview as of the end of")

    def __init__(self, *args: Any, tz_name: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tz_name = tz_name
        self.fields["preview_on"].widget.input_type = "date"  # the browser's own date picker, no script
        self.fields["preview_on"].help_text = (
            f"The preview bills up to the end of this date, that is the next midnight in {tz_name} "
            "(the reporting zone). Each office's cycles still end at midnight in its own zone."
        )
        if not self.is_bound:
            self.initial["preview_on"] = local_today(tz_name)

    def clean_preview_on(self) -> date:
        day: date = self.cleaned_data["preview_on"]
        limit = timezone.now() + PREVIEW_HORIZON
        if end_of_local_day(day, self.tz_name) > limit:
            raise forms.ValidationError(
                f"A preview looks at most {PREVIEW_HORIZON.days} days ahead: "
                f"choose {local_day(limit, self.tz_name)} or earlier."
            )
        self.cleaned_data["as_of"] = end_of_local_day(day, self.tz_name)
        return day


def billing_preview(*, office_ids: list[int], as_of: datetime | None = None) -> dict[str, Any]:
    """The admin's "Preview billing" action: the engine's dry run (`billing_run_preview`,
    the same one `run_billing_cycle --dry-run` uses), laid out for people: labelled figures,
    money in major units, periods as the office's dates, the as-of in the reporting zone.
    `as_of` may be in the future (a dry run may look ahead); None means now."""
    report = billing_run_preview(as_of=as_of, office_ids=office_ids, trigger="admin_preview")
    run = report.run
    tz_name = str(settings.BILLING_DEFAULT_TIMEZONE)
    finalized_by_office: dict[int, list[InvoiceSummary]] = {}
    for row in report.finalized:
        finalized_by_office.setdefault(row.office_id, []).append(row)
    return {
        "as_of": run.as_of,
        "as_of_text": _readable_instant(run.as_of, tz_name),
        "in_future": run.as_of > timezone.now(),
        "reporting_zone": tz_name,
        "figures": [
            *((label, getattr(run, name)) for name, label in PREVIEW_FIGURES[:5]),
            ("Amount finalized", _money_by_currency(report.finalized)),
            (PREVIEW_FIGURES[5][1], run.error_count),
        ],
        "per_office": [
            {
                "name": report.office_names.get(office_id, office_id),
                "finalized": stats.finalized,
                "opened": stats.opened,
                "lines": stats.lines,
                "amount": _money_by_currency(finalized_by_office.get(office_id, [])),
            }
            for office_id, stats in report.per_office.items()
        ],
        "finalized": _invoice_rows(report.finalized),
        # Drafts opened and then finalized at a later boundary are among the finalized ones.
        "opened": _invoice_rows([row for row in report.opened if row.status == InvoiceStatus.DRAFT]),
        "errors": [{"office": office, "message": message} for office, message in report.errors],
    }


_LINE_FIELD = re.compile(r"lines\[(\d+)\]\.(\w+)")


def _attach_service_error(exc: ApplicationError, forms_used: list[forms.Form]) -> bool:
    """Put a refusal next to the line it is about, when the service says which (True then)."""
    index: int | None = None
    field = "description"
    match = _LINE_FIELD.fullmatch(str(exc.extra.get("field", "")))
    if match:
        index, field = int(match.group(1)), match.group(2)
    elif isinstance(exc.extra.get("line"), int):
        index, field = exc.extra["line"], str(exc.extra.get("field") or "description")
    field = {"amount_cents": "amount"}.get(field, field)
    if index is not None and 0 <= index < len(forms_used) and field in forms_used[index].fields:
        forms_used[index].add_error(field, exc.message)
        return True
    return False


admin.site.unregister(Office)


@admin.register(Office)
class BillingOfficeAdmin(OfficeActionsMixin, OfficeAdmin):
    """The office admin with the operator's billing actions (spec §1, §6, §7)."""

    actions = ("preview_billing", "run_billing_now", "create_one_off_invoice")
    hub_fields = ("billing_summary", "invoices_panel", "recent_activity")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return (*super().get_readonly_fields(request, obj), *self.hub_fields)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        """The office as the hub (issue 9, item 2): its money, invoices and history first."""
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:
            return fieldsets
        return (
            ("Billing", {"fields": ("billing_summary",)}),
            ("Invoices", {"fields": ("invoices_panel",)}),
            ("Recent activity", {"fields": ("recent_activity",)}),
            *fieldsets,
        )

    @admin.display(description="Summary")
    def billing_summary(self, obj: Office) -> str:
        from billing.selectors import payment_status
        from patients.models import ActivationInterval

        status = payment_status(office=obj)
        tz = obj.timezone
        draft = Invoice.objects.filter(office=obj, status=InvoiceStatus.DRAFT, kind="cycle").order_by("-period_start")
        current = draft.first()
        active = (
            ActivationInterval.objects.filter(office=obj, deactivated_at__isnull=True)
            .values("patient_id")
            .distinct()
            .count()
        )
        rows = [
            ("Status", obj.get_subscription_status_display()),
            ("Plan", str(obj.current_plan) if obj.current_plan else "—"),
            ("From the next cycle", str(obj.pending_plan) if obj.pending_plan else "—"),
            ("Cancels at period end", "yes" if obj.cancel_at_period_end else "no"),
            (
                "Current period",
                local_period(current.period_start, current.period_end, tz)
                if current and current.period_start and current.period_end
                else "—",
            ),
            (
                "Running total of the current period",
                format_cents(current.total_cents, current.currency) if current else "—",
            ),
            ("Outstanding", format_cents(status.outstanding_cents, status.currency)),
            ("Past due", format_cents(status.past_due_cents, status.currency)),
            ("Past due since", local_minute(obj.past_due_since, tz) if obj.past_due_since else "—"),
            ("Last payment", local_minute(status.last_payment_at, tz) if status.last_payment_at else "—"),
            ("Active patients", str(active)),
            ("Collection", obj.get_collection_method_display()),
            ("Stripe customer", stripe_customer_link(obj.payment_provider_customer_id)),
            ("Time zone", tz),
        ]
        return format_html(
            '<table class="text-sm">{}</table>',
            format_html_join("", '<tr><th class="text-left pr-6 py-1 font-semibold">{}</th><td>{}</td></tr>', rows),
        )

    @admin.display(description="Latest invoices")
    def invoices_panel(self, obj: Office) -> str:
        invoices = list(Invoice.objects.filter(office=obj).order_by("-created_at", "-pk")[:24])
        if not invoices:
            return "No invoice yet."
        rows = format_html_join(
            "",
            '<tr><td class="py-1 pr-4"><a href="{}" class="text-primary-600">{}</a></td><td class="pr-4">{}</td>'
            '<td class="pr-4">{}</td><td class="pr-4">{}</td><td class="text-right pr-4">{}</td><td>{}</td></tr>',
            (
                (
                    reverse("admin:billing_invoice_change", args=[inv.pk]),
                    str(inv),
                    inv.get_kind_display(),
                    inv.get_status_display(),
                    local_period(inv.period_start, inv.period_end, obj.timezone)
                    if inv.period_start and inv.period_end
                    else "—",
                    format_cents(inv.total_cents, inv.currency),
                    format_html('<a href="/api/v1/invoices/{}/pdf/" class="text-primary-600">PDF</a>', inv.pk)
                    if inv.status != InvoiceStatus.DRAFT
                    else "",
                )
                for inv in invoices
            ),
        )
        more = reverse("admin:billing_invoice_changelist") + f"?office__id__exact={obj.pk}"
        return format_html(
            '<table class="text-sm"><thead><tr><th class="text-left pr-4">Invoice</th>'
            '<th class="text-left pr-4">Kind</th>'
            '<th class="text-left pr-4">Status</th><th class="text-left pr-4">Period</th>'
            '<th class="text-right pr-4">Total</th><th></th></tr></thead><tbody>{}</tbody></table>'
            '<p class="text-xs mt-2"><a href="{}" class="text-primary-600">All invoices of this office</a></p>',
            rows,
            more,
        )

    @admin.display(description="From the audit trail")
    def recent_activity(self, obj: Office) -> str:
        events = AuditEvent.objects.filter(office_id=obj.pk).exclude(action__endswith="viewed").order_by("-seq")[:15]
        return audit_entries_html(events, obj.timezone)

    def has_run_billing_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("billing.add_billingrun"))

    def has_one_off_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("billing.add_invoice"))

    def _action_context(self, request: HttpRequest, queryset: QuerySet[Office], title: str) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.model._meta,
            "selected_offices": list(queryset),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }

    @admin.action(description="Preview billing for selected offices (dry run)", permissions=("run_billing",))
    def preview_billing(self, request: HttpRequest, queryset: QuerySet[Office]) -> HttpResponse | None:
        """Show what a billing run would do for the selected offices, as of now, the end of a
        chosen date or the next boundary (a dry run may look ahead); nothing is kept (spec §6, §10)."""
        office_ids = list(queryset.values_list("pk", flat=True))
        tz_name = str(settings.BILLING_DEFAULT_TIMEZONE)
        choice = request.POST.get("preview_as_of", "now")
        form = PreviewAsOfForm(request.POST if choice == "date" else None, tz_name=tz_name)
        as_of: datetime | None = None
        as_of_choice = "now"
        if choice == "date" and form.is_valid():
            as_of, as_of_choice = form.cleaned_data["as_of"], f"the end of {form.cleaned_data['preview_on']}"
        elif choice == "next":
            as_of = next_boundary(office_ids=office_ids)
            if as_of is None:
                self.message_user(
                    request, "No selected office has a boundary ahead; showing the preview as of now.", messages.INFO
                )
            else:
                as_of_choice = "the next boundary"
        try:
            preview = billing_preview(office_ids=office_ids, as_of=as_of)
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return None
        context = {
            **self._action_context(request, queryset, "Billing preview (nothing was saved)"),
            **preview,
            "as_of_choice": as_of_choice,
            "form": form,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/billing/billing_preview.html", context)

    @admin.action(description="Run billing now for selected offices", permissions=("run_billing",))
    def run_billing_now(self, request: HttpRequest, queryset: QuerySet[Office]) -> None:
        """Run billing now for the selected offices (spec §6)."""
        office_ids = list(queryset.values_list("pk", flat=True))
        try:
            run = billing_run(office_ids=office_ids, trigger="admin")
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return
        audit_record(  # the run's own entries say what it did; this one says who asked
            action="billing_run.requested",
            actor=request.user,
            target=run,
            data={"trigger": "admin", "office_ids": office_ids},
        )
        self.message_user(
            request,
            f"Billing run #{run.pk} ({run.status}) as of {_when(run.as_of)}: {run.offices_due} office(s) due, "
            f"{run.offices_done} done, {run.invoices_finalized} invoice(s) finalized, "
            f"{run.invoices_opened} billing period(s) opened, {run.lines_created} line(s) "
            f"created, {run.error_count} error(s).",
            messages.WARNING if run.error_count else messages.SUCCESS,
        )

    @admin.action(description="Create one-off invoice for the selected office…", permissions=("one_off",))
    def create_one_off_invoice(self, request: HttpRequest, queryset: QuerySet[Office]) -> HttpResponse | None:
        """Create a one-off invoice for one office (spec §7)."""
        offices = list(queryset[:2])
        if len(offices) != 1:
            self.message_user(request, "Select exactly one office to create a one-off invoice for.", messages.ERROR)
            return None
        return self.one_off_page(request, offices[0])

    def one_off_page(self, request: HttpRequest, office: Office) -> HttpResponse:
        """The one-off invoice form of an office: lines in major units of its currency, each
        refusal next to the line it is about (spec §7)."""
        currency = office_currency(office)
        service_error = ""
        if "apply" in request.POST:
            formset = OneOffLineFormSet(request.POST, prefix="lines", currency=currency)
            if formset.is_valid():
                lines, forms_used = one_off_lines(formset)
                try:
                    invoice = invoice_create_one_off(office=office, lines=lines, actor=request.user)
                except ApplicationError as exc:
                    if not _attach_service_error(exc, forms_used):
                        service_error = exc.message
                else:
                    self.message_user(
                        request,
                        f"One-off invoice {invoice.number} created for {office.name}: "
                        f"{format_cents(invoice.total_cents, invoice.currency)} ({invoice.get_status_display()}).",
                        messages.SUCCESS,
                    )
                    return HttpResponseRedirect(reverse("admin:billing_invoice_change", args=[invoice.pk]))
        else:
            formset = OneOffLineFormSet(prefix="lines", currency=currency)
        context = {
            **self._action_context(request, Office.objects.filter(pk=office.pk), f"One-off invoice for {office.name}"),
            "office": office,
            "currency": currency.upper(),
            "formset": formset,
            "service_error": service_error,
            "cancel_url": reverse("admin:offices_office_change", args=[office.pk]),
        }
        return TemplateResponse(request, "admin/billing/one_off_invoice.html", context)


def stripe_customer_link(customer_id: str | None) -> str:
    """The office's Stripe customer id, linked to Stripe's dashboard when STRIPE_DASHBOARD_URL
    says where it is (e.g. https://dashboard.stripe.com/test)."""
    if not customer_id:
        return "not created yet"
    base = str(getattr(settings, "STRIPE_DASHBOARD_URL", "") or "").rstrip("/")
    if not base:
        return customer_id
    return format_html(
        '<a href="{}/customers/{}" class="text-primary-600" rel="noopener noreferrer" target="_blank">{}</a>',
        base,
        customer_id,
        customer_id,
    )


def _when(moment: datetime) -> str:
    """An instant as operators read it: local minute and offset in the reporting zone."""
    return local_minute(moment, str(settings.BILLING_DEFAULT_TIMEZONE))


# dj-stripe's key and endpoint tables would hold secrets in the database: our rule keeps
# keys and webhook secrets in the environment only, so their admin pages are not offered.
def _unregister_djstripe_secret_admins() -> None:
    from djstripe import models as djstripe_models

    for model in (djstripe_models.APIKey, djstripe_models.WebhookEndpoint):
        if admin.site.is_registered(model):
            admin.site.unregister(model)


_unregister_djstripe_secret_admins()


arrange_third_party_pages()  # last of our admin modules: every app's pages are registered by now
