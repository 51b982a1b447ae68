"""The offices endpoints (offices/api.py): creating offices, reading one, and managing
members. Who may call which endpoint at all is config/tests/test_authz_matrix.py; here
are the offices app's own answers: validation, scoping and what a revoked member sees."""

from __future__ import annotations

import json
from typing import Any
from zoneinfo import available_timezones

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from guardian.shortcuts import get_perms

from audit.models import AuditEvent
from billing.tests.support.factories import OfficeFactory, operator
from offices.models import Office, Role
from offices.services import office_member_grant

pytestmark = pytest.mark.django_db


def make_user(username: str, **extra: Any) -> Any:
    return get_user_model().objects.create_user(username=username, password="pw-offices-1234", **extra)


def call(who: Any, method: str, path: str, body: Any = None) -> Any:
    client = Client()
    if who is not None:
        client.force_login(who)
    if body is None:
        return getattr(client, method)("/api/v1/" + path)
    return getattr(client, method)("/api/v1/" + path, data=json.dumps(body), content_type="application/json")


def error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content[:300])
    body = response.json()
    assert set(body) == {"message", "extra"}, body
    return body


@pytest.fixture
def world() -> dict[str, Any]:
    office_a, office_b = OfficeFactory(name="Office A"), OfficeFactory(name="Office B")
    owner, teammate, other = make_user("staff_a"), make_user("admin_a"), make_user("admin_b")
    office_member_grant(office=office_a, user=owner, role=Role.OFFICE_STAFF)
    office_member_grant(office=office_a, user=teammate, role=Role.OFFICE_BILLING_ADMIN)
    office_member_grant(office=office_b, user=other, role=Role.OFFICE_BILLING_ADMIN)
    return {"a": office_a, "b": office_b, "owner": owner, "teammate": teammate, "other": other, "op": operator()}


NEW_OFFICE = {"name": "East Clinic", "billing_email": "ap@east.example", "timezone": "America/Denver"}


def test_it_creates_an_office_for_an_operator(world: dict[str, Any]) -> None:
    response = call(world["op"], "post", "offices/", {**NEW_OFFICE, "days_until_due": 14})
    assert response.status_code == 201, response.content
    body = response.json()
    office = Office.objects.get(pk=body["id"])
    assert body == {
        "id": office.pk,
        "name": "East Clinic",
        "timezone": "America/Denver",
        "billing_email": "ap@east.example",
        "company": None,
        "collection_method": "charge_automatically",
        "subscription_status": "none",
    }
    assert office.days_until_due == 14
    assert AuditEvent.objects.filter(action="office.created", office_id=office.pk, actor_id=str(world["op"].pk))


def test_it_refuses_an_unknown_time_zone_with_a_400_naming_it(world: dict[str, Any]) -> None:
    body = error(call(world["op"], "post", "offices/", {**NEW_OFFICE, "timezone": "America/Springfield"}), 400)
    assert "Unknown time zone 'America/Springfield'" in body["message"]
    assert body["extra"] == {"field": "timezone"}
    assert not Office.objects.filter(name="East Clinic").exists()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"billing_email": "east clinic"}, "billing_email"),
        ({"name": ""}, "name"),
        ({"collection_method": "cheque"}, "collection_method"),
        ({"days_until_due": 0}, "days_until_due"),
    ],
)
def test_it_refuses_an_invalid_office_body_naming_the_field(
    world: dict[str, Any], changes: dict[str, Any], field: str
) -> None:
    body = error(call(world["op"], "post", "offices/", {**NEW_OFFICE, **changes}), 400)
    assert body["message"].startswith(f"{field}: ")
    assert field in body["extra"]["fields"]
    assert not Office.objects.filter(name__in=["East Clinic", ""]).exists()


@pytest.mark.skipif("localtime" not in available_timezones(), reason="this host's tzdata has no 'localtime' entry")
def test_it_refuses_the_host_dependent_localtime_zone(world: dict[str, Any]) -> None:
    response = call(world["op"], "post", "offices/", {**NEW_OFFICE, "timezone": "localtime"})
    body = error(response, 400)
    assert body["extra"] == {"field": "timezone"}
    assert not Office.objects.filter(name="East Clinic").exists()


