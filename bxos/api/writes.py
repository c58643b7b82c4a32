"""Writes through the vendor API: incidents, behavior support requests, BSR status moves.

Every write needs the ``behavior.write`` scope, resolves each referenced id through the gate
(another district's or school's id is "no such ... here", never a hint that it exists), calls
the same service as the admin, and records the client's service user in the audit log. An
``Idempotency-Key`` makes a retry safe: the first response is stored and replayed for the same
key and body; the same key with another body is a 409.
"""

from __future__ import annotations

import hashlib
import json

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotFound, PermissionDenied, ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from bxos.api.disclosure import disclosure_record
from bxos.api.models import IdempotencyRecord
from bxos.api.scopes import BEHAVIOR_WRITE
from bxos.behavior import choices as bch
from bxos.behavior import services as behavior_services
from bxos.behavior.models import BehaviorSupportRequest, Descriptor, Incident
from bxos.common.permissions import ADD, CHANGE, VIEW, restrict
from bxos.schools.models import School, Staff, Student


class PayloadTooLarge(APIException):
    status_code = 413
    default_detail = "The request body is too large."
    default_code = "payload-too-large"


class Conflict(APIException):
    status_code = 409
    default_detail = "Conflict."
    default_code = "conflict"


# API field name -> model field name, to report service (model) errors under the API's names.
MODEL_TO_API = {
    "student": "studentId",
    "school": "schoolId",
    "reported_by": "reportedById",
    "occurred_on": "date",
    "occurred_at": "time",
    "problem_behavior": "problemBehavior",
    "others_involved": "othersInvolved",
    "restraint_seclusion": "restraintSeclusion",
    "law_enforcement_referral": "lawEnforcementReferral",
    "school_related_arrest": "schoolRelatedArrest",
    "zero_tolerance_expulsion": "zeroToleranceExpulsion",
    "idea_removal": "ideaRemoval",
    "services_after_removal": "servicesAfterRemoval",
    "requested_by": "requestedById",
    "assignee": "assigneeId",
    "state": "toState",
}


def _api_errors(exc: DjangoValidationError) -> ValidationError:
    if hasattr(exc, "error_dict"):
        return ValidationError({MODEL_TO_API.get(k, k): v for k, v in exc.message_dict.items()})
    return ValidationError(exc.messages)


class IncidentIn(serializers.Serializer):
    studentId = serializers.IntegerField()
    schoolId = serializers.IntegerField()
    reportedById = serializers.IntegerField()
    date = serializers.DateField()
    time = serializers.TimeField()
    level = serializers.ChoiceField(choices=bch.IncidentLevel.choices)
    problemBehavior = serializers.CharField(max_length=64)
    location = serializers.CharField(max_length=64)
    subtype = serializers.CharField(max_length=64, required=False, allow_blank=True)
    motivation = serializers.CharField(max_length=64, required=False, allow_blank=True)
    othersInvolved = serializers.CharField(max_length=64, required=False, allow_blank=True)
    restraintSeclusion = serializers.ChoiceField(
        choices=bch.RestraintSeclusion.choices, required=False
    )
    lawEnforcementReferral = serializers.BooleanField(required=False)
    schoolRelatedArrest = serializers.BooleanField(required=False)
    zeroToleranceExpulsion = serializers.BooleanField(required=False)
    ideaRemoval = serializers.ChoiceField(choices=bch.IdeaRemoval.choices, required=False)
    servicesAfterRemoval = serializers.BooleanField(required=False)
    narrative = serializers.CharField(required=False, allow_blank=True, max_length=10000)


class BsrIn(serializers.Serializer):
    studentId = serializers.IntegerField()
    schoolId = serializers.IntegerField()
    requestedById = serializers.IntegerField()
    concern = serializers.CharField(max_length=10000)


class BsrTransitionIn(serializers.Serializer):
    toState = serializers.ChoiceField(choices=bch.BsrState.choices)
    note = serializers.CharField(required=False, allow_blank=True, max_length=5000)
    priority = serializers.IntegerField(required=False, min_value=1, max_value=4)
    assigneeId = serializers.IntegerField(required=False)


