"""The change feed's and the push's upper bound (bxos.common.db.safe_change_version) against a
real second session writing through the stamping trigger.

The bound must never pass a version an uncommitted writer holds (a reader paging past it would
skip the row for good), must wait for a writer that finishes, and, when one does not finish in
time, must fall back to an older bound and say which session held it back.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

import psycopg
import pytest
from django.db import connection

from bxos.common.db import safe_change_version

pytestmark = pytest.mark.django_db(transaction=True)

WRITER = "bxos test other writer"


@contextmanager
def other_session():
    """A second client session of the test database, named so a message can point at it."""
    params = {**connection.get_connection_params(), "application_name": WRITER}
    params.pop("prepare_threshold", None)
    with psycopg.connect(**params) as conn:  # not autocommit: its writes wait for commit()
        yield conn


def rename(conn, school, suffix: str) -> int:
    """Update ``school`` on ``conn`` (the trigger stamps it); the version it was given."""
    row = conn.execute(
        "UPDATE schools_school SET name = name || %s WHERE id = %s RETURNING change_version",
        [suffix, school.pk],
    ).fetchone()
    return row[0]


def test_an_uncommitted_writer_keeps_the_bound_below_its_version_and_is_named(north, caplog):
    before = safe_change_version()
    with other_session() as other:
        stamped = rename(other, north.school_a, " (renamed)")
        with caplog.at_level(logging.WARNING, logger="bxos.common.db"):
            bound = safe_change_version(wait_seconds=0.3)
        assert before <= bound < stamped
        assert WRITER in caplog.text and "not safe yet" in caplog.text
        other.commit()
    assert safe_change_version() >= stamped


def test_a_writer_that_commits_while_the_bound_waits_is_included(north, caplog):
    with other_session() as other:
        stamped = rename(other, north.school_b, " (renamed)")
        timer = threading.Timer(0.3, other.commit)
        timer.start()
        try:
            with caplog.at_level(logging.WARNING, logger="bxos.common.db"):
                bound = safe_change_version(wait_seconds=10)
        finally:
            timer.join()
    assert bound >= stamped
    assert "not safe yet" not in caplog.text


def test_a_writer_that_starts_after_the_bound_is_taken_is_above_it(north):
    bound = safe_change_version()
    with other_session() as other:
        stamped = rename(other, north.school_a, " (later)")
        other.commit()
    assert stamped > bound
