"""/api/v1/: every resource is the same small viewset over its Resource declaration.

The work lives elsewhere: the gate (restrict with the client as actor), the scope check
(permissions), paging (paging), the field profile (Resource.selected) and the disclosure log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from bxos.api.disclosure import disclosure_record, disclosure_values
from bxos.api.errors import BadParameter
from bxos.api.pages import (
    cached_statement,
    compile_page,
    page_shape,
    page_values,
    remember_statement,
)
from bxos.api.paging import Page, apply_page, last_key, page_meta, parse_page
from bxos.api.resources import RESOURCES, Resource
from bxos.api.scopes import WRITE_SCOPES
from bxos.api.throttling import RateLimitHeadersMixin
from bxos.common.db import safe_change_version
from bxos.common.models import Tombstone
from bxos.common.permissions import VIEW, restrict

STUDENT_KEY = "__student"


# --- Selectors: every face of the API (REST here, GraphQL in bxos.api.graphql) reads through
# these, so the gate, the field profile and the filters cannot differ between them.


def resource_queryset(resource: Resource, actor) -> QuerySet:
    """The rows of ``resource`` that ``actor`` may see (the one gate)."""
    return restrict(resource.model._default_manager.all(), actor, VIEW)


def resource_fields(resource: Resource, actor) -> dict[str, str]:
    """The fields of ``resource`` that ``actor``'s field profile lets it receive."""
    profile = actor.field_profile
    allowed = profile.fields.get(resource.name) if profile else None
    return resource.selected(allowed)


def resource_rows(
    resource: Resource, queryset: QuerySet, fields: dict[str, str]
) -> tuple[list[dict], list[int]]:
    """The rows of ``queryset`` as ``fields`` (API name -> ORM path), and for each row the
    id of the student it is about (empty when the resource holds no student data)."""
    names = list(fields)
    paths = list(fields.values())
    student_at = None
    if resource.student:
        # Read once even when a field is the same column: a query wrapped in a subquery (a
        # filter on a window function) keeps one of two same-named columns.
        if resource.student not in paths:
            paths.append(resource.student)
        student_at = paths.index(resource.student)
    rows, students = [], []
    for values in queryset.values_list(*paths):
        rows.append(dict(zip(names, values, strict=False)))
        if student_at is not None:
            students.append(values[student_at])
    return rows, students


def whole_number(parameter: str, raw: Any) -> int:
    """``raw`` (a query parameter, a path segment, a GraphQL ID) as an id, or a 400 naming
    ``parameter``."""
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise BadParameter(parameter, f"must be a whole number, not {raw!r}") from None


def resource_filter(resource: Resource, queryset: QuerySet, params: Mapping[str, Any]) -> QuerySet:
    """``queryset`` narrowed by the resource's filters present in ``params``."""
    for param, lookup in resource.filters.items():
        raw = params.get(param)
        if raw is None:
            continue
        if isinstance(raw, str) and "\x00" in raw:
            raise BadParameter(param, "must not contain NUL characters")
        if lookup.endswith("_id") or lookup == "id":
            raw = whole_number(param, raw)
        try:
            queryset = queryset.filter(**{lookup: raw})
        except DjangoValidationError as exc:  # a value the field cannot hold (a bad date)
            raise BadParameter(param, " ".join(exc.messages)) from None
    return queryset


def page_statement(resource: Resource, client, params: Mapping[str, Any], page: Page):
    """The compiled statement of a list page of ``resource`` for ``client`` and the page values
    to run it with: a shape seen before is reused, else the ORM builds it through the gate
    (bxos.api.pages)."""
    fields = resource_fields(resource, client)
    key = None
    if client.acting_for is None and not any(name in params for name in resource.filters):
        # Everything the compiled text depends on: the gate's inputs included.
        key = (
            resource.name,
            tuple(fields.items()),
            client.district_id,
            tuple(client.allowed_school_ids()),
            bool(set(client.scopes) & WRITE_SCOPES),
            page_shape(page),
        )
        statement = cached_statement(key)
        if statement is not None:
            return statement, page_values(page)
    queryset = apply_page(
        resource_filter(resource, resource_queryset(resource, client), params), page
    )
    statement, reusable = compile_page(
        queryset, fields=fields, student_path=resource.student, page=page, disclose=True
    )
    if not reusable:
        return statement, []
    if key is not None:
        remember_statement(key, statement)
    return statement, page_values(page)


