"""/api/v1/: every resource is the same small viewset over its Resource declaration.

The work lives elsewhere: the gate (restrict with the client as actor), the scope check
(permissions), paging (paging), the field profile (Resource.selected) and the disclosure log.
"""

from __future__ import annotations

from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from bxos.api.disclosure import disclosure_record
from bxos.api.errors import BadParameter
from bxos.api.paging import apply_page, page_meta, parse_page
from bxos.api.resources import RESOURCES, Resource
from bxos.api.throttling import RateLimitHeadersMixin
from bxos.common.db import safe_change_version
from bxos.common.models import Tombstone
from bxos.common.permissions import VIEW, restrict

STUDENT_KEY = "__student"


class ResourceViewSet(RateLimitHeadersMixin, viewsets.ViewSet):
    resource: Resource

    def required_scope(self, request) -> str:
        return self.resource.scope

    # --- reading ------------------------------------------------------------------------

    def _fields(self, request) -> dict[str, str]:
        profile = request.user.field_profile
        allowed = profile.fields.get(self.resource.name) if profile else None
        return self.resource.selected(allowed)

    def _queryset(self, request):
        model = self.resource.model
        return restrict(model._default_manager.all(), request.user, VIEW)

    def _rows(self, queryset, fields: dict[str, str]) -> tuple[list[dict], list[int]]:
        names = list(fields)
        paths = list(fields.values())
        if self.resource.student:
            paths.append(self.resource.student)
        rows, students = [], []
        for values in queryset.values_list(*paths):
            rows.append(dict(zip(names, values, strict=False)))
            if self.resource.student:
                students.append(values[-1])
        return rows, students

    def _filtered(self, request, queryset):
        for param, lookup in self.resource.filters.items():
            raw = request.query_params.get(param)
            if raw is None:
                continue
            if "\x00" in raw:
                raise BadParameter(param, "must not contain NUL characters")
            if lookup.endswith("_id") or lookup == "id":
                try:
                    raw = int(raw)
                except ValueError:
                    raise BadParameter(param, f"must be a whole number, not {raw!r}") from None
            queryset = queryset.filter(**{lookup: raw})
        return queryset

    def list(self, request, *args, **kwargs):
        page = parse_page(request, set(self.resource.filters))
        queryset = apply_page(self._filtered(request, self._queryset(request)), page)
        fields = self._fields(request)
        rows, students = self._rows(queryset[: page.limit + 1], fields)
        has_more = len(rows) > page.limit
        rows, students = rows[: page.limit], students[: page.limit]
        disclosure_record(client=request.user, request=request, student_ids=students)
        last = None
        if rows:
            last = (
                (rows[-1]["changeVersion"], rows[-1]["id"])
                if page.by_change_version
                else (rows[-1]["id"],)
            )
        return Response({"data": rows, **page_meta(request, page, last, has_more)})

    def retrieve(self, request, pk=None, *args, **kwargs):
        try:
            pk = int(pk)
        except (TypeError, ValueError):
            raise BadParameter("id", f"must be a whole number, not {pk!r}") from None
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
