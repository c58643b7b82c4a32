"""The vendor's face of webhooks in /api/v1/: its endpoints, their deliveries, the event
catalogue, and the pull backstop.

- ``/webhooks/endpoints``, ``/webhooks/deliveries``: scope ``webhooks:manage``; a client sees
  and changes only its own endpoints and their deliveries (another client's or district's id
  is a 404). Endpoints belong to the client, not to a person: a token that acts for a staff
  member (authorization code) is refused with a 403 that says so. Writes go through
  webhooks.services with the client's audit actor; the secret is in the create and rotate
  responses only.
- ``/webhooks/event-types``: the catalogue, for any valid token (it holds no data).
- ``/events``: the events the client could have been pushed, judged by the outbox's own
  audience rules (webhooks.outbox.client_payloads); one disclosure row per response.

The views share the API's base: bearer tokens, scope check, throttles and RateLimit headers,
problem+json errors, key-set paging, monitoring. See docs/development/decisions.md, "Webhooks
through the vendor API".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import connection
from django.db.models import F, Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView
from ulid import ULID

from bxos.api.disclosure import disclosure_record
from bxos.api.errors import BadParameter
from bxos.api.paging import PAGING_PARAMS, apply_page, last_key, page_from, page_meta, parse_page
from bxos.api.permissions import holds_scope
from bxos.api.schema import IDEMPOTENCY, JSON, PROBLEM, ProblemSerializer
from bxos.api.scopes import WEBHOOKS_MANAGE
from bxos.api.throttling import RateLimitHeadersMixin
from bxos.api.views import whole_number
from bxos.api.writes import Conflict, IdempotentWrites
from bxos.common.db import OTHER_WRITERS_SQL
from bxos.common.permissions import VIEW, restrict
from bxos.schools.models import School
from webhooks import catalogue, outbox, services
from webhooks import serializers as s
from webhooks.choices import DeliveryStatus
from webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

TAG = "webhooks"
LIST_PARAMS = {"limit", "after"}
# The pull reads at most this many events per page of ``limit`` before answering with what it
# found (a client that may receive few of the district's events still gets a quick answer).
SCAN_FACTOR = 5
MIN_SCAN = 500
BATCH = 100
MAX_EVENT_TYPES = 50
ATTEMPTS_SHOWN = 100

DELEGATED = (
    "This token acts for a staff member (authorization code grant); webhook endpoints and "
    "events belong to a server-to-server client (client credentials), not to a person."
)


# --- shared ------------------------------------------------------------------------------


class ClientOnly:
    """For views a token acting for a person may not use (put before RateLimitHeadersMixin)."""

    def check_permissions(self, request) -> None:
        super().check_permissions(request)  # type: ignore[misc]
        if getattr(request.user, "acting_for", None) is not None:
            raise PermissionDenied(DELEGATED)


class ManageView(ClientOnly, RateLimitHeadersMixin):
    """Scope ``webhooks:manage``; counted as the "webhooks" endpoint group for rate rules."""

    catalogue_scopes = (WEBHOOKS_MANAGE, WEBHOOKS_MANAGE)

    def required_scope(self, request) -> str:
        return WEBHOOKS_MANAGE

    def rate_groups(self, request) -> list[tuple[str, str]]:
        return [(WEBHOOKS_MANAGE, "webhooks")]


def api_errors(exc: DjangoValidationError) -> ValidationError:
    """A service's (model) errors under the API's field names."""
    if hasattr(exc, "error_dict"):
        return ValidationError({s.MODEL_TO_API.get(k, k): v for k, v in exc.message_dict.items()})
    return ValidationError(exc.messages)


def list_page(request, filters: set[str]):
    """The page a list asks for: ``limit`` and ``after`` (no change window: these rows have no
    change version), plus ``filters``."""
    known = LIST_PARAMS | filters
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise BadParameter(
            unknown[0], f"is not a parameter of this list; known: {', '.join(sorted(known))}"
        )
    page = parse_page(request, filters)
    if page.by_change_version:  # a cursor of a windowed list
        raise BadParameter("after", "does not belong to this kind of list")
    return page


def an_id(name: str, raw: str) -> int:
    """A query parameter naming a row by id, or a 400 (ids are positive 64-bit integers)."""
    value = whole_number(name, raw)
    if not 1 <= value <= s.MAX_ID:
        raise BadParameter(name, f"must be an id between 1 and {s.MAX_ID}, not {raw!r}")
    return value


def instant(name: str, raw: str) -> datetime:
    """An RFC 3339 time with an offset, or a 400 naming ``name``."""
    try:
        value = parse_datetime(raw)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise BadParameter(
            name, f"must be an RFC 3339 time with an offset, e.g. 2026-10-14T09:30:00Z, not {raw!r}"
        )
    try:
        # In UTC: RFC 3339 allows offsets up to 23:59, PostgreSQL only up to 15:59.
        return value.astimezone(UTC)
    except OverflowError:
        raise BadParameter(name, f"is out of range once in UTC: {raw!r}") from None


def known_event_types(name: str, raw: str) -> list[str]:
    types = [t for t in (part.strip() for part in raw.split(",")) if t]
    unknown = sorted(set(types) - set(catalogue.entries()))
    if not types or unknown or len(types) > MAX_EVENT_TYPES:
        shown = ", ".join(repr(t) for t in unknown[:5]) or repr(raw)
        raise BadParameter(
            name, f"must be event types of /webhooks/event-types (comma-separated), not {shown}"
        )
    return types


def _problems(*codes: int, **texts: str) -> dict:
    defaults = {
        400: "A parameter or a field is missing or has a bad value: `errors` names it.",
        401: "No token, an invalid or expired token, or the client's access has stopped.",
        403: f"The token or the client lacks the scope `{WEBHOOKS_MANAGE}`, or the token acts "
        "for a staff member: `detail` says which.",
        404: "No such item among this client's own (another client's or district's is a 404).",
        409: "The Idempotency-Key was already used with a different request.",
        413: "The request body is larger than the API accepts.",
        415: "The body is not application/json.",
        429: "Too many requests; retry after the number of seconds in Retry-After.",
    }
    return {
        (code, PROBLEM): OpenApiResponse(
            ProblemSerializer, description=texts.get(f"e{code}", defaults[code])
        )
        for code in codes
    }


ID = OpenApiParameter("id", int, OpenApiParameter.PATH, description="Id.")
PAGING = [
    OpenApiParameter(
        "limit",
        {
            "type": "integer",
            "minimum": 1,
            "maximum": settings.API["MAX_PAGE_SIZE"],
            "default": settings.API["DEFAULT_PAGE_SIZE"],
        },
        description=f"Page size, {settings.API['DEFAULT_PAGE_SIZE']} by default; above "
        f"{settings.API['MAX_PAGE_SIZE']} it is lowered and `meta.limitCapped` says so.",
    ),
    OpenApiParameter("after", str, description="Cursor of the next page, from `meta.next`."),
]
assert {p.name for p in PAGING} <= PAGING_PARAMS  # the same names as every list of the API


# --- endpoints ---------------------------------------------------------------------------


class EndpointViewSet(ManageView, IdempotentWrites, viewsets.ViewSet):
    """The client's own webhook endpoints."""

    def _queryset(self, request):
        client = request.user
        return WebhookEndpoint.objects.filter(
            client=client, district_id=client.district_id
        ).prefetch_related("schools")

    def _get(self, request, pk) -> WebhookEndpoint:
        pk = whole_number("id", pk)
        endpoint = self._queryset(request).filter(pk=pk).first()
        if endpoint is None:
            raise NotFound(f"This client has no webhook endpoint with id {pk}.")
        return endpoint

    @staticmethod
    def _schools(client, ids: list[int]) -> list[School]:
        """The schools named, each one the client may read; else a 400 naming schoolIds."""
        found = {
            school.pk: school
            for school in restrict(School.objects.filter(pk__in=ids), client, VIEW)
        }
        missing = [i for i in ids if i not in found]
        if missing:
            raise ValidationError(
                {"schoolIds": [f"No school with id {missing[0]} among this client's schools."]}
            )
        return [found[i] for i in ids]

    @extend_schema(
        operation_id="webhooks_endpoints_list",
        summary="List the client's webhook endpoints",
        description=f"Needs the scope `{WEBHOOKS_MANAGE}`. Ordered by id.",
        tags=[TAG],
        parameters=PAGING,
        responses={
            (200, JSON): OpenApiResponse(s.EndpointListSerializer, description="A page."),
            **_problems(400, 401, 403, 429),
        },
    )
    def list(self, request, *args, **kwargs):
        page = list_page(request, set())
        endpoints = list(apply_page(self._queryset(request), page)[: page.limit + 1])
        has_more = len(endpoints) > page.limit
        rows = s.EndpointSerializer(endpoints[: page.limit], many=True).data
        last = last_key(rows[-1], page) if rows else None
        return Response({"data": rows, **page_meta(request, page, last, has_more)})

    @extend_schema(
        operation_id="webhooks_endpoints_create",
        summary="Create a webhook endpoint",
        description=f"Needs the scope `{WEBHOOKS_MANAGE}`. The answer holds the signing secret "
        "(Standard Webhooks, `whsec_...`), shown this once. The endpoint receives only what "
        "this client may read through the API: the event types its scopes cover, records "
        "within its allowed schools, the fields of its field profile. Every delivery is "
        "written to the district's disclosure log.",
        tags=[TAG],
        request=s.EndpointInSerializer,
        parameters=[IDEMPOTENCY],
        responses={
            (201, JSON): OpenApiResponse(
                s.EndpointSecretSerializer, description="The endpoint and its secret."
            ),
            **_problems(
                400,
                401,
                403,
                409,
                413,
                415,
                429,
                e400="A field is missing or refused: an unknown event type or one outside "
                "the client's scopes (`eventTypes`), a URL the SSRF guard refuses with the "
                "reason (`url`), a school outside the client's (`schoolIds`).",
            ),
        },
    )
    def create(self, request, *args, **kwargs):
        shown: dict[str, str] = {}

        def work(body):
            data = s.EndpointInSerializer(data=body)
            data.is_valid(raise_exception=True)
            client = request.user
            fields = data.model_data()
            active = fields.pop("active", True)
            schools = self._schools(client, data.validated_data.get("schoolIds", []))
            try:
                endpoint, secret = services.webhook_endpoint_create(
                    actor=client.audit_actor,
                    district=client.district,
                    client=client,
                    schools=schools,
                    active=active,
                    **fields,
                )
                # This answer is the secret's one showing (no face shows it again).
                services.webhook_secret_reveal(actor=client.audit_actor, endpoint=endpoint)
            except DjangoValidationError as exc:
                raise api_errors(exc) from None
            shown["secret"] = secret
            # Stored for an Idempotency-Key replay without the secret (never kept in clear).
            body = {"data": s.EndpointSerializer(self._get(request, endpoint.pk)).data}
            return Response({**body, "secret": None}, status=status.HTTP_201_CREATED)

        response = self._idempotent(request, work)
        if "secret" in shown:
            response.data["secret"] = shown["secret"]
        return response

    @extend_schema(
        operation_id="webhooks_endpoints_retrieve",
        summary="Get one webhook endpoint",
        description=f"Needs the scope `{WEBHOOKS_MANAGE}`. Never shows the secret.",
        tags=[TAG],
        parameters=[ID],
        responses={
            (200, JSON): OpenApiResponse(s.EndpointItemSerializer, description="The endpoint."),
            **_problems(400, 401, 403, 404, 429),
        },
    )
    def retrieve(self, request, pk=None, *args, **kwargs):
        return Response({"data": s.EndpointSerializer(self._get(request, pk)).data})

    @extend_schema(
        operation_id="webhooks_endpoints_update",
        summary="Change a webhook endpoint",
        description=f"Needs the scope `{WEBHOOKS_MANAGE}`. Any subset of the fields; "
        "`active: false` disables the endpoint (new deliveries are held, not dropped), "
        "`active: true` enables it and sends the held deliveries in order.",
        tags=[TAG],
        request=s.EndpointInSerializer,
        parameters=[ID],
        responses={
            (200, JSON): OpenApiResponse(s.EndpointItemSerializer, description="The endpoint."),
            **_problems(400, 401, 403, 404, 413, 415, 429),
        },
    )
    def partial_update(self, request, pk=None, *args, **kwargs):
        endpoint = self._get(request, pk)
        data = s.EndpointInSerializer(data=self._body(request), partial=True)
        data.is_valid(raise_exception=True)
        client = request.user
        schools = None
        if "schoolIds" in data.validated_data:
            schools = self._schools(client, data.validated_data["schoolIds"])
        try:
            services.webhook_endpoint_update(
                actor=client.audit_actor, endpoint=endpoint, data=data.model_data(), schools=schools
            )
        except DjangoValidationError as exc:
            raise api_errors(exc) from None
        return Response({"data": s.EndpointSerializer(self._get(request, endpoint.pk)).data})

    @extend_schema(
        operation_id="webhooks_endpoints_destroy",
        summary="Delete a webhook endpoint",
        description=f"Needs the scope `{WEBHOOKS_MANAGE}`. Its open deliveries are cancelled; "
        "all its deliveries stay listed under /webhooks/deliveries with `endpointDeleted: true` "
        "(and its id as `endpointId`).",
        tags=[TAG],
        parameters=[ID],
        responses={
            (204, None): OpenApiResponse(description="Deleted."),
            **_problems(400, 401, 403, 404, 429),
        },
    )
    def destroy(self, request, pk=None, *args, **kwargs):
        endpoint = self._get(request, pk)
        try:
            services.webhook_endpoint_delete(actor=request.user.audit_actor, endpoint=endpoint)
        except DjangoValidationError as exc:
            raise api_errors(exc) from None
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        operation_id="webhooks_endpoints_rotate_secret",
        summary="Rotate an endpoint's signing secret",
        description=f"Needs the scope `{WEBHOOKS_MANAGE}`. A new secret, shown this once; the "
        "current ones stay valid, and every request is signed with each of them, for the "
        "grace period, so the receiver can switch over without losing a delivery.",
        tags=[TAG],
        request=s.RotateInSerializer,
        parameters=[ID],
        responses={
            (200, JSON): OpenApiResponse(s.RotatedSecretSerializer, description="The secret."),
            **_problems(400, 401, 403, 404, 413, 415, 429),
        },
    )
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request, pk=None, *args, **kwargs):
        endpoint = self._get(request, pk)
        data = s.RotateInSerializer(data=self._body(request))
        data.is_valid(raise_exception=True)
        hours = data.validated_data.get("graceHours", settings.WEBHOOKS["SECRET_GRACE_HOURS"])
        actor = request.user.audit_actor
        secret = services.webhook_secret_rotate(
            actor=actor, endpoint=endpoint, grace=timedelta(hours=hours)
        )
        services.webhook_secret_reveal(actor=actor, endpoint=endpoint)  # its one showing
        until = (
            endpoint.secrets.filter(expires_at__isnull=False)
            .order_by("-expires_at")
            .values_list("expires_at", flat=True)
            .first()
        )
        return Response(
            {
                "data": s.EndpointSerializer(endpoint).data,
                "secret": secret,
                "previousSecretsExpireAt": until or timezone.now(),
            }
        )


