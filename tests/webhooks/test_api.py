"""Webhooks through the vendor API: a client's own endpoints, their deliveries and replays, the
event catalogue and the pull backstop (GET /api/v1/events).

The rules under test: scope ``webhooks:manage`` (the catalogue and the pull need none), a
client's own endpoints and deliveries only (anything else is a 404), no token acting for a
person, refused input as a 400 naming the field, never a 500, the secret only in the create
and rotate answers, and nothing sent or pulled that the client could not read through the API.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import jsonschema
import pytest
from auditlog.models import LogEntry
from django.utils import timezone
from standardwebhooks.webhooks import Webhook
from ulid import ULID

from bxos.api import scopes
from bxos.api.catalogue import sync_catalogue
from bxos.api.models import (
    ApiEndpoint,
    ApiRequestStat,
    DisclosureLogEntry,
    FieldProfile,
    IdempotencyRecord,
    ThrottleRule,
)
from bxos.api.resources import RESOURCES
from bxos.api.schema import model_field
from bxos.api.throttling import clear_rules_cache
from bxos.common.db import other_writers
from bxos.common.services import model_create, model_update
from tests.bxos.api.test_api_read import api, make_client, token_for
from tests.bxos.api.test_oauth_delegated import delegated_token, make_app
from webhooks import api as webhooks_api
from webhooks import catalogue, dispatch, services
from webhooks.api import event_id_floor
from webhooks.choices import DeliveryStatus
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent

ENDPOINTS = "/api/v1/webhooks/endpoints"
DELIVERIES = "/api/v1/webhooks/deliveries"
EVENT_TYPES = "/api/v1/webhooks/event-types"
EVENTS = "/api/v1/events"
HOOK = "http://127.0.0.1:9/hook"  # never called in these tests (loopback allowed per test)
ROSTER_AND_MANAGE = [scopes.ROSTER, scopes.WEBHOOKS_MANAGE]


@pytest.fixture(autouse=True)
def settled_at_once(settings):
    """The pull holds back events newer than the oldest writing transaction less a margin for
    web hosts' clocks; here every event is written before the request in the same process."""
    settings.WEBHOOKS = {**settings.WEBHOOKS, "PULL_SETTLE_SECONDS": 0}


def vendor(world, actor, scope_list=ROSTER_AND_MANAGE, **kwargs):
    client, _ = make_client(world, actor, scope_list=scope_list, **kwargs)
    return client


def http(client, scope_list=None):
    return api(token_for(client, scope_list))


def post(http_client, path, body=None, **extra):
    return http_client.post(path, body if body is not None else {}, format="json", **extra)


def create(http_client, **fields):
    body = {"name": "Vendor hook", "url": HOOK, "eventTypes": ["student.updated"], **fields}
    return post(http_client, ENDPOINTS, body)


def rename(student, actor, name):
    return model_update(instance=student, actor=actor, data={"preferred_name": name})


def field_errors(response) -> dict[str, str]:
    assert response.status_code == 400, (response.status_code, response.content)
    assert response["Content-Type"] == "application/problem+json"
    return {e["field"]: e["message"] for e in response.json()["errors"]}


def district_endpoint(world, actor, url=HOOK, types=None):
    """The district's own endpoint: its subscription makes the outbox keep the events."""
    endpoint, _ = services.webhook_endpoint_create(
        actor=actor,
        district=world.district,
        name="District lake",
        url=url,
        event_types=types or sorted(catalogue.entries()),
    )
    return endpoint


# --- endpoints -------------------------------------------------------------------------


def test_a_client_manages_its_endpoints(north, system, loopback):
    client = vendor(north, system)
    vendor_http = http(client)
    response = create(vendor_http, schoolIds=[north.school_b.pk], ownerEmail="ops@v.example")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["secret"].startswith("whsec_")
    endpoint = body["data"]
    assert "secret" not in endpoint and endpoint["schoolIds"] == [north.school_b.pk]
    assert endpoint["eventTypes"] == ["student.updated"] and endpoint["active"]
    stored = WebhookEndpoint.objects.get(pk=endpoint["id"])
    assert stored.client == client and stored.district_id == north.district.pk
    assert [s.secret for s in stored.secrets.all()] == [body["secret"]]
    # This answer was its one showing: no face reveals it again.
    assert stored.secrets.get().revealed_at is not None

    listed = vendor_http.get(ENDPOINTS)
    assert listed.status_code == 200 and [e["id"] for e in listed.json()["data"]] == [stored.pk]
    path = f"{ENDPOINTS}/{stored.pk}"
    assert vendor_http.get(path).json()["data"] == endpoint

    changed = vendor_http.patch(
        path,
        {"name": "Renamed", "eventTypes": ["student.updated", "student.created"], "schoolIds": []},
        format="json",
    )
    assert changed.status_code == 200, changed.json()
    data = changed.json()["data"]
    assert (data["name"], data["schoolIds"]) == ("Renamed", [])
    assert data["eventTypes"] == ["student.updated", "student.created"]

    disabled = vendor_http.patch(path, {"active": False}, format="json").json()["data"]
    assert not disabled["active"] and disabled["disabledAt"] and disabled["disabledReason"]
    assert vendor_http.patch(path, {"active": True}, format="json").json()["data"]["active"]

    # Written by the client's own audit actor (its named system user).
    stored.refresh_from_db()
    assert stored.name == "Renamed"
    client.refresh_from_db()
    actors = {e.actor for e in LogEntry.objects.get_for_object(stored)}
    assert actors == {client.service_user}

    assert vendor_http.delete(path).status_code == 204
    assert vendor_http.get(path).status_code == 404
    # Monitored like every API request, per endpoint.
    monitored = set(ApiRequestStat.objects.filter(client=client).values_list("endpoint", flat=True))
    assert {"webhook-endpoints-list", "webhook-endpoints-detail"} <= monitored
    assert not WebhookEndpoint.objects.filter(pk=stored.pk).exists()
    # No answer but the create (and rotate) ever carried a secret.
    for response in (listed, changed):
        assert "whsec_" not in response.content.decode()


