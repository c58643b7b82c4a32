"""The record of disclosures (34 CFR 99.32): one row per response carrying student data."""

from __future__ import annotations

from collections.abc import Iterable

from bxos.api.models import ApiClient, DisclosureLogEntry


def disclosure_record(
    *, client: ApiClient, request, student_ids: Iterable[int], query: str | None = None
) -> None:
    """Write one disclosure row for this response; nothing when no student's data was sent.

    ``query`` is what was asked (the query string by default; GraphQL passes its document).
    """
    ids = sorted({i for i in student_ids if i is not None})
    if not ids:
        return
    DisclosureLogEntry.objects.create(
        client=client,
        district_id=client.district_id,
        purpose=client.purpose,
        endpoint=request.path[:200],
        method=request.method,
        query=(request.META.get("QUERY_STRING", "") if query is None else query)[:2000],
        student_ids=ids,
        count=len(ids),
        request_id=getattr(request, "request_id", "")[:64],
        acting_user=client.acting_for,
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
