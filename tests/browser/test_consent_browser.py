"""A teacher authorizes a district app on the consent page, in a real browser."""

from __future__ import annotations

from datetime import date, timedelta
from urllib.parse import parse_qs, urlparse

import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client

from bxos.api.choices import ClientType, GrantType
from bxos.api.services import api_client_create
from tests.browser.conftest import screenshot
from tests.browser.test_admin_browser import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_teacher_reads_the_consent_page_and_allows(page, live_server, north, system):
    callback = f"{live_server.url}/oauth-callback/"
    app, _ = api_client_create(
        actor=system,
        district=north.district,
        name="Calm Classroom",
        contact_name="Cora Calm",
        contact_email="cora@calm.example",
        purpose="Teachers log classroom-managed behavior and see their open requests",
        contract_end_date=date.today() + timedelta(days=365),
        scopes=["roster.readonly", "behavior.readonly", "behavior.write"],
        status="production",
        grant_type=GrantType.AUTHORIZATION_CODE,
        client_type=ClientType.PUBLIC,
        redirect_uris=callback,
    )
    oauth = OAuth2Client(
        app.application.client_id, redirect_uri=callback, code_challenge_method="S256"
    )
    verifier = generate_token(64)
    url, state = oauth.create_authorization_url(
        f"{live_server.url}/o/authorize/",
        code_verifier=verifier,
        scope="roster.readonly behavior.write",
    )
    login(page, live_server, north.users["teacher"].username)
    page.goto(url)
    page.wait_for_selector("#authorizationForm")
    text = page.inner_text("#content-main")
    assert "Allow Calm Classroom to act for you?" in text
    assert "Teachers log classroom-managed behavior" in text
    scopes = page.locator("#consent-scopes li").all_inner_texts()
    assert len(scopes) == 2 and any("behavior.write" in s for s in scopes)
    screenshot(page, "oauth-consent-teacher")

    page.click("input[name=allow]")
    page.wait_for_url(f"{callback}**")
    query = parse_qs(urlparse(page.url).query)
    assert query["state"] == [state] and query["code"][0]

    token = oauth.fetch_token(
        f"{live_server.url}/o/token/",
        authorization_response=page.url,
        code_verifier=verifier,
    )
    assert set(token["scope"].split()) == {"roster.readonly", "behavior.write"}


def test_a_refusal_is_explained(page, live_server, north, south, system):
    app, _ = api_client_create(
        actor=system,
        district=north.district,
        name="Calm Classroom",
        contact_name="Cora Calm",
        contact_email="cora@calm.example",
        purpose="Teachers log classroom-managed behavior",
        contract_end_date=date.today() + timedelta(days=365),
        scopes=["roster.readonly"],
        status="production",
        grant_type=GrantType.AUTHORIZATION_CODE,
        client_type=ClientType.PUBLIC,
        redirect_uris="https://calm.example/cb",
    )
    oauth = OAuth2Client(
        app.application.client_id,
        redirect_uri="https://calm.example/cb",
        code_challenge_method="S256",
    )
    url, _ = oauth.create_authorization_url(
        f"{live_server.url}/o/authorize/", code_verifier=generate_token(64), scope="roster.readonly"
    )
    login(page, live_server, south.users["teacher"].username)
    page.goto(url)
    message = page.inner_text("#consent-error")
    assert "You cannot authorize Calm Classroom" in message
    assert "no role in the client's district" in message
    screenshot(page, "oauth-consent-refused")
