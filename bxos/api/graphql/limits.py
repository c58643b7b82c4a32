"""How much one GraphQL request may ask for: depth, aliases, tokens and cost.

Depth, aliases and tokens are strawberry's own extensions; the numbers are read from
settings.API on every request (so a test or an operator can change them) and each refusal
carries an ``extensions.code``. The cost is ours: strawberry has no rule for it.

Cost. A document is refused before anything is read when it may read more rows than
``GRAPHQL_MAX_COST``. Each field that reads rows adds the most rows it can return: a list (a
field with a ``first`` argument) adds ``first`` times the rows of the lists above it, a single
object adds one per row above it. ``first`` is read from the document or its variables, with
the API's default page size when absent and capped at the maximum page size, as the
resolvers do. So ``students(first: 100) { items { incidents(first: 10) { school { id } } } }``
costs 100 + 100 x 10 + 100 x 10 = 2,100.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from django.conf import settings
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLObjectType,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
    VariableNode,
    Visitor,
    get_named_type,
    get_nullable_type,
    is_list_type,
    value_from_ast_untyped,
    visit,
)
from strawberry.extensions import (
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)


def _coded(rule: type[ValidationRule], code: str, **details: Any) -> type[ValidationRule]:
    """``rule`` with ``code`` (and ``details``) in the extensions of the errors it reports.

    Strawberry's limit rules do all their work, and report, while they are constructed.
    """

    class Coded(rule):  # type: ignore[misc,valid-type]
        def __init__(self, context: ValidationContext) -> None:
            report = context.on_error

            def on_error(error: GraphQLError) -> None:
                error.extensions = {**(error.extensions or {}), "code": code, **details}
                report(error)

            context.on_error = on_error  # type: ignore[method-assign]
            try:
                super().__init__(context)
            finally:
                context.on_error = report  # type: ignore[method-assign]

    return Coded


class _Spreads(Visitor):
    """Collects the names of the fragments a document spreads."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def enter_fragment_spread(self, node: FragmentSpreadNode, *_args: Any) -> None:
        self.names.add(node.name.value)


def _known_fragments_only(rule: type[ValidationRule]) -> type[ValidationRule]:
    """``rule``, skipped for a document that spreads a fragment it does not define.

    Strawberry's depth rule looks fragments up unchecked and would fail with a KeyError;
    graphql-core's KnownFragmentNamesRule reports the unknown fragment by name instead.
    """

    class KnownFragmentsOnly(rule):  # type: ignore[misc,valid-type]
        def __init__(self, context: ValidationContext) -> None:
            spreads = _Spreads()
            visit(context.document, spreads)
            defined = {
                d.name.value
                for d in context.document.definitions
                if isinstance(d, FragmentDefinitionNode)
            }
            if spreads.names <= defined:
                super().__init__(context)
            else:
                ValidationRule.__init__(self, context)

    return KnownFragmentsOnly


class DepthLimit(QueryDepthLimiter):
    """Documents nested deeper than API["GRAPHQL_MAX_DEPTH"] are refused."""

    def __init__(self) -> None:
        limit = settings.API["GRAPHQL_MAX_DEPTH"]
        super().__init__(max_depth=limit)
        self.validation_rules = [
            _coded(_known_fragments_only(rule), "DEPTH_LIMIT_EXCEEDED", limit=limit)
            for rule in self.validation_rules
        ]


class AliasLimit(MaxAliasesLimiter):
    """Documents with more than API["GRAPHQL_MAX_ALIASES"] aliases are refused: aliases are
    how one request asks for the same list many times."""

    def __init__(self) -> None:
        limit = settings.API["GRAPHQL_MAX_ALIASES"]
        super().__init__(max_alias_count=limit)
        self.validation_rules = [
            _coded(rule, "ALIAS_LIMIT_EXCEEDED", limit=limit) for rule in self.validation_rules
        ]


class TokenLimit(MaxTokensLimiter):
    """The parser stops after API["GRAPHQL_MAX_TOKENS"] tokens (a syntax error saying so), so
    a huge document costs little before it is refused."""

    def __init__(self) -> None:
        super().__init__(max_token_count=settings.API["GRAPHQL_MAX_TOKENS"])