def test_without_the_scope_the_answer_is_403_naming_it(north, system, loopback):
    reader = vendor(north, system, scope_list=[scopes.ROSTER])
    for method, path in [
        ("get", ENDPOINTS),
        ("post", ENDPOINTS),
        ("get", DELIVERIES),
        ("post", f"{DELIVERIES}/recover"),
    ]:
        response = getattr(http(reader), method)(path, {}, format="json")
        assert response.status_code == 403, (method, path)
        assert "webhooks:manage" in response.json()["detail"]
    # A token issued without the scope is refused even if the client holds it.
    manager = vendor(north, system)
    response = http(manager, [scopes.ROSTER]).get(ENDPOINTS)
    assert response.status_code == 403 and "webhooks:manage" in response.json()["detail"]
    # The catalogue needs no particular scope.
    assert http(reader).get(EVENT_TYPES).status_code == 200


def test_a_token_acting_for_a_person_may_not_manage_endpoints(north, system, loopback):
    app, _ = make_app(north, system, scope_list=ROSTER_AND_MANAGE)
    token = delegated_token(app, north.users["district_admin"])
    for method, path in [("get", ENDPOINTS), ("post", ENDPOINTS), ("get", DELIVERIES)]:
        response = getattr(api(token), method)(path, {}, format="json")
        assert response.status_code == 403, (method, path)
        assert "acts for a staff member" in response.json()["detail"]
    response = api(token).get(EVENTS)
    assert response.status_code == 403 and "acts for a staff member" in response.json()["detail"]
    assert api(token).get(EVENT_TYPES).status_code == 200  # no data in the catalogue
    assert not WebhookEndpoint.objects.filter(client=app).exists()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://10.1.2.3/hook", "private"),
        ("http://127.0.0.1:8000/hook", "loopback"),
        ("http://[::ffff:10.0.0.1]/hook", "private"),
        ("http://2130706433/hook", "127.0.0.1"),
        ("ftp://files.example/hook", "Only"),
        ("not a url", "URL"),
        ("http://" + "a" * 64 + ".example/", "does not resolve"),
    ],
)
def test_a_refused_url_is_a_400_naming_url(url, reason, north, system):
    response = create(http(vendor(north, system)), url=url)
    errors = field_errors(response)
    assert set(errors) == {"url"} and reason in errors["url"], errors
    assert not WebhookEndpoint.objects.exists()


def test_event_types_must_be_known_and_within_the_scopes(north, system, loopback):
    vendor_http = http(vendor(north, system))
    errors = field_errors(create(vendor_http, eventTypes=["no.such"]))
    assert "Unknown event type(s): no.such" in errors["eventTypes"]
    errors = field_errors(create(vendor_http, eventTypes=["student.updated", "incident.created"]))
    assert "may not receive incident.created" in errors["eventTypes"]
    # Operational events stay in the district.
    errors = field_errors(create(vendor_http, eventTypes=["sync_run.completed"]))
    assert "may not receive sync_run.completed" in errors["eventTypes"]
    assert set(field_errors(create(vendor_http, eventTypes=[]))) == {"eventTypes"}
    # PATCH checks the same way.
    endpoint = create(vendor_http).json()["data"]
    response = vendor_http.patch(
        f"{ENDPOINTS}/{endpoint['id']}", {"eventTypes": ["grade.created"]}, format="json"
    )
    assert "may not receive grade.created" in field_errors(response)["eventTypes"]


def test_schools_must_be_within_the_clients(north, south, system, loopback):
    vendor_http = http(vendor(north, system, schools=[north.school_b]))
    for school in (north.school_a, south.school_b):
        errors = field_errors(create(vendor_http, schoolIds=[school.pk]))
        assert set(errors) == {"schoolIds"} and str(school.pk) in errors["schoolIds"]
    response = create(vendor_http, schoolIds=[north.school_b.pk])
    assert response.status_code == 201 and response.json()["data"]["schoolIds"] == [
        north.school_b.pk
    ]
    path = f"{ENDPOINTS}/{response.json()['data']['id']}"
    response = vendor_http.patch(path, {"schoolIds": [north.school_a.pk]}, format="json")
    assert set(field_errors(response)) == {"schoolIds"}


def test_create_is_idempotent_without_repeating_the_secret(north, system, loopback):
    vendor_http = http(vendor(north, system))
    key = {"HTTP_IDEMPOTENCY_KEY": "create-hook-1"}
    body = {"name": "Once", "url": HOOK, "eventTypes": ["student.updated"]}
    first = post(vendor_http, ENDPOINTS, body, **key)
    again = post(vendor_http, ENDPOINTS, body, **key)
    assert first.status_code == again.status_code == 201
    assert first.json()["secret"].startswith("whsec_")
    assert again["Idempotent-Replayed"] == "true" and again.json()["secret"] is None
    assert again.json()["data"]["id"] == first.json()["data"]["id"]
    assert WebhookEndpoint.objects.count() == 1
    # The secret is never stored in the clear with the answer.
    assert "whsec_" not in json.dumps(IdempotencyRecord.objects.get().response_body)
    other = post(vendor_http, ENDPOINTS, {**body, "name": "Twice"}, **key)
    assert other.status_code == 409


