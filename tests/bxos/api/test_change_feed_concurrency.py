"""The change feed under concurrent writers: a reader that replays windows of changes and
deletes ends with exactly the database's state: nothing missed, nothing repeated in a window.

The slow writer stamps a version and commits a moment later: the case where a feed whose
upper bound is simply "the newest version handed out" skips a row for good.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import date

import pytest
from django.db import connection, transaction

from bxos.schools.models import Student
from tests.bxos.api.test_api_read import api, make_client, token_for

RUN_SECONDS = 4.0


def _writer(
    kind: str,
    number: int,
    district_id: int,
    stop: threading.Event,
    errors: list,
    created: list,
    inserted: list,
):
    rng = random.Random(number)
    try:
        n = 0
        while not stop.is_set():
            n += 1
            if kind == "update":
                ids = list(
                    Student.objects.filter(district_id=district_id).values_list("id", flat=True)
                )
                Student.objects.filter(pk=rng.choice(ids)).update(preferred_name=f"u{n}")
                time.sleep(0.002)
            elif kind == "slow-insert":
                with transaction.atomic():
                    s = Student.objects.create(
                        district_id=district_id,
                        student_number=f"C{number}-{n:05d}",
                        first_name="New",
                        last_name="Writer",
                        birth_date=date(2012, 1, 1),
                        grade_level="07",
                    )
                    time.sleep(rng.uniform(0.05, 0.25))  # stamped, not yet committed
                created.append(s.pk)
                inserted.append(s.pk)
            elif kind == "delete":
                time.sleep(0.05)
                if created:
                    Student.objects.filter(pk=created.pop(0)).delete()
    except Exception as exc:  # surfaced by the test
        errors.append(exc)
    finally:
        connection.close()


def _walk(http, path: str, params: dict) -> tuple[list[dict], dict]:
    rows, url, meta = [], path, None
    first = True
    while url:
        response = http.get(url, params if first else None)
        assert response.status_code == 200, response.json()
        body = response.json()
        meta = meta or body["meta"]
        rows += body["data"]
        url, first = body["links"]["next"], False
    return rows, meta


@pytest.mark.django_db(transaction=True)
def test_replaying_windows_reproduces_the_database(north, system):
    client, _ = make_client(north, system, scope_list=["roster.readonly"])
    http = api(token_for(client))
    # created: inserted rows not deleted yet (the deleter takes from it); inserted: every one.
    stop, errors, created, inserted = threading.Event(), [], [], []
    writers = [
        threading.Thread(
            target=_writer, args=(k, i, north.district.pk, stop, errors, created, inserted)
        )
        for i, k in enumerate(("update", "slow-insert", "slow-insert", "delete"))
    ]
    for w in writers:
        w.start()

    state: dict[int, int] = {}
    min_cv, windows, deadline = 0, 0, time.monotonic() + RUN_SECONDS

    def read_window():
        nonlocal min_cv, windows
        rows, meta = _walk(http, "/api/v1/students", {"minChangeVersion": min_cv, "limit": 7})
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)), "a row repeated within one window"
        deletes, _ = _walk(
            http,
            "/api/v1/students/deletes",
            {"minChangeVersion": min_cv, "maxChangeVersion": meta["maxChangeVersion"], "limit": 7},
        )
        events = [(r["changeVersion"], "upsert", r["id"]) for r in rows]
        events += [(d["changeVersion"], "delete", d["id"]) for d in deletes]
        for cv, kind, object_id in sorted(events):
            if kind == "upsert":
                state[object_id] = cv
            else:
                state.pop(object_id, None)
        min_cv = meta["maxChangeVersion"] + 1
        windows += 1

    try:
        # On a busy machine the slow writers may need longer to get going: read on (up to 20 s
        # more) until they have written enough for the test to mean something.
        while time.monotonic() < deadline or (
            len(inserted) < 5 and time.monotonic() < deadline + 20
        ):
            read_window()
    finally:
        stop.set()
        for w in writers:
            w.join()
    assert not errors, errors
    read_window()  # the changes made since the last window

    actual = dict(
        Student.objects.filter(district=north.district).values_list("id", "change_version")
    )
    assert windows >= 3
    assert len(inserted) >= 5, "the slow writers did not get to write"
    missing = {i: cv for i, cv in actual.items() if state.get(i) != cv}
    extra = set(state) - set(actual)
    assert not missing and not extra, (missing, extra)
