"""assert_no_phi finds every form of a patient's PHI and nothing else (no browser, no database)."""

from __future__ import annotations

import re
from datetime import date

import pytest

from config.tests.browser.conftest import assert_no_phi, phi_found
from patients.models import Patient


def patient() -> Patient:
    return Patient(
        billing_ref="PT-7K3M9QX2",
        first_name="Margaret",
        last_name="Okonkwo",
        date_of_birth=date(1984, 7, 3),
        mrn="4417-20931",
        email="m.okonkwo@mail.example",
        phone="+1 (312) 555-0142",
    )


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("Patient: Margaret\n  Okonkwo", "first_name + last_name"),
        ("OKONKWO, MARGARET", "last_name, first_name"),
        ("Mrs Okonkwo called", "last_name"),
        ("MRN 4417-20931", "mrn"),
        ("born 1984-07-03", "date_of_birth"),
        ("born 07/03/1984", "date_of_birth"),
        ("born 7/3/1984", "date_of_birth"),
        ("born July 3, 1984", "date_of_birth"),
        ("born Jul. 3, 1984", "date_of_birth"),
        ("write to M.Okonkwo@mail.example", "email"),
        ("call 312.555.0142", "phone"),
        ("call (312) 555 0142", "phone"),
    ],
)
def test_it_finds_each_form_of_phi(text: str, field: str) -> None:
    assert f"PT-7K3M9QX2: {field}" in phi_found(text, [patient()])
    with pytest.raises(AssertionError, match=re.escape(f"PT-7K3M9QX2: {field}")):
        assert_no_phi(text, [patient()])


def test_it_allows_the_billing_ref_and_near_misses() -> None:
    text = "PT-7K3M9QX2 · Lakeshore Family Practice · Okonkwoville · 4417-209310 · 13125550142999 · 1984-07-30"
    assert phi_found(text, [patient()]) == []


def test_it_reports_fields_not_values() -> None:
    with pytest.raises(AssertionError) as caught:
        assert_no_phi("Margaret Okonkwo 4417-20931", [patient()])
    assert "Okonkwo" not in str(caught.value) and "4417" not in str(caught.value)
