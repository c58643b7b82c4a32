"""The GraphQL endpoint, /api/graphql/: a DRF view that runs the schema synchronously.

A DRF view rather than strawberry's Django view, so that a GraphQL request is an API request
like any other: the same authentication (a client's bearer token; ``request.user`` is the
client), the same throttle with its RateLimit-* headers, the same problem+json answers for
what goes wrong before GraphQL runs (401, 413, 415, 429, a malformed body), the same request
ids and monitoring.

POST a JSON object ``{"query", "variables", "operationName"}``; GET ``?query=`` (with
``variables`` as JSON and ``operationName``) runs queries too. Whatever the document does, the
answer is a 200 in GraphQL's shape: ``data``, and ``errors`` (each with ``extensions.code``).
A request that returned any student's data writes one disclosure row, with every student
whose data appeared anywhere in the response.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema
from graphql import GraphQLError, GraphQLSyntaxError, parse
from graphql.language import FieldNode, Visitor, visit
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types.graphql import OperationType

from bxos.api.disclosure import disclosure_record
from bxos.api.errors import BadParameter
from bxos.api.graphql.errors import format_error
from bxos.api.graphql.schema import FIELD_RESOURCES, GraphContext, schema
from bxos.api.resources import BY_NAME
from bxos.api.throttling import RateLimitHeadersMixin
from bxos.api.writes import PayloadTooLarge

PARAMETERS = ("query", "variables", "operationName")
# GraphQL over HTTP lets a client send "extensions" (e.g. persisted query hashes): accepted,
# not used.
IGNORED = ("extensions",)
_PARAMS_ATTR = "_bxos_graphql_params"


@dataclass(frozen=True)
class GraphQLRequest:
    query: str
    variables: dict[str, Any] | None
    operation_name: str | None


def _check_known(names, where: str) -> None:
    unknown = sorted(set(names) - set(PARAMETERS) - set(IGNORED))
    if unknown:
        raise BadParameter(
            unknown[0], f"is not a parameter of {where}; known: {', '.join(PARAMETERS)}"
        )


def _read(request) -> GraphQLRequest:
    if request.method == "GET":
        _check_known(request.query_params, "a GraphQL GET request")
        raw = {name: request.query_params.get(name) for name in PARAMETERS}
        if raw["variables"] is not None:
            try:
                raw["variables"] = json.loads(raw["variables"])
            except ValueError:
                raise BadParameter("variables", "must be a JSON object") from None
    else:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0  # Django reads no body for a Content-Length it cannot read
        if length > settings.API["MAX_BODY_BYTES"]:
            raise PayloadTooLarge(
                f"The body is {length} bytes; the most this API accepts is "
                f"{settings.API['MAX_BODY_BYTES']}."
            )
        raw = request.data  # 415 for anything but JSON, 400 for malformed JSON
        if not isinstance(raw, dict):
            raise ValidationError(
                [
                    "The body must be a JSON object: query, and optionally variables and "
                    "operationName."
                ]
            )
        _check_known(raw, "a GraphQL request body")
    query, variables, operation_name = (raw.get(name) for name in PARAMETERS)
    if not isinstance(query, str) or not query.strip():
        raise BadParameter("query", "is required: the GraphQL document, as a string")
    if variables is not None and not isinstance(variables, dict):
        raise BadParameter("variables", "must be a JSON object")
    if operation_name is not None and not isinstance(operation_name, str):
        raise BadParameter("operationName", "must be a string")
    return GraphQLRequest(query, variables, operation_name or None)


def graphql_request(request) -> GraphQLRequest:
    """The request's GraphQL parameters, read once: the throttle reads them first, and DRF
    can parse a body only once (a second read of a malformed one looks empty)."""
    if not hasattr(request, _PARAMS_ATTR):
        try:
            setattr(request, _PARAMS_ATTR, _read(request))
        except APIException as refused:
            setattr(request, _PARAMS_ATTR, refused)
    found = getattr(request, _PARAMS_ATTR)
    if isinstance(found, APIException):
        raise found
    return found


class _FieldNames(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def enter_field(self, node: FieldNode, *_args: Any) -> None:
        self.names.add(node.name.value)


def _field_names(query: str) -> set[str]:
    """Every field name in a document (fragments included); empty if it does not parse."""
    try:
        document = parse(query, max_tokens=settings.API["GRAPHQL_MAX_TOKENS"], no_location=True)
    except GraphQLSyntaxError:
        return set()
    found = _FieldNames()
    visit(document, found)
    return found.names


def _refusal(message: str, code: str) -> GraphQLError:
    return GraphQLError(message, extensions={"code": code})


class GraphQLView(RateLimitHeadersMixin, APIView):
    """/api/graphql/: queries over every resource of /api/v1/ (see bxos.api.graphql)."""

    # The catalogue lists GraphQL under the version whose resources it serves.
    api_version = "v1"
    # Queries only, even by POST: never counted as a write, never needs a write scope.
    read_only = True

    def required_scope(self, request) -> str | None:
        return None  # each field checks the scope of the resource it reads

    def rate_groups(self, request) -> list[tuple[str, str]]:
        """The (scope, resource) of every resource the document names, so that a district's
        rate limit for a resource or scope counts GraphQL requests for it too."""
        try:
            names = _field_names(graphql_request(request).query)
        except APIException:
            return []  # refused before GraphQL runs: counted as "meta" only
        resources = {name for field in names for name in FIELD_RESOURCES.get(field, ())}
        return sorted((BY_NAME[name].scope, name) for name in resources)

    @extend_schema(exclude=True)  # GraphQL describes itself (introspection), not in OpenAPI
    def get(self, request, *args, **kwargs):
        return self._answer(request)

    @extend_schema(exclude=True)
    def post(self, request, *args, **kwargs):
        return self._answer(request)

    def _answer(self, request) -> Response:
        asked = graphql_request(request)
        context = GraphContext(request)
        try:
            result = schema.execute_sync(
                asked.query,
                variable_values=asked.variables,
                context_value=context,
                operation_name=asked.operation_name,
                allowed_operation_types={OperationType.QUERY},
            )
            data, errors = result.data, list(result.errors or ())
        except CannotGetOperationTypeError as refused:
            message = (
                f'The document has no operation named "{refused.operation_name}".'
                if refused.operation_name
                else "The document has several operations, or none: name the one to run "
                "with operationName."
            )
            data, errors = None, [_refusal(message, "OPERATION_RESOLUTION_FAILURE")]
        except InvalidOperationTypeError as refused:
            message = f"Only queries are answered here, not {refused.operation_type.value}s."
            data, errors = None, [_refusal(message, "BAD_REQUEST")]
        disclosure_record(
            client=request.user,
            request=request,
            student_ids=context.student_ids,
            query=" ".join(asked.query.split()),
        )
        body: dict[str, Any] = {"data": data}
        if errors:
            request_id = getattr(request, "request_id", None)
            body["errors"] = [format_error(error, request_id) for error in errors]
        return Response(body)
