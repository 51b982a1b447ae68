"""The console's overview page (the admin index): figures for operators, from
billing/overview.py. Called by django-unfold for the index (`UNFOLD["DASHBOARD_CALLBACK"]`)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest


def dashboard_callback(request: HttpRequest, context: dict[str, Any]) -> dict[str, Any]:
    return context
