"""The operators' overview (billing/overview.py, issue 9 item 1): every figure against a
history built with the services, the run, dunning, localstripe and webhooks, and computed
here by hand; and a query count that does not grow with the number of offices.

Reporting zone: America/New_York. The offices bill in Chicago (USD) and Berlin (EUR)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.models import ActorType, Outcome
from audit.services import audit_record
from billing.dunning import dunning_run
from billing.engine.run import billing_run
from billing.models import Invoice, InvoiceKind, InvoiceStatus, PushState
from billing.overview import AGING_LABELS, LIST_LIMIT, Amount, CurrencyFigures, Overview, overview
from billing.services import (
    invoice_create_one_off,
    invoice_void,
    patient_activate,
    patient_deactivate,
    plan_create,
    subscription_create,
)
from billing.stripe.events import invoice_mark_paid_out_of_band
from billing.stripe.gateway import Gateway, client
from billing.stripe.push import invoice_push
from billing.stripe.reconcile import reconcile_stripe
from billing.tests.support.factories import OfficeFactory, PatientFactory, at, operator, professional_plan
from billing.tests.support.localstripe_server import run_localstripe
from billing.tests.support.stripe_helpers import deliver, localstripe_env, stripe_post, synthetic_event
from config.errors import ApplicationError
from offices.models import CollectionMethod, Office, SubscriptionStatus
from patients.services import patient_create

CHI = ZoneInfo("America/Chicago")
BER = ZoneInfo("Europe/Berlin")
NY = ZoneInfo("America/New_York")
NOW = datetime(2026, 6, 20, 12, tzinfo=NY)  # 16:00 UTC


@pytest.fixture(autouse=True)
def reporting_zone(settings):
    settings.BILLING_DEFAULT_TIMEZONE = "America/New_York"
    settings.BILLING_GRACE_DAYS = 14


@pytest.fixture
def stripe_url(settings) -> Iterator[str]:
    # One localstripe per test: reconciliation lists every customer of the account.
    with run_localstripe() as url, localstripe_env(settings, url):
        yield url


def month_starts(last: date) -> list[date]:
    """The 12 first days of month ending with `last`."""
    index = last.year * 12 + last.month - 1
    return [date((index - k) // 12, (index - k) % 12 + 1, 1) for k in range(11, -1, -1)]


@dataclass
class History:
    alpha: Office
    bravo: Office
    charlie: Office
    inv: dict[str, Invoice]

    def number(self, name: str) -> str:
        return str(Invoice.objects.get(pk=self.inv[name].pk).number)


def build_history(url: str) -> History:
    """Chronological. A, B: Chicago, USD plan `professional` (450/patient, minimum 15000,
    setup 50000), send_invoice (due 30 days after finalization). C: Berlin, EUR plan
    `euro` (600/patient, no minimum, setup 20000), charge_automatically (due at once)."""
    gw = Gateway(client(api_base=url))
    staff = operator()
    professional_plan()
    plan_create(code="euro", name="Euro", currency="eur", per_patient_cents=600, setup_fee_cents=20000)
    a = OfficeFactory(name="Alpha Clinic", collection_method=CollectionMethod.SEND_INVOICE)
    b = OfficeFactory(name="Bravo Clinic", collection_method=CollectionMethod.SEND_INVOICE)
    c = OfficeFactory(name="Charlie Praxis", timezone="Europe/Berlin")
    a_patients = [PatientFactory(office=a) for _ in range(2)]
    b_patient = PatientFactory(office=b)
    c_patients = [PatientFactory(office=c) for _ in range(4)]
    inv: dict[str, Invoice] = {}

    def one(office: Office, **filters: object) -> Invoice:
        return Invoice.objects.select_related("office").get(office=office, **filters)

    def cycle(office: Office, start: datetime) -> Invoice:
        return one(office, kind=InvoiceKind.CYCLE, period_start=start)

    def pay(invoice: Invoice, when: datetime) -> None:
        with at(when):
            invoice_mark_paid_out_of_band(invoice=invoice, actor=staff, note="Cheque 1001", gateway=gw)

    def run(when: datetime) -> None:
        with at(when):
            billing_run()

    with at(datetime(2026, 3, 9, 9, tzinfo=CHI)):
        for p in a_patients:
            patient_activate(patient=p)
    with at(datetime(2026, 3, 10, 14, tzinfo=CHI)):
        subscription_create(office=a, plan_code="professional")
    inv["a_setup"] = one(a, is_setup_fee=True)  # 50000, due 04-09
    with at(datetime(2026, 3, 31, 10, tzinfo=BER)):
        for p in c_patients[:3]:
            patient_activate(patient=p)
    with at(datetime(2026, 4, 1, 9, tzinfo=BER)):  # 03:00 New York: April
        subscription_create(office=c, plan_code="euro")
    inv["c_setup"] = one(c, is_setup_fee=True)  # 20000
    pay(inv["a_setup"], datetime(2026, 4, 1, 12, tzinfo=CHI))
    pay(inv["c_setup"], datetime(2026, 4, 2, 10, tzinfo=BER))
    with at(datetime(2026, 4, 4, 9, tzinfo=CHI)):
        patient_activate(patient=b_patient)
    with at(datetime(2026, 4, 5, 10, tzinfo=CHI)):
        subscription_create(office=b, plan_code="professional")
    inv["b_setup"] = one(b, is_setup_fee=True)  # 50000, due 05-05 10:00 CHI

    run(datetime(2026, 4, 10, 1, tzinfo=CHI))
    inv["a_c1"] = cycle(a, datetime(2026, 3, 10, 14, tzinfo=CHI))  # 2 × 450 + 14100 minimum = 15000
    run(datetime(2026, 5, 1, 0, 30, tzinfo=BER))  # 18:30 on 04-30 in New York: April
    inv["c_c1"] = cycle(c, datetime(2026, 4, 1, 9, tzinfo=BER))  # 3 × 600 = 1800
    run(datetime(2026, 5, 5, 1, tzinfo=CHI))
    inv["b_c1"] = cycle(b, datetime(2026, 4, 5, 10, tzinfo=CHI))  # 450 + 14550 = 15000, due 06-04 01:00
    pay(inv["a_c1"], datetime(2026, 5, 5, 12, tzinfo=CHI))
    run(datetime(2026, 5, 10, 1, tzinfo=CHI))
    inv["a_c2"] = cycle(a, datetime(2026, 4, 10, tzinfo=CHI))  # 15000, due 06-09 01:00
    with at(datetime(2026, 5, 15, 10, tzinfo=BER)):
        patient_activate(patient=c_patients[3])  # an activation line on C's May cycle
    with at(datetime(2026, 5, 20, 10, tzinfo=BER)):
        inv["c_unc"] = invoice_create_one_off(office=c, lines=[{"description": "Data migration", "amount_cents": 3000}])
    with at(datetime(2026, 5, 20, 10, 5, tzinfo=BER)):
        invoice_push(invoice_id=inv["c_unc"].pk, gateway=gw)
    run(datetime(2026, 6, 1, 0, 30, tzinfo=BER))  # 18:30 on 05-31 in New York: May
    inv["c_c2"] = cycle(c, datetime(2026, 5, 1, tzinfo=BER))  # 4 × 600 = 2400
    pay(inv["c_c1"], datetime(2026, 6, 2, 10, tzinfo=BER))
    with at(datetime(2026, 6, 2, 11, tzinfo=BER)):
        inv["c_void"] = invoice_create_one_off(office=c, lines=[{"description": "Training", "amount_cents": 5000}])
    with at(datetime(2026, 6, 3, 9, tzinfo=BER)):
        invoice_void(invoice=inv["c_void"], actor=staff, reason="issued in error")
    run(datetime(2026, 6, 5, 1, tzinfo=CHI))
    inv["b_c2"] = cycle(b, datetime(2026, 5, 5, tzinfo=CHI))  # 15000, due 07-05
    with at(datetime(2026, 6, 5, 10, tzinfo=BER)):
        patient_deactivate(patient=c_patients[0])
    with at(datetime(2026, 6, 8, 10, tzinfo=BER)):
        inv["c_rent"] = invoice_create_one_off(office=c, lines=[{"description": "Hardware", "amount_cents": 4000}])
    run(datetime(2026, 6, 10, 1, tzinfo=CHI))
    inv["a_c3"] = cycle(a, datetime(2026, 5, 10, tzinfo=CHI))  # 15000, due 07-10
    with at(datetime(2026, 6, 12, 10, tzinfo=CHI)):
        inv["a_work"] = invoice_create_one_off(office=a, lines=[{"description": "Workshop", "amount_cents": 7500}])
    # Written off in Stripe; its webhook. (localstripe stamps the transition with the
    # real clock, after this history's 2026-06: it was open at the end of May either way.)
    with at(datetime(2026, 6, 12, 12, tzinfo=UTC)):
        c_unc = one(c, pk=inv["c_unc"].pk)
        stripe_post(url, f"/v1/invoices/{c_unc.stripe_invoice_id}/mark_uncollectible")
        assert deliver(synthetic_event(c_unc, "invoice.marked_uncollectible")).status_code == 200
    assert Invoice.objects.get(pk=c_unc.pk).status == InvoiceStatus.UNCOLLECTIBLE
    pay(inv["a_work"], datetime(2026, 6, 15, 10, tzinfo=CHI))
    with at(datetime(2026, 6, 16, 10, tzinfo=CHI)):
        inv["b_work"] = invoice_create_one_off(
            office=b, lines=[{"description": "Workshop for the Quillfeather team", "amount_cents": 12500}]
        )
        # A patient registered later bears that name: the push is refused (push_state failed).
        patient_create(office=b, first_name="Ada", last_name="Quillfeather", date_of_birth=date(1980, 2, 3), mrn="Q7")
    with at(datetime(2026, 6, 16, 10, 5, tzinfo=CHI)):
        assert invoice_push(invoice_id=inv["b_work"].pk, gateway=gw).push_state == PushState.FAILED
    with at(datetime(2026, 6, 18, 9, tzinfo=UTC)):
        invoice_push(invoice_id=inv["c_c2"].pk, gateway=gw)
    with at(datetime(2026, 6, 18, 10, tzinfo=UTC)):  # Stripe's attempt fails: C past due from now
        assert deliver(synthetic_event(one(c, pk=inv["c_c2"].pk), "invoice.payment_failed")).status_code == 200
    with at(datetime(2026, 6, 19, 12, tzinfo=UTC)):
        reconcile_stripe(gateway=gw)  # the previous reconciliation: A's May cycle not pushed yet
    with at(datetime(2026, 6, 19, 18, tzinfo=UTC)):
        invoice_push(invoice_id=inv["a_c3"].pk, gateway=gw)
    with at(datetime(2026, 6, 20, 6, tzinfo=UTC)):
        reconcile_stripe(gateway=gw)
    with at(NOW):
        dunning_run(now=NOW)
    for office in (a, b, c):
        office.refresh_from_db()
    return History(alpha=a, bravo=b, charlie=c, inv=inv)


@pytest.mark.django_db(transaction=True)
def test_it_reports_the_current_month_and_what_needs_an_operator(stripe_url):
    h = build_history(stripe_url)
    a, b, c = h.alpha, h.bravo, h.charlie
    assert (a.subscription_status, b.subscription_status, c.subscription_status) == (
        "past_due",
        "suspended",
        "past_due",
    )

    ov = overview(now=NOW)

    assert ov.month == date(2026, 6, 1) and ov.zone == "America/New_York"
    assert ov.starts_at == datetime(2026, 6, 1, 4, tzinfo=UTC) and ov.ends_at == datetime(2026, 7, 1, 4, tzinfo=UTC)
    assert ov.as_of == NOW
    assert ov.figures == [
        CurrencyFigures(
            currency="eur",
            billed_cents=4000,  # hardware 4000; training 5000 voided; C's May cycle was finalized 05-31 18:30 NY
            collected_cents=1800,  # C's April cycle, paid 06-02
            outstanding_cents=2400 + 4000,  # May cycle + hardware (the write-off is not outstanding)
            past_due_cents=2400,  # May cycle, failed payment 06-18
            mrr_cents=0,  # C's June cycle starts 06-01 00:00 Berlin = 05-31 18:00 NY: May
            mrr_draft_cents=0,
        ),
        CurrencyFigures(
            currency="usd",
            billed_cents=15000 + 15000 + 7500 + 12500,  # B May cycle, A May cycle, A workshop, B workshop
            collected_cents=7500,  # A workshop
            outstanding_cents=15000 + 15000 + 50000 + 15000 + 15000 + 12500,  # A c2, c3; B setup, c1, c2, workshop
            past_due_cents=15000 + 50000 + 15000,  # A c2 (due 06-09), B setup (05-05), B c1 (06-04)
            mrr_cents=2 * 450 + 1 * 450,  # June cycles, still drafts: A from 06-10, B from 06-05
            mrr_draft_cents=2 * 450 + 1 * 450,
        ),
    ]
    assert ov.active_patients == 2 + 1 + (4 - 1)  # C deactivated one on 06-05
    assert ov.billable_patients_in_month == 2 + 1  # A's and B's May cycles (finalized in June)

    months = month_starts(date(2026, 6, 1))
    expected = {(cur, m): (0, 0) for cur in ("eur", "usd") for m in months}
    expected |= {
        ("usd", date(2026, 3, 1)): (50000, 0),  # A setup
        ("usd", date(2026, 4, 1)): (15000 + 50000, 50000),  # A c1 + B setup; A setup paid 04-01
        ("usd", date(2026, 5, 1)): (15000 + 15000, 15000),  # B c1 + A c2; A c1 paid 05-05
        ("usd", date(2026, 6, 1)): (50000, 7500),
        ("eur", date(2026, 4, 1)): (20000 + 1800, 20000),  # setup + April cycle (04-30 18:30 NY); setup paid
        ("eur", date(2026, 5, 1)): (3000 + 2400, 0),  # written off later, still billed; May cycle
        ("eur", date(2026, 6, 1)): (4000, 1800),
    }
    assert {(p.currency, p.month): (p.billed_cents, p.collected_cents) for p in ov.history} == expected
    assert len(ov.history) == 24
    assert ov.patients_history == [(m, 0) for m in months[:8]] + [
        (date(2026, 3, 1), 2 + 3),  # A's two, C's three (03-31 10:00 Berlin)
        (date(2026, 4, 1), 5 + 1),  # B's
        (date(2026, 5, 1), 6 + 1),  # C's fourth (05-15)
        (date(2026, 6, 1), 7 - 1),  # as of now
    ]

    aging = {(x.currency, x.label): (x.cents, x.offices) for x in ov.aging}
    assert [(x.currency, x.label) for x in ov.aging] == [
        (cur, label) for cur in ("eur", "usd") for label in AGING_LABELS
    ]
    assert aging == {
        ("eur", "current"): (0, []),
        ("eur", "1–30"): (2400 + 4000, [(c.pk, "Charlie Praxis", 6400)]),  # due 05-31 and 06-08
        ("eur", "31–60"): (0, []),
        ("eur", "61–90"): (0, []),
        ("eur", "90+"): (0, []),
        ("usd", "current"): (15000 + 15000 + 12500, [(b.pk, "Bravo Clinic", 27500), (a.pk, "Alpha Clinic", 15000)]),
        ("usd", "1–30"): (15000 + 15000, [(a.pk, "Alpha Clinic", 15000), (b.pk, "Bravo Clinic", 15000)]),
        ("usd", "31–60"): (50000, [(b.pk, "Bravo Clinic", 50000)]),  # due 05-05 10:00 CHI: 46 days ago
        ("usd", "61–90"): (0, []),
        ("usd", "90+"): (0, []),
    }

    [failed] = ov.failed_payments
    assert ov.failed_payments_total == 1
    assert (failed.at, failed.office_id, failed.office_name, failed.number, failed.currency, failed.cents) == (
        datetime(2026, 6, 18, 10, tzinfo=UTC),
        c.pk,
        "Charlie Praxis",
        h.number("c_c2"),
        "eur",
        2400,
    )

    # Oldest first: pending more than an hour after finalization (a void: after voiding), or failed.
    stuck = [(s.number, s.push_state, s.status) for s in ov.stuck_pushes]
    assert stuck == [
        (h.number("b_setup"), "pending", "open"),
        (h.number("b_c1"), "pending", "open"),
        (h.number("a_c2"), "pending", "open"),
        (h.number("c_void"), "pending", "void"),
        (h.number("b_c2"), "pending", "open"),
        (h.number("c_rent"), "pending", "open"),
        (h.number("b_work"), "failed", "open"),
    ]
    assert ov.stuck_pushes_total == 7
    assert "PHI guard refused" in ov.stuck_pushes[-1].push_error

    [suspended] = ov.suspended_offices
    assert ov.suspended_total == 1
    assert (suspended.office_id, suspended.name, suspended.status) == (b.pk, "Bravo Clinic", "suspended")
    assert suspended.past_due_since == datetime(2026, 5, 5, 10, tzinfo=CHI)
    assert suspended.suspends_at == datetime(2026, 5, 19, 10, tzinfo=CHI)
    assert suspended.past_due == [Amount("usd", 50000 + 15000)]

    [about] = ov.about_to_suspend  # C: past due since 06-18, suspends 07-02: not within 3 days
    assert ov.about_to_suspend_total == 1
    assert (about.office_id, about.name, about.status) == (a.pk, "Alpha Clinic", "past_due")
    assert about.past_due_since == datetime(2026, 6, 9, 1, tzinfo=CHI)
    assert about.suspends_at == datetime(2026, 6, 23, 1, tzinfo=CHI)  # NOW + 3 days = 06-23 11:00 CHI
    assert about.past_due == [Amount("usd", 15000)]

    runs = [
        (r.as_of, r.status, r.offices_due, r.offices_done, r.invoices_finalized, r.failed_offices)
        for r in ov.latest_runs
    ]
    assert runs == [
        (datetime(2026, 6, 10, 1, tzinfo=CHI), "finished", 1, 1, 1, 0),
        (datetime(2026, 6, 5, 1, tzinfo=CHI), "finished", 1, 1, 1, 0),
        (datetime(2026, 6, 1, 0, 30, tzinfo=BER), "finished", 1, 1, 1, 0),
        (datetime(2026, 5, 10, 1, tzinfo=CHI), "finished", 1, 1, 1, 0),
        (datetime(2026, 5, 5, 1, tzinfo=CHI), "finished", 1, 1, 1, 0),
    ]

    # The latest reconciliation's findings only: A's May cycle was pushed in between.
    assert ov.reconciled_at == datetime(2026, 6, 20, 6, tzinfo=UTC)
    found = {(m.field, m.number, m.office_id, m.office_name, m.local, m.stripe) for m in ov.open_mismatches}
    not_pushed = [("a_c2", a, "open, push pending"), ("b_setup", b, "open, push pending")]
    not_pushed += [("b_c1", b, "open, push pending"), ("b_c2", b, "open, push pending")]
    not_pushed += [("b_work", b, "open, push failed"), ("c_void", c, "void, push pending")]
    not_pushed += [("c_rent", c, "open, push pending")]
    assert found == {("not_pushed", h.number(k), o.pk, o.name, local, "absent") for k, o, local in not_pushed}
    assert ov.open_mismatches_total == 7
    assert all(m.invoice_id for m in ov.open_mismatches)


@pytest.mark.django_db(transaction=True)
def test_it_reports_a_past_month_as_it_stood_at_its_end(stripe_url):
    h = build_history(stripe_url)
    ov = overview(month=date(2026, 5, 17), now=NOW)

    assert ov.month == date(2026, 5, 1)
    assert ov.starts_at == datetime(2026, 5, 1, 4, tzinfo=UTC) and ov.ends_at == datetime(2026, 6, 1, 4, tzinfo=UTC)
    assert ov.as_of == ov.ends_at
    assert ov.figures == [
        CurrencyFigures(
            currency="eur",
            billed_cents=3000 + 2400,  # data migration (written off in June: billed all the same), May cycle
            collected_cents=0,
            outstanding_cents=1800 + 3000 + 2400,  # April cycle (paid 06-02), data migration, May cycle
            past_due_cents=0,  # the May cycle's payment failed on 06-18
            mrr_cents=4 * 600,  # C's June cycle (from 05-31 18:00 NY), a draft with 4 recurring lines
            mrr_draft_cents=4 * 600,
        ),
        CurrencyFigures(
            currency="usd",
            billed_cents=15000 + 15000,  # B c1 (05-05), A c2 (05-10)
            collected_cents=15000,  # A c1, paid 05-05
            outstanding_cents=15000 + 50000 + 15000,  # A c2, B setup, B c1
            past_due_cents=50000,  # B setup, past due since its due date 05-05 (A c2 06-09, B c1 06-04)
            mrr_cents=15000 + 15000,  # the cycles from 05-05 (B) and 05-10 (A), both finalized since
            mrr_draft_cents=0,
        ),
    ]
    assert ov.active_patients == 2 + 1 + 4
    assert ov.billable_patients_in_month == 1 + 2 + 4  # B c1, A c2, C's May cycle
    assert ov.patients_history[-1] == (date(2026, 5, 1), 7)
    assert [p.month for p in ov.history if p.currency == "usd"] == month_starts(date(2026, 5, 1))
    # What needs an operator is as of now, whatever the month.
    assert ov.suspended_total == 1 and ov.about_to_suspend_total == 1 and ov.stuck_pushes_total == 7
    assert ov.suspended_offices[0].office_id == h.bravo.pk


@pytest.mark.django_db
def test_it_computes_months_in_the_reporting_zone_across_dst_and_refuses_future_months():
    now = datetime(2026, 3, 31, 23, 30, tzinfo=NY)  # already April in UTC
    ov = overview(now=now)
    assert ov.month == date(2026, 3, 1)
    assert ov.starts_at == datetime(2026, 3, 1, 5, tzinfo=UTC)  # EST
    assert ov.ends_at == datetime(2026, 4, 1, 4, tzinfo=UTC)  # EDT
    assert ov.figures == [] and ov.history == [] and ov.aging == []
    assert ov.open_mismatches == [] and ov.reconciled_at is None
    assert [m for m, _ in ov.patients_history] == month_starts(date(2026, 3, 1))
    with pytest.raises(ApplicationError):
        overview(month=date(2026, 4, 1), now=now)


# --- The number of queries does not grow with offices or invoices ---------------------------


def cheap_offices(n: int, start: int) -> None:
    """n send_invoice offices with one patient each: a third suspended (subscribed 04-01,
    setup fee due 05-01), a third about to be (05-09, due 06-08), a third in good standing
    (06-01, due 07-01); a failed payment each; then a run, dunning and a reconciliation."""
    subscribed = [datetime(2026, 4, 1, 10, tzinfo=CHI), datetime(2026, 5, 9, 10, tzinfo=CHI)]
    subscribed.append(datetime(2026, 6, 1, 10, tzinfo=CHI))
    offices = [
        OfficeFactory(name=f"Office {start + i:03d}", collection_method=CollectionMethod.SEND_INVOICE) for i in range(n)
    ]
    for i, office in enumerate(offices):
        with at(subscribed[i % 3] - timedelta(hours=1)):
            patient_activate(patient=PatientFactory(office=office))
        with at(subscribed[i % 3]):
            subscription_create(office=office, plan_code="professional")
    with at(datetime(2026, 6, 15, tzinfo=CHI)):
        billing_run()
    with at(datetime(2026, 6, 18, tzinfo=UTC)):
        for office in offices:
            setup = Invoice.objects.get(office=office, is_setup_fee=True)
            # The entry the webhook reaction writes (billing/stripe/events.py); Stripe is not what is measured here.
            audit_record(
                action="payment.failed",
                actor_type=ActorType.STRIPE,
                target=setup,
                office_id=office.pk,
                outcome=Outcome.FAILURE,
                data={"number": setup.number, "total_cents": setup.total_cents, "attempt_count": 1},
            )
    with at(datetime(2026, 6, 19, tzinfo=UTC)):
        reconcile_stripe(gateway=Gateway())  # no office has a Stripe customer: nothing is called
    with at(NOW):
        dunning_run(now=NOW)


def measure() -> tuple[int, Overview]:
    with CaptureQueriesContext(connection) as queries:
        ov = overview(now=NOW)
    return len(queries), ov


@pytest.mark.django_db
def test_the_number_of_queries_does_not_grow_with_the_number_of_offices():
    professional_plan()
    cheap_offices(3, start=0)
    at_3, small = measure()
    cheap_offices(27, start=3)
    at_30, large = measure()

    assert (small.suspended_total, small.about_to_suspend_total, small.failed_payments_total) == (1, 1, 3)
    assert (large.suspended_total, large.about_to_suspend_total, large.failed_payments_total) == (10, 10, 30)
    assert len(large.failed_payments) == LIST_LIMIT and large.stuck_pushes_total > LIST_LIMIT
    assert large.open_mismatches_total > LIST_LIMIT and len(large.open_mismatches) == LIST_LIMIT
    assert Office.objects.filter(subscription_status=SubscriptionStatus.SUSPENDED).count() == 10
    assert at_3 == at_30, (at_3, at_30)
    assert at_30 <= 16
    print(f"\noverview: {at_3} queries with 3 offices, {at_30} with 30")
