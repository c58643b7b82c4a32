"""The API catalogue and version lifecycle, derived from the code.

``sync_catalogue()`` walks the URL patterns of every API version and rewrites the
ApiEndpoint rows (after every `migrate`), so the admin's catalogue can never drift from what
the server answers. A version's status (current, deprecated, sunset) is declared in
settings.API["VERSIONS"]; a deprecated version's responses carry the Deprecation and Sunset
headers (RFC 9745, RFC 8594), and a sunset version answers 410.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from email.utils import format_datetime

from django.conf import settings
from django.http import JsonResponse
from django.urls import URLPattern, URLResolver, get_resolver

CURRENT, DEPRECATED, SUNSET = "current", "deprecated", "sunset"
# Versioned REST paths, and GraphQL, which has no version in its path: its view names the
# version whose resources it serves (``api_version``).
API_ROUTES = ("api/v", "api/graphql/")


def version_info(version: str) -> dict:
    return settings.API["VERSIONS"].get(version, {"status": CURRENT})


def _walk(patterns, prefix: str = ""):
    for p in patterns:
        route = prefix + str(p.pattern).lstrip("^").rstrip("$")
        if isinstance(p, URLResolver):
            yield from _walk(p.url_patterns, route)
        elif isinstance(p, URLPattern):
            yield route, p


def endpoints() -> list[dict]:
    """Every API endpoint: version, path, methods, name, resource and scopes."""
    from bxos.api.scopes import BEHAVIOR_WRITE

    found = []
    for route, pattern in _walk(get_resolver().url_patterns):
        if not route.startswith(API_ROUTES) or pattern.name in (None, "not-found"):
            continue
        callback = pattern.callback
        view_class = getattr(callback, "cls", None)
        version = getattr(view_class, "api_version", None) or route.split("/")[1]
        actions = getattr(callback, "actions", None)
        if actions:
            # DRF adds "head" to this map after a view's first request: leave it out, with
            # "options", so the catalogue does not depend on traffic.
            methods = sorted(m.upper() for m in actions if m not in ("head", "options"))
        elif view_class is not None:
            methods = sorted(
                m.upper()
                for m in view_class.http_method_names
                if hasattr(view_class, m) and m not in ("options", "head")
            )
        else:
            methods = ["GET"]
        resource = getattr(getattr(view_class, "resource", None), "name", "")
        scope = getattr(getattr(view_class, "resource", None), "scope", "")
        write_scope = (
            BEHAVIOR_WRITE
            if set(methods) - {"GET"} and not getattr(view_class, "read_only", False)
            else ""
        )
        # Views that are not a Resource (webhooks) declare (read scope, write scope).
        scope, write_scope = getattr(view_class, "catalogue_scopes", (scope, write_scope))
        path = "/" + route.replace("(?P<pk>[^/.]+)", "{id}").replace("\\", "")
        found.append(
            {
                "version": version,
                "path": path,
                "methods": methods,
                "name": pattern.name,
                "resource": resource,
                "scope": scope,
                "write_scope": write_scope,
            }
        )
    return found


def sync_catalogue() -> int:
    from bxos.api.models import ApiEndpoint

    rows = endpoints()
    ApiEndpoint.objects.all().delete()
    ApiEndpoint.objects.bulk_create(
        ApiEndpoint(
            **row,
            status=version_info(row["version"]).get("status", CURRENT),
            sunset_at=version_info(row["version"]).get("sunset"),
        )
        for row in rows
    )
    return len(rows)


def _http_date(day: date) -> str:
    return format_datetime(datetime.combine(day, time(0, 0), tzinfo=UTC), usegmt=True)


def api_version_of(path: str) -> str | None:
    """The API version a request path belongs to: its first segment under /api/ for REST
    (/api/v1/...), the version GraphQL serves (its view's ``api_version``) for /api/graphql/;
    None for anything else."""
    if path.startswith("/api/v"):
        return path.split("/")[2]
    if path.startswith("/api/graphql/"):
        from django.urls import Resolver404, resolve

        try:
            match = resolve(path)
        except Resolver404:
            return None
        view_class = getattr(match.func, "view_class", None) or getattr(match.func, "cls", None)
        return getattr(view_class, "api_version", None)
    return None


class ApiVersionMiddleware:
    """Deprecation and Sunset headers for a deprecated version; 410 once it is sunset. REST
    and GraphQL alike: GraphQL follows the version whose resources it serves."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        version = api_version_of(request.path_info)
        if version is None:
            return self.get_response(request)
        info = version_info(version)
        if info.get("status") == SUNSET:
            return JsonResponse(
                {
                    "type": "urn:bxos:problem:version-sunset",
                    "title": "This API version is gone",
                    "status": 410,
                    "detail": f"API {version} was retired on {info.get('sunset')}; "
                    f"use {info.get('successor', 'the current version')}.",
                    "instance": request.path,
                    "requestId": getattr(request, "request_id", None),
                },
                status=410,
                content_type="application/problem+json",
            )
        response = self.get_response(request)
        if info.get("status") == DEPRECATED:
            deprecated = info.get("deprecated")
            response["Deprecation"] = (
                f"@{int(datetime.combine(deprecated, time(0, 0), tzinfo=UTC).timestamp())}"
                if deprecated
                else "true"
            )
            if info.get("sunset"):
                response["Sunset"] = _http_date(info["sunset"])
        return response
