"""Every console page needs a verified second factor from staff (OPERATOR_MFA_REQUIRED).

After django-otp's OTPMiddleware (which gives request.user `is_verified()`): a staff user
whose session has a password but no verified device is sent, from any /admin/ page, to
the verify page (or, with no authenticator yet, to enrolment), the page asked for kept in
`next`. Left alone: the login and logout pages, the MFA pages themselves, everything
outside /admin/ (the API with its knox tokens, webhooks, static files), non-staff users
(the admin site refuses them anyway)."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

from config.mfa.selectors import mfa_is_enrolled


class OperatorMfaMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        redirect = self._needs_second_factor(request)
        return redirect if redirect is not None else self.get_response(request)

    def _needs_second_factor(self, request: HttpRequest) -> HttpResponse | None:
        if not settings.OPERATOR_MFA_REQUIRED:  # read per request: tests turn it on and off
            return None
        console = reverse("admin:index")
        if not request.path.startswith(console) or request.path in _exempt_paths():
            return None
        user = request.user
        if not (user.is_authenticated and user.is_active and user.is_staff):
            return None
        if user.is_verified():  # type: ignore[attr-defined]
            return None
        target = "console-mfa-verify" if mfa_is_enrolled(user=user) else "console-mfa-enrol"
        return HttpResponseRedirect(f"{reverse(target)}?{urlencode({'next': request.get_full_path()})}")


def _exempt_paths() -> set[str]:
    return {
        reverse("admin:login"),
        reverse("admin:logout"),
        reverse("console-mfa-enrol"),
        reverse("console-mfa-verify"),
    }
