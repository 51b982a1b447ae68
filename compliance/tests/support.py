"""A month of billing and audit activity, built through the services (November 2026, UTC)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from django.contrib.auth import authenticate, get_user_model
from django.test import Client

from audit.services import audit_anchor, audit_seal
from billing.engine.run import billing_run
from billing.models import Invoice, InvoiceKind
from billing.phi_guard import PhiRefused
from billing.services import invoice_create_one_off, invoice_void, patient_activate, subscription_create
from billing.tests.support.factories import OfficeFactory, PatientFactory, PlanFactory, at
from compliance.models import AccessReview
from compliance.services import access_review_record
from offices.models import Office, Role
from offices.services import office_member_grant
from patients.models import Patient

# Recognisable PHI: none of these may appear anywhere in the evidence archive.
PATIENTS = [
    # first, last, birth date, MRN, email, phone
    ("Quintessa", "Vandermolen", date(1944, 7, 3), "MRN-QV-99120", "quintessa.v@phi.example", "312-555-0191"),
    ("Bartholomew", "Okonkwoize", date(1951, 12, 24), "MRN-BO-99121", "bart.ok@phi.example", "312-555-0192"),
    ("Philippa", "Grzeszczak", date(1962, 2, 14), "MRN-PG-99122", "pippa.g@phi.example", "312-555-0193"),
    ("Ignatius", "Throckbottom", date(1977, 9, 9), "MRN-IT-99123", "iggy.t@phi.example", "312-555-0194"),
    ("Wilhelmina", "Przybylskiova", date(1988, 5, 30), "MRN-WP-99124", "willa.p@phi.example", "312-555-0195"),
    ("Cornelius", "Ashworthingham", date(1990, 1, 17), "MRN-CA-99125", "neil.a@phi.example", "312-555-0196"),
]


def phi_strings() -> list[str]:
    """Every written form under which a seeded patient could leak."""
    out: list[str] = []
    for first, last, dob, mrn, email, phone in PATIENTS:
        out += [first, last, mrn, mrn.removeprefix("MRN-"), email, email.split("@")[0], phone, phone.replace("-", "")]
        out += [dob.isoformat(), f"{dob:%m/%d/%Y}", f"{dob:%Y%m%d}", f"{dob:%B} {dob.day}, {dob.year}"]
    return out


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@dataclass
class MonthWorld:
    lakeside: Office
    harbor: Office
    patients: list[Patient]
    operator: Any
    review: AccessReview
    cycle_invoice: Invoice
    setup_invoice: Invoice
    one_off: Invoice


def build_november(client: Client) -> MonthWorld:
    """Hand-computed figures (plan 1000¢ a patient, no minimum, 2000¢ setup):

    - Lakeside (UTC): 3 patients active from Oct 20, subscribed Oct 25 12:00 (its setup fee
      is October's). Patient 4 activated Nov 5. The run of Nov 25 00:05 finalizes the cycle
      [Oct 25 12:00, Nov 25): 3 recurring + 1 activation line = 4 lines, 4000¢.
    - Harbor (UTC): 2 patients active from Nov 1, subscribed Nov 10 10:00: setup invoice
      2000¢ (1 line, no patient line) finalized Nov 10; its cycle ends Dec 10 (not November).
      A one-off of 2 lines, 5000¢ + 2 × 2500¢ = 10000¢, finalized Nov 12, voided Nov 13.
    - One PHI-guard refusal (Nov 14), one role granted (Nov 15), one login and one failed
      login (Nov 16), one access review of October (Nov 20), chain sealed and anchored Nov 26.
    - After the month: Harbor's cycle finalized by the run of Dec 10 00:05."""
    PlanFactory(code="basic", name="Basic", per_patient_cents=1000, minimum_cents=0, setup_fee_cents=2000)
    user_model = get_user_model()
    with at(utc(2026, 10, 1, 9)):
        operator = user_model.objects.create_superuser(username="root", email="root@vendor.example", password="pw-1")
        member = user_model.objects.create_user(username="lakeside-billing", password="pw-2")
        lakeside = OfficeFactory(name="Lakeside Clinic", timezone="UTC")
        harbor = OfficeFactory(name="Harbor Clinic", timezone="UTC")
        patients = [
            PatientFactory(
                office=lakeside if i < 4 else harbor,
                first_name=first,
                last_name=last,
                date_of_birth=dob,
                mrn=mrn,
                email=email,
                phone=phone,
            )
            for i, (first, last, dob, mrn, email, phone) in enumerate(PATIENTS)
        ]
    with at(utc(2026, 10, 20, 9)):
        for p in patients[:3]:
            patient_activate(patient=p)
    with at(utc(2026, 10, 25, 12)):
        subscription_create(office=lakeside, plan_code="basic")
    with at(utc(2026, 11, 1, 9)):
        for p in patients[4:]:
            patient_activate(patient=p)
    with at(utc(2026, 11, 5, 10)):
        patient_activate(patient=patients[3])
    with at(utc(2026, 11, 10, 10)):
        subscription_create(office=harbor, plan_code="basic")
    with at(utc(2026, 11, 12, 10)):
        one_off = invoice_create_one_off(
            office=harbor,
            lines=[
                {"description": "Onboarding session", "amount_cents": 5000},
                {"description": "Staff training", "amount_cents": 2500, "quantity": 2},
            ],
            actor=operator,
        )
    with at(utc(2026, 11, 13, 10)):
        invoice_void(invoice=one_off, actor=operator, reason="Issued twice")
    with at(utc(2026, 11, 14, 10)):
        try:
            invoice_create_one_off(
                office=lakeside, lines=[{"description": "Follow-up for Vandermolen", "amount_cents": 100}]
            )
        except PhiRefused:
            pass
        else:  # pragma: no cover - the guard must refuse
            raise AssertionError("the PHI guard let a patient's name through")
    with at(utc(2026, 11, 15, 10)):
        office_member_grant(office=lakeside, user=member, role=Role.OFFICE_BILLING_ADMIN, actor=operator)
    with at(utc(2026, 11, 16, 10)):
        assert client.login(username="root", password="pw-1")
        client.logout()
        assert authenticate(username="root", password="wrong") is None
    with at(utc(2026, 11, 20, 10)):
        review = access_review_record(
            reviewer=operator,
            period_start=utc(2026, 10, 1),
            period_end=utc(2026, 11, 1),
            findings="No unexplained access. Two operator logins, both expected.",
            follow_ups="None.",
        )
    with at(utc(2026, 11, 25, 0, 5)):
        billing_run()
    with at(utc(2026, 11, 26, 0)):
        audit_seal()
        audit_anchor()
    with at(utc(2026, 12, 10, 0, 5)):
        billing_run()
        audit_seal()
    cycle = Invoice.objects.get(office=lakeside, kind=InvoiceKind.CYCLE, period_end=utc(2026, 11, 25))
    setup = Invoice.objects.get(office=harbor, is_setup_fee=True)
    one_off.refresh_from_db()
    return MonthWorld(lakeside, harbor, patients, operator, review, cycle, setup, one_off)
