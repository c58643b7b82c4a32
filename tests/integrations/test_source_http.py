"""SourceHttp against a real OAuth2 + OneRoster server on 127.0.0.1 (the test peer).

Waits are recorded by an injected ``sleep``, never slept, and never timed.
"""

from __future__ import annotations

import random
import socket
import time
from email.utils import formatdate

import httpx
import pytest

from integrations.connectors.base import ConnectorError, CredentialsRejected
from integrations.connectors.http import SourceHttp
from tests.integrations.peers.oneroster_rest import OneRosterPeer


@pytest.fixture
def peer(loopback):
    with OneRosterPeer() as peer:
        yield peer


def client(peer, *, state=None, secret=None, **options) -> tuple[SourceHttp, list, list]:
    waits: list[float] = []
    lines: list[str] = []
    http = SourceHttp(
        base_url=peer.base_url,
        token_url=peer.token_url,
        client_id=peer.client_id,
        client_secret=secret or peer.client_secret,
        scope=None,
        state={} if state is None else state,
        log=lines.append,
        sleep=waits.append,
        **options,
    )
    return http, waits, lines


def test_token_is_fetched_with_basic_auth_and_cached_in_state(peer):
    state: dict = {}
    http, _waits, _lines = client(peer, state=state)
    body, headers = http.get_json("orgs")
    assert len(body["orgs"]) == 3 and headers["x-total-count"] == "3"
    assert peer.tokens_issued == 1
    assert state["token"] and state["token_expires_at"] > time.time() + 3000
    token_request = next(r for r in peer.requests if r.path == "/token")
    assert token_request.authorization.startswith("Basic ")
    # Another client sharing the persisted state (the next run) reuses the token.
    again, _w, _l = client(peer, state=state)
    again.get_json("schools")
    http.get_json("users", {"limit": 2})
    assert peer.tokens_issued == 1
    http.close()
    again.close()


def test_token_with_less_than_a_minute_left_is_refreshed(peer):
    state: dict = {}
    http, _w, _l = client(peer, state=state)
    http.get_json("orgs")
    old = state["token"]
    state["token_expires_at"] = time.time() + 30
    http.get_json("orgs")
    assert peer.tokens_issued == 2 and state["token"] != old
    http.close()


def test_wrong_secret_is_credentials_rejected_naming_the_token_url(peer):
    http, waits, _l = client(peer, secret="not-the-secret")
    with pytest.raises(CredentialsRejected) as caught:
        http.get_json("orgs")
    message = str(caught.value)
    assert message.startswith("credentials rejected")
    assert peer.token_url in message and "invalid_client" in message
    assert caught.value.kind == "credentials"
    assert waits == []  # a rejected secret is not retried
    http.close()


def test_a_401_on_a_data_call_refreshes_the_token_once(peer):
    state: dict = {}
    http, waits, lines = client(peer, state=state)
    http.get_json("orgs")
    peer.expire_tokens()  # the server forgets the token the client still holds
    body, _headers = http.get_json("users", {"limit": 3})
    assert len(body["users"]) == 3
    assert peer.tokens_issued == 2 and waits == []
    assert any("401" in line and "new token" in line for line in lines)
    statuses = [r.status for r in peer.data_requests("/users")]
    assert statuses == [401, 200]
    http.close()


def test_a_second_401_is_credentials_rejected(peer):
    http, _w, _l = client(peer)
    http.token()
    peer.force(401, count=2)
    with pytest.raises(CredentialsRejected) as caught:
        http.get("orgs")
    assert "answered 401 even with a token just issued" in str(caught.value)
    assert peer.tokens_issued == 2  # refreshed exactly once
    http.close()


def test_retry_after_in_seconds_is_obeyed(peer):
    http, waits, lines = client(peer)
    peer.force(429, headers={"Retry-After": "7"})
    body, _h = http.get_json("orgs")
    assert len(body["orgs"]) == 3
    assert waits == [7.0]
    assert any("Retry-After: 7" in line and "attempt 2 of 5" in line for line in lines)
    http.close()


