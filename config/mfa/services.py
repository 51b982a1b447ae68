"""Operator MFA: every write (enrolment, confirmation, verification, reset), each audited.

django-otp does the cryptography and the throttling: a TOTPDevice (RFC 6238, 30 s steps,
one step of tolerance, a code never accepted twice) and a StaticDevice holding the recovery
codes, both with exponential back-off after wrong codes (OTP_*_THROTTLE_FACTOR, base.py).

Recovery codes are stored hashed. The static plugin stores plain strings (up to 16
characters) and checks a code by equality, then deletes the row it matched; so what it
stores here is an HMAC-SHA256 of the code keyed by SECRET_KEY (16 base32 characters, 80
bits), and a code typed at login is hashed the same way before the plugin looks it up.
Neither codes nor secrets ever reach the audit trail: it records which factor, whether the
try was throttled, and the count of wrong tries in a row."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django_otp.models import Device
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import Outcome
from audit.services import audit_record
from config.errors import ApplicationError, PermissionDeniedError

TOTP = "totp"
RECOVERY = "recovery"
RECOVERY_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # base32: no 0/1/8/9 to confuse with o/l/b/g
RECOVERY_LENGTH = 10  # 50 random bits per code
_HASH_SALT = "config.mfa.recovery-code"


@dataclass(frozen=True)
class Verification:
    """What a code did: verified (with which device) or refused (throttled or wrong)."""

    ok: bool
    method: str
    device: Device | None = None
    throttled: bool = False
    locked_until: datetime | None = None
    recovery_codes: list[str] | None = None  # only when an enrolment was just confirmed

    @property
    def retry_after_seconds(self) -> int:
        if self.locked_until is None:
            return 0
        return max(0, int((self.locked_until - timezone.now()).total_seconds() + 0.999))


def normalize_code(code: str) -> str:
    """A code as typed (spaces, dashes, upper case) in the form the devices compare."""
    return "".join(code.split()).replace("-", "").lower()


def format_recovery_code(code: str) -> str:
    """xxxxx-xxxxx: easier to copy by hand."""
    return f"{code[:5]}-{code[5:]}"


def recovery_code_hash(code: str, *, secret: str | None = None) -> str:
    """What the static device stores for a recovery code: HMAC-SHA256 keyed by SECRET_KEY,
    16 base32 characters (the plugin's column holds 16)."""
    digest = salted_hmac(_HASH_SALT, normalize_code(code), secret=secret, algorithm="sha256").digest()
    return base64.b32encode(digest).decode("ascii")[:16].lower()


def _lock_user(user: Any) -> Any:
    # One enrolment or verification per user at a time (two tabs, a double click).
    return get_user_model().objects.select_for_update().get(pk=user.pk)


@transaction.atomic
def mfa_enrolment_start(*, user: Any) -> TOTPDevice:
    """Begin enrolment: the user's unconfirmed authenticator device, created once and audited
    (reloading the page shows the same secret)."""
    _lock_user(user)
    pending = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("pk").first()
    if pending is not None:
        return pending
    if TOTPDevice.objects.filter(user=user, confirmed=True).exists():
        raise ApplicationError("This operator already has an authenticator; a superuser can reset it.")
    device = TOTPDevice.objects.create(user=user, name="Authenticator", confirmed=False)
    audit_record(action="mfa.device_enrolled", actor=user, target=device, data={"device": TOTP})
    return device


@transaction.atomic
def mfa_enrolment_confirm(*, user: Any, code: str) -> Verification:
    """Confirm enrolment with a first code from the app (throttled like every code), then
    issue the recovery codes, returned in clear this once and stored hashed."""
    _lock_user(user)
    device = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=False).order_by("pk").first()
    if device is None:
        raise ApplicationError("No enrolment is under way for this operator.")
    refused = _check_code(user=user, device=device, method=TOTP, code=normalize_code(code), stage="enrolment")
    if refused is not None:
        return refused
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    audit_record(action="mfa.device_confirmed", actor=user, target=device, data={"device": TOTP})
    codes = _issue_recovery_codes(user=user)
    audit_record(action="mfa.login_verified", actor=user, target=device, data={"method": TOTP, "stage": "enrolment"})
    return Verification(ok=True, method=TOTP, device=device, recovery_codes=codes)


