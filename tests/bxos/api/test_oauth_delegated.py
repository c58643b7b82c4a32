"""Apps acting for a signed-in staff member (authorization code + PKCE) and introspection.

A delegated token sees the intersection of the app's reach (district, allowed schools, scopes)
and the person's (role, schools, sections, caseload); it writes only what the person may write;
the disclosure log names the person. The flow itself is driven over a real socket by an
independent OAuth2 client library (authlib), the staff member signing in through the admin.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from html import unescape
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client
from django.utils import timezone
from oauth2_provider.models import AccessToken
from oauthlib.common import generate_token as oauthlib_token

from bxos.api import scopes
from bxos.api.choices import ClientType, GrantType
from bxos.api.models import DisclosureLogEntry
from bxos.api.resources import RESOURCES
from bxos.api.services import api_client_create, api_client_revoke
from bxos.behavior.models import BehaviorSupportRequest
from bxos.common.permissions import restrict
from bxos.schools.services import staff_set_schools
from tests.bxos.api.test_api_read import ALL_READ, api, make_client, token_for
from tests.factories import PASSWORD

ROLES = ["district_admin", "school_admin", "counselor", "teacher"]
REDIRECT = "http://127.0.0.1:8123/callback"


def make_app(world, actor, *, scope_list=ALL_READ, schools=(), public=True):
    client, secret = api_client_create(
        actor=actor,
        district=world.district,
        name=f"{world.code} staff app",
        contact_name="Ann App",
        contact_email="ann@app.example",
        purpose="Counselors' and teachers' behavior notes",
        contract_end_date=date.today() + timedelta(days=365),
        scopes=list(scope_list),
        status="production",
        allowed_schools=schools,
        grant_type=GrantType.AUTHORIZATION_CODE,
        client_type=ClientType.PUBLIC if public else ClientType.CONFIDENTIAL,
        redirect_uris=REDIRECT,
    )
    return client, secret


def delegated_token(client, user, scope_list=None):
    """A token as the authorization code grant issues it: for the app, carrying the user."""
    return AccessToken.objects.create(
        application=client.application,
        user=user,
        token=oauthlib_token(),
        expires=timezone.now() + timedelta(hours=1),
        scope=" ".join(scope_list if scope_list is not None else client.scopes),
    )


def listed_ids(token, resource):
    response = api(token).get(f"/api/v1/{resource}", {"limit": 1000})
    assert response.status_code == 200, response.json()
    return {row["id"] for row in response.json()["data"]}


# --- the intersection, per role, resource and tenant -------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_delegated_reads_are_the_intersection_of_app_and_person(role, north, south, system):
    # The app is limited to school B; the school admin and counselor hold school A only.
    user = north.users[role]
    app, _ = make_app(north, system, schools=[north.school_b])
    plain, _ = make_client(north, system, schools=[north.school_b])
    token = delegated_token(app, user)
    for resource in RESOURCES:
        model = resource.model
        person = set(restrict(model.objects.all(), user).values_list("id", flat=True))
        app_alone = listed_ids(token_for(plain), resource.name)
        assert listed_ids(token, resource.name) == person & app_alone, (role, resource.name)
        # Another district's row is a 404 to a delegated token too.
        foreign = model.objects.filter(district=south.district).first()
        response = api(token).get(f"/api/v1/{resource.name}/{foreign.pk}")
        assert response.status_code == 404, (role, resource.name)


def test_the_intersection_is_not_empty_where_both_reach(north, system):
    app, _ = make_app(north, system)
    teacher = delegated_token(app, north.users["teacher"])
    # The teacher sees the students of their section only; the app alone sees all three.
    assert listed_ids(teacher, "students") == {north.a1.pk}
    admin = delegated_token(app, north.users["district_admin"])
    assert listed_ids(admin, "students") == {north.a1.pk, north.a2.pk, north.b1.pk}
    counselor = delegated_token(app, north.users["counselor"])
    assert listed_ids(counselor, "students") == set(
        restrict(north.a1.__class__.objects.all(), north.users["counselor"]).values_list(
            "id", flat=True
        )
    )


def test_scopes_still_bound_a_delegated_token(north, system):
    app, _ = make_app(north, system, scope_list=[scopes.ROSTER])
    token = delegated_token(app, north.users["district_admin"])
    response = api(token).get("/api/v1/incidents")
    assert response.status_code == 403
    assert "behavior.readonly" in response.json()["detail"]
    # A token carrying fewer scopes than the app holds is bound by the token.
    narrow = delegated_token(app, north.users["district_admin"], scope_list=[])
    assert api(narrow).get("/api/v1/students").status_code == 403


def test_a_person_of_another_district_or_without_a_role_stops_the_token(north, south, system):
    app, _ = make_app(north, system)
    response = api(delegated_token(app, south.users["district_admin"])).get("/api/v1/students")
    assert response.status_code == 401
    assert "no role in the client's district" in response.json()["detail"]

    user = north.users["teacher"]
    token = delegated_token(app, user)
    assert api(token).get("/api/v1/students").status_code == 200
    user.is_active = False
    user.save(update_fields=["is_active"])
    response = api(token).get("/api/v1/students")
    assert response.status_code == 401 and "disabled" in response.json()["detail"]


def test_school_changes_of_the_person_apply_at_once(north, system):
    app, _ = make_app(north, system)
    school_admin = north.users["school_admin"]
    token = delegated_token(app, school_admin)
    assert listed_ids(token, "students") == {north.a1.pk, north.a2.pk}
    staff_set_schools(actor=system, staff=north.school_admin_staff, schools=[north.school_b])
    assert listed_ids(token, "students") == {north.b1.pk}


def test_delegated_reads_name_the_person_in_the_disclosure_log(north, system):
    app, _ = make_app(north, system)
    teacher = north.users["teacher"]
    api(delegated_token(app, teacher)).get("/api/v1/students")
    entry = DisclosureLogEntry.objects.get(client=app)
    assert entry.acting_user == teacher and entry.student_ids == [north.a1.pk]


# --- writes -------------------------------------------------------------------------------


def bsr_body(world):
    return {
        "studentId": world.a1.pk,
        "schoolId": world.school_a.pk,
        "requestedById": world.teacher_staff.pk,
        "concern": "Leaves class without permission several times a day.",
    }


def test_delegated_writes_need_the_persons_permission_and_record_them(north, system):
    from auditlog.models import LogEntry

    app, _ = make_app(north, system, scope_list=[*ALL_READ, scopes.BEHAVIOR_WRITE])
    teacher = north.users["teacher"]
    token = delegated_token(app, teacher)
    response = api(token).post("/api/v1/behaviorSupportRequests", bsr_body(north), format="json")
    assert response.status_code == 201, response.json()
    bsr = BehaviorSupportRequest.objects.get(pk=response.json()["data"]["id"])
    entry = LogEntry.objects.get_for_object(bsr).first()
    assert entry.actor == teacher  # the person, not the app's system actor

    # A teacher may submit requests but not move them: 403 naming the person.
    response = api(token).post(
        f"/api/v1/behaviorSupportRequests/{bsr.pk}/transitions",
        {"toState": "triaged"},
        format="json",
    )
    assert response.status_code == 403
    assert teacher.username in response.json()["detail"]
    bsr.refresh_from_db()
    assert bsr.state == "submitted"

    # A student outside the teacher's sections is invisible to the pair: a field error.
    body = {**bsr_body(north), "studentId": north.b1.pk, "schoolId": north.school_b.pk}
    response = api(token).post("/api/v1/behaviorSupportRequests", body, format="json")
    assert response.status_code == 400
    assert "studentId" in str(response.json())


def test_delegated_writes_need_the_write_scope(north, system):
    app, _ = make_app(north, system)  # read scopes only
    token = delegated_token(app, north.users["district_admin"])
    response = api(token).post("/api/v1/behaviorSupportRequests", bsr_body(north), format="json")
    assert response.status_code == 403
    assert "behavior.write" in response.json()["detail"]


# --- introspection ------------------------------------------------------------------------


def introspect(http, value, *, auth=None, bearer=None):
    headers = {"Authorization": f"Bearer {bearer.token}"} if bearer else {}
    return http.post("/o/introspect/", data={"token": value}, headers=headers, auth=auth)


@pytest.fixture
def resource_server(north, system):
    return make_client(north, system, scope_list=[scopes.INTROSPECTION])


@pytest.mark.django_db(transaction=True)
def test_introspection_over_http(live_server, north, south, system, resource_server):
    server, secret = resource_server
    auth = (server.application.client_id, secret)
    app, _ = make_app(north, system)
    teacher = north.users["teacher"]
    live = delegated_token(app, teacher)
    with httpx.Client(base_url=live_server.url) as http:
        body = introspect(http, live.token, auth=auth).json()
        assert body["active"] is True
        assert body["client_id"] == app.application.client_id
        assert body["username"] == teacher.username
        assert set(body["scope"].split()) == set(app.scopes)
        assert body["exp"] > body["iat"]
        # The same answer with the resource server's own bearer token.
        bearer = token_for(server)
        assert introspect(http, live.token, bearer=bearer).json()["active"] is True

        # Unknown, expired, revoked-client and other-district tokens are all inactive.
        assert introspect(http, "no-such-token", auth=auth).json() == {"active": False}
        expired = delegated_token(app, teacher)
        expired.expires = timezone.now() - timedelta(seconds=1)
        expired.save(update_fields=["expires"])
        assert introspect(http, expired.token, auth=auth).json() == {"active": False}
        foreign, _ = make_client(south, system)
        assert introspect(http, token_for(foreign).token, auth=auth).json() == {"active": False}
        other, _ = make_client(north, system)
        other_token = token_for(other)
        assert introspect(http, other_token.token, auth=auth).json()["active"] is True
        api_client_revoke(actor=system, client=other)
        AccessToken.objects.create(
            application=other.application,
            token=other_token.token,
            expires=timezone.now() + timedelta(hours=1),
            scope="roster.readonly",
        )
        assert introspect(http, other_token.token, auth=auth).json() == {"active": False}

        # Callers: a wrong secret is 401, a client without the scope is 403 naming it, and
        # a missing token parameter is a 400 naming it.
        response = introspect(http, live.token, auth=(server.application.client_id, "wrong"))
        assert response.status_code == 401
        plain, plain_secret = make_client(north, system)
        response = introspect(http, live.token, auth=(plain.application.client_id, plain_secret))
        assert response.status_code == 403 and "introspection" in response.text
        response = http.post("/o/introspect/", data={}, auth=auth)
        assert response.status_code == 400 and "token" in response.text


# --- the flow over a real socket ----------------------------------------------------------


def sign_in(http: httpx.Client, username: str) -> None:
    page = http.get("/admin/login/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = http.post(
        "/admin/login/",
        data={"csrfmiddlewaretoken": csrf, "username": username, "password": PASSWORD},
        headers={"Referer": f"{http.base_url}/admin/login/"},
    )
    assert response.status_code == 302, response.text[:500]


def consent_form(html: str) -> dict[str, str]:
    form = html.split('id="authorizationForm"', 1)[1].split("</form>", 1)[0]
    return {
        name: unescape(value)
        for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form)
    }


def redirect_error(response) -> tuple[str, str]:
    """The OAuth2 error a refusal sent back to the app's redirect URI."""
    assert response.status_code == 302, response.text[:300]
    query = parse_qs(urlparse(response.headers["Location"]).query)
    return query["error"][0], query.get("error_description", [""])[0]


