"""The operator console's frame (django-unfold, house style 9): the sidebar groups pages by
what an operator does — customers, billing, Stripe, compliance — and puts the machinery
(sequences, chain heads, anchors, schedules, tokens) apart, folded, at the bottom. Each
entry shows only to a user who may view its page.

Read by django-unfold at every request (`UNFOLD["SIDEBAR"]["navigation"]` names
`sidebar_navigation`), so nothing here runs at import time."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.urls import reverse

# (title, url name, permission needed or None, Material Symbols icon)
Entry = tuple[str, str, str | None, str]

SECTIONS: list[tuple[str, bool, list[Entry]]] = [
    ("Overview", False, [("Overview", "admin:index", None, "dashboard")]),
    (
        "Customers",
        False,
        [
            ("Offices", "admin:offices_office_changelist", "offices.view_office", "apartment"),
            ("Companies", "admin:offices_company_changelist", "offices.view_company", "domain"),
            ("Patients", "admin:patients_patient_changelist", "patients.view_patient", "badge"),
        ],
    ),
    (
        "Billing",
        False,
        [
            ("Invoices", "admin:billing_invoice_changelist", "billing.view_invoice", "receipt_long"),
            ("Plans", "admin:billing_plan_changelist", "billing.view_plan", "sell"),
            ("Plan changes", "admin:billing_planchange_changelist", "billing.view_planchange", "swap_horiz"),
            ("Billing runs", "admin:billing_billingrun_changelist", "billing.view_billingrun", "event_repeat"),
            ("Run errors", "admin:billing_billingrunerror_changelist", "billing.view_billingrunerror", "error"),
            ("Emails", "admin:notifications_outboundemail_changelist", "notifications.view_outboundemail", "mail"),
        ],
    ),
    (
        "Stripe",
        False,
        [
            ("Webhook events", "admin:billing_stripeevent_changelist", "billing.view_stripeevent", "webhook"),
            (
                "Rejected webhooks",
                "admin:billing_webhookrejectionwindow_changelist",
                "billing.view_webhookrejectionwindow",
                "block",
            ),
        ],
    ),
    (
        "Compliance",
        False,
        [
            ("Audit trail", "admin:audit_auditevent_changelist", "audit.view_auditevent", "policy"),
            ("Model changes", "admin:auditlog_logentry_changelist", "auditlog.view_logentry", "history"),
            (
                "Access reviews",
                "admin:compliance_accessreview_changelist",
                "compliance.view_accessreview",
                "fact_check",
            ),
            ("Operators", "admin:auth_user_changelist", "auth.view_user", "manage_accounts"),
            ("Groups", "admin:auth_group_changelist", "auth.view_group", "groups"),
        ],
    ),
    (
        "Infrastructure",
        True,
        [
            ("Invoice lines", "admin:billing_lineitem_changelist", "billing.view_lineitem", "list"),
            (
                "Activation intervals",
                "admin:patients_activationinterval_changelist",
                "patients.view_activationinterval",
                "timeline",
            ),
            (
                "Invoice number sequences",
                "admin:billing_invoicenumbersequence_changelist",
                "billing.view_invoicenumbersequence",
                "pin",
            ),
            (
                "Billing run chunks",
                "admin:billing_billingrunchunk_changelist",
                "billing.view_billingrunchunk",
                "view_module",
            ),
            ("Audit chain head", "admin:audit_auditchainhead_changelist", "audit.view_auditchainhead", "link"),
            ("Audit anchors", "admin:audit_auditanchor_changelist", "audit.view_auditanchor", "anchor"),
            (
                "Email dispatch cursor",
                "admin:notifications_dispatchcursor_changelist",
                "notifications.view_dispatchcursor",
                "bookmark",
            ),
            (
                "Scheduled tasks",
                "admin:django_celery_beat_periodictask_changelist",
                "django_celery_beat.view_periodictask",
                "schedule",
            ),
            ("API tokens", "admin:knox_authtoken_changelist", "knox.view_authtoken", "key"),
            ("Task heartbeats", "admin:ops_heartbeat_changelist", "ops.view_heartbeat", "monitor_heart"),
        ],
    ),
]


def sidebar_navigation(request: HttpRequest) -> list[dict[str, Any]]:
    """The sidebar for this user: the entries of the pages they may view, empty sections left out."""
    user = request.user
    groups: list[dict[str, Any]] = []
    for title, folded, entries in SECTIONS:
        items = [
            {"title": label, "icon": icon, "link": reverse(url_name)}
            for label, url_name, permission, icon in entries
            if permission is None or user.has_perm(permission)
        ]
        if items:
            groups.append({"title": title, "separator": True, "collapsible": folded, "items": items})
    return groups


def arrange_third_party_pages() -> None:
    """Third-party pages, put in their place (called once, at the end of billing/admin.py,
    after every app's admin module is loaded):

    - dj-stripe's mirror (39 pages with add, change and delete) is hidden: it is Stripe's
      state, read through our own pages (webhook events, invoices) or Stripe's dashboard;
      editing a mirror row would only make it disagree with Stripe.
    - django-celery-beat's schedules and knox's API tokens are shown read-only, under
      Infrastructure: the billing run's schedule cannot be disabled or deleted from here
      (it is defined in settings), and a token is revoked by its owner's logout or by
      deactivating the user, both audited."""
    from django.apps import apps
    from django.contrib import admin
    from unfold.admin import ModelAdmin

    from config.admin_mixins import ReadOnlyAdminMixin

    for model in list(admin.site._registry):
        if model._meta.app_label == "djstripe":
            admin.site.unregister(model)

    class ReadOnlyInfrastructureAdmin(ReadOnlyAdminMixin, ModelAdmin):
        pass

    from auditlog.admin import LogEntryAdmin
    from auditlog.models import LogEntry

    class ThemedLogEntryAdmin(LogEntryAdmin, ModelAdmin):
        """django-auditlog's own (read-only) page, in the console's theme."""

    if admin.site.is_registered(LogEntry):
        admin.site.unregister(LogEntry)
    admin.site.register(LogEntry, ThemedLogEntryAdmin)

    # Operator MFA (config/mfa/): django-otp's device pages would show and edit the
    # authenticator secrets; MFA is managed by the enrolment pages and the users' reset action.
    for model in list(admin.site._registry):
        if model._meta.app_label in ("otp_totp", "otp_static"):
            admin.site.unregister(model)

    for label in ("django_celery_beat", "knox"):
        for model in apps.get_app_config(label).get_models():
            if admin.site.is_registered(model):
                admin.site.unregister(model)
                admin.site.register(model, ReadOnlyInfrastructureAdmin)
