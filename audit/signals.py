"""Logins, logouts and failed logins into the audit trail (spec §9; HIPAA 164.312(b)).

Connected in AuditConfig.ready(). Covers every way in: the admin's and DRF's session
login (django.contrib.auth.login) and the API token endpoint (config/auth_api.py), which
sends the same signals. A failed attempt records the username that was tried (truncated)
and never the password; the client IP and request id come from the audit context."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.http import HttpRequest

from audit.models import Outcome
from audit.services import audit_record

_USERNAME_MAX = 150


def _path(request: HttpRequest | None) -> str:
    # The route that was used (admin login, token endpoint, …): ours, not client text.
    return getattr(request, "path", "")[:200] if request is not None else ""


def on_user_logged_in(sender: Any, request: HttpRequest | None = None, user: Any = None, **kwargs: Any) -> None:
    if user is None:
        return
    audit_record(action="auth.login", actor=user, target=user, data={"path": _path(request)})


def on_user_logged_out(sender: Any, request: HttpRequest | None = None, user: Any = None, **kwargs: Any) -> None:
    if user is None or not getattr(user, "is_authenticated", False):
        return  # logging out an anonymous session: nobody to record
    audit_record(action="auth.logout", actor=user, target=user, data={"path": _path(request)})


def on_user_login_failed(
    sender: Any, credentials: dict[str, Any] | None = None, request: HttpRequest | None = None, **kwargs: Any
) -> None:
    user_model = get_user_model()
    credentials = credentials or {}
    # Only the username is read: `credentials` also holds the (cleansed) password.
    tried = credentials.get(user_model.USERNAME_FIELD, credentials.get("username"))
    username = str(tried)[:_USERNAME_MAX] if tried is not None else ""
    known = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: username}).first() if username else None
    audit_record(
        action="auth.login_failed",
        target_type=user_model._meta.label if known is not None else "",
        target_id=known.pk if known is not None else None,
        outcome=Outcome.DENIED,
        reason="invalid credentials or inactive user",
        data={"username": username, "path": _path(request)},
    )


def connect() -> None:
    user_logged_in.connect(on_user_logged_in, dispatch_uid="audit.auth.login")
    user_logged_out.connect(on_user_logged_out, dispatch_uid="audit.auth.logout")
    user_login_failed.connect(on_user_login_failed, dispatch_uid="audit.auth.login_failed")