def _visible(client, model, pk: int, field: str, label: str):
    """The row if this client may see it, else a 400 naming the field."""
    rows = model._default_manager.filter(pk=pk)
    if model is Staff and client.acting_for is not None:
        # A person acting through an app may always name themselves (as the reporter or
        # requester), even in a role that cannot list staff.
        own = rows.filter(user=client.acting_for, district_id=client.district_id).first()
        if own is not None:
            return own
    obj = restrict(rows, client, VIEW).first()
    if obj is None:
        raise ValidationError({field: [f"No {label} with id {pk} here."]})
    return obj


def _code(client, categories: list[str], code: str | None, field: str):
    if not code:
        return None
    found = (
        Descriptor.objects.filter(category__in=categories, code=code, is_active=True)
        .filter(Q(district_id=client.district_id) | Q(district__isnull=True))
        .order_by("district_id")  # a district's own entry wins over a shipped default
        .first()
    )
    if found is None:
        raise ValidationError({field: [f"Unknown code {code!r}."]})
    return found


class IdempotentWrites:
    """The body of a write (a JSON object, size-capped) and ``Idempotency-Key`` handling, for
    every write of the API (these views and webhooks.api)."""

    def _body(self, request) -> dict:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        if length > settings.API["MAX_BODY_BYTES"]:
            raise PayloadTooLarge(
                f"The body is {length} bytes; the most this API accepts is "
                f"{settings.API['MAX_BODY_BYTES']}."
            )
        data = request.data  # 415 for anything but JSON, 400 for malformed JSON
        if not isinstance(data, dict):
            raise ValidationError(["The body must be a JSON object."])
        return data

    def _idempotent(self, request, work) -> Response:
        key = request.headers.get("Idempotency-Key", "")
        body = self._body(request)
        if not key:
            return work(body)
        if len(key) > 255:
            raise ValidationError({"Idempotency-Key": ["At most 255 characters."]})
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        client = request.user
        with transaction.atomic():
            try:
                with transaction.atomic():
                    record = IdempotencyRecord.objects.create(
                        client=client,
                        key=key,
                        method=request.method,
                        path=request.path,
                        body_hash=digest,
                        status_code=0,
                        response_body={},
                    )
            except IntegrityError:
                record = IdempotencyRecord.objects.select_for_update().get(client=client, key=key)
                if (record.body_hash, record.path, record.method) != (
                    digest,
                    request.path,
                    request.method,
                ):
                    raise Conflict(
                        "This Idempotency-Key was used with a different request; use a new key "
                        "for a new request."
                    ) from None
                response = Response(record.response_body, status=record.status_code)
                response["Idempotent-Replayed"] = "true"
                return response
            try:
                response = work(body)
            except ValidationError as exc:
                # A refused request is answered the same way when retried.
                from bxos.api.errors import problem_exception_handler

                response = problem_exception_handler(exc, {"request": request})
            record.status_code = response.status_code
            # Stored as the client received it (dates as strings), so a replay is identical.
            record.response_body = json.loads(JSONRenderer().render(response.data))
            record.save(update_fields=["status_code", "response_body"])
        return response


class WriteMixin(IdempotentWrites):
    """Create (and, for BSRs, move) through the services, with idempotency."""

    def required_scope(self, request) -> str:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return super().required_scope(request)
        return BEHAVIOR_WRITE

    # --- request checks -------------------------------------------------------------------

    @staticmethod
    def _require_staff_may(request, model, action: str) -> None:
        """An app acting for a staff member writes only what that person may write: the
        scope alone is not enough (403 naming the person and the missing permission)."""
        user = request.user.acting_for
        if user is None:
            return
        opts = model._meta
        if not user.has_perm(f"{opts.app_label}.{action}_{opts.model_name}"):
            raise PermissionDenied(
                f"{user.get_username()}, for whom this app acts, may not {action} "
                f"{opts.verbose_name_plural}."
            )

    def _created(self, request, obj) -> Response:
        rows, students = self._rows(
            self._queryset(request).filter(pk=obj.pk), self._fields(request)
        )
        disclosure_record(client=request.user, request=request, student_ids=students)
        return Response({"data": rows[0]}, status=status.HTTP_201_CREATED)


