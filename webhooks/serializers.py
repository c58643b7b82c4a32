"""Request and response shapes of the webhooks face of the vendor API (webhooks.api).

Field names are camelCase, as everywhere in /api/v1/; ``MODEL_TO_API`` maps the services'
(model) error keys to them, so a refused value is reported under the name the client sent.
The response serializers also document the OpenAPI schema. No response shape but the two
``...Secret`` ones has a secret in it.
"""

from __future__ import annotations

import base64

from django.conf import settings
from drf_spectacular.utils import extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from bxos.api.schema import PageLinksSerializer
from webhooks.choices import BodyFormat, DeliveryStatus, Method, PayloadStyle

MAX_ID = 2**63 - 1  # bigint: larger ids cannot exist, and must not reach the database
MAX_EVENT_TYPES = 100
MAX_SCHOOLS = 1000
MAX_RETRIES = 20
MAX_RETRY_DELAY = 2 * 86400
MIN_RETRY_DELAY = 5
MAX_GRACE_HOURS = 7 * 24
REPLAY_MAX_IDS = 100
RECOVER_DEFAULT = 100
RECOVER_MAX = 1000

# Service (model) field -> API field.
MODEL_TO_API = {
    "body_format": "bodyFormat",
    "event_types": "eventTypes",
    "schools": "schoolIds",
    "payload_style": "payloadStyle",
    "retry_schedule": "retrySchedule",
    "max_in_flight": "maxInFlight",
    "rate_per_second": "ratePerSecond",
    "owner_email": "ownerEmail",
}


def _id(**kwargs) -> serializers.IntegerField:
    return serializers.IntegerField(min_value=1, max_value=MAX_ID, **kwargs)


# --- endpoints ---------------------------------------------------------------------------