@pytest.mark.django_db(transaction=True)
def test_the_secret_signs_real_deliveries_and_rotation_keeps_both(north, system, receiver):
    profile = FieldProfile.objects.create(
        district=north.district, name="names", fields={"students": ["firstName"]}
    )
    client = vendor(north, system, schools=[north.school_b], profile=profile)
    vendor_http = http(client)
    created = create(vendor_http, url=receiver.url)
    assert created.status_code == 201, created.json()
    secret, endpoint_id = created.json()["secret"], created.json()["data"]["id"]

    rename(north.a1, system, "School A")  # outside the client's schools: not sent
    rename(north.b1, system, "School B")
    assert dispatch.dispatch_once() == 1
    (request,) = receiver.wait_for(1)
    payload = Webhook(secret).verify(request.body, request.headers)
    assert payload["data"]["id"] == north.b1.pk
    assert set(payload["data"]["object"]) == {"id", "changeVersion", "firstName"}
    # The push is a disclosure.
    entry = DisclosureLogEntry.objects.get(client=client, method="PUSH")
    assert entry.student_ids == [north.b1.pk]

    rotated = post(vendor_http, f"{ENDPOINTS}/{endpoint_id}/rotate-secret", {"graceHours": 1})
    assert rotated.status_code == 200, rotated.json()
    new = rotated.json()["secret"]
    assert new.startswith("whsec_") and new != secret
    newest = WebhookEndpoint.objects.get(pk=endpoint_id).secrets.latest("created_at")
    assert newest.secret == new and newest.revealed_at is not None
    expires = rotated.json()["previousSecretsExpireAt"]
    assert timedelta(minutes=59) < _parse(expires) - timezone.now() <= timedelta(hours=1)
    rename(north.b1, system, "Rotated")
    dispatch.dispatch_once()
    request = receiver.wait_for(2)[1]
    for key in (secret, new):
        assert Webhook(key).verify(request.body, request.headers)["type"] == "student.updated"
    for path in (ENDPOINTS, f"{ENDPOINTS}/{endpoint_id}", DELIVERIES):
        assert "whsec_" not in vendor_http.get(path).content.decode()

    # A delivery of this client, seen through the API with its attempt.
    delivery = WebhookDelivery.objects.filter(endpoint_id=endpoint_id).order_by("id").first()
    detail = vendor_http.get(f"{DELIVERIES}/{delivery.pk}").json()["data"]
    assert detail["status"] == "succeeded" and detail["eventId"] == payload["data"]["eventId"]
    (attempt,) = detail["attempts"]
    assert attempt["statusCode"] == 200 and attempt["responseBody"] == "ok"
    assert attempt["responseBodyEncoding"] == "text" and attempt["succeeded"]

    # A replay through the API goes out again with the same webhook-id, logged again.
    replayed = post(vendor_http, f"{DELIVERIES}/{delivery.pk}/replay")
    assert replayed.status_code == 200 and replayed.json()["data"]["status"] == "pending"
    dispatch.dispatch_once()
    request = receiver.wait_for(3)[2]
    assert request.headers["webhook-id"] == delivery.event_id
    Webhook(new).verify(request.body, request.headers)
    assert DisclosureLogEntry.objects.filter(client=client, method="PUSH").count() == 3


def _parse(value: str):
    from django.utils.dateparse import parse_datetime

    return parse_datetime(value)


# --- tenancy ---------------------------------------------------------------------------


def test_another_clients_or_districts_endpoints_and_deliveries_are_404(
    north, south, system, loopback
):
    owner = vendor(north, system)
    neighbour = vendor(north, system)  # same district, another client
    foreigner = vendor(south, system)
    endpoint = WebhookEndpoint.objects.get(pk=create(http(owner)).json()["data"]["id"])
    district = district_endpoint(north, system)
    rename(north.a1, system, "Mine")
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    district_delivery = WebhookDelivery.objects.get(endpoint=district)
    for other in (neighbour, foreigner):
        other_http = http(other)
        for pk in (endpoint.pk, district.pk):
            path = f"{ENDPOINTS}/{pk}"
            assert other_http.get(path).status_code == 404
            assert other_http.patch(path, {"name": "x"}, format="json").status_code == 404
            assert post(other_http, f"{path}/rotate-secret").status_code == 404
            assert other_http.delete(path).status_code == 404
        for pk in (delivery.pk, district_delivery.pk):
            assert other_http.get(f"{DELIVERIES}/{pk}").status_code == 404
            assert post(other_http, f"{DELIVERIES}/{pk}/replay").status_code == 404
        assert other_http.get(ENDPOINTS).json()["data"] == []
        assert other_http.get(DELIVERIES).json()["data"] == []
        selection = post(other_http, f"{DELIVERIES}/replay", {"ids": [delivery.pk]}).json()
        assert selection == {"replayed": [], "refused": [], "notFound": [delivery.pk]}
        response = post(
            other_http,
            f"{DELIVERIES}/recover",
            {"since": "2000-01-01T00:00:00Z", "endpointId": endpoint.pk},
        )
        assert set(field_errors(response)) == {"endpointId"}
    # Even the owner does not see the district's own endpoint or its deliveries.
    assert http(owner).get(f"{ENDPOINTS}/{district.pk}").status_code == 404
    assert [d["id"] for d in http(owner).get(DELIVERIES).json()["data"]] == [delivery.pk]
    endpoint.refresh_from_db()
    assert endpoint.name == "Vendor hook"


# --- deliveries ------------------------------------------------------------------------


def _deliveries(north, system):
    """Two endpoints of one client, five deliveries: (first, second) endpoints' rows."""
    client = vendor(north, system, scope_list=[*ROSTER_AND_MANAGE, scopes.BEHAVIOR])
    vendor_http = http(client)
    first = create(vendor_http, name="first", eventTypes=["student.updated"]).json()["data"]
    second = create(
        vendor_http, name="second", eventTypes=["student.updated", "incident.updated"]
    ).json()["data"]
    rename(north.a1, system, "One")
    rename(north.b1, system, "Two")
    model_update(instance=north.incidents[north.b1.pk], actor=system, data={"narrative": "x"})
    rows = list(WebhookDelivery.objects.order_by("id"))
    assert len(rows) == 5
    return client, vendor_http, first["id"], second["id"], rows


