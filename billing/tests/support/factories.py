"""Test factories and small helpers for building billing histories."""

from __future__ import annotations

import itertools
from datetime import date, datetime

import factory
import time_machine
from django.contrib.auth import get_user_model

from billing.models import Plan
from offices.models import Office
from patients.models import Patient

_seq = itertools.count(1)


class PlanFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Plan

    code = factory.Sequence(lambda n: f"plan-{n}")
    name = factory.LazyAttribute(lambda o: o.code.title())
    currency = "usd"
    per_patient_cents = 450
    minimum_cents = 0
    setup_fee_cents = 0
    trial_days = 0


class OfficeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Office

    name = factory.Sequence(lambda n: f"Office {n}")
    billing_email = factory.Sequence(lambda n: f"billing{n}@office.example")
    timezone = "America/Chicago"


class PatientFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Patient

    office = factory.SubFactory(OfficeFactory)
    first_name = factory.Sequence(lambda n: f"Given{n}")
    last_name = factory.Sequence(lambda n: f"Family{n}")
    date_of_birth = date(1970, 1, 1)
    mrn = factory.Sequence(lambda n: f"MRN{n:06d}")


def professional_plan(**kw: object) -> Plan:
    """The plan of the spec's worked examples (§11)."""
    defaults: dict[str, object] = {
        "code": "professional",
        "name": "Professional",
        "per_patient_cents": 450,
        "minimum_cents": 15000,
        "setup_fee_cents": 50000,
        "trial_days": 0,
    }
    defaults.update(kw)
    return PlanFactory(**defaults)


def at(moment: datetime) -> time_machine.travel:
    """Freeze the clock at `moment` (use as a context manager)."""
    return time_machine.travel(moment, tick=False)


def operator(username: str = "operator"):
    return get_user_model().objects.create_user(username=username, password="x", is_staff=True)
