"""The PHI guard against the written variants of a patient's identifiers (issue 8, item 2):
invisible characters, lookalike letters, fullwidth digits, other date, phone and SSN
forms must be refused; our own texts and ordinary business words must still pass."""

from __future__ import annotations

from datetime import date

import pytest

from billing.phi_guard import PhiRefused, normalize, phi_check
from billing.tests.support.factories import OfficeFactory, PatientFactory
from offices.models import Office

pytestmark = pytest.mark.django_db

ZW = "\u200b"  # zero-width space
ZWJ = "\u200d"  # zero-width joiner
SHY = "\u00ad"  # soft hyphen
WJ = "\u2060"  # word joiner
EN = "\u2013"  # en dash


@pytest.fixture
def office() -> Office:
    office = OfficeFactory(name="Quayside Family Practice", billing_email="accounts@quayside.example")
    PatientFactory(
        office=office,
        first_name="Bartholomew",
        last_name="Quince",
        date_of_birth=date(1937, 2, 11),
        mrn="B-99121",
        email="bq@else.example",
        phone="(646) 555-0188",
    )
    PatientFactory(office=office, first_name="Ann", last_name="Lee", date_of_birth=date(1990, 12, 25), mrn="A-100200")
    return office


def check(office: Office, text: str) -> None:
    phi_check(office=office, fields={"description": text})


# Every form the issue found reaching Stripe, and the ones next to them.
MUST_REFUSE = {
    "invisible characters": [
        f"Bartho{ZW}lomew Quince",
        f"Qui{SHY}nce",
        f"Q{ZWJ}uince",
        f"Quin{WJ}ce",
        f"B-991{ZW}21",
        f"B{SHY}-99121",
        f"02/1{ZW}1/1937",
        f"1937{SHY}-02-11",
        f"bq@el{SHY}se.example",
        f"bq{ZW}@else.example",
        f"(646) 555-01{ZW}88",
        f"123-4{ZW}5-6789",
    ],
    "lookalike letters": [
        "Quіnce",  # Cyrillic і
        "Quincе",  # Cyrillic е
        "QUΙNCE",  # Greek capital iota
        "Quinсe",  # Cyrillic с
        "Ваrtholomew Quince",  # Cyrillic В and а
        "Ｑｕｉｎｃｅ",  # fullwidth
        "𝐐𝐮𝐢𝐧𝐜𝐞",  # mathematical bold
        "Quíncé",  # accents
        "bq@еlse.example",  # Cyrillic е in the email
    ],
    "birth date": [
        "02111937",
        "19370211",
        "11021937",
        "02 11 1937",
        "2 11 37",
        "Feb-11-1937",
        "1937-Feb-11",
        "1937 February 11",
        "11-Feb-37",
        "11FEB1937",
        "Feb 11 '37",
        "Febr. 11, 1937",
        "February 11th 1937",
        "the 11th of February, 1937",
        f"02{EN}11{EN}1937",
        f"1937{EN}02{EN}11",
        "1937\u221202\u221211",  # minus signs
        "０２/１１/１９３７",  # fullwidth digits
        "1937．02．11",
        "02/11/'37",
        "11.2.1937",
        "1937_02_11",
        "02 / 11 / 1937",
    ],
    "phone": [
        "646/555/0188",
        "646/555-0188",
        "646_555_0188",
        f"646{EN}555{EN}0188",
        "６４６５５５０１８８",
        "(６４６) ５５５-０１８８",
        "555-0188",
        "+1 646 555 0188",
        "+16465550188",
    ],
    "ssn": [
        "123456789",
        "SSN 123456789",
        "123.45.6789",
        f"123{EN}45{EN}6789",
        "123 45 6789",
        "123  45  6789",
        "123 - 45 - 6789",
        "123/45/6789",
        "１２３-４５-６７８９",
    ],
    "mrn": ["B99121", "b 99121", "B–99121", "Ｂ-99121"],
    "full name": ["quince,bartholomew", "Quince , Bartholomew", "BARTHOLOMEW\u00a0QUINCE"],
}


@pytest.mark.parametrize(
    "text", [pytest.param(text, id=f"{kind}: {text!a}") for kind, texts in MUST_REFUSE.items() for text in texts]
)
def test_it_refuses_the_written_variants_of_a_patients_identifiers(office: Office, text: str) -> None:
    with pytest.raises(PhiRefused) as exc:
        check(office, text)
    assert exc.value.extra == {"field": "description", "kind": exc.value.kind}
    assert normalize(text) not in exc.value.message.lower()


MUST_PASS = {
    "our generated texts": [
        "Active patients, 2026-03-10 to 2026-04-10",
        "Patients activated during the period, 2026-03-10 to 2026-04-10",
        "Setup fee — Professional",
        "Monthly minimum adjustment (Professional)",
        "INV-2026-000123",
        "Quayside Family Practice",
        "Invoice to accounts@quayside.example",
    ],
    "ordinary business words": [
        "On-site training, 2 days",
        "Extra seat licence",
        "Records copy fee",
        "Wire 2026-0412",
        "Cheque no. 004512",
        "Paid by wire on the 12th",
        "Stripe payout",
        "voided by an operator in the admin",
        "Reward program credit",  # 'ward' inside another word
        "Quinces and pears",  # 'quince' inside another word
        "Leeway granted",  # 'lee' inside another word (and 3 letters)
        "Café onboarding",
        "Обучение персонала",  # Cyrillic text that spells no patient
        "Εκπαίδευση",  # Greek
    ],
    "amounts, counts and dates that are not a birth date": [
        "Amount 45000 cents",
        "$1,234.56 for 12 x 450",
        "2,400 patients at 4.50",
        "15% discount",
        "March 10 – April 10, 2026",
        "03/10/2026–04/10/2026",
        "10.03.2026",
        "Q1 2026",
        "ZIP 60601",
        "v2.3.1",
        "14:00 Chicago time",
        "12 seats 45 minutes 2026",
    ],
    "names that are not a patient's": ["Lee, Annabel", "Annie Lee", "Bart Quincey"],
}


@pytest.mark.parametrize(
    "text", [pytest.param(text, id=f"{kind}: {text!a}") for kind, texts in MUST_PASS.items() for text in texts]
)
def test_it_passes_our_texts_and_ordinary_business_words(office: Office, text: str) -> None:
    check(office, text)


def test_it_normalises_before_matching() -> None:
    assert normalize(f"Ｑu{ZW}і{SHY}nce\u00a0\u00a0Ηill") == "quince hill"
    assert normalize("０２–１１／1937") == "02-11/1937"
    assert normalize("O\u2019Brien") == "o'brien"
    assert normalize("STRASSE Straße") == "strasse strasse"