def test_deliveries_list_filters_and_pages(north, system, loopback):
    _client, vendor_http, first, second, rows = _deliveries(north, system)
    listed = vendor_http.get(DELIVERIES).json()
    assert [d["id"] for d in listed["data"]] == [d.pk for d in rows]
    assert listed["data"][0]["status"] == "pending" and listed["meta"]["next"] is None

    def ids(**params):
        response = vendor_http.get(DELIVERIES, params)
        assert response.status_code == 200, response.json()
        return [d["id"] for d in response.json()["data"]]

    assert ids(endpointId=first) == [d.pk for d in rows if d.endpoint_id == first]
    assert ids(eventType="incident.updated") == [rows[-1].pk]
    assert ids(eventType="incident.updated,student.updated") == [d.pk for d in rows]
    WebhookDelivery.objects.filter(pk=rows[0].pk).update(status=DeliveryStatus.FAILED)
    assert ids(status="failed") == [rows[0].pk]
    old = timezone.now() - timedelta(days=2)
    WebhookDelivery.objects.filter(pk=rows[1].pk).update(created_at=old)
    day_ago = (timezone.now() - timedelta(days=1)).isoformat()
    assert rows[1].pk not in ids(since=day_ago)
    assert ids(until=day_ago) == [rows[1].pk]
    assert ids(endpointId=second, status="pending", since=day_ago) == [
        d.pk for d in rows if d.endpoint_id == second and d.pk != rows[1].pk
    ]

    # Key-set paging, as every list of the API.
    seen, params = [], {"limit": 2}
    while True:
        page = vendor_http.get(DELIVERIES, params).json()
        seen += [d["id"] for d in page["data"]]
        if not page["meta"]["next"]:
            assert page["links"]["next"] is None
            break
        assert page["links"]["next"].endswith(f"after={page['meta']['next']}")
        params = {"limit": 2, "after": page["meta"]["next"]}
    assert seen == [d.pk for d in rows]

    for params, name in [
        ({"status": "lost"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-10-14T09:30:00"}, "until"),  # no offset
        ({"eventType": "no.such"}, "eventType"),
        ({"endpointId": "x"}, "endpointId"),
        ({"minChangeVersion": 1}, "minChangeVersion"),
        ({"colour": "red"}, "colour"),
        ({"limit": 0}, "limit"),
        ({"after": "bm90IGEgY3Vyc29y"}, "after"),
    ]:
        assert set(field_errors(vendor_http.get(DELIVERIES, params))) == {name}, params


def test_a_delivery_shows_its_attempts_as_text_or_base64(north, system, loopback):
    _client, vendor_http, _first, _second, rows = _deliveries(north, system)
    delivery = rows[0]
    now = timezone.now()
    for number, body, status in [(1, b"\xff\xfe binary", 500), (2, "d\u00e9j\u00e0".encode(), 200)]:
        WebhookAttempt.objects.create(
            delivery=delivery,
            number=number,
            started_at=now + timedelta(seconds=number),
            duration_ms=12,
            status_code=status,
            response_body=body,
            response_truncated=number == 1,
            succeeded=status == 200,
        )
    WebhookAttempt.objects.create(
        delivery=delivery,
        number=3,
        started_at=now + timedelta(seconds=3),
        duration_ms=15000,
        error_class="timeout",
        error="The receiver did not answer in 15 s.",
    )
    data = vendor_http.get(f"{DELIVERIES}/{delivery.pk}").json()["data"]
    first, second, third = data["attempts"]
    assert first["responseBodyEncoding"] == "base64" and first["responseTruncated"]
    assert base64.b64decode(first["responseBody"]) == b"\xff\xfe binary"
    assert (second["responseBody"], second["responseBodyEncoding"]) == ("d\u00e9j\u00e0", "text")
    assert (third["statusCode"], third["errorClass"], third["durationMs"]) == (
        None,
        "timeout",
        15000,
    )
    assert data["eventType"] == "student.updated" and data["endpointName"] == "first"


def test_replay_one_a_selection_or_everything_failed_since(north, system, loopback):
    client, vendor_http, first, _second, rows = _deliveries(north, system)
    finished = timezone.now() - timedelta(hours=1)
    WebhookDelivery.objects.filter(pk__in=[d.pk for d in rows]).update(
        status=DeliveryStatus.FAILED, attempts=10, finished_at=finished, next_attempt_at=None
    )
    one = post(vendor_http, f"{DELIVERIES}/{rows[0].pk}/replay")
    assert one.status_code == 200
    assert (one.json()["data"]["status"], one.json()["data"]["attemptCount"]) == ("pending", 0)

    selection = post(vendor_http, f"{DELIVERIES}/replay", {"ids": [rows[1].pk, 999999999]})
    assert selection.json() == {"replayed": [rows[1].pk], "refused": [], "notFound": [999999999]}
    assert set(field_errors(post(vendor_http, f"{DELIVERIES}/replay", {"ids": []}))) == {"ids"}
    too_many = {"ids": list(range(1, 102))}
    assert set(field_errors(post(vendor_http, f"{DELIVERIES}/replay", too_many))) == {"ids"}

    # Recover: bounded per call, says whether more remain.
    since = (finished - timedelta(minutes=1)).isoformat()
    recovered = post(vendor_http, f"{DELIVERIES}/recover", {"since": since, "limit": 2})
    assert recovered.json() == {"replayed": 2, "refused": 0, "hasMore": True}
    recovered = post(vendor_http, f"{DELIVERIES}/recover", {"since": since, "endpointId": first})
    assert recovered.json()["replayed"] == 0  # the first endpoint's were replayed above
    recovered = post(vendor_http, f"{DELIVERIES}/recover", {"since": since})
    assert recovered.json() == {"replayed": 1, "refused": 0, "hasMore": False}
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {"pending"}
    later = (timezone.now() + timedelta(minutes=1)).isoformat()
    assert post(vendor_http, f"{DELIVERIES}/recover", {"since": later}).json()["replayed"] == 0
    assert set(field_errors(post(vendor_http, f"{DELIVERIES}/recover", {}))) == {"since"}

    # A replay is judged with today's access: a client that lost the scope gets a 409.
    WebhookDelivery.objects.update(status=DeliveryStatus.FAILED, finished_at=finished)
    model_update(instance=client, actor=system, data={"scopes": ROSTER_AND_MANAGE})
    incident = rows[-1]
    refused = post(vendor_http, f"{DELIVERIES}/{incident.pk}/replay")
    assert refused.status_code == 409 and "no longer receive" in refused.json()["detail"]
    selection = post(vendor_http, f"{DELIVERIES}/replay", {"ids": [incident.pk]}).json()
    assert selection["refused"][0]["id"] == incident.pk and selection["replayed"] == []
    recovered = post(vendor_http, f"{DELIVERIES}/recover", {"since": since}).json()
    assert recovered == {"replayed": 4, "refused": 1, "hasMore": False}
    incident.refresh_from_db()
    assert incident.status == DeliveryStatus.FAILED


def test_a_replay_sends_the_body_of_todays_field_profile(north, system, loopback):
    client, _http, _first, _second, rows = _deliveries(north, system)
    delivery = rows[0]
    assert delivery.body is None  # no profile: the event's full payload
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.FAILED)
    profile = FieldProfile.objects.create(
        district=north.district, name="ids", fields={"students": ["lastName"]}
    )
    model_update(instance=client, actor=system, data={"field_profile": profile})
    assert post(http(client), f"{DELIVERIES}/{delivery.pk}/replay").status_code == 200
    delivery.refresh_from_db()
    sent = json.loads(bytes(delivery.body))["data"]["object"]
    assert set(sent) == {"id", "changeVersion", "lastName"}


def test_a_deleted_endpoints_deliveries_stay_the_vendors_and_only_its(
    north, south, system, loopback
):
    """Two clients of one district and a client of another each delete an endpoint that had
    deliveries (one attempted, one still pending). Each still lists, filters and reads its
    own, marked deleted, and can no longer replay them; no one sees another's."""
    owner = vendor(north, system)
    neighbour = vendor(north, system)
    foreigner = vendor(south, system)
    district = district_endpoint(north, system, types=["student.updated"])

    def endpoints_of(client):
        client_http = http(client)
        kept = create(client_http, name="kept").json()["data"]["id"]
        gone = create(client_http, name="gone").json()["data"]["id"]
        return client_http, kept, gone

    owner_http, owner_kept, owner_gone = endpoints_of(owner)
    neighbour_http, _neighbour_kept, neighbour_gone = endpoints_of(neighbour)
    foreign_http, _foreign_kept, foreign_gone = endpoints_of(foreigner)
    for world in (north, south):
        rename(world.a1, system, "First")
    # The first deliveries were tried (and failed for good); the second are still pending.
    tried = WebhookDelivery.objects.filter(endpoint__isnull=False)
    for delivery in tried:
        WebhookAttempt.objects.create(
            delivery=delivery,
            number=1,
            started_at=timezone.now(),
            duration_ms=5,
            status_code=500,
            response_body=b"boom",
        )
    tried.update(status=DeliveryStatus.FAILED, finished_at=timezone.now(), attempts=1)
    for world in (north, south):
        rename(world.a1, system, "Second")

    def of(endpoint_id):
        return sorted(
            WebhookDelivery.objects.filter(endpoint_id=endpoint_id).values_list("pk", flat=True)
        )

    owner_gone_ids, owner_kept_ids = of(owner_gone), of(owner_kept)
    neighbour_gone_ids, foreign_gone_ids = of(neighbour_gone), of(foreign_gone)
    district_ids = of(district.pk)
    assert len(owner_gone_ids) == len(foreign_gone_ids) == 2
    for client_http, endpoint_id in (
        (owner_http, owner_gone),
        (neighbour_http, neighbour_gone),
        (foreign_http, foreign_gone),
    ):
        assert client_http.delete(f"{ENDPOINTS}/{endpoint_id}").status_code == 204
    district_pk = district.pk
    services.webhook_endpoint_delete(actor=system, endpoint=district)
    statuses = dict(
        WebhookDelivery.objects.filter(pk__in=owner_gone_ids).values_list("pk", "status")
    )
    assert statuses == {owner_gone_ids[0]: "failed", owner_gone_ids[1]: "cancelled"}

    def listed(client_http, **params):
        response = client_http.get(DELIVERIES, params)
        assert response.status_code == 200, response.json()
        return response.json()["data"]

    # The owner: its deleted endpoint's deliveries are listed, marked, under the old id.
    rows = {d["id"]: d for d in listed(owner_http)}
    assert sorted(rows) == sorted(owner_gone_ids + owner_kept_ids)
    for pk in owner_gone_ids:
        assert (rows[pk]["endpointId"], rows[pk]["endpointDeleted"]) == (owner_gone, True)
        assert rows[pk]["endpointName"] == "gone"
    assert not any(rows[pk]["endpointDeleted"] for pk in owner_kept_ids)
    assert [d["id"] for d in listed(owner_http, endpointDeleted="true")] == owner_gone_ids
    assert [d["id"] for d in listed(owner_http, endpointDeleted="false")] == owner_kept_ids
    assert [d["id"] for d in listed(owner_http, endpointId=owner_gone)] == owner_gone_ids
    cancelled = listed(owner_http, endpointDeleted="true", status="cancelled")
    assert [d["id"] for d in cancelled] == owner_gone_ids[1:]
    # Paging goes through them like any other row.
    first_page = owner_http.get(DELIVERIES, {"limit": 1, "endpointDeleted": "true"}).json()
    after = first_page["meta"]["next"]
    second_page = listed(owner_http, limit=1, endpointDeleted="true", after=after)
    assert [d["id"] for d in first_page["data"] + second_page] == owner_gone_ids
    # Its detail, with the attempt.
    detail = owner_http.get(f"{DELIVERIES}/{owner_gone_ids[0]}")
    assert detail.status_code == 200
    data = detail.json()["data"]
    assert data["endpointDeleted"] and data["status"] == "failed"
    assert [(a["statusCode"], a["responseBody"]) for a in data["attempts"]] == [(500, "boom")]
    # Kept, not sendable: a replay is refused with the reason, and recover skips them.
    refused = post(owner_http, f"{DELIVERIES}/{owner_gone_ids[0]}/replay")
    assert refused.status_code == 409 and "deleted" in refused.json()["detail"]
    selection = post(owner_http, f"{DELIVERIES}/replay", {"ids": owner_gone_ids[:1]}).json()
    assert selection["refused"][0]["id"] == owner_gone_ids[0]
    recovered = post(owner_http, f"{DELIVERIES}/recover", {"since": "2000-01-01T00:00:00Z"})
    assert recovered.json() == {"replayed": 1, "refused": 0, "hasMore": False}  # the kept one
    assert WebhookDelivery.objects.get(pk=owner_gone_ids[0]).status == "failed"

    # Everyone else: only their own; another's deleted deliveries are a 404.
    assert [d["id"] for d in listed(neighbour_http, endpointDeleted="true")] == neighbour_gone_ids
    assert [d["id"] for d in listed(foreign_http, endpointDeleted="true")] == foreign_gone_ids
    assert [d["id"] for d in listed(foreign_http, endpointId=owner_gone)] == []
    assert [d["id"] for d in listed(owner_http, endpointId=neighbour_gone)] == []
    for client_http, others in (
        (owner_http, neighbour_gone_ids + foreign_gone_ids + district_ids),
        (neighbour_http, owner_gone_ids + foreign_gone_ids + district_ids),
        (foreign_http, owner_gone_ids + neighbour_gone_ids + district_ids),
    ):
        seen = {d["id"] for d in listed(client_http)}
        assert not seen & set(others)
        for pk in others:
            assert client_http.get(f"{DELIVERIES}/{pk}").status_code == 404
    # The district's own deleted endpoint: kept for the admin, no client's.
    assert set(
        WebhookDelivery.objects.filter(pk__in=district_ids).values_list(
            "deleted_endpoint_id", "deleted_endpoint_client"
        )
    ) == {(district_pk, None)}

    assert set(field_errors(owner_http.get(DELIVERIES, {"endpointDeleted": "yes"}))) == {
        "endpointDeleted"
    }


# --- the catalogue ---------------------------------------------------------------------


def test_the_catalogue_lists_every_type_with_schema_and_example(north, system):
    roster_only = vendor(north, system, scope_list=[scopes.ROSTER])
    response = http(roster_only).get(EVENT_TYPES)
    assert response.status_code == 200
    rows = {row["type"]: row for row in response.json()["data"]}
    assert set(rows) == set(catalogue.entries())
    student = rows["student.updated"]
    assert student["available"] and student["scope"] == scopes.ROSTER
    assert student["resource"] == "students"
    assert student["schema"]["properties"]["type"] == {"const": "student.updated"}
    assert student["example"]["type"] == "student.updated"
    incident = rows["incident.created"]
    assert incident["scope"] == scopes.BEHAVIOR and not incident["available"]
    operational = rows["sync_run.failed"]
    assert operational["scope"] is None and not operational["available"]
    assert operational["resource"] is None and operational["schema"]["title"] == "sync_run.failed"
    # Any valid token may read it, even one with no scope at all.
    assert http(vendor(north, system, scope_list=[])).get(EVENT_TYPES).status_code == 200


def test_the_catalogue_schemas_allow_null_where_the_api_sends_it():
    # A code read through a nullable foreign key (incident subtype) or a nullable key itself
    # (a request's assignee) is null when the key is: as the OpenAPI schema says.
    for resource in RESOURCES:
        properties = catalogue.resource_schema(resource)["properties"]
        for name, path in resource.fields.items():
            kind = properties[name].get("type")
            nullable = isinstance(kind, list) and "null" in kind
            assert nullable == model_field(resource.model, path)[1], (resource.name, name)


def test_the_api_catalogue_lists_the_webhook_endpoints(db):
    sync_catalogue()
    rows = {e.path: e for e in ApiEndpoint.objects.filter(path__contains="webhooks")}
    assert tuple(rows[ENDPOINTS].methods) == ("GET", "POST")
    assert tuple(rows[f"{ENDPOINTS}/{{id}}"].methods) == ("DELETE", "GET", "PATCH")
    assert tuple(rows[f"{DELIVERIES}/{{id}}/replay"].methods) == ("POST",)
    assert tuple(rows[f"{DELIVERIES}/recover"].methods) == ("POST",)
    assert (rows[ENDPOINTS].scope, rows[ENDPOINTS].write_scope) == (
        scopes.WEBHOOKS_MANAGE,
        scopes.WEBHOOKS_MANAGE,
    )
    assert (rows[EVENT_TYPES].scope, rows[EVENT_TYPES].write_scope) == ("", "")
    events = ApiEndpoint.objects.get(path=EVENTS)
    assert (events.methods, events.scope, events.write_scope) == (["GET"], "", "")


# --- the pull backstop -----------------------------------------------------------------


def _no_other_writers(wait_seconds: float = 30) -> None:
    """Wait until no other session of the test database is inside a writing transaction.

    The pull holds back every event newer than the oldest such transaction (it might still
    commit an older event id), so a session left writing by an earlier test or a process it
    started would empty these pulls. This waits for one that is finishing, and names one that
    never does, instead of failing on an empty pull with no clue.
    """
    import time

    from django.db import connection

    deadline = time.monotonic() + wait_seconds
    while True:
        with connection.cursor() as cursor:
            writers = other_writers(cursor)
        if not writers:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"sessions left inside writing transactions hold the pull back: {writers}")
        time.sleep(0.2)


