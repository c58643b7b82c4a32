"""Key-set paging and the change-version window of every list.

Lists are ordered by id, or by (change_version, id) when a change window is asked for; the
cursor carries the last key and the window, so the upper bound fixed on the first page holds
for the whole walk. A row changed during the walk moves above the upper bound and is picked up
by the next window (minChangeVersion = this maxChangeVersion + 1): nothing is missed and
nothing repeats. No page runs a COUNT(*).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from urllib.parse import urlencode

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils.encoding import escape_uri_path

from bxos.api.errors import BadParameter
from bxos.common.db import safe_change_version

PAGING_PARAMS = {"limit", "after", "minChangeVersion", "maxChangeVersion"}
_WINDOW_PARAMS = ("minChangeVersion", "maxChangeVersion")


@dataclass
class Page:
    limit: int
    capped: bool
    min_cv: int | None
    max_cv: int | None
    after: tuple[int, ...] | None

    @property
    def by_change_version(self) -> bool:
        return self.min_cv is not None or self.max_cv is not None


def _int(request, name: str) -> int | None:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadParameter(name, f"must be a whole number, not {raw!r}") from None


def encode_cursor(key: tuple[int, ...], page: Page) -> str:
    payload = {"k": list(key), "min": page.min_cv, "max": page.max_cv}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _decode_cursor(raw: str) -> dict:
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        key = data["k"]
        if not (isinstance(key, list) and key and all(isinstance(v, int) for v in key)):
            raise ValueError
        for bound in ("min", "max"):
            if data.get(bound) is not None and not isinstance(data[bound], int):
                raise ValueError
        return data
    except (ValueError, KeyError, TypeError, binascii.Error, json.JSONDecodeError):
        raise BadParameter("after", "is not a cursor this API issued") from None


def parse_page(request, allowed_filters: set[str], *, windowed: bool = False) -> Page:
    """The page a request asks for. ``windowed`` lists (deletes) always walk a change window.

    ``request`` is a DRF request or a plain Django one (bxos.api.lean): both have ``GET``."""
    unknown = sorted(set(request.GET) - PAGING_PARAMS - allowed_filters)
    if unknown:
        known = ", ".join(sorted(PAGING_PARAMS | allowed_filters))
        raise BadParameter(unknown[0], f"is not a parameter of this list; known: {known}")
    return page_from(
        limit=_int(request, "limit"),
        min_cv=_int(request, "minChangeVersion"),
        max_cv=_int(request, "maxChangeVersion"),
        after=request.GET.get("after"),
        windowed=windowed,
    )


def page_from(
    *,
    limit: int | None,
    min_cv: int | None,
    max_cv: int | None,
    after: str | None,
    windowed: bool = False,
    limit_name: str = "limit",
) -> Page:
    """The page asked for by these values (REST query parameters or GraphQL arguments, which
    call the page size ``first``: ``limit_name``). Errors name the parameter at fault."""
    for name, value, minimum in (
        (limit_name, limit, 1),
        ("minChangeVersion", min_cv, 0),
        ("maxChangeVersion", max_cv, 0),
    ):
        if value is not None and value < minimum:
            raise BadParameter(name, f"must be at least {minimum}")
    limits = settings.API
    limit = limit or limits["DEFAULT_PAGE_SIZE"]
    capped = limit > limits["MAX_PAGE_SIZE"]
    limit = min(limit, limits["MAX_PAGE_SIZE"])
    after_key = None
    if after:
        cursor = _decode_cursor(after)
        after_key = tuple(cursor["k"])
        # The cursor's window wins: the upper bound fixed on the first page holds.
        min_cv, max_cv = cursor.get("min"), cursor.get("max")
    if min_cv is not None and max_cv is not None and min_cv > max_cv:
        raise BadParameter(
            "minChangeVersion", f"must not be greater than maxChangeVersion ({min_cv} > {max_cv})"
        )
    if windowed and min_cv is None:
        min_cv = 0
    page = Page(limit=limit, capped=capped, min_cv=min_cv, max_cv=max_cv, after=after_key)
    if page.by_change_version and page.max_cv is None:
        page.max_cv = safe_change_version()
        if page.min_cv is not None and page.min_cv > page.max_cv:
            # Nothing newer is safely committed yet: an empty window that keeps the client's
            # place (its next minChangeVersion stays where it is).
            page.max_cv = page.min_cv - 1
    if after_key is not None and len(after_key) != (2 if page.by_change_version else 1):
        raise BadParameter("after", "does not belong to this kind of list")
    return page


def last_key(row: dict, page: Page) -> tuple[int, ...]:
    """The key set of a list's last row, which the next page's cursor carries."""
    return (row["changeVersion"], row["id"]) if page.by_change_version else (row["id"],)


def apply_page(
    queryset: QuerySet, page: Page, *, cv_field: str = "change_version", id_field: str = "id"
) -> QuerySet:
    if page.by_change_version:
        if page.min_cv is not None:
            queryset = queryset.filter(**{f"{cv_field}__gte": page.min_cv})
        queryset = queryset.filter(**{f"{cv_field}__lte": page.max_cv})
        if page.after:
            cv, last_id = page.after
            queryset = queryset.filter(
                Q(**{f"{cv_field}__gt": cv}) | Q(**{cv_field: cv, f"{id_field}__gt": last_id})
            )
        return queryset.order_by(cv_field, id_field)
    if page.after:
        queryset = queryset.filter(**{f"{id_field}__gt": page.after[0]})
    return queryset.order_by(id_field)


def page_meta(request, page: Page, last_key: tuple[int, ...] | None, has_more: bool) -> dict:
    meta = {"limit": page.limit}
    if page.capped:
        meta["limitCapped"] = (
            f"limit was lowered to the maximum page size, {settings.API['MAX_PAGE_SIZE']}"
        )
    if page.by_change_version:
        meta["minChangeVersion"] = page.min_cv
        meta["maxChangeVersion"] = page.max_cv
    cursor = encode_cursor(last_key, page) if has_more and last_key else None
    meta["next"] = cursor
    links = {"next": None}
    if cursor:
        # build_absolute_uri() without its parsing and IRI quoting, which change nothing here
        # (an API path and an urlencoded query are ASCII): this runs on every page.
        links["next"] = (
            f"{request.scheme}://{request.get_host()}{escape_uri_path(request.path)}"
            f"?{_next_query(request, cursor)}"
        )
    return {"meta": meta, "links": links}


def _next_query(request, cursor: str) -> str:
    """This page's query string with ``after`` set to ``cursor`` (in its place, or last) and
    the window left out (the cursor carries it). What ``QueryDict.copy()`` and ``urlencode()``
    give, without the deep copy: this runs on every page a vendor reads."""
    pairs: list[tuple[str, str]] = []
    carried = False
    for name, values in request.GET.lists():
        if name == "after":
            pairs.append((name, cursor))
            carried = True
        elif name not in _WINDOW_PARAMS:
            pairs.extend((name, value) for value in values)
    if not carried:
        pairs.append(("after", cursor))
    return urlencode(pairs)
