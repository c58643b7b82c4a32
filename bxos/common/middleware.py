"""Request middleware: the signed-in user is the audit actor for the whole request."""

from __future__ import annotations

from bxos.common.audit import acting_as


class AuditActorMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
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