def authorize(http, live_server, app, oauth, verifier, *, scope="roster.readonly"):
    url, state = oauth.create_authorization_url(
        f"{live_server.url}/o/authorize/", code_verifier=verifier, scope=scope
    )
    page = http.get(url)
    return page, state


@pytest.mark.django_db(transaction=True)
def test_authorization_code_with_pkce_over_http(live_server, north, south, system):
    app, _ = make_app(north, system, scope_list=[scopes.ROSTER, scopes.BEHAVIOR])
    client_id = app.application.client_id
    teacher = north.users["teacher"]
    verifier = generate_token(64)
    oauth = OAuth2Client(
        client_id, redirect_uri=REDIRECT, code_challenge_method="S256", scope="roster.readonly"
    )
    with httpx.Client(base_url=live_server.url) as http:
        sign_in(http, teacher.username)
        page, state = authorize(http, live_server, app, oauth, verifier)
        assert page.status_code == 200, page.text[:500]
        assert app.purpose in unescape(page.text) and "roster.readonly" in page.text
        fields = consent_form(page.text)
        assert fields["code_challenge_method"] == "S256"
        csrf = http.cookies["csrftoken"]
        response = http.post(
            "/o/authorize/",
            data={**fields, "allow": "Allow", "csrfmiddlewaretoken": csrf},
            headers={"Referer": str(page.url)},
        )
        assert response.status_code == 302, response.text[:500]
        location = response.headers["Location"]
        assert location.startswith(REDIRECT)
        query = parse_qs(urlparse(location).query)
        assert query["state"] == [state]

    # The code alone is worthless: the wrong verifier gets nothing.
    with OAuth2Client(client_id, redirect_uri=REDIRECT) as thief:
        with pytest.raises(Exception, match="invalid_grant"):
            thief.fetch_token(
                f"{live_server.url}/o/token/",
                authorization_response=location,
                code_verifier=generate_token(64),
            )
    with OAuth2Client(client_id, redirect_uri=REDIRECT, code_challenge_method="S256") as oauth:
        token = oauth.fetch_token(
            f"{live_server.url}/o/token/", authorization_response=location, code_verifier=verifier
        )
        assert token["scope"] == "roster.readonly" and token.get("refresh_token")
        students = oauth.get(f"{live_server.url}/api/v1/students").json()["data"]
        # The teacher's section holds a1 only; the app alone would see all three.
        assert {row["id"] for row in students} == {north.a1.pk}
        # The token carries roster only, though the app holds behavior too.
        assert oauth.get(f"{live_server.url}/api/v1/incidents").status_code == 403
        refreshed = oauth.refresh_token(f"{live_server.url}/o/token/")
        assert refreshed["access_token"] != token["access_token"]
    # A code is spent once exchanged.
    with OAuth2Client(client_id, redirect_uri=REDIRECT) as replay:
        with pytest.raises(Exception, match="invalid_grant"):
            replay.fetch_token(
                f"{live_server.url}/o/token/",
                authorization_response=location,
                code_verifier=verifier,
            )
    assert DisclosureLogEntry.objects.filter(client=app, acting_user=teacher).exists()