def test_retry_after_as_an_http_date_is_obeyed(peer):
    http, waits, _l = client(peer)
    http.token()
    when = formatdate(time.time() + 5, usegmt=True)
    peer.force(503, headers={"Retry-After": when})
    http.get_json("orgs")
    # An HTTP-date has whole seconds: 5 s ahead is between 4 and 5 s away.
    assert len(waits) == 1 and 3.0 <= waits[0] <= 5.0
    http.close()


def test_retry_after_is_capped(peer):
    http, waits, lines = client(peer, backoff_cap=10.0)
    peer.force(429, headers={"Retry-After": "3600"})
    http.get_json("orgs")
    assert waits == [10.0]
    assert any("capped at 10 s" in line for line in lines)
    http.close()


def test_backoff_is_exponential_with_full_jitter_under_the_cap(peer):
    random.seed(20260302)
    http, waits, _l = client(peer, max_attempts=6, backoff_base=4.0, backoff_cap=10.0)
    http.token()
    peer.force(503, count=5)
    http.get_json("orgs")
    assert len(waits) == 5
    ceilings = [4.0, 8.0, 10.0, 10.0, 10.0]
    assert all(0 <= w <= c for w, c in zip(waits, ceilings, strict=True)), waits
    assert len(set(waits)) == 5  # jittered, not a fixed schedule
    http.close()


def test_attempts_run_out_with_an_unavailable_error_naming_the_url(peer):
    http, waits, _l = client(peer, max_attempts=3)
    http.token()
    peer.force(503, count=3)
    with pytest.raises(ConnectorError) as caught:
        http.get("classes", {"limit": 5})
    error = caught.value
    assert error.kind == "unavailable"
    assert f"{peer.base_url}/classes?limit=5" in str(error)
    assert "3 time(s)" in str(error) and "HTTP 503" in str(error)
    assert len(waits) == 2  # no wait after the last attempt
    http.close()


def test_network_errors_are_retried_then_unavailable(loopback):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    waits: list[float] = []
    http = SourceHttp(
        base_url=f"http://127.0.0.1:{port}/api",
        token_url=f"http://127.0.0.1:{port}/token",
        client_id="x",
        client_secret="y",
        state={},
        log=lambda line: None,
        sleep=waits.append,
        max_attempts=3,
    )
    with pytest.raises(ConnectorError) as caught:
        http.get("orgs")
    assert caught.value.kind == "unavailable"
    assert f"http://127.0.0.1:{port}/token" in str(caught.value)
    assert "ConnectError" in str(caught.value)
    assert len(waits) == 2
    http.close()


def test_a_refused_address_is_not_retried(settings):
    settings.OUTBOUND_HTTP = {**settings.OUTBOUND_HTTP, "ALLOW_LOOPBACK": False}
    waits: list[float] = []
    http = SourceHttp(
        base_url="http://127.0.0.1:9/api",
        token_url="http://127.0.0.1:9/token",
        client_id="x",
        client_secret="y",
        state={},
        log=lambda line: None,
        sleep=waits.append,
    )
    with pytest.raises(ConnectorError) as caught:
        http.token()
    assert caught.value.kind == "input"
    assert "loopback" in str(caught.value) and waits == []
    http.close()


def test_a_4xx_is_a_protocol_error_with_url_status_and_body(peer):
    http, waits, _l = client(peer)
    with pytest.raises(ConnectorError) as caught:
        http.get("users", {"filter": "givenName=Maya"})
    message = str(caught.value)
    assert caught.value.kind == "protocol"
    assert f"GET {peer.base_url}/users?filter=givenName%3DMaya answered 400" in message
    assert "invalid filter" in message  # the imsx_description, previewed
    with pytest.raises(ConnectorError) as caught:
        http.get("users/nobody")
    assert "answered 404" in str(caught.value) and "nobody" in str(caught.value)
    assert waits == []
    http.close()