@transaction.atomic
def mfa_verify(*, user: Any, code: str) -> Verification:
    """Check the second factor at login: six digits go to the authenticator, anything else
    to the recovery codes (each works once). Wrong codes are throttled and audited."""
    _lock_user(user)
    normalized = normalize_code(code)
    method = TOTP if normalized.isdigit() and len(normalized) == 6 else RECOVERY
    device: TOTPDevice | StaticDevice | None
    if method == TOTP:
        device = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=True).order_by("pk").first()
    else:
        device = StaticDevice.objects.select_for_update().filter(user=user, confirmed=True).order_by("pk").first()
    if device is None:
        audit_record(
            action="mfa.code_failed",
            actor=user,
            target=user,
            outcome=Outcome.FAILURE,
            reason=f"no {method} device",
            data={"method": method, "stage": "login", "throttled": False, "failure_count": 0},
        )
        return Verification(ok=False, method=method)
    refused = _check_code(user=user, device=device, method=method, code=normalized, stage="login")
    if refused is not None:
        return refused
    if method == RECOVERY:
        audit_record(
            action="mfa.recovery_code_used",
            actor=user,
            target=device,
            data={"codes_left": device.token_set.count()},
        )
    audit_record(action="mfa.login_verified", actor=user, target=device, data={"method": method, "stage": "login"})
    return Verification(ok=True, method=method, device=device)


@transaction.atomic
def mfa_recovery_codes_regenerate(*, user: Any) -> list[str]:
    """New recovery codes for a verified operator (the old ones stop working), shown once."""
    _lock_user(user)
    return _issue_recovery_codes(user=user)


@transaction.atomic
def mfa_reset(*, user: Any, actor: Any, reason: str) -> dict[str, int]:
    """A superuser removes another operator's authenticator and recovery codes (a lost
    phone), with a reason; that operator enrols again at their next console page."""
    reason = reason.strip()
    if not getattr(actor, "is_superuser", False):
        raise PermissionDeniedError("Only a superuser may reset an operator's MFA.")
    if actor.pk == user.pk:
        raise PermissionDeniedError("Another superuser must reset your MFA: nobody removes their own second factor.")
    if not reason:
        raise ApplicationError("A reason is required to reset an operator's MFA.")
    target = _lock_user(user)
    removed = {
        TOTP: TOTPDevice.objects.filter(user=target).delete()[1].get(TOTPDevice._meta.label, 0),
        RECOVERY: StaticDevice.objects.filter(user=target).delete()[1].get(StaticDevice._meta.label, 0),
    }
    audit_record(
        action="mfa.reset",
        actor=actor,
        target=target,
        reason=reason,
        data={"username": target.get_username(), "devices_removed": removed},
    )
    return removed


def _check_code(
    *, user: Any, device: TOTPDevice | StaticDevice, method: str, code: str, stage: str
) -> Verification | None:
    """None when the code verified; else the refusal, audited (never the code itself)."""
    allowed, info = device.verify_is_allowed()
    if allowed:
        ok = device.verify_token(code) if method == TOTP else _verify_recovery_code(device, code)
        if ok:
            return None
        allowed, info = device.verify_is_allowed()  # the wait this failure earned
        throttled = False
    else:
        throttled = True  # refused without looking at the code
    info = info or {}
    audit_record(
        action="mfa.code_failed",
        actor=user,
        target=device,
        outcome=Outcome.DENIED if throttled else Outcome.FAILURE,
        reason="too many wrong codes: throttled" if throttled else "wrong code",
        data={
            "method": method,
            "stage": stage,
            "throttled": throttled,
            "failure_count": device.throttling_failure_count,
        },
    )
    return Verification(
        ok=False, method=method, device=None, throttled=throttled, locked_until=info.get("locked_until")
    )


def _verify_recovery_code(device: StaticDevice, code: str) -> bool:
    """Hash the typed code (with SECRET_KEY, then each SECRET_KEY_FALLBACKS entry, so a key
    rotation keeps codes working) and let the plugin match, delete and throttle."""
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    candidates = [recovery_code_hash(code, secret=key) for key in keys] if code else [""]
    stored = device.token_set.filter(token__in=candidates).values_list("token", flat=True).first()
    return bool(device.verify_token(stored or candidates[0]))


def _issue_recovery_codes(*, user: Any) -> list[str]:
    device, _ = StaticDevice.objects.get_or_create(user=user, name="Recovery codes", defaults={"confirmed": True})
    StaticDevice.objects.filter(user=user).exclude(pk=device.pk).delete()
    device.token_set.all().delete()
    codes = [
        "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_LENGTH))
        for _ in range(settings.OPERATOR_MFA_RECOVERY_CODES)
    ]
    StaticToken.objects.bulk_create(StaticToken(device=device, token=recovery_code_hash(code)) for code in codes)
    device.throttle_reset(commit=False)
    device.confirmed = True
    device.save()
    audit_record(action="mfa.recovery_codes_issued", actor=user, target=device, data={"count": len(codes)})
    return [format_recovery_code(code) for code in codes]
