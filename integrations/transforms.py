"""Mapping transformations: rules that turn staged source fields into hub fields, compiled to SQL.

The sync pipeline stages source records into a PostgreSQL table whose columns are the source
fields (all ``text``) and computes every hub field with one SQL expression over that table,
set-wise. This module turns an admin-edited mapping (a list of rules) into those expressions.

A rule::

    {"target": "birth_date", "source": "birthDate",
     "transforms": [{"op": "trim"}, {"op": "parse_date", "format": "%m/%d/%Y"}]}

``source`` is a field name, a list of field names (joined with " ", or with the separator of a
leading ``concatenate`` op) or ``None`` (the value comes from ``constant``/``default``/
``concatenate``). Ops apply in order, each to the previous value (positions in messages are
1-based):

- ``trim`` (whitespace, including no-break spaces); ``case`` ``to``: upper, lower, title;
- ``parse_date`` ``format``: strptime directives %Y %y %m %d %b %B %% and literal text; gives
  ISO ``YYYY-MM-DD``, agreeing with Python's ``datetime.strptime`` (the tests compare them);
- ``crosswalk`` ``values`` (an object) or ``table`` (a name the caller supplies), ``otherwise``:
  error (default), keep or empty; exact match on the current value;
- ``default`` / ``constant`` ``value``; ``concatenate`` ``sources``, ``separator`` (" ");
- ``split`` ``separator`` (","), ``index`` (0-based, negative from the end);
- ``regex_extract`` ``pattern``, ``group`` (default: 1 if the pattern has a group, else the
  whole match), ``flags``, ``required``; ``replace`` ``pattern``, ``replacement`` (``\\1``
  back-references), ``flags`` (default "g": every occurrence).

Semantics the SQL keeps everywhere:

- Values are text; NULL and '' both mean *empty*, and every compiled expression yields NULL
  (never '') for empty, so later ops only test ``IS NULL``.
- A value that cannot be transformed (a non-date for ``parse_date``, a value missing from an
  ``error`` crosswalk, a ``required`` regex without a match) becomes empty in ``value_sql`` and
  gives a message in ``error_sql``: a record error for the pipeline, never a failed statement.
- Empty input never gives an error (``default`` handles missing values).

Cost: the expressions run over millions of rows, so no op re-evaluates a costly sub-expression.
PostgreSQL does no common-subexpression elimination, so where an op needs a costly value twice
(the pieces of a parsed date, a ``keep`` crosswalk after a regex) it is evaluated once in a
scalar sub-select ``(SELECT f(b.v, b.v) FROM (SELECT <costly> AS v OFFSET 0) b)``: OFFSET 0 stops
the planner from flattening it back into duplicates, and the sub-plan costs ~0.2 us a row
against several microseconds for a regex with capture groups (measured on PostgreSQL 18, 1M
rows). So the expressions contain scalar sub-selects: use them in SELECT/UPDATE/INSERT ...
SELECT, not in index or generated-column definitions.

The SQL has no placeholders but contains whatever ``%`` characters the rules hold (formats such
as ``%m/%d/%Y`` in messages): execute it without parameters, or double every ``%`` when the
statement also takes parameters (as :func:`preview` does).

Regular expressions are PostgreSQL's (ARE), not Python's: :func:`validate_rules` compiles them
in PostgreSQL (``using``), so a pattern that would fail the statement is reported when the
mapping is saved.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from psycopg import sql

__all__ = [
    "CompiledField",
    "MappingError",
    "compile_rules",
    "preview",
    "source_fields",
    "validate_rules",
]

#: Crosswalks with at least this many entries compile to a jsonb lookup instead of a CASE.
LARGE_CROSSWALK = 50
#: Error messages quote at most this many characters of the offending value.
MESSAGE_VALUE_CHARS = 200
#: Characters ``trim`` removes: ASCII whitespace and the no-break space spreadsheets leave
#: (written with escapes so the SQL stays readable in logs; constant-folded once per statement).
TRIM_CHARS_SQL = "(E' \\t\\n\\r\\x0B\\x0C' || chr(160))"
#: PostgreSQL regular expression flags (``g`` only where the function takes it).
REGEX_FLAGS = frozenset("bceimnpqstwx")

_OP_PARAMS: dict[str, frozenset[str]] = {
    "trim": frozenset(),
    "case": frozenset({"to"}),
    "parse_date": frozenset({"format"}),
    "crosswalk": frozenset({"values", "table", "otherwise"}),
    "default": frozenset({"value"}),
    "constant": frozenset({"value"}),
    "concatenate": frozenset({"sources", "separator"}),
    "split": frozenset({"separator", "index"}),
    "regex_extract": frozenset({"pattern", "group", "required", "flags"}),
    "replace": frozenset({"pattern", "replacement", "flags"}),
}
_CASES = {"upper": "upper", "lower": "lower", "title": "initcap"}
_MAX_INDEX = 2**31 - 1  # split_part and regexp_substr take int4 positions
_OTHERWISE = ("error", "keep", "empty")


class MappingError(ValueError):
    """Raised by validate_rules with every problem, each naming the rule (target), the op (by
    position) and the parameter."""

    problems: list[str]

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        head = "1 problem" if count == 1 else f"{count} problems"
        super().__init__(f"mapping has {head}: " + "; ".join(self.problems))


@dataclass(frozen=True)
class CompiledField:
    """One hub field's SQL: its value, its record error (or None when no op can fail) and the
    source fields it reads."""

    target: str
    value_sql: str  # SQL text expression producing text (NULL for empty)
    error_sql: str | None  # NULL when fine, else a message naming target, source(s), value, reason
    sources: tuple[str, ...]  # source fields used


# --- date formats ------------------------------------------------------------------------------

_MONTHS = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip
# Python's strptime patterns for these directives (Lib/_strptime.py), written for ARE.
_DIRECTIVES: dict[str, tuple[str, str]] = {
    "Y": ("year", "([0-9]{4})"),
    "y": ("year", "([0-9]{2})"),
    "m": ("month", "(1[0-2]|0[1-9]|[1-9])"),
    "d": ("day", "(3[01]|[12][0-9]|0[1-9]|[1-9]| [1-9])"),
    "b": ("month", "(" + "|".join(m[:3] for m in _MONTHS) + ")"),
    "B": ("month", "(" + "|".join(_MONTHS) + ")"),
}
_SUPPORTED = "%Y %y %m %d %b %B %%"
# position(abbreviation in this) is 1, 4, ..., 34: (position + 2) / 3 is the month number. No
# abbreviation occurs in it at any other offset, so position() finds the right one.
_MONTH_ABBREVIATIONS = "".join(m[:3] for m in _MONTHS)


@dataclass(frozen=True)
class _DateFormat:
    """A strptime format translated for PostgreSQL (see :func:`_translate_date_format`)."""

    regex: str  # anchored ARE, one capture group per directive; matched case-insensitively
    check: str  # the same without capture groups (a cheap test: no sub-match bookkeeping)
    template: str  # regexp_replace template giving "<year>-<month>-<day>"
    year: str  # "Y" or "y"
    month: str  # "m", "b" or "B"
    # When the fields are separated by one and the same literal free of letters, digits and
    # whitespace (%m/%d/%Y, %d-%b-%y, %d.%m.%Y ...): the separator, the lengths of the literal
    # text before the first and after the last field, and the components in field order. The
    # fields can then be cut out with split_part once the check matched, which costs a tenth
    # of a regex with capture groups.
    split: tuple[str, int, int, tuple[str, ...]] | None


def _translate_date_format(fmt: str) -> tuple[_DateFormat | None, list[str]]:
    """strptime format -> anchored ARE plus a template that reorders the parts as Y-M-D.

    Literal characters match themselves (case-insensitively, as in Python, whose strptime
    compiles the whole format with IGNORECASE); a run of whitespace matches any whitespace.
    """
    problems: list[str] = []
    tokens: list[tuple[str, str]] = []  # ("field", directive) | ("text", literal) | ("space", "")
    seen: set[str] = set()
    i = 0
    while i < len(fmt):
        ch = fmt[i]
        if ch == "%":
            if i + 1 >= len(fmt):
                problems.append(f"ends with a lone '%' (supported directives: {_SUPPORTED})")
                break
            directive = fmt[i + 1]
            i += 2
            if directive == "%":
                tokens.append(("text", "%"))
            elif directive in _DIRECTIVES:
                component = _DIRECTIVES[directive][0]
                if component in seen:
                    problems.append(f"has the {component} twice (%{directive})")
                seen.add(component)
                tokens.append(("field", directive))
            else:
                problems.append(
                    f"unsupported directive %{directive} (supported directives: {_SUPPORTED})"
                )
            continue
        if ch.isspace():
            while i < len(fmt) and fmt[i].isspace():
                i += 1
            tokens.append(("space", ""))
            continue
        tokens.append(("text", ch))
        i += 1
    missing = [c for c in ("year", "month", "day") if c not in seen]
    if missing:
        problems.append(
            f"has no {' and no '.join(missing)} (a date format needs %Y or %y, %m, %b or %B, "
            "and %d)"
        )
    if problems:
        return None, problems

    regex, check, groups = [], [], {}
    for kind, value in tokens:
        if kind == "field":
            component, pattern = _DIRECTIVES[value]
            groups[component] = (len(groups) + 1, value)
            regex.append(pattern)
            check.append("(?:" + pattern[1:])
        elif kind == "space":
            regex.append(r"\s+")
            check.append(r"\s+")
        else:
            # In an ARE a backslash before a non-alphanumeric character makes it literal, and
            # an alphanumeric character is literal by itself (a backslash would make it an escape).
            literal = value if value.isalnum() else "\\" + value
            regex.append(literal)
            check.append(literal)
    template = "-".join(f"\\{groups[c][0]}" for c in ("year", "month", "day"))
    return (
        _DateFormat(
            regex="".join(regex),
            check="".join(check),
            template=template,
            year=groups["year"][1],
            month=groups["month"][1],
            split=_split_plan(tokens),
        ),
        [],
    )


def _split_plan(tokens: list[tuple[str, str]]) -> tuple[str, int, int, tuple[str, ...]] | None:
    """The split_part plan for a format whose fields are all separated by the same literal."""
    if any(kind == "space" for kind, _ in tokens):
        return None  # a whitespace run has no fixed text to split on
    fields = [n for n, (kind, _) in enumerate(tokens) if kind == "field"]
    gaps = {"".join(value for _, value in tokens[a + 1 : b]) for a, b in itertools.pairwise(fields)}
    if len(gaps) != 1:
        return None
    separator = gaps.pop()
    if not separator or any(c.isalnum() or c.isspace() for c in separator):
        return None  # fields hold letters, digits and (a space-padded %d) a space
    prefix = sum(len(value) for _, value in tokens[: fields[0]])
    suffix = sum(len(value) for _, value in tokens[fields[-1] + 1 :])
    order = tuple(_DIRECTIVES[tokens[n][1]][0] for n in fields)
    return separator, prefix, suffix, order


# --- regular expressions -----------------------------------------------------------------------


def _count_groups(pattern: str) -> int | None:
    """Capture groups in an ARE, or None when this simple scan cannot tell (expanded syntax).

    Counts '(' not followed by '?', skipping escapes and bracket expressions; a ``***=``
    pattern is a literal string.
    """
    if pattern.startswith("***="):
        return 0
    if pattern.startswith("***:"):
        pattern = pattern[4:]
    if re.match(r"\(\?[a-z]*x", pattern):
        return None  # expanded syntax: '#' comments may hold parentheses
    count, i, n = 0, 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":
            i += 1
            if i < n and pattern[i] == "^":
                i += 1
            if i < n and pattern[i] == "]":
                i += 1  # a leading ']' is a member, not the end
            while i < n and pattern[i] != "]":
                if pattern[i] == "[" and i + 1 < n and pattern[i + 1] in ":.=":
                    end = pattern.find(pattern[i + 1] + "]", i + 2)
                    i = n if end < 0 else end + 2
                    continue
                i += 2 if pattern[i] == "\\" else 1
            i += 1
            continue
        if ch == "(" and not pattern.startswith("(?", i):
            count += 1
        i += 1
    return count


# --- validation --------------------------------------------------------------------------------


class _Problems:
    """Collects problems, each prefixed with where it is (1-based rule and transform numbers)."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(
        self,
        rule_no: int,
        target: Any,
        message: str,
        *,
        op_no: int | None = None,
        op: Any = None,
        param: str | None = None,
    ) -> None:
        where = f"rule {rule_no}"
        if isinstance(target, str) and target:
            where += f" ({target})"
        if op_no is not None:
            where += f", transform {op_no}"
            if isinstance(op, str) and op:
                where += f" ({op})"
        if param is not None:
            where += f", parameter {param!r}"
        self.items.append(f"{where}: {message}")


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and "\x00" not in value


