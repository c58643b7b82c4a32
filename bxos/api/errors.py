"""RFC 9457 problem details for every API error, with a stable type and the request id."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)

PROBLEM_TYPE = "urn:bxos:problem:{}"


class BadParameter(exceptions.ValidationError):
    """400 naming a query parameter and why it is wrong."""

    default_code = "invalid-parameter"

    def __init__(self, parameter: str, reason: str):
        super().__init__({parameter: [reason]})
        self.parameter = parameter


_TITLES = {
    400: ("invalid-request", "The request is not valid"),
    401: ("unauthenticated", "Authentication is needed"),
    403: ("forbidden", "Not allowed"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    409: ("conflict", "Conflict"),
    413: ("payload-too-large", "The request body is too large"),
    415: ("unsupported-media-type", "Unsupported content type"),
    429: ("rate-limited", "Too many requests"),
}


def problem_response(
    request, status: int, detail: str, *, errors=None, slug=None, headers=None
) -> Response:
    default_slug, title = _TITLES.get(status, ("error", "Error"))
    body = {
        "type": PROBLEM_TYPE.format(slug or default_slug),
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.path if request is not None else None,
        "requestId": getattr(request, "request_id", None),
    }
    if errors:
        body["errors"] = errors
    response = Response(
        body, status=status, headers=headers, content_type="application/problem+json"
    )
    return response


def _field_errors(detail) -> list[dict]:
    if isinstance(detail, dict):
        out = []
        for name, messages in detail.items():
            for message in messages if isinstance(messages, list) else [messages]:
                out.append({"field": name, "message": str(message)})
        return out
    if isinstance(detail, list):
        return [{"field": None, "message": str(m)} for m in detail]
    return [{"field": None, "message": str(detail)}]


def problem_exception_handler(exc, context):
    request = context.get("request")
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    response = exception_handler(exc, context)
    if response is None:
        return None  # a real server error: Django logs it and answers 500
    status = response.status_code
    headers = {
        k: v for k, v in response.items() if k in ("WWW-Authenticate", "Retry-After", "Allow")
    }
    if isinstance(exc, exceptions.ValidationError):
        errors = _field_errors(exc.detail)
        names = [e["field"] for e in errors if e["field"]]
        detail = (f"Invalid {', '.join(names)}: " if names else "") + "; ".join(
            e["message"] for e in errors
        )
        return problem_response(request, status, detail, errors=errors, headers=headers)
    detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
    return problem_response(request, status, str(detail), headers=headers)
