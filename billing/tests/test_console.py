"""The console's overview page (issue 9, item 1), through Django's test client: the figures
of billing/overview.py shown in people's terms, the view audited, a user who may not view
invoices sees no figures, and the page's queries do not grow with the number of offices.
(The figures themselves are checked against hand-computed values in test_overview.py;
the page in a real browser in config/tests/browser.)"""

from __future__ import annotations

from datetime import datetime
from html import unescape
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEvent
from billing.tests.support.factories import at
from billing.tests.support.stripe_helpers import billed_office

pytestmark = pytest.mark.django_db
CHI = ZoneInfo("America/Chicago")
APRIL = datetime(2026, 4, 20, 12, tzinfo=CHI)  # after billed_office's first cycle (2026-04-10)


@pytest.fixture
def operator(client: Client) -> Client:
    client.force_login(get_user_model().objects.create_superuser("op", "op@example.com", "pw"))
    return client


def test_it_shows_the_months_figures_in_major_units_and_audits_the_view(operator: Client) -> None:
    billed_office(patients=3)  # setup fee 50000 finalized 2026-03-10; first cycle 15000 (the minimum) 2026-04-10
    with at(APRIL):
        page = operator.get("/admin/", {"month": "2026-04"})
    html = page.content.decode()
    assert page.status_code == 200
    assert 'data-figure="Billed">$150.00 USD<' in html  # the cycle's 15000 cents (the setup fee was March's)
    assert 'data-figure="Collected">$0.00 USD<' in html
    assert 'data-figure="Outstanding">$650.00 USD<' in html  # both open: 50000 + 15000 cents
    assert "April 2026, months in America/New_York" in html
    assert "_cents" not in html and "amount_finalized" not in html
    [viewed] = AuditEvent.objects.filter(action="console.overview_viewed")
    assert viewed.data == {"month": "2026-04", "currency": "usd"}
    assert viewed.actor_label == "op" or viewed.actor_id


def test_a_month_that_is_not_one_is_named_and_the_current_month_shown(operator: Client) -> None:
    with at(APRIL):
        page = operator.get("/admin/", {"month": "2026-13"})
        future = operator.get("/admin/", {"month": "2026-09"})
    assert "'2026-13' is not a month; use the form YYYY-MM" in unescape(page.content.decode())
    assert "April 2026" in page.content.decode()
    assert "The month 2026-09 has not started yet." in unescape(future.content.decode())


def test_a_staff_user_who_may_not_view_invoices_sees_no_figures(client: Client) -> None:
    user = get_user_model().objects.create_user("clerk", "c@example.com", "pw", is_staff=True)
    client.force_login(user)
    page = client.get("/admin/")
    assert page.status_code == 200
    assert "data-figure" not in page.content.decode()
    assert not AuditEvent.objects.filter(action="console.overview_viewed").exists()


def test_the_pages_queries_do_not_grow_with_the_number_of_offices(operator: Client) -> None:
    def queries() -> int:
        with at(APRIL), CaptureQueriesContext(connection) as captured:
            assert operator.get("/admin/", {"month": "2026-04"}).status_code == 200
        return len(captured)

    for _ in range(3):
        billed_office(patients=2)
    with_three = queries()
    for _ in range(9):
        billed_office(patients=2)
    assert queries() == with_three
    print(f"overview page: {with_three} queries at 3 offices and at 12")
