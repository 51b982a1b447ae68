"""The PHI guard (spec §9): free text and metadata must not carry patient information.

Used for operator free text before it is saved, and by the Stripe gateway before any
payload leaves. It refuses, case-insensitively: any of the office's patients' MRN,
email, phone (compared as digits, 7 or more), birth date in a common written form, full
name ("first last" or "last, first"), a last name of 4+ letters standing as a whole word;
and anything shaped like a US SSN. A refusal never echoes the matched value.

What is ours passes, because it cannot carry PHI and a patient's data colliding with it
must not block billing:
- numbers (int, Decimal, float) are never checked, nor mapping keys;
- the office's own name and billing email, the office's patients' billing references and
  anything shaped like our invoice numbers are taken out before checking;
- callers say what else is theirs: `trusted=` tokens (period dates — in any written form —,
  plan names, labels, amounts, ids) are taken out of every text of that check;
  `ours_fields=` names fields we fill ourselves (Stripe ids, enums, our metadata);
  a value wrapped in `Ours` (`ours("voided in Stripe")`) is never looked at.
  Trusted tokens are taken out only after the SSN, phone and email shapes are matched,
  so a trusted amount or id can never hide a part of one.

Text is normalised before matching (NFKC, format characters such as zero-width spaces
and soft hyphens removed, accents dropped, Cyrillic/Greek lookalike letters folded to
Latin, every dash, slash and apostrophe to its ASCII form, casefold), and every lookup
is a set lookup over the tokens of the text, prepared once per office in a `PhiIndex`:
callers that check many payloads (a push) build it once and pass it in."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import unicodedata
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from django.conf import settings

from audit.models import Outcome
from audit.services import audit_record
from config.errors import ApplicationError
from offices.models import Office
from patients.models import Patient

if TYPE_CHECKING:
    from billing.models import Invoice


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


class Ours(str):
    """A value this system wrote — a fixed text, a label built from our constants, an id —
    never typed by a person: the guard does not look inside it. Never wrap text that
    embeds free text (an operator's line, a note): pass its generated parts as `trusted`."""

    __slots__ = ()


def ours(value: str) -> Ours:
    return Ours(value)


# Stripe parameters whose values we always fill ourselves: Stripe's ids, enums, our invoice
# number, amounts and the ids in our metadata. For `ours_fields=` (a list's items and a
# mapping's nested fields are covered by their field's name).
STRIPE_STRUCTURAL_PARAMS = frozenset(
    {
        "customer",
        "invoice",
        "currency",
        "collection_method",
        "auto_advance",
        "pending_invoice_items_behavior",
        "days_until_due",
        "number",
        "mode",
        "payment_method_types",
        "quantity",
        "unit_amount",
        "unit_amount_decimal",
        "metadata.invoice_id",
        "metadata.office_id",
        "metadata.item_key",
    }
)


# --- Normalisation ------------------------------------------------------------------------

# Cyrillic and Greek letters that look like Latin ones. Capitals are folded before casefold
# (Greek Η looks like H, its small η like n), small letters after.
_LOOKALIKE_CAPITALS = str.maketrans(
    {
        **dict(zip("АВСЕНІЈКМОРЅТХУҮҺӀԚԜ", "ABCEHIJKMOPSTXYYHIQW", strict=True)),
        **dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧϹͿ", "ABEZHIKMNOPTYXCJ", strict=True)),
    }
)
_LOOKALIKE_SMALL = str.maketrans(
    {
        **dict(zip("авсеніјкморѕтхуүһӏԁԛԝ", "abcehijkmopstxyyhldqw", strict=True)),
        **dict(zip("αβγεηικμνορτυχωϲϳ", "abyenikuvoptuxwcj", strict=True)),
        **dict(zip("ıȷɑɡɩ", "ijagi", strict=True)),
    }
)
# After NFKD: every dash, slash, apostrophe and middle dot in its ASCII form.
_PUNCTUATION = str.maketrans(
    {
        **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2043\u2212\u2e3a\u2e3b\ufe58", "-"),
        **dict.fromkeys("\u2044\u2215\u29f8", "/"),
        **dict.fromkeys("\u2018\u2019\u201b\u2032\u02b9\u02bc\u02bb`", "'"),
        **dict.fromkeys("\u00b7\u2027\u30fb", "."),
    }
)
# Letters that show as nothing (Hangul fillers, the braille blank).
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# Format (zero-width, soft hyphen, bidi), marks (accents, variation selectors), private
# use, unassigned, surrogates: dropped. Controls too, except whitespace.
_DROPPED_CATEGORIES = frozenset({"Cf", "Mn", "Me", "Co", "Cn", "Cs", "Cc"})
_ASCII_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_SPACES = re.compile(r"\s+")
# Put where a removed part was: it separates tokens and joins nothing across it.
_GAP = "\x00"


def normalize(value: str) -> str:
    """The form both the index and the checked text are compared in."""
    text = value or ""
    if text.isascii():
        if text.isprintable() and "  " not in text:  # the common case, kept cheap
            return text.lower().strip()
        text = _ASCII_CONTROLS.sub("", text).lower()
    else:
        text = unicodedata.normalize("NFKD", text)
        kept: list[str] = []
        for ch in text:
            if ch.isascii():
                kept.append(ch)
            elif ch.isspace():
                kept.append(" ")
            elif unicodedata.category(ch) in _DROPPED_CATEGORIES or ch in _INVISIBLE_LETTERS:
                continue
            elif ch.isdecimal():
                kept.append(str(unicodedata.decimal(ch)))
            else:
                kept.append(ch)
        text = "".join(kept).translate(_PUNCTUATION).translate(_LOOKALIKE_CAPITALS)
        text = _ASCII_CONTROLS.sub("", text.casefold().translate(_LOOKALIKE_SMALL))
        text = unicodedata.normalize("NFKC", text)
    return _SPACES.sub(" ", text).strip()


# --- Tokens -------------------------------------------------------------------------------

_RUN = re.compile(r"[^\W_]+")  # letters and digits
_WORD = re.compile(r"[^\W\d_]+")  # letters only: "holloway's" and "holloway-smith" hold "holloway"
_MAX_SPAN = 8  # runs in the longest name or MRN we look for


def _gap_key(gap: str) -> str | None:
    """How the text between two runs counts in a name or MRN: spaces as one space, a comma
    (with spaces or not) as a comma; None where nothing may be joined across."""
    if _GAP in gap:
        return None
    stripped = gap.strip()
    if not stripped:
        return " " if gap else ""
    return stripped


def _span_key(text: str) -> str:
    """A name in the form spans of checked text are compared in: "Lee ,  Ann" → "lee,ann"."""
    if text.isalnum():
        return text
    runs = list(_RUN.finditer(text))
    parts: list[str] = []
    for i, run in enumerate(runs):
        if i:
            parts.append(_gap_key(text[runs[i - 1].end() : run.start()]) or " ")
        parts.append(run.group())
    return "".join(parts)


class _Text:
    """One normalised text, cut into runs of letters and digits."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.runs = [(m.start(), m.end()) for m in _RUN.finditer(text)]

    def run(self, i: int) -> str:
        start, end = self.runs[i]
        return self.text[start:end]

    def spans(self, heads: Mapping[str, int]) -> Iterator[tuple[str, str, int, int]]:
        """(key, raw text, start, end) of every span of runs that starts with a head and is
        at most that head's length in runs."""
        text, runs = self.text, self.runs
        for i, (start, end) in enumerate(runs):
            longest = heads.get(text[start:end])
            if longest is None:
                continue
            key = text[start:end]
            yield key, key, start, end
            for j in range(i + 1, min(len(runs), i + longest)):
                gap = _gap_key(text[runs[j - 1][1] : runs[j][0]])
                if gap is None:
                    break
                key = f"{key}{gap}{text[runs[j][0] : runs[j][1]]}"
                yield key, text[start : runs[j][1]], start, runs[j][1]


def _contains_token(
    tokens: _Text,
    heads: Mapping[str, int],
    wanted: Collection[str],
    *,
    as_written: bool = False,
    unless: Callable[[str, int, int], bool] | None = None,
) -> bool:
    """Whether a span of whole runs of `tokens` — never glued to other letters or digits —
    is in `wanted`: compared as written (MRNs) or in the span key form (names). `unless`
    excuses a numeric match by its context (an amount)."""
    for key, raw, start, end in tokens.spans(heads):
        if (raw if as_written else key) not in wanted:
            continue
        if unless is not None and raw.isdigit() and unless(tokens.text, start, end):
            continue
        return True
    return False


def _bounded_find(text: str, needle: str) -> Iterator[int]:
    """Starts of `needle` in `text` not glued to other letters or digits."""
    start = text.find(needle)
    while start != -1:
        end = start + len(needle)
        glued_before = start > 0 and text[start - 1].isalnum() and needle[0].isalnum()
        glued_after = end < len(text) and text[end].isalnum() and needle[-1].isalnum()
        if not glued_before and not glued_after:
            yield start
        start = text.find(needle, start + 1)


def _blank(text: str, spans: Iterable[tuple[int, int]]) -> str:
    ordered = sorted(spans)
    if not ordered:
        return text
    out: list[str] = []
    pos = 0
    for start, end in ordered:
        if end <= pos:
            continue
        out.append(text[pos : max(pos, start)])
        out.append(_GAP)
        pos = end
    out.append(text[pos:])
    return "".join(out)


# --- Dates --------------------------------------------------------------------------------

_MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)


