"""The PHI guard and the texts we generate ourselves (issue 8, items 2 and 14).

A patient born on a cycle's start date, a numeric MRN equal to an amount, an id or a part
of our invoice number, a surname that is a common word or a word of a plan's name: none
of them may make the guard refuse what billing writes itself (spec §9: period dates,
amounts, billing references, our numbers and the office's own name pass). Callers say
what is theirs — `trusted=` tokens, `ours_fields=`, `Ours` values — and pass an index
built once; what a person typed is still checked."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.db import transaction
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from billing.engine.labels import PATIENT_LINE_PREFIX, patient_line_label
from billing.engine.run import billing_run
from billing.models import Invoice, InvoiceKind, InvoiceStatus, LineKind
from billing.phi_guard import (
    STRIPE_STRUCTURAL_PARAMS,
    PhiIndex,
    PhiRefused,
    invoice_tokens,
    ours,
    phi_check,
)
from billing.services import invoice_void, patient_activate, subscription_create
from billing.stripe.push import stripe_items
from billing.tests.support.factories import OfficeFactory, PatientFactory, PlanFactory, at
from offices.models import Office
from patients.models import Patient

pytestmark = pytest.mark.django_db
CHI = ZoneInfo("America/Chicago")
SUBSCRIBED = datetime(2026, 3, 10, 14, tzinfo=CHI)
FIXED_REASONS = ("voided in Stripe", "voided by an operator in the admin")


@dataclass
class Billed:
    office: Office
    cycle: Invoice  # [2026-03-10, 2026-04-10), with a minimum adjustment
    setup_fee: Invoice
    draft: Invoice  # [2026-04-10, 2026-05-10), open


@pytest.fixture
def billed() -> Billed:
    """An office on plan "Hidden Valley" (minimum 150.00, setup fee 500.00), two patients:
    one cycle billed (2 × 4.50 + a 141.00 minimum adjustment) and the setup fee."""
    PlanFactory(code="hidden-valley", name="Hidden Valley", minimum_cents=15000, setup_fee_cents=50000)
    office = OfficeFactory(name="Northside Pediatrics", billing_email="billing@northside.example", timezone=CHI.key)
    with at(SUBSCRIBED - timedelta(days=1)):
        for _ in range(2):
            patient_activate(patient=PatientFactory(office=office))
    with at(SUBSCRIBED):
        subscription_create(office=office, plan_code="hidden-valley")
    with at(datetime(2026, 4, 10, 1, tzinfo=CHI)):
        billing_run(office_ids=[office.pk])
    invoices = Invoice.objects.filter(office=office)
    return Billed(
        office=office,
        cycle=invoices.get(kind=InvoiceKind.CYCLE, status=InvoiceStatus.OPEN),
        setup_fee=invoices.get(is_setup_fee=True),
        draft=invoices.get(kind=InvoiceKind.CYCLE, status=InvoiceStatus.DRAFT),
    )


def stripe_payloads(invoice: Invoice) -> list[dict[str, Any]]:
    """What billing.stripe.push sends for the invoice: the draft, then one payload per item."""
    office = invoice.office
    payloads: list[dict[str, Any]] = [
        {
            "customer": "cus_Wardle7Holloway",
            "collection_method": office.collection_method,
            "auto_advance": False,
            "pending_invoice_items_behavior": "exclude",
            "currency": invoice.currency,
            "number": invoice.number,
            "days_until_due": office.days_until_due,
            "metadata": {"invoice_id": str(invoice.pk), "office_id": str(office.pk)},
        }
    ]
    for item in stripe_items(invoice):
        payloads.append(
            {
                "customer": "cus_Wardle7Holloway",
                "invoice": "in_1Active2Patients",
                "currency": invoice.currency,
                "description": item.description,
                "quantity": item.quantity,
                "unit_amount_decimal": Decimal(item.unit_amount_cents),
                "metadata": {"invoice_id": str(invoice.pk), "item_key": item.key},
            }
        )
    return payloads


def check_generated(index: PhiIndex, invoice: Invoice) -> None:
    """How a push checks its payloads: one index, the invoice's tokens, Stripe's structure."""
    for payload in stripe_payloads(invoice):
        index.check(payload, trusted=invoice_tokens(invoice), ours_fields=STRIPE_STRUCTURAL_PARAMS)


# --- Defect: the guard refused text we generate ------------------------------------------


def test_it_passes_the_period_of_a_cycle_when_a_patient_was_born_on_its_first_day(billed: Billed) -> None:
    PatientFactory(office=billed.office, date_of_birth=date(2026, 3, 10))
    (items_description, *_) = [item.description for item in stripe_items(billed.cycle)]
    assert items_description == "Active patients, 2026-03-10 to 2026-04-10"
    with pytest.raises(PhiRefused):  # free text of that shape, with nothing declared as ours
        phi_check(office=billed.office, fields={"description": items_description})
    check_generated(PhiIndex.for_office(billed.office), billed.cycle)
    phi_check(office=billed.office, fields={"description": items_description}, trusted=invoice_tokens(billed.cycle))


def test_a_trusted_date_passes_in_any_written_form_and_no_other_date_does(billed: Billed) -> None:
    PatientFactory(office=billed.office, date_of_birth=date(2026, 3, 10))
    PatientFactory(office=billed.office, date_of_birth=date(2026, 4, 11))
    index = PhiIndex.for_office(billed.office).trusting(date(2026, 3, 10))
    for text in ("2026-03-10", "03/10/2026", "March 10, 2026", "10 Mar 2026", "20260310"):
        index.check({"description": text})
    with pytest.raises(PhiRefused) as exc:
        index.check({"description": "from 2026-03-10 to 2026-04-11"})
    assert exc.value.kind == "birth_date"


def test_it_never_checks_numbers_so_an_mrn_equal_to_an_amount_passes_in_an_amount_field(billed: Billed) -> None:
    PatientFactory(office=billed.office, mrn="14100")  # the cycle's minimum adjustment, in cents
    (adjustment,) = [item for item in stripe_items(billed.cycle) if item.key.startswith("line:")]
    assert adjustment.unit_amount_cents == 14100
    phi_check(
        office=billed.office,
        fields={"unit_amount_decimal": Decimal(14100), "quantity": 14100, "unit_amount": 14100.0},
    )
    with pytest.raises(PhiRefused) as exc:
        phi_check(office=billed.office, fields={"note": "patient 14100"})
    assert exc.value.kind == "mrn"


def test_it_passes_amounts_written_as_amounts_when_an_mrn_is_the_same_number(billed: Billed) -> None:
    PatientFactory(office=billed.office, mrn="13650")
    for text in ("Credit of 13650 cents", "$13650 credited", "Adjustment: 13650¢", "13650 USD"):
        phi_check(office=billed.office, fields={"note": text})
    with pytest.raises(PhiRefused):
        phi_check(office=billed.office, fields={"note": "Ref 13650"})


def test_it_passes_our_invoice_number_when_an_mrn_is_one_of_its_parts(billed: Billed) -> None:
    number = billed.cycle.number
    assert number is not None and number.startswith(settings.INVOICE_NUMBER_PREFIX)
    year, seq = number.split("-")[-2:]
    PatientFactory(office=billed.office, mrn=year)
    PatientFactory(office=billed.office, mrn=seq)
    phi_check(office=billed.office, fields={"number": number, "note": f"Correction of {number}"})
    with pytest.raises(PhiRefused):
        phi_check(office=billed.office, fields={"note": f"MRN {seq}"})


def test_it_passes_our_ids_in_stripe_metadata_when_an_mrn_equals_one(billed: Billed) -> None:
    for mrn in {str(billed.cycle.pk), str(billed.office.pk)}:  # the two ids may be equal on a fresh database
        PatientFactory(office=billed.office, mrn=mrn)
    payload = {"metadata": {"invoice_id": str(billed.cycle.pk), "office_id": str(billed.office.pk)}}
    phi_check(office=billed.office, fields=payload, ours_fields=STRIPE_STRUCTURAL_PARAMS)
    with pytest.raises(PhiRefused) as exc:  # the same value in a field a person fills is checked
        phi_check(office=billed.office, fields={"metadata": {"note": str(billed.cycle.pk)}})
    assert exc.value.field_name == "metadata.note"


def test_ours_fields_name_list_items_without_their_index(billed: Billed) -> None:
    PatientFactory(office=billed.office, mrn="line:17")
    fields = {"items": [{"description": "Training", "item_key": "line:17"}]}
    phi_check(office=billed.office, fields=fields, ours_fields={"items.item_key"})
    with pytest.raises(PhiRefused):
        phi_check(office=billed.office, fields=fields)


@pytest.mark.parametrize("reason", FIXED_REASONS)
def test_it_passes_a_fixed_void_reason_whatever_the_patients_are_called(billed: Billed, reason: str) -> None:
    for i, word in enumerate(("Stripe", "Voided", "Operator", "Admin")):
        PatientFactory(office=billed.office, first_name=f"Pat{'x' * i}", last_name=word)
    with pytest.raises(PhiRefused):  # as free text, a surname standing as a word is refused
        invoice_void(invoice=billed.setup_fee, reason=reason)
    voided = invoice_void(invoice=billed.setup_fee, reason=ours(reason))
    assert voided.status == InvoiceStatus.VOID


def test_it_passes_a_plan_label_when_a_surname_is_a_word_of_the_plan_name(billed: Billed) -> None:
    PatientFactory(office=billed.office, first_name="Ann", last_name="Hidden")
    PatientFactory(office=billed.office, first_name="Bo", last_name="Valley")
    (setup_item,) = stripe_items(billed.setup_fee)
    assert setup_item.description == "Setup fee — Hidden Valley"
    with pytest.raises(PhiRefused):
        phi_check(office=billed.office, fields={"description": setup_item.description})
    index = PhiIndex.for_office(billed.office)
    check_generated(index, billed.setup_fee)
    check_generated(index, billed.cycle)  # "Monthly minimum adjustment (Hidden Valley)"
    # A trusted phrase is taken out as a phrase: the surname alone is still refused.
    for text in ("Setup fee — Hidden Valley, for Hidden", "Hidden Valley follow-up: Valley, Bo"):
        with pytest.raises(PhiRefused):
            index.check({"description": text}, trusted=invoice_tokens(billed.setup_fee))


def test_it_passes_the_offices_billing_references_even_when_a_surname_hides_in_one(billed: Billed) -> None:
    PatientFactory(office=billed.office, last_name="Ward")
    holder = PatientFactory(office=billed.office, billing_ref="PT-7WARD3K9")
    phi_check(office=billed.office, fields={"description": patient_line_label(LineKind.RECURRING, holder.billing_ref)})
    with pytest.raises(PhiRefused):
        phi_check(office=billed.office, fields={"description": f"{holder.billing_ref}, Mrs Ward"})
    other = OfficeFactory()
    PatientFactory(office=other, billing_ref="PT-9WARD0001")
    with pytest.raises(PhiRefused):  # not this office's reference: its letters are checked
        phi_check(office=billed.office, fields={"description": "PT-9WARD0001"})


def test_trusted_tokens_never_hide_part_of_an_ssn_a_phone_or_an_email(billed: Billed) -> None:
    PatientFactory(office=billed.office, phone="(646) 555-0188", email="jo.ward@mail.example")
    index = PhiIndex.for_office(billed.office).trusting("555", "0188", 45, "123", "mail.example", "jo")
    for text in ("SSN 123-45-6789", "call (646) 555-0188", "write to jo.ward@mail.example"):
        with pytest.raises(PhiRefused):
            index.check({"note": text})


def test_the_old_allow_argument_still_takes_text_out(billed: Billed) -> None:
    PatientFactory(office=billed.office, last_name="Hidden")
    phi_check(office=billed.office, fields={"note": "Hidden Valley onboarding"}, allow=["Hidden Valley"])
    with pytest.raises(PhiRefused):
        phi_check(office=billed.office, fields={"note": "Hidden Valley onboarding"})


# --- Cost: one index per office, reused ---------------------------------------------------


def test_an_index_built_once_checks_many_payloads_without_a_query(
    billed: Billed, django_assert_num_queries: Any, django_assert_max_num_queries: Any
) -> None:
    for i in range(50):
        PatientFactory(office=billed.office, date_of_birth=date(1950, 1, 1) + timedelta(days=37 * i))
    payloads = stripe_payloads(billed.cycle) + stripe_payloads(billed.setup_fee)
    tokens = invoice_tokens(billed.cycle) + invoice_tokens(billed.setup_fee)
    with django_assert_max_num_queries(1):
        index = PhiIndex.for_office(billed.office)
    assert index.patient_count == 52
    with django_assert_num_queries(0):
        for payload in payloads * 10:
            phi_check(
                office=billed.office, fields=payload, index=index, trusted=tokens, ours_fields=STRIPE_STRUCTURAL_PARAMS
            )


def test_it_refuses_an_index_built_for_another_office(billed: Billed) -> None:
    other = OfficeFactory()
    with pytest.raises(ValueError, match="not office"):
        phi_check(office=billed.office, fields={"note": "x"}, index=PhiIndex.for_office(other))


# --- Property: collisions with what we generate never refuse it ---------------------------

# Words our generated texts, fixed texts and Stripe enums are made of, and the plan's name.
WORDS = (
    "Stripe",
    "Paid",
    "Office",
    "Active",
    "Patients",
    "Patient",
    "Activated",
    "During",
    "Period",
    "Setup",
    "Monthly",
    "Minimum",
    "Adjustment",
    "Hidden",
    "Valley",
    "Voided",
    "Operator",
    "Admin",
    "Exclude",
    "Charge",
    "Automatically",
    "Send",
    "Invoice",
    "Northside",
    "Pediatrics",
    "Billing",
    "Wardle",
    "Holloway",
)


@contextmanager
def rolled_back() -> Any:
    """Each example starts from the billed office as the fixture left it."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


