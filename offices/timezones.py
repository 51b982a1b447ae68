from __future__ import annotations

from functools import lru_cache
from zoneinfo import available_timezones

from config.errors import ApplicationError


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def validate_timezone(name: str) -> str:
    """An IANA zone name, or a clear 400."""
    if not isinstance(name, str) or name not in _zones():
        raise ApplicationError(
            f"Unknown time zone {name!r}: use an IANA name such as 'America/Chicago'.", {"field": "timezone"}
        )
    return name