def _events(north, south, system):
    """Events of both districts: students of schools A and B, an incident, an operational one."""
    _no_other_writers()
    district_endpoint(north, system)
    district_endpoint(south, system)
    rename(north.a1, system, "A one")  # school A
    rename(north.b1, system, "B one")  # school B
    model_update(instance=north.incidents[north.b1.pk], actor=system, data={"narrative": "x"})
    rename(north.b1, system, "B two")
    rename(south.b1, system, "South")
    from bxos.common import events as domain

    domain.emit("sync_run.failed", north.school_a, data={"id": 1, "status": "failed"})
    return list(WebhookEvent.objects.filter(district=north.district).order_by("id"))


def pulled(response) -> list[tuple[str, str, int]]:
    assert response.status_code == 200, response.json()
    return [(e["type"], e["data"]["eventId"], e["data"]["id"]) for e in response.json()["data"]]


def test_the_pull_lists_what_the_client_could_have_received(north, south, system, loopback):
    stored = _events(north, south, system)
    assert [e.type for e in stored] == [
        "student.updated",
        "student.updated",
        "incident.updated",
        "student.updated",
        "sync_run.failed",
    ]
    profile = FieldProfile.objects.create(
        district=north.district, name="first names", fields={"students": ["firstName"]}
    )
    client = vendor(north, system, scope_list=[scopes.ROSTER], schools=[north.school_b])
    model_update(instance=client, actor=system, data={"field_profile": profile})
    response = http(client).get(EVENTS)
    # School B's student only: not school A's, not the incident (no behavior scope), not the
    # operational event, not the other district's.
    assert pulled(response) == [
        ("student.updated", stored[1].pk, north.b1.pk),
        ("student.updated", stored[3].pk, north.b1.pk),
    ]
    first = response.json()["data"][0]
    assert set(first["data"]["object"]) == {"id", "changeVersion", "firstName"}
    for event in response.json()["data"]:  # what the catalogue promises, profile cut included
        jsonschema.validate(event, catalogue.schema(catalogue.entries()[event["type"]]))
    assert first["timestamp"] == first["data"]["occurredAt"]
    meta = response.json()["meta"]
    assert meta["next"] is None and meta["lastEventId"] == stored[3].pk
    # One disclosure row for the response, naming the students sent.
    (entry,) = DisclosureLogEntry.objects.filter(client=client)
    assert entry.student_ids == [north.b1.pk] and entry.endpoint == EVENTS

    # Every scope and school: everything about records, still nothing operational.
    everything = vendor(north, system, scope_list=[scopes.ROSTER, scopes.BEHAVIOR])
    response = http(everything).get(EVENTS)
    assert [e[1] for e in pulled(response)] == [e.pk for e in stored[:4]]
    for event in response.json()["data"]:
        jsonschema.validate(event, catalogue.schema(catalogue.entries()[event["type"]]))
    # The token's scopes bound it too: a scope the token lacks is skipped, not an error.
    roster_token = http(everything, [scopes.ROSTER])
    assert [e[0] for e in pulled(roster_token.get(EVENTS))] == ["student.updated"] * 3
    assert pulled(http(vendor(north, system, scope_list=[scopes.GRADES])).get(EVENTS)) == []
    # The other district sees its own event only.
    south_client = vendor(south, system, scope_list=[scopes.ROSTER])
    assert [e[2] for e in pulled(http(south_client).get(EVENTS))] == [south.b1.pk]