def list_body(resource: Resource, request, client, page: Page) -> dict:
    """One list page of ``resource`` for ``client`` as the response body; its disclosure row
    is written by the page's own statement. ``request``: a DRF or a plain Django request (the
    DRF viewset and bxos.api.lean answer lists with this one function)."""
    statement, values = page_statement(resource, client, request.GET, page)
    # One round trip: the page, and its disclosure row written by the same statement.
    rows, _ = statement.run(values, disclosure_values(client=client, request=request))
    has_more = len(rows) > page.limit
    rows = rows[: page.limit]
    last = last_key(rows[-1], page) if rows else None
    return {"data": rows, **page_meta(request, page, last, has_more)}


class ResourceViewSet(RateLimitHeadersMixin, viewsets.ViewSet):
    resource: Resource

    def required_scope(self, request) -> str:
        return self.resource.scope

    # --- reading ------------------------------------------------------------------------

    def _fields(self, request) -> dict[str, str]:
        return resource_fields(self.resource, request.user)

    def _queryset(self, request):
        return resource_queryset(self.resource, request.user)

    def _rows(self, queryset, fields: dict[str, str]) -> tuple[list[dict], list[int]]:
        return resource_rows(self.resource, queryset, fields)

    def list(self, request, *args, **kwargs):
        page = parse_page(request, set(self.resource.filters))
        return Response(list_body(self.resource, request, request.user, page))

    def retrieve(self, request, pk=None, *args, **kwargs):
        pk = whole_number("id", pk)
        rows, students = self._rows(self._queryset(request).filter(pk=pk), self._fields(request))
        if not rows:
            from rest_framework.exceptions import NotFound

            raise NotFound(f"No {self.resource.name} record with id {pk}.")
        disclosure_record(client=request.user, request=request, student_ids=students)
        return Response({"data": rows[0]})

    @action(detail=False, methods=["get"], url_path="deletes")
    def deletes(self, request, *args, **kwargs):
        """Tombstones of this resource in the change window (Ed-Fi style /deletes)."""
        page = parse_page(request, set(), windowed=True)
        queryset = apply_page(
            Tombstone.objects.filter(
                table_name=self.resource.model._meta.db_table, district_id=request.user.district_id
            ),
            page,
        )
        rows = [
            {
                "id": object_id,
                "changeVersion": cv,
                "sourceId": source_id,
                "deletedAt": at,
                "tombstoneId": tid,
            }
            for tid, object_id, cv, source_id, at in queryset.values_list(
                "id", "object_id", "change_version", "source_id", "deleted_at"
            )[: page.limit + 1]
        ]
        has_more = len(rows) > page.limit
        rows = rows[: page.limit]
        last = (rows[-1]["changeVersion"], rows[-1]["tombstoneId"]) if rows else None
        return Response({"data": rows, **page_meta(request, page, last, has_more)})


# Resources that take writes get the write mixin in front of the read viewset.
def _write_mixins(name: str) -> tuple[type, ...]:
    from bxos.api.writes import BsrWrites, IncidentWrites

    return {"incidents": (IncidentWrites,), "behaviorSupportRequests": (BsrWrites,)}.get(name, ())


VIEWSETS: dict[str, type[ResourceViewSet]] = {
    resource.name: type(
        f"{resource.name[0].upper()}{resource.name[1:]}ViewSet",
        (*_write_mixins(resource.name), ResourceViewSet),
        {"resource": resource},
    )
    for resource in RESOURCES
}


def api_not_found(request, *args, **kwargs):
    """Any other path under /api/v1/: a problem+json 404, like every API error."""
    from django.http import JsonResponse

    body = {
        "type": "urn:bxos:problem:not-found",
        "title": "Not found",
        "status": 404,
        "detail": f"There is no API resource at {request.path}.",
        "instance": request.path,
        "requestId": getattr(request, "request_id", None),
    }
    return JsonResponse(body, status=404, content_type="application/problem+json")


class ChangesAvailableView(RateLimitHeadersMixin, APIView):
    """The change versions a client can ask for: oldest and newest."""

    def required_scope(self, request):
        return None

    def get(self, request, *args, **kwargs):
        return Response({"oldestChangeVersion": 0, "newestChangeVersion": safe_change_version()})
