"""The emails in the operator console (read-only: subject, recipient, status, times in the
office's zone, the bodies) and their settings: the console backend where nothing is
configured (`make run`), SMTP from the environment, production refusing to start without
SMTP over TLS and a real sender."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, RequestFactory
from django.urls import reverse

from billing.tests.support.factories import at
from billing.tests.support.stripe_helpers import billed_office
from config.console import sidebar_navigation
from config.tests.test_security import production_env, production_settings, run_python
from notifications.models import OutboundEmail
from notifications.services import notifications_dispatch

CHI = ZoneInfo("America/Chicago")


@pytest.mark.django_db
def test_it_shows_the_emails_read_only_with_their_bodies_and_local_times(smtp, client: Client) -> None:
    office = billed_office(patients=1)
    with at(datetime(2026, 4, 10, 7, tzinfo=CHI)):
        notifications_dispatch()
    row = OutboundEmail.objects.order_by("id").last()
    assert row is not None and row.sent_at
    user = get_user_model().objects.create_superuser("op", "op@example.com", "pw")
    client.force_login(user)

    listing = client.get(reverse("admin:notifications_outboundemail_changelist"))
    assert listing.status_code == 200
    assert row.subject in listing.content.decode() and office.billing_email in listing.content.decode()
    assert "2026-04-10 07:00-05:00" in listing.content.decode()  # sent, in the office's zone
    detail = client.get(reverse("admin:notifications_outboundemail_change", args=[row.pk]))
    page = detail.content.decode()
    assert detail.status_code == 200
    assert "Total: 150.00 USD" in page and "&lt;strong&gt;150.00 USD&lt;/strong&gt;" in page  # HTML as source
    assert 'name="subject"' not in page  # nothing to edit
    stuck = client.get(reverse("admin:notifications_outboundemail_changelist") + "?stuck=sending")
    assert stuck.status_code == 200
    for url in (
        reverse("admin:notifications_outboundemail_add"),
        reverse("admin:notifications_outboundemail_delete", args=[row.pk]),
    ):
        assert client.post(url).status_code == 403

    request = RequestFactory().get("/admin/")
    request.user = user
    billing = next(g for g in sidebar_navigation(request) if g["title"] == "Billing")
    assert "Emails" in [item["title"] for item in billing["items"]]


def test_it_prints_emails_to_the_console_when_no_smtp_is_configured() -> None:
    code = "import config.settings.local as s\nprint(s.EMAIL_BACKEND)\n"
    env = production_env(DJANGO_SETTINGS_MODULE="config.settings.local", EMAIL_URL=None, DEFAULT_FROM_EMAIL=None)
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "django.core.mail.backends.console.EmailBackend"


def test_it_reads_smtp_from_the_environment() -> None:
    s = production_settings(EMAIL_URL="smtp+tls://mailer:s3cret@smtp.billing.example.com:2525")
    assert (s["EMAIL_BACKEND"], s["EMAIL_HOST"], s["EMAIL_PORT"], s["EMAIL_USE_TLS"]) == (
        "django.core.mail.backends.smtp.EmailBackend",
        "smtp.billing.example.com",
        2525,
        True,
    )
    assert (s["EMAIL_HOST_USER"], s["EMAIL_HOST_PASSWORD"]) == ("mailer", "s3cret")
    s = production_settings(
        EMAIL_URL=None,
        EMAIL_HOST="smtp.billing.example.com",
        EMAIL_HOST_USER="mailer",
        EMAIL_HOST_PASSWORD="pw",
        EMAIL_USE_SSL="true",
        EMAIL_USE_TLS="false",
        EMAIL_PORT="465",
        BILLING_SUSPENSION_WARNING_DAYS="5",
    )
    assert (s["EMAIL_HOST"], s["EMAIL_PORT"], s["EMAIL_USE_SSL"], s["EMAIL_USE_TLS"]) == (
        "smtp.billing.example.com",
        465,
        True,
        False,
    )
    assert s["BILLING_SUSPENSION_WARNING_DAYS"] == 5
    assert s["DEFAULT_FROM_EMAIL"] == "Clinic billing <billing@billing.example.com>"
    local_relay = production_settings(EMAIL_URL="smtp://127.0.0.1:25")  # a relay on this host, no TLS
    assert local_relay["EMAIL_HOST"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        pytest.param({"EMAIL_URL": None}, "EMAIL_URL", id="no smtp"),
        pytest.param({"EMAIL_URL": ""}, "EMAIL_URL", id="empty smtp"),
        pytest.param({"EMAIL_URL": "consolemail://"}, "EMAIL_URL", id="console backend"),
        pytest.param({"EMAIL_URL": "memorymail://"}, "EMAIL_URL", id="in-memory backend"),
        pytest.param({"EMAIL_URL": "smtp://mailer:pw@smtp.billing.example.com:25"}, "TLS", id="plain smtp"),
        pytest.param({"DEFAULT_FROM_EMAIL": None}, "DEFAULT_FROM_EMAIL", id="no sender"),
        pytest.param({"DEFAULT_FROM_EMAIL": "billing@vendor.example"}, "DEFAULT_FROM_EMAIL", id="example sender"),
    ],
)
def test_it_refuses_to_start_in_production_without_smtp(overrides: dict[str, str | None], named: str) -> None:
    result = run_python("import config.settings.production\n", production_env(**overrides))
    assert result.returncode != 0, f"production started with {overrides}"
    assert "ImproperlyConfigured" in result.stderr
    assert named in result.stderr.strip().splitlines()[-1], result.stderr


@pytest.mark.django_db
def test_it_lets_an_operator_resolve_stuck_emails_after_checking_the_mail_log(
    smtp, client: Client, monkeypatch
) -> None:
    """Two emails stuck in `sending` (the process died after the hand-over; simulated, as in
    test_emails.py): one the log shows delivered (→ sent, nothing sent again), one it does
    not (→ sent again once, with the same Message-ID). Each verdict is audited with its reason."""
    import notifications.services as services
    from audit.models import AuditEvent
    from notifications.models import EmailStatus

    billed_office(patients=1)
    real_mark = services._mark

    def dies_when_marking_sent(*, email, status, now, **fields):
        if status == EmailStatus.SENT:
            raise SystemExit("worker killed")
        return real_mark(email=email, status=status, now=now, **fields)

    monkeypatch.setattr(services, "_mark", dies_when_marking_sent)
    start = datetime(2026, 4, 10, 7, tzinfo=CHI)
    for _ in range(2):
        with pytest.raises(SystemExit), at(start):
            notifications_dispatch()
    monkeypatch.setattr(services, "_mark", real_mark)
    delivered, lost = OutboundEmail.objects.order_by("id")
    assert {delivered.status, lost.status} == {EmailStatus.SENDING} and len(smtp.received) == 2
    with at(start + timedelta(minutes=20)):
        assert notifications_dispatch().stuck_reported == 2
    user = get_user_model().objects.create_superuser("op", "op@example.com", "pw")
    url = reverse("admin:notifications_outboundemail_changelist")
    with at(start + timedelta(minutes=30)):
        client.force_login(user)
        page = client.post(url, {"action": "resolve_stuck", "_selected_action": [delivered.pk]})
        assert page.status_code == 200 and "Record the verdict" in page.content.decode()
        for row, verdict in ((delivered, "delivered"), (lost, "not_delivered")):
            answer = client.post(
                url,
                {
                    "action": "resolve_stuck",
                    "_selected_action": [row.pk],
                    "apply": "1",
                    "verdict": verdict,
                    "reason": "checked the relay log",
                },
            )
            assert answer.status_code == 302
        notifications_dispatch()
        notifications_dispatch()
    delivered.refresh_from_db()
    lost.refresh_from_db()
    assert (delivered.status, delivered.sent_at) == (EmailStatus.SENT, delivered.claimed_at)
    assert lost.status == EmailStatus.SENT and len(smtp.received) == 3
    again = [m for m in smtp.received if m["Subject"] == lost.subject]
    assert len(again) == 2 and again[0]["Message-ID"] == again[1]["Message-ID"]
    verdicts = AuditEvent.objects.filter(action="email.resolved").order_by("id")
    assert [(e.actor_id, e.reason, e.data["delivered"]) for e in verdicts] == [
        (str(user.pk), "checked the relay log", True),
        (str(user.pk), "checked the relay log", False),
    ]