def _month(word: str) -> int | None:
    """1–12 for a month name or an abbreviation of 3+ letters ("feb", "febr", "sept")."""
    if len(word) < 3:
        return None
    for number, name in enumerate(_MONTHS, start=1):
        if name.startswith(word):
            return number
    return None


def _years(text: str) -> tuple[int, ...]:
    digits = text.lstrip("'")
    year = int(digits)
    return (year,) if len(digits) == 4 else (1900 + year, 2000 + year)


def _valid(y: int, m: int, d: int) -> date | None:
    try:
        return date(y, m, d)
    except ValueError:
        return None


_SEP = r"(?:\s*[-/._]\s*|\s+)"  # between numeric parts: - / . _ or spaces
_LSEP = r"[\s,./\-_]*"  # around a month name
_MONTH_WORD = r"(?<![^\W\d_])([^\W\d_]{3,9})(?![^\W\d_])\.?"
_ORDINAL = r"(?:st|nd|rd|th)"
_NOT_AFTER_DIGIT = r"(?<!\d)(?<!\d[-/._])"  # not the tail of a longer numeric chain
_NOT_BEFORE_DIGIT = r"(?!\d)(?![-/._]\d)"
_Y_M_D = re.compile(rf"{_NOT_AFTER_DIGIT}(\d{{4}}){_SEP}(\d{{1,2}}){_SEP}(\d{{1,2}}){_NOT_BEFORE_DIGIT}")
_X_X_Y = re.compile(rf"{_NOT_AFTER_DIGIT}(\d{{1,2}}){_SEP}(\d{{1,2}}){_SEP}('?\d{{4}}|'?\d{{2}}){_NOT_BEFORE_DIGIT}")
_COMPACT = re.compile(r"(?<!\d)(\d{8})(?!\d)")
_MON_D_Y = re.compile(
    rf"{_MONTH_WORD}{_LSEP}(\d{{1,2}})(?:{_ORDINAL}|(?=[\s,./\-_']))[\s,./\-_]*('?\d{{4}}|'?\d{{2}})(?!\d)"
)
_D_MON_Y = re.compile(rf"(?<!\d)(\d{{1,2}}){_ORDINAL}?{_LSEP}(?:of\s+)?{_MONTH_WORD}{_LSEP}('?\d{{4}}|'?\d{{2}})(?!\d)")
_Y_MON_D = re.compile(rf"(?<!\d)(\d{{4}}){_LSEP}{_MONTH_WORD}{_LSEP}(\d{{1,2}}){_ORDINAL}?(?!\d)")