def test_it_lets_only_operators_create_offices(world: dict[str, Any]) -> None:
    for who in ("owner", "teammate", "other"):
        body = error(call(world[who], "post", "offices/", NEW_OFFICE), 403)
        assert body["message"] == "Only operators can create offices."
    assert not Office.objects.filter(name="East Clinic").exists()


def test_it_shows_an_office_to_its_members_and_404_to_other_teams(world: dict[str, Any]) -> None:
    path = f"offices/{world['a'].pk}/"
    for who in ("owner", "teammate", "op"):
        response = call(world[who], "get", path)
        assert response.status_code == 200 and response.json()["name"] == "Office A", who
    assert error(call(world["other"], "get", path), 404)["message"] == "Office not found."


def test_it_lets_an_operator_grant_a_role_that_opens_the_office_to_the_user(world: dict[str, Any]) -> None:
    newcomer = make_user("newcomer")
    path = f"offices/{world['a'].pk}/"
    assert call(newcomer, "get", path).status_code == 404
    response = call(world["op"], "post", path + "members/", {"user": newcomer.pk, "role": Role.OFFICE_STAFF})
    assert response.status_code == 200, response.content
    assert response.json() == {"user": newcomer.pk, "role": Role.OFFICE_STAFF}
    assert get_perms(newcomer, world["a"]) == [Role.OFFICE_STAFF]
    assert call(newcomer, "get", path).status_code == 200
    assert call(newcomer, "get", f"offices/{world['b'].pk}/").status_code == 404


def test_it_refuses_a_grant_for_a_missing_user_or_an_unknown_role(world: dict[str, Any]) -> None:
    path = f"offices/{world['a'].pk}/members/"
    body = error(call(world["op"], "post", path, {"user": 987_654, "role": Role.OFFICE_STAFF}), 400)
    assert (body["message"], body["extra"]) == ("No user with id 987654.", {"field": "user"})
    newcomer = make_user("newcomer")
    body = error(call(world["op"], "post", path, {"user": newcomer.pk, "role": "office_owner"}), 400)
    assert body["message"].startswith("role: ")
    assert get_perms(newcomer, world["a"]) == []
    assert not AuditEvent.objects.filter(action="permission.granted", data__user_id=newcomer.pk).exists()


def test_it_does_not_let_office_members_manage_members(world: dict[str, Any]) -> None:
    outsider = make_user("outsider")
    path = f"offices/{world['a'].pk}/members/"
    for who in ("owner", "teammate"):
        body = error(call(world[who], "post", path, {"user": outsider.pk, "role": Role.OFFICE_STAFF}), 403)
        assert body["message"] == "You may not manage members for office 'Office A'."
        error(call(world[who], "delete", f"{path}{world['owner'].pk}/"), 403)
    error(call(world["other"], "post", path, {"user": outsider.pk, "role": Role.OFFICE_STAFF}), 404)
    assert get_perms(outsider, world["a"]) == []
    assert get_perms(world["owner"], world["a"]) == [Role.OFFICE_STAFF]


def test_it_shows_nothing_of_the_office_to_a_member_once_revoked(world: dict[str, Any]) -> None:
    owner = world["owner"]
    client = Client()
    client.force_login(owner)
    assert client.get(f"/api/v1/offices/{world['a'].pk}/").status_code == 200
    revoke = call(world["op"], "delete", f"offices/{world['a'].pk}/members/{owner.pk}/")
    assert revoke.status_code == 204
    # Same session, next request: the office is gone from the member's view.
    assert client.get(f"/api/v1/offices/{world['a'].pk}/").status_code == 404
    assert client.get("/api/v1/offices/").json()["results"] == []
    event = AuditEvent.objects.get(action="permission.revoked")
    assert event.data == {"user_id": owner.pk, "roles": [Role.OFFICE_STAFF]}


def test_it_refuses_to_revoke_an_unknown_role_and_keeps_the_membership(world: dict[str, Any]) -> None:
    owner = world["owner"]
    body = error(call(world["op"], "delete", f"offices/{world['a'].pk}/members/{owner.pk}/?role=office_owner"), 400)
    assert body["message"] == "Unknown role 'office_owner'."
    assert get_perms(owner, world["a"]) == [Role.OFFICE_STAFF]
