"""Money, formatted at the edge only: integer minor units in, text out, no float."""

from __future__ import annotations

from decimal import Decimal

ZERO_DECIMAL_CURRENCIES = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()  # noqa: SIM905
)
CURRENCY_SYMBOLS = {"usd": "$", "cad": "$", "aud": "$", "nzd": "$", "eur": "€", "gbp": "£", "jpy": "¥"}


def format_cents(cents: int | None, currency: str, *, symbol: bool = True) -> str:
    """Minor units → "$150.00 USD" (or "150.00 USD" without the symbol); zero-decimal
    currencies such as JPY have no fraction."""
    if cents is None:
        return "—"
    code = (currency or "").lower()
    sign = "-" if cents < 0 else ""
    units = abs(int(cents))
    number = f"{units:,}" if code in ZERO_DECIMAL_CURRENCIES else f"{units // 100:,}.{units % 100:02d}"
    prefix = CURRENCY_SYMBOLS.get(code, "") if symbol else ""
    return f"{sign}{prefix}{number} {code.upper()}".strip()


def major_to_cents(amount: Decimal, currency: str) -> int:
    """What a person typed in major units ("1,450.50") → minor units, exactly: refused if
    it has more decimals than the currency has (no rounding, ever)."""
    places = 0 if (currency or "").lower() in ZERO_DECIMAL_CURRENCIES else 2
    scaled = amount * (10**places)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} has more than {places} decimal places for {currency.upper()}")
    return int(scaled)


def cents_to_major(cents: int, currency: str) -> Decimal:
    """Minor units → the exact major-unit amount a person types ("1450.50")."""
    places = 0 if (currency or "").lower() in ZERO_DECIMAL_CURRENCIES else 2
    return Decimal(int(cents)).scaleb(-places)
