"""Operator MFA pages of the console: enrolment (QR code + secret, confirm with a code,
recovery codes shown once), verification at each login, new recovery codes.

Each page calls one service; the cryptography and throttling are django-otp's. Codes and
secrets are sensitive POST parameters (never in error reports) and no page is cached."""

from __future__ import annotations

from base64 import b32encode
from typing import Any

import django_otp
import segno
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django_otp.plugins.otp_totp.models import TOTPDevice

from config.errors import ApplicationError
from config.mfa.forms import CodeForm
from config.mfa.selectors import mfa_is_enrolled, mfa_recovery_codes_left
from config.mfa.services import (
    RECOVERY,
    Verification,
    mfa_enrolment_confirm,
    mfa_enrolment_start,
    mfa_recovery_codes_regenerate,
    mfa_verify,
)


@never_cache
@sensitive_post_parameters("code")
def enrol_view(request: HttpRequest) -> HttpResponse:
    """Enrolment on first login: scan the QR code (or type the secret), confirm with a
    code, then see the recovery codes once (issue 12, item 5)."""
    denied = _staff_only(request)
    if denied is not None:
        return denied
    user = request.user
    if mfa_is_enrolled(user=user):
        return redirect(_next_url(request) if user.is_verified() else _with_next("console-mfa-verify", request))  # type: ignore[union-attr]
    device = mfa_enrolment_start(user=user)
    form = CodeForm(request.POST or None)
    if form.is_bound and form.is_valid():
        try:
            result = mfa_enrolment_confirm(user=user, code=form.cleaned_data["code"])
        except ApplicationError as exc:
            form.add_error(None, exc.message)
        else:
            if result.ok:
                _log_in_second_factor(request, result)
                return _recovery_codes_page(request, result.recovery_codes or [], first_time=True)
            form.add_error("code", _refusal(result))
    context = {
        **_context(request, "Set up two-factor authentication"),
        "form": form,
        "qr_svg": _qr_svg(device),
        "secret": b32encode(device.bin_key).decode("ascii"),
        "secret_grouped": _grouped(b32encode(device.bin_key).decode("ascii")),
        "issuer": device._read_str_from_settings("OTP_TOTP_ISSUER") or "",
        "account": user.get_username(),
    }
    return TemplateResponse(request, "admin/mfa/enrol.html", context, status=200 if not form.errors else 400)


@never_cache
@sensitive_post_parameters("code")
def verify_view(request: HttpRequest) -> HttpResponse:
    """The second step of every console login: a code from the authenticator app or one
    recovery code (single use); wrong codes are throttled and audited."""
    denied = _staff_only(request)
    if denied is not None:
        return denied
    user = request.user
    if not mfa_is_enrolled(user=user):
        return redirect(_with_next("console-mfa-enrol", request))
    if user.is_verified():  # type: ignore[union-attr]
        return redirect(_next_url(request))
    form = CodeForm(request.POST or None)
    if form.is_bound and form.is_valid():
        result = mfa_verify(user=user, code=form.cleaned_data["code"])
        if result.ok:
            _log_in_second_factor(request, result)
            if result.method == RECOVERY:
                left = mfa_recovery_codes_left(user=user)
                messages.warning(
                    request,
                    format_html(
                        'You signed in with a recovery code; {} left. Each works once: <a href="{}" '
                        'class="underline">make new ones</a> if you are running low.',
                        left,
                        reverse("console-mfa-recovery-codes"),
                    ),
                )
            return HttpResponseRedirect(_next_url(request))
        form.add_error("code", _refusal(result))
    context = {**_context(request, "Two-factor authentication"), "form": form}
    return TemplateResponse(request, "admin/mfa/verify.html", context, status=200 if not form.errors else 400)


@never_cache
def recovery_codes_view(request: HttpRequest) -> HttpResponse:
    """A verified operator's recovery codes: how many are left, and new ones on request
    (the old ones stop working; the new ones are shown once)."""
    denied = _staff_only(request)
    if denied is not None:
        return denied
    if request.method == "POST":
        return _recovery_codes_page(request, mfa_recovery_codes_regenerate(user=request.user), first_time=False)
    context = {
        **_context(request, "Recovery codes"),
        "codes_left": mfa_recovery_codes_left(user=request.user),
    }
    return TemplateResponse(request, "admin/mfa/recovery_codes_status.html", context)


def _recovery_codes_page(request: HttpRequest, codes: list[str], *, first_time: bool) -> HttpResponse:
    # Rendered in the answer to the POST, never stored in clear (not even in the session):
    # shown once; no-store keeps them out of the browser's cache and history.
    context = {
        **_context(request, "Your recovery codes"),
        "codes": codes,
        "first_time": first_time,
        "continue_url": _next_url(request),
    }
    response = TemplateResponse(request, "admin/mfa/recovery_codes.html", context)
    response["Cache-Control"] = "no-store"
    return response


def _log_in_second_factor(request: HttpRequest, result: Verification) -> None:
    # A new session key at the privilege change (as Django does at password login).
    request.session.cycle_key()
    django_otp.login(request, result.device)


def _refusal(result: Verification) -> str:
    wait = result.retry_after_seconds
    seconds = f"{wait} second{'s' if wait != 1 else ''}"
    if result.throttled:
        return f"Too many wrong codes. Try again in {seconds}."
    more = f" Wait {seconds} before the next try." if wait else ""
    if result.method == RECOVERY:
        return "That is not a code from your authenticator (six digits) or an unused recovery code." + more
    return "That code is not right (or was already used). Check the time on your phone." + more


def _staff_only(request: HttpRequest) -> HttpResponse | None:
    user = request.user
    if user.is_authenticated and user.is_active and user.is_staff:
        return None
    return redirect(f"{reverse('admin:login')}?next={reverse('admin:index')}")


def _next_url(request: HttpRequest) -> str:
    """Where to go after the second factor: `next` if it is a console page of this site."""
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    console = reverse("admin:index")
    if candidate.startswith(console) and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return console


def _with_next(url_name: str, request: HttpRequest) -> str:
    from urllib.parse import urlencode

    return f"{reverse(url_name)}?{urlencode({'next': _next_url(request)})}"


def _context(request: HttpRequest, title: str) -> dict[str, Any]:
    return {**admin.site.each_context(request), "title": title, "next": _next_url(request)}


def _qr_svg(device: TOTPDevice) -> str:
    """The otpauth:// URL as an inline SVG QR code (segno; no image request, nothing external)."""
    qr = segno.make(device.config_url, error="m")
    svg = qr.svg_inline(
        scale=5, border=2, dark="#111827", light="#ffffff", title="QR code of your authenticator secret"
    )
    return mark_safe(svg)  # noqa: S308 - segno's own SVG, built from our own URL


def _grouped(secret: str) -> str:
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
