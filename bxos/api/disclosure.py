"""The record of disclosures (34 CFR 99.32): one row per response carrying student data."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connection

from bxos.api.models import ApiClient, DisclosureLogEntry

# The row's columns, shared with the list page's statement (bxos.api.pages), which writes the
# same row from the page it reads.
INSERT_INTO = (
    "INSERT INTO api_disclosurelogentry (at, client_id, district_id, purpose, endpoint, method, "
    "query, student_ids, count, request_id, acting_user_id) "
)
_INSERT = INSERT_INTO + "VALUES (now(), %s, %s, %s, %s, %s, %s, %s::bigint[], %s, %s, %s)"


def disclosure_values(*, client: ApiClient, request, query: str | None = None) -> list:
    """The row's values besides the students, in column order: the six before
    ``student_ids`` and ``count``, then the two after."""
    acting = client.acting_for
    return [
        client.pk,
        client.district_id,
        client.purpose,
        request.path[:200],
        request.method,
        (request.META.get("QUERY_STRING", "") if query is None else query)[:2000],
        getattr(request, "request_id", "")[:64],
        acting.pk if acting is not None else None,
    ]


def disclosure_record(
    *, client: ApiClient, request, student_ids: Iterable[int], query: str | None = None
) -> None:
    """Write one disclosure row for this response; nothing when no student's data was sent.

    ``query`` is what was asked (the query string by default; GraphQL passes its document).
    One plain INSERT on the request's connection: it runs on every page a vendor reads, so it
    skips the ORM and sends the ids as one array literal (docs/benchmarks.md, B3).
    """
    ids = sorted({i for i in student_ids if i is not None})
    if not ids:
        return
    values = disclosure_values(client=client, request=request, query=query)
    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT, [*values[:6], "{" + ",".join(map(str, ids)) + "}", len(ids), *values[6:]]
        )


def disclosure_record_delivery(
    *, client_id: int, endpoint: str, student_ids: Iterable[int], request_id: str
) -> None:
    """One row for a webhook delivery that carried students' data to a vendor's endpoint."""
    ids = sorted({i for i in student_ids if i is not None})
    if not ids:
        return
    client = ApiClient.objects.only("district_id", "purpose").get(pk=client_id)
    DisclosureLogEntry.objects.create(
        client_id=client_id,
        district_id=client.district_id,
        purpose=client.purpose,
        endpoint=endpoint[:200],
        method="PUSH",
        query="",
        student_ids=ids,
        count=len(ids),
        request_id=request_id[:64],
    )
