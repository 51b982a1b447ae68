"""Offices, companies and per-office roles (django-guardian object permissions)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils.timezone import now as utc_now
from guardian.shortcuts import assign_perm, get_perms, remove_perm

from audit.services import audit_record
from config.errors import ApplicationError, ConflictError
from offices.models import CollectionMethod, Company, Office, Role, SubscriptionStatus
from offices.signals import billing_identity_changed
from offices.timezones import validate_timezone

User = get_user_model()


def _clean_email(value: str) -> str:
    try:
        validate_email(value)
    except ValidationError as exc:
        raise ApplicationError(f"'{value}' is not a valid billing email address.", {"field": "billing_email"}) from exc
    return value


def _clean_office_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The checks office_create and office_update share: each bad value is a 400 naming
    its field, before anything is written."""
    cleaned = dict(fields)
    if "name" in fields:
        name = fields["name"]
        if not isinstance(name, str) or not name.strip():
            raise ApplicationError("'name' is required.", {"field": "name"})
        cleaned["name"] = name.strip()
    if "collection_method" in fields and fields["collection_method"] not in CollectionMethod.values:
        raise ApplicationError(
            f"'collection_method' must be one of {', '.join(CollectionMethod.values)}.", {"field": "collection_method"}
        )
    if "days_until_due" in fields:
        days = fields["days_until_due"]
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise ApplicationError(
                "'days_until_due' must be a whole number of at least 1.", {"field": "days_until_due"}
            )
    return cleaned


@transaction.atomic
def office_create(
    *,
    name: str,
    billing_email: str,
    timezone: str | None = None,
    company: Company | None = None,
    collection_method: str = CollectionMethod.CHARGE_AUTOMATICALLY,
    days_until_due: int = 30,
    actor: Any = None,
) -> Office:
    """Create an office with a validated time zone and collection method (spec §1, §2); audited."""
    fields: dict[str, Any] = _clean_office_fields(
        {"name": name, "collection_method": collection_method, "days_until_due": days_until_due}
    )
    if timezone is not None:
        fields["timezone"] = validate_timezone(timezone)
    office = Office.objects.create(billing_email=_clean_email(billing_email), company=company, **fields)
    audit_record(
        action="office.created", actor=actor, target=office, office_id=office.pk, data={"timezone": office.timezone}
    )
    return office


@transaction.atomic
def office_update(*, office: Office, actor: Any = None, **changes: Any) -> Office:
    """Name, billing email, collection method, time zone. The zone cannot change while a
    subscription that is not canceled exists (spec §2)."""
    office = Office.objects.select_for_update().get(pk=office.pk)
    allowed = {"name", "billing_email", "timezone", "collection_method", "days_until_due", "company"}
    unknown = set(changes) - allowed
    if unknown:
        raise ApplicationError(f"These office fields cannot be changed here: {', '.join(sorted(unknown))}.")
    if "timezone" in changes and changes["timezone"] != office.timezone:
        changes["timezone"] = validate_timezone(changes["timezone"])
        if office.subscription_status not in (SubscriptionStatus.NONE, SubscriptionStatus.CANCELED):
            raise ConflictError(
                f"Office '{office.name}' has a subscription ({office.subscription_status}): "
                "its time zone cannot change until the subscription is canceled."
            )
    if "billing_email" in changes:
        _clean_email(changes["billing_email"])
    changes = _clean_office_fields(changes)
    before = {k: str(getattr(office, k)) for k in changes}
    identity_changed = any(k in ("name", "billing_email") and getattr(office, k) != v for k, v in changes.items())
    for key, value in changes.items():
        setattr(office, key, value)
    if identity_changed:
        office.customer_identity_changed_at = utc_now()
    office.save()
    if identity_changed:
        office_id = office.pk
        transaction.on_commit(lambda: billing_identity_changed.send(sender=Office, office_id=office_id), robust=True)
    audit_record(
        action="office.updated",
        actor=actor,
        target=office,
        office_id=office.pk,
        data={"fields": sorted(changes), "before": before},
    )
    return office


@transaction.atomic
def office_member_grant(*, office: Office, user: AbstractBaseUser, role: str, actor: Any = None) -> None:
    """Give a user a role (billing admin, staff, …) on one office (spec §1); audited."""
    if role not in Role.values:
        raise ApplicationError(f"Unknown role '{role}': use one of {', '.join(Role.values)}.", {"field": "role"})
    assign_perm(f"offices.{role}", user, office)
    audit_record(
        action="permission.granted",
        actor=actor,
        target=office,
        office_id=office.pk,
        data={"user_id": user.pk, "role": role},
    )


@transaction.atomic
def office_member_revoke(
    *, office: Office, user: AbstractBaseUser, role: str | None = None, actor: Any = None
) -> list[str]:
    """Take a user's role on an office away; the next request sees it gone (spec §1); audited."""
    roles = [role] if role else [r for r in Role.values if r in get_perms(user, office)]
    if role is not None and role not in Role.values:
        raise ApplicationError(f"Unknown role '{role}'.", {"field": "role"})
    for r in roles:
        remove_perm(f"offices.{r}", user, office)
    audit_record(
        action="permission.revoked",
        actor=actor,
        target=office,
        office_id=office.pk,
        data={"user_id": user.pk, "roles": roles},
    )
    return roles
