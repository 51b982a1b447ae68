"""Creating patients. Activation and deactivation bill, so they are billing's use-case
(`billing.services.patient_activate` / `patient_deactivate`)."""

from __future__ import annotations

from datetime import date
from typing import Any

from django.db import IntegrityError, transaction

from audit.services import audit_record
from config.errors import ApplicationError
from offices.models import Office
from patients.models import Patient, new_billing_ref


def patient_create(
    *,
    office: Office,
    first_name: str,
    last_name: str,
    date_of_birth: date,
    mrn: str,
    email: str = "",
    phone: str = "",
    actor: Any = None,
) -> Patient:
    """A new patient starts inactive (spec §5). The audit entry carries no PHI."""
    if Patient.objects.filter(office=office, mrn=mrn).exists():
        raise ApplicationError("A patient with this MRN already exists in this office.", {"field": "mrn"})
    for _attempt in range(5):  # billing_ref is random: retry the rare collision
        try:
            with transaction.atomic():
                patient = Patient.objects.create(
                    office=office,
                    billing_ref=new_billing_ref(),
                    first_name=first_name,
                    last_name=last_name,
                    date_of_birth=date_of_birth,
                    mrn=mrn,
                    email=email or "",
                    phone=phone or "",
                )
                audit_record(
                    action="patient.created",
                    actor=actor,
                    target=patient,
                    office_id=office.pk,
                    data={"patient_ref": patient.billing_ref},
                )
                return patient
        except IntegrityError:
            if Patient.objects.filter(office=office, mrn=mrn).exists():
                raise ApplicationError(
                    "A patient with this MRN already exists in this office.", {"field": "mrn"}
                ) from None
    raise ApplicationError("Could not allocate a billing reference; try again.")