def _date_forms(text: str) -> Iterator[tuple[int, int, set[date]]]:
    """Every date-shaped token of `text` with the dates it can mean (US and day-first,
    2-digit years in both centuries)."""
    for m in _Y_M_D.finditer(text):
        found = _valid(int(m[1]), int(m[2]), int(m[3]))
        if found:
            yield m.start(), m.end(), {found}
    for m in _X_X_Y.finditer(text):
        a, b = int(m[1]), int(m[2])
        meanings = {d for y in _years(m[3]) for d in (_valid(y, a, b), _valid(y, b, a)) if d}
        if meanings:
            yield m.start(), m.end(), meanings
    for m in _COMPACT.finditer(text):
        s = m[1]
        candidates = (
            _valid(int(s[:4]), int(s[4:6]), int(s[6:])),  # 19840703
            _valid(int(s[4:]), int(s[:2]), int(s[2:4])),  # 07031984
            _valid(int(s[4:]), int(s[2:4]), int(s[:2])),  # 03071984
        )
        meanings = {d for d in candidates if d}
        if meanings:
            yield m.start(), m.end(), meanings
    for m in _MON_D_Y.finditer(text):
        month = _month(m[1])
        if month:
            meanings = {d for y in _years(m[3]) if (d := _valid(y, month, int(m[2])))}
            if meanings:
                yield m.start(), m.end(), meanings
    for m in _D_MON_Y.finditer(text):
        month = _month(m[2])
        if month:
            meanings = {d for y in _years(m[3]) if (d := _valid(y, month, int(m[1])))}
            if meanings:
                yield m.start(), m.end(), meanings
    for m in _Y_MON_D.finditer(text):
        month = _month(m[2])
        if month:
            found = _valid(int(m[1]), month, int(m[3]))
            if found:
                yield m.start(), m.end(), {found}


