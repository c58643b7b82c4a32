"""The GraphQL schema, generated from the resource declarations (bxos.api.resources).

For every Resource:

- an object type named after its model (``Student``) with exactly the fields of its REST
  records, under the same names; ``id`` and ``changeVersion`` are non-null, the other fields
  nullable, since a field profile may remove them. Scalar types are those
  strawberry-graphql-django gives the model fields, except that ids and change versions are
  ``BigInt`` (64-bit) and decimals are floats, as REST sends them;
- a page type (``StudentPage``: ``items`` and ``pageInfo``);
- a top-level list named as the REST path (``students``), with the REST filters and the
  REST paging (``first``, ``after``, ``minChangeVersion``, ``maxChangeVersion``);
- a top-level single object named after the model (``student(id: ID!)``, or ``staffById``
  where that name is already the list's);
- a field for each of its relations (bxos.api.graphql.relations).

How rows are read. Through the same selectors as REST (bxos.api.views): the gate
(``resource_queryset``: restrict() with the client as actor), the filters, the paging and
``resource_rows``, reading only the columns both asked for and allowed by the client's field
profile. A resource needs its scope, in the client and in the token, wherever it is read: at
the top or nested. Every list of rows read is a ``Batch``; a relation of any row of a batch is
read for the whole batch in one query, the first time a row asks for it (graphql-core resolves
rows one by one; the batch is how the second row finds the first row's answer). So a request
makes one query per list and per relation per level, whatever the page sizes. Each row read is
in the response, so its student id is added to the request's disclosure there and then.

Refusals. A missing scope, a field outside the profile and a bad argument are GraphQL errors
with a code (bxos.api.graphql.errors); the field is null and the rest of the query still
resolves. Within one list an error is reported once, at its first row, not once per row.
"""

from __future__ import annotations

import datetime
import inspect
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any, NewType

import strawberry
from django.db import models
from django.db.models import F, Window
from django.db.models.functions import RowNumber
from rest_framework.utils.encoders import JSONEncoder
from strawberry.schema.config import StrawberryConfig
from strawberry.types import Info
from strawberry.types.nodes import SelectedField, Selection
from strawberry_django.fields.types import field_type_map

from bxos.api.errors import BadParameter
from bxos.api.graphql.errors import (
    FieldNotAllowed,
    GraphQLProblem,
    RecordNotFound,
    ScopeMissing,
    is_unexpected,
)
from bxos.api.graphql.limits import LIMITS
from bxos.api.graphql.relations import RELATIONS, Relation
from bxos.api.paging import apply_page, encode_cursor, last_key, page_from
from bxos.api.permissions import holds_scope
from bxos.api.resources import BY_NAME, RESOURCES, Resource
from bxos.api.schema import ALWAYS_SENT, field_help, model_field
from bxos.api.views import (
    resource_fields,
    resource_filter,
    resource_queryset,
    resource_rows,
    whole_number,
)

BigInt = NewType("BigInt", int)
_BIGINT_RANGE = range(-(2**63), 2**63)


def _big_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in _BIGINT_RANGE:
        return value
    raise ValueError(f"BigInt cannot represent {value!r}: a whole number of at most 64 bits")


# REST's own encoder, so that times and timestamps read the same in both APIs.
_rest_value = JSONEncoder().default

SCALARS = {
    BigInt: strawberry.scalar(
        name="BigInt",
        description="A 64-bit whole number (ids and change versions), sent as a JSON number.",
        serialize=int,
        parse_value=_big_int,
    ),
    datetime.datetime: strawberry.scalar(
        name="DateTime",
        description="An instant, ISO 8601 in UTC, as REST sends it.",
        serialize=_rest_value,
        parse_value=datetime.datetime.fromisoformat,
    ),
    datetime.time: strawberry.scalar(
        name="Time",
        description="A time of day in the school's time zone, no offset (10:30:00).",
        serialize=_rest_value,
        parse_value=datetime.time.fromisoformat,
    ),
}


# --- One request ---------------------------------------------------------------------------


