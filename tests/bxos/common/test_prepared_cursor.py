"""The API's hottest statements are prepared once per connection; everything else is not."""

from __future__ import annotations

from django.db import connection
from django.test.utils import CaptureQueriesContext

from bxos.common.db import prepared_cursor


def _prepared(fragment: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT statement FROM pg_prepared_statements WHERE statement LIKE %s",
            [f"%{fragment}%"],
        )
        return [row[0] for row in cursor.fetchall()]


def test_a_statement_run_often_is_prepared_once_with_its_values_bound(db):
    sql = "SELECT %s::bigint + 1 AS hot_statement_probe"
    for value in range(8):  # the threshold is 5 runs
        with prepared_cursor() as cursor:
            cursor.execute(sql, [value])
            assert cursor.fetchone() == (value + 1,)
    # One prepared statement for every value: the values are bound, not in the text.
    assert _prepared("hot_statement_probe") == ["SELECT $1::bigint + 1 AS hot_statement_probe"]


def test_django_cursors_never_prepare(db):
    for value in range(8):
        with connection.cursor() as cursor:
            cursor.execute("SELECT %s::bigint + 2 AS cold_statement_probe", [value])
    assert _prepared("cold_statement_probe") == []


def test_statements_show_in_the_query_log_and_errors_are_djangos(db):
    from django.db import ProgrammingError

    with CaptureQueriesContext(connection) as queries, prepared_cursor() as cursor:
        cursor.execute("SELECT %s::text AS logged_probe", ["x"])
    assert any("logged_probe" in q["sql"] for q in queries.captured_queries)
    try:
        with prepared_cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table_probe")
    except ProgrammingError as exc:
        assert "no_such_table_probe" in str(exc)
    else:
        raise AssertionError("a bad statement raised nothing")