# --- Shapes that are PHI for anyone, and shapes that are ours -----------------------------

_SSN_SEP = r"(?:\s*[-./_]\s*|\s+)"
_SSN_STRICT = re.compile(rf"(?<!\d)\d{{3}}{_SSN_SEP}\d{{2}}{_SSN_SEP}\d{{4}}(?!\d)")
# Nine digits alone; not an amount ("$123456789", "123456789.00") nor part of a longer number.
_SSN_BARE = re.compile(r"(?<![\d$€£])(?<!\d[.,])\d{9}(?!\d)(?![.,]\d)")
_DIGIT_RUN = re.compile(r"\+?\(?\d[\d\s().\-/_]{5,}\d")
_EXTENSION = re.compile(r"\s*(?:x|ext\.?|extension|#)\s*\d")
_BILLING_REF = re.compile(r"(?<![^\W_])pt-[0-9a-z]{8}(?![^\W_])")
_CURRENCY_BEFORE = re.compile(r"[$€£¥]\s?$")
_AMOUNT_AFTER = re.compile(r"\s?(?:cents?|¢|usd|eur|gbp|cad)(?![^\W\d_])")


@functools.lru_cache(maxsize=8)
def _invoice_number(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![^\W_]){re.escape(normalize(prefix))}-\d{{4}}-\d{{6}}(?![^\W_])")


def _is_amount(text: str, start: int, end: int) -> bool:
    return bool(_CURRENCY_BEFORE.search(text[max(0, start - 2) : start]) or _AMOUNT_AFTER.match(text, end))


def _digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


