"""Request middleware: request ids, the audit actor, and the browser's middleware kept off the
versioned REST API."""

from __future__ import annotations

from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.middleware.csrf import CsrfViewMiddleware

from bxos.common.audit import acting_as

API_PREFIX = "/api/v"  # /api/v1/... (GraphQL at /api/graphql/ also serves signed-in staff)


def is_rest_api(request) -> bool:
    """Whether ``request`` is for the versioned REST API, whose callers send bearer tokens."""
    return request.path_info.startswith(API_PREFIX)


class _NotForTheRestApi:
    """Django's browser middleware, left out for the versioned REST API.

    Its callers authenticate with a bearer token on every request and never send cookies: a
    session, a signed-in user, CSRF protection (which guards cookie-authenticated requests) and
    flash messages mean nothing there, and together they cost about 0.1 ms of CPU on each list
    page a vendor reads (docs/benchmarks.md, B3). Everything else (the admin, dashboards, the
    portal, OAuth's sign-in and consent, GraphQL) keeps them. Subclasses, so that Django's
    checks still find the middleware the admin needs. Under ASGI they run everywhere, as
    Django's do.
    """

    def __call__(self, request):
        if not self.async_mode and is_rest_api(request):
            return self.get_response(request)
        return super().__call__(request)


class BrowserSessionMiddleware(_NotForTheRestApi, SessionMiddleware):
    """Django's SessionMiddleware, not for the REST API."""


class BrowserCsrfViewMiddleware(_NotForTheRestApi, CsrfViewMiddleware):
    """Django's CsrfViewMiddleware, not for the REST API."""

    def process_view(self, request, callback, callback_args, callback_kwargs):
        if is_rest_api(request):
            return None  # no cookie is ever read there, so there is no forged request to stop
        return super().process_view(request, callback, callback_args, callback_kwargs)


class BrowserAuthenticationMiddleware(_NotForTheRestApi, AuthenticationMiddleware):
    """Django's AuthenticationMiddleware, not for the REST API (which names its client)."""


class BrowserMessageMiddleware(_NotForTheRestApi, MessageMiddleware):
    """Django's MessageMiddleware, not for the REST API."""


class AuditActorMiddleware:
    """The signed-in user (a browser session) is the audit actor of the request.

    Not for the versioned REST API: its callers authenticate with bearer tokens, never a
    session, and its views name the API client as the actor. Reading ``request.user`` there
    would load the session for nothing and mark every API response ``Vary: Cookie``.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if is_rest_api(request):
            return self.get_response(request)
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            with acting_as(user, remote_addr=request.META.get("REMOTE_ADDR")):
                return self.get_response(request)
        return self.get_response(request)


class RequestIdMiddleware:
    """A correlation id on every request and response (X-Request-ID), for logs and errors.

    An incoming X-Request-ID from a trusted proxy is kept when it looks like an id.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        import re
        import uuid

        incoming = request.META.get("HTTP_X_REQUEST_ID", "")
        request.request_id = (
            incoming if re.fullmatch(r"[A-Za-z0-9._-]{8,64}", incoming) else uuid.uuid4().hex
        )
        response = self.get_response(request)
        response["X-Request-ID"] = request.request_id
        return response