def test_absolute_next_links_are_followed_as_they_are(peer):
    http, _w, _l = client(peer)
    response = http.get("users", {"limit": 4, "sort": "sourcedId"})
    next_url = response.headers["link"].split(">")[0].lstrip("<")
    assert next_url.startswith(peer.base_url) and "offset=4" in next_url
    body, _headers = http.get_json(next_url)
    first = response.json()["users"]
    assert len(body["users"]) == 4
    assert body["users"][0]["sourcedId"] > first[-1]["sourcedId"]
    http.close()


def test_gzip_pages_are_decoded_and_bodies_over_the_cap_refused(peer):
    http, _w, _l = client(peer)
    body, _headers = http.get_json("users", {"limit": 50})
    assert len(body["users"]) == 20
    assert peer.requests[-1].path.endswith("/users")
    http.max_page_bytes = 2048
    with pytest.raises(ConnectorError) as caught:
        http.get("users", {"limit": 50})
    assert "answered more than" in str(caught.value) and "page size" in str(caught.value)
    http.close()


def test_send_json_returns_client_errors_and_retries_server_errors(peer):
    http, waits, _l = client(peer)
    peer.force(503, headers={"Retry-After": "1"})
    response = http.send_json("POST", "users", {"user": {"sourcedId": "x"}})
    assert response.status_code == 405  # the caller judges a 4xx
    assert waits == [1.0]
    posted = [r for r in peer.requests if r.method == "POST" and r.path.endswith("/users")]
    assert len(posted) == 2 and all(r.authorization.startswith("Bearer ") for r in posted)
    http.close()


def test_the_peer_speaks_the_rostering_binding(peer):
    """The test server itself: filters, sorting, paging links, fields and imsx errors."""
    http, _w, _l = client(peer)

    def ids(path, **params):
        body, _headers = http.get_json(path, params)
        return [item["sourcedId"] for item in next(iter(body.values()))]

    assert ids("users", filter="role='parent' OR role='relative'", sort="sourcedId") == [
        "gdn-0001",
        "gdn-0002",
        "gdn-0004",
    ]
    assert ids("users", filter="familyName~'chen' AND role='student'") == ["stu-0001", "stu-0002"]
    assert ids("enrollments", filter="role!='student'", sort="sourcedId", orderBy="desc")[0] == (
        "enr-0029"
    )
    assert ids("orgs", filter="dateLastModified>'2026-01-01T00:00:00Z'") == []
    assert len(ids("users", filter="dateLastModified>'2025-12-31T23:59:59.999Z'")) == 20
    assert ids("classes", filter="school.sourcedId='org-nhs'") == [
        "cls-nhs-ush-p1",
        "cls-nhs-chem-p4",
    ]
    assert ids("schools") == ["org-rhs", "org-nhs"] and len(ids("terms")) == 2
    assert ids("students", limit=2, offset=11) == ["stu-0012"]

    body, headers = http.get_json("teachers", {"limit": 1, "fields": "sourcedId,givenName"})
    assert body == {"users": [{"sourcedId": "tch-0001", "givenName": "Rebecca"}]}
    assert headers["x-total-count"] == "3"
    assert 'rel="next"' in headers["link"] and 'rel="last"' in headers["link"]
    body, _headers = http.get_json("demographics/stu-0007")
    assert body["demographics"]["demographicRaceTwoOrMoreRaces"] == "true"

    for params in (
        {"filter": "role='student' AND role='x' OR role='y'"},
        {"filter": "nosuchfield='x'"},
        {"sort": "sourcedId", "orderBy": "sideways"},
        {"limit": "0"},
    ):
        with pytest.raises(ConnectorError) as caught:
            http.get("users", params)
        assert "answered 400" in str(caught.value), params

    # Without a token: 401 as imsx_StatusInfoDType.
    raw = httpx.get(f"{peer.base_url}/orgs", trust_env=False)
    assert raw.status_code == 401
    assert raw.json()["imsx_codeMajor"] == "failure" and raw.json()["imsx_severity"] == "error"
    assert (
        raw.json()["imsx_CodeMinor"]["imsx_codeMinorField"][0]["imsx_codeMinorFieldValue"]
        == "unauthorisedrequest"
    )
    http.close()
