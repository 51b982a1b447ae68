"""The console's frame (issue 9, item 6): the sidebar groups business pages apart from the
machinery and shows a user only what they may view; dj-stripe's mirror is hidden; schedules
and tokens are read-only; `/` and "View site" lead to the console; `/api/v1/` answers with
its index."""

from __future__ import annotations

import re

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client, RequestFactory
from django.urls import Resolver404, resolve
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from knox.models import AuthToken

from config.console import SECTIONS, sidebar_navigation
from config.urls import api_v1

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator_client(client: Client) -> Client:
    user = get_user_model().objects.create_superuser("op", "op@example.com", "pw")
    client.force_login(user)
    return client


def titles(groups: list[dict]) -> dict[str, list[str]]:
    return {group["title"]: [item["title"] for item in group["items"]] for group in groups}


def test_the_sidebar_groups_business_pages_and_folds_the_machinery_away() -> None:
    request = RequestFactory().get("/admin/")
    request.user = get_user_model().objects.create_superuser("op", "op@example.com", "pw")
    groups = sidebar_navigation(request)
    shown = titles(groups)
    assert list(shown) == ["Overview", "Customers", "Billing", "Stripe", "Compliance", "Infrastructure"]
    assert shown["Customers"] == ["Offices", "Companies", "Patients"]
    assert "Invoices" in shown["Billing"] and "Invoice number sequences" in shown["Infrastructure"]
    folded = {group["title"] for group in groups if group["collapsible"]}
    assert folded == {"Infrastructure"}
    # Every entry of every section links to a page that exists.
    for group in groups:
        for item in group["items"]:
            resolve(item["link"])


def test_a_user_sees_only_the_entries_they_may_view() -> None:
    user = get_user_model().objects.create_user("viewer", "v@example.com", "pw", is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(codename="view_invoice", content_type__app_label="billing"),
        Permission.objects.get(codename="view_office", content_type__app_label="offices"),
    )
    user = get_user_model().objects.get(pk=user.pk)  # fresh permission cache
    request = RequestFactory().get("/admin/")
    request.user = user
    assert titles(sidebar_navigation(request)) == {
        "Overview": ["Overview"],
        "Customers": ["Offices"],
        "Billing": ["Invoices"],
    }


def test_every_page_of_ours_has_a_place_in_the_sidebar() -> None:
    linked = {url_name for _, _, entries in SECTIONS for _, url_name, _, _ in entries}
    ours = {
        f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"
        for model in admin.site._registry
        if model._meta.app_label not in ("django_celery_beat",) or model is PeriodicTask
    }
    assert ours - linked == set()


def test_the_stripe_mirror_is_hidden_and_schedules_and_tokens_are_read_only(operator_client: Client) -> None:
    assert not [m for m in admin.site._registry if m._meta.app_label == "djstripe"]
    assert operator_client.get("/admin/djstripe/customer/").status_code == 404
    assert operator_client.get("/admin/django_celery_beat/periodictask/").status_code == 200
    assert operator_client.get("/admin/django_celery_beat/periodictask/add/").status_code == 403
    every_hour = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.HOURS)
    task = PeriodicTask.objects.create(
        name="billing-run-hourly", task="billing.tasks.billing_run_tick", interval=every_hour
    )
    assert operator_client.post(f"/admin/django_celery_beat/periodictask/{task.pk}/delete/").status_code == 403
    assert PeriodicTask.objects.filter(pk=task.pk).exists()
    AuthToken.objects.create(get_user_model().objects.get(username="op"))
    assert operator_client.get("/admin/knox/authtoken/add/").status_code == 403


def test_the_root_and_view_site_lead_to_the_console(client: Client, operator_client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == "/admin/"
    index = operator_client.get("/admin/")
    assert index.status_code == 200
    assert re.search(r'href="/admin/"', index.content.decode())


def test_the_api_root_answers_with_its_index_of_every_resource(client: Client) -> None:
    response = client.get("/api/v1/")
    assert response.status_code == 200
    body = response.json()
    assert body["documentation"] == "/api/docs/" and body["schema"] == "/api/schema/"
    listed = {
        str(resolve(path.format(office_id=1, patient_id=1, invoice_id=1, user_id=1, review_id=1)).route)
        for path in body["resources"].values()
    }
    served = {f"api/v1/{pattern.pattern}" for pattern in api_v1} | {"api/v1/auth/token/", "api/v1/auth/logout/"}
    assert listed == served
    assert client.post("/api/v1/").status_code == 405
    with pytest.raises(Resolver404):
        resolve("/api/v1/nothing-here/")
