"""Emails to the office's billing contact (spec §12, emails) through a real SMTP server
(aiosmtpd, started by the fixture `smtp`): each kind, once per business event, PHI-guarded,
audited. The situations are built through the billing services and the dunning pass."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from billing.dunning import dunning_run
from billing.models import Invoice, InvoiceStatus
from billing.services import invoice_create_one_off, invoice_void, patient_activate, subscription_create
from billing.tests.support.factories import OfficeFactory, PatientFactory, PlanFactory, at, operator
from billing.tests.support.stripe_helpers import billed_office
from notifications.models import EmailKind, EmailStatus, OutboundEmail
from notifications.services import notifications_dispatch, notify_credit_note_issued
from notifications.tests.support import html_of, pdfs_of, text_of
from offices.models import CollectionMethod, SubscriptionStatus
from patients.services import patient_create

pytestmark = pytest.mark.django_db
CHI = ZoneInfo("America/Chicago")
GRACE = timedelta(days=14)


def dispatch(moment: datetime):
    with at(moment):
        return notifications_dispatch()


def send_invoice_office(**kw):
    """Setup fee (50000) finalized 2026-03-10 14:00 CHI, due 2026-04-09 14:00 CHI; first
    cycle (15000) finalized 2026-04-10 01:00 CHI, due 30 days later."""
    office = billed_office(collection_method=CollectionMethod.SEND_INVOICE, **kw)
    return office, Invoice.objects.get(office=office, is_setup_fee=True)


def emails(kind: str | None = None) -> list[OutboundEmail]:
    rows = OutboundEmail.objects.order_by("id")
    return list(rows.filter(kind=kind) if kind else rows)


# --- Invoice issued -------------------------------------------------------------------------


def test_it_mails_each_issued_invoice_once_with_its_pdf_due_date_and_total(smtp):
    office = billed_office()
    setup_fee = Invoice.objects.get(office=office, is_setup_fee=True)
    cycle = Invoice.objects.get(office=office, kind="cycle", status=InvoiceStatus.OPEN)

    stats = dispatch(datetime(2026, 4, 10, 7, tzinfo=CHI))
    assert (stats.created, stats.sent) == (2, 2)
    assert [m["To"] for m in smtp.received] == [office.billing_email] * 2
    by_subject = {m["Subject"]: m for m in smtp.received}
    first = by_subject[f"Invoice {setup_fee.number}: 500.00 USD due 2026-03-10"]
    second = by_subject[f"Invoice {cycle.number}: 150.00 USD due 2026-04-10"]  # due at finalization, local date
    assert "Total: 150.00 USD" in text_of(second) and "Due: 2026-04-10" in text_of(second)
    assert "billing period 2026-03-10 to 2026-04-10" in text_of(second)
    assert "Active patients: 3 × 4.50 USD: 13.50 USD" in text_of(second)
    assert "<strong>150.00 USD</strong>" in html_of(second)
    assert "charged automatically" in text_of(first)
    [(name, pdf)] = pdfs_of(second).items()
    assert name == f"{cycle.number}.pdf" and cycle.number in pdf and "150.00 USD" in pdf
    assert first["Message-ID"] != second["Message-ID"]

    # Again, and the audit entries about the same invoices written once more: nothing new.
    assert dispatch(datetime(2026, 4, 10, 8, tzinfo=CHI)).sent == 0
    assert len(smtp.received) == 2
    rows = emails(EmailKind.INVOICE_ISSUED)
    assert {r.idempotency_key for r in rows} == {f"invoice_issued:{setup_fee.pk}", f"invoice_issued:{cycle.pk}"}
    assert all(r.status == EmailStatus.SENT and r.sent_at for r in rows)
    sent = AuditEvent.objects.filter(action="email.sent").order_by("id")
    assert [(e.target_type, e.target_id, e.office_id, e.data) for e in sent] == [
        ("notifications.OutboundEmail", str(r.pk), office.pk, {"kind": "invoice_issued"}) for r in rows
    ]


def test_it_does_not_mail_a_zero_total_invoice_paid_at_finalization(smtp):
    PlanFactory(code="free", per_patient_cents=0, minimum_cents=0)
    office = OfficeFactory(timezone="America/Chicago")
    with at(datetime(2026, 3, 9, tzinfo=CHI)):
        patient_activate(patient=PatientFactory(office=office))
    with at(datetime(2026, 3, 10, 14, tzinfo=CHI)):
        subscription_create(office=office, plan_code="free")
    with at(datetime(2026, 4, 10, 1, tzinfo=CHI)):
        from billing.engine.run import billing_run

        billing_run()
    zero = Invoice.objects.get(office=office, kind="cycle", status=InvoiceStatus.PAID)
    assert zero.total_cents == 0 and AuditEvent.objects.filter(action="invoice.finalized").exists()
    dispatch(datetime(2026, 4, 10, 2, tzinfo=CHI))
    assert emails() == [] and smtp.received == []


def test_it_mails_a_one_off_invoice_with_its_lines(smtp):
    office = billed_office(collection_method=CollectionMethod.SEND_INVOICE)
    dispatch(datetime(2026, 4, 10, 2, tzinfo=CHI))
    smtp.received.clear()
    with at(datetime(2026, 4, 12, 9, tzinfo=CHI)):
        one_off = invoice_create_one_off(
            office=office, lines=[{"description": "Onboarding training", "amount_cents": 25000, "quantity": 2}]
        )
    dispatch(datetime(2026, 4, 12, 10, tzinfo=CHI))
    [message] = smtp.received
    assert message["Subject"] == f"Invoice {one_off.number}: 500.00 USD due 2026-05-12"
    assert "Onboarding training: 2 × 250.00 USD: 500.00 USD" in text_of(message)
    assert "Please pay by the due date" in text_of(message)


# --- Suspension warning, suspended, reactivated -----------------------------------------------


def test_it_warns_the_configured_days_before_suspension_once(smtp, settings):
    office, setup_fee = send_invoice_office()
    dispatch(datetime(2026, 4, 10, 2, tzinfo=CHI))  # the two invoices issued
    smtp.received.clear()
    due = setup_fee.due_at
    assert due == datetime(2026, 4, 9, 14, tzinfo=CHI)
    with at(due + timedelta(minutes=5)):
        dunning_run()  # past due since the due date; suspended after 2026-04-23 14:00 CHI
    warning_point = due + GRACE - timedelta(days=3)  # 2026-04-20 14:00 CHI

    assert dispatch(warning_point - timedelta(minutes=1)).warnings == 0
    assert dispatch(warning_point).warnings == 1
    assert dispatch(warning_point + timedelta(hours=1)).warnings == 0  # once
    [message] = smtp.received
    assert message["Subject"] == "Billing will be suspended after 2026-04-23 14:00-05:00 unless paid"
    assert f"Invoice {setup_fee.number}: 500.00 USD (past due since 2026-04-09)" in text_of(message)
    [row] = emails(EmailKind.SUSPENSION_WARNING)
    assert row.idempotency_key == f"suspension_warning:{office.pk}:{setup_fee.pk}"

    # Five days instead of three: another office is warned on its own day.
    settings.BILLING_SUSPENSION_WARNING_DAYS = 5
    _other, other_fee = send_invoice_office()
    with at(other_fee.due_at + timedelta(minutes=5)):
        dunning_run()
    assert dispatch(other_fee.due_at + GRACE - timedelta(days=5, minutes=1)).warnings == 0
    assert dispatch(other_fee.due_at + GRACE - timedelta(days=5)).warnings == 1


def test_it_mails_the_suspension_and_the_reactivation_once_each(smtp):
    office, setup_fee = send_invoice_office()
    due = setup_fee.due_at
    suspended_at = due + GRACE + timedelta(hours=1)
    with at(suspended_at):
        dunning_run()
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.SUSPENDED
    dispatch(suspended_at + timedelta(minutes=1))
    [suspended] = [m for m in smtp.received if m["Subject"].startswith("Billing suspended")]
    assert "suspended since 2026-04-23 15:00-05:00" in text_of(suspended)
    assert f"Invoice {setup_fee.number}: 500.00 USD" in text_of(suspended)

    back = suspended_at + timedelta(days=1)
    with at(back):
        invoice_void(invoice=setup_fee, actor=operator(), reason="issued in error")
        dunning_run()
    dispatch(back + timedelta(minutes=1))
    dispatch(back + timedelta(hours=1))
    [reactivated] = [m for m in smtp.received if m["Subject"] == "Billing active again"]
    assert "active again since 2026-04-24 15:00-05:00" in text_of(reactivated)
    assert [r.kind for r in emails()].count(EmailKind.SUSPENDED) == 1
    assert [r.kind for r in emails()].count(EmailKind.REACTIVATED) == 1


def test_it_does_not_mail_a_recovery_from_past_due_that_was_never_suspended(smtp):
    office, setup_fee = send_invoice_office()
    with at(setup_fee.due_at + timedelta(hours=1)):
        dunning_run()
    with at(setup_fee.due_at + timedelta(days=2)):
        invoice_void(invoice=setup_fee, actor=operator(), reason="issued in error")
        dunning_run()
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.ACTIVE
    assert AuditEvent.objects.filter(action="subscription.reactivated", office_id=office.pk).exists()
    dispatch(setup_fee.due_at + timedelta(days=2, hours=1))
    assert emails(EmailKind.REACTIVATED) == []


# --- SMTP down, refusals, the PHI guard, a crash around the hand-over --------------------------


def test_it_keeps_an_email_pending_while_the_server_is_down_and_sends_it_once_later(smtp):
    office = billed_office(patients=1)
    smtp.stop()
    start = datetime(2026, 4, 10, 7, tzinfo=CHI)
    stats = dispatch(start)
    assert (stats.created, stats.sent, stats.retrying) == (2, 0, 2)
    rows = emails()
    assert all(r.status == EmailStatus.PENDING and r.attempts == 1 and r.next_attempt_at for r in rows)
    assert all("ConnectionRefusedError" in r.last_error for r in rows)
    failures = AuditEvent.objects.filter(action="email.failed", outcome="failure")
    assert failures.count() == 2 and failures.first().reason == "ConnectionRefusedError"

    smtp.start()
    assert dispatch(start + timedelta(seconds=30)).sent == 0  # not due yet (backoff)
    assert dispatch(start + timedelta(minutes=1)).sent == 2
    assert dispatch(start + timedelta(minutes=5)).sent == 0
    assert len(smtp.received) == 2 and {m["To"] for m in smtp.received} == {office.billing_email}
    assert {r.status for r in emails()} == {EmailStatus.SENT}


def test_it_retries_a_temporary_refusal_and_gives_up_on_a_permanent_one(smtp, settings):
    billed_office(patients=1)
    smtp.mailbox.answer = "421 4.3.2 try again later"
    start = datetime(2026, 4, 10, 7, tzinfo=CHI)
    assert dispatch(start).retrying == 2
    assert all("SMTPDataError 421" in r.last_error for r in emails())
    smtp.mailbox.answer = "554 5.7.1 rejected"
    assert dispatch(start + timedelta(minutes=2)).failed == 2
    assert {r.status for r in emails()} == {EmailStatus.FAILED}
    assert dispatch(start + timedelta(days=1)).sent == 0  # a failed row is not retried
    assert smtp.received == []

    # Attempts run out: failed after NOTIFICATIONS_MAX_ATTEMPTS temporary refusals.
    settings.NOTIFICATIONS_MAX_ATTEMPTS = 2
    smtp.mailbox.answer = "451 busy"
    with at(start):
        row = notify_credit_note_issued(
            office=emails()[0].office,
            credit_note_id=7,
            number="CN-2026-000007",
            total_cents=100,
            currency="usd",
            issued_at=timezone.now(),
        )
    assert row is not None
    dispatch(start + timedelta(minutes=1))
    dispatch(start + timedelta(minutes=3))
    row.refresh_from_db()
    assert (row.status, row.attempts) == (EmailStatus.FAILED, 2)


def test_it_refuses_an_email_the_phi_guard_refuses_and_sends_nothing(smtp):
    office = billed_office(collection_method=CollectionMethod.SEND_INVOICE)
    dispatch(datetime(2026, 4, 10, 2, tzinfo=CHI))
    smtp.received.clear()
    with at(datetime(2026, 4, 16, 10, tzinfo=CHI)):
        one_off = invoice_create_one_off(
            office=office, lines=[{"description": "Workshop for the Quillfeather team", "amount_cents": 12500}]
        )
        # A patient registered later bears that name: the email now names a patient.
        patient_create(
            office=office,
            first_name="Ada",
            last_name="Quillfeather",
            date_of_birth=datetime(1980, 2, 3).date(),
            mrn="Q7",
        )
    stats = dispatch(datetime(2026, 4, 16, 10, 5, tzinfo=CHI))
    assert (stats.refused, stats.sent) == (1, 0) and smtp.received == []
    [row] = [r for r in emails() if r.invoice_id == one_off.pk]
    assert (row.status, row.last_error) == (EmailStatus.FAILED, "PHI guard: last name in body_text")
    [refusal] = AuditEvent.objects.filter(action="email.refused")
    assert (refusal.outcome, refusal.target_id, refusal.data["phi_kind"]) == ("denied", str(row.pk), "last_name")
    assert "Quillfeather" not in refusal.reason + str(refusal.data)
    assert dispatch(datetime(2026, 4, 17, tzinfo=CHI)).sent == 0 and smtp.received == []


def test_it_never_composes_a_refused_text_from_our_own_words_whatever_patients_are_called(smtp):
    """Patients named like the words of our templates ("Invoice Payment", "Billing Active")
    never block an email the system composed on its own (spec §9)."""
    office = billed_office(patients=1)
    for first, last in (("Invoice", "Payment"), ("Billing", "Active"), ("Office", "Charged")):
        PatientFactory(office=office, first_name=first, last_name=last, date_of_birth=datetime(2026, 3, 10).date())
    assert dispatch(datetime(2026, 4, 10, 7, tzinfo=CHI)).sent == 2


def test_it_never_resends_an_email_whose_process_died_after_the_hand_over(smtp, monkeypatch):
    """The process dies after the server accepted the message, before the row says so
    (simulated: the mark raises, as a killed worker would never reach it; the crash itself
    cannot be staged in-process). The row stays in `sending`, is never sent again, and is
    reported once to operators after NOTIFICATIONS_SENDING_STUCK_MINUTES."""
    import notifications.services as services

    billed_office(patients=1)
    real_mark = services._mark

    def dies_when_marking_sent(*, email, status, now, **fields):
        if status == EmailStatus.SENT:
            raise SystemExit("worker killed")
        return real_mark(email=email, status=status, now=now, **fields)

    monkeypatch.setattr(services, "_mark", dies_when_marking_sent)
    start = datetime(2026, 4, 10, 7, tzinfo=CHI)
    with pytest.raises(SystemExit):
        dispatch(start)
    monkeypatch.setattr(services, "_mark", real_mark)
    assert len(smtp.received) == 1
    stuck = OutboundEmail.objects.get(status=EmailStatus.SENDING)

    stats = dispatch(start + timedelta(minutes=5))
    assert stats.stuck_reported == 0 and len(smtp.received) == 2  # the other email; not the stuck one again
    stats = dispatch(start + timedelta(minutes=20))
    assert stats.stuck_reported == 1 and len(smtp.received) == 2
    assert dispatch(start + timedelta(hours=2)).stuck_reported == 0  # reported once
    stuck.refresh_from_db()
    assert stuck.status == EmailStatus.SENDING and stuck.stuck_reported_at
    [entry] = AuditEvent.objects.filter(action="email.stuck")
    assert (entry.target_id, entry.outcome) == (str(stuck.pk), "failure")


# --- Credit notes (the hook; nothing issues credit notes yet) ----------------------------------


def test_it_mails_a_credit_note_through_the_hook_once(smtp, django_capture_on_commit_callbacks):
    office = billed_office(patients=1)
    invoice = Invoice.objects.get(office=office, is_setup_fee=True)
    with at(datetime(2026, 4, 12, 9, tzinfo=CHI)):
        for _ in range(2):
            notify_credit_note_issued(
                office=office,
                credit_note_id=41,
                number="CN-2026-000001",
                total_cents=5000,
                currency="usd",
                issued_at=timezone.now(),
                invoice=invoice,
            )
    dispatch(datetime(2026, 4, 12, 9, 1, tzinfo=CHI))
    [message] = [m for m in smtp.received if m["Subject"].startswith("Credit note")]
    assert message["Subject"] == "Credit note CN-2026-000001: 50.00 USD"
    assert f"issued on 2026-04-12 against invoice {invoice.number}" in text_of(message)
    assert len(emails(EmailKind.CREDIT_NOTE_ISSUED)) == 1


# --- Triggered after commit, and by beat ----------------------------------------------------


def test_it_dispatches_after_the_commit_of_a_relevant_audit_entry(
    smtp, settings, django_capture_on_commit_callbacks, monkeypatch
):
    from billing.stripe.publisher import publisher
    from notifications import signals

    monkeypatch.setattr(signals, "COALESCE_SECONDS", 0.0)  # each commit its own dispatch here
    settings.NOTIFICATIONS_DISPATCH_AFTER_COMMIT = True
    # The published task runs here, as a worker would run it (Celery's eager mode is not used:
    # it opens the app's broker connection pool, which later broker tests would inherit).
    published = []
    monkeypatch.setattr(publisher, "submit", lambda task, *args: published.append(task.apply()))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        office = billed_office(patients=1)
    assert callbacks and published
    assert sorted(m["Subject"].split(":")[0] for m in smtp.received) == sorted(
        f"Invoice {i.number}" for i in Invoice.objects.filter(office=office).exclude(status="draft")
    )


def test_the_beat_schedule_runs_the_dispatcher(smtp, settings):
    from notifications.tasks import notifications_dispatch_task

    assert settings.CELERY_BEAT_SCHEDULE["notifications-dispatch"]["task"] == notifications_dispatch_task.name
    billed_office(patients=1)
    with at(datetime(2026, 4, 10, 7, tzinfo=CHI)):
        result = notifications_dispatch_task.apply().get()
    assert result["sent"] == 2
    assert all(e.task_id for e in AuditEvent.objects.filter(action="email.sent"))


def test_it_does_not_mail_an_invoice_voided_before_its_email_was_made(smtp):
    office, setup_fee = send_invoice_office()
    with at(datetime(2026, 4, 10, 2, tzinfo=CHI)):
        invoice_void(invoice=setup_fee, actor=operator(), reason="issued in error")
    dispatch(datetime(2026, 4, 10, 3, tzinfo=CHI))
    assert [r.invoice_id for r in emails()] == [Invoice.objects.get(office=office, kind="cycle", status="open").pk]
    assert len(smtp.received) == 1


def test_it_coalesces_the_dispatch_requests_of_many_commits(settings, monkeypatch, django_capture_on_commit_callbacks):
    """A burst of commits (a billing run) asks for one dispatch per window, delayed to the
    window's end so that it covers them all."""
    from billing.stripe.publisher import publisher
    from notifications import signals

    settings.NOTIFICATIONS_DISPATCH_AFTER_COMMIT = True
    monkeypatch.setattr(signals, "COALESCE_SECONDS", 60.0)
    monkeypatch.setattr(signals, "_window_ends", 0.0)
    published = []
    monkeypatch.setattr(publisher, "submit", lambda task, *args: published.append(task))  # no broker here
    for _ in range(50):  # fifty transactions, each asking after its commit
        with django_capture_on_commit_callbacks(execute=True):
            signals.request_dispatch()
            signals.request_dispatch()
    [task] = published
    assert task.task == "notifications.tasks.notifications_dispatch_task" and task.options["countdown"] == 60.0