# --- deliveries --------------------------------------------------------------------------

DELIVERY_FILTERS = {"endpointId", "endpointDeleted", "eventType", "status", "since", "until"}
DELIVERY_FILTER_PARAMS = [
    OpenApiParameter(
        "endpointId",
        {"type": "integer", "minimum": 1},
        description="Only this endpoint's (also one the client has deleted).",
    ),
    OpenApiParameter(
        "endpointDeleted",
        bool,
        description="`true`: only the deliveries of endpoints the client has deleted; "
        "`false`: only those of its current endpoints. Default: both.",
    ),
    OpenApiParameter("eventType", str, description="Only events of these types (comma-separated)."),
    OpenApiParameter(
        "status", str, enum=[v for v, _ in DeliveryStatus.choices], description="Only these."
    ),
    OpenApiParameter(
        "since",
        {"type": "string", "format": "date-time"},
        description="Only deliveries created at or after this time (RFC 3339, with an offset).",
    ),
    OpenApiParameter(
        "until",
        {"type": "string", "format": "date-time"},
        description="Only deliveries created before this time (RFC 3339, with an offset).",
    ),
]


class DeliveryViewSet(ManageView, IdempotentWrites, viewsets.ViewSet):
    """Deliveries to the client's own endpoints, their attempts, and replays."""

    def _queryset(self, request):
        """The client's own: of its endpoints, and of the endpoints it has deleted (each
        delivery keeps the client of its deleted endpoint), never another client's."""
        client = request.user
        # The ids as a list (a client has a handful): an OR with a subquery would scan every
        # delivery; with a list each side is an index scan.
        own = list(WebhookEndpoint.objects.filter(client=client).values_list("pk", flat=True))
        return (
            WebhookDelivery.objects.filter(
                Q(endpoint_id__in=own) | Q(deleted_endpoint_client=client),
                district_id=client.district_id,
            )
            .annotate(event_type=F("event__type"))
            .defer("body")
        )

    def _get(self, request, pk) -> WebhookDelivery:
        pk = whole_number("id", pk)
        delivery = self._queryset(request).filter(pk=pk).first()
        if delivery is None:
            raise NotFound(f"This client has no webhook delivery with id {pk}.")
        return delivery

    def _filtered(self, request, queryset):
        params = request.query_params
        if (raw := params.get("endpointId")) is not None:
            pk = an_id("endpointId", raw)
            queryset = queryset.filter(Q(endpoint_id=pk) | Q(deleted_endpoint_id=pk))
        if (raw := params.get("endpointDeleted")) is not None:
            if raw not in ("true", "false"):
                raise BadParameter("endpointDeleted", f"must be true or false, not {raw!r}")
            queryset = queryset.filter(endpoint__isnull=raw == "true")
        if (raw := params.get("eventType")) is not None:
            queryset = queryset.filter(event__type__in=known_event_types("eventType", raw))
        if (raw := params.get("status")) is not None:
            if raw not in DeliveryStatus.values:
                raise BadParameter(
                    "status", f"must be one of {', '.join(DeliveryStatus.values)}, not {raw!r}"
                )
            queryset = queryset.filter(status=raw)
        if (raw := params.get("since")) is not None:
            queryset = queryset.filter(created_at__gte=instant("since", raw))
        if (raw := params.get("until")) is not None:
            queryset = queryset.filter(created_at__lt=instant("until", raw))
        return queryset

    @extend_schema(
        operation_id="webhooks_deliveries_list",
        summary="List deliveries to the client's endpoints",
        description=f"Needs the scope `{WEBHOOKS_MANAGE}`. Ordered by id (oldest first). "
        "Deliveries of endpoints the client has deleted are listed too, with "
        "`endpointDeleted: true` (their open ones were cancelled); `endpointDeleted` filters.",
        tags=[TAG],
        parameters=[*PAGING, *DELIVERY_FILTER_PARAMS],
        responses={
            (200, JSON): OpenApiResponse(s.DeliveryListSerializer, description="A page."),
            **_problems(400, 401, 403, 429),
        },
    )
    def list(self, request, *args, **kwargs):
        page = list_page(request, DELIVERY_FILTERS)
        queryset = apply_page(self._filtered(request, self._queryset(request)), page)
        deliveries = list(queryset[: page.limit + 1])
        has_more = len(deliveries) > page.limit
        rows = s.DeliverySerializer(deliveries[: page.limit], many=True).data
        last = last_key(rows[-1], page) if rows else None
        return Response({"data": rows, **page_meta(request, page, last, has_more)})

    @extend_schema(
        operation_id="webhooks_deliveries_retrieve",
        summary="Get one delivery with its attempts",
        description=f"Needs the scope `{WEBHOOKS_MANAGE}`. With its newest {ATTEMPTS_SHOWN} "
        "attempts: status code, duration, error class and the first 16 KB of the answer.",
        tags=[TAG],
        parameters=[ID],
        responses={
            (200, JSON): OpenApiResponse(s.DeliveryItemSerializer, description="The delivery."),
            **_problems(400, 401, 403, 404, 429),
        },
    )
    def retrieve(self, request, pk=None, *args, **kwargs):
        delivery = self._get(request, pk)
        newest = delivery.tries.order_by("-started_at", "-id")[:ATTEMPTS_SHOWN]
        delivery.attempt_list = list(reversed(newest))
        return Response({"data": s.DeliveryDetailSerializer(delivery).data})

    def _replay(self, request, delivery: WebhookDelivery) -> None:
        try:
            services.webhook_delivery_replay_checked(
                actor=request.user.audit_actor, delivery=delivery
            )
        except DjangoValidationError as exc:
            raise Conflict(" ".join(exc.messages)) from None

    @extend_schema(
        operation_id="webhooks_deliveries_replay",
        summary="Send a delivery again",
        description=f"Needs the scope `{WEBHOOKS_MANAGE}`. From its first attempt, with the "
        "same `webhook-id`; judged again with today's access (scopes, schools, field "
        "profile). A delivery still on its way is left as it is.",
        tags=[TAG],
        request=None,
        parameters=[ID],
        responses={
            (200, JSON): OpenApiResponse(s.DeliveryChangedSerializer, description="Queued."),
            **_problems(
                400,
                401,
                403,
                404,
                409,
                429,
                e409="The endpoint may no longer receive this event (the client's scopes or "
                "schools changed): `detail` says why.",
            ),
        },
    )
    @action(detail=True, methods=["post"], url_path="replay")
    def replay(self, request, pk=None, *args, **kwargs):
        delivery = self._get(request, pk)
        self._replay(request, delivery)
        return Response({"data": s.DeliverySerializer(self._get(request, delivery.pk)).data})

    @extend_schema(
        operation_id="webhooks_deliveries_replay_selection",
        summary="Send several deliveries again",
        description=f"Needs the scope `{WEBHOOKS_MANAGE}`. At most {s.REPLAY_MAX_IDS} ids; "
        "each is replayed as by /deliveries/{id}/replay, and the answer says which were "
        "replayed, refused (with the reason) or not found.",
        tags=[TAG],
        request=s.ReplayInSerializer,
        responses={
            (200, JSON): OpenApiResponse(s.ReplayOutSerializer, description="The outcome."),
            **_problems(400, 401, 403, 413, 415, 429),
        },
    )
    @action(detail=False, methods=["post"], url_path="replay", url_name="replay-selection")
    def replay_selection(self, request, *args, **kwargs):
        data = s.ReplayInSerializer(data=self._body(request))
        data.is_valid(raise_exception=True)
        ids = list(dict.fromkeys(data.validated_data["ids"]))
        found = {d.pk: d for d in self._queryset(request).filter(pk__in=ids)}
        replayed, refused = [], []
        for pk in ids:
            if pk not in found:
                continue
            try:
                self._replay(request, found[pk])
                replayed.append(pk)
            except Conflict as exc:
                refused.append({"id": pk, "reason": str(exc.detail)})
        not_found = [pk for pk in ids if pk not in found]
        return Response({"replayed": replayed, "refused": refused, "notFound": not_found})

    @extend_schema(
        operation_id="webhooks_deliveries_recover",
        summary="Replay everything that failed since a time",
        description=f"Needs the scope `{WEBHOOKS_MANAGE}`. Replays the deliveries of the "
        "client's endpoints (or of one) that failed for good at or after `since`, oldest "
        f"first, at most `limit` ({s.RECOVER_DEFAULT} by default, {s.RECOVER_MAX} at most) "
        "per call; `hasMore` says to call again.",
        tags=[TAG],
        request=s.RecoverInSerializer,
        responses={
            (200, JSON): OpenApiResponse(s.RecoverOutSerializer, description="How many."),
            **_problems(400, 401, 403, 413, 415, 429),
        },
    )
    @action(detail=False, methods=["post"], url_path="recover")
    def recover(self, request, *args, **kwargs):
        data = s.RecoverInSerializer(data=self._body(request))
        data.is_valid(raise_exception=True)
        v = data.validated_data
        # A deleted endpoint's deliveries cannot be sent: they are not candidates (counted as
        # refused, they would come back on every call).
        queryset = self._queryset(request).filter(
            status=DeliveryStatus.FAILED, finished_at__gte=v["since"], endpoint__isnull=False
        )
        if "endpointId" in v:
            owned = WebhookEndpoint.objects.filter(
                pk=v["endpointId"], client=request.user, district_id=request.user.district_id
            )
            if not owned.exists():
                raise ValidationError(
                    {"endpointId": [f"This client has no endpoint with id {v['endpointId']}."]}
                )
            queryset = queryset.filter(endpoint_id=v["endpointId"])
        limit = v.get("limit", s.RECOVER_DEFAULT)
        candidates = list(queryset.order_by("id")[: limit + 1])
        replayed = refused = 0
        for delivery in candidates[:limit]:
            try:
                self._replay(request, delivery)
                replayed += 1
            except Conflict:
                refused += 1
        return Response(
            {"replayed": replayed, "refused": refused, "hasMore": len(candidates) > limit}
        )