# --- The index ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class PhiIndex:
    """What one office's patients look like, prepared once for many checks.

    Build it with `PhiIndex.for_office(office)` and pass it as `phi_check(index=...)` (or
    call `index.check(...)`) for every payload of one push; `index.trusting(...)` adds
    tokens that are ours without rebuilding anything."""

    office_id: int
    mrns: frozenset[str] = frozenset()  # normalised, as whole tokens
    mrn_keys: frozenset[str] = frozenset()  # letters+digits only, for MRNs holding a letter
    mrn_heads: Mapping[str, int] = dataclasses.field(default_factory=dict)
    emails: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)  # domain → local parts
    phones: frozenset[str] = frozenset()  # digits
    phone_parts: frozenset[str] = frozenset()  # the last 7+ digits of a phone
    phone_lengths: frozenset[int] = frozenset()
    birth_dates: frozenset[date] = frozenset()
    full_names: frozenset[str] = frozenset()  # span keys: "first last", "last,first"
    last_words: frozenset[str] = frozenset()  # one-word last names of 4+ letters
    last_spans: frozenset[str] = frozenset()  # last names of several runs ("o'brien", "de la cruz")
    name_heads: Mapping[str, int] = dataclasses.field(default_factory=dict)
    billing_refs: frozenset[str] = frozenset()
    own: tuple[str, ...] = ()  # the office's name and billing email, normalised, longest first
    trusted: tuple[str, ...] = ()  # callers' tokens (`allow`, `trusted`), normalised, longest first
    trusted_dates: frozenset[date] = frozenset()
    patient_count: int = 0

    @classmethod
    def for_office(cls, office: Office, *, allow: Iterable[str] = ()) -> PhiIndex:
        rows = Patient.objects.filter(office_id=office.pk).values_list(
            "first_name", "last_name", "date_of_birth", "mrn", "email", "phone", "billing_ref"
        )
        index = cls.from_rows(
            office_id=office.pk, rows=rows.iterator(chunk_size=2000), own=(office.name, office.billing_email)
        )
        return index.trusting(*allow)

    @classmethod
    def from_rows(
        cls,
        *,
        office_id: int,
        rows: Iterable[tuple[str, str, date | None, str, str, str, str]],
        own: Iterable[str] = (),
    ) -> PhiIndex:
        """The index of (first, last, birth date, MRN, email, phone, billing ref) rows."""
        mrns: set[str] = set()
        mrn_keys: set[str] = set()
        mrn_heads: dict[str, int] = {}
        emails: dict[str, set[str]] = {}
        phones: set[str] = set()
        birth_dates: set[date] = set()
        full_names: set[str] = set()
        last_words: set[str] = set()
        last_spans: set[str] = set()
        name_heads: dict[str, int] = {}
        billing_refs: set[str] = set()

        def head(heads: dict[str, int], first_run: str, runs: int) -> None:
            heads[first_run] = max(heads.get(first_run, 0), min(runs, _MAX_SPAN))

        count = 0
        for first, last, dob, mrn, email, phone, billing_ref in rows:
            count += 1
            mrn_n = normalize(mrn)
            runs = [mrn_n] if mrn_n.isalnum() else _RUN.findall(mrn_n)
            if runs:
                mrn_n = mrn_n[mrn_n.find(runs[0]) : mrn_n.rfind(runs[-1]) + len(runs[-1])]
                mrns.add(mrn_n)
                head(mrn_heads, runs[0], len(runs))
                key = "".join(runs)
                if len(key) >= 5 and not key.isdigit():
                    mrn_keys.add(key)
            email_n = normalize(email).replace(" ", "")
            if "@" in email_n:
                local, _, domain = email_n.rpartition("@")
                if local and domain:
                    emails.setdefault(domain, set()).add(local)
            phone_digits = _digits(_EXTENSION.split(normalize(phone), maxsplit=1)[0])
            if len(phone_digits) >= 7:
                phones.add(phone_digits)
                if len(phone_digits) == 11 and phone_digits.startswith("1"):
                    phones.add(phone_digits[1:])  # +1 (312) 555-0147 is also written without the +1
            if dob:
                birth_dates.add(dob)
            first_n, last_n = _span_key(normalize(first)), _span_key(normalize(last))
            first_runs = [first_n] if first_n.isalnum() else _RUN.findall(first_n)
            last_runs = [last_n] if last_n.isalnum() else _RUN.findall(last_n)
            if first_runs and last_runs:
                full_names.add(f"{first_n} {last_n}")
                full_names.add(f"{last_n},{first_n}")
                head(name_heads, first_runs[0], len(first_runs) + len(last_runs))
                head(name_heads, last_runs[0], len(first_runs) + len(last_runs))
            if last_n.isalpha():
                if len(last_n) >= 4:
                    last_words.add(last_n)
            elif last_runs and sum(ch.isalpha() for ch in last_n) >= 4:
                last_spans.add(last_n)
                head(name_heads, last_runs[0], len(last_runs))
            if billing_ref:
                billing_refs.add(billing_ref.lower())
        # A local number ("555-0147") or one without its country code is the end of a phone.
        phone_parts = {p[i:] for p in phones for i in range(len(p) - 6)}
        return cls(
            office_id=office_id,
            mrns=frozenset(mrns),
            mrn_keys=frozenset(mrn_keys),
            mrn_heads=mrn_heads,
            emails={domain: frozenset(locals_) for domain, locals_ in emails.items()},
            phones=frozenset(phones),
            phone_parts=frozenset(phone_parts),
            phone_lengths=frozenset(len(p) for p in phones),
            birth_dates=frozenset(birth_dates),
            full_names=frozenset(full_names),
            last_words=frozenset(last_words),
            last_spans=frozenset(last_spans),
            name_heads=name_heads,
            billing_refs=frozenset(billing_refs),
            own=_longest_first((), own),
            patient_count=count,
        )

    def trusting(self, *tokens: object) -> PhiIndex:
        """The same index with more tokens that are ours: strings (labels, plan names, ids),
        numbers (amounts, ids) and dates (period boundaries, passing in any written form)."""
        if not tokens:
            return self
        dates = {t.date() if isinstance(t, datetime) else t for t in tokens if isinstance(t, date)}
        texts = [str(t) for t in tokens if t is not None and not isinstance(t, date | bool)]
        return dataclasses.replace(
            self, trusted=_longest_first(self.trusted, texts), trusted_dates=self.trusted_dates | dates
        )

    def check(
        self, fields: Mapping[str, Any], *, trusted: Iterable[object] = (), ours_fields: Collection[str] = ()
    ) -> None:
        """Raise PhiRefused for the first field (strings, nested in dicts and lists) that
        looks like PHI."""
        scoped = self.trusting(*trusted)
        for name, text in _flatten(fields, ours_fields=ours_fields):
            kind = scoped.finding(text)
            if kind is not None:
                raise PhiRefused(field_name=name, kind=kind)

    def finding(self, text: str) -> str | None:
        """The kind of PHI found in `text`, or None."""
        t = normalize(text)
        if not t:
            return None
        # What is ours by nature: the office's own name and email, our invoice numbers,
        # this office's billing references.
        t = _blank(t, self._own_spans(t))
        birth_date = False
        trusted_dates: list[tuple[int, int]] = []
        for start, end, meanings in _date_forms(t):
            if meanings & self.trusted_dates:
                trusted_dates.append((start, end))
            elif meanings & self.birth_dates:
                birth_date = True
        t = _blank(t, trusted_dates)
        # Shapes no trusted label or number may hide a part of.
        if _SSN_STRICT.search(t) or _SSN_BARE.search(t):
            return "ssn"
        if self.emails and "@" in t and self._has_email(t):
            return "email"
        if self.phones and self._has_phone(t):
            return "phone"
        if birth_date:
            return "birth_date"
        # Tokens the caller says are ours (labels, plan names, amounts, ids) no longer count.
        if self.trusted:
            t = _blank(t, [(s, s + len(n)) for n in self.trusted for s in _bounded_find(t, n)])
        tokens = _Text(t)
        if self._has_mrn(tokens):
            return "mrn"
        if self.full_names and _contains_token(tokens, self.name_heads, self.full_names):
            return "full_name"
        if self.last_spans and _contains_token(tokens, self.name_heads, self.last_spans):
            return "last_name"
        if self.last_words and not self.last_words.isdisjoint(_WORD.findall(t)):
            return "last_name"
        return None

    def _own_spans(self, t: str) -> list[tuple[int, int]]:
        spans = [(start, start + len(needle)) for needle in self.own for start in _bounded_find(t, needle)]
        spans.extend(m.span() for m in _invoice_number(settings.INVOICE_NUMBER_PREFIX).finditer(t))
        if self.billing_refs:
            spans.extend(m.span() for m in _BILLING_REF.finditer(t) if m.group() in self.billing_refs)
        return spans

    def _has_mrn(self, tokens: _Text) -> bool:
        if self.mrns and _contains_token(tokens, self.mrn_heads, self.mrns, as_written=True, unless=_is_amount):
            return True
        if self.mrn_keys:  # "A-448812" written "A448812" or "a 448812"
            runs = tokens.runs
            for i in range(len(runs)):
                key = ""
                for j in range(i, min(len(runs), i + _MAX_SPAN)):
                    if j > i and _GAP in tokens.text[runs[j - 1][1] : runs[j][0]]:
                        break
                    if j > i and runs[j][0] - runs[j - 1][1] > 3:
                        break
                    key += tokens.run(j)
                    if key in self.mrn_keys:
                        return True
        return False

    def _has_email(self, t: str) -> bool:
        at = t.find("@")
        while at != -1:
            local = re.search(r"[^\s@<>(),;:\"\[\]\x00]*$", t[max(0, at - 100) : at])
            domain = re.match(r"[^\s@<>(),;:\"\[\]\x00/?#]*", t[at + 1 : at + 101])
            local_s = local.group() if local else ""
            domain_s = domain.group() if domain else ""
            for length in range(len(domain_s), 0, -1):
                locals_ = self.emails.get(domain_s[:length])
                if locals_ and any(local_s[i:] in locals_ for i in range(len(local_s))):
                    return True
            at = t.find("@", at + 1)
        return False

    def _has_phone(self, t: str) -> bool:
        for run in _DIGIT_RUN.findall(t):
            got = _digits(run)
            if len(got) < 7:
                continue
            if got in self.phone_parts:
                return True
            for length in self.phone_lengths:
                if any(got[i : i + length] in self.phones for i in range(len(got) - length + 1)):
                    return True
        return False


