"""The PHI guard (spec §9): free text and metadata must not carry patient information.

Used for operator free text before it is saved, and by the Stripe gateway before any
payload leaves. It refuses, case-insensitively: any of the office's patients' MRN,
email, phone (compared as digits, 7 or more), birth date in a common written form, full
name ("first last" or "last, first"), a last name of 4+ letters standing as a whole word;
and anything shaped like a US SSN. The office's own name and billing email, billing
references, amounts and period dates pass. A refusal never echoes the matched value."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from audit.models import Outcome
from audit.services import audit_record
from config.errors import ApplicationError
from offices.models import Office
from patients.models import Patient

_SSN_STRICT = re.compile(r"(?<!\d)\d{3}[- ]\d{2}[- ]\d{4}(?!\d)")
_DIGIT_RUN = re.compile(r"\+?\(?\d[\d\s().\-]{5,}\d")
_WORD = re.compile(r"[^\W\d_]+")  # letters only: "holloway's" and "holloway-smith" hold "holloway"
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_SPACES = re.compile(r"\s+")


class PhiRefused(ApplicationError):
    """Free text or metadata carried something that looks like PHI. 400; nothing saved or sent."""

    def __init__(self, *, field_name: str, kind: str) -> None:
        super().__init__(
            f"The field '{field_name}' looks like it contains patient information ({kind.replace('_', ' ')}). "
            "Billing text and anything sent to the payment provider may not carry PHI; "
            "identify patients by billing reference only.",
            {"field": field_name, "kind": kind},
        )
        self.field_name = field_name
        self.kind = kind


def _date_forms(d: date) -> set[str]:
    month_full = d.strftime("%B").lower()
    month_abbr = d.strftime("%b").lower()
    y, m, dd = d.year, d.month, d.day
    ordinal = f"{dd}{'th' if 11 <= dd % 100 <= 13 else {1: 'st', 2: 'nd', 3: 'rd'}.get(dd % 10, 'th')}"
    forms = {
        f"{y:04d}-{m:02d}-{dd:02d}",
        f"{y:04d}-{m}-{dd}",
        f"{y:04d}/{m}/{dd}",
        f"{y:04d}/{m:02d}/{dd:02d}",
        f"{y:04d}{m:02d}{dd:02d}",
        f"{y:04d}.{m:02d}.{dd:02d}",
    }
    for mm in {f"{m}", f"{m:02d}"}:
        for dstr in {f"{dd}", f"{dd:02d}"}:
            for sep in "/-.":
                for year in (f"{y:04d}", f"{y % 100:02d}"):
                    forms.add(f"{mm}{sep}{dstr}{sep}{year}")  # US: month first
                    forms.add(f"{dstr}{sep}{mm}{sep}{year}")  # day first
    for mon in (month_full, month_abbr, month_abbr + "."):
        forms.add(f"{ordinal} of {mon} {y}")
        forms.add(f"{ordinal} of {mon}, {y}")
        for dstr in {f"{dd}", f"{dd:02d}", ordinal}:
            forms.add(f"{mon} {dstr}, {y}")
            forms.add(f"{mon} {dstr} {y}")
            forms.add(f"{dstr} {mon} {y}")
            forms.add(f"{dstr} {mon}, {y}")
            forms.add(f"{dstr}-{mon}-{y}")
    return forms


def _digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


def _contains_token(haystack: str, needle: str) -> bool:
    """`needle` occurs in `haystack` not glued to other letters or digits."""
    start = haystack.find(needle)
    while start != -1:
        end = start + len(needle)
        before = haystack[start - 1] if start else " "
        after = haystack[end] if end < len(haystack) else " "
        if not before.isalnum() and not after.isalnum():
            return True
        start = haystack.find(needle, start + 1)
    return False


@dataclass
class PhiIndex:
    """What one office's patients look like, prepared once for many checks."""

    mrns: set[str] = field(default_factory=set)
    emails: set[str] = field(default_factory=set)
    phones: set[str] = field(default_factory=set)
    birth_dates: set[date] = field(default_factory=set)
    full_names: set[str] = field(default_factory=set)
    last_names: set[str] = field(default_factory=set)
    allowed: list[str] = field(default_factory=list)

    @classmethod
    def for_office(cls, office: Office, *, allow: Iterable[str] = ()) -> PhiIndex:
        index = cls(allowed=[a.lower() for a in (office.name, office.billing_email, *allow) if a])
        rows = Patient.objects.filter(office_id=office.pk).values_list(
            "first_name", "last_name", "date_of_birth", "mrn", "email", "phone"
        )
        for first, last, dob, mrn, email, phone in rows.iterator(chunk_size=2000):
            first_n, last_n = _norm(first), _norm(last)
            if mrn:
                index.mrns.add(mrn.strip().lower())
            if email:
                index.emails.add(email.strip().lower())
            phone_digits = _digits(phone or "")
            if len(phone_digits) >= 7:
                index.phones.add(phone_digits)
            if dob:
                index.birth_dates.add(dob)
            if first_n and last_n:
                index.full_names.add(f"{first_n} {last_n}")
                index.full_names.add(f"{last_n}, {first_n}")
                index.full_names.add(f"{last_n},{first_n}")
            if len(last_n.replace(" ", "").replace("-", "")) >= 4:
                index.last_names.add(last_n)
        return index

    def finding(self, text: str) -> str | None:
        """The kind of PHI found in `text`, or None."""
        lowered = _norm(text)
        for allowed in self.allowed:  # the office's own name and email are not PHI
            lowered = lowered.replace(_norm(allowed), " ")
        if _SSN_STRICT.search(lowered):
            return "ssn"
        for mrn in self.mrns:
            if _contains_token(lowered, mrn):
                return "mrn"
        for email in self.emails:
            if email in lowered:
                return "email"
        if self.phones:
            for run in _DIGIT_RUN.findall(lowered):
                got = _digits(run)
                if len(got) >= 7 and any(got in p or p in got for p in self.phones if len(p) >= 7):
                    return "phone"
        if self.birth_dates:
            forms = self._birth_date_forms()
            if any(_contains_token(lowered, form) for form in forms):
                return "birth_date"
        for name in self.full_names:
            if _contains_token(lowered, name):
                return "full_name"
        if self.last_names:
            words = set(_WORD.findall(lowered))
            for last in self.last_names:
                if last in words or (not last.isalpha() and _contains_token(lowered, last)):
                    return "last_name"
        return None

    def _birth_date_forms(self) -> set[str]:
        cache = getattr(self, "_forms", None)
        if cache is None:
            cache = set().union(*(_date_forms(d) for d in self.birth_dates))
            self._forms = cache
        return cache


