"""District admins manage API clients and read the disclosure log in the admin."""

from __future__ import annotations

import re
from datetime import date, timedelta

from django.contrib.messages import get_messages
from django.urls import reverse
from oauth2_provider.models import Application

from bxos.api.models import ApiClient, DisclosureLogEntry


def test_create_client_shows_the_secret_once_and_stores_it_hashed(north, client):
    client.force_login(north.users["district_admin"])
    response = client.post(
        reverse("admin:api_apiclient_add"),
        {
            "name": "Math Tutor",
            "contact_name": "Mo",
            "contact_email": "mo@tutor.example",
            "purpose": "Adaptive practice for grade 10 math",
            "contract_end_date": (date.today() + timedelta(days=200)).isoformat(),
            "status": "testing",
            "scopes": ["roster.readonly", "grades.readonly"],
            "allowed_schools": [north.school_a.pk],
            "rate_per_minute": "120",
            "rate_per_hour": "5000",
            "grant_type": "client-credentials",
            "client_type": "confidential",
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    api_client = ApiClient.objects.get(name="Math Tutor")
    assert api_client.district == north.district
    assert api_client.scopes == ["roster.readonly", "grades.readonly"]
    text = " ".join(str(m) for m in get_messages(response.wsgi_request))
    secret = re.search(r"client secret (\S+)", text).group(1)
    stored = Application.objects.get(pk=api_client.application_id).client_secret
    assert secret not in stored and stored.startswith("pbkdf2_")
    # Shown on the next page (the one-time message), and never again.
    change_url = reverse("admin:api_apiclient_change", args=[api_client.pk])
    assert secret in client.get(change_url).content.decode()
    assert secret not in client.get(change_url).content.decode()


def test_bad_client_input_gets_field_errors(north, client):
    client.force_login(north.users["district_admin"])
    response = client.post(
        reverse("admin:api_apiclient_add"),
        {
            "name": "X",
            "contact_name": "Y",
            "contact_email": "not-an-email",
            "purpose": "Z",
            "contract_end_date": "someday",
            "status": "testing",
            "scopes": ["root.everything"],
            "rate_per_minute": "0",
            "rate_per_hour": "10",
        },
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert {"contact_email", "contract_end_date", "scopes", "rate_per_minute"} <= set(errors)


def test_who_received_this_students_data_and_csv(north, south, client):
    DisclosureLogEntry.objects.create(
        client=north.api_client,
        district_id=north.district.pk,
        purpose="Reading groups",
        endpoint="/api/v1/students",
        student_ids=[north.a1.pk, north.a2.pk],
        count=2,
        request_id="abc",
    )
    DisclosureLogEntry.objects.create(
        client=north.api_client,
        district_id=north.district.pk,
        purpose="Reading groups",
        endpoint="/api/v1/students/9",
        student_ids=[north.b1.pk],
        count=1,
        request_id="def",
    )
    client.force_login(north.users["district_admin"])
    url = reverse("admin:api_disclosurelogentry_changelist")
    response = client.get(url, {"student": north.a1.pk})
    assert response.status_code == 200
    assert [d.request_id for d in response.context["cl"].result_list] == ["abc"]
    # The student's page links here.
    page = client.get(reverse("admin:schools_student_change", args=[north.a1.pk]))
    assert f"{url}?student={north.a1.pk}" in page.content.decode()
    ids = [d.pk for d in response.context["cl"].result_list]
    export = client.post(url, {"action": "export_csv", "_selected_action": ids})
    body = b"".join(export.streaming_content).decode()
    assert export["Content-Type"] == "text/csv"
    assert "Reading groups" in body and str(north.a2.pk) in body and "def" not in body


def _code_client_form(north, **overrides):
    data = {
        "name": "Counselor Notes App",
        "contact_name": "Ann",
        "contact_email": "ann@notes.example",
        "purpose": "Counselors' session notes",
        "contract_end_date": (date.today() + timedelta(days=200)).isoformat(),
        "status": "production",
        "scopes": ["roster.readonly", "behavior.readonly"],
        "rate_per_minute": "120",
        "rate_per_hour": "5000",
        "grant_type": "authorization-code",
        "client_type": "public",
        "redirect_uris": "https://notes.example/callback\nhttp://127.0.0.1:8123/cb",
    }
    data.update(overrides)
    return data


def test_oauth_settings_are_checked_on_their_fields(north, client):
    client.force_login(north.users["district_admin"])
    url = reverse("admin:api_apiclient_add")
    cases = [
        ({"redirect_uris": ""}, "redirect_uris", "needs at least one redirect URI"),
        (
            {"grant_type": "client-credentials"},
            "client_type",
            "can only use the authorization code grant",
        ),
        ({"redirect_uris": "ftp://notes.example/cb"}, "redirect_uris", "ftp"),
    ]
    for overrides, field, fragment in cases:
        response = client.post(url, _code_client_form(north, **overrides))
        assert response.status_code == 200, overrides
        errors = response.context["adminform"].form.errors
        assert fragment in " ".join(errors.get(field, [])), (overrides, errors)
    assert not ApiClient.objects.filter(name="Counselor Notes App").exists()
    assert not Application.objects.filter(name__contains="Counselor Notes App").exists()


def test_public_code_client_gets_no_secret_and_edits_reach_the_application(north, client):
    client.force_login(north.users["district_admin"])
    response = client.post(reverse("admin:api_apiclient_add"), _code_client_form(north))
    assert response.status_code == 302, response.context["adminform"].form.errors
    api_client = ApiClient.objects.get(name="Counselor Notes App")
    app = Application.objects.get(pk=api_client.application_id)
    assert app.client_type == Application.CLIENT_PUBLIC
    assert app.authorization_grant_type == Application.GRANT_AUTHORIZATION_CODE
    assert app.redirect_uris == "https://notes.example/callback http://127.0.0.1:8123/cb"
    text = " ".join(str(m) for m in get_messages(response.wsgi_request))
    assert "public client has no secret" in text and "client secret" not in text

    change = _code_client_form(
        north, redirect_uris="https://notes.example/v2/callback", client_type="confidential"
    )
    change["allowed_schools"] = []
    response = client.post(reverse("admin:api_apiclient_change", args=[api_client.pk]), change)
    assert response.status_code == 302, response.context["adminform"].form.errors
    app.refresh_from_db()
    assert app.redirect_uris == "https://notes.example/v2/callback"
    assert app.client_type == Application.CLIENT_CONFIDENTIAL
