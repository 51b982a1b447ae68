"""Office writes: creation, updates, the time-zone rule, the identity signal and per-office
roles (offices/services.py, offices/timezones.py, offices/signals.py)."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError
from guardian.shortcuts import get_perms

from audit.models import AuditEvent
from billing.services import subscription_cancel, subscription_create
from billing.tests.support.factories import OfficeFactory, operator, professional_plan
from config.errors import ApplicationError, ConflictError
from offices.models import CollectionMethod, Office, Role, SubscriptionStatus
from offices.services import office_create, office_member_grant, office_member_revoke, office_update
from offices.signals import billing_identity_changed
from offices.timezones import validate_timezone

pytestmark = pytest.mark.django_db


def make_user(username: str, **extra: Any) -> Any:
    return get_user_model().objects.create_user(username=username, password="pw-offices-1234", **extra)


@pytest.fixture
def identity_signals() -> Any:
    """The office ids `billing_identity_changed` was sent with, in order."""
    sent: list[int] = []

    def receiver(sender: Any, office_id: int, **kwargs: Any) -> None:
        sent.append(office_id)

    billing_identity_changed.connect(receiver, dispatch_uid="offices.tests.identity")
    yield sent
    billing_identity_changed.disconnect(dispatch_uid="offices.tests.identity")


# --- Creating offices -------------------------------------------------------------------


def test_it_creates_an_office_in_the_default_or_a_given_zone_and_audits_it() -> None:
    actor = operator()
    office = office_create(name="  North Clinic  ", billing_email="ap@north.example", actor=actor)
    office.refresh_from_db()
    assert (office.name, office.billing_email, office.timezone) == (
        "North Clinic",
        "ap@north.example",
        settings.BILLING_DEFAULT_TIMEZONE,
    )
    assert office.subscription_status == SubscriptionStatus.NONE
    event = AuditEvent.objects.get(action="office.created")
    assert (event.target_type, event.target_id, event.office_id) == ("offices.Office", str(office.pk), office.pk)
    assert (event.actor_type, event.actor_id) == ("user", str(actor.pk))
    assert event.data == {"timezone": settings.BILLING_DEFAULT_TIMEZONE}
    tokyo = office_create(name="Tokyo Clinic", billing_email="ap@tokyo.example", timezone="Asia/Tokyo")
    assert Office.objects.get(pk=tokyo.pk).timezone == "Asia/Tokyo"


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"timezone": "America/Chicgo"}, "timezone", "Unknown time zone 'America/Chicgo'"),
        ({"timezone": ""}, "timezone", "Unknown time zone ''"),
        ({"name": "   "}, "name", "'name' is required"),
        ({"billing_email": "not-an-email"}, "billing_email", "'not-an-email' is not a valid billing email"),
        ({"collection_method": "cheque"}, "collection_method", "'collection_method' must be one of"),
        ({"days_until_due": 0}, "days_until_due", "'days_until_due' must be a whole number of at least 1"),
        ({"days_until_due": True}, "days_until_due", "'days_until_due' must be a whole number of at least 1"),
    ],
)
def test_it_refuses_a_bad_office_and_writes_nothing(changes: dict[str, Any], field: str, words: str) -> None:
    fields: dict[str, Any] = {"name": "Clinic", "billing_email": "ap@clinic.example", **changes}
    with pytest.raises(ApplicationError) as refused:
        office_create(**fields)
    assert words in refused.value.message
    assert refused.value.status_code == 400
    assert refused.value.extra == {"field": field}
    assert not Office.objects.exists()
    assert not AuditEvent.objects.filter(action="office.created").exists()


def test_it_accepts_iana_zone_names_and_refuses_anything_else() -> None:
    for name in ("America/Chicago", "Europe/Berlin", "UTC", "Pacific/Chatham"):
        assert validate_timezone(name) == name
    for bad in ("america/chicago", "Mars/Olympus_Mons", "+05:00", "CST ", None, 5):
        with pytest.raises(ApplicationError) as refused:
            validate_timezone(bad)  # type: ignore[arg-type]
        assert refused.value.extra == {"field": "timezone"}
        assert "use an IANA name such as 'America/Chicago'" in refused.value.message


# --- Updating offices -------------------------------------------------------------------


def test_it_updates_an_office_and_audits_the_fields_and_their_old_values() -> None:
    office = OfficeFactory(name="Old Name", billing_email="old@clinic.example", timezone="America/Chicago")
    office_update(office=office, name="New Name", timezone="America/Denver", actor=operator())
    office.refresh_from_db()
    assert (office.name, office.timezone) == ("New Name", "America/Denver")
    event = AuditEvent.objects.get(action="office.updated")
    assert event.office_id == office.pk
    assert event.data == {"fields": ["name", "timezone"], "before": {"name": "Old Name", "timezone": "America/Chicago"}}


def test_it_refuses_fields_the_service_does_not_own() -> None:
    office = OfficeFactory()
    with pytest.raises(ApplicationError) as refused:
        office_update(office=office, subscription_status=SubscriptionStatus.ACTIVE, trial_used=True)
    assert "cannot be changed here: subscription_status, trial_used" in refused.value.message
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.NONE and office.trial_used is False
    assert not AuditEvent.objects.filter(action="office.updated").exists()


def test_it_refuses_an_unknown_zone_on_update_and_keeps_the_old_one() -> None:
    office = OfficeFactory(timezone="America/Chicago")
    with pytest.raises(ApplicationError) as refused:
        office_update(office=office, timezone="Chicago")
    assert refused.value.extra == {"field": "timezone"}
    office.refresh_from_db()
    assert office.timezone == "America/Chicago"


def test_it_refuses_a_zone_change_while_subscribed_and_allows_it_once_canceled() -> None:
    professional_plan()
    office = OfficeFactory(name="Zoned Clinic", timezone="America/Chicago")
    subscription_create(office=office, plan_code="professional")
    with pytest.raises(ConflictError) as refused:
        office_update(office=office, timezone="America/New_York")
    assert refused.value.status_code == 409
    assert "Office 'Zoned Clinic'" in refused.value.message
    assert "has a subscription (active): its time zone cannot change" in refused.value.message
    assert Office.objects.get(pk=office.pk).timezone == "America/Chicago"
    assert not AuditEvent.objects.filter(action="office.updated").exists()

    # Naming the zone it already has is no change, so it is allowed while subscribed.
    office_update(office=office, timezone="America/Chicago", name="Zoned Clinic Renamed")

    subscription_cancel(office=office, immediately=True)
    office_update(office=office, timezone="America/New_York")
    assert Office.objects.get(pk=office.pk).timezone == "America/New_York"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "   "}, "name"),
        ({"collection_method": "cheque"}, "collection_method"),
        ({"days_until_due": 0}, "days_until_due"),
    ],
)
def test_it_refuses_on_update_what_it_refuses_on_create(changes: dict[str, Any], field: str) -> None:
    office = OfficeFactory(name="Kept", collection_method=CollectionMethod.SEND_INVOICE, days_until_due=30)
    try:
        office_update(office=office, **changes)
    except ApplicationError as refused:
        assert refused.extra == {"field": field}
    except IntegrityError:
        pytest.fail(f"{changes} reached the database constraint instead of a clear ApplicationError")
    else:
        pytest.fail(f"{changes} was accepted")
    office.refresh_from_db()
    assert (office.name, office.collection_method, office.days_until_due) == ("Kept", "send_invoice", 30)


# --- The identity signal ----------------------------------------------------------------


def test_it_signals_billing_after_commit_when_the_name_or_email_changes(
    identity_signals: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    office = OfficeFactory(name="Signal Clinic", billing_email="ap@signal.example")
    with django_capture_on_commit_callbacks(execute=False) as pending:
        office_update(office=office, name="Signal Clinic Renamed")
        assert identity_signals == []  # not before the transaction commits
    for callback in pending:
        callback()
    assert identity_signals == [office.pk]
    with django_capture_on_commit_callbacks(execute=True):
        office_update(office=office, billing_email="new-ap@signal.example")
    assert identity_signals == [office.pk, office.pk]


def test_it_does_not_signal_when_neither_name_nor_email_changes(
    identity_signals: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    office = OfficeFactory(name="Quiet Clinic", billing_email="ap@quiet.example", timezone="America/Chicago")
    with django_capture_on_commit_callbacks(execute=True):
        office_update(office=office, timezone="America/Denver", days_until_due=15)
        office_update(office=office, name="Quiet Clinic", billing_email="ap@quiet.example")
    assert identity_signals == []


def test_it_does_not_signal_a_refused_update(
    identity_signals: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    office = OfficeFactory(name="Refused Clinic")
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(ApplicationError):
        office_update(office=office, name="Renamed", billing_email="broken")
    assert identity_signals == []
    assert Office.objects.get(pk=office.pk).name == "Refused Clinic"


# --- Per-office roles -------------------------------------------------------------------


def test_it_grants_a_role_on_one_office_only_and_audits_it() -> None:
    office, other = OfficeFactory(), OfficeFactory()
    user, actor = make_user("member"), operator()
    office_member_grant(office=office, user=user, role=Role.OFFICE_STAFF, actor=actor)
    assert get_perms(user, office) == [Role.OFFICE_STAFF]
    assert get_perms(user, other) == []
    event = AuditEvent.objects.get(action="permission.granted")
    assert (event.office_id, event.actor_id) == (office.pk, str(actor.pk))
    assert event.data == {"user_id": user.pk, "role": Role.OFFICE_STAFF}


def test_it_refuses_an_unknown_role_and_grants_nothing() -> None:
    office, user = OfficeFactory(), make_user("member")
    with pytest.raises(ApplicationError) as refused:
        office_member_grant(office=office, user=user, role="office_owner")
    assert refused.value.message == "Unknown role 'office_owner': use one of office_billing_admin, office_staff."
    assert refused.value.extra == {"field": "role"}
    assert get_perms(user, office) == []
    assert not AuditEvent.objects.filter(action="permission.granted").exists()


def test_it_revokes_every_role_or_just_the_one_named() -> None:
    office, other = OfficeFactory(), OfficeFactory()
    user = make_user("member")
    for role in Role.values:
        office_member_grant(office=office, user=user, role=role)
    office_member_grant(office=other, user=user, role=Role.OFFICE_STAFF)

    assert office_member_revoke(office=office, user=user, role=Role.OFFICE_BILLING_ADMIN) == [Role.OFFICE_BILLING_ADMIN]
    assert get_perms(user, office) == [Role.OFFICE_STAFF]

    office_member_grant(office=office, user=user, role=Role.OFFICE_BILLING_ADMIN)
    assert sorted(office_member_revoke(office=office, user=user)) == sorted(Role.values)
    assert get_perms(user, office) == []
    assert get_perms(user, other) == [Role.OFFICE_STAFF]  # another office's role is untouched
    last = AuditEvent.objects.filter(action="permission.revoked").last()
    assert last is not None and last.office_id == office.pk
    assert last.data == {"user_id": user.pk, "roles": sorted(Role.values)}


def test_it_refuses_to_revoke_an_unknown_role_and_keeps_the_others() -> None:
    office, user = OfficeFactory(), make_user("member")
    office_member_grant(office=office, user=user, role=Role.OFFICE_STAFF)
    with pytest.raises(ApplicationError) as refused:
        office_member_revoke(office=office, user=user, role="office_owner")
    assert refused.value.extra == {"field": "role"}
    assert get_perms(user, office) == [Role.OFFICE_STAFF]
    assert not AuditEvent.objects.filter(action="permission.revoked").exists()