def _longest_first(current: tuple[str, ...], more: Iterable[str]) -> tuple[str, ...]:
    values = set(current) | {n for n in (normalize(str(v)) for v in more if v) if n}
    return tuple(sorted(values, key=len, reverse=True))


def invoice_tokens(invoice: Invoice) -> list[object]:
    """What an invoice's generated texts are made of, for `trusted=`: its period dates
    (UTC and the office's local dates), number, ids, plan name and line labels, amounts."""
    from billing.engine.labels import (
        PATIENT_GROUP_LABEL,
        PATIENT_LINE_PREFIX,
        minimum_adjustment_label,
        setup_fee_label,
    )

    tokens: list[object] = [invoice.number, invoice.pk, invoice.office_id, invoice.total_cents, invoice.subtotal_cents]
    tokens += [*PATIENT_GROUP_LABEL.values(), *(p.strip() for p in PATIENT_LINE_PREFIX.values())]
    zone = ZoneInfo(invoice.office.timezone)
    for instant in (invoice.period_start, invoice.period_end):
        if instant is not None:
            tokens += [instant.date(), instant.astimezone(zone).date()]
    if invoice.plan is not None:
        tokens += [invoice.plan.name, setup_fee_label(invoice.plan), minimum_adjustment_label(invoice.plan)]
    tokens += list(invoice.lines.values_list("unit_amount_cents", flat=True).distinct())
    return tokens