class GraphContext:
    """What the resolvers of one request share: who asks, what it may see, whose data was sent."""

    def __init__(self, request) -> None:
        self.request = request
        self.actor = request.user
        self.student_ids: set[int] = set()
        self._fields: dict[str, dict[str, str]] = {}

    def require_scope(self, resource: Resource) -> None:
        """The same check as REST's HasClientScope, for one resource."""
        if not holds_scope(self.actor, self.request.auth, resource.scope):
            raise ScopeMissing(resource)

    def fields(self, resource: Resource) -> dict[str, str]:
        """The fields of ``resource`` the field profile allows (API name -> ORM path)."""
        if resource.name not in self._fields:
            self._fields[resource.name] = resource_fields(resource, self.actor)
        return self._fields[resource.name]

    def require_field(self, resource: Resource, field: str, needed_by: str) -> None:
        if field not in self.fields(resource):
            raise FieldNotAllowed(resource, field, needed_by)

    def read(
        self,
        resource: Resource,
        queryset: models.QuerySet,
        asked: set[str],
        *,
        keys: Iterable[str] = (),
        limit: int | None = None,
    ) -> tuple[Batch, bool]:
        """The rows of ``queryset`` (at most ``limit``) as a batch, and whether there are more.

        Reads the fields ``asked`` for that the profile allows, the fields the asked-for
        relations start from, and ``keys``; never a field the profile does not allow.
        """
        wanted = ALWAYS_SENT | asked | set(keys)
        wanted |= {r.key for r in RELATIONS_OF[resource.name] if r.name in asked}
        columns = {name: path for name, path in self.fields(resource).items() if name in wanted}
        if limit is not None:
            queryset = queryset[: limit + 1]
        values, students = resource_rows(resource, queryset, columns)
        more = limit is not None and len(values) > limit
        if more:
            values, students = values[:limit], students[:limit]
        self.student_ids.update(students)
        return Batch(self, resource, values), more


class Batch:
    """The rows of one resource that one query read; a relation loads once for all of them."""

    def __init__(self, context: GraphContext, resource: Resource, values: list[dict]) -> None:
        self.context = context
        self.resource = resource
        self.allowed = context.fields(resource)
        self.rows = [Row(row, self) for row in values]
        self.loaded: dict[tuple, Any] = {}
        self._reported: set = set()

    def first_time(self, key: Any) -> bool:
        """True the first time ``key`` is seen: an error is reported once per batch."""
        if key in self._reported:
            return False
        self._reported.add(key)
        return True


class Row:
    """One record; GraphQL reads its fields as attributes (strawberry's default resolver)."""

    __slots__ = ("_batch", "_values")

    def __init__(self, values: dict, batch: Batch) -> None:
        self._values = values
        self._batch = batch

    def __getattr__(self, name: str) -> Any:
        # Called only for names that are not slots: the record's fields.
        if name in self._values:
            return self._values[name]
        batch = self._batch
        if name not in batch.resource.fields:
            raise AttributeError(name)
        if name in batch.allowed:
            raise AssertionError(f"{batch.resource.name}.{name} was asked for but not read")
        if batch.first_time(("field", name)):
            raise FieldNotAllowed(batch.resource, name)
        return None


# --- What a field asks for -------------------------------------------------------------------


def _flat(selections: Iterable[Selection]) -> Iterator[SelectedField]:
    """The fields of a selection, fragments included."""
    for selection in selections:
        if isinstance(selection, SelectedField):
            yield selection
        else:
            yield from _flat(selection.selections)


def _asked(info: Info, through: str | None = None) -> set[str]:
    """The names of the fields asked for on the rows the current field returns (``through``:
    on the rows of its sub-field of that name, a page's ``items``). Directives are not
    evaluated: a field under @skip is read all the same, which costs a column, not a leak."""
    names: set[str] = set()
    for field in info.selected_fields:
        selections = field.selections
        if through:
            selections = [s for f in _flat(selections) if f.name == through for s in f.selections]
        names.update(f.name for f in _flat(selections))
    return names


# --- Resolvers ------------------------------------------------------------------------------


def _signature(function, parameters: dict[str, Any]):
    """Give ``function(info, **arguments)`` the GraphQL arguments ``parameters`` (name ->
    type, all optional but ``id``), the way strawberry reads them: from its signature."""
    params = [inspect.Parameter("info", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Info)]
    for name, kind in parameters.items():
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=kind,
                default=inspect.Parameter.empty if name == "id" else None,
            )
        )
    function.__signature__ = inspect.Signature(params)
    function.__annotations__ = {p.name: p.annotation for p in params}
    return function


@strawberry.type(description="Where a list stopped, and how to ask for what follows.")
class PageInfo:
    hasNextPage: bool = strawberry.field(description="Whether rows follow this page.")
    endCursor: str | None = strawberry.field(
        description="Pass as `after` for the rows after this page; null when it is empty."
    )
    minChangeVersion: BigInt | None = strawberry.field(
        description="Lower bound of the change window, when the list is windowed."
    )
    maxChangeVersion: BigInt | None = strawberry.field(
        description="Upper bound of the change window, fixed on its first page. The next "
        "window starts at this + 1."
    )


