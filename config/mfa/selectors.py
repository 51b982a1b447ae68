"""Operator MFA: reads (config/mfa/services.py writes)."""

from __future__ import annotations

from typing import Any

from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice


def mfa_recovery_device(*, user: Any) -> StaticDevice | None:
    """The user's recovery-code device (django-otp's static device), if any."""
    return StaticDevice.objects.filter(user=user, confirmed=True).order_by("pk").first()


def mfa_recovery_codes_left(*, user: Any) -> int:
    """How many unused recovery codes the user has."""
    device = mfa_recovery_device(user=user)
    return device.token_set.count() if device is not None else 0


def mfa_is_enrolled(*, user: Any) -> bool:
    """True once the user has confirmed an authenticator device."""
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()
