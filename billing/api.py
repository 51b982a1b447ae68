"""Office-facing billing endpoints (spec §10). Views resolve access, call one selector or
service, and serialize. Billing responses are never cached."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.services import audit_record
from billing import services
from billing.documents import invoice_pdf
from billing.models import Invoice, InvoiceKind, InvoiceStatus, LineItem, Plan
from billing.selectors import invoices_for_office, payment_status
from billing.stripe import sessions as stripe_sessions
from config.api import NoStoreMixin, Pagination
from config.errors import ApplicationError, NotFoundError, PermissionDeniedError
from offices.models import Role
from offices.selectors import Access, holds_role_anywhere, is_operator, object_access, office_access, require

# One trillion cents: far above any real price, far below what a 64-bit column holds
# (bigger numbers are a 400 here, not a database overflow).
MAX_CENTS = 10**12

# --- Plans -----------------------------------------------------------------------------


class PlanSerializer(serializers.ModelSerializer[Plan]):
    class Meta:
        model = Plan
        fields = [
            "id",
            "code",
            "name",
            "currency",
            "per_patient_cents",
            "minimum_cents",
            "setup_fee_cents",
            "trial_days",
            "is_active",
        ]
        read_only_fields = ["id", "is_active"]


class PlanCreateSerializer(serializers.Serializer[Any]):
    code = serializers.SlugField(max_length=64)
    name = serializers.CharField(max_length=200)
    currency = serializers.CharField(max_length=3, default=lambda: settings.BILLING_DEFAULT_CURRENCY)
    per_patient_cents = serializers.IntegerField(min_value=0, max_value=MAX_CENTS)
    minimum_cents = serializers.IntegerField(min_value=0, max_value=MAX_CENTS, default=0)
    setup_fee_cents = serializers.IntegerField(min_value=0, max_value=MAX_CENTS, default=0)
    trial_days = serializers.IntegerField(min_value=0, max_value=365, default=0)


class PlansView(NoStoreMixin, ListAPIView[Plan]):
    serializer_class = PlanSerializer
    pagination_class = Pagination

    def get_queryset(self) -> Any:
        user = self.request.user
        if not (is_operator(user) or holds_role_anywhere(user, Role.OFFICE_BILLING_ADMIN)):
            raise PermissionDeniedError("Only operators and office billing admins can list plans.")
        qs = Plan.objects.all().order_by("code")
        return qs if is_operator(user) else qs.filter(is_active=True)

    @extend_schema(request=PlanCreateSerializer, responses={201: PlanSerializer})
    def post(self, request: Request) -> Response:
        """Create a plan (operators only, spec §3, §10)."""
        if not is_operator(request.user):
            raise PermissionDeniedError("Only operators can create plans.")
        data = PlanCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        plan = services.plan_create(actor=request.user, **data.validated_data)
        return Response(PlanSerializer(plan).data, status=status.HTTP_201_CREATED)


# --- Subscription ----------------------------------------------------------------------


class SubscriptionSerializer(serializers.Serializer[Any]):
    status = serializers.CharField()
    plan = serializers.CharField(allow_null=True)
    pending_plan = serializers.CharField(allow_null=True)
    billing_cycle_anchor_date = serializers.DateField(allow_null=True)
    trial_ends_at = serializers.DateTimeField(allow_null=True)
    cancel_at_period_end = serializers.BooleanField()
    current_period_start = serializers.DateTimeField(allow_null=True)
    current_period_end = serializers.DateTimeField(allow_null=True)


class SubscriptionWriteSerializer(serializers.Serializer[Any]):
    plan = serializers.CharField(required=False)
    cancel_at_period_end = serializers.BooleanField(required=False)


class SubscriptionView(NoStoreMixin, APIView):
    def _access(self, request: Request, office_id: int) -> Access:
        access = office_access(request.user, office_id)
        require(access, access.billing, "manage the subscription")
        return access

    def _respond(self, access: Access, code: int = status.HTTP_200_OK) -> Response:
        access.office.refresh_from_db()
        view = services.subscription_view(access.office)
        return Response(SubscriptionSerializer(view).data, status=code)

    @extend_schema(responses=SubscriptionSerializer)
    def get(self, request: Request, office_id: int) -> Response:
        """The office's subscription (spec §10); the read is audited (spec §9)."""
        access = self._access(request, office_id)
        audit_record(action="subscription.viewed", actor=request.user, target=access.office, office_id=access.office.pk)
        return self._respond(access)

    @extend_schema(request=SubscriptionWriteSerializer, responses={201: SubscriptionSerializer})
    def post(self, request: Request, office_id: int) -> Response:
        """Subscribe the office to a plan (spec §4, §7, §10)."""
        access = self._access(request, office_id)
        data = SubscriptionWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        if "plan" not in data.validated_data:
            raise ApplicationError("'plan' (a plan code) is required to subscribe.", {"field": "plan"})
        services.subscription_create(office=access.office, plan_code=data.validated_data["plan"], actor=request.user)
        return self._respond(access, status.HTTP_201_CREATED)

    @extend_schema(request=SubscriptionWriteSerializer, responses=SubscriptionSerializer)
    def patch(self, request: Request, office_id: int) -> Response:
        """Change plan at the next boundary, or resume a pending cancellation (spec §5, §10)."""
        access = self._access(request, office_id)
        data = SubscriptionWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        if not values:
            raise ApplicationError("Nothing to change: send {plan: <code>} or {cancel_at_period_end: false}.")
        if "cancel_at_period_end" in values:
            if values["cancel_at_period_end"]:
                raise ApplicationError("To cancel, use DELETE on the subscription.", {"field": "cancel_at_period_end"})
            services.subscription_resume(office=access.office, actor=request.user)
        if "plan" in values:
            services.subscription_change_plan(office=access.office, plan_code=values["plan"], actor=request.user)
        return self._respond(access)

    @extend_schema(responses={200: SubscriptionSerializer})
    def delete(self, request: Request, office_id: int) -> Response:
        """Cancel at period end, or immediately with `?immediately=true` (operators only; spec §6, §10)."""
        access = self._access(request, office_id)
        immediately = request.query_params.get("immediately", "").lower() in ("1", "true", "yes")
        if immediately and not access.operator:
            raise PermissionDeniedError("Only operators can cancel immediately.")
        services.subscription_cancel(office=access.office, actor=request.user, immediately=immediately)
        return self._respond(access)