@pytest.mark.django_db(transaction=True)
def test_the_consent_page_refuses_what_it_must(live_server, north, south, system):
    app, _ = make_app(north, system)
    server_to_server, _ = make_client(north, system)
    verifier = generate_token(64)
    with httpx.Client(base_url=live_server.url) as http:
        # Not signed in: sent to the login page, back here after.
        oauth = OAuth2Client(
            app.application.client_id, redirect_uri=REDIRECT, code_challenge_method="S256"
        )
        page, _ = authorize(http, live_server, app, oauth, verifier)
        assert page.status_code == 302 and "/admin/login/" in page.headers["Location"]

        # Another district's staff member cannot authorize this district's app.
        sign_in(http, south.users["district_admin"].username)
        page, _ = authorize(http, live_server, app, oauth, verifier)
        assert page.status_code == 403 and "no role in the client" in page.text

    with httpx.Client(base_url=live_server.url) as http:
        sign_in(http, north.users["counselor"].username)
        # A server-to-server client cannot sign staff in.
        s2s = OAuth2Client(
            server_to_server.application.client_id,
            redirect_uri=REDIRECT,
            code_challenge_method="S256",
        )
        page, _ = authorize(http, live_server, server_to_server, s2s, verifier)
        assert page.status_code == 403 and "server-to-server" in page.text
        # Without PKCE, or with the "plain" method, there is no consent page.
        no_pkce = OAuth2Client(app.application.client_id, redirect_uri=REDIRECT)
        url, _ = no_pkce.create_authorization_url(
            f"{live_server.url}/o/authorize/", scope="roster.readonly"
        )
        response = http.get(url)
        assert response.status_code in (302, 400)
        assert redirect_error(response) == ("invalid_request", "Code challenge required.")
        plain = OAuth2Client(
            app.application.client_id, redirect_uri=REDIRECT, code_challenge_method="plain"
        )
        url, _ = plain.create_authorization_url(
            f"{live_server.url}/o/authorize/", code_verifier=verifier, scope="roster.readonly"
        )
        response = http.get(url)
        assert redirect_error(response)[0] == "invalid_request"
        # A redirect URI that is not registered gets an error page, never a redirect there.
        url, _ = OAuth2Client(
            app.application.client_id,
            redirect_uri="https://evil.example/cb",
            code_challenge_method="S256",
        ).create_authorization_url(
            f"{live_server.url}/o/authorize/", code_verifier=verifier, scope="roster.readonly"
        )
        response = http.get(url)
        assert response.status_code == 400 and "evil.example" not in response.headers.get(
            "Location", ""
        )
        # A scope the app does not hold cannot be asked for.
        url, _ = oauth.create_authorization_url(
            f"{live_server.url}/o/authorize/", code_verifier=verifier, scope="behavior.write"
        )
        response = http.get(url)
        assert redirect_error(response)[0] == "invalid_scope"