class EndpointInSerializer(serializers.Serializer):
    """An endpoint as a client creates or changes it (PATCH: any subset)."""

    name = serializers.CharField(max_length=150)
    url = serializers.CharField(
        max_length=2000,
        help_text="Where events are sent: https (or http), a public address. Private, "
        "loopback, link-local and metadata addresses are refused.",
    )
    method = serializers.ChoiceField(choices=Method.choices, required=False)
    bodyFormat = serializers.ChoiceField(
        choices=BodyFormat.choices, required=False, help_text="JSON by default."
    )
    eventTypes = serializers.ListField(
        child=serializers.CharField(max_length=80),
        allow_empty=False,
        max_length=MAX_EVENT_TYPES,
        help_text="Types from /webhooks/event-types that this client's scopes cover.",
    )
    schoolIds = serializers.ListField(
        child=_id(),
        required=False,
        max_length=MAX_SCHOOLS,
        help_text="Only events about these schools (within the client's allowed schools); "
        "empty: every school the client may read.",
    )
    payloadStyle = serializers.ChoiceField(
        choices=PayloadStyle.choices,
        required=False,
        help_text="full: the record as the API returns it; thin: ids and a URL to fetch it.",
    )
    retrySchedule = serializers.ListField(
        child=serializers.IntegerField(min_value=MIN_RETRY_DELAY, max_value=MAX_RETRY_DELAY),
        required=False,
        max_length=MAX_RETRIES,
        help_text="Seconds before each retry; Standard Webhooks' schedule by default (about "
        "3 days). Empty: no retries.",
    )
    maxInFlight = serializers.IntegerField(
        min_value=1, max_value=100, required=False, help_text="Requests at the same time."
    )
    ratePerSecond = serializers.IntegerField(
        min_value=1, max_value=10_000, required=False, help_text="Requests per second."
    )
    ordered = serializers.BooleanField(
        required=False,
        help_text="Deliver events about one record in order (a later one waits for the "
        "earlier one).",
    )
    ownerEmail = serializers.EmailField(
        required=False,
        allow_blank=True,
        max_length=254,
        help_text="Told when a delivery fails for good and when the endpoint is disabled; "
        "empty: the client's contact.",
    )
    active = serializers.BooleanField(
        required=False,
        help_text="false disables the endpoint (new deliveries are held); true enables it and "
        "sends the held ones in order.",
    )

    def validate_eventTypes(self, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    def validate_schoolIds(self, value: list[int]) -> list[int]:
        return sorted(set(value))

    def model_data(self) -> dict:
        """The validated values under the services' names (``schoolIds`` excepted)."""
        api_to_model = {api: model for model, api in MODEL_TO_API.items()}
        return {
            api_to_model.get(name, name): value
            for name, value in self.validated_data.items()
            if name != "schoolIds"
        }


class EndpointSerializer(serializers.Serializer):
    """A webhook endpoint of this client. Never carries its secret."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    url = serializers.CharField()
    method = serializers.ChoiceField(choices=Method.choices)
    bodyFormat = serializers.ChoiceField(choices=BodyFormat.choices, source="body_format")
    eventTypes = serializers.ListField(child=serializers.CharField(), source="event_types")
    schoolIds = serializers.SerializerMethodField()
    payloadStyle = serializers.ChoiceField(choices=PayloadStyle.choices, source="payload_style")
    retrySchedule = serializers.ListField(child=serializers.IntegerField(), source="retry_schedule")
    maxInFlight = serializers.IntegerField(source="max_in_flight")
    ratePerSecond = serializers.IntegerField(source="rate_per_second")
    ordered = serializers.BooleanField()
    ownerEmail = serializers.CharField(source="owner_email")
    active = serializers.BooleanField()
    disabledAt = serializers.DateTimeField(source="disabled_at", allow_null=True)
    disabledReason = serializers.CharField(
        source="disabled_reason", help_text="Why it was disabled (410 Gone, 5 days failing, ...)."
    )
    failingSince = serializers.DateTimeField(
        source="failing_since", allow_null=True, help_text="First failure since the last success."
    )
    lastSuccessAt = serializers.DateTimeField(source="last_success_at", allow_null=True)
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")

    @extend_schema_field(serializers.ListField(child=serializers.IntegerField()))
    def get_schoolIds(self, obj) -> list[int]:
        return sorted(school.pk for school in obj.schools.all())


class EndpointItemSerializer(serializers.Serializer):
    data = EndpointSerializer()


class EndpointSecretSerializer(serializers.Serializer):
    """A new endpoint and its signing secret, shown this once."""

    data = EndpointSerializer()
    secret = serializers.CharField(
        allow_null=True,
        help_text="The signing secret (`whsec_...`), shown only in this response. Null when "
        "the response is an Idempotency-Key replay: secrets are not kept in the clear, so "
        "rotate the secret if the first response was lost.",
    )


class WebhookPageMetaSerializer(serializers.Serializer):
    limit = serializers.IntegerField(help_text="The page size used.")
    limitCapped = serializers.CharField(
        required=False, help_text="Present when the limit asked for was lowered."
    )
    next = serializers.CharField(
        allow_null=True, help_text="Cursor of the next page (the `after` parameter); null: last."
    )


@extend_schema_serializer(many=False)
class EndpointListSerializer(serializers.Serializer):
    data = EndpointSerializer(many=True)
    meta = WebhookPageMetaSerializer()
    links = PageLinksSerializer()


class RotateInSerializer(serializers.Serializer):
    graceHours = serializers.IntegerField(
        min_value=0,
        max_value=MAX_GRACE_HOURS,
        required=False,
        help_text="Hours the current secrets stay valid and keep signing, so the receiver can "
        f"switch over; {settings.WEBHOOKS['SECRET_GRACE_HOURS']} by default, 0: at once.",
    )


class RotatedSecretSerializer(serializers.Serializer):
    """The endpoint's new signing secret, shown this once."""

    data = EndpointSerializer()
    secret = serializers.CharField(help_text="The new signing secret (`whsec_...`), shown once.")
    previousSecretsExpireAt = serializers.DateTimeField(
        help_text="Until then every request is signed with the old and the new secret."
    )


# --- deliveries --------------------------------------------------------------------------


class DeliverySerializer(serializers.Serializer):
    """One event to one endpoint: its state and its next attempt."""

    id = serializers.IntegerField()
    eventId = serializers.CharField(source="event_id", help_text="Also the `webhook-id` header.")
    eventType = serializers.CharField(source="event_type")
    endpointId = serializers.SerializerMethodField(
        help_text="Its endpoint; for a deleted endpoint, the id it had."
    )
    endpointDeleted = serializers.SerializerMethodField(
        help_text="The endpoint was deleted: its open deliveries were cancelled; the rest are "
        "kept, but none can be replayed."
    )
    endpointName = serializers.CharField(source="endpoint_name")
    status = serializers.ChoiceField(choices=DeliveryStatus.choices)
    attemptCount = serializers.IntegerField(
        source="attempts", help_text="Attempts since it was created or last replayed."
    )
    nextAttemptAt = serializers.DateTimeField(source="next_attempt_at", allow_null=True)
    lastStatusCode = serializers.IntegerField(source="last_status_code", allow_null=True)
    lastError = serializers.CharField(source="last_error")
    createdAt = serializers.DateTimeField(source="created_at")
    finishedAt = serializers.DateTimeField(source="finished_at", allow_null=True)

    @extend_schema_field(serializers.IntegerField())
    def get_endpointId(self, delivery) -> int:
        return delivery.endpoint_id or delivery.deleted_endpoint_id

    @extend_schema_field(serializers.BooleanField())
    def get_endpointDeleted(self, delivery) -> bool:
        return delivery.endpoint_id is None


class AttemptSerializer(serializers.Serializer):
    """One HTTP request of a delivery and what came back."""

    number = serializers.IntegerField()
    startedAt = serializers.DateTimeField(source="started_at")
    durationMs = serializers.IntegerField(source="duration_ms")
    statusCode = serializers.IntegerField(source="status_code", allow_null=True)
    succeeded = serializers.BooleanField()
    errorClass = serializers.CharField(
        source="error_class",
        help_text="Empty, or a stable code: timeout, connect_error, refused_address, ...",
    )
    error = serializers.CharField()
    responseBody = serializers.SerializerMethodField(
        help_text="The first 16 KB of the receiver's answer: as text when it is UTF-8, else "
        "base64 (see responseBodyEncoding)."
    )
    responseBodyEncoding = serializers.SerializerMethodField()
    responseTruncated = serializers.BooleanField(
        source="response_truncated", help_text="The answer was longer than what is kept."
    )

    @staticmethod
    def _body(obj) -> tuple[str, str]:
        raw = bytes(obj.response_body or b"")
        try:
            return raw.decode("utf-8"), "text"
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii"), "base64"

    @extend_schema_field(serializers.CharField())
    def get_responseBody(self, obj) -> str:
        return self._body(obj)[0]

    @extend_schema_field(serializers.ChoiceField(choices=["text", "base64"]))
    def get_responseBodyEncoding(self, obj) -> str:
        return self._body(obj)[1]


class DeliveryDetailSerializer(DeliverySerializer):
    attempts = AttemptSerializer(many=True, source="attempt_list", help_text="Newest last.")


class DeliveryItemSerializer(serializers.Serializer):
    data = DeliveryDetailSerializer()


@extend_schema_serializer(many=False)
class DeliveryListSerializer(serializers.Serializer):
    data = DeliverySerializer(many=True)
    meta = WebhookPageMetaSerializer()
    links = PageLinksSerializer()


class DeliveryChangedSerializer(serializers.Serializer):
    data = DeliverySerializer()


class ReplayInSerializer(serializers.Serializer):
    ids = serializers.ListField(
        child=_id(),
        allow_empty=False,
        max_length=REPLAY_MAX_IDS,
        help_text=f"Deliveries to send again, at most {REPLAY_MAX_IDS}.",
    )


class RefusedSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    reason = serializers.CharField()


class ReplayOutSerializer(serializers.Serializer):
    replayed = serializers.ListField(
        child=serializers.IntegerField(),
        help_text="Queued again from their first attempt (or still on their way: open "
        "deliveries are left as they are).",
    )
    refused = RefusedSerializer(many=True, help_text="Not replayed, with the reason.")
    notFound = serializers.ListField(
        child=serializers.IntegerField(),
        help_text="Ids that are not deliveries of this client's endpoints.",
    )


class RecoverInSerializer(serializers.Serializer):
    since = serializers.DateTimeField(
        help_text="Replay the deliveries that failed for good at or after this time (RFC 3339)."
    )
    endpointId = _id(required=False, help_text="Only this endpoint's; default: all of them.")
    limit = serializers.IntegerField(
        min_value=1,
        max_value=RECOVER_MAX,
        required=False,
        help_text=f"At most this many per call, oldest first ({RECOVER_DEFAULT} by default).",
    )


class RecoverOutSerializer(serializers.Serializer):
    replayed = serializers.IntegerField(help_text="Deliveries queued again.")
    refused = serializers.IntegerField(
        help_text="Deliveries this endpoint may no longer receive (they stay failed)."
    )
    hasMore = serializers.BooleanField(
        help_text="More failed deliveries matched than `limit`: call again (refused ones "
        "stay failed and are counted again)."
    )


# --- the event catalogue and the pull backstop -------------------------------------------


class EventTypeSerializer(serializers.Serializer):
    type = serializers.CharField()
    description = serializers.CharField()
    resource = serializers.CharField(
        allow_null=True, help_text="The API resource whose records it carries."
    )
    scope = serializers.CharField(
        allow_null=True,
        help_text="The scope needed to receive it; null: an operational event, sent only to "
        "the district's own endpoints.",
    )
    available = serializers.BooleanField(
        help_text="Whether this client may subscribe to it (its scopes cover it)."
    )
    schema = serializers.JSONField(
        help_text="JSON Schema (2020-12) of the whole payload, full style. A field profile "
        "removes fields of `data.object`; thin payloads have `data.url` instead of it."
    )
    example = serializers.JSONField(help_text="A payload of this type.")


class EventTypeListSerializer(serializers.Serializer):
    data = EventTypeSerializer(many=True)


class EventDataSerializer(serializers.Serializer):
    eventId = serializers.CharField(help_text="`evt_` + ULID; ids sort by time.")
    occurredAt = serializers.DateTimeField()
    resource = serializers.CharField()
    id = serializers.IntegerField(allow_null=True, help_text="The record's id.")
    changeVersion = serializers.IntegerField(allow_null=True)
    object = serializers.DictField(
        required=False,
        help_text="The record as the API returned it then, cut by the client's field profile.",
    )


class EventSerializer(serializers.Serializer):
    """An event as it is pushed (Standard Webhooks envelope, full style, JSON)."""

    type = serializers.CharField()
    timestamp = serializers.DateTimeField()
    data = EventDataSerializer()


class EventPageMetaSerializer(serializers.Serializer):
    limit = serializers.IntegerField(help_text="The page size used.")
    limitCapped = serializers.CharField(
        required=False, help_text="Present when the limit asked for was lowered."
    )
    next = serializers.CharField(
        allow_null=True,
        help_text="The `since` of the next page; null: nothing more now. A page can hold "
        "fewer than `limit` events (even none) and still have a next one.",
    )
    lastEventId = serializers.CharField(
        allow_null=True,
        help_text="The last event examined, returned or not: the `since` to resume from "
        "later. Null when none was examined.",
    )


@extend_schema_serializer(many=False)
class EventListSerializer(serializers.Serializer):
    data = EventSerializer(many=True)
    meta = EventPageMetaSerializer()
    links = PageLinksSerializer()
