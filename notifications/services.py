"""Emails to the office's billing contact (spec §12, emails): derived from the audit trail,
sent at most once per business event, PHI-guarded, audited.

- `notifications_dispatch` (beat, every few minutes, and after the commit of any relevant
  audit entry) reads the sealed audit entries after its cursor (`seq`, the chain position:
  gapless and in commit order, so an entry committed late is never skipped), makes one
  `OutboundEmail` per business event — invoice finalized (not zero-total ones), payment
  failed, office suspended, office reactivated from suspension — then sweeps offices that
  reach the suspension warning point, reports rows stuck in `sending`, and sends what is due.
- Sending claims the row (pending → sending, a conditional UPDATE: one sender wins), runs
  the PHI guard on the rendered subject and bodies, hands the message to SMTP and marks it
  sent. A crash after the server accepted it and before the mark leaves the row in
  `sending`: it is never resent automatically, it is reported to operators instead.
- The audit entries (`email.sent`, `email.failed`, `email.refused`, `email.stuck`) name the
  row and its kind, never an address or the text."""

from __future__ import annotations

import hashlib
import logging
import smtplib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from audit.models import AuditChainHead, AuditEvent, Outcome
from audit.services import audit_record, audit_seal
from billing.documents import invoice_pdf
from billing.dunning import grace_period, past_due_invoices
from billing.models import Invoice, InvoiceStatus
from billing.phi_guard import PhiRefused, invoice_tokens, phi_check
from config.errors import ApplicationError, ConflictError
from notifications import content
from notifications.models import Attachment, DispatchCursor, EmailKind, EmailStatus, OutboundEmail
from offices.models import Office, SubscriptionStatus

logger = logging.getLogger("notifications")

# The audit actions that are business events the office hears about.
INVOICE_FINALIZED = "invoice.finalized"
PAYMENT_FAILED = "payment.failed"
OFFICE_SUSPENDED = "subscription.suspended"
OFFICE_REACTIVATED = "subscription.reactivated"
RELEVANT_ACTIONS = frozenset({INVOICE_FINALIZED, PAYMENT_FAILED, OFFICE_SUSPENDED, OFFICE_REACTIVATED})


@dataclass
class DispatchStats:
    """What one dispatch pass did."""

    events_read: int = 0
    created: int = 0
    warnings: int = 0
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    refused: int = 0
    stuck_reported: int = 0
    blocked_at_seq: int | None = None


# --- Rows -------------------------------------------------------------------------------------


def _insert(*, draft: content.Draft, key: str, source_seq: int | None, attachment: str = "") -> OutboundEmail | None:
    """Render and store the email of one business event; None if that event has its row already."""
    if OutboundEmail.objects.filter(idempotency_key=key).exists():
        return None
    rendered = content.render(draft)
    office = draft.office
    row = OutboundEmail(
        idempotency_key=key,
        kind=draft.kind,
        office=office,
        invoice=draft.invoice,
        recipient=office.billing_email,
        subject=rendered.subject[:255],
        body_text=rendered.body_text,
        body_html=rendered.body_html,
        attachment=attachment,
        trusted=rendered.trusted,
        source_seq=source_seq,
    )
    if not office.billing_email:
        row.status, row.failed_at = EmailStatus.FAILED, timezone.now()
        row.last_error = "the office has no billing email"
    try:
        with transaction.atomic():  # a concurrent writer of the same key wins; we do nothing
            row.save()
    except IntegrityError:
        if OutboundEmail.objects.filter(idempotency_key=key).exists():
            return None
        raise
    return row


def _past_due(office_id: int) -> list[Invoice]:
    return list(Invoice.objects.filter(past_due_invoices(office_id)).order_by("past_due_at", "id"))


