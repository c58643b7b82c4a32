"""List pages answered without DRF's dispatch: the hottest path of the API.

Most of a vendor's traffic is walking a list page by page (benchmark B3, docs/benchmarks.md).
DRF's request wrapping, negotiation, permission and throttle hooks, exception handling and
response rendering cost about as much CPU as running the page's statement (0.2 to 0.3 ms a
request on the benchmark machine), so a plain GET of a list comes here first. This view
answers only what ends in a 200 page, with the very functions the DRF viewset uses: the token
check (``ClientTokenAuthentication``), the scope check (``holds_scope``), the rate limits
(``check_rate``), the gate and the page statement with its disclosure row (``list_body``), the
same renderer, and the same headers.

Everything else is handed to the DRF view unchanged, which answers it as it always has: no
token or a bad one, a token acting for a staff member, a missing scope, a bad parameter, a
media type other than JSON, any method but GET. Nothing is written before a hand-over (a bad
filter value is found before the page is read), and what was counted travels on the request
(``throttling.counted``): the DRF view answers a 429 or a 400 without counting it again. The
two paths give the same bytes and headers for the same page (tests/bxos/api/test_lean.py).
"""

from __future__ import annotations

import functools

from django.conf import settings
from django.http import HttpResponse
from rest_framework.exceptions import APIException

from bxos.api.authentication import ClientTokenAuthentication
from bxos.api.paging import parse_page
from bxos.api.permissions import holds_scope
from bxos.api.renderers import OrjsonRenderer
from bxos.api.resources import Resource
from bxos.api.throttling import check_rate, counted
from bxos.api.views import list_body

_authentication = ClientTokenAuthentication()
_renderer = OrjsonRenderer()
# What ApiContentNegotiation answers with the JSON renderer without parsing (no header is */*).
_ACCEPTED = frozenset(("*/*", _renderer.media_type))


def _allow(view) -> str:
    """The Allow header DRF gives this route: its methods, HEAD with GET, and OPTIONS."""
    actions = getattr(view, "actions", {}) or {}
    names = view.cls.http_method_names
    allowed = {*actions, "options", *(("head",) if "get" in actions else ())}
    return ", ".join(m.upper() for m in names if m in allowed)


def enabled() -> bool:
    """Off only to compare the two paths (tests) or to rule this one out when diagnosing."""
    return bool(settings.API.get("LEAN_LISTS", True))


def lean_list(resource: Resource, view):
    """The list route of ``resource``: this path for a plain page, ``view`` (DRF) otherwise."""
    allow = _allow(view)
    format_param = view.cls.settings.URL_FORMAT_OVERRIDE

    @functools.wraps(view)  # keeps .cls, .actions and .csrf_exempt for schema and catalogue
    def list_view(request, *args, **kwargs):
        response = _answer(request, resource, allow, format_param) if enabled() else None
        return response if response is not None else view(request, *args, **kwargs)

    return list_view


def _answer(request, resource: Resource, allow: str, format_param: str) -> HttpResponse | None:
    if request.method != "GET" or request.META.get("HTTP_ACCEPT", "*/*") not in _ACCEPTED:
        return None
    if format_param and format_param in request.GET:
        return None
    try:
        # The token's statement counts the request in the client's own counters, too.
        authenticated = _authentication.authenticate_counting(request, count=True)
    except APIException:
        return None  # the DRF view refuses it the same way
    if authenticated is None:
        return None
    client, token, hits = authenticated
    request.user, request.auth = client, token  # the monitoring middleware reads the client
    state = check_rate(client, scope=resource.scope, group=resource.name, write=False, counted=hits)
    counted(request, state)  # from here on, the DRF view does not count it again
    if not state.allowed:
        return None
    if client.acting_for is not None or not holds_scope(client, token, resource.scope):
        return None
    try:
        page = parse_page(request, set(resource.filters))
        body = list_body(resource, request, client, page)
    except APIException:
        return None  # a bad parameter: raised before the page was read or disclosed
    response = HttpResponse(_renderer.render(body), content_type=_renderer.media_type)
    response["Allow"] = allow
    for name, value in state.headers().items():
        response[name] = value
    return response
