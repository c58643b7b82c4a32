"""Request middleware: the signed-in user is the audit actor for the whole request."""

from __future__ import annotations

from bxos.common.audit import acting_as

API_PREFIX = "/api/v"  # /api/v1/... (GraphQL at /api/graphql/ also serves signed-in staff)


class AuditActorMiddleware:
    """The signed-in user (a browser session) is the audit actor of the request.

    Not for the versioned REST API: its callers authenticate with bearer tokens, never a
    session, and its views name the API client as the actor. Reading ``request.user`` there
    would load the session for nothing and mark every API response ``Vary: Cookie``.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path_info.startswith(API_PREFIX):
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
