"""The client-credentials flow, driven by an independent OAuth2 client over a real socket."""

from __future__ import annotations

import httpx
import pytest
from authlib.integrations.httpx_client import OAuth2Client

from tests.bxos.api.test_api_read import make_client


@pytest.mark.django_db(transaction=True)
def test_client_credentials_then_read(live_server, north, system):
    client, secret = make_client(north, system, scope_list=["roster.readonly"])
    with OAuth2Client(
        client.application.client_id, secret, token_endpoint_auth_method="client_secret_basic"
    ) as oauth:
        token = oauth.fetch_token(f"{live_server.url}/o/token/", grant_type="client_credentials")
        assert token["token_type"] == "Bearer"
        assert token["scope"] == "roster.readonly"
        response = oauth.get(f"{live_server.url}/api/v1/students")
    assert response.status_code == 200
    assert {r["id"] for r in response.json()["data"]} == {s.pk for s in north.students}
    assert response.headers["X-Request-ID"]

    # A scope the client does not hold cannot be obtained.
    with OAuth2Client(client.application.client_id, secret) as oauth:
        with pytest.raises(Exception, match="invalid_scope"):
            oauth.fetch_token(
                f"{live_server.url}/o/token/",
                grant_type="client_credentials",
                scope="behavior.readonly",
            )

    # A wrong secret gets no token.
    bad = httpx.post(
        f"{live_server.url}/o/token/",
        data={"grant_type": "client_credentials"},
        auth=(client.application.client_id, "wrong-secret"),
    )
    assert bad.status_code == 401
