"""Who may see and do what, per office (spec §1). Reads only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet
from guardian.core import ObjectPermissionChecker
from guardian.shortcuts import get_objects_for_user

from config.errors import NotFoundError, PermissionDeniedError
from offices.models import COMPLIANCE_AUDITOR_GROUP, Office, Role

ROLE_PERMS = [f"offices.{role}" for role in Role.values]


def is_operator(user: Any) -> bool:
    """True for the vendor's operators (staff users), who act on every office (spec §1)."""
    return bool(user.is_authenticated and user.is_active and (user.is_staff or user.is_superuser))


def is_auditor(user: Any) -> bool:
    """True for members of the compliance-auditor group (read-only audit access, spec §9)."""
    return bool(user.is_authenticated and user.groups.filter(name=COMPLIANCE_AUDITOR_GROUP).exists())


def office_roles(user: Any, office: Office) -> set[str]:
    """The user's roles in this office (object permissions only: global ones never count)."""
    if not user.is_authenticated:
        return set()
    checker = ObjectPermissionChecker(user)
    if user.is_superuser:  # guardian grants superusers every permission; roles are explicit
        from guardian.models import UserObjectPermission

        codes = UserObjectPermission.objects.filter(
            user=user, object_pk=str(office.pk), content_type__app_label="offices"
        ).values_list("permission__codename", flat=True)
        return set(codes) & set(Role.values)
    return set(checker.get_perms(office)) & set(Role.values)


def offices_for_user(user: Any) -> QuerySet[Office]:
    """Offices the user may see: all for operators and auditors, else those with a role."""
    if is_operator(user) or is_auditor(user):
        return Office.objects.all()
    if not user.is_authenticated:
        return Office.objects.none()
    return get_objects_for_user(
        user, ROLE_PERMS, klass=Office, any_perm=True, accept_global_perms=False, with_superuser=False
    )


def offices_with_role(user: Any, role: str) -> QuerySet[Office]:
    """Offices where the user holds `role` as an object permission (global ones never count)."""
    if not user.is_authenticated:
        return Office.objects.none()
    return get_objects_for_user(user, f"offices.{role}", klass=Office, accept_global_perms=False, with_superuser=False)


def holds_role_anywhere(user: Any, role: str) -> bool:
    """True if the user holds this role on at least one office."""
    return offices_with_role(user, role).exists()


@dataclass(frozen=True)
class Access:
    """What one user may do on one office: the office and the roles held there (spec §1)."""

    office: Office
    operator: bool
    auditor: bool
    roles: frozenset[str]

    @property
    def billing(self) -> bool:
        return self.operator or Role.OFFICE_BILLING_ADMIN in self.roles

    @property
    def staff(self) -> bool:
        return Role.OFFICE_STAFF in self.roles


def office_access(user: Any, office_id: int | str) -> Access:
    """404 when the user may not know the office exists; otherwise what they hold in it."""
    try:
        office = Office.objects.select_related("current_plan", "pending_plan").get(pk=int(office_id))
    except (Office.DoesNotExist, ValueError, TypeError):
        raise NotFoundError("Office not found.") from None
    operator, auditor = is_operator(user), is_auditor(user)
    roles = frozenset(office_roles(user, office))
    if not (operator or auditor or roles):
        raise NotFoundError("Office not found.")
    return Access(office=office, operator=operator, auditor=auditor, roles=roles)


def object_access(user: Any, office_id: int, *, allowed: Callable[[Access], bool], what: str, not_found: str) -> Access:
    """For endpoints addressed by an object's id (a patient, an invoice): a caller who may
    not act on it and holds no role in its office (an auditor) gets exactly the 404 of an id
    that does not exist, so ids cannot be enumerated across offices; a member of the office
    gets the 403 that names the action."""
    try:
        access = office_access(user, office_id)
    except NotFoundError:
        raise NotFoundError(not_found) from None
    if not allowed(access):
        if not access.roles and not access.operator:
            raise NotFoundError(not_found)
        require(access, False, what)
    return access


def require(access: Access, allowed: bool, what: str) -> None:
    """Refuse with 403 naming the action unless `allowed` (the caller already holds the office)."""
    if not allowed:
        raise PermissionDeniedError(f"You may not {what} for office '{access.office.name}'.")
