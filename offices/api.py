"""Offices and memberships (spec §10)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api import Pagination
from config.errors import ApplicationError, PermissionDeniedError
from offices import services
from offices.models import CollectionMethod, Company, Office, Role
from offices.selectors import is_operator, office_access, offices_for_user, require

User = get_user_model()


class OfficeSerializer(serializers.ModelSerializer[Office]):
    company: serializers.PrimaryKeyRelatedField[Company] = serializers.PrimaryKeyRelatedField(
        read_only=True, allow_null=True
    )

    class Meta:
        model = Office
        fields = ["id", "name", "timezone", "billing_email", "company", "collection_method", "subscription_status"]


class OfficeCreateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=200)
    timezone = serializers.CharField(max_length=64, required=False)
    billing_email = serializers.EmailField()
    company = serializers.PrimaryKeyRelatedField(queryset=Company.objects.all(), required=False, allow_null=True)
    collection_method = serializers.ChoiceField(choices=CollectionMethod.choices, required=False)
    days_until_due = serializers.IntegerField(min_value=1, max_value=365, required=False)


class OfficesView(ListAPIView[Office]):
    """List the offices the user may see; operators create offices (spec §1, §10)."""

    serializer_class = OfficeSerializer
    pagination_class = Pagination

    def get_queryset(self) -> Any:
        return offices_for_user(self.request.user).select_related("company").order_by("name", "id")

    @extend_schema(request=OfficeCreateSerializer, responses={201: OfficeSerializer})
    def post(self, request: Request) -> Response:
        """Create an office (operators only, spec §1)."""
        if not is_operator(request.user):
            raise PermissionDeniedError("Only operators can create offices.")
        data = OfficeCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        office = services.office_create(actor=request.user, **data.validated_data)
        return Response(OfficeSerializer(office).data, status=status.HTTP_201_CREATED)


class OfficeDetailView(APIView):
    @extend_schema(responses=OfficeSerializer)
    def get(self, request: Request, office_id: int) -> Response:
        """One office the user has a role on (spec §1, §10)."""
        access = office_access(request.user, office_id)
        return Response(OfficeSerializer(access.office).data)


class MemberSerializer(serializers.Serializer[Any]):
    user = serializers.IntegerField()
    role = serializers.ChoiceField(choices=Role.choices)


class MembersView(APIView):
    @extend_schema(request=MemberSerializer, responses={200: MemberSerializer})
    def post(self, request: Request, office_id: int) -> Response:
        """Grant a user a role on the office (operators only, spec §1)."""
        access = office_access(request.user, office_id)
        require(access, access.operator, "manage members")
        data = MemberSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = User.objects.filter(pk=data.validated_data["user"]).first()
        if user is None:
            raise ApplicationError(f"No user with id {data.validated_data['user']}.", {"field": "user"})
        services.office_member_grant(
            office=access.office, user=user, role=data.validated_data["role"], actor=request.user
        )
        return Response({"user": user.pk, "role": data.validated_data["role"]})


class MemberDetailView(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, office_id: int, user_id: int) -> Response:
        """Revoke a user's role on the office (operators only, spec §1)."""
        access = office_access(request.user, office_id)
        require(access, access.operator, "manage members")
        user = User.objects.filter(pk=user_id).first()
        if user is None:
            raise ApplicationError(f"No user with id {user_id}.", {"field": "user"})
        services.office_member_revoke(
            office=access.office, user=user, role=request.query_params.get("role") or None, actor=request.user
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
