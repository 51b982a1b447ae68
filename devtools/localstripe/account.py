"""``GET /v1/account`` (a fixed, fully onboarded US test account), ``GET /v1/accounts/{id}``
and Checkout Sessions in ``setup`` mode.
"""

from __future__ import annotations

import secrets
import time

from localstripe import resources as ls

from devtools.localstripe.common import ACCOUNT_NAME, DEFAULT_CURRENCY, Data, _error

ACCOUNT_ID = "acct_1LocalStripeTest0"
ACCOUNT_CREATED = 1_700_000_000


def account_object() -> Data:
    """A fixed, fully onboarded US test account (``GET /v1/account``)."""
    requirements: Data = {
        "alternatives": [],
        "current_deadline": None,
        "currently_due": [],
        "disabled_reason": None,
        "errors": [],
        "eventually_due": [],
        "past_due": [],
        "pending_verification": [],
    }
    return {
        "id": ACCOUNT_ID,
        "object": "account",
        "business_profile": {
            "mcc": None,
            "name": ACCOUNT_NAME,
            "product_description": None,
            "support_address": None,
            "support_email": None,
            "support_phone": None,
            "support_url": None,
            "url": None,
        },
        "business_type": "company",
        "capabilities": {"card_payments": "active", "transfers": "active"},
        "charges_enabled": True,
        "controller": {"type": "account"},
        "country": "US",
        "created": ACCOUNT_CREATED,
        "default_currency": DEFAULT_CURRENCY,
        "details_submitted": True,
        "email": None,
        "external_accounts": {
            "object": "list",
            "data": [],
            "has_more": False,
            "url": f"/v1/accounts/{ACCOUNT_ID}/external_accounts",
        },
        "future_requirements": requirements,
        "livemode": False,
        "metadata": {},
        "payouts_enabled": True,
        "requirements": requirements,
        "settings": {
            "bacs_debit_payments": {"display_name": None, "service_user_number": None},
            "branding": {"icon": None, "logo": None, "primary_color": None, "secondary_color": None},
            "card_issuing": {"tos_acceptance": {"date": None, "ip": None}},
            "card_payments": {
                "decline_on": {"avs_failure": False, "cvc_failure": False},
                "statement_descriptor_prefix": None,
                "statement_descriptor_prefix_kana": None,
                "statement_descriptor_prefix_kanji": None,
            },
            "dashboard": {"display_name": ACCOUNT_NAME, "timezone": "Etc/UTC"},
            "invoices": {"default_account_tax_ids": None, "hosted_payment_method_save": "offer"},
            "payments": {
                "statement_descriptor": "LOCALSTRIPE",
                "statement_descriptor_kana": None,
                "statement_descriptor_kanji": None,
            },
            "payouts": {
                "debit_negative_balances": True,
                "schedule": {"delay_days": 2, "interval": "daily"},
                "statement_descriptor": None,
            },
        },
        "tos_acceptance": {"date": ACCOUNT_CREATED},
        "type": "standard",
    }


def _account(_data: Data, _match: dict[str, str], _expand: list[str] | None) -> Data:
    return account_object()


def _checkout_session_create(data: Data, _match: dict[str, str], _expand: list[str] | None) -> Data:
    """A Checkout Session in `setup` mode (Stripe-hosted page to save a payment method).

    Only what our gateway uses: no page is served; `url` points at this server."""
    mode = data.get("mode")
    if mode != "setup":
        raise _error(400, "Only mode=setup is supported by this test server.", param="mode")
    customer = data.get("customer")
    if not customer:
        raise _error(400, "Missing required param: customer.", param="customer")
    ls.Customer._api_retrieve(customer)  # 404 like Stripe for an unknown customer
    for param in ("success_url", "cancel_url"):
        if not data.get(param):
            raise _error(400, f"Missing required param: {param}.", param=param)
    session_id = "cs_test_" + secrets.token_hex(12)
    return {
        "id": session_id,
        "object": "checkout.session",
        "mode": "setup",
        "customer": customer,
        "status": "open",
        "success_url": data["success_url"],
        "cancel_url": data["cancel_url"],
        "url": f"https://checkout.stripe.test/c/pay/{session_id}",
        "currency": data.get("currency"),
        "payment_method_types": data.get("payment_method_types") or ["card"],
        "metadata": data.get("metadata") or {},
        "livemode": False,
        "created": int(time.time()),
    }


def _account_by_id(_data: Data, match: dict[str, str], _expand: list[str] | None) -> Data:
    if match["id"] != ACCOUNT_ID:
        raise _error(404, f"No such account: '{match['id']}'", code="resource_missing", param="id")
    return account_object()
