"""The API catalogue comes from the code; deprecated versions say so; sunset ones are gone."""

from datetime import date

from django.urls import reverse

from bxos.api.catalogue import sync_catalogue
from bxos.api.models import ApiEndpoint
from bxos.api.resources import RESOURCES
from tests.bxos.api.test_api_read import api, make_client, token_for


def test_catalogue_lists_every_endpoint_of_the_code(db):
    sync_catalogue()
    rows = {(e.path, tuple(e.methods)) for e in ApiEndpoint.objects.all()}
    for resource in RESOURCES:
        base = f"/api/v1/{resource.name}"
        methods = (
            ("GET", "POST")
            if resource.name in ("incidents", "behaviorSupportRequests")
            else ("GET",)
        )
        assert (base, methods) in rows
        assert (f"{base}/{{id}}", ("GET",)) in rows
        assert (f"{base}/deletes", ("GET",)) in rows
    assert ("/api/v1/behaviorSupportRequests/{id}/transitions", ("POST",)) in rows
    assert ("/api/v1/changes/available", ("GET",)) in rows
    students = ApiEndpoint.objects.get(path="/api/v1/students")
    assert (students.scope, students.status) == ("roster.readonly", "current")


def test_deprecated_version_sends_deprecation_and_sunset(north, system, settings):
    settings.API = {
        **settings.API,
        "VERSIONS": {
            "v1": {
                "status": "deprecated",
                "deprecated": date(2026, 11, 1),
                "sunset": date(2027, 7, 1),
            }
        },
    }
    http = api(token_for(make_client(north, system)[0]))
    response = http.get("/api/v1/schools")
    assert response.status_code == 200
    assert response["Deprecation"] == "@1793491200"  # 2026-11-01T00:00:00Z
    assert response["Sunset"] == "Thu, 01 Jul 2027 00:00:00 GMT"
    # GraphQL serves v1's resources: it is deprecated with it.
    answer = http.post("/api/graphql/", {"query": "{ schools { items { id } } }"}, format="json")
    assert answer.status_code == 200 and answer.json()["data"]["schools"]["items"]
    assert answer["Deprecation"] == "@1793491200"
    assert answer["Sunset"] == "Thu, 01 Jul 2027 00:00:00 GMT"
    sync_catalogue()
    assert set(ApiEndpoint.objects.values_list("status", flat=True)) == {"deprecated"}


def test_sunset_version_is_410(north, system, settings):
    settings.API = {
        **settings.API,
        "VERSIONS": {"v1": {"status": "sunset", "sunset": date(2026, 1, 1), "successor": "v2"}},
    }
    http = api(token_for(make_client(north, system)[0]))
    response = http.get("/api/v1/schools")
    assert response.status_code == 410
    assert response.json()["type"] == "urn:bxos:problem:version-sunset"
    answer = http.post("/api/graphql/", {"query": "{ schools { items { id } } }"}, format="json")
    assert answer.status_code == 410
    assert answer.json()["type"] == "urn:bxos:problem:version-sunset"


def test_catalogue_in_the_admin(north, client):
    sync_catalogue()
    client.force_login(north.users["teacher"])
    page = client.get(reverse("admin:api_apiendpoint_changelist"), {"q": "students"})
    assert page.status_code == 200
    assert "/api/v1/students/{id}" in page.content.decode()