def _from_event(event: AuditEvent) -> OutboundEmail | None:
    """The email of one audit entry, if it is a business event we mail about."""
    office_id = event.office_id
    if event.action == INVOICE_FINALIZED:
        invoice = Invoice.objects.select_related("office", "plan").get(pk=int(event.target_id))
        if content.is_zero_total(invoice):
            return None  # paid at finalization, nothing to collect (docs/payment-plan.md §12)
        if invoice.status == InvoiceStatus.VOID:
            return None  # voided before we got to it: there is nothing to pay
        return _insert(
            draft=content.invoice_issued(invoice),
            key=f"invoice_issued:{invoice.pk}",
            source_seq=event.seq,
            attachment=Attachment.INVOICE_PDF,
        )
    if event.action == PAYMENT_FAILED:
        invoice = Invoice.objects.select_related("office").get(pk=int(event.target_id))
        if invoice.status != InvoiceStatus.OPEN:
            return None  # paid (a later attempt or out of band) or voided before we got to it
        attempt = event.data.get("attempt_count")
        event_id = event.data.get("event_id")
        which = (
            f"attempt-{attempt}"
            if isinstance(attempt, int)
            else f"event-{event_id}"
            if event_id
            else f"seq-{event.seq}"
        )
        since = invoice.office.past_due_since
        return _insert(
            draft=content.payment_failed(
                invoice, attempt=attempt, grace_ends_at=since + grace_period() if since else None
            ),
            key=f"payment_failed:{invoice.pk}:{which}",
            source_seq=event.seq,
        )
    assert office_id is not None
    office = Office.objects.get(pk=office_id)
    if event.action == OFFICE_SUSPENDED:
        episode = event.data.get("past_due_since") or f"seq-{event.seq}"
        return _insert(
            draft=content.suspended(office, since=event.ts, past_due=_past_due(office.pk)),
            key=f"suspended:{office.pk}:{episode}",
            source_seq=event.seq,
        )
    if event.action == OFFICE_REACTIVATED:
        if event.data.get("from") != SubscriptionStatus.SUSPENDED:
            return None  # back from past due before any suspension: the failed payment was the news
        suspension = (
            AuditEvent.objects.filter(action=OFFICE_SUSPENDED, office_id=office.pk, seq__lt=event.seq)
            .order_by("-seq")
            .first()
        )
        episode = (suspension.data.get("past_due_since") if suspension else None) or f"seq-{event.seq}"
        return _insert(
            draft=content.reactivated(office, since=event.ts),
            key=f"reactivated:{office.pk}:{episode}",
            source_seq=event.seq,
        )
    return None


def _head_seq() -> int:
    return AuditChainHead.objects.filter(pk=1).values_list("seq", flat=True).first() or 0


@transaction.atomic
def _dispatch_batch(*, batch_size: int, stats: DispatchStats) -> bool:
    """One batch of audit entries after the cursor, under the cursor's lock. True if more remain."""
    DispatchCursor.objects.bulk_create([DispatchCursor(id=1)], ignore_conflicts=True)
    cursor = DispatchCursor.objects.select_for_update().get(pk=1)
    head = _head_seq()
    events = list(
        AuditEvent.objects.filter(seq__gt=cursor.last_seq, seq__lte=head, action__in=RELEVANT_ACTIONS).order_by("seq")[
            :batch_size
        ]
    )
    reached = cursor.last_seq
    for event in events:
        assert event.seq is not None
        try:
            with transaction.atomic():
                if _from_event(event) is not None:
                    stats.created += 1
        except Exception:
            # Stop the line rather than lose an email: the cursor stays before this entry, the
            # next pass tries it again, and the log says so every time until it is fixed.
            logger.exception("email dispatch stopped at audit seq %s (%s)", event.seq, event.action)
            stats.blocked_at_seq = event.seq
            break
        stats.events_read += 1
        reached = event.seq
    else:
        if len(events) < batch_size:
            reached = head
    if reached != cursor.last_seq:
        cursor.last_seq = reached
        cursor.save(update_fields=["last_seq", "updated_at"])
    return stats.blocked_at_seq is None and len(events) == batch_size