@st.composite
def colliding_patients(draw: st.DrawFn, billed: Billed) -> list[dict[str, Any]]:
    invoices = (billed.cycle, billed.setup_fee, billed.draft)
    boundaries = [d for inv in invoices for d in (inv.period_start, inv.period_end) if d is not None]
    dates = sorted(
        {b.astimezone(CHI).date() + timedelta(days=k) for b in boundaries for k in (-1, 0, 1)}
        | {b.date() for b in boundaries}
        | {SUBSCRIBED.date(), date(2026, 4, 9)}
    )
    numbers = [inv.number for inv in invoices if inv.number]
    amounts = {str(v) for inv in invoices for v in (inv.total_cents, inv.subtotal_cents)} | {"450", "900", "14100"}
    ids = {str(inv.pk) for inv in invoices} | {str(billed.office.pk)}
    number_parts = {part for n in numbers for part in n.split("-")}
    mrns = sorted(amounts | ids | number_parts | {f"{d:%Y%m%d}" for d in dates} | {"recurring:450", "2026"})
    phones = sorted({f"{d:%Y%m%d}00" for d in dates} | {"(202) 603-1000", "+1 (202) 604-1000"})
    count = draw(st.integers(min_value=1, max_value=4))
    chosen_mrns = draw(st.lists(st.sampled_from(mrns), min_size=count, max_size=count, unique=True))
    return [
        {
            "first_name": draw(st.sampled_from(WORDS)),
            "last_name": draw(st.sampled_from(WORDS)),
            "date_of_birth": draw(st.sampled_from(dates)),
            "mrn": mrn,
            "email": draw(st.sampled_from(["", "invoice@northside.example", "active.patients@mail.example"])),
            "phone": draw(st.sampled_from(["", *phones])),
        }
        for mrn in chosen_mrns
    ]


