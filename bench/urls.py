"""URLs for benchmark B3: the whole app plus the reference view (never in production)."""

import json
import os
from functools import cache
from pathlib import Path

import orjson
from django.db import connection
from django.http import HttpResponse
from django.urls import path

from bxos.urls import urlpatterns as app_urlpatterns

SQL_FILE = Path(os.environ.get("BXOS_BENCH_SQL", "var/bench-api-sql.json"))


@cache
def _queries() -> dict[str, str]:
    # Read once per worker: the reference must not pay for file I/O the API does not do.
    return json.loads(SQL_FILE.read_text())


def bare_students(request):
    """The reference: the API page's own SELECT, run on a cursor, rows to orjson."""
    sql = _queries()[request.GET.get("page", "first")]
    with connection.cursor() as cursor:
        cursor.execute(sql)
        names = [c.name for c in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return HttpResponse(orjson.dumps({"data": rows}), content_type="application/json")


urlpatterns = [path("bench/bare/students", bare_students), *app_urlpatterns]
