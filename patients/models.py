"""Patients (PHI) and their activation history (append-only intervals), spec §5."""

from __future__ import annotations

import secrets

from django.db import models
from django.db.models import Q

from offices.models import Office

# Crockford-style alphabet: no I, L, O, U — unambiguous when read aloud or printed.
_REF_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_billing_ref() -> str:
    """A random, opaque reference (never derived from PHI), e.g. PT-7K3M9QX2."""
    return "PT-" + "".join(secrets.choice(_REF_ALPHABET) for _ in range(8))


class Patient(models.Model):
    """A patient of one office. first_name .. phone are PHI: they appear only in the
    patients endpoints, never in billing data, invoices, audit entries, logs or Stripe."""

    office = models.ForeignKey(Office, on_delete=models.PROTECT, related_name="patients")
    billing_ref = models.CharField(max_length=16, unique=True, default=new_billing_ref, editable=False)
    first_name = models.CharField(max_length=100)
    last_name = models.CharField(max_length=100)
    date_of_birth = models.DateField()
    mrn = models.CharField("MRN", max_length=64)
    email = models.EmailField(blank=True, default="")
    phone = models.CharField(max_length=32, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    PHI_FIELDS = ("first_name", "last_name", "date_of_birth", "mrn", "email", "phone")

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["office", "mrn"], name="patient_unique_mrn_per_office")]

    def __str__(self) -> str:
        return self.billing_ref  # never PHI: this string reaches the admin and logs


class ActivationInterval(models.Model):
    """[activated_at, deactivated_at) — open while deactivated_at is NULL.

    Append-only: a row is inserted at activation; the only later write is closing it
    (NULL → a time after activated_at), which a trigger enforces; rows are never deleted."""

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="intervals")
    office = models.ForeignKey(Office, on_delete=models.PROTECT, related_name="+")
    activated_at = models.DateTimeField()
    deactivated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["activated_at", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(deactivated_at__isnull=True) | Q(deactivated_at__gt=models.F("activated_at")),
                name="interval_ends_after_start",
            ),
            models.UniqueConstraint(
                fields=["patient"], condition=Q(deactivated_at__isnull=True), name="interval_one_open_per_patient"
            ),
        ]
        indexes = [
            models.Index(fields=["office", "activated_at"]),
            models.Index(fields=["office", "deactivated_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.activated_at:%Y-%m-%d %H:%M} → {self.deactivated_at or 'open'}"