# --- cost ---------------------------------------------------------------------------------


def _fields(
    selection_set: SelectionSetNode | None,
    fragments: Mapping[str, FragmentDefinitionNode],
    seen: frozenset[str] = frozenset(),
) -> Iterator[FieldNode]:
    """The fields of a selection set, fragments included (each fragment once per path)."""
    for selection in selection_set.selections if selection_set else ():
        if isinstance(selection, FieldNode):
            yield selection
        elif isinstance(selection, InlineFragmentNode):
            yield from _fields(selection.selection_set, fragments, seen)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            if name in fragments and name not in seen:
                yield from _fields(fragments[name].selection_set, fragments, seen | {name})


class _Cost:
    def __init__(self, fragments, variables: Mapping[str, Any], defaults: Mapping[str, Any]):
        self.fragments = fragments
        self.variables = variables
        self.defaults = defaults
        self.default_size = settings.API["DEFAULT_PAGE_SIZE"]
        self.max_size = settings.API["MAX_PAGE_SIZE"]

    def first(self, field: FieldNode) -> int:
        """The page size a list field asks for, as its resolver will use it."""
        value: Any = None
        for argument in field.arguments or ():
            if argument.name.value != "first":
                continue
            if isinstance(argument.value, IntValueNode):
                value = int(argument.value.value)
            elif isinstance(argument.value, VariableNode):
                name = argument.value.name.value
                value = self.variables.get(name, self.defaults.get(name))
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            # A bad value is refused by the resolver; absent means the default page.
            return self.default_size if value is None else 1
        return min(value, self.max_size)

    def rows(self, selection_set, parent: GraphQLObjectType, above: int) -> int:
        """The most rows the fields of ``selection_set`` can read, ``above`` rows up."""
        total = 0
        for field in _fields(selection_set, self.fragments):
            definition = parent.fields.get(field.name.value)
            if definition is None:
                continue  # introspection or an unknown field (refused by validation)
            named = get_named_type(definition.type)
            if not isinstance(named, GraphQLObjectType):
                continue  # a value: read with its row
            if "first" in definition.args:  # a list
                rows = above * self.first(field)
                total += rows
            elif is_list_type(get_nullable_type(definition.type)):
                rows = above  # a page's items: counted by the page's `first`
            elif "id" in named.fields:  # one row per row above
                rows = above
                total += rows
            else:  # pageInfo and the like: no rows of their own
                rows = above
            total += self.rows(field.selection_set, named, rows)
        return total


def _cost_rule(variables: Mapping[str, Any], operation_name: str | None) -> type[ValidationRule]:
    class CostRule(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            limit = settings.API["GRAPHQL_MAX_COST"]
            query_type = context.schema.query_type
            definitions = context.document.definitions
            fragments = {
                d.name.value: d for d in definitions if isinstance(d, FragmentDefinitionNode)
            }
            for operation in definitions:
                if not isinstance(operation, OperationDefinitionNode) or query_type is None:
                    continue
                if operation_name and (operation.name and operation.name.value) != operation_name:
                    continue
                defaults = {
                    d.variable.name.value: value_from_ast_untyped(d.default_value)
                    for d in operation.variable_definitions or ()
                    if d.default_value is not None
                }
                cost = _Cost(fragments, variables, defaults).rows(
                    operation.selection_set, query_type, 1
                )
                if cost > limit:
                    context.report_error(
                        GraphQLError(
                            f"This query may read up to {cost} rows; the cost limit is {limit} "
                            "rows per request. Ask for fewer rows with `first` on its lists "
                            "and nested lists, or split it.",
                            operation,
                            extensions={
                                "code": "COST_LIMIT_EXCEEDED",
                                "cost": cost,
                                "limit": limit,
                            },
                        )
                    )

    return CostRule


class CostLimit(SchemaExtension):
    """Documents that may read more than API["GRAPHQL_MAX_COST"] rows are refused.

    A rule per request, because the cost depends on the variables, which validation rules
    are not given.
    """

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context
        rule = _cost_rule(context.variables or {}, context.operation_name)
        context.validation_rules = (*context.validation_rules, rule)
        yield


LIMITS = [TokenLimit, DepthLimit, AliasLimit, CostLimit]
