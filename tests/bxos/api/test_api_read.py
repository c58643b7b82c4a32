"""The vendor API: tokens, scopes, tenancy, field profiles, change feed and disclosure log."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from oauth2_provider.models import AccessToken
from rest_framework.test import APIClient

from bxos.api import scopes
from bxos.api.models import DisclosureLogEntry, FieldProfile
from bxos.api.resources import RESOURCES
from bxos.api.services import api_client_create, api_client_revoke
from bxos.common.services import model_update
from bxos.schools.models import Student

ALL_READ = [s for s in scopes.SCOPES if s not in scopes.WRITE_SCOPES and s != scopes.INTROSPECTION]


def make_client(
    world, actor, *, scope_list=ALL_READ, schools=(), profile=None, status="production", end=None
):
    client, secret = api_client_create(
        actor=actor,
        district=world.district,
        name=f"{world.code} vendor",
        contact_name="Vera Vendor",
        contact_email="vera@vendor.example",
        purpose="Roster sync",
        contract_end_date=end or date.today() + timedelta(days=365),
        scopes=list(scope_list),
        status=status,
        allowed_schools=schools,
        field_profile=profile,
    )
    return client, secret


def token_for(client, scope_list=None):
    from django.utils import timezone
    from oauthlib.common import generate_token

    return AccessToken.objects.create(
        application=client.application,
        token=generate_token(),
        expires=timezone.now() + timedelta(hours=1),
        scope=" ".join(scope_list if scope_list is not None else client.scopes),
    )


def api(token) -> APIClient:
    http = APIClient()
    http.credentials(HTTP_AUTHORIZATION=f"Bearer {token.token}")
    return http


def test_no_token_or_bad_token_is_401_problem_json(north):
    response = APIClient().get("/api/v1/students")
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "urn:bxos:problem:unauthenticated" and body["requestId"]
    response = APIClient(HTTP_AUTHORIZATION="Bearer nonsense").get("/api/v1/students")
    assert response.status_code == 401


@pytest.mark.parametrize("resource", [r.name for r in RESOURCES])
def test_every_resource_stays_in_the_district(resource, north, south, system):
    client, _ = make_client(north, system)
    response = api(token_for(client)).get(f"/api/v1/{resource}", {"limit": 1000})
    assert response.status_code == 200, response.json()
    ids = {row["id"] for row in response.json()["data"]}
    model = next(r.model for r in RESOURCES if r.name == resource)
    own = set(model.objects.filter(district=north.district).values_list("id", flat=True))
    assert ids == own and ids
    # Another district's row is a 404, never a 403.
    foreign = model.objects.filter(district=south.district).first()
    assert api(token_for(client)).get(f"/api/v1/{resource}/{foreign.pk}").status_code == 404


def test_allowed_schools_limit_what_a_client_sees(north, system):
    client, _ = make_client(north, system, schools=[north.school_b])
    data = api(token_for(client)).get("/api/v1/students").json()["data"]
    assert {r["id"] for r in data} == {north.b1.pk}
    data = api(token_for(client)).get("/api/v1/incidents").json()["data"]
    assert {r["studentId"] for r in data} == {north.b1.pk}


def test_missing_scope_is_403_naming_the_scope(north, system):
    client, _ = make_client(north, system, scope_list=[scopes.ROSTER])
    response = api(token_for(client)).get("/api/v1/incidents")
    assert response.status_code == 403
    assert "behavior.readonly" in response.json()["detail"]
    # A token issued before the admin removed a scope loses it at once.
    token = token_for(client)
    model_update(instance=client, actor=system, data={"scopes": []})
    assert api(token).get("/api/v1/students").status_code == 403


@pytest.mark.parametrize("change", ["revoke", "suspend", "contract"])
def test_stopped_clients_get_401(change, north, system):
    client, _ = make_client(north, system)
    token = token_for(client)
    assert api(token).get("/api/v1/schools").status_code == 200
    if change == "revoke":
        api_client_revoke(actor=system, client=client)
        token = token_for(client)  # even a token minted after revocation
    elif change == "suspend":
        model_update(instance=client, actor=system, data={"status": "suspended"})
    else:
        model_update(
            instance=client,
            actor=system,
            data={"contract_end_date": date.today() - timedelta(days=1)},
        )
    response = api(token).get("/api/v1/schools")
    assert response.status_code == 401, response.json()


def test_field_profile_cuts_fields(north, system):
    profile = FieldProfile.objects.create(
        district=north.district, name="minimal", fields={"students": ["firstName", "gradeLevel"]}
    )
    client, _ = make_client(north, system, profile=profile)
    row = api(token_for(client)).get(f"/api/v1/students/{north.a1.pk}").json()["data"]
    assert set(row) == {"id", "changeVersion", "firstName", "gradeLevel"}
    # Other resources are sent whole.
    row = api(token_for(client)).get(f"/api/v1/schools/{north.school_a.pk}").json()["data"]
    assert "name" in row and "ncesId" in row


def test_disclosure_rows_name_the_students_sent(north, system):
    client, _ = make_client(north, system)
    token = token_for(client)
    api(token).get("/api/v1/students", {"limit": 2})
    api(token).get(f"/api/v1/incidents/{north.incidents[north.b1.pk].pk}")
    api(token).get("/api/v1/schools")  # no student data: no disclosure
    rows = list(DisclosureLogEntry.objects.filter(client=client).order_by("at"))
    assert len(rows) == 2
    first_two = sorted(
        Student.objects.filter(district=north.district)
        .order_by("id")
        .values_list("id", flat=True)[:2]
    )
    assert rows[0].student_ids == first_two and rows[0].count == 2
    assert rows[0].endpoint == "/api/v1/students" and rows[0].purpose == "Roster sync"
    assert rows[1].student_ids == [north.b1.pk]
    # "Who received this student's data" is one indexed query.
    assert DisclosureLogEntry.objects.filter(student_ids__contains=[north.b1.pk]).count() == 1


def test_bad_parameters_are_400_naming_them(north, system):
    http = api(token_for(make_client(north, system)[0]))
    cases = {
        "limit=abc": "limit",
        "minChangeVersion=9&maxChangeVersion=3": "minChangeVersion",
        "colour=blue": "colour",
        "after=garbage": "after",
        "schoolId=x": "schoolId",
    }
    for query, name in cases.items():
        response = http.get(f"/api/v1/enrollments?{query}")
        assert response.status_code == 400, (query, response.status_code)
        body = response.json()
        assert body["errors"][0]["field"] == name, body
        assert name in body["detail"]


def test_page_size_is_capped_and_said_so(north, system):
    http = api(token_for(make_client(north, system)[0]))
    meta = http.get("/api/v1/students", {"limit": 5000}).json()["meta"]
    assert meta["limit"] == 1000 and "maximum page size" in meta["limitCapped"]


def test_keyset_pages_walk_every_row_once(north, system):
    http = api(token_for(make_client(north, system)[0]))
    seen, url = [], "/api/v1/attendance?limit=2"
    while url:
        body = http.get(url).json()
        seen += [r["id"] for r in body["data"]]
        url = body["links"]["next"]
    assert len(seen) == len(set(seen)) == 3


def test_change_window_and_deletes(north, system):
    from bxos.common.db import current_change_version

    http = api(token_for(make_client(north, system)[0]))
    start = current_change_version()
    model_update(instance=north.a2, actor=system, data={"preferred_name": "Benny"})
    body = http.get("/api/v1/students", {"minChangeVersion": start + 1}).json()
    assert [r["id"] for r in body["data"]] == [north.a2.pk]
    assert body["meta"]["maxChangeVersion"] >= body["data"][0]["changeVersion"]
    available = http.get("/api/v1/changes/available").json()
    assert available["newestChangeVersion"] >= body["meta"]["maxChangeVersion"]
    guardian_link = north.guardian.student_links.get()
    link_id = guardian_link.pk
    guardian_link.delete()
    deletes = http.get("/api/v1/studentGuardians/deletes", {"minChangeVersion": start + 1}).json()[
        "data"
    ]
    assert [d["id"] for d in deletes] == [link_id]


def test_malformed_or_foreign_bearer_tokens_are_401(north, system):
    client, _ = make_client(north, system)
    token = token_for(client)
    response = APIClient(HTTP_AUTHORIZATION=f"Bearer {token.token} extra").get("/api/v1/schools")
    assert response.status_code == 401 and "Bearer <token>" in response.json()["detail"]
    # A token bound (RFC 8707) to another resource server is refused here.
    token.resource = ["https://other.example/"]
    token.save(update_fields=["resource"])
    response = api(token).get("/api/v1/schools")
    assert response.status_code == 401 and "another resource server" in response.json()["detail"]
    # Never from the query string (RFC 9700).
    response = APIClient().get("/api/v1/schools", {"access_token": token.token})
    assert response.status_code == 401