def _norm(value: str) -> str:
    return _SPACES.sub(" ", (value or "").strip().lower().translate(_APOSTROPHES))


def phi_check(*, office: Office, fields: Mapping[str, Any], allow: Iterable[str] = ()) -> None:
    """Raise PhiRefused if any value (strings, nested in dicts and lists) looks like PHI."""
    index = PhiIndex.for_office(office, allow=allow)
    for name, text in _flatten(fields):
        kind = index.finding(text)
        if kind is not None:
            raise PhiRefused(field_name=name, kind=kind)


def _flatten(fields: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in fields.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, prefix=f"{name}.")
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    yield from _flatten(item, prefix=f"{name}[{i}].")
                elif item is not None:
                    yield f"{name}[{i}]", str(item)
        elif value is not None and not isinstance(value, bool | int):
            yield name, str(value)


@contextlib.contextmanager
def audited_refusals(*, office_id: int, actor: Any, context: str) -> Iterator[None]:
    """Audit a PHI refusal after the refused work has rolled back (use outside atomic)."""
    try:
        yield
    except PhiRefused as exc:
        audit_record(
            action="phi_guard.refused",
            actor=actor,
            target_type="offices.Office",
            target_id=office_id,
            office_id=office_id,
            outcome=Outcome.DENIED,
            reason=f"{exc.kind} in {exc.field_name}",
            data={"context": context, "field": exc.field_name, "kind": exc.kind},
        )
        raise