def phi_check(
    *,
    office: Office,
    fields: Mapping[str, Any],
    allow: Iterable[str] = (),
    trusted: Iterable[object] = (),
    ours_fields: Collection[str] = (),
    index: PhiIndex | None = None,
) -> None:
    """Raise PhiRefused if any value (strings, nested in dicts and lists) looks like PHI.

    `trusted`: tokens that are ours, taken out of every text of this check (see
    `PhiIndex.trusting`). `ours_fields`: names of fields we fill ourselves, not checked
    ("metadata.invoice_id"; a name covers its list items and nested fields). `index`: the
    office's index built once (`PhiIndex.for_office`); without it one is built here."""
    if index is None:
        index = PhiIndex.for_office(office, allow=allow)
    elif index.office_id != office.pk:
        raise ValueError(f"this PHI index is for office {index.office_id}, not office {office.pk}")
    else:
        index = index.trusting(*allow)
    index.check(fields, trusted=trusted, ours_fields=ours_fields)


def _flatten(
    fields: Mapping[str, Any], *, ours_fields: Collection[str] = (), prefix: str = ""
) -> Iterator[tuple[str, str]]:
    for key, value in fields.items():
        name = f"{prefix}{key}"
        if _skipped(value) or (ours_fields and (name in ours_fields or _INDEX.sub("", name) in ours_fields)):
            continue
        if isinstance(value, Mapping):
            yield from _flatten(value, ours_fields=ours_fields, prefix=f"{name}.")
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    yield from _flatten(item, ours_fields=ours_fields, prefix=f"{name}[{i}].")
                elif not _skipped(item):
                    yield f"{name}[{i}]", str(item)
        else:
            yield name, str(value)


_INDEX = re.compile(r"\[\d+\]")  # "items[2].item_key" is named "items.item_key" in `ours_fields`


def _skipped(value: object) -> bool:
    """Numbers and our own values are never PHI-checked."""
    return value is None or isinstance(value, bool | int | float | Decimal | Ours)


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