def emails_from_audit_trail(*, stats: DispatchStats | None = None, batch_size: int = 500) -> DispatchStats:
    """Make the emails of every sealed audit entry after the cursor (spec §12, emails)."""
    stats = stats or DispatchStats()
    audit_seal()  # entries committed but not sealed yet get their seq now (safe concurrently)
    while _dispatch_batch(batch_size=batch_size, stats=stats):
        pass
    return stats


def suspension_warnings_sweep(*, now: datetime) -> int:
    """Offices past due whose oldest past-due invoice reaches `BILLING_SUSPENSION_WARNING_DAYS`
    before suspension get one warning per oldest invoice (spec §12, emails; §8 dunning)."""
    grace = grace_period()
    warn = timedelta(days=settings.BILLING_SUSPENSION_WARNING_DAYS)
    if warn <= timedelta(0):
        return 0  # 0 turns the warning off
    offices = Office.objects.filter(
        subscription_status=SubscriptionStatus.PAST_DUE,
        past_due_since__isnull=False,
        past_due_since__lte=now - grace + warn,
        past_due_since__gte=now - grace,  # later than this it is suspended at the next pass
    ).order_by("pk")
    made = 0
    for office in offices:
        past_due = _past_due(office.pk)
        if not past_due or past_due[0].past_due_at is None:
            continue
        oldest = past_due[0]
        assert oldest.past_due_at is not None
        with transaction.atomic():
            row = _insert(
                draft=content.suspension_warning(
                    office, oldest=oldest, past_due=past_due, suspends_at=oldest.past_due_at + grace
                ),
                key=f"suspension_warning:{office.pk}:{oldest.pk}",
                source_seq=None,
            )
        made += row is not None
    return made


@transaction.atomic
def notify_credit_note_issued(
    *,
    office: Office,
    credit_note_id: int,
    number: str,
    total_cents: int,
    currency: str,
    issued_at: datetime,
    invoice: Invoice | None = None,
) -> OutboundEmail | None:
    """Hook for the credit notes of spec §12 (they do not exist yet): the service that issues
    one calls this in its transaction; the email is sent after commit, once per credit note."""
    row = _insert(
        draft=content.credit_note_issued(
            office, number=number, total_cents=total_cents, currency=currency, issued_at=issued_at, invoice=invoice
        ),
        key=f"credit_note_issued:{credit_note_id}",
        source_seq=None,
    )
    if row is not None:
        from notifications.signals import request_dispatch

        request_dispatch()
    return row


# --- Sending ----------------------------------------------------------------------------------


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(60 * 2 ** max(attempts - 1, 0), 3600))


