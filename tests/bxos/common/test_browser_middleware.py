"""Django's browser middleware (session, CSRF, sign-in, messages) runs everywhere but the
versioned REST API, whose callers send bearer tokens and never cookies
(bxos.common.middleware)."""

from __future__ import annotations

from django.test import Client

from tests.bxos.api.test_api_read import api, make_client, token_for


def test_the_admin_keeps_csrf_protection_and_its_session(north):
    browser = Client(enforce_csrf_checks=True)
    refused = browser.post("/admin/login/", {"username": "x", "password": "y"})
    assert refused.status_code == 403  # no CSRF token: refused as before
    browser.force_login(north.users["district_admin"])
    page = browser.get("/admin/")
    assert page.status_code == 200
    assert "Cookie" in page.get("Vary", "")  # the page depends on the signed-in session


def test_the_rest_api_reads_no_cookie(north, system):
    # A POST to an unknown API path is the API's problem+json 404, never a CSRF refusal.
    browser = Client(enforce_csrf_checks=True)
    response = browser.post("/api/v1/nothing-here", "{}", content_type="application/json")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"
    # A signed-in admin's session cookie does not make anyone an API caller.
    browser.force_login(north.users["district_admin"])
    assert browser.get("/api/v1/students").status_code == 401
    # And API answers do not vary on a cookie they never read.
    page = api(token_for(make_client(north, system)[0])).get("/api/v1/students")
    assert page.status_code == 200
    assert "Cookie" not in page.get("Vary", "")
