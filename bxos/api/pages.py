"""A list page and its disclosure row in one statement, compiled once per shape.

The hottest path of the API is a vendor walking a list page by page (docs/benchmarks.md, B3).
Building the page's queryset through the gate and compiling it costs more than running it, and
the disclosure row was a second round trip. Here:

- The ORM still builds every page's SQL: the gate (``restrict`` with the client as actor), the
  field profile, the filters and the key-set condition are the same code as everywhere else.
  What is kept is the compiled text, per *shape*: the resource, the selected fields, the gate's
  inputs (district and allowed schools), the page's kind (by id or by change version, with or
  without a lower bound and a cursor) and the page size. The gate is a pure function of its
  inputs, so a client whose allowed schools change gets a new shape at once; nothing is cached
  across a permission change. Pages with resource filters or a client acting for a person are
  compiled each time (their shapes are many and rare).
- The key-set values (cursor, window) are the statement's last parameters: Django puts a
  filter's parameters in the order the filters were added, and ``apply_page`` adds the page's
  conditions last. A shape is cached only after checking that its compiled parameters end with
  exactly the page's values, so a change in how Django orders them costs speed, not
  correctness.
- The page is wrapped in a data-modifying CTE that writes the disclosure row (34 CFR 99.32)
  from the rows actually sent (the extra row that tells whether there is a next page is left
  out) in the same statement: the row exists if and only if the data left the database.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from django.core.exceptions import EmptyResultSet
from django.db import connection
from django.db.models import QuerySet

from bxos.api.disclosure import INSERT_INTO
from bxos.api.paging import Page
from bxos.common.db import prepared_cursor

# Shapes are few (clients x resources x field sets x page kinds); the bound only stops a
# process from growing without limit if something unusual varies (page sizes, say).
_MAX_SHAPES = 2048

_DISCLOSE = (
    INSERT_INTO + "SELECT now(), %s::bigint, %s::bigint, %s::text, %s::text, %s::text, %s::text, "
    "array_agg(DISTINCT s.student ORDER BY s.student), count(DISTINCT s.student), %s::text, "
    "%s::bigint "
    "FROM (SELECT {student} AS student FROM page ORDER BY {order} LIMIT {sent}) AS s "
    "WHERE s.student IS NOT NULL HAVING count(s.student) > 0"
)


@dataclass(frozen=True)
class PageStatement:
    """A compiled page: SQL with the gate's parameters fixed, the page's values last."""

    sql: str | None  # None: nothing can match (the ORM's EmptyResultSet), no query at all
    fixed: tuple  # the parameters before the page's own (the gate's, for a cached shape)
    names: tuple[str, ...]  # API field names, in column order
    converters: tuple  # (column, converters, expression): the ORM's from-database conversion
    student_at: int | None
    discloses: bool

    def run(self, page_values: list, disclosure: list) -> tuple[list[dict], list[int]]:
        """The page's rows (``limit + 1`` at most) and their students' ids; the disclosure row
        is written by the same statement when the page carries student data.

        ``page_values``: this page's own parameters (``page_values(page)``) for a reused
        shape, nothing for a statement compiled for this very page (its ``fixed`` has them).
        """
        if self.sql is None:
            return [], []
        # The page's SELECT comes first in the text, the disclosure's INSERT after it.
        params = [*self.fixed, *page_values, *(disclosure if self.discloses else ())]
        with prepared_cursor() as cursor:
            cursor.execute(self.sql, params)
            rows = cursor.fetchall()
        if self.converters:
            rows = [list(row) for row in rows]
            for row in rows:
                for position, converters, expression in self.converters:
                    value = row[position]
                    for convert in converters:
                        value = convert(value, expression, connection)
                    row[position] = value
        names, student_at = self.names, self.student_at
        data = [dict(zip(names, row, strict=False)) for row in rows]
        students = [row[student_at] for row in rows] if student_at is not None else []
        return data, students


def page_values(page: Page) -> list:
    """The page's own parameters, in the order ``apply_page`` adds its conditions."""
    values: list = []
    if page.by_change_version:
        if page.min_cv is not None:
            values.append(page.min_cv)
        values.append(page.max_cv)
        if page.after:
            cv, last_id = page.after
            values.extend([cv, cv, last_id])
    elif page.after:
        values.append(page.after[0])
    return values


def page_shape(page: Page) -> tuple:
    return (page.by_change_version, page.min_cv is not None, page.after is not None, page.limit)


def compile_page(
    queryset: QuerySet,
    *,
    fields: dict[str, str],
    student_path: str | None,
    page: Page,
    disclose: bool,
) -> tuple[PageStatement, bool]:
    """``queryset`` (gated, filtered, paged) as a statement, and whether it may be reused for
    other pages of the same shape (its parameters end with this page's values, which are then
    left out of ``fixed``; otherwise ``fixed`` holds them all and the statement is run once,
    with no page values appended)."""
    names = tuple(fields)
    paths = list(fields.values())
    student_at = None
    if student_path is not None:
        if student_path not in paths:
            paths.append(student_path)
        student_at = paths.index(student_path)
    sliced = queryset.values_list(*paths)[: page.limit + 1]
    compiler = sliced.query.get_compiler(connection=connection)
    try:
        sql, params = compiler.as_sql()
    except EmptyResultSet:  # the gate (or a filter) matches nothing: no statement to run
        return PageStatement(None, (), names, (), student_at, False), False
    columns = [column for column, _, _ in compiler.select[: compiler.col_count]]
    converters = tuple(
        (position, tuple(convs), expression)
        for position, (convs, expression) in compiler.get_converters(columns).items()
    )
    values = page_values(page)
    params = list(params)
    reusable = len(params) >= len(values) and params[len(params) - len(values) :] == values
    fixed = tuple(params[: len(params) - len(values)]) if reusable else tuple(params)
    discloses = disclose and student_at is not None
    if discloses:
        order = (
            f"c{names.index('changeVersion')}, c{names.index('id')}"
            if page.by_change_version
            else f"c{names.index('id')}"
        )
        column_list = ", ".join(f"c{i}" for i in range(len(paths)))
        disclosed = _DISCLOSE.format(student=f"c{student_at}", order=order, sent=page.limit)
        sql = (
            f"WITH page ({column_list}) AS MATERIALIZED ({sql}), disclosed AS ({disclosed}) "
            f"SELECT * FROM page ORDER BY {order}"
        )
    statement = PageStatement(
        sql=sql,
        fixed=fixed,
        names=names,
        converters=converters,
        student_at=student_at,
        discloses=discloses,
    )
    return statement, reusable


_shapes: OrderedDict[tuple, PageStatement] = OrderedDict()


def cached_statement(key: tuple) -> PageStatement | None:
    statement = _shapes.get(key)
    if statement is not None:
        _shapes.move_to_end(key)
    return statement


def remember_statement(key: tuple, statement: PageStatement) -> None:
    _shapes[key] = statement
    _shapes.move_to_end(key)
    while len(_shapes) > _MAX_SHAPES:
        _shapes.popitem(last=False)


def clear_statements() -> None:
    """Forget every compiled shape in this process (tests, or after a migration)."""
    _shapes.clear()
