"""The errors of /api/graphql/, and how every GraphQL error is shown to a client.

GraphQL answers 200 with an ``errors`` array (the transport-level failures, 401, 413, 415, 429
and a malformed request body, are problem+json like the rest of the API). Every entry carries
``extensions.code``; a refusal names what it refuses (the scope, the field, the argument, the
limit). An unexpected exception is logged and shown as an internal error with the request id,
never with its text, which could carry SQL or data.
"""

from __future__ import annotations

from typing import Any

from graphql import GraphQLError, GraphQLSyntaxError

from bxos.api.errors import BadParameter
from bxos.api.resources import Resource

INTERNAL = "INTERNAL_SERVER_ERROR"


class GraphQLProblem(Exception):
    """An error raised by a resolver, shown to the client with its code and details."""

    code = "BAD_REQUEST"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        # graphql-core copies an original error's ``extensions`` into the error it reports.
        self.extensions = {"code": self.code, **details}


class ScopeMissing(GraphQLProblem):
    code = "FORBIDDEN"

    def __init__(self, resource: Resource) -> None:
        super().__init__(
            f"The scope {resource.scope} is needed to read {resource.name}.",
            scope=resource.scope,
            resource=resource.name,
        )


class FieldNotAllowed(GraphQLProblem):
    code = "FIELD_NOT_ALLOWED"

    def __init__(self, resource: Resource, field: str, needed_by: str | None = None) -> None:
        why = f" ({needed_by} needs it)" if needed_by else ""
        super().__init__(
            f"The field {field} of {resource.name} is not in this client's field profile{why}.",
            resource=resource.name,
            field=field,
        )


class RecordNotFound(GraphQLProblem):
    code = "NOT_FOUND"

    def __init__(self, resource: Resource, pk: int) -> None:
        # The same words for a missing row and another district's: existence is not revealed.
        super().__init__(f"No {resource.name} record with id {pk}.", resource=resource.name)


def is_unexpected(error: GraphQLError) -> bool:
    """An error while executing that is not a refusal of ours: a bug, to be logged.

    Errors without a path are about the request itself (syntax, validation, variables), which
    graphql-core words for the client.
    """
    return error.path is not None and not isinstance(
        error.original_error, GraphQLProblem | BadParameter
    )


def format_error(error: GraphQLError, request_id: str | None) -> dict:
    """``error`` as the client sees it: message, locations, path and extensions with a code."""
    formatted = error.formatted
    original = error.original_error
    extensions = dict(formatted.get("extensions") or {})
    if isinstance(original, BadParameter):
        reason = "; ".join(str(m) for m in original.detail[original.parameter])
        formatted["message"] = f"Invalid argument {original.parameter}: {reason}"
        extensions = {"code": "BAD_USER_INPUT", "argument": original.parameter}
    elif is_unexpected(error):
        formatted["message"] = f"Internal error (request id {request_id})."
        extensions = {"code": INTERNAL}
    elif "code" not in extensions:
        extensions["code"] = (
            "GRAPHQL_PARSE_FAILED"
            if isinstance(error, GraphQLSyntaxError)
            else "GRAPHQL_VALIDATION_FAILED"
        )
    formatted["extensions"] = extensions
    return formatted