def test_the_pull_pages_by_event_id_or_from_a_time(north, south, system, loopback):
    stored = _events(north, south, system)
    client = vendor(north, system, scope_list=[scopes.ROSTER, scopes.BEHAVIOR])
    client_http = http(client)
    ids = [e.pk for e in stored[:4]]

    seen, params, pages = [], {"limit": 1}, 0
    while True:
        page = client_http.get(EVENTS, params).json()
        pages += 1
        seen += [e["data"]["eventId"] for e in page["data"]]
        if page["meta"]["next"] is None:
            break
        assert page["links"]["next"].endswith(f"since={page['meta']['next']}")
        params = {"limit": 1, "since": page["meta"]["next"]}
    assert seen == ids and pages == 4

    # `since` = an event id: exactly the events after it (any letter case).
    after = client_http.get(EVENTS, {"since": ids[1].lower()})
    assert [e[1] for e in pulled(after)] == ids[2:]
    # `since` = a time: the events recorded from that millisecond on.
    at = id_time(ids[2])
    from_time = [e[1] for e in pulled(client_http.get(EVENTS, {"since": at.isoformat()}))]
    assert from_time == [i for i in ids if id_time(i) >= at] and from_time[-2:] == ids[2:]
    future = (timezone.now() + timedelta(days=1)).isoformat()
    response = client_http.get(EVENTS, {"since": future})
    assert pulled(response) == [] and response.json()["meta"]["lastEventId"] is None
    assert [e[0] for e in pulled(client_http.get(EVENTS, {"eventType": "incident.updated"}))] == [
        "incident.updated"
    ]
    # No student data sent: no disclosure row.
    before = DisclosureLogEntry.objects.count()
    client_http.get(EVENTS, {"since": future})
    assert DisclosureLogEntry.objects.count() == before

    for params in [
        {"since": "evt_nonsense"},
        {"since": "yesterday"},
        {"since": "2026-10-14T09:30:00"},  # no offset
        {"limit": "ten"},
        {"limit": 0},
        {"eventType": "no.such"},
        {"after": "x"},
    ]:
        assert set(field_errors(client_http.get(EVENTS, params))) == {next(iter(params))}, params


