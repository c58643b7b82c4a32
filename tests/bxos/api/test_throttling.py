"""Rate limits of the vendor API: headers, 429s, rules, exceptions, the shared counters, admin.

The rule cache is off (TTL 0) so that every edit is seen by the next request; one test turns it
on to show that it saves the queries. Requests of an ordinary test share one database
transaction, whose now() is fixed, so they all fall in the same counter windows: no test
depends on how fast it runs. The cross-process test commits, and checks that the hour window
did not end in the middle instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, timedelta

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from bxos.api import scopes
from bxos.api.models import ApiClient, ThrottleException, ThrottleRule
from bxos.api.services import api_client_create
from bxos.api.tasks import purge_rate_counters_task
from bxos.api.throttling import HOUR, MINUTE, clear_rules_cache, counter_subject, record_hits
from bxos.common.schedules import DEFAULT_SCHEDULES
from bxos.common.services import model_create, model_update
from tests.bxos.api.test_api_read import ALL_READ, api, token_for

RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy")


@pytest.fixture(autouse=True)
def _rules_read_every_request(settings):
    settings.API = {**settings.API, "THROTTLE_RULES_TTL_SECONDS": 0}
    clear_rules_cache()
    yield
    clear_rules_cache()


def vendor(world, actor, *, per_minute=600, per_hour=20000, scope_list=ALL_READ) -> ApiClient:
    """A fresh client per test: counters are keyed by client."""
    client, _secret = api_client_create(
        actor=actor,
        district=world.district,
        name=f"{world.code} rate-limited vendor",
        contact_name="Rae Limit",
        contact_email="rae@vendor.example",
        purpose="Roster sync",
        contract_end_date=date.today() + timedelta(days=365),
        scopes=list(scope_list),
        status="production",
        rate_per_minute=per_minute,
        rate_per_hour=per_hour,
    )
    return client


def connect(client: ApiClient) -> APIClient:
    return api(token_for(client))


def rule(world, actor, **data) -> ThrottleRule:
    data = {"name": "A rule", "rate_per_hour": 100_000, **data}
    return model_create(model=ThrottleRule, actor=actor, data={"district": world.district, **data})


def remaining(response) -> int:
    return int(response["RateLimit-Remaining"])


# --- headers -------------------------------------------------------------------------------


def test_every_response_carries_the_headers_and_remaining_counts_down(north, system):
    http = connect(vendor(north, system))
    first = http.get("/api/v1/students")
    assert first.status_code == 200
    assert first["RateLimit-Limit"] == "600"
    assert first["RateLimit-Remaining"] == "599"
    assert 1 <= int(first["RateLimit-Reset"]) <= MINUTE
    assert first["RateLimit-Policy"] == "600;w=60, 20000;w=3600"
    # Every endpoint of the client counts against the same allowance.
    assert remaining(http.get("/api/v1/schools")) == 598
    assert remaining(http.get("/api/v1/changes/available")) == 597
    assert remaining(http.get("/api/v1/students/deletes")) == 596


def test_errors_carry_the_headers_but_a_401_does_not(north, system):
    """A 401 has no client, so no quota to report; every answer to a client has one."""
    http = connect(vendor(north, system, scope_list=[scopes.ROSTER]))
    not_found = http.get("/api/v1/students/999999999")
    assert not_found.status_code == 404
    assert remaining(not_found) == 599
    # The scope check comes after the count, so asking for what a client may not read costs.
    forbidden = http.get("/api/v1/incidents")
    assert forbidden.status_code == 403
    assert remaining(forbidden) == 598
    anonymous = APIClient().get("/api/v1/students")
    assert anonymous.status_code == 401
    assert not any(name in anonymous for name in RATE_HEADERS)


# --- limits --------------------------------------------------------------------------------


def test_over_the_minute_limit_is_a_429_problem_with_retry_after(north, system):
    http = connect(vendor(north, system, per_minute=3))
    assert [remaining(http.get("/api/v1/students")) for _ in range(3)] == [2, 1, 0]
    response = http.get("/api/v1/students")
    assert response.status_code == 429
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "urn:bxos:problem:rate-limited" and body["status"] == 429
    assert "3 requests per minute (this client's limit)" in body["detail"]
    assert body["requestId"]
    assert 1 <= int(response["Retry-After"]) <= MINUTE
    assert response["Retry-After"] == response["RateLimit-Reset"]
    assert response["RateLimit-Limit"] == "3" and response["RateLimit-Remaining"] == "0"


def test_over_the_hour_limit_names_the_hour(north, system):
    http = connect(vendor(north, system, per_minute=100, per_hour=2))
    assert http.get("/api/v1/schools").status_code == 200
    assert http.get("/api/v1/schools").status_code == 200
    response = http.get("/api/v1/schools")
    assert response.status_code == 429
    assert "2 requests per hour" in response.json()["detail"]
    assert 1 <= int(response["Retry-After"]) <= HOUR
    assert response["RateLimit-Limit"] == "2"


def test_a_new_rule_and_every_edit_of_it_take_effect_on_the_next_request(north, system):
    http = connect(vendor(north, system))
    http.get("/api/v1/students")
    http.get("/api/v1/students")
    # A rule for every client of the district counts the requests already made.
    slow = rule(north, system, name="Slow everyone down", rate_per_minute=2, rate_per_hour=1000)
    response = http.get("/api/v1/students")
    assert response.status_code == 429
    assert "the district's limit" in response.json()["detail"]
    assert response["RateLimit-Policy"] == "2;w=60, 1000;w=3600"

    model_update(instance=slow, actor=system, data={"rate_per_minute": 5})
    response = http.get("/api/v1/students")
    assert response.status_code == 200
    assert (response["RateLimit-Limit"], remaining(response)) == ("5", 1)

    model_update(instance=slow, actor=system, data={"burst": 10})
    response = http.get("/api/v1/students")
    assert (response["RateLimit-Limit"], remaining(response)) == ("15", 10)

    model_update(instance=slow, actor=system, data={"is_active": False})
    response = http.get("/api/v1/students")
    assert (response["RateLimit-Limit"], remaining(response)) == ("600", 594)


def test_the_client_s_own_rate_takes_effect_at_once(north, system):
    client = vendor(north, system)
    http = connect(client)
    http.get("/api/v1/students")
    model_update(instance=client, actor=system, data={"rate_per_minute": 1})
    assert http.get("/api/v1/students").status_code == 429


def test_an_exception_replaces_the_limits_until_it_expires(north, system):
    client = vendor(north, system, per_minute=2)
    http = connect(client)
    http.get("/api/v1/students")
    http.get("/api/v1/students")
    assert http.get("/api/v1/students").status_code == 429
    now = timezone.now()
    exception = model_create(
        model=ThrottleException,
        actor=system,
        data={
            "district": north.district,
            "client": client,
            "reason": "Rebuilding the roster after the merge",
            "rate_per_minute": 10,
            "rate_per_hour": 1000,
            "starts_at": now - timedelta(minutes=1),
            "expires_at": now + timedelta(hours=1),
        },
    )
    response = http.get("/api/v1/students")
    assert response.status_code == 200
    assert (response["RateLimit-Limit"], remaining(response)) == ("10", 6)

    model_update(
        instance=exception,
        actor=system,
        data={"starts_at": now - timedelta(hours=2), "expires_at": now - timedelta(seconds=1)},
    )
    response = http.get("/api/v1/students")
    assert response.status_code == 429
    assert "2 requests per minute (this client's limit)" in response.json()["detail"]


def test_an_exception_can_lower_the_limits_and_a_future_one_waits(north, system):
    client = vendor(north, system)
    rule(north, system, client=client, rate_per_minute=500, burst=100)
    http = connect(client)
    now = timezone.now()

    def exception(start, end):
        model_create(
            model=ThrottleException,
            actor=system,
            data={
                "district": north.district,
                "client": client,
                "reason": "Misbehaving sync job",
                "rate_per_minute": 1,
                "rate_per_hour": 10,
                "starts_at": start,
                "expires_at": end,
            },
        )

    exception(now + timedelta(hours=1), now + timedelta(hours=2))
    assert http.get("/api/v1/students")["RateLimit-Limit"] == "600"
    exception(now - timedelta(minutes=1), now + timedelta(hours=1))
    response = http.get("/api/v1/students")
    assert response.status_code == 429
    assert "1 request per minute (this client's temporary limit)" in response.json()["detail"]


def test_rules_belong_to_their_district(north, south, system):
    rule(south, system, name="South: slow", rate_per_minute=1)
    client = vendor(north, system)
    other = vendor(north, system)
    rule(north, system, name="Only the other vendor", client=other, rate_per_minute=1)
    http = connect(client)
    responses = [http.get("/api/v1/students") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert responses[-1]["RateLimit-Limit"] == "600"


def test_rules_match_their_endpoint_group_and_scope_only(north, system):
    rule(north, system, name="Incidents", endpoint_group="incidents", rate_per_minute=1)
    rule(north, system, name="Grades", scope=scopes.GRADES, rate_per_minute=1)
    http = connect(vendor(north, system))

    first = http.get("/api/v1/incidents")
    assert (first.status_code, first["RateLimit-Limit"], remaining(first)) == (200, "1", 0)
    refused = http.get("/api/v1/incidents")
    assert refused.status_code == 429
    assert "(the district's limit for incidents)" in refused.json()["detail"]
    # Other endpoints, and their earlier traffic, are outside the incidents rule.
    students = http.get("/api/v1/students")
    assert (students.status_code, students["RateLimit-Limit"]) == (200, "600")
    assert "1;w=60" not in students["RateLimit-Policy"]

    assert http.get("/api/v1/grades").status_code == 200
    refused = http.get("/api/v1/grades")
    assert refused.status_code == 429
    assert "(the district's limit for scope grades.readonly)" in refused.json()["detail"]
    # changes/available needs no scope and is the "meta" group: neither rule applies.
    assert http.get("/api/v1/changes/available")["RateLimit-Limit"] == "600"


def test_a_writes_rule_limits_writes_only(north, system):
    rule(north, system, name="Writes", endpoint_group="writes", rate_per_minute=1)
    http = connect(vendor(north, system))
    first = http.post("/api/v1/students", {}, format="json")
    assert first.status_code == 405  # no writes here yet; the request still counts
    assert (first["RateLimit-Limit"], remaining(first)) == ("1", 0)
    assert http.post("/api/v1/students", {}, format="json").status_code == 429
    assert http.get("/api/v1/students").status_code == 200


def test_the_rule_cache_spares_the_queries_until_it_is_cleared(north, system, settings):
    settings.API = {**settings.API, "THROTTLE_RULES_TTL_SECONDS": 3600}
    http = connect(vendor(north, system))

    def rule_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert http.get("/api/v1/students").status_code == 200
        return sum("api_throttlerule" in q["sql"] for q in queries.captured_queries)

    assert rule_queries() == 1
    assert rule_queries() == 0
    clear_rules_cache()
    assert rule_queries() == 1


# --- the shared store ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_counters_are_shared_with_another_process(north, system):
    # The hour is the tightest window, so the headers report the hour's count.
    client = vendor(north, system, per_minute=1_000_000, per_hour=1000)
    http = connect(client)
    code = (
        "import django\n"
        "django.setup()\n"
        "from bxos.api.throttling import HOUR, MINUTE, counter_subject, record_hits\n"
        f"subject = counter_subject({client.pk})\n"
        "for _ in range(5):\n"
        "    hits = record_hits([(subject, MINUTE), (subject, HOUR)])\n"
        "print(hits[(subject, HOUR)][0])\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bxos.settings",
        "BXOS_DB_NAME": connection.settings_dict["NAME"],
    }
    for _attempt in range(3):
        before = http.get("/api/v1/students")
        other = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=django_settings.BASE_DIR,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert other.returncode == 0, other.stderr
        after = http.get("/api/v1/students")
        # A later Reset means a new hour window began in between: counts restarted; again.
        if int(after["RateLimit-Reset"]) <= int(before["RateLimit-Reset"]):
            break
    else:
        pytest.fail("an hour window ended during each of three attempts")
    assert before["RateLimit-Limit"] == after["RateLimit-Limit"] == "1000"
    # The other process saw this one's requests, and this one sees the other's five.
    assert int(other.stdout.strip()) == 1000 - remaining(before) + 5
    assert remaining(before) - remaining(after) == 6


def test_purge_deletes_only_long_ended_windows(north, system):
    subject = counter_subject(vendor(north, system).pk)
    record_hits([(subject, MINUTE), (subject, HOUR)])
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO api_rate_counter (key, window_start, count) "
            "VALUES (%s, now() - interval '3 hours', 7)",
            [f"{subject}/{HOUR}"],
        )
    assert purge_rate_counters_task() >= 1
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM api_rate_counter WHERE key LIKE %s", [f"{subject}/%"])
        assert cursor.fetchone()[0] == 2  # this minute's and this hour's
    assert any(task == purge_rate_counters_task.name for task, *_ in DEFAULT_SCHEDULES.values())


# --- admin ---------------------------------------------------------------------------------


def test_a_rule_saved_in_the_admin_applies_to_the_next_request(north, client):
    client.force_login(north.users["district_admin"])
    response = client.post(
        reverse("admin:api_throttlerule_add"),
        {
            "name": "Students: gently",
            "client": north.api_client.pk,
            "scope": "",
            "endpoint_group": "students",
            "rate_per_minute": "1",
            "burst": "0",
            "rate_per_hour": "100",
            "is_active": "on",
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    saved = ThrottleRule.objects.get(name="Students: gently")
    assert saved.district == north.district
    http = connect(north.api_client)
    assert http.get("/api/v1/students").status_code == 200
    assert http.get("/api/v1/students").status_code == 429
    assert http.get("/api/v1/schools").status_code == 200
    page = client.get(reverse("admin:api_apiclient_change", args=[north.api_client.pk]))
    assert "Students: gently" in page.content.decode()


def test_admin_offers_only_the_district_s_clients_and_known_groups(north, south, client):
    client.force_login(north.users["district_admin"])
    response = client.post(
        reverse("admin:api_throttlerule_add"),
        {
            "name": "Wrong",
            "client": south.api_client.pk,
            "endpoint_group": "studnets",
            "rate_per_minute": "1",
            "burst": "0",
            "rate_per_hour": "100",
        },
    )
    assert response.status_code == 200
    assert {"client", "endpoint_group"} <= set(response.context["adminform"].form.errors)
    found = client.get(
        reverse("admin:autocomplete"),
        {"app_label": "api", "model_name": "throttlerule", "field_name": "client", "term": ""},
    ).json()["results"]
    ids = {int(row["id"]) for row in found}
    assert north.api_client.pk in ids and south.api_client.pk not in ids


def test_an_exception_saved_in_the_admin_applies_and_is_listed(north, client):
    client.force_login(north.users["district_admin"])
    now = timezone.localtime()
    later = now + timedelta(hours=1)
    response = client.post(
        reverse("admin:api_throttleexception_add"),
        {
            "client": north.api_client.pk,
            "reason": "Migration weekend",
            "rate_per_minute": "1",
            "rate_per_hour": "5",
            "starts_at_0": (now - timedelta(minutes=5)).strftime("%Y-%m-%d"),
            "starts_at_1": (now - timedelta(minutes=5)).strftime("%H:%M:%S"),
            "expires_at_0": later.strftime("%Y-%m-%d"),
            "expires_at_1": later.strftime("%H:%M:%S"),
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    http = connect(north.api_client)
    assert http.get("/api/v1/students")["RateLimit-Limit"] == "1"
    assert http.get("/api/v1/students").status_code == 429
    listing = client.get(reverse("admin:api_throttleexception_changelist")).content.decode()
    assert "Migration weekend" in listing
