"""No API key or webhook secret is ever written to the database (spec §9) — dj-stripe's
tables included. A full run (customer, pushes, card payments, signed webhooks under both
rotation secrets, a rejected delivery, the dj-stripe mirror and a direct dj-stripe sync,
reconciliation), then every row of every table is read back and searched."""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Iterator

import pytest
import stripe
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction

from billing.models import InvoiceStatus, StripeEvent
from billing.stripe.djstripe_adapter import install, platform_account, redact
from billing.stripe.gateway import Gateway, client
from billing.stripe.reconcile import reconcile_stripe
from billing.tests.support.localstripe_server import run_localstripe
from billing.tests.support.stripe_helpers import (
    billed_office,
    deliver,
    events_of,
    finalized,
    localstripe_env,
    push_all,
    sign,
    wait_for,
    with_card,
)

pytestmark = pytest.mark.django_db(transaction=True)
ALNUM = string.ascii_letters + string.digits


@pytest.fixture(scope="module")
def stripe_url() -> Iterator[str]:
    with run_localstripe() as url:
        yield url


@pytest.fixture
def stripe_env(settings, stripe_url) -> Iterator[str]:
    with localstripe_env(settings, stripe_url):
        yield stripe_url


def random_key() -> str:
    return "sk_test_" + "".join(secrets.choice(ALNUM) for _ in range(48))


@pytest.fixture
def own_secrets(settings, stripe_env) -> dict[str, str]:
    key = random_key()
    settings.STRIPE_SECRET_KEY = key
    settings.STRIPE_TEST_SECRET_KEY = key  # dj-stripe's own setting, derived as in base.py
    settings.STRIPE_WEBHOOK_SECRET = f"whsec_{secrets.token_hex(24)}"
    settings.STRIPE_WEBHOOK_SECRET_NEXT = f"whsec_{secrets.token_hex(24)}"
    return {
        "STRIPE_SECRET_KEY": key,
        "STRIPE_WEBHOOK_SECRET": settings.STRIPE_WEBHOOK_SECRET,
        "STRIPE_WEBHOOK_SECRET_NEXT": settings.STRIPE_WEBHOOK_SECRET_NEXT,
    }


def every_row() -> dict[str, str]:
    """Each table's full content as text (raw SELECT: models or not, dj-stripe's too)."""
    dump: dict[str, str] = {}
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(include_views=False):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            dump[table] = "\n".join(repr(row) for row in cursor.fetchall())
    return dump


def test_a_full_run_leaves_no_key_or_webhook_secret_in_any_table(own_secrets, stripe_env):
    url = stripe_env
    office = billed_office(patients=3)
    gateway = Gateway(client(api_base=url))
    customer_id = with_card(url, office, gateway)
    push_all(office, gateway)
    wait_for(lambda: len(events_of(url, customer_id, {"invoice.paid"})) == 2, what="both invoices paid")
    events = events_of(url, customer_id)
    for n, event in enumerate(events):
        secret = own_secrets["STRIPE_WEBHOOK_SECRET_NEXT" if n % 2 else "STRIPE_WEBHOOK_SECRET"]
        assert deliver(event, secret=secret).status_code == 200
    # A rejected delivery carrying a secret-like header: neither it nor the body is kept.
    raw = json.dumps(events[0]).encode()
    rejected = deliver(
        raw,
        header=sign(raw, "whsec_wrong"),
        HTTP_X_DJSTRIPE_WEBHOOK_SECRET=own_secrets["STRIPE_WEBHOOK_SECRET"],
    )
    assert rejected.status_code == 400
    # dj-stripe's own sync path, called directly, resolves its account the same way.
    from djstripe.models import Account, APIKey, Customer, Event, Invoice

    Customer.sync_from_stripe_data(
        stripe.Customer.retrieve(customer_id, api_key=own_secrets["STRIPE_SECRET_KEY"]),
        api_key=own_secrets["STRIPE_SECRET_KEY"],
    )
    assert not reconcile_stripe(gateway=gateway).mismatches
    call_command("dumpdata", stdout=(dumped := _Sink()))

    assert {i.status for i in finalized(office)} == {InvoiceStatus.PAID}
    assert StripeEvent.objects.filter(mirrored=True).count() == len(events)
    assert Event.objects.count() == len(events) and Invoice.objects.count() == 2
    assert Customer.objects.filter(id=customer_id).exists() and Account.objects.exists()
    assert APIKey.objects.count() == 0

    tables = every_row()
    assert any(table.startswith("djstripe_") and text for table, text in tables.items())
    for name, secret in own_secrets.items():
        assert secret not in dumped.text, f"{name} in dumpdata"
        leaking = [table for table, text in tables.items() if secret in text]
        assert leaking == [], f"{name} found in {leaking}"
    # The fixed test key of the settings' default, and anything shaped like a secret.
    for table, text in tables.items():
        assert "sk_test_" not in text and "whsec_" not in text, table


def test_djstripe_resolves_its_account_without_an_api_key_row(own_secrets, stripe_env):
    from djstripe.models import Account, APIKey

    install()
    account = Account.get_or_retrieve_for_api_key(own_secrets["STRIPE_SECRET_KEY"])
    assert account.id == "acct_1LocalStripeTest0"
    assert platform_account(own_secrets["STRIPE_SECRET_KEY"]) == account
    assert APIKey.objects.count() == 0


def test_the_database_refuses_to_store_a_key_or_a_webhook_secret(own_secrets):
    from djstripe.models import APIKey, WebhookEndpoint

    with pytest.raises(IntegrityError), transaction.atomic():
        APIKey.objects.get_or_create_by_api_key(own_secrets["STRIPE_SECRET_KEY"])
    with pytest.raises(IntegrityError), transaction.atomic():
        WebhookEndpoint.objects.create(
            id="we_1",
            url="https://example.test/stripe/webhook/",
            enabled_events=["*"],
            secret=own_secrets["STRIPE_WEBHOOK_SECRET"],
            livemode=False,
        )
    assert APIKey.objects.count() == 0 and WebhookEndpoint.objects.count() == 0


def test_errors_are_stored_without_secrets(own_secrets):
    message = f"InvalidStripeAPIKey: Invalid API key: {own_secrets['STRIPE_SECRET_KEY']!r}; sk_live_{'x' * 30}"
    cleaned = redact(message)
    assert own_secrets["STRIPE_SECRET_KEY"] not in cleaned and "sk_live_x" not in cleaned
    assert "Invalid API key" in cleaned
    assert own_secrets["STRIPE_WEBHOOK_SECRET"] not in redact(f"bad {django_settings.STRIPE_WEBHOOK_SECRET}")


class _Sink:
    def __init__(self) -> None:
        self.text = ""

    def write(self, value: str) -> None:
        self.text += value

    def flush(self) -> None:
        pass