def id_time(event_id: str):
    return ULID.from_str(event_id.removeprefix("evt_")).datetime


def test_the_pull_holds_back_events_a_writer_may_still_commit_before(
    north, south, system, loopback
):
    _events(north, south, system)
    client = vendor(north, system, scope_list=[scopes.ROSTER])
    loopback.WEBHOOKS = {**loopback.WEBHOOKS, "PULL_SETTLE_SECONDS": 3600}
    response = http(client).get(EVENTS)
    assert pulled(response) == [] and response.json()["meta"]["next"] is None
    hour_ago = event_id_floor(timezone.now() - timedelta(minutes=59))
    assert hour_ago < min(WebhookEvent.objects.values_list("id", flat=True))


def test_the_pull_answers_quickly_for_a_client_that_may_receive_little(
    north, south, system, loopback, monkeypatch
):
    _events(north, south, system)
    # Many events about school A, which this client may not read.
    for n in range(12):
        rename(north.a1, system, f"A {n}")
    rename(north.b1, system, "Finally B")
    client = vendor(north, system, scope_list=[scopes.ROSTER], schools=[north.school_b])
    # Each page examines at most 5 events, in batches of 2.
    monkeypatch.setattr(webhooks_api, "MIN_SCAN", 5)
    monkeypatch.setattr(webhooks_api, "BATCH", 2)
    seen, params, pages = [], {"limit": 1}, 0
    while True:
        page = http(client).get(EVENTS, params).json()
        pages += 1
        seen += [(e["data"]["id"], e["data"]["object"]["preferredName"]) for e in page["data"]]
        if page["meta"]["next"] is None:
            break
        params = {"limit": 1, "since": page["meta"]["next"]}
    assert seen == [(north.b1.pk, "B one"), (north.b1.pk, "B two"), (north.b1.pk, "Finally B")]
    assert pages == 5  # two of them found nothing yet, and said where to go on


def test_district_rate_rules_can_name_webhooks_and_events(north, system, loopback, settings):
    settings.API = {**settings.API, "THROTTLE_RULES_TTL_SECONDS": 0}
    clear_rules_cache()
    for group in ("webhooks", "events"):
        model_create(
            model=ThrottleRule,
            actor=system,
            data={
                "district": north.district,
                "name": f"one {group} request a minute",
                "endpoint_group": group,
                "rate_per_minute": 1,
                "rate_per_hour": 100,
            },
        )
    vendor_http = http(vendor(north, system))
    try:
        for path in (ENDPOINTS, EVENTS):
            assert vendor_http.get(path).status_code == 200, path
            response = vendor_http.get(path)
            assert response.status_code == 429 and response["Retry-After"], path
        assert vendor_http.get(f"{DELIVERIES}/1").status_code == 429  # the same group
        assert vendor_http.get(EVENT_TYPES).status_code == 200  # in neither group
    finally:
        clear_rules_cache()


# --- never a 500 -----------------------------------------------------------------------