# --- the event catalogue -----------------------------------------------------------------


class EventTypesView(RateLimitHeadersMixin, APIView):
    """Every event type with its JSON Schema and an example; which this client may receive."""

    catalogue_scopes = ("", "")

    def required_scope(self, request) -> None:
        return None

    @extend_schema(
        operation_id="webhooks_event_types",
        summary="The event catalogue",
        description="Every event type, with the JSON Schema of its payload and an example. "
        "`available` says whether this client may subscribe to it (its scopes cover the "
        "type's resource); operational types (`scope` null) go only to the district's own "
        "endpoints. Needs a valid token, no particular scope: the catalogue holds no data.",
        tags=[TAG],
        responses={
            (200, JSON): OpenApiResponse(s.EventTypeListSerializer, description="The types."),
            **_problems(401, 429),
        },
    )
    def get(self, request, *args, **kwargs):
        scopes = set(request.user.scopes)
        rows = []
        for name, entry in catalogue.entries().items():
            scope = entry.resource.scope if entry.resource else None
            rows.append(
                {
                    "type": name,
                    "description": entry.description,
                    "resource": entry.resource.name if entry.resource else None,
                    "scope": scope,
                    "available": scope is not None and scope in scopes,
                    "schema": catalogue.schema(entry),
                    "example": catalogue.example(entry),
                }
            )
        return Response({"data": rows})


