"""`POST /stripe/webhook/`: Stripe events in, verified, recorded once, applied (spec §8, §9).

1. The body is read only up to `STRIPE_WEBHOOK_MAX_BODY_BYTES` (413 beyond, before any
   parsing); nothing about an unverified body is parsed or stored.
2. `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]` is checked against HMAC-SHA256 of
   `"{t}.{raw body}"` with `STRIPE_WEBHOOK_SECRET` and, during a rotation,
   `STRIPE_WEBHOOK_SECRET_NEXT` (any `v1` may match either). `t` must be within
   `STRIPE_WEBHOOK_TOLERANCE_SECONDS` of now, in the past *or* the future.
   Any failure → 4xx and a `webhook.rejected` audit entry with the reason and the client
   IP, never the body. Headers such as dj-stripe's `X-Djstripe-Webhook-Secret` are ignored.
3. A verified event is recorded once by its id (`StripeEvent`, unique): the delivery that
   inserts the row audits `webhook.received` and reacts (billing.stripe.events); concurrent
   or repeated deliveries of the same id find the row and do nothing (`webhook.duplicate`),
   unless an earlier attempt failed or was abandoned, in which case one of them retries.
4. Then the event goes to dj-stripe's mirror (billing.stripe.djstripe_adapter); a mirror failure
   is logged and audited but does not fail the delivery.

Nothing here runs inside a transaction: reactions read Stripe first, then write under
the office lock in their own transaction."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from audit.context import current_source
from audit.models import ActorType, Outcome
from audit.services import audit_record, deferred_sealing
from billing.models import StripeEvent, StripeEventStatus, WebhookRejectionWindow
from billing.stripe.djstripe_adapter import MirrorResult, mirror_event, mirror_event_by_id, redact
from billing.stripe.events import NotAnEvent, VerifiedEvent, stripe_event_react
from ops.counters import webhook_delivery_count

logger = logging.getLogger("billing.webhooks")

# A claim older than this is presumed abandoned (a worker killed mid-reaction): the next
# delivery of the same event takes it over.
CLAIM_TIMEOUT = timedelta(minutes=5)
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class Rejected(Exception):
    def __init__(self, reason: str, status: int = 400, *, event_id: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.event_id = event_id


@dataclass(frozen=True)
class Signature:
    timestamp: int
    secret: str  # which secret matched: "current" or "next" (never the secret itself)


def _secrets() -> list[tuple[str, str]]:
    pairs = [("current", settings.STRIPE_WEBHOOK_SECRET), ("next", settings.STRIPE_WEBHOOK_SECRET_NEXT)]
    return [(label, secret) for label, secret in pairs if secret]


def signature_verify(*, payload: bytes, header: str, now: float, tolerance: int) -> Signature:
    """Stripe's scheme (compatible with stripe.WebhookSignature.verify_header), plus a
    refusal of timestamps too far in the future, which stripe-python accepts."""
    secrets = _secrets()
    if not secrets:
        raise Rejected("no webhook secret configured", 400)
    timestamps: list[str] = []
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            timestamps.append(value)
        elif key == "v1":
            signatures.append(value)
    if len(timestamps) != 1 or not _TIMESTAMP.fullmatch(timestamps[0]) or not signatures:
        raise Rejected("malformed signature header")
    timestamp = int(timestamps[0])
    signed = timestamps[0].encode() + b"." + payload
    matched = ""
    for label, secret in secrets:
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest().encode()
        if any(hmac.compare_digest(expected, candidate.encode("utf-8", "replace")) for candidate in signatures):
            matched = label
            break
    if not matched:
        raise Rejected("signature mismatch")
    if timestamp < now - tolerance:
        raise Rejected("timestamp outside tolerance (too old)")
    if timestamp > now + tolerance:
        raise Rejected("timestamp outside tolerance (in the future)")
    return Signature(timestamp=timestamp, secret=matched)


def _read_body(request: HttpRequest) -> bytes:
    limit = settings.STRIPE_WEBHOOK_MAX_BODY_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError as exc:
        raise Rejected("invalid Content-Length") from exc
    if declared > limit:
        raise Rejected("body too large", 413)
    body = request.read(limit + 1)
    if len(body) > limit:
        raise Rejected("body too large", 413)
    return body


def _first_in_window(reason: str, now: datetime) -> bool:
    """Count the rejection in its (source, reason, minute) window; True if it opened it."""
    source = current_source().source_ip or ""
    window = now.replace(second=0, microsecond=0)
    try:
        with transaction.atomic():
            WebhookRejectionWindow.objects.create(
                source_ip=source, reason=reason[:100], window_start=window, last_at=now
            )
    except IntegrityError:
        WebhookRejectionWindow.objects.filter(source_ip=source, reason=reason[:100], window_start=window).update(
            count=F("count") + 1, last_at=now
        )
        return False
    return True


def webhook_rejections_summarize(*, now: datetime | None = None) -> int:
    """Audit the count of every closed minute that rejected more than one delivery (once
    each, by a conditional update). Runs on each new window and hourly (beat)."""
    now = now or timezone.now()
    current = now.replace(second=0, microsecond=0)
    done = 0
    for window in WebhookRejectionWindow.objects.filter(summarized_at__isnull=True, window_start__lt=current):
        if not WebhookRejectionWindow.objects.filter(pk=window.pk, summarized_at__isnull=True).update(
            summarized_at=now
        ):
            continue
        if window.count > 1:
            audit_record(
                action="webhook.rejections_summarized",
                actor_type=ActorType.SYSTEM,
                target_type="stripe.event",
                outcome=Outcome.DENIED,
                reason=window.reason,
                data={
                    "source_ip": window.source_ip or None,
                    "window_start": window.window_start.isoformat(),
                    "count": window.count,
                    "last_at": window.last_at.isoformat(),
                },
            )
            done += 1
    return done


def _reject(request: HttpRequest, rejected: Rejected, *, size: int | None) -> HttpResponse:
    """Answer a rejected delivery. The first of its source and reason in a minute is
    audited; the others are counted and audited as one summary (spec §9: no flood)."""
    now = timezone.now()
    if _first_in_window(rejected.reason, now):
        webhook_rejections_summarize(now=now)
        audit_record(
            action="webhook.rejected",
            actor_type=ActorType.SYSTEM,
            target_type="stripe.event",
            target_id=rejected.event_id or None,
            outcome=Outcome.DENIED,
            reason=rejected.reason,
            data={
                "status": rejected.status,
                "bytes": size,
                "signature_header": "Stripe-Signature" in request.headers,
                "window_start": now.replace(second=0, microsecond=0).isoformat(),
            },
        )
    logger.warning("Stripe webhook rejected: %s", rejected.reason)
    webhook_delivery_count(outcome="rejected", reason=rejected.reason)  # /metrics (ops/counters.py)
    return JsonResponse({"error": rejected.reason}, status=rejected.status)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    size: int | None = None
    try:
        body = _read_body(request)
        size = len(body)
        signature = signature_verify(
            payload=body,
            header=request.headers.get("Stripe-Signature", ""),
            now=time.time(),
            tolerance=settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS,
        )
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise Rejected("body is not JSON") from exc
        try:
            event = VerifiedEvent.from_payload(payload)
        except NotAnEvent as exc:
            raise Rejected(str(exc)) from exc
        if event.livemode != settings.STRIPE_LIVE_MODE:
            raise Rejected("livemode does not match this deployment's key", event_id=event.id)
    except Rejected as rejected:
        return _reject(request, rejected, size=size)
    # The delivery's entries (received, the reaction's, processed or failed) are chained by
    # one seal when it is done rather than one per transaction: two seals per event took
    # the chain head's lock twice, and concurrent deliveries queued on it.
    with deferred_sealing():
        return _handle(event=event, payload=payload, signature=signature)


# --- Recording once, reacting once ----------------------------------------------------------


def _record(event: VerifiedEvent, signature: Signature) -> tuple[StripeEvent, bool]:
    """Insert the event row; the unique event id decides who owns the reaction."""
    office = event.office()
    try:
        with transaction.atomic():
            row = StripeEvent.objects.create(
                event_id=event.id,
                type=event.type,
                livemode=event.livemode,
                api_version=event.api_version,
                object_type=event.object_type,
                object_id=event.object_id,
                stripe_created=event.created,
                office=office,
                claimed_at=timezone.now(),
            )
            audit_record(
                action="webhook.received",
                actor_type=ActorType.STRIPE,
                target=row,
                office_id=office.pk if office else None,
                data={
                    "event_id": event.id,
                    "type": event.type,
                    "object_id": event.object_id,
                    "secret": signature.secret,
                },
            )
            return row, True
    except IntegrityError:
        pass
    StripeEvent.objects.filter(event_id=event.id).update(deliveries=F("deliveries") + 1)
    row = StripeEvent.objects.get(event_id=event.id)
    audit_record(
        action="webhook.duplicate",
        actor_type=ActorType.STRIPE,
        target=row,
        office_id=row.office_id,
        data={"event_id": event.id, "type": event.type, "status": row.status},
    )
    return row, False


def _claim_retry(row: StripeEvent) -> bool:
    """Take over an event whose earlier attempt failed or was abandoned (one winner)."""
    now = timezone.now()
    claimable = Q(status=StripeEventStatus.FAILED) | Q(
        status=StripeEventStatus.RECEIVED, claimed_at__lt=now - CLAIM_TIMEOUT
    )
    taken = StripeEvent.objects.filter(claimable, pk=row.pk, claimed_at=row.claimed_at).update(
        status=StripeEventStatus.RECEIVED, claimed_at=now, attempts=F("attempts") + 1
    )
    return taken == 1


def _handle(*, event: VerifiedEvent, payload: dict[str, Any], signature: Signature) -> HttpResponse:
    row, created = _record(event, signature)
    if not created and not _claim_retry(row):
        webhook_delivery_count(outcome="duplicate")
        return JsonResponse({"received": True, "event": event.id, "status": "duplicate"})
    try:
        outcome = stripe_event_react(event=event)
    except Exception as exc:
        error = redact(f"{type(exc).__name__}: {exc}")[:500]
        logger.exception("Stripe event %s (%s) failed", event.id, event.type)
        StripeEvent.objects.filter(pk=row.pk).update(status=StripeEventStatus.FAILED, error=error)
        audit_record(
            action="webhook.failed",
            actor_type=ActorType.STRIPE,
            target=row,
            office_id=row.office_id,
            outcome=Outcome.FAILURE,
            reason=type(exc).__name__,
            data={"event_id": event.id, "type": event.type},
        )
        _request_mirror(row, payload)
        webhook_delivery_count(outcome="failed")
        return JsonResponse({"received": True, "event": event.id, "status": "failed"}, status=500)
    StripeEvent.objects.filter(pk=row.pk).update(
        status=StripeEventStatus.PROCESSED, outcome=outcome[:200], error="", processed_at=timezone.now()
    )
    _request_mirror(row, payload)
    webhook_delivery_count(outcome="accepted")
    return JsonResponse({"received": True, "event": event.id, "status": "processed", "outcome": outcome})


def _request_mirror(row: StripeEvent, payload: dict[str, Any]) -> None:
    """dj-stripe's mirror calls Stripe inside its own transaction: where Stripe tasks run
    (STRIPE_PUSH_ENABLED), it runs in a task after the reaction, never in the webhook
    request (spec §8). Without a worker (development, most tests) it runs here."""
    if not settings.STRIPE_PUSH_ENABLED:
        _record_mirror(row, mirror_event(payload))
        return
    from billing.stripe.tasks import stripe_event_mirror_task

    try:
        stripe_event_mirror_task.delay(row.pk)
    except Exception as exc:  # the broker is down: the reaction stands; the mirror is behind
        error = f"mirror not queued: {type(exc).__name__}"
        logger.error("Stripe event %s: %s", row.event_id, error)
        StripeEvent.objects.filter(pk=row.pk).update(mirrored=False, mirror_error=error)


def stripe_event_mirror(*, stripe_event_id: int) -> bool:
    """The deferred mirror of one recorded event (the task's body). True if mirrored."""
    row = StripeEvent.objects.get(pk=stripe_event_id)
    if row.mirrored:
        return True
    result = mirror_event_by_id(row.event_id)
    _record_mirror(row, result)
    return result.ok


def _record_mirror(row: StripeEvent, result: MirrorResult) -> None:
    if result.ok:
        StripeEvent.objects.filter(pk=row.pk).update(mirrored=True, mirror_error="")
        return
    StripeEvent.objects.filter(pk=row.pk).update(mirrored=False, mirror_error=result.error)
    audit_record(
        action="stripe.mirror_failed",
        actor_type=ActorType.SYSTEM,
        target=row,
        office_id=row.office_id,
        outcome=Outcome.FAILURE,
        reason=result.error[:200],
        data={"event_id": row.event_id, "type": row.type},
    )