BAD_BODIES = [
    "[]",
    '"text"',
    "42",
    "null",
    "{",
    '{"name": "\\u0000", "url": "\\u0000", "eventTypes": ["\\u0000"]}',
    '{"name": "\\ud800", "url": "http://\\ud800/", "eventTypes": ["\\ud800"]}',
    '{"name": ["x"], "url": {"a": 1}, "eventTypes": "student.updated"}',
    '{"name": "x", "url": "http://a..b/", "eventTypes": [1, 2], "schoolIds": ["a", -1, 1e30]}',
    '{"name": "x", "url": "http://127.0.0.1:9/", "eventTypes": ["student.updated"], '
    '"schoolIds": [99999999999999999999999], "retrySchedule": [0, -5, 1e9], "maxInFlight": 0}',
    '{"ids": [99999999999999999999999], "since": "0001-01-01T00:00:00+01:00", "graceHours": -1}',
    '{"ids": "1,2", "since": "9999-12-31T23:59:59-01:00", "endpointId": "x", "limit": 1e6}',
]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_malformed_bodies_are_never_500(body, north, system, loopback):
    client = vendor(north, system)
    vendor_http = http(client)
    endpoint = create(vendor_http).json()["data"]["id"]
    for method, path in [
        ("post", ENDPOINTS),
        ("patch", f"{ENDPOINTS}/{endpoint}"),
        ("post", f"{ENDPOINTS}/{endpoint}/rotate-secret"),
        ("post", f"{DELIVERIES}/replay"),
        ("post", f"{DELIVERIES}/recover"),
    ]:
        response = getattr(vendor_http, method)(path, body, content_type="application/json")
        # Refused with a problem, or a no-op (fields that do not apply are ignored).
        assert response.status_code < 500, (method, path, response.content)
        if response.status_code >= 400:
            assert response["Content-Type"] == "application/problem+json"
        else:
            assert (method, path) != ("post", ENDPOINTS), f"created from {body}"
    response = vendor_http.post(ENDPOINTS, "name=x", content_type="text/plain")
    assert response.status_code == 415


@pytest.mark.parametrize(
    "path",
    [
        f"{ENDPOINTS}/1.5",
        f"{ENDPOINTS}/99999999999999999999999",
        f"{DELIVERIES}/x",
        f"{DELIVERIES}/-1/replay",
        f"{EVENTS}?since=evt_81JAB3C4D5E6F7G8H9J0K1M2N3",
        f"{EVENTS}?since=0001-01-01T00:00:00%2B01:00",
        f"{EVENTS}?since=9999-12-31T23:59:59-01:00",
        f"{EVENTS}?limit=99999999999999999999",
        f"{DELIVERIES}?since=0001-01-01T00:00:00%2B01:00&until=9999-12-31T23:59:59-01:00",
        f"{DELIVERIES}?endpointId=99999999999999999999999",
        f"{DELIVERIES}?eventType=%00",
    ],
)
def test_odd_paths_and_parameters_are_never_500(path, north, system):
    response = http(vendor(north, system)).get(path)
    assert response.status_code < 500, response.content
    response = http(vendor(north, system)).post(path, {}, format="json")
    assert response.status_code < 500, response.content


# --- role x scope x tenant -------------------------------------------------------------

KINDS = {
    # who: (district, scopes, delegated)
    "manager": ("north", ROSTER_AND_MANAGE, False),
    "reader": ("north", [scopes.ROSTER], False),
    "neighbour": ("north", ROSTER_AND_MANAGE, False),
    "delegated": ("north", ROSTER_AND_MANAGE, True),
    "south": ("south", ROSTER_AND_MANAGE, False),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_matrix_of_clients_scopes_and_tenants(kind, north, south, system, loopback):
    owner = vendor(north, system)
    endpoint_id = create(http(owner)).json()["data"]["id"]
    district_endpoint(north, system)
    rename(north.b1, system, "Matrix")
    delivery_id = WebhookDelivery.objects.get(endpoint_id=endpoint_id).pk
    world_name, scope_list, delegated = KINDS[kind]
    world = {"north": north, "south": south}[world_name]
    if kind == "manager":
        token = token_for(owner)
    elif delegated:
        app, _ = make_app(world, system, scope_list=scope_list)
        token = delegated_token(app, world.users["district_admin"])
    else:
        token = token_for(vendor(world, system, scope_list=scope_list))
    caller = api(token)

    mine = f"{ENDPOINTS}/{endpoint_id}"
    operations = {
        "list endpoints": ("get", ENDPOINTS, None),
        "create endpoint": ("post", ENDPOINTS, {"name": "m", "url": HOOK, "eventTypes": []}),
        "get endpoint": ("get", mine, None),
        "change endpoint": ("patch", mine, {"name": "changed"}),
        "rotate secret": ("post", f"{mine}/rotate-secret", {}),
        "list deliveries": ("get", DELIVERIES, None),
        "get delivery": ("get", f"{DELIVERIES}/{delivery_id}", None),
        "replay delivery": ("post", f"{DELIVERIES}/{delivery_id}/replay", {}),
        "replay selection": ("post", f"{DELIVERIES}/replay", {"ids": [delivery_id]}),
        "recover": ("post", f"{DELIVERIES}/recover", {"since": "2000-01-01T00:00:00Z"}),
        "event types": ("get", EVENT_TYPES, None),
        "events": ("get", EVENTS, None),
        "delete endpoint": ("delete", mine, None),
    }
    for name, (method, path, body) in operations.items():
        if body is None:
            response = getattr(caller, method)(path)
        else:
            response = getattr(caller, method)(path, body, format="json")
        expected = _expected(kind, name)
        assert response.status_code == expected, (kind, name, response.status_code, response.json())
        if expected == 403:
            detail = response.json()["detail"]
            assert ("acts for a staff member" if delegated else "webhooks:manage") in detail
        # Throttling and its headers apply to every answer, errors included.
        assert response["RateLimit-Limit"] and response["RateLimit-Policy"], (kind, name)
    # Only the owner changed anything.
    changed = WebhookEndpoint.objects.filter(pk=endpoint_id).first()
    if kind == "manager":
        assert changed is None  # deleted last
    else:
        assert changed.name == "Vendor hook" and changed.secrets.count() == 1


def _expected(kind: str, operation: str) -> int:
    if operation == "event types":
        return 200
    if operation == "events":
        return 403 if kind == "delegated" else 200
    if kind in ("reader", "delegated"):
        return 403
    own = operation in ("list endpoints", "list deliveries", "replay selection", "recover")
    if kind == "manager" or own:
        return {"create endpoint": 400, "delete endpoint": 204}.get(operation, 200)
    if operation == "create endpoint":
        return 400  # its own, refused for the empty eventTypes
    return 404  # another client's or district's item


def test_delivery_times_with_any_rfc_3339_offset_are_read_in_utc(north, system):
    # RFC 3339 allows offsets up to 23:59; PostgreSQL only to 15:59 (schemathesis found a 500).
    http_client = http(vendor(north, system))
    for raw in ("6091-03-24T22:36:35+23:21", "2026-11-24T09:00:00-23:59"):
        response = http_client.get(DELIVERIES, {"since": raw, "until": raw})
        assert response.status_code == 200, response.json()
    response = http_client.get(DELIVERIES, {"since": "0001-01-01T00:00:00+23:00"})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "since"
