"""Stripe-hosted payment-method pages (spec §8: card data never touches this system)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from audit.services import audit_record
from billing.selectors import office_currency
from billing.stripe.gateway import Gateway, GatewayError
from billing.stripe.push import customer_ensure
from config.errors import ApplicationError
from offices.models import Office


class StripeUnavailable(ApplicationError):
    """Stripe could not be reached; the API answers 503."""

    status_code = 503


@dataclass(frozen=True)
class SetupSession:
    """The hosted page's id and URL."""

    id: str
    url: str


def setup_session_create(
    *, office: Office, success_url: str, cancel_url: str, actor: Any = None, gateway: Gateway | None = None
) -> SetupSession:
    """Open a Stripe Checkout setup session for the office; audited (spec §8)."""
    gw = gateway or Gateway()
    try:
        customer_id = customer_ensure(office=office, gateway=gw)
        session = gw.setup_session_create(
            office=office,
            customer_id=customer_id,
            currency=office_currency(office),
            success_url=success_url,
            cancel_url=cancel_url,
            key=f"office:{office.pk}:setup-session:{uuid.uuid4().hex}",  # one page per request
        )
    except GatewayError as exc:
        if exc.transient:
            raise StripeUnavailable("The payment provider is unavailable; try again in a minute.") from exc
        raise ApplicationError(f"The payment provider refused the request: {exc}") from exc
    audit_record(action="payment_method.session_created", actor=actor, target=office, office_id=office.pk)
    return SetupSession(id=str(session["id"]), url=str(session["url"]))
