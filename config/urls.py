from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from audit.api import AuditEventsView
from audit.export_api import AuditEventsExportView
from billing.api import (
    InvoiceDetailView,
    InvoiceMarkUncollectibleView,
    InvoicePdfView,
    OfficeInvoicesView,
    OneOffInvoicesView,
    PaymentMethodSessionView,
    PaymentStatusView,
    PlansView,
    SubscriptionView,
)
from billing.stripe.webhooks import stripe_webhook
from compliance.api import AccessReviewExportView, AccessReviewsView
from config.api_index import api_index
from config.auth_api import LogoutView, TokenView
from config.mfa.views import enrol_view, recovery_codes_view, verify_view
from offices.api import MemberDetailView, MembersView, OfficeDetailView, OfficesView
from ops.views import health_live, health_ready, metrics
from patients.api import OfficePatientsView, PatientActivateView, PatientDeactivateView

admin.site.site_header = "Billing console"
admin.site.site_title = "Billing console"
admin.site.index_title = "Overview"

api_v1 = [
    path("plans/", PlansView.as_view()),
    path("offices/", OfficesView.as_view()),
    path("offices/<int:office_id>/", OfficeDetailView.as_view()),
    path("offices/<int:office_id>/members/", MembersView.as_view()),
    path("offices/<int:office_id>/members/<int:user_id>/", MemberDetailView.as_view()),
    path("offices/<int:office_id>/subscription/", SubscriptionView.as_view()),
    path("offices/<int:office_id>/patients/", OfficePatientsView.as_view()),
    path("offices/<int:office_id>/invoices/", OfficeInvoicesView.as_view()),
    path("offices/<int:office_id>/payment-status/", PaymentStatusView.as_view()),
    path("offices/<int:office_id>/one-off-invoices/", OneOffInvoicesView.as_view()),
    path("offices/<int:office_id>/payment-method-session/", PaymentMethodSessionView.as_view()),
    path("patients/<int:patient_id>/activate/", PatientActivateView.as_view()),
    path("patients/<int:patient_id>/deactivate/", PatientDeactivateView.as_view()),
    path("invoices/<int:invoice_id>/", InvoiceDetailView.as_view()),
    path("invoices/<int:invoice_id>/pdf/", InvoicePdfView.as_view()),
    path("invoices/<int:invoice_id>/mark-uncollectible/", InvoiceMarkUncollectibleView.as_view()),
    path("audit-events/", AuditEventsView.as_view()),
    path("audit-events/export/", AuditEventsExportView.as_view()),
    path("access-reviews/", AccessReviewsView.as_view()),
    path("access-reviews/<int:review_id>/export/", AccessReviewExportView.as_view()),
]

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),  # the console (office admins use the API)
    path("favicon.ico", RedirectView.as_view(url="/static/console/favicon.svg", permanent=True)),
    # Operator MFA (config/mfa/): before admin.site.urls, whose catch-all would take them.
    path("admin/mfa/enrol/", enrol_view, name="console-mfa-enrol"),
    path("admin/mfa/verify/", verify_view, name="console-mfa-verify"),
    path("admin/mfa/recovery-codes/", recovery_codes_view, name="console-mfa-recovery-codes"),
    path("admin/", admin.site.urls),
    path("stripe/webhook/", stripe_webhook),
    # Authentication (config/auth_api.py): outside api_v1, whose resources the authz matrix covers.
    path("api/v1/auth/token/", TokenView.as_view(), name="auth-token"),
    path("api/v1/auth/logout/", LogoutView.as_view(), name="auth-logout"),
    path("api/v1/", api_index, name="api-index"),  # outside api_v1: public, reads nothing
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    # Health and metrics (ops/views.py). The probes are public and normally answered by
    # ops.middleware.HealthCheckMiddleware before these patterns; /metrics needs METRICS_TOKEN.
    path("health/live", health_live, name="health-live"),
    path("health/ready", health_ready, name="health-ready"),
    path("metrics", metrics, name="metrics"),
]