def _list_resolver(resource: Resource, page_type: type):
    def resolve(info: Info, **arguments: Any):
        context: GraphContext = info.context
        context.require_scope(resource)
        page = page_from(
            limit=arguments.pop("first", None),
            min_cv=arguments.pop("minChangeVersion", None),
            max_cv=arguments.pop("maxChangeVersion", None),
            after=arguments.pop("after", None),
            limit_name="first",
        )
        queryset = resource_filter(resource, resource_queryset(resource, context.actor), arguments)
        batch, more = context.read(
            resource, apply_page(queryset, page), _asked(info, "items"), limit=page.limit
        )
        end = encode_cursor(last_key(batch.rows[-1]._values, page), page) if batch.rows else None
        return page_type(
            items=batch.rows,
            pageInfo=PageInfo(
                hasNextPage=more,
                endCursor=end,
                minChangeVersion=page.min_cv,
                maxChangeVersion=page.max_cv,
            ),
        )

    filters = {
        name: (strawberry.ID if lookup.endswith("_id") or lookup == "id" else str) | None
        for name, lookup in resource.filters.items()
    }
    return _signature(
        resolve,
        {
            "first": int | None,
            "after": str | None,
            "minChangeVersion": BigInt | None,
            "maxChangeVersion": BigInt | None,
            **filters,
        },
    )


def _one_resolver(resource: Resource):
    def resolve(info: Info, id: strawberry.ID):
        context: GraphContext = info.context
        context.require_scope(resource)
        pk = whole_number("id", id)
        queryset = resource_queryset(resource, context.actor).filter(pk=pk)
        batch, _more = context.read(resource, queryset, _asked(info))
        if not batch.rows:
            raise RecordNotFound(resource, pk)
        return batch.rows[0]

    return _signature(resolve, {"id": strawberry.ID})


def _load(batch: Batch, relation: Relation, first: int | None, info: Info) -> dict:
    """For every row of ``batch``, the rows ``relation`` leads to: parent key -> rows."""
    context = batch.context
    where = f"{relation.parent}.{relation.name}"
    for hop in relation.hops:
        context.require_scope(BY_NAME[hop.resource])
    context.require_field(batch.resource, relation.key, where)
    size = None
    if relation.many:  # the same default, cap and check as a list's page size
        size = page_from(limit=first, min_cv=None, max_cv=None, after=None, limit_name="first")
    # Each parent key, and the values the next hop starts from.
    reach = {
        row._values[relation.key]: [row._values[relation.key]]
        for row in batch.rows
        if row._values[relation.key] is not None
    }
    for index, hop in enumerate(relation.hops):
        resource = BY_NAME[hop.resource]
        context.require_field(resource, hop.to_field, where)
        to_path = resource.fields[hop.to_field]
        wanted = {value for values in reach.values() for value in values}
        queryset = resource_queryset(resource, context.actor).filter(**{f"{to_path}__in": wanted})
        if index == 0 and size is not None:
            # The first rows of each parent, in the same query as the others'.
            queryset = queryset.annotate(
                graphql_rank=Window(RowNumber(), partition_by=F(to_path), order_by=F("id").asc())
            ).filter(graphql_rank__lte=size.limit)
        queryset = queryset.order_by("id")
        found: dict[Any, list] = defaultdict(list)
        if index == len(relation.hops) - 1:
            child, _more = context.read(resource, queryset, _asked(info), keys=[hop.to_field])
            for row in child.rows:
                found[row._values[hop.to_field]].append(row)
        else:
            onward = relation.hops[index + 1].from_field
            context.require_field(resource, onward, where)
            for key, value in queryset.values_list(to_path, resource.fields[onward]):
                found[key].append(value)
        reach = {
            key: [x for v in values for x in found.get(v, ())] for key, values in reach.items()
        }
    return reach


def _relation_resolver(relation: Relation):
    def resolve(root: Row, info: Info, first: int | None = None):
        batch = root._batch
        key = (info.path.key, first)
        if key not in batch.loaded:
            try:
                batch.loaded[key] = _load(batch, relation, first, info)
            except (GraphQLProblem, BadParameter) as refused:
                batch.loaded[key] = refused
        loaded = batch.loaded[key]
        if isinstance(loaded, Exception):
            if batch.first_time(key):
                raise loaded
            return None
        found = loaded.get(root._values.get(relation.key), [])
        if relation.many:
            return found
        return found[0] if found else None

    if relation.many:
        return resolve

    def resolve_one(root: Row, info: Info):
        return resolve(root, info)

    return resolve_one


# --- Types ----------------------------------------------------------------------------------


