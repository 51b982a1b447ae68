"""The one place where we hand verified Stripe events to dj-stripe (spec §8, §9).

dj-stripe mirrors Stripe objects into its own tables. We use it for that mirror only:
our view (billing.stripe.webhooks) owns the endpoint and the signature check, our reactions
(billing.stripe.events) own local invoices and offices, and dj-stripe's own webhook view
is never routed (it keeps secrets and full bodies in the database, and with DEBUG it
accepts a secret from a request header).

One thing has to be changed in dj-stripe 2.11: the first time it syncs anything it
resolves the "owner account" of an object with

    StripeModel._find_owner_account → Account.get_or_retrieve_for_api_key(key)
                                    → APIKey.objects.get_or_create_by_api_key(key)

which writes the raw secret key into `djstripe_apikey.secret`. Our rule is that no key
or webhook secret is ever written to the database. `install()` replaces
`Account.get_or_retrieve_for_api_key` with `platform_account()`, which retrieves the
account (`GET /v1/account`) and keeps its id in memory, keyed by a hash of the key — no
APIKey row. Migration billing/0004 adds database guards that refuse any APIKey row and
any stored webhook-endpoint secret, so a dj-stripe path we did not intercept fails loudly
instead of storing a secret.

A failure inside dj-stripe never fails our reactions: `mirror_event` returns the error,
and the caller logs and audits it."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from django.conf import settings

logger = logging.getLogger("billing.djstripe")

_lock = threading.Lock()
_installed = False
_account_ids: dict[str, str] = {}  # sha256(api key) → Stripe account id; never the key itself


_KEY_SHAPES = re.compile(r"\b(sk|rk|pk|whsec)_[A-Za-z0-9_]+")


def redact(text: str) -> str:
    """`text` without anything shaped like a Stripe key or webhook secret (dj-stripe puts
    the raw key in some of its error messages): safe to log, store or audit."""
    for secret in (settings.STRIPE_SECRET_KEY, settings.STRIPE_WEBHOOK_SECRET, settings.STRIPE_WEBHOOK_SECRET_NEXT):
        if secret:
            text = text.replace(secret, "[redacted]")
    return _KEY_SHAPES.sub(lambda m: f"{m.group(1)}_[redacted]", text)


def _fingerprint(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def platform_account(api_key: str) -> Any:
    """The Stripe account `api_key` belongs to, as a dj-stripe Account row — created and
    synced on first use, without storing the key (replaces
    `Account.get_or_retrieve_for_api_key`)."""
    from djstripe.models import Account
    from djstripe.settings import djstripe_settings

    fingerprint = _fingerprint(api_key)
    account_id = _account_ids.get(fingerprint)
    if account_id:
        found = Account.objects.filter(id=account_id).first()
        if found is not None:
            return found
    data = Account.stripe_class.retrieve(api_key=api_key, stripe_version=djstripe_settings.STRIPE_API_VERSION)
    # Remember the id first: syncing the Account asks for its own owner account again.
    _account_ids[fingerprint] = str(data["id"])
    account, created = Account.objects.get_or_create(id=data["id"])
    if created:
        account = Account.sync_from_stripe_data(data, api_key=api_key)
    return account


def install() -> None:
    """Make dj-stripe resolve its platform account without an APIKey row. Idempotent."""
    global _installed
    if _installed:
        return
    with _lock:
        if _installed:
            return
        from djstripe.models import Account

        Account.get_or_retrieve_for_api_key = classmethod(lambda cls, api_key: platform_account(api_key))
        _installed = True


@dataclass(frozen=True)
class MirrorResult:
    ok: bool
    error: str = ""


def mirror_event(data: dict[str, Any]) -> MirrorResult:
    """Hand one verified event (the parsed body) to dj-stripe's processing, which records
    its Event row and syncs the object it is about. Never raises."""
    try:
        install()
        from djstripe.models import Event

        Event.process(data, api_key=settings.STRIPE_SECRET_KEY)
    except Exception as exc:  # dj-stripe's failures must not fail our reactions
        error = redact(f"{type(exc).__name__}: {exc}")[:500]
        logger.error("dj-stripe could not process event %s: %s", data.get("id"), error)
        return MirrorResult(ok=False, error=error)
    return MirrorResult(ok=True)


def mirror_event_by_id(event_id: str) -> MirrorResult:
    """Re-read one event from Stripe and hand it to dj-stripe (the deferred mirror: a task
    after the reaction, never inside the webhook request). Never raises."""
    try:
        install()
        from djstripe.models import Event
        from djstripe.settings import djstripe_settings

        data = Event.stripe_class.retrieve(
            id=event_id, api_key=settings.STRIPE_SECRET_KEY, stripe_version=djstripe_settings.STRIPE_API_VERSION
        )
    except Exception as exc:
        error = redact(f"{type(exc).__name__}: {exc}")[:500]
        logger.error("could not re-read event %s for dj-stripe: %s", event_id, error)
        return MirrorResult(ok=False, error=error)
    return mirror_event(data)