@hypothesis_settings(
    max_examples=int(os.environ.get("BILLING_PROPERTY_EXAMPLES", "30")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_patients_colliding_with_what_we_generate_never_cause_a_refusal_of_it(billed: Billed, data: Any) -> None:
    """Birth dates on and around the boundaries, MRNs equal to amounts, ids, parts of our
    numbers and period dates, names made of our labels' words: every payload a push of
    these invoices sends, the customer, the patient line labels and the fixed void
    reasons pass. The same patients' identifiers in free text are still refused."""
    patients = data.draw(colliding_patients(billed))
    with rolled_back():
        for fields in patients:
            PatientFactory(office=billed.office, **fields)
        index = PhiIndex.for_office(billed.office)
        for invoice in (billed.cycle, billed.setup_fee):
            check_generated(index, invoice)
            for payload in stripe_payloads(invoice)[1:2]:  # the default path agrees
                phi_check(
                    office=billed.office,
                    fields=payload,
                    trusted=invoice_tokens(invoice),
                    ours_fields=STRIPE_STRUCTURAL_PARAMS,
                )
        office = billed.office
        customer = {"name": office.name, "email": office.billing_email, "metadata": {"office_id": str(office.pk)}}
        index.check(customer, ours_fields=STRIPE_STRUCTURAL_PARAMS)
        for patient in Patient.objects.filter(office=office):
            for kind in PATIENT_LINE_PREFIX:
                index.check(
                    {"description": patient_line_label(kind, patient.billing_ref)}, trusted=PATIENT_LINE_PREFIX.values()
                )
        index.check({"reason": ours(FIXED_REASONS[0]), "other": ours(FIXED_REASONS[1])})

        # Not vacuous: what a person might type about these patients is refused, next to
        # our own text and with the same trusted tokens.
        tokens = invoice_tokens(billed.cycle)
        for fields in patients:
            full_name = f"{fields['last_name']}, {fields['first_name']}"
            with pytest.raises(PhiRefused):
                index.check({"description": f"Active patients, 2026-03-10 to 2026-04-10: {full_name}"}, trusted=tokens)
            if fields["email"] and fields["email"] != office.billing_email:
                with pytest.raises(PhiRefused):
                    index.check({"note": f"cc {fields['email']}"}, trusted=tokens)
