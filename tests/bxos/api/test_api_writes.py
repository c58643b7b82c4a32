"""Writes through the vendor API: scope, gate, services, audit, idempotency, bad input."""

from __future__ import annotations

import json

from auditlog.models import LogEntry

from bxos.api import scopes
from bxos.behavior.models import BehaviorSupportRequest, Incident
from tests.bxos.api.test_api_read import api, make_client, token_for

WRITE = [scopes.ROSTER, scopes.BEHAVIOR, scopes.BEHAVIOR_WRITE]


def incident_body(world, **overrides):
    body = {
        "studentId": world.a1.pk,
        "schoolId": world.school_a.pk,
        "reportedById": world.teacher_staff.pk,
        "date": "2026-10-05",
        "time": "12:15",
        "level": "major",
        "problemBehavior": "fighting-physical-aggression",
        "location": "cafeteria",
        "motivation": "obtain-peer-attention",
        "narrative": "Pushing in the lunch line.",
    }
    body.update(overrides)
    return body


def post(http, path, body, **headers):
    return http.post(path, data=json.dumps(body), content_type="application/json", **headers)


def test_create_incident_goes_through_the_service_and_the_audit_log(north, system):
    client, _ = make_client(north, system, scope_list=WRITE)
    response = post(api(token_for(client)), "/api/v1/incidents", incident_body(north))
    assert response.status_code == 201, response.json()
    row = response.json()["data"]
    assert row["studentId"] == north.a1.pk and row["problemBehavior"] == (
        "fighting-physical-aggression"
    )
    incident = Incident.objects.get(pk=row["id"])
    entry = LogEntry.objects.get_for_object(incident).get()
    assert entry.actor == client.service_user and entry.actor.is_system_actor


def test_writes_need_the_write_scope(north, system):
    client, _ = make_client(north, system)  # all read scopes, no write
    response = post(api(token_for(client)), "/api/v1/incidents", incident_body(north))
    assert response.status_code == 403
    assert "behavior.write" in response.json()["detail"]


def test_other_district_ids_and_bad_codes_name_the_field(north, south, system):
    http = api(token_for(make_client(north, system, scope_list=WRITE)[0]))
    cases = [
        ({"studentId": south.a1.pk}, "studentId"),
        ({"schoolId": south.school_a.pk}, "schoolId"),
        ({"problemBehavior": "defiance", "level": "minor", "location": "moon"}, "location"),
        ({"problemBehavior": "tardy-minor-only"}, "problemBehavior"),
        ({"date": "yesterday"}, "date"),
        ({"schoolRelatedArrest": True, "lawEnforcementReferral": False}, "lawEnforcementReferral"),
    ]
    before = Incident.objects.count()
    for overrides, field in cases:
        response = post(http, "/api/v1/incidents", incident_body(north, **overrides))
        assert response.status_code == 400, (overrides, response.status_code)
        assert field in [e["field"] for e in response.json()["errors"]], response.json()
    assert Incident.objects.count() == before  # nothing written


def test_idempotency_key_replays_and_conflicts(north, system):
    http = api(token_for(make_client(north, system, scope_list=WRITE)[0]))
    body = {
        "studentId": north.b1.pk,
        "schoolId": north.school_b.pk,
        "requestedById": north.teacher_staff.pk,
        "concern": "Withdrawn",
    }
    first = post(http, "/api/v1/behaviorSupportRequests", body, HTTP_IDEMPOTENCY_KEY="k-1")
    again = post(http, "/api/v1/behaviorSupportRequests", body, HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert first.json()["data"]["id"] == again.json()["data"]["id"]
    assert BehaviorSupportRequest.objects.filter(student=north.b1).count() == 2  # fixture + 1
    other = post(
        http,
        "/api/v1/behaviorSupportRequests",
        {**body, "concern": "Other"},
        HTTP_IDEMPOTENCY_KEY="k-1",
    )
    assert other.status_code == 409
    assert other["Content-Type"] == "application/problem+json"


def test_bsr_status_moves_by_the_workflow(north, system):
    http = api(token_for(make_client(north, system, scope_list=WRITE)[0]))
    bsr = north.bsrs[north.a1.pk]
    response = post(
        http,
        f"/api/v1/behaviorSupportRequests/{bsr.pk}/transitions",
        {"toState": "triaged", "priority": 2, "assigneeId": north.counselor_staff.pk},
    )
    assert response.status_code == 200, response.json()
    assert response.json()["data"]["state"] == "triaged"
    response = post(
        http, f"/api/v1/behaviorSupportRequests/{bsr.pk}/transitions", {"toState": "submitted"}
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "toState"


def test_wrong_content_type_and_oversized_body(north, system, settings):
    http = api(token_for(make_client(north, system, scope_list=WRITE)[0]))
    response = http.post(
        "/api/v1/incidents", data="studentId=1", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 415
    settings.API = {**settings.API, "MAX_BODY_BYTES": 100}
    response = post(http, "/api/v1/incidents", incident_body(north, narrative="x" * 500))
    assert response.status_code == 413
    assert response.json()["type"] == "urn:bxos:problem:payload-too-large"
    response = http.post("/api/v1/incidents", data="{not json", content_type="application/json")
    assert response.status_code == 400