def _scalar(model: type[models.Model], path: str) -> tuple[Any, str]:
    """The GraphQL type of an API field and its description, from the model field."""
    field, _nullable = model_field(model, path)
    if field.is_relation or field.primary_key or isinstance(field, models.BigIntegerField):
        return BigInt, field_help(field)
    if isinstance(field, models.DecimalField):
        return float, field_help(field)  # a JSON number, as in REST
    for cls in type(field).__mro__:
        if cls in field_type_map:
            return field_type_map[cls], field_help(field)
    raise TypeError(f"{model.__name__}.{path}: no GraphQL type for {type(field).__name__}")


def _type_name(resource: Resource) -> str:
    return resource.model.__name__  # as the OpenAPI components are named


def single_field_name(resource: Resource) -> str:
    """The top-level field of one record: the model's name (``student``), or ``staffById``
    where that is already the name of the list."""
    name = _type_name(resource)[0].lower() + _type_name(resource)[1:]
    return f"{name}ById" if name in BY_NAME else name


RELATIONS_OF: dict[str, list[Relation]] = defaultdict(list)
for _relation in RELATIONS:
    RELATIONS_OF[_relation.parent].append(_relation)


def _build_types() -> tuple[dict[str, type], dict[str, type]]:
    """The object type and page type of every resource. The classes exist before any is
    decorated, so that relations may point both ways (student -> incidents -> student)."""
    classes = {r.name: type(_type_name(r), (), {}) for r in RESOURCES}
    for resource in RESOURCES:
        cls = classes[resource.name]
        annotations: dict[str, Any] = {}
        for name, path in resource.fields.items():
            kind, description = _scalar(resource.model, path)
            annotations[name] = kind if name in ALWAYS_SENT else kind | None
            setattr(cls, name, strawberry.field(name=name, description=description))
        cls.__annotations__ = annotations
        for relation in RELATIONS_OF[resource.name]:
            assert relation.name not in resource.fields, f"{relation.name}: a field already"
            child = classes[relation.child.name]
            setattr(
                cls,
                relation.name,
                strawberry.field(
                    resolver=_relation_resolver(relation),
                    name=relation.name,
                    graphql_type=(list[child] if relation.many else child) | None,
                    description=relation.description
                    + (
                        " At most `first` per row (default and cap: the page sizes)."
                        if relation.many
                        else ""
                    ),
                ),
            )
    types = {
        name: strawberry.type(cls, description=f"A record of /api/v1/{name}.")
        for name, cls in classes.items()
    }
    pages = {
        r.name: strawberry.type(
            type(
                f"{_type_name(r)}Page",
                (),
                {"__annotations__": {"items": list[types[r.name]], "pageInfo": PageInfo}},
            ),
            description=f"A page of {r.name}.",
        )
        for r in RESOURCES
    }
    return types, pages


def _build_query(types: dict[str, type], pages: dict[str, type]) -> type:
    namespace: dict[str, Any] = {}
    for resource in RESOURCES:
        scope = f"Needs the scope `{resource.scope}`."
        namespace[resource.name] = strawberry.field(
            resolver=_list_resolver(resource, pages[resource.name]),
            name=resource.name,
            graphql_type=pages[resource.name] | None,
            description=f"A page of {resource.name}, in id order or, with a change window, in "
            f"change version order, as /api/v1/{resource.name}. {scope}",
        )
        single = single_field_name(resource)
        assert single not in namespace, f"{single}: two top-level fields"
        namespace[single] = strawberry.field(
            resolver=_one_resolver(resource),
            name=single,
            graphql_type=types[resource.name] | None,
            description=f"One record of {resource.name} by id, as /api/v1/{resource.name}/{{id}}. "
            f"{scope}",
        )
    return strawberry.type(
        type("Query", (), namespace), description="Every resource of /api/v1/, by list or by id."
    )


class _Schema(strawberry.Schema):
    def process_errors(self, errors, execution_context=None) -> None:
        # Refusals are answers, not faults: only the unexpected are logged (with tracebacks).
        super().process_errors([e for e in errors if is_unexpected(e)], execution_context)


TYPES, PAGES = _build_types()
schema = _Schema(
    query=_build_query(TYPES, PAGES),
    extensions=LIMITS,
    config=StrawberryConfig(scalar_map=SCALARS),
)

# The resources each field name of the schema reads (top-level and relations): how the rate
# limiter knows which resources a document asks for before it runs.
FIELD_RESOURCES: dict[str, set[str]] = defaultdict(set)
for _resource in RESOURCES:
    FIELD_RESOURCES[_resource.name].add(_resource.name)
    FIELD_RESOURCES[single_field_name(_resource)].add(_resource.name)
for _relation in RELATIONS:
    FIELD_RESOURCES[_relation.name].update(hop.resource for hop in _relation.hops)