class IncidentWrites(WriteMixin):
    def create(self, request, *args, **kwargs):
        self._require_staff_may(request, Incident, ADD)

        def work(body):
            data = IncidentIn(data=body)
            data.is_valid(raise_exception=True)
            v = data.validated_data
            client = request.user
            student = _visible(client, Student, v["studentId"], "studentId", "student")
            school = _visible(client, School, v["schoolId"], "schoolId", "school")
            staff = _visible(client, Staff, v["reportedById"], "reportedById", "staff member")
            level = v["level"]
            behavior = _code(client, [f"behavior_{level}"], v["problemBehavior"], "problemBehavior")
            extra = {
                "subtype": _code(
                    client,
                    ["harassment_type", "weapon_type", "firearm_type"],
                    v.get("subtype"),
                    "subtype",
                ),
                "motivation": _code(client, ["motivation"], v.get("motivation"), "motivation"),
                "others_involved": _code(
                    client, ["others_involved"], v.get("othersInvolved"), "othersInvolved"
                ),
            }
            for api_name, model_name in (
                ("restraintSeclusion", "restraint_seclusion"),
                ("lawEnforcementReferral", "law_enforcement_referral"),
                ("schoolRelatedArrest", "school_related_arrest"),
                ("zeroToleranceExpulsion", "zero_tolerance_expulsion"),
                ("ideaRemoval", "idea_removal"),
                ("servicesAfterRemoval", "services_after_removal"),
                ("narrative", "narrative"),
            ):
                if api_name in v:
                    extra[model_name] = v[api_name]
            try:
                incident = behavior_services.incident_create(
                    actor=client.audit_actor,
                    student=student,
                    school=school,
                    reported_by=staff,
                    occurred_on=v["date"],
                    occurred_at=v["time"],
                    level=level,
                    problem_behavior=behavior,
                    location=_code(client, ["location"], v["location"], "location"),
                    **{k: val for k, val in extra.items() if val is not None},
                )
            except DjangoValidationError as exc:
                raise _api_errors(exc) from None
            return self._created(request, incident)

        return self._idempotent(request, work)


class BsrWrites(WriteMixin):
    def create(self, request, *args, **kwargs):
        self._require_staff_may(request, BehaviorSupportRequest, ADD)

        def work(body):
            data = BsrIn(data=body)
            data.is_valid(raise_exception=True)
            v = data.validated_data
            client = request.user
            try:
                bsr = behavior_services.bsr_submit(
                    actor=client.audit_actor,
                    student=_visible(client, Student, v["studentId"], "studentId", "student"),
                    school=_visible(client, School, v["schoolId"], "schoolId", "school"),
                    requested_by=_visible(
                        client, Staff, v["requestedById"], "requestedById", "staff member"
                    ),
                    concern=v["concern"],
                )
            except DjangoValidationError as exc:
                raise _api_errors(exc) from None
            return self._created(request, bsr)

        return self._idempotent(request, work)

    @action(detail=True, methods=["post"], url_path="transitions")
    def transitions(self, request, pk=None, *args, **kwargs):
        """Move a request through its workflow (triage, start, resolve, escalate, close)."""
        self._require_staff_may(request, BehaviorSupportRequest, CHANGE)

        def work(body):
            data = BsrTransitionIn(data=body)
            data.is_valid(raise_exception=True)
            v = data.validated_data
            client = request.user
            try:
                bsr_id = int(pk)
            except (TypeError, ValueError):
                raise NotFound(f"No behaviorSupportRequests record with id {pk}.") from None
            bsr = restrict(BehaviorSupportRequest.objects.filter(pk=bsr_id), client, CHANGE).first()
            if bsr is None:
                raise NotFound(f"No behaviorSupportRequests record with id {bsr_id}.")
            assignee = None
            if v.get("assigneeId") is not None:
                assignee = _visible(client, Staff, v["assigneeId"], "assigneeId", "staff member")
            try:
                bsr = behavior_services.bsr_transition(
                    actor=client.audit_actor,
                    bsr=bsr,
                    to_state=v["toState"],
                    note=v.get("note", ""),
                    priority=v.get("priority"),
                    assignee=assignee,
                )
            except DjangoValidationError as exc:
                raise _api_errors(exc) from None
            rows, students = self._rows(
                self._queryset(request).filter(pk=bsr.pk), self._fields(request)
            )
            disclosure_record(client=client, request=request, student_ids=students)
            return Response({"data": rows[0]})

        return self._idempotent(request, work)