# --- Invoices --------------------------------------------------------------------------


class LineSerializer(serializers.ModelSerializer[LineItem]):
    class Meta:
        model = LineItem
        fields = ["kind", "description", "patient_ref", "quantity", "unit_amount_cents", "amount_cents"]


class InvoiceSerializer(serializers.ModelSerializer[Invoice]):
    office = serializers.IntegerField(source="office_id", read_only=True)

    class Meta:
        model = Invoice
        fields = [
            "id",
            "office",
            "number",
            "kind",
            "status",
            "period_start",
            "period_end",
            "currency",
            "subtotal_cents",
            "total_cents",
            "stripe_invoice_id",
            "finalized_at",
            "due_at",
            "paid_at",
            "voided_at",
            "push_state",
        ]


class InvoiceDetailSerializer(InvoiceSerializer):
    lines = LineSerializer(many=True, read_only=True)

    class Meta(InvoiceSerializer.Meta):
        fields = [*InvoiceSerializer.Meta.fields, "lines"]


class OfficeInvoicesView(NoStoreMixin, ListAPIView[Invoice]):
    """List an office's invoices, filtered by status and kind (spec §10)."""

    serializer_class = InvoiceSerializer
    pagination_class = Pagination

    def get_queryset(self) -> Any:
        access = office_access(self.request.user, self.kwargs["office_id"])
        require(access, access.billing, "view invoices")
        status_filter = self.request.query_params.get("status")
        kind_filter = self.request.query_params.get("kind")
        if status_filter and status_filter not in InvoiceStatus.values:
            raise ApplicationError(f"Unknown status '{status_filter}'.", {"allowed": InvoiceStatus.values})
        if kind_filter and kind_filter not in InvoiceKind.values:
            raise ApplicationError(f"Unknown kind '{kind_filter}'.", {"allowed": InvoiceKind.values})
        audit_record(
            action="invoice.list_viewed",
            actor=self.request.user,
            target=access.office,
            office_id=access.office.pk,
            data={"status": status_filter, "kind": kind_filter},
        )
        return invoices_for_office(office=access.office, status=status_filter, kind=kind_filter)


def _invoice_access(request: Request, invoice_id: int) -> tuple[Invoice, Access]:
    invoice = Invoice.objects.select_related("office").filter(pk=invoice_id).first()
    if invoice is None:
        raise NotFoundError("Invoice not found.")
    access = object_access(
        request.user,
        invoice.office_id,
        allowed=lambda access: access.billing,
        what="view invoices",
        not_found="Invoice not found.",
    )
    return invoice, access


class InvoiceDetailView(NoStoreMixin, APIView):
    @extend_schema(responses=InvoiceDetailSerializer)
    def get(self, request: Request, invoice_id: int) -> Response:
        """One invoice with its lines, by billing reference only (spec §9, §10)."""
        invoice, access = _invoice_access(request, invoice_id)
        audit_record(action="invoice.viewed", actor=request.user, target=invoice, office_id=access.office.pk)
        invoice = Invoice.objects.prefetch_related("lines").get(pk=invoice.pk)
        return Response(InvoiceDetailSerializer(invoice).data)