def _text_problem(value: Any, *, nonempty: bool = False) -> str | None:
    if not isinstance(value, str):
        return f"must be text, not {type(value).__name__}"
    if "\x00" in value:
        return "must not contain a NUL character"
    if nonempty and not value:
        return "must not be empty"
    return None


def _field_list_problem(value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return "must be a non-empty list of field names"
    bad = [v for v in value if not _is_text(v) or not v]
    if bad:
        return f"must be a list of field names; {bad[0]!r} is not one"
    return None


def _crosswalk_problem(mapping: Any) -> str | None:
    if not isinstance(mapping, dict):
        return (
            f"must be an object mapping source values to hub values, not {type(mapping).__name__}"
        )
    for key, value in mapping.items():
        if not _is_text(key):
            return f"key {key!r} must be text"
        if key == "":
            return "key '' can never match (empty values stay empty; use a default op)"
        if not _is_text(value):
            return f"value for {key!r} must be text, not {type(value).__name__}"
    return None


def validate_rules(
    rules: list[dict],
    *,
    targets: set[str] | None = None,
    crosswalk_names: set[str] = frozenset(),
    using: str | None = "default",
) -> None:
    """Raise :class:`MappingError` listing every problem in ``rules``.

    Checks the rule shape, unknown ops and unknown parameters (a misspelt ``seperator`` would
    otherwise silently fall back to the default), missing or invalid parameters (date format
    directives, separators, indexes, crosswalk tables not in ``crosswalk_names``), duplicate
    targets and targets not in ``targets`` (when given). Regular expressions are compiled in
    PostgreSQL on the ``using`` connection (inside a savepoint), unless ``using`` is None.
    """
    problems = _Problems()
    patterns: list[tuple[int, Any, int, str, str, str, str]] = []  # for the PostgreSQL check
    if not isinstance(rules, list):
        raise MappingError([f"the mapping must be a list of rules, not {type(rules).__name__}"])
    seen: dict[str, int] = {}
    for rule_no, rule in enumerate(rules, start=1):
        if not isinstance(rule, dict):
            problems.add(rule_no, None, f"must be an object, not {type(rule).__name__}")
            continue
        target = rule.get("target")
        if (msg := _text_problem(target, nonempty=True)) is not None:
            problems.add(rule_no, None, msg, param="target")
        elif target in seen:
            problems.add(rule_no, target, f"duplicate target (also rule {seen[target]})")
        else:
            seen[target] = rule_no
            if targets is not None and target not in targets:
                known = ", ".join(sorted(targets)) or "none"
                problems.add(rule_no, target, f"unknown target field (known: {known})")
        source = rule.get("source")
        if source is not None and not isinstance(source, list):
            if (msg := _text_problem(source, nonempty=True)) is not None:
                problems.add(
                    rule_no,
                    target,
                    msg + " (a field name, a list of them, or null)",
                    param="source",
                )
        elif isinstance(source, list) and (msg := _field_list_problem(source)) is not None:
            problems.add(rule_no, target, msg, param="source")
        transforms = rule.get("transforms", [])
        if transforms is None:
            transforms = []
        if not isinstance(transforms, list):
            problems.add(rule_no, target, "must be a list of transforms", param="transforms")
            continue
        supplies_value = False
        for op_no, spec in enumerate(transforms, start=1):
            if not isinstance(spec, dict):
                problems.add(
                    rule_no, target, f"must be an object, not {type(spec).__name__}", op_no=op_no
                )
                continue
            op = spec.get("op")
            if not isinstance(op, str) or op not in _OP_PARAMS:
                problems.add(
                    rule_no,
                    target,
                    f"unknown op {op!r} (known: {', '.join(_OP_PARAMS)})",
                    op_no=op_no,
                )
                continue
            for param in sorted(set(spec) - _OP_PARAMS[op] - {"op"}):
                allowed = ", ".join(sorted(_OP_PARAMS[op])) or "none"
                problems.add(
                    rule_no,
                    target,
                    f"unknown parameter (allowed: {allowed})",
                    op_no=op_no,
                    op=op,
                    param=param,
                )

            def add(
                message: str, param: str, _op=op, _no=op_no, _rule=rule_no, _target=target
            ) -> None:
                problems.add(_rule, _target, message, op_no=_no, op=_op, param=param)

            if op in ("default", "constant", "concatenate"):
                supplies_value = True
            _validate_op(op, spec, op_no, source, crosswalk_names, add)
            if op in ("regex_extract", "replace") and _is_text(spec.get("pattern")):
                flags = spec.get("flags", "g" if op == "replace" else "")
                allowed = REGEX_FLAGS | {"g"} if op == "replace" else REGEX_FLAGS
                # Unknown flags are reported above; PostgreSQL would only repeat it.
                if _is_text(flags) and set(flags) <= allowed:
                    patterns.append(
                        (
                            rule_no,
                            target,
                            op_no,
                            op,
                            spec["pattern"],
                            flags,
                            spec.get("replacement", "") if op == "replace" else "",
                        )
                    )
        if source is None and not supplies_value:
            problems.add(
                rule_no,
                target,
                "has no source and no constant, default or "
                "concatenate transform: its value would always be empty",
                param="source",
            )
    if using is not None and patterns:
        for rule_no, target, op_no, op, pattern, reason in _regex_errors(patterns, using):
            problems.add(
                rule_no,
                target,
                f"PostgreSQL rejects {pattern!r}: {reason}",
                op_no=op_no,
                op=op,
                param="pattern",
            )
    if problems.items:
        raise MappingError(problems.items)


def _validate_op(
    op: str,
    spec: dict,
    op_no: int,
    source: Any,
    crosswalk_names: set[str],
    add: Callable[[str, str], None],
) -> None:
    """Check one op's parameters; report each problem through ``add(message, parameter)``."""
    if op == "case":
        if not isinstance(spec.get("to"), str) or spec["to"] not in _CASES:
            add(f"must be one of {', '.join(_CASES)}, not {spec.get('to')!r}", "to")
    elif op == "parse_date":
        fmt = spec.get("format")
        if (msg := _text_problem(fmt, nonempty=True)) is not None:
            add(msg + " (a strptime format such as '%m/%d/%Y')", "format")
        else:
            for msg in _translate_date_format(fmt)[1]:
                add(f"{fmt!r} {msg}", "format")
    elif op == "crosswalk":
        has_values, has_table = "values" in spec, "table" in spec
        if has_values == has_table:
            add(
                "give either 'values' (an object) or 'table' (a crosswalk name), not "
                + ("both" if has_values else "neither"),
                "values",
            )
        if has_values and (msg := _crosswalk_problem(spec["values"])) is not None:
            add(msg, "values")
        elif has_values and not spec["values"]:
            add("must not be empty", "values")
        if has_table:
            table = spec["table"]
            if (msg := _text_problem(table, nonempty=True)) is not None:
                add(msg, "table")
            elif table not in crosswalk_names:
                known = ", ".join(sorted(crosswalk_names)) or "none"
                add(f"unknown crosswalk table {table!r} (known: {known})", "table")
        otherwise = spec.get("otherwise", "error")
        if not isinstance(otherwise, str) or otherwise not in _OTHERWISE:
            add(f"must be one of {', '.join(_OTHERWISE)}, not {otherwise!r}", "otherwise")
    elif op in ("default", "constant"):
        if "value" not in spec:
            add("is required", "value")
        elif (msg := _text_problem(spec["value"])) is not None:
            add(msg, "value")
    elif op == "concatenate":
        leading = op_no == 1 and isinstance(source, list)
        if "sources" in spec:
            if (msg := _field_list_problem(spec["sources"])) is not None:
                add(msg, "sources")
            elif leading and spec["sources"] != source:
                add(
                    f"{spec['sources']!r} differs from the rule's source {source!r} (leave it "
                    "out to join the rule's source fields)",
                    "sources",
                )
        elif not leading:
            add(
                "is required (it may be left out only by a first concatenate on a rule whose "
                "source is a list)",
                "sources",
            )
        if (msg := _text_problem(spec.get("separator", " "))) is not None:
            add(msg, "separator")
    elif op == "split":
        if (msg := _text_problem(spec.get("separator", ","), nonempty=True)) is not None:
            add(msg, "separator")
        index = spec.get("index")
        if "index" not in spec:
            add("is required (0-based; negative counts from the end)", "index")
        elif not isinstance(index, int) or isinstance(index, bool):
            add(f"must be an integer, not {type(index).__name__}", "index")
        elif not -_MAX_INDEX <= index < _MAX_INDEX:
            add(f"must be between {-_MAX_INDEX} and {_MAX_INDEX - 1}", "index")
    elif op in ("regex_extract", "replace"):
        if (msg := _text_problem(spec.get("pattern"), nonempty=True)) is not None:
            add(msg, "pattern")
        allowed = REGEX_FLAGS | {"g"} if op == "replace" else REGEX_FLAGS
        flags = spec.get("flags", "g" if op == "replace" else "")
        if (msg := _text_problem(flags)) is not None:
            add(msg, "flags")
        elif bad := sorted(set(flags) - allowed):
            add(f"unknown flag(s) {''.join(bad)!r} (allowed: {''.join(sorted(allowed))})", "flags")
        if op == "replace":
            if (msg := _text_problem(spec.get("replacement", ""))) is not None:
                add(msg, "replacement")
        else:
            if "required" in spec and not isinstance(spec["required"], bool):
                add("must be true or false", "required")
            group = spec.get("group")
            if "group" in spec and (
                not isinstance(group, int) or isinstance(group, bool) or not 0 <= group < _MAX_INDEX
            ):
                add(f"must be an integer >= 0 (0 is the whole match), not {group!r}", "group")
            elif "group" in spec and _is_text(spec.get("pattern")):
                count = _count_groups(spec["pattern"])
                if count is not None and group > count:
                    add(f"is {group} but the pattern has {count} capture group(s)", "group")


def _regex_errors(
    patterns: list[tuple[int, Any, int, str, str, str, str]], using: str
) -> list[tuple[int, Any, int, str, str, str]]:
    """Compile the patterns in PostgreSQL: all in one statement, then one by one if it fails."""
    from django.db import DatabaseError, connections, transaction

    def probe(items: list[tuple[int, Any, int, str, str, str, str]]) -> str | None:
        calls = []
        for *_, op, pattern, flags, replacement in items:
            if op == "replace":
                calls.append(
                    f"regexp_replace('', {_lit(pattern)}, {_lit(replacement)}, {_lit(flags)})"
                )
            else:
                calls.append(f"regexp_like('', {_lit(pattern)}, {_lit(flags)})::text")
        statement = "SELECT " + ", ".join(calls)
        try:
            with transaction.atomic(using=using), connections[using].cursor() as cursor:
                cursor.execute(statement)  # no parameters: '%' in patterns stays as is
        except DatabaseError as exc:
            return str(exc).strip().splitlines()[0]
        return None

    if probe(patterns) is None:
        return []
    errors = []
    for item in patterns:
        if (reason := probe([item])) is not None:
            rule_no, target, op_no, op, pattern, _flags, _replacement = item
            errors.append((rule_no, target, op_no, op, pattern, reason))
    return errors


# --- compilation -------------------------------------------------------------------------------


def _lit(value: str) -> str:
    """A safely quoted SQL string literal (psycopg writes E'...' when there are backslashes)."""
    return sql.Literal(value).as_string(None).strip()


def _text_lit(value: str) -> str:
    """A text literal, NULL for '' (the compiled SQL represents empty as NULL)."""
    return _lit(value) if value else "NULL::text"


@dataclass(frozen=True)
class _Expr:
    """A compiled value so far: its SQL, and whether referencing it twice would be costly."""

    sql: str
    costly: bool = False

    def should_bind(self) -> bool:
        # Short, regex-free expressions are cheaper to repeat than a sub-plan (~0.2 us a row).
        return self.costly or len(self.sql) > 400


class _Compiler:
    """Compiles the rules of one mapping; numbers its sub-select aliases uniquely."""

    def __init__(self, column: Callable[[str], str], crosswalks: dict[str, dict[str, str]]):
        self.column = column
        self.crosswalks = crosswalks
        self._aliases = itertools.count(1)

    def bind(self, expr: _Expr, body: Callable[[str], str]) -> str:
        """``body(ref)`` where ``ref`` refers to ``expr``'s value, evaluated once per row."""
        if not expr.should_bind():
            return body(f"({expr.sql})")
        alias = f"_tx{next(self._aliases)}"
        return f"(SELECT {body(f'{alias}.v')} FROM (SELECT {expr.sql} AS v OFFSET 0) AS {alias})"

    def field(self, name: str) -> str:
        return f"NULLIF({self.column(name)}, '')"

    def join(self, fields: list[str], separator: str) -> _Expr:
        # concat_ws skips NULLs; NULLIF turns '' into NULL so empty fields are skipped too.
        args = ", ".join(self.field(f) for f in fields)
        return _Expr(f"NULLIF(concat_ws({_lit(separator)}, {args}), '')")

    def compile(self, rule: dict) -> CompiledField:
        target: str = rule["target"]
        source = rule.get("source")
        transforms: list[dict] = list(rule.get("transforms") or [])
        sources: list[str] = []
        if isinstance(source, list):
            separator = " "
            if transforms and transforms[0]["op"] == "concatenate":
                separator = transforms[0].get("separator", " ")
                transforms = transforms[1:]
                offset = 2
            else:
                offset = 1
            current = self.join(source, separator)
            lineage: tuple[str, ...] = tuple(source)
            sources.extend(source)
        elif source is None:
            current, lineage, offset = _Expr("NULL::text"), (), 1
        else:
            current, lineage, offset = _Expr(self.field(source)), (source,), 1
            sources.append(source)
        errors: list[str] = []
        for op_no, spec in enumerate(transforms, start=offset):
            op = spec["op"]
            if op == "concatenate":
                sources.extend(spec["sources"])
                lineage = tuple(spec["sources"])
            step = getattr(self, f"op_{op}")
            current, error = step(current, spec, _Message(target, lineage, op_no))
            if op == "constant":
                lineage = ()
            if error is not None:
                errors.append(error)
        error_sql = None
        if len(errors) == 1:
            error_sql = errors[0]
        elif errors:
            error_sql = "COALESCE(" + ", ".join(errors) + ")"  # the first failing op's message
        return CompiledField(
            target=target,
            value_sql=current.sql,
            error_sql=error_sql,
            sources=tuple(dict.fromkeys(sources)),
        )

    # Each op: (value so far, its parameters, message builder) -> (new value, error SQL or None).
    # Error SQL has the form CASE WHEN <failed> THEN <message> END; the message concatenates the
    # value with ||, so it is NULL for empty input, and is only evaluated on failing rows.

    def op_trim(self, v: _Expr, spec: dict, msg: _Message) -> tuple[_Expr, str | None]:
        return _Expr(f"NULLIF(btrim({v.sql}, {TRIM_CHARS_SQL}), '')", v.costly), None

    def op_case(self, v: _Expr, spec: dict, msg: _Message) -> tuple[_Expr, str | None]:
        return _Expr(f"{_CASES[spec['to']]}({v.sql})", v.costly), None

    def op_default(self, v: _Expr, spec: dict, msg: _Message) -> tuple[_Expr, str | None]:
        if not spec["value"]:
            return v, None
        return _Expr(f"COALESCE({v.sql}, {_lit(spec['value'])})", v.costly), None

    def op_constant(self, v: _Expr, spec: dict, msg: _Message) -> tuple[_Expr, str | None]:
        return _Expr(_text_lit(spec["value"])), None

    def op_concatenate(self, v: _Expr, spec: dict, msg: _Message) -> tuple[_Expr, str | None]:
        return self.join(spec["sources"], spec.get("separator", " ")), None

    def op_split(self, v: _Expr, spec: dict, msg: _Message) -> tuple[_Expr, str | None]:
        index = spec["index"]
        # split_part counts from 1, and from the end for negative numbers (PostgreSQL 14+).
        n = index + 1 if index >= 0 else index
        separator = _lit(spec.get("separator", ","))
        return _Expr(f"NULLIF(split_part({v.sql}, {separator}, {n}), '')", v.costly), None

    def op_regex_extract(self, v: _Expr, spec: dict, msg: _Message) -> tuple[_Expr, str | None]:
        pattern, flags = spec["pattern"], spec.get("flags", "")
        group = spec.get("group")
        if group is None:
            group = 1 if _count_groups(pattern) else 0
        value = _Expr(
            f"NULLIF(regexp_substr({v.sql}, {_lit(pattern)}, 1, 1, {_lit(flags)}, {group}), '')",
            costly=True,
        )
        error = None
        if spec.get("required"):
            # regexp_like needs no capture groups, so it is the cheap test of a match.
            error = (
                f"CASE WHEN NOT regexp_like({v.sql}, {_lit(pattern)}, {_lit(flags)}) "
                f"THEN {msg.render(v.sql, f'does not match pattern {pattern}')} END"
            )
        return value, error

    def op_replace(self, v: _Expr, spec: dict, msg: _Message) -> tuple[_Expr, str | None]:
        pattern = _lit(spec["pattern"])
        replacement = _lit(spec.get("replacement", ""))
        flags = _lit(spec.get("flags", "g"))
        return (
            _Expr(f"NULLIF(regexp_replace({v.sql}, {pattern}, {replacement}, {flags}), '')", True),
            None,
        )

    def op_crosswalk(self, v: _Expr, spec: dict, msg: _Message) -> tuple[_Expr, str | None]:
        if "table" in spec:
            name = spec["table"]
            mapping = self.crosswalks[name]
            reason = f"is not in crosswalk table {name}"
        else:
            mapping = spec["values"]
            reason = f"is not in the crosswalk values of transform {msg.op_no}"
        otherwise = spec.get("otherwise", "error")
        if len(mapping) < LARGE_CROSSWALK:
            arms = " ".join(f"WHEN {_lit(k)} THEN {_text_lit(t)}" for k, t in mapping.items())

            def lookup(ref: str) -> str:
                # A simple CASE evaluates its operand once.
                fallback = ref if otherwise == "keep" else "NULL"
                return f"CASE {ref} {arms} ELSE {fallback} END" if arms else fallback

            known = f"{v.sql} IN ({', '.join(_lit(k) for k in mapping)})" if mapping else "false"
        else:
            table = _lit(json.dumps(mapping, ensure_ascii=False)) + "::jsonb"  # parsed once

            def lookup(ref: str) -> str:
                found = f"({table} ->> {ref})"
                # '' mapped values come back as '' and become NULL; only misses fall back.
                return (
                    f"NULLIF(COALESCE({found}, {ref}), '')"
                    if otherwise == "keep"
                    else (f"NULLIF({found}, '')")
                )

            known = f"({table} ->> {v.sql}) IS NOT NULL"
        value = self.bind(v, lookup) if otherwise == "keep" else lookup(v.sql)
        error = None
        if otherwise == "error":
            # NULL input: `known` is NULL, so CASE takes ELSE, whose message is NULL too.
            error = f"CASE WHEN {known} THEN NULL ELSE {msg.render(v.sql, reason)} END"
        return _Expr(value, v.costly), error

    def op_parse_date(self, v: _Expr, spec: dict, msg: _Message) -> tuple[_Expr, str | None]:
        fmt = spec["format"]
        parsed = self.parse_date(v, fmt)
        error = (
            f"CASE WHEN {parsed} IS NULL THEN "
            f"{msg.render(v.sql, f'is not a date in format {fmt}')} END"
        )
        return _Expr(parsed, costly=True), error

    def parse_date(self, v: _Expr, fmt: str) -> str:
        """ISO text of ``v`` read with strptime format ``fmt``, NULL when it is not such a date.

        The value is bound once (it is read several times below). When the format's fields are
        separated by one literal (most formats), a capture-free regex tests the shape (~1 us a
        row) and split_part cuts the fields out. Otherwise one regexp_replace with capture
        groups (~7 us a row) rewrites a matching value to "<year>-<month>-<day>"; its
        alternative ``|^`` makes a non-matching value come out as "--<value>" (empty groups,
        template inserted at the start), which no match starts with, so no second regex is
        needed to know whether it matched. Either way the fields are padded into ISO text and
        checked with pg_input_is_valid (2023-02-30 has the shape but is no date).
        """
        date_format, _ = _translate_date_format(fmt)
        assert date_format is not None  # validated

        def iso(year: str, month: str, day: str) -> str:
            if date_format.year == "y":  # Python's pivot: 00-68 -> 20xx, 69-99 -> 19xx
                year = f"(CASE WHEN {year} < '69' THEN '20' ELSE '19' END || {year})"
            if date_format.month in "bB":
                month = f"(position(lower(left({month}, 3)) in '{_MONTH_ABBREVIATIONS}') + 2) / 3"
                month = f"lpad(({month})::text, 2, '0')"
            else:
                month = f"lpad({month}, 2, '0')"
            day = f"lpad(ltrim({day}), 2, '0')"  # %d may be space-padded
            return f"{year} || '-' || {month} || '-' || {day}"

        def valid(matched: str, text: str) -> str:
            # Nothing here can raise, so evaluating pg_input_is_valid on a non-match is harmless.
            return f"CASE WHEN {matched} AND pg_input_is_valid({text}, 'date') THEN {text} END"

        if date_format.split is not None:
            separator, prefix, suffix, order = date_format.split

            def cut(ref: str) -> str:
                body = f"substr({ref}, {prefix + 1})" if prefix else ref
                body = f"left({body}, -{suffix})" if suffix else body
                parts = {
                    c: f"split_part({body}, {_lit(separator)}, {n})"
                    for n, c in enumerate(order, start=1)
                }
                matched = f"{ref} ~* {_lit('^' + date_format.check + '$')}"
                return valid(matched, iso(parts["year"], parts["month"], parts["day"]))

            return self.bind(_Expr(v.sql, costly=True), cut)

        rewritten = _Expr(
            f"regexp_replace({v.sql}, {_lit('^(?:' + date_format.regex + ')$|^')}, "
            f"{_lit(date_format.template)}, 'i')",
            costly=True,
        )

        def assemble(ref: str) -> str:
            year, month, day = (f"split_part({ref}, '-', {n})" for n in (1, 2, 3))
            return valid(f"left({ref}, 1) <> '-'", iso(year, month, day))

        return self.bind(rewritten, assemble)


@dataclass(frozen=True)
class _Message:
    """Builds an op's record-error message: "<target>: '<value>' from <sources> <reason>"."""

    target: str
    lineage: tuple[str, ...]
    op_no: int

    def render(self, value_sql: str, reason: str) -> str:
        origin = f" from {', '.join(self.lineage)}" if self.lineage else ""
        return (
            f"({_lit(f'{self.target}: ' + chr(39))} || left({value_sql}, {MESSAGE_VALUE_CHARS})"
            f" || {_lit(chr(39) + origin + ' ' + reason)})"
        )


def compile_rules(
    rules: list[dict],
    *,
    column: Callable[[str], str],
    crosswalks: dict[str, dict[str, str]] | None = None,
) -> list[CompiledField]:
    """Compile ``rules`` to one value expression and one error expression per target.

    ``column(source_field)`` returns the SQL reference to a staged column (the caller quotes it
    and decides what a field the source lacks is, e.g. ``NULL::text``). Crosswalk ops naming a
    ``table`` read it from ``crosswalks``. Raises :class:`MappingError` for invalid rules (the
    regular expressions are not compiled here; :func:`validate_rules` does that when a mapping
    is saved).
    """
    crosswalks = crosswalks or {}
    validate_rules(rules, crosswalk_names=set(crosswalks), using=None)
    problems = [
        f"crosswalk table {name}: {msg}"
        for name, mapping in crosswalks.items()
        if (msg := _crosswalk_problem(mapping)) is not None
    ]
    if problems:
        raise MappingError(problems)
    compiler = _Compiler(column, crosswalks)
    return [compiler.compile(rule) for rule in rules]


def source_fields(rules: list[dict]) -> set[str]:
    """Every source field the rules read (rule sources and concatenate sources)."""
    fields: set[str] = set()

    def take(value: Any) -> None:
        if isinstance(value, str) and value:
            fields.add(value)
        elif isinstance(value, list):
            fields.update(v for v in value if isinstance(v, str) and v)

    for rule in rules if isinstance(rules, list) else ():
        if not isinstance(rule, dict):
            continue
        take(rule.get("source"))
        for spec in rule.get("transforms") or ():
            if isinstance(spec, dict) and spec.get("op") == "concatenate":
                take(spec.get("sources"))
    return fields


def preview(
    rules: list[dict],
    rows: list[dict[str, str | None]],
    *,
    crosswalks: dict[str, dict[str, str]] | None = None,
    using: str = "default",
) -> list[dict[str, dict]]:
    """Run the compiled mapping over sample rows in PostgreSQL, in one query.

    Returns, per row and in order, ``{target: {"value": ..., "error": ...}}``. The rules are
    validated first (regular expressions included), so a bad rule is a :class:`MappingError`,
    not a database error. The same SQL as a sync runs, over the rows as a jsonb array.
    """
    from django.db import connections, transaction

    crosswalks = crosswalks or {}
    validate_rules(rules, crosswalk_names=set(crosswalks), using=using)
    fields = compile_rules(
        rules, column=lambda name: f"(_row.doc ->> {_lit(name)})", crosswalks=crosswalks
    )
    if not rows:
        return []
    columns = ", ".join(f"{f.value_sql}, {f.error_sql or 'NULL::text'}" for f in fields)
    # The statement takes a parameter, so literal '%' in the compiled SQL must be doubled.
    statement = (
        f"SELECT {columns.replace('%', '%%')} "
        "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS _row(doc, n) ORDER BY _row.n"
    )
    payload = [{k: (None if val is None else str(val)) for k, val in row.items()} for row in rows]
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(statement, [json.dumps(payload, ensure_ascii=False)])
        results = cursor.fetchall()
    return [
        {
            f.target: {"value": result[2 * i], "error": result[2 * i + 1]}
            for i, f in enumerate(fields)
        }
        for result in results
    ]