def _permanent(exc: BaseException) -> bool:
    """The server refused for good (5xx): retrying would not help."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(code >= 500 for code, _ in exc.recipients.values())
    return isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 500


def _error_text(exc: BaseException) -> str:
    code = getattr(exc, "smtp_code", None)
    return f"{type(exc).__name__}{f' {code}' if code else ''}: {str(exc)[:300]}"[:500]


def _message_id(email: OutboundEmail) -> str:
    """The same Message-ID for every copy of one email: a copy sent again by an operator is
    recognised as the same message by mail clients."""
    domain = settings.DEFAULT_FROM_EMAIL.rpartition("@")[2].strip(">") or "localhost"
    digest = hashlib.sha256(email.idempotency_key.encode()).hexdigest()[:32]
    return f"<{email.kind}.{digest}@{domain}>"


def _guard(email: OutboundEmail) -> None:
    trusted: list[object] = content.trusted_values(list(email.trusted))
    if email.invoice is not None:
        trusted += invoice_tokens(email.invoice)
    phi_check(
        office=email.office,
        fields={
            "subject": email.subject,
            "body_text": email.body_text,
            "body_html": content.html_as_text(email.body_html),
        },
        trusted=trusted,
    )


def _message(email: OutboundEmail) -> EmailMultiAlternatives:
    message = EmailMultiAlternatives(
        subject=email.subject,
        body=email.body_text,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[email.recipient],
        headers={"Message-ID": _message_id(email), "Auto-Submitted": "auto-generated"},
    )
    message.attach_alternative(email.body_html, "text/html")
    if email.attachment == Attachment.INVOICE_PDF and email.invoice is not None:
        message.attach(f"{email.invoice.number}.pdf", invoice_pdf(email.invoice), "application/pdf")
    return message


@transaction.atomic
def _mark(*, email: OutboundEmail, status: str, now: datetime, **fields: Any) -> bool:
    """Move a row out of `sending` (ours since the claim); False if someone else moved it."""
    done = OutboundEmail.objects.filter(pk=email.pk, status=EmailStatus.SENDING).update(
        status=status, updated_at=now, **fields
    )
    return bool(done)


def _fail(*, email: OutboundEmail, now: datetime, exc: BaseException, stats: DispatchStats) -> str:
    attempts = email.attempts
    give_up = _permanent(exc) or attempts >= settings.NOTIFICATIONS_MAX_ATTEMPTS
    error = _error_text(exc)
    if give_up:
        _mark(email=email, status=EmailStatus.FAILED, now=now, failed_at=now, last_error=error)
        stats.failed += 1
    else:
        _mark(
            email=email, status=EmailStatus.PENDING, now=now, next_attempt_at=now + _backoff(attempts), last_error=error
        )
        stats.retrying += 1
    audit_record(
        action="email.failed",
        target=email,
        office_id=email.office_id,
        outcome=Outcome.FAILURE,
        reason=type(exc).__name__,
        data={
            "kind": email.kind,
            "attempt": attempts,
            "smtp_code": getattr(exc, "smtp_code", None),
            "final": give_up,
        },
    )
    logger.warning("email %s (%s) attempt %s failed: %s", email.pk, email.kind, attempts, type(exc).__name__)
    return "failed" if give_up else "retrying"


def outbound_email_send(*, email_id: int, now: datetime | None = None, stats: DispatchStats | None = None) -> str:
    """Claim, PHI-check, send and mark one due email; at most one sender ever sends a row
    (spec §12: at most once per event). Returns what happened."""
    now = now or timezone.now()
    stats = stats or DispatchStats()
    claimed = (
        OutboundEmail.objects.filter(pk=email_id, status=EmailStatus.PENDING)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .update(status=EmailStatus.SENDING, claimed_at=now, attempts=F("attempts") + 1, updated_at=now)
    )
    if not claimed:
        return "not due"
    email = OutboundEmail.objects.select_related("office", "invoice", "invoice__office", "invoice__plan").get(
        pk=email_id
    )
    try:
        _guard(email)
    except PhiRefused as exc:
        reason = f"PHI guard: {exc.kind.replace('_', ' ')} in {exc.field_name}"
        _mark(email=email, status=EmailStatus.FAILED, now=now, failed_at=now, last_error=reason)
        audit_record(
            action="email.refused",
            target=email,
            office_id=email.office_id,
            outcome=Outcome.DENIED,
            reason=f"{exc.kind} in {exc.field_name}",
            data={"kind": email.kind, "field": exc.field_name, "phi_kind": exc.kind},
        )
        stats.refused += 1
        return "refused"

    connection = get_connection(fail_silently=False)
    try:
        message = _message(email)
        connection.open()
        connection.send_messages([message])
    except Exception as exc:  # not accepted by the server: safe to try again later
        _close(connection)
        return _fail(email=email, now=now, exc=exc, stats=stats)
    # Accepted by the server. Record it first; a crash before this line leaves the row in
    # `sending`, which is reported, never resent.
    sent_at = timezone.now()
    with transaction.atomic():
        _mark(email=email, status=EmailStatus.SENT, now=sent_at, sent_at=sent_at, last_error="")
        audit_record(action="email.sent", target=email, office_id=email.office_id, data={"kind": email.kind})
    _close(connection)
    stats.sent += 1
    return "sent"


def _close(connection: Any) -> None:
    try:
        connection.close()
    except Exception:  # the message is already accepted or already failed; nothing to undo
        logger.warning("closing the SMTP connection failed", exc_info=True)


def outbound_emails_send_due(*, now: datetime, stats: DispatchStats | None = None) -> DispatchStats:
    """Send every pending email that is due, oldest first."""
    stats = stats or DispatchStats()
    due = (
        OutboundEmail.objects.filter(status=EmailStatus.PENDING)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .order_by("id")
        .values_list("pk", flat=True)
    )
    for email_id in list(due):
        outbound_email_send(email_id=email_id, now=now, stats=stats)
    return stats


@transaction.atomic
def outbound_emails_report_stuck(*, now: datetime) -> int:
    """Rows in `sending` for longer than NOTIFICATIONS_SENDING_STUCK_MINUTES: the process died
    around the hand-over to SMTP, so the email may or may not have gone. Never resent
    automatically; logged and audited once, shown in the console for an operator to check."""
    cutoff = now - timedelta(minutes=settings.NOTIFICATIONS_SENDING_STUCK_MINUTES)
    stuck = list(
        OutboundEmail.objects.select_for_update(skip_locked=True).filter(
            status=EmailStatus.SENDING, claimed_at__lt=cutoff, stuck_reported_at__isnull=True
        )
    )
    for email in stuck:
        email.stuck_reported_at = now
        email.save(update_fields=["stuck_reported_at", "updated_at"])
        audit_record(
            action="email.stuck",
            target=email,
            office_id=email.office_id,
            outcome=Outcome.FAILURE,
            reason="in sending since the claim; may or may not have been delivered",
            data={"kind": email.kind, "attempt": email.attempts},
        )
        logger.error("email %s (%s) stuck in sending: check delivery before anything else", email.pk, email.kind)
    return len(stuck)


@transaction.atomic
def outbound_email_resolve_stuck(*, email_id: int, actor: Any, delivered: bool, reason: str) -> OutboundEmail:
    """An operator's verdict on an email stuck in `sending`, after reading the mail server's
    log for its Message-ID: delivered → `sent` (as of its claim); not delivered → `pending`
    again, sent by the next dispatch. The reason (free text, PHI-guarded) is audited."""
    email = OutboundEmail.objects.select_for_update().select_related("office").get(pk=email_id)
    if email.status != EmailStatus.SENDING or email.stuck_reported_at is None:
        raise ConflictError(f"Email {email.pk} is {email.status}, not stuck in sending: nothing to resolve.")
    reason = reason.strip()
    if not reason:
        raise ApplicationError("Say what the mail server's log shows.", {"field": "reason"})
    phi_check(office=email.office, fields={"reason": reason})
    if delivered:
        email.status, email.sent_at = EmailStatus.SENT, email.claimed_at
    else:
        email.status, email.next_attempt_at, email.stuck_reported_at = EmailStatus.PENDING, None, None
    email.save(update_fields=["status", "sent_at", "next_attempt_at", "stuck_reported_at", "updated_at"])
    audit_record(
        action="email.resolved",
        actor=actor,
        target=email,
        office_id=email.office_id,
        reason=reason,
        data={"kind": email.kind, "delivered": delivered},
    )
    return email


def notifications_dispatch(*, now: datetime | None = None, send: bool = True) -> DispatchStats:
    """The dispatcher (beat and after commit): events → rows, warnings, stuck rows, sends."""
    now = now or timezone.now()
    stats = emails_from_audit_trail()
    stats.warnings = suspension_warnings_sweep(now=now)
    stats.created += stats.warnings
    stats.stuck_reported = outbound_emails_report_stuck(now=now)
    if send:
        outbound_emails_send_due(now=now, stats=stats)
    if stats.created or stats.sent or stats.failed or stats.refused or stats.retrying or stats.stuck_reported:
        logger.info("emails: %s", stats)
    return stats


__all__ = ["EmailKind", "notifications_dispatch", "notify_credit_note_issued", "outbound_email_send"]
