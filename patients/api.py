"""Patients for office staff (spec §10). Clinical fields appear here and nowhere else;
operators may list an office's patients but see only {id, billing_ref, is_active}."""

from __future__ import annotations

from typing import Any

from django.db.models import Exists, OuterRef
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.services import audit_record
from billing.services import patient_activate, patient_deactivate
from config.api import NoStoreMixin, Pagination
from config.errors import NotFoundError
from offices.selectors import object_access, office_access, require
from patients.models import ActivationInterval, Patient
from patients.services import patient_create


def with_is_active(qs: Any) -> Any:
    return qs.annotate(
        is_active=Exists(ActivationInterval.objects.filter(patient=OuterRef("pk"), deactivated_at__isnull=True))
    )


class PatientSerializer(serializers.ModelSerializer[Patient]):
    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = Patient
        fields = [
            "id",
            "billing_ref",
            "is_active",
            "first_name",
            "last_name",
            "date_of_birth",
            "mrn",
            "email",
            "phone",
            "created_at",
        ]
        read_only_fields = ["id", "billing_ref", "is_active", "created_at"]


class PatientRefSerializer(serializers.ModelSerializer[Patient]):
    """What an operator may see of a patient: the billing reference and status only."""

    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = Patient
        fields = ["id", "billing_ref", "is_active"]


class PatientListItemSerializer(serializers.Serializer[Any]):
    """What the list documents: office staff get every field, operators only the first
    three (minimum necessary), so the clinical fields are optional here."""

    id = serializers.IntegerField()
    billing_ref = serializers.CharField()
    is_active = serializers.BooleanField()
    first_name = serializers.CharField(required=False)
    last_name = serializers.CharField(required=False)
    date_of_birth = serializers.DateField(required=False)
    mrn = serializers.CharField(required=False)
    email = serializers.CharField(required=False)  # "" when none was given
    phone = serializers.CharField(required=False)
    created_at = serializers.DateTimeField(required=False)


class OfficePatientsView(NoStoreMixin, ListAPIView[Patient]):
    """List an office's patients (staff see details, others billing refs) and create them (spec §5, §9)."""

    pagination_class = Pagination

    def get_serializer_class(self) -> Any:
        if getattr(self, "swagger_fake_view", False):  # schema generation: no request, no office
            return PatientListItemSerializer
        access = self._access()
        return PatientSerializer if access.staff else PatientRefSerializer

    def _access(self) -> Any:
        if not hasattr(self, "_cached_access"):
            self._cached_access = office_access(self.request.user, self.kwargs["office_id"])
        return self._cached_access

    def get_queryset(self) -> Any:
        access = self._access()
        require(access, access.staff or access.operator, "list patients")
        audit_record(
            action="patient.list_viewed",
            actor=self.request.user,
            target=access.office,
            office_id=access.office.pk,
            data={"clinical_fields": access.staff},
        )
        return with_is_active(Patient.objects.filter(office=access.office)).order_by("id")

    @extend_schema(request=PatientSerializer, responses={201: PatientSerializer})
    def post(self, request: Request, office_id: int) -> Response:
        """Create a patient, inactive until activated (spec §5)."""
        access = self._access()
        require(access, access.staff, "create patients")
        data = PatientSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        patient = patient_create(office=access.office, actor=request.user, **data.validated_data)
        patient = with_is_active(Patient.objects.filter(pk=patient.pk)).get()
        return Response(PatientSerializer(patient).data, status=status.HTTP_201_CREATED)


class _PatientAction(NoStoreMixin, APIView):
    action_name = ""

    def _run(self, patient: Patient, request: Request) -> None:
        raise NotImplementedError

    @extend_schema(request=None, responses=PatientSerializer)
    def post(self, request: Request, patient_id: int) -> Response:
        patient = Patient.objects.filter(pk=patient_id).first()
        if patient is None:
            raise NotFoundError("Patient not found.")
        object_access(
            request.user,
            patient.office_id,
            allowed=lambda access: access.staff,
            what=f"{self.action_name} patients",
            not_found="Patient not found.",
        )
        self._run(patient, request)
        patient = with_is_active(Patient.objects.filter(pk=patient.pk)).get()
        return Response(PatientSerializer(patient).data)


class PatientActivateView(_PatientAction):
    """Activate a patient; billing adds the line under the office lock (spec §5)."""

    action_name = "activate"

    def _run(self, patient: Patient, request: Request) -> None:
        patient_activate(patient=patient, actor=request.user)


class PatientDeactivateView(_PatientAction):
    """Deactivate a patient; lines already billed stay (spec §5)."""

    action_name = "deactivate"

    def _run(self, patient: Patient, request: Request) -> None:
        patient_deactivate(patient=patient, actor=request.user)
