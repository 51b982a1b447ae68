from __future__ import annotations

from functools import lru_cache
from zoneinfo import available_timezones

from django.conf import settings

from config.errors import ApplicationError

# Entries of the zone database that are no place: `localtime` links to the host's own
# /etc/localtime (its meaning would depend on the server billing runs on), `Factory` is a
# placeholder, `posixrules` a template.
_NOT_A_PLACE = frozenset({"localtime", "Factory", "posixrules"})


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(name for name in available_timezones() if name not in _NOT_A_PLACE)


def validate_timezone(name: str) -> str:
    """An IANA zone name, or a clear 400."""
    if not isinstance(name, str) or name not in _zones():
        raise ApplicationError(
            f"Unknown time zone {name!r}: use an IANA name such as 'America/Chicago'.", {"field": "timezone"}
        )
    return name


def default_timezone() -> str:
    """The zone of a new office: BILLING_DEFAULT_TIMEZONE. A callable default, so that the
    setting is read when an office is created and never baked into a migration."""
    return str(settings.BILLING_DEFAULT_TIMEZONE)
