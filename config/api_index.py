"""`/api/v1/` answers with its index (rather than a 404): what the API serves and where its
documentation is. Public, like the schema it points to; it reads no data."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

RESOURCES = {
    "auth_token": "/api/v1/auth/token/",
    "auth_logout": "/api/v1/auth/logout/",
    "plans": "/api/v1/plans/",
    "offices": "/api/v1/offices/",
    "office": "/api/v1/offices/{office_id}/",
    "members": "/api/v1/offices/{office_id}/members/",
    "member": "/api/v1/offices/{office_id}/members/{user_id}/",
    "subscription": "/api/v1/offices/{office_id}/subscription/",
    "patients": "/api/v1/offices/{office_id}/patients/",
    "invoices": "/api/v1/offices/{office_id}/invoices/",
    "payment_status": "/api/v1/offices/{office_id}/payment-status/",
    "one_off_invoices": "/api/v1/offices/{office_id}/one-off-invoices/",
    "payment_method_session": "/api/v1/offices/{office_id}/payment-method-session/",
    "patient_activate": "/api/v1/patients/{patient_id}/activate/",
    "patient_deactivate": "/api/v1/patients/{patient_id}/deactivate/",
    "invoice": "/api/v1/invoices/{invoice_id}/",
    "invoice_pdf": "/api/v1/invoices/{invoice_id}/pdf/",
    "invoice_mark_uncollectible": "/api/v1/invoices/{invoice_id}/mark-uncollectible/",
    "audit_events": "/api/v1/audit-events/",
    "audit_events_export": "/api/v1/audit-events/export/",
    "access_reviews": "/api/v1/access-reviews/",
    "access_review_export": "/api/v1/access-reviews/{review_id}/export/",
}


@require_GET
def api_index(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "version": "v1",
            "documentation": "/api/docs/",
            "schema": "/api/schema/",
            "authentication": "POST /api/v1/auth/token/ with username and password; then 'Authorization: Token <key>'",
            "resources": RESOURCES,
        }
    )