# --- the pull backstop -------------------------------------------------------------------


def event_id_floor(at: datetime) -> str:
    """The smallest event id of the millisecond ``at`` falls in (ids are ``evt_`` + ULID)."""
    try:
        ms = min(max(int(at.timestamp() * 1000), 0), 2**48 - 1)
    except (OverflowError, ValueError):  # year 1 or 9999 with an offset
        ms = 0 if at.year < 2000 else 2**48 - 1
    return f"evt_{ULID.from_bytes(ms.to_bytes(6, 'big') + bytes(10))}"


def settled_event_id() -> str:
    """Event ids below this one are settled: committed, or never to be.

    An event's id is taken (from the clock) inside the transaction that made the change, so
    ids are committed out of order: a reader that moved past a later id would miss an earlier
    one still uncommitted. Every uncommitted event's id is newer than the start of a
    transaction that holds an id now (it has written the change), and every future one newer
    than now; less a margin for the clocks of the web hosts (``PULL_SETTLE_SECONDS``). Only
    client sessions write events: an autovacuum worker's ANALYZE also holds a transaction id
    (it writes statistics) and must not hold the pull back.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # statistics are cached per xact
        cursor.execute(
            "SELECT LEAST(clock_timestamp(), min(xact_start)) FROM pg_stat_activity "
            f"WHERE {OTHER_WRITERS_SQL}"
        )
        (oldest,) = cursor.fetchone()  # LEAST ignores the NULL min() of no rows
    margin = timedelta(seconds=settings.WEBHOOKS.get("PULL_SETTLE_SECONDS", 2))
    return event_id_floor(oldest - margin)


def since_bound(raw: str) -> tuple[str, str]:
    """``since`` as a lookup on the event id: after an event id (exact), or from a time."""
    if raw[:4].lower() == "evt_":
        try:
            return "gt", f"evt_{ULID.from_str(raw[4:])}"
        except ValueError:
            raise BadParameter("since", f"is not an event id (evt_ and a ULID): {raw!r}") from None
    try:
        at = parse_datetime(raw)
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise BadParameter(
            "since",
            "must be an event id (evt_...) or an RFC 3339 time with an offset "
            f"(2026-10-14T09:30:00Z), not {raw!r}",
        )
    return "gte", event_id_floor(at)


class EventsView(ClientOnly, RateLimitHeadersMixin, APIView):
    """The pull backstop: the events this client could have received, in id (time) order."""

    catalogue_scopes = ("", "")

    def required_scope(self, request) -> None:
        return None  # each event needs its resource's scope; the others are skipped

    def rate_groups(self, request) -> list[tuple[str | None, str]]:
        return [(None, "events")]

    @extend_schema(
        operation_id="events_list",
        summary="Events this client could have received (pull backstop)",
        description="The district's events, oldest first, that this client could have been "
        "pushed: a type about a resource whose scope the token and the client hold, a record "
        "within the client's allowed schools (judged now), the payload as pushed in full "
        "style and cut by the client's field profile. Operational events are not listed. "
        "Events are kept for the types some endpoint of the district subscribed to when they "
        "happened, so this is a backstop for missed deliveries, not a change feed (use "
        "`minChangeVersion` on the resources for that).\n\n"
        "Walk with `since` = `meta.next` until it is null, then keep `meta.lastEventId` for "
        "the next poll. A page can hold fewer than `limit` events, even none, and still have "
        "a next one: events this client may not receive are skipped, not counted. Events "
        "newer than the oldest transaction still writing are held back a moment, so an "
        "event committed late is never skipped. Responses with student data are written "
        "to the disclosure log. Not for tokens acting for a staff member.",
        tags=["events"],
        parameters=[
            OpenApiParameter(
                "since",
                str,
                description="An event id (`evt_...`): the events after it, exactly; or an "
                "RFC 3339 time with an offset: the events recorded at or after it (to the "
                "millisecond of the id's time). Default: the oldest kept.",
            ),
            PAGING[0],
            OpenApiParameter(
                "eventType",
                str,
                description="Only these types (comma-separated names of /webhooks/event-types).",
            ),
        ],
        responses={
            (200, JSON): OpenApiResponse(s.EventListSerializer, description="A page of events."),
            **_problems(
                400,
                401,
                403,
                429,
                e403="The token acts for a staff member: events go to server-to-server "
                "clients only.",
            ),
        },
    )
    def get(self, request, *args, **kwargs):
        params = request.query_params
        known = {"since", "limit", "eventType"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise BadParameter(
                unknown[0], f"is not a parameter of this list; known: {', '.join(sorted(known))}"
            )
        raw_limit = params.get("limit")
        page = page_from(
            limit=whole_number("limit", raw_limit) if raw_limit not in (None, "") else None,
            min_cv=None,
            max_cv=None,
            after=None,
        )
        client = request.user
        scopes = [scope for scope in client.scopes if holds_scope(client, request.auth, scope)]
        # Only types about a resource: operational types stay in the district, whatever row
        # they were recorded with.
        record_types = [name for name, entry in catalogue.entries().items() if entry.resource]
        queryset = WebhookEvent.objects.filter(
            district_id=client.district_id,
            scope__in=scopes,
            type__in=record_types,
            id__lt=settled_event_id(),
        )
        if (raw := params.get("since")) is not None:
            lookup, bound = since_bound(raw)
            queryset = queryset.filter(**{f"id__{lookup}": bound})
        if (raw := params.get("eventType")) is not None:
            queryset = queryset.filter(type__in=known_event_types("eventType", raw))
        queryset = queryset.order_by("id")

        found: list[tuple[WebhookEvent, dict]] = []
        position: str | None = None  # the last event examined
        scan = max(page.limit * SCAN_FACTOR, MIN_SCAN)
        scanned, exhausted = 0, False
        while len(found) < page.limit and scanned < scan and not exhausted:
            rest = queryset.filter(id__gt=position) if position else queryset
            size = min(max(page.limit - len(found), BATCH), scan - scanned)
            batch = list(rest[:size])
            exhausted = len(batch) < size
            visible = dict(outbox.client_payloads(client, batch))
            for stored in batch:
                position, scanned = stored.pk, scanned + 1
                if stored in visible:
                    found.append((stored, visible[stored]))
                    if len(found) == page.limit:
                        exhausted = exhausted and stored is batch[-1]
                        break
        has_more = (
            not exhausted and position is not None and queryset.filter(id__gt=position).exists()
        )
        disclosure_record(
            client=client, request=request, student_ids=[e.student_id for e, _ in found]
        )
        meta = {"limit": page.limit}
        if page.capped:
            meta["limitCapped"] = (
                f"limit was lowered to the maximum page size, {settings.API['MAX_PAGE_SIZE']}"
            )
        meta["next"] = position if has_more else None
        meta["lastEventId"] = position
        link = None
        if has_more:
            query = params.copy()
            query["since"] = position
            link = request.build_absolute_uri(f"{request.path}?{query.urlencode()}")
        return Response(
            {"data": [payload for _, payload in found], "meta": meta, "links": {"next": link}}
        )
