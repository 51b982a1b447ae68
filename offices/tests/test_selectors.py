"""Who may see what, per office (offices/selectors.py): object permissions only, 404 for
an office a user may not know about, operators and auditors across offices."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, Group, Permission

from billing.tests.support.factories import OfficeFactory, operator
from config.errors import NotFoundError, PermissionDeniedError
from offices.models import COMPLIANCE_AUDITOR_GROUP, Office, Role
from offices.selectors import (
    holds_role_anywhere,
    is_auditor,
    is_operator,
    office_access,
    office_roles,
    offices_for_user,
    offices_with_role,
    require,
)
from offices.services import office_member_grant, office_member_revoke

pytestmark = pytest.mark.django_db


def make_user(username: str, **extra: Any) -> Any:
    return get_user_model().objects.create_user(username=username, password="pw-offices-1234", **extra)


@pytest.fixture
def trio() -> dict[str, Any]:
    """Office A with its staff member and billing admin; office B with its own staff member."""
    office_a, office_b = OfficeFactory(name="Office A"), OfficeFactory(name="Office B")
    owner, teammate, other = make_user("staff_a"), make_user("admin_a"), make_user("staff_b")
    office_member_grant(office=office_a, user=owner, role=Role.OFFICE_STAFF)
    office_member_grant(office=office_a, user=teammate, role=Role.OFFICE_BILLING_ADMIN)
    office_member_grant(office=office_b, user=other, role=Role.OFFICE_STAFF)
    return {"a": office_a, "b": office_b, "owner": owner, "teammate": teammate, "other": other}


def test_it_gives_each_member_their_own_role_and_hides_the_office_from_other_teams(trio: dict[str, Any]) -> None:
    owner = office_access(trio["owner"], trio["a"].pk)
    assert (owner.roles, owner.staff, owner.billing) == (frozenset({Role.OFFICE_STAFF}), True, False)
    teammate = office_access(trio["teammate"], trio["a"].pk)
    assert (teammate.roles, teammate.staff, teammate.billing) == (
        frozenset({Role.OFFICE_BILLING_ADMIN}),
        False,
        True,
    )
    with pytest.raises(NotFoundError) as hidden:
        office_access(trio["other"], trio["a"].pk)
    assert hidden.value.message == "Office not found."
    assert list(offices_for_user(trio["other"])) == [trio["b"]]


def test_it_answers_the_same_404_for_a_missing_or_malformed_office_id(trio: dict[str, Any]) -> None:
    for office_id in (trio["b"].pk, 999_999, "abc", None):
        with pytest.raises(NotFoundError) as hidden:
            office_access(trio["owner"], office_id)  # type: ignore[arg-type]
        assert (hidden.value.status_code, hidden.value.message) == (404, "Office not found.")


def test_it_forgets_a_member_as_soon_as_their_role_is_revoked(trio: dict[str, Any]) -> None:
    owner = trio["owner"]
    assert holds_role_anywhere(owner, Role.OFFICE_STAFF)
    office_member_revoke(office=trio["a"], user=owner)
    assert office_roles(owner, trio["a"]) == set()
    assert not holds_role_anywhere(owner, Role.OFFICE_STAFF)
    assert not offices_for_user(owner).exists()
    with pytest.raises(NotFoundError):
        office_access(owner, trio["a"].pk)
    # The teammate's role in the same office is unaffected.
    assert office_access(trio["teammate"], trio["a"].pk).billing


def test_it_lets_operators_see_and_bill_every_office_without_holding_a_role(trio: dict[str, Any]) -> None:
    op = operator("ops")
    assert is_operator(op)
    assert set(offices_for_user(op)) == {trio["a"], trio["b"]}
    access = office_access(op, trio["b"].pk)
    assert (access.operator, access.billing, access.staff, access.roles) == (True, True, False, frozenset())


def test_it_does_not_treat_inactive_staff_or_anonymous_users_as_operators() -> None:
    assert not is_operator(make_user("former_ops", is_staff=True, is_active=False))
    assert not is_operator(AnonymousUser())
    assert not is_operator(make_user("plain"))
    assert offices_for_user(AnonymousUser()).count() == 0


def test_it_gives_superusers_only_the_roles_granted_to_them_explicitly(trio: dict[str, Any]) -> None:
    root = get_user_model().objects.create_superuser(username="root", password="pw-offices-1234")
    assert is_operator(root)
    assert office_roles(root, trio["a"]) == set()
    assert not holds_role_anywhere(root, Role.OFFICE_STAFF)
    assert not office_access(root, trio["a"].pk).staff
    office_member_grant(office=trio["a"], user=root, role=Role.OFFICE_STAFF)
    assert office_roles(root, trio["a"]) == {Role.OFFICE_STAFF}
    assert list(offices_with_role(root, Role.OFFICE_STAFF)) == [trio["a"]]


def test_it_never_counts_a_global_permission_as_an_office_role(trio: dict[str, Any]) -> None:
    user = make_user("global_staff")
    user.user_permissions.add(Permission.objects.get(content_type__app_label="offices", codename=Role.OFFICE_STAFF))
    user = get_user_model().objects.get(pk=user.pk)  # drop Django's permission cache
    assert user.has_perm(f"offices.{Role.OFFICE_STAFF}")  # the global permission is really there
    assert not holds_role_anywhere(user, Role.OFFICE_STAFF)
    assert office_roles(user, trio["a"]) == set()
    assert not offices_for_user(user).exists()
    with pytest.raises(NotFoundError):
        office_access(user, trio["a"].pk)


def test_it_lets_auditors_see_every_office_but_neither_bill_nor_treat_patients(trio: dict[str, Any]) -> None:
    auditor = make_user("auditor")
    auditor.groups.add(Group.objects.get_or_create(name=COMPLIANCE_AUDITOR_GROUP)[0])
    assert is_auditor(auditor) and not is_operator(auditor)
    assert offices_for_user(auditor).count() == Office.objects.count() == 2
    access = office_access(auditor, trio["a"].pk)
    assert (access.auditor, access.billing, access.staff) == (True, False, False)


def test_it_refuses_with_a_403_naming_the_office_and_the_action(trio: dict[str, Any]) -> None:
    access = office_access(trio["teammate"], trio["a"].pk)
    require(access, access.billing, "view invoices")  # allowed: returns quietly
    with pytest.raises(PermissionDeniedError) as refused:
        require(access, access.staff, "create patients")
    assert refused.value.status_code == 403
    assert refused.value.message == "You may not create patients for office 'Office A'."