class InvoicePdfView(NoStoreMixin, APIView):
    @extend_schema(responses={(200, "application/pdf"): bytes})
    def get(self, request: Request, invoice_id: int) -> HttpResponse:
        """The invoice as a PDF; drafts are marked DRAFT and carry no number (spec §10)."""
        invoice, access = _invoice_access(request, invoice_id)
        audit_record(action="invoice.pdf_viewed", actor=request.user, target=invoice, office_id=access.office.pk)
        response = HttpResponse(invoice_pdf(invoice), content_type="application/pdf")
        name = invoice.number or f"draft-{invoice.pk}"
        response["Content-Disposition"] = f'inline; filename="{name}.pdf"'
        return response


class WriteOffSerializer(serializers.Serializer[Any]):
    reason = serializers.CharField(max_length=500)


class InvoiceMarkUncollectibleView(NoStoreMixin, APIView):
    @extend_schema(request=WriteOffSerializer, responses=InvoiceDetailSerializer)
    def post(self, request: Request, invoice_id: int) -> Response:
        """Write off an open invoice with a reason (operators only, spec §12); Stripe follows."""
        invoice, access = _invoice_access(request, invoice_id)
        require(access, access.operator, "write off invoices")
        data = WriteOffSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.invoice_mark_uncollectible(invoice=invoice, actor=request.user, reason=data.validated_data["reason"])
        invoice = Invoice.objects.prefetch_related("lines").get(pk=invoice.pk)
        return Response(InvoiceDetailSerializer(invoice).data)


class PaymentStatusSerializer(serializers.Serializer[Any]):
    subscription_status = serializers.CharField()
    outstanding_cents = serializers.IntegerField()
    past_due_cents = serializers.IntegerField()
    last_payment_at = serializers.DateTimeField(allow_null=True)
    currency = serializers.CharField()


class PaymentStatusView(NoStoreMixin, APIView):
    @extend_schema(responses=PaymentStatusSerializer)
    def get(self, request: Request, office_id: int) -> Response:
        """Outstanding and past-due amounts and the subscription state (spec §8, §10)."""
        access = office_access(request.user, office_id)
        require(access, access.billing, "view payment status")
        audit_record(
            action="payment_status.viewed", actor=request.user, target=access.office, office_id=access.office.pk
        )
        return Response(PaymentStatusSerializer(payment_status(office=access.office)).data)


class OneOffLineSerializer(serializers.Serializer[Any]):
    description = serializers.CharField(max_length=500)
    amount_cents = serializers.IntegerField(max_value=MAX_CENTS)
    quantity = serializers.IntegerField(required=False, default=1, max_value=1_000_000)


class OneOffSerializer(serializers.Serializer[Any]):
    lines = OneOffLineSerializer(many=True)


class OneOffInvoicesView(NoStoreMixin, APIView):
    @extend_schema(request=OneOffSerializer, responses={201: InvoiceDetailSerializer})
    def post(self, request: Request, office_id: int) -> Response:
        """Create and finalize a one-off invoice (operators only, spec §7, §10)."""
        access = office_access(request.user, office_id)
        require(access, access.operator, "create one-off invoices")
        data = OneOffSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        invoice = services.invoice_create_one_off(
            office=access.office, lines=[dict(line) for line in data.validated_data["lines"]], actor=request.user
        )
        invoice = Invoice.objects.prefetch_related("lines").get(pk=invoice.pk)
        return Response(InvoiceDetailSerializer(invoice).data, status=status.HTTP_201_CREATED)


class SetupSessionRequestSerializer(serializers.Serializer[Any]):
    success_url = serializers.URLField(required=False)
    cancel_url = serializers.URLField(required=False)


class SetupSessionSerializer(serializers.Serializer[Any]):
    id = serializers.CharField()
    url = serializers.URLField()


class PaymentMethodSessionView(NoStoreMixin, APIView):
    """A Stripe-hosted page where the office's billing admin saves a payment method; card
    data never reaches this system (spec §8)."""

    @extend_schema(request=SetupSessionRequestSerializer, responses={201: SetupSessionSerializer})
    def post(self, request: Request, office_id: int) -> Response:
        """Open a Stripe-hosted page where the office saves a payment method (spec §8)."""
        access = office_access(request.user, office_id)
        require(access, access.billing, "manage payment methods")
        data = SetupSessionRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        session = stripe_sessions.setup_session_create(
            office=access.office,
            success_url=data.validated_data.get("success_url") or settings.BILLING_PORTAL_RETURN_URL,
            cancel_url=data.validated_data.get("cancel_url") or settings.BILLING_PORTAL_RETURN_URL,
            actor=request.user,
        )
        return Response({"id": session.id, "url": session.url}, status=status.HTTP_201_CREATED)
