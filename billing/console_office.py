"""The operator's actions on one office, as buttons on its page in the console (issue 9, item 2).

Each action is a page that says what will happen, asks for what the service needs (a plan, a
reason, the lines of a one-off invoice in major units) and calls the same service the API
uses: subscribe, change plan, cancel at period end or now, withdraw a cancellation, a one-off
invoice, and a preview or run of billing for this office. A button shows only when its
action applies to the office as it is now and the operator may take it.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from unfold.decorators import action

from billing.models import Plan
from billing.money import format_cents, major_to_cents
from billing.selectors import office_currency
from billing.services import (
    subscription_cancel,
    subscription_change_plan,
    subscription_create,
    subscription_resume,
)
from config.admin_mixins import ConsoleFormMixin
from config.errors import ApplicationError
from offices.models import Office, SubscriptionStatus

# What each subscription status allows (the services refuse the rest with a message).
NOT_SUBSCRIBED = (SubscriptionStatus.NONE, SubscriptionStatus.CANCELED)


def _plan_label(plan: Plan) -> str:
    price = format_cents(plan.per_patient_cents, plan.currency)
    minimum = format_cents(plan.minimum_cents, plan.currency)
    return f"{plan.name}: {price} per active patient a month, at least {minimum}"


class PlanChoiceForm(ConsoleFormMixin, forms.Form):
    """The plan to subscribe to or change to (active plans only; same currency on a change)."""

    plan = forms.ModelChoiceField(queryset=Plan.objects.none(), empty_label=None)

    def __init__(self, *args: Any, currency: str | None = None, exclude: Plan | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        plans = Plan.objects.filter(is_active=True).order_by("name")
        if currency:
            plans = plans.filter(currency=currency)
        if exclude is not None:
            plans = plans.exclude(pk=exclude.pk)
        field = self.fields["plan"]
        field.queryset = plans  # type: ignore[attr-defined]
        field.label_from_instance = _plan_label  # type: ignore[attr-defined]


class CancelForm(ConsoleFormMixin, forms.Form):
    """When the subscription ends, and why (PHI-guarded, kept in the audit trail)."""

    when = forms.ChoiceField(
        choices=[
            ("period_end", "At the end of the current period (the period is billed in full)"),
            ("now", "Now (the current period is cut here and billed without the minimum)"),
        ],
        widget=forms.RadioSelect,
        initial="period_end",
    )
    reason = forms.CharField(
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Required; kept in the audit trail. No patient information.",
        error_messages={"required": "Say why the subscription is canceled."},
    )


class ConfirmForm(ConsoleFormMixin, forms.Form):
    """An action that needs nothing but a yes."""


class OneOffLineForm(ConsoleFormMixin, forms.Form):
    """One line of a one-off invoice as a person types it: the amount in major units."""

    description = forms.CharField(max_length=500, required=False)
    amount = forms.DecimalField(required=False, min_value=Decimal(0), max_digits=14, decimal_places=2)
    quantity = forms.IntegerField(required=False, min_value=1, initial=1)

    def __init__(self, *args: Any, currency: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.currency = currency
        self.fields["amount"].label = f"Amount ({currency.upper()})"

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        description = (data.get("description") or "").strip()
        amount = data.get("amount")
        if description and amount is None:
            self.add_error("amount", "Give the amount of this line.")
        if not description and amount is not None:
            self.add_error("description", "Describe this line.")
        if amount is not None:
            try:
                data["amount_cents"] = major_to_cents(amount, self.currency)
            except ValueError as exc:
                self.add_error("amount", str(exc))
        return data


ONE_OFF_MAX_LINES = 5


class BaseOneOffFormSet(forms.BaseFormSet):
    def __init__(self, *args: Any, currency: str, **kwargs: Any) -> None:
        self.currency = currency
        super().__init__(*args, **kwargs)

    def get_form_kwargs(self, index: int | None) -> dict[str, Any]:
        return {**super().get_form_kwargs(index), "currency": self.currency}


OneOffLineFormSet: Any = forms.formset_factory(
    OneOffLineForm, formset=BaseOneOffFormSet, extra=ONE_OFF_MAX_LINES, max_num=ONE_OFF_MAX_LINES, validate_max=True
)


def one_off_lines(formset: Any) -> tuple[list[dict[str, Any]], list[forms.Form]]:
    """The filled lines of the formset as the service takes them (cents), with their forms."""
    lines, forms_used = [], []
    for form in formset.forms:
        data = form.cleaned_data
        if not (data.get("description") or "").strip():
            continue
        lines.append(
            {
                "description": data["description"],
                "amount_cents": data["amount_cents"],
                "quantity": data.get("quantity") or 1,
            }
        )
        forms_used.append(form)
    return lines, forms_used


class OfficeActionsMixin:
    """The buttons of an office's page; mixed into the office's ModelAdmin (billing/admin.py)."""

    actions_detail = (
        "subscribe_office",
        "change_office_plan",
        "cancel_office_subscription",
        "withdraw_office_cancellation",
        "office_one_off_invoice",
        "office_preview_billing",
        "office_run_billing",
    )

    # -- what applies ------------------------------------------------------------------------
    def _office(self, request: HttpRequest, object_id: Any) -> Office | None:
        cache: dict[str, Office | None] = request.__dict__.setdefault("_console_offices", {})
        key = str(object_id)
        if key not in cache:
            cache[key] = Office.objects.select_related("current_plan", "pending_plan").filter(pk=object_id).first()
        return cache[key]

    def _may_change(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("offices.change_office"))

    def has_subscribe_office_permission(self, request: HttpRequest, object_id: Any = None) -> bool:
        office = self._office(request, object_id)
        return self._may_change(request) and office is not None and office.subscription_status in NOT_SUBSCRIBED

    def has_subscribed_office_permission(self, request: HttpRequest, object_id: Any = None) -> bool:
        office = self._office(request, object_id)
        return self._may_change(request) and office is not None and office.subscription_status not in NOT_SUBSCRIBED

    def has_pending_cancel_permission(self, request: HttpRequest, object_id: Any = None) -> bool:
        office = self._office(request, object_id)
        return bool(
            self.has_subscribed_office_permission(request, object_id) and office and office.cancel_at_period_end
        )

    def has_office_billing_permission(self, request: HttpRequest, object_id: Any = None) -> bool:
        return bool(request.user.has_perm("billing.add_billingrun"))

    def has_office_one_off_permission(self, request: HttpRequest, object_id: Any = None) -> bool:
        return bool(request.user.has_perm("billing.add_invoice"))

    # -- the pages ---------------------------------------------------------------------------
    def _office_page(self, office: Office) -> str:
        return reverse("admin:offices_office_change", args=[office.pk])

    def _render(
        self, request: HttpRequest, office: Office, *, title: str, intro: str, form: Any, submit: str, **extra: Any
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),  # type: ignore[attr-defined]
            "title": title,
            "opts": Office._meta,
            "office": office,
            "intro": intro,
            "form": form,
            "submit_label": submit,
            "cancel_url": self._office_page(office),
            "media": self.media + getattr(form, "media", forms.Media()),  # type: ignore[attr-defined]
            **extra,
        }
        return TemplateResponse(request, extra.get("template", "admin/billing/action_form.html"), context)

    def _apply(
        self, request: HttpRequest, office: Office, form: Any, call: Callable[[dict[str, Any]], str]
    ) -> HttpResponse | None:
        """Run the service when the form is posted and valid; its refusal goes on the form."""
        if not (form.is_bound and form.is_valid()):
            return None
        try:
            done = call(form.cleaned_data)
        except ApplicationError as exc:
            field = exc.extra.get("field")
            form.add_error(field if field in form.fields else None, exc.message)
            return None
        self.message_user(request, done, messages.SUCCESS)  # type: ignore[attr-defined]
        return HttpResponseRedirect(self._office_page(office))

    def _posted(self, request: HttpRequest) -> Any:
        return request.POST if request.method == "POST" and "apply" in request.POST else None

    @action(description="Subscribe", url_path="subscribe", permissions=["subscribe_office"], icon="add_card")
    def subscribe_office(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Subscribe the office to a plan through `subscription_create` (spec §4, §7, §8)."""
        office = self._office(request, object_id)
        assert office is not None
        form = PlanChoiceForm(self._posted(request))

        def call(data: dict[str, Any]) -> str:
            done = subscription_create(office=office, plan_code=data["plan"].code, actor=request.user)
            return f"{done.name} is subscribed to {data['plan'].name} ({done.get_subscription_status_display()})."

        return self._apply(request, office, form, call) or self._render(
            request,
            office,
            title=f"Subscribe {office.name}",
            intro=(
                "The subscription starts now: the first billing period opens today in the office's time zone, "
                "with the plan's setup fee if the office was never billed before, or a trial if the plan has "
                "one and this is the office's first subscription."
            ),
            form=form,
            submit="Subscribe",
        )

    @action(description="Change plan", url_path="change-plan", permissions=["subscribed_office"], icon="swap_horiz")
    def change_office_plan(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Change the office's plan from the next billing period (`subscription_change_plan`, spec §8)."""
        office = self._office(request, object_id)
        assert office is not None
        form = PlanChoiceForm(
            self._posted(request), currency=office_currency(office), exclude=office.pending_plan or office.current_plan
        )

        def call(data: dict[str, Any]) -> str:
            subscription_change_plan(office=office, plan_code=data["plan"].code, actor=request.user)
            return f"{office.name} moves to {data['plan'].name} at the start of its next billing period."

        return self._apply(request, office, form, call) or self._render(
            request,
            office,
            title=f"Change the plan of {office.name}",
            intro=(
                f"Now on {office.current_plan or '—'}"
                + (f", moving to {office.pending_plan} next period" if office.pending_plan else "")
                + ". The new plan prices the office from its next billing period; the current one is billed "
                "on the plan it started with. Only plans in the subscription's currency are offered."
            ),
            form=form,
            submit="Change plan",
        )

    @action(description="Cancel subscription", url_path="cancel", permissions=["subscribed_office"], icon="cancel")
    def cancel_office_subscription(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Cancel at period end or now, with a required reason (`subscription_cancel`, spec §8)."""
        office = self._office(request, object_id)
        assert office is not None
        form = CancelForm(self._posted(request))

        def call(data: dict[str, Any]) -> str:
            now = data["when"] == "now"
            done = subscription_cancel(office=office, actor=request.user, immediately=now, reason=data["reason"])
            if done.subscription_status == SubscriptionStatus.CANCELED:
                return f"{done.name}'s subscription is canceled; its last period was finalized."
            return f"{done.name}'s subscription ends at the end of the current period."

        return self._apply(request, office, form, call) or self._render(
            request,
            office,
            title=f"Cancel the subscription of {office.name}",
            intro=(
                "At period end, the office is billed for the whole current period and nothing after it; "
                "the cancellation can be withdrawn until then. Now, the current period ends at this instant "
                "and is finalized without the plan minimum. During a trial the subscription ends at once "
                "and costs nothing."
            ),
            form=form,
            submit="Cancel the subscription",
        )

    @action(
        description="Withdraw cancellation", url_path="withdraw-cancel", permissions=["pending_cancel"], icon="undo"
    )
    def withdraw_office_cancellation(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Withdraw a cancellation at period end (`subscription_resume`, spec §8)."""
        office = self._office(request, object_id)
        assert office is not None
        form = ConfirmForm(self._posted(request))

        def call(data: dict[str, Any]) -> str:
            subscription_resume(office=office, actor=request.user)
            return f"{office.name}'s subscription continues after the current period."

        return self._apply(request, office, form, call) or self._render(
            request,
            office,
            title=f"Withdraw the cancellation of {office.name}",
            intro="The subscription was set to end with the current period; it will go on as before.",
            form=form,
            submit="Withdraw the cancellation",
        )

    @action(description="One-off invoice", url_path="one-off", permissions=["office_one_off"], icon="receipt_long")
    def office_one_off_invoice(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Create a one-off invoice for this office (`invoice_create_one_off`, spec §7)."""
        office = self._office(request, object_id)
        assert office is not None
        return self.one_off_page(request, office)  # type: ignore[attr-defined]

    @action(description="Preview billing", url_path="preview", permissions=["office_billing"], icon="visibility")
    def office_preview_billing(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """What a billing run would do for this office, nothing kept (spec §6, §10)."""
        queryset = Office.objects.filter(pk=object_id)
        response = self.preview_billing(request, queryset)  # type: ignore[attr-defined]
        return response or HttpResponseRedirect(reverse("admin:offices_office_change", args=[object_id]))

    @action(description="Run billing", url_path="run-billing", permissions=["office_billing"], icon="play_arrow")
    def office_run_billing(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Run billing for this office now, after a confirmation (spec §6)."""
        office = self._office(request, object_id)
        assert office is not None
        form = ConfirmForm(self._posted(request))
        if form.is_bound and form.is_valid():
            self.run_billing_now(request, Office.objects.filter(pk=office.pk))  # type: ignore[attr-defined]
            return HttpResponseRedirect(self._office_page(office))
        return self._render(
            request,
            office,
            title=f"Run billing for {office.name}",
            intro=(
                "Every billing period of this office that has ended is finalized, numbered and sent for "
                "payment, and the next period is opened. Running it again changes nothing. "
                "Use Preview billing to see the result first."
            ),
            form=form,
            submit="Run billing now",
        )
