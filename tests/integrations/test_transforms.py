"""Mapping transformations (integrations.transforms): validation, and the compiled SQL run for
real in PostgreSQL through ``preview`` (sample rows) or over a staged table (many rows).

Validation tests need no database; everything that checks a value runs the SQL.
"""

from __future__ import annotations

import datetime
import random

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from psycopg import sql

from integrations.transforms import (
    LARGE_CROSSWALK,
    MappingError,
    compile_rules,
    preview,
    source_fields,
    validate_rules,
)

NASTY = [
    "O'Brien",
    "back\\slash \\1 \\\\",
    "100% %s %(x)s",
    "$$ dollar $tag$",
    "'); DROP TABLE transforms_canary; --",
    'double "quotes"',
]


def one(transforms, values, *, source="v", crosswalks=None, target="t"):
    """Preview a single rule over rows {source: value}; return [(value, error), ...]."""
    rule = {"target": target, "source": source, "transforms": transforms}
    rows = [{source: v} if isinstance(source, str) else v for v in values]
    result = preview([rule], rows, crosswalks=crosswalks)
    return [(r[target]["value"], r[target]["error"]) for r in result]


def values_of(transforms, values, **kwargs):
    return [value for value, _ in one(transforms, values, **kwargs)]


# --- validation (no database) ------------------------------------------------------------------


def test_validate_reports_every_problem_naming_rule_op_and_parameter():
    rules = [
        {"target": "birth_date", "source": "dob", "transforms": [
            {"op": "trim"},
            {"op": "parse_date", "format": "%m/%d/%Y %H"},
        ]},
        {"target": "last_tag", "source": "tags", "transforms": [
            {"op": "split", "separator": 5, "index": "1"},
        ]},
        {"target": "race", "source": "race", "transforms": [
            {"op": "crosswalk", "table": "races"},
            {"op": "uppercase"},
            {"op": "case", "to": "shout"},
        ]},
        {"target": "birth_date", "source": "dob2"},
        {"target": "nickname", "source": "nick", "transforms": [
            {"op": "replace", "pattern": "x", "seperator": "y"},
        ]},
    ]  # fmt: skip
    with pytest.raises(MappingError) as caught:
        validate_rules(
            rules,
            targets={"birth_date", "last_tag", "race"},
            crosswalk_names={"ethnicity"},
            using=None,
        )
    problems = caught.value.problems
    expected = [
        ("rule 1 (birth_date), transform 2 (parse_date), parameter 'format'", "%H"),
        ("rule 2 (last_tag), transform 1 (split), parameter 'separator'", "must be text"),
        ("rule 2 (last_tag), transform 1 (split), parameter 'index'", "must be an integer"),
        ("rule 3 (race), transform 1 (crosswalk), parameter 'table'", "unknown crosswalk table"),
        ("rule 3 (race), transform 2", "unknown op 'uppercase'"),
        ("rule 3 (race), transform 3 (case), parameter 'to'", "'shout'"),
        ("rule 4 (birth_date)", "duplicate target (also rule 1)"),
        ("rule 5 (nickname)", "unknown target field"),
        ("rule 5 (nickname), transform 1 (replace), parameter 'seperator'", "unknown parameter"),
    ]
    for where, what in expected:
        assert any(p.startswith(where) and what in p for p in problems), (where, what, problems)
    assert len(problems) == len(expected), problems
    assert "9 problems" in str(caught.value)


@pytest.mark.parametrize(
    ("transform", "parameter", "fragment"),
    [
        ({"op": "parse_date", "format": "%Y-%m"}, "format", "has no day"),
        ({"op": "parse_date", "format": "%Y-%m-%d-%Y"}, "format", "year twice"),
        ({"op": "parse_date", "format": "%Y-%m-%d%"}, "format", "lone '%'"),
        ({"op": "parse_date"}, "format", "must be text"),
        ({"op": "crosswalk"}, "values", "either 'values'"),
        ({"op": "crosswalk", "values": {"1": 2}}, "values", "must be text"),
        ({"op": "crosswalk", "values": {"": "x"}}, "values", "can never match"),
        ({"op": "crosswalk", "values": {"1": "x"}, "otherwise": "skip"}, "otherwise", "'skip'"),
        ({"op": "default"}, "value", "is required"),
        ({"op": "constant", "value": 3}, "value", "must be text"),
        ({"op": "concatenate", "separator": "-"}, "sources", "is required"),
        ({"op": "split", "separator": "", "index": 0}, "separator", "must not be empty"),
        ({"op": "split", "separator": ","}, "index", "is required"),
        ({"op": "split", "index": True}, "index", "must be an integer"),
        ({"op": "regex_extract", "pattern": "(a)", "group": 2}, "group", "1 capture group"),
        ({"op": "regex_extract", "pattern": "a", "group": -1}, "group", ">= 0"),
        ({"op": "regex_extract", "pattern": "a", "required": "yes"}, "required", "true or false"),
        ({"op": "replace", "pattern": "a", "flags": "gz"}, "flags", "'z'"),
        ({"op": "replace"}, "pattern", "must be text"),
        ({"op": "constant", "value": "nul\x00"}, "value", "NUL"),
    ],
)
def test_validate_parameters(transform, parameter, fragment):
    rules = [{"target": "t", "source": "v", "transforms": [transform]}]
    with pytest.raises(MappingError) as caught:
        validate_rules(rules, using=None)
    [problem] = caught.value.problems
    assert problem.startswith(
        f"rule 1 (t), transform 1 ({transform['op']}), parameter '{parameter}'"
    )
    assert fragment in problem


def test_validate_rule_shape():
    with pytest.raises(MappingError) as caught:
        validate_rules(
            [
                {"target": "", "source": "a"},
                {"target": "b", "source": 5},
                {"target": "c", "source": None},
                {"target": "d", "source": ["x", ""]},
                {"target": "e", "source": ["x", "y"], "transforms": [
                    {"op": "concatenate", "sources": ["y", "x"]},
                ]},
                "not a rule",
            ],
            using=None,
        )  # fmt: skip
    problems = caught.value.problems
    assert problems[0].startswith("rule 1, parameter 'target': must not be empty")
    assert problems[1].startswith("rule 2 (b), parameter 'source': must be text")
    assert problems[2].startswith("rule 3 (c), parameter 'source': has no source")
    assert problems[3].startswith("rule 4 (d), parameter 'source'")
    assert problems[4].startswith("rule 5 (e), transform 1 (concatenate), parameter 'sources'")
    assert "differs from the rule's source" in problems[4]
    assert problems[5] == "rule 6: must be an object, not str"


def test_valid_rules_pass_and_compile_checks_too():
    rules = [
        {"target": "name", "source": ["first", "last"], "transforms": [
            {"op": "concatenate", "separator": ", "}, {"op": "case", "to": "title"},
        ]},
        {"target": "school", "source": None, "transforms": [{"op": "constant", "value": "X"}]},
    ]  # fmt: skip
    validate_rules(rules, targets={"name", "school"}, using=None)
    with pytest.raises(MappingError, match="unknown crosswalk table 'races'"):
        compile_rules(
            [{"target": "r", "source": "r", "transforms": [{"op": "crosswalk", "table": "races"}]}],
            column=lambda f: f,
        )
    with pytest.raises(MappingError, match="crosswalk table races: value for '1' must be text"):
        compile_rules(
            [{"target": "r", "source": "r", "transforms": [{"op": "crosswalk", "table": "races"}]}],
            column=lambda f: f,
            crosswalks={"races": {"1": None}},
        )


def test_source_fields_and_compiled_sources():
    rules = [
        {"target": "a", "source": "x"},
        {"target": "b", "source": ["y", "z"]},
        {"target": "c", "source": "w", "transforms": [
            {"op": "concatenate", "sources": ["p", "q"]},
        ]},
        {"target": "d", "source": None, "transforms": [{"op": "constant", "value": "k"}]},
    ]  # fmt: skip
    assert source_fields(rules) == {"x", "y", "z", "w", "p", "q"}
    compiled = compile_rules(rules, column=lambda f: sql.Identifier("s", f).as_string(None))
    assert [c.sources for c in compiled] == [("x",), ("y", "z"), ("w", "p", "q"), ()]
    assert [c.error_sql for c in compiled] == [None, None, None, None]  # nothing can fail
    assert compiled[0].value_sql == """NULLIF("s"."x", '')"""


def test_crosswalk_compiles_to_case_when_small_and_jsonb_when_large():
    small = {str(i): f"v{i}" for i in range(LARGE_CROSSWALK - 1)}
    large = {str(i): f"v{i}" for i in range(LARGE_CROSSWALK)}
    [s, big] = compile_rules(
        [
            {"target": "s", "source": "c", "transforms": [{"op": "crosswalk", "values": small}]},
            {"target": "l", "source": "c", "transforms": [{"op": "crosswalk", "values": large}]},
        ],
        column=lambda f: f"s.{f}",
    )
    assert s.value_sql.startswith("CASE") and "jsonb" not in s.value_sql
    assert "::jsonb ->> " in big.value_sql and "CASE" not in big.value_sql


# --- ops, run in PostgreSQL ----------------------------------------------------------------


@pytest.mark.django_db
def test_trim_and_case():
    assert values_of([{"op": "trim"}], ["  ada \t", " \n ", "", None, "\xa0x\xa0"]) == [
        "ada",
        None,
        None,
        None,
        "x",
    ]
    words = ["mary-jane o'neil", "", None]
    assert values_of([{"op": "case", "to": "upper"}], words) == ["MARY-JANE O'NEIL", None, None]
    assert values_of([{"op": "case", "to": "lower"}], ["ÉCOLE"]) == ["école"]
    assert values_of([{"op": "case", "to": "title"}], words) == ["Mary-Jane O'Neil", None, None]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        ("%m/%d/%Y", {"02/03/2020": "2020-02-03", "2/3/2020": "2020-02-03", "12/31/1999":
                      "1999-12-31", "2/29/2024": "2024-02-29"}, ["13/45/2020", "2/29/2023",
                                                                  "2020-02-03", "1/2/20", "x"]),
        ("%d-%b-%y", {"05-Jan-23": "2023-01-05", "5-JAN-68": "2068-01-05", "31-dec-69":
                      "1969-12-31"}, ["31-Feb-23", "5-Sept-23", "5-Jan-2023"]),
        ("%Y%m%d", {"20230105": "2023-01-05", "19991231": "1999-12-31"}, ["20230230",
                                                                          "2023-01-05"]),
        ("%d %B %Y", {"5 March 2023": "2023-03-05", "05  september\t2001": "2001-09-05"},
         ["5 Mar 2023", "5March 2023"]),
    ],
)  # fmt: skip
def test_parse_date(fmt, good, bad):
    results = one([{"op": "parse_date", "format": fmt}], [*good, *bad, "", None], source="dob")
    assert [value for value, _ in results[: len(good)]] == list(good.values())
    assert all(error is None for _, error in results[: len(good)])
    for text, (value, error) in zip(bad, results[len(good) : len(good) + len(bad)], strict=True):
        assert value is None
        assert error == f"t: '{text}' from dob is not a date in format {fmt}"
    assert results[-2:] == [(None, None), (None, None)]  # empty input stays empty


@pytest.mark.django_db
def test_parse_date_invalid_calendar_date_names_field_value_and_format():
    result = preview(
        [{"target": "birth_date", "source": "birthDate", "transforms": [
            {"op": "trim"}, {"op": "parse_date", "format": "%Y-%m-%d"},
        ]}],
        [{"birthDate": " 2023-02-30 "}, {"birthDate": "2023-02-28"}],
    )  # fmt: skip
    assert result[0]["birth_date"] == {
        "value": None,
        "error": "birth_date: '2023-02-30' from birthDate is not a date in format %Y-%m-%d",
    }
    assert result[1]["birth_date"] == {"value": "2023-02-28", "error": None}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "fmt", ["%m/%d/%Y", "%d-%b-%y", "%Y%m%d", "%b %d, %Y", "x%d.%m.%Yx", "%y%m%d", "%d %B %Y"]
)
def test_parse_date_agrees_with_python_strptime(fmt):
    """Random near-dates, parsed by PostgreSQL and by Python's strptime, give the same answer."""
    rng = random.Random(fmt)
    noise = ["", "/", "-", " ", ",", ".", "x", "0", "13", "32", "Sep", "sept", " 7", "1969"]
    texts = []
    for _ in range(400):
        day = datetime.date(rng.randint(1950, 2060), rng.randint(1, 12), rng.randint(1, 28))
        text = day.strftime(fmt)
        if rng.random() < 0.5:
            at = rng.randint(0, len(text))
            text = text[:at] + rng.choice(noise) + text[at + rng.randint(0, 2) :]
        texts.append(text)
    parsed = values_of([{"op": "parse_date", "format": fmt}], texts)
    for text, value in zip(texts, parsed, strict=True):
        try:
            expected = datetime.datetime.strptime(text, fmt).date().isoformat() if text else None
        except ValueError:
            expected = None
        assert value == expected, text


@pytest.mark.django_db
def test_crosswalk_otherwise_modes():
    codes = {"1": "HI7", "2": "AS7", "3": ""}  # '3' maps to empty on purpose
    texts = ["1", "2", "3", "9", "", None]
    error_mode = one([{"op": "crosswalk", "values": codes}], texts, source="race")
    assert error_mode == [
        ("HI7", None),
        ("AS7", None),
        (None, None),
        (None, "t: '9' from race is not in the crosswalk values of transform 1"),
        (None, None),
        (None, None),
    ]
    keep = values_of([{"op": "crosswalk", "values": codes, "otherwise": "keep"}], texts)
    assert keep == ["HI7", "AS7", None, "9", None, None]
    empty = one([{"op": "crosswalk", "values": codes, "otherwise": "empty"}], texts)
    assert empty == [("HI7", None), ("AS7", None), (None, None), (None, None), (None, None),
                     (None, None)]  # fmt: skip


@pytest.mark.django_db
@pytest.mark.parametrize("otherwise", ["error", "keep", "empty"])
def test_large_crosswalk_from_a_named_table(otherwise):
    table = {f"k{i}": f"v{i}" for i in range(500)}
    table["blank"] = ""
    table["k'q"] = "v'q"
    results = one(
        [{"op": "crosswalk", "table": "codes", "otherwise": otherwise}],
        ["k0", "k499", "blank", "k'q", "nope", "", None],
        crosswalks={"codes": table},
    )
    assert [v for v, _ in results[:4]] == ["v0", "v499", None, "v'q"]
    assert results[4][0] == ("nope" if otherwise == "keep" else None)
    assert results[4][1] == (
        "t: 'nope' from v is not in crosswalk table codes" if otherwise == "error" else None
    )
    assert [e for _, e in results[:4]] == [None] * 4
    assert results[5:] == [(None, None), (None, None)]


@pytest.mark.django_db
def test_chained_trim_case_crosswalk():
    races = {"W": "White", "B": "Black or African American"}
    chain = [{"op": "trim"}, {"op": "case", "to": "upper"}, {"op": "crosswalk", "table": "race"}]
    results = one(chain, ["  w ", "b", " x ", "   "], crosswalks={"race": races}, source="Race")
    assert results == [
        ("White", None),
        ("Black or African American", None),
        (None, "t: 'X' from Race is not in crosswalk table race"),
        (None, None),
    ]


@pytest.mark.django_db
def test_first_error_wins_and_later_ops_see_empty():
    chain = [
        {"op": "regex_extract", "pattern": "[0-9/]+", "required": True},
        {"op": "parse_date", "format": "%m/%d/%Y"},
        {"op": "default", "value": "1900-01-01"},
    ]
    assert one(chain, ["born 1/2/2003", "born 2/30/2003", "unknown"], source="dob") == [
        ("2003-01-02", None),
        ("1900-01-01", "t: '2/30/2003' from dob is not a date in format %m/%d/%Y"),
        ("1900-01-01", "t: 'unknown' from dob does not match pattern [0-9/]+"),
    ]


@pytest.mark.django_db
def test_default_and_constant():
    assert values_of([{"op": "default", "value": "N"}], ["Y", "", None]) == ["Y", "N", "N"]
    assert values_of([{"op": "constant", "value": "US"}], ["CA", "", None]) == ["US"] * 3
    assert values_of([{"op": "constant", "value": ""}], ["CA"]) == [None]
    rule = {"target": "t", "source": None, "transforms": [{"op": "default", "value": "d"}]}
    assert preview([rule], [{}]) == [{"t": {"value": "d", "error": None}}]


@pytest.mark.django_db
def test_concatenate():
    rows = [
        {"first": "Ada", "middle": "", "last": "Lovelace"},
        {"first": None, "middle": "B", "last": "C"},
        {"first": "", "middle": None},
    ]
    joined = preview([{"target": "t", "source": ["first", "middle", "last"]}], rows)
    assert [r["t"]["value"] for r in joined] == ["Ada Lovelace", "B C", None]
    leading = [{"op": "concatenate", "separator": ", "}]
    assert values_of(leading, rows, source=["last", "first"]) == ["Lovelace, Ada", "C", None]
    later = [{"op": "trim"}, {"op": "concatenate", "sources": ["first", "last"], "separator": "_"}]
    rule = {"target": "t", "source": "middle", "transforms": later}
    assert [r["t"]["value"] for r in preview([rule], rows)] == ["Ada_Lovelace", "C", None]


@pytest.mark.django_db
def test_split():
    texts = ["a,b,c", "a", "", None, ",x"]
    assert values_of([{"op": "split", "separator": ",", "index": 0}], texts) == [
        "a",
        "a",
        None,
        None,
        None,
    ]
    assert values_of([{"op": "split", "separator": ",", "index": -1}], texts) == [
        "c",
        "a",
        None,
        None,
        "x",
    ]
    assert values_of([{"op": "split", "separator": ",", "index": 2}], texts)[:2] == ["c", None]
    assert values_of([{"op": "split", "separator": ",", "index": -3}], texts)[:2] == ["a", None]
    assert values_of([{"op": "split", "separator": " - ", "index": 1}], ["1 - 2 - 3"]) == ["2"]


@pytest.mark.django_db
def test_regex_extract():
    texts = ["Room 12B", "no digits", "", None]
    assert values_of([{"op": "regex_extract", "pattern": "[0-9]+"}], texts) == [
        "12",
        None,
        None,
        None,
    ]
    assert (
        values_of([{"op": "regex_extract", "pattern": "([0-9]+)([A-Z])", "group": 2}], texts)[0]
        == "B"
    )
    assert (
        values_of([{"op": "regex_extract", "pattern": "room (\\d+)", "flags": "i"}], texts)[0]
        == "12"
    )  # group 1 by default when the pattern has one; PostgreSQL's \d
    required = [{"op": "regex_extract", "pattern": "[0-9]+", "required": True}]
    assert one(required, texts, source="room") == [
        ("12", None),
        (None, "t: 'no digits' from room does not match pattern [0-9]+"),
        (None, None),
        (None, None),
    ]


@pytest.mark.django_db
def test_replace():
    assert values_of([{"op": "replace", "pattern": "[^0-9]", "replacement": ""}], [
        "(555) 010-4477", "---", None,
    ]) == ["5550104477", None, None]  # fmt: skip
    swap = {"op": "replace", "pattern": "^(\\w+), (\\w+)$", "replacement": "\\2 \\1"}
    assert values_of([swap], ["Lovelace, Ada"]) == ["Ada Lovelace"]
    first_only = {"op": "replace", "pattern": "a", "replacement": "o", "flags": "i"}
    assert values_of([first_only], ["AAa"]) == ["oAa"]


@pytest.mark.django_db
def test_bad_regex_is_reported_by_postgresql_not_python():
    rules = [
        {"target": "a", "source": "v", "transforms": [{"op": "regex_extract", "pattern": "(x"}]},
        # Valid for PostgreSQL (ARE), though Python's re rejects a lookbehind of varying width.
        {"target": "b", "source": "v", "transforms": [
            {"op": "replace", "pattern": "(?<=a+)b", "replacement": "c"},
        ]},
        {"target": "c", "source": "v", "transforms": [{"op": "replace", "pattern": "x{2,1}"}]},
    ]  # fmt: skip
    with pytest.raises(MappingError) as caught:
        validate_rules(rules)
    problems = caught.value.problems
    assert len(problems) == 2, problems
    assert problems[0].startswith("rule 1 (a), transform 1 (regex_extract), parameter 'pattern'")
    assert "parentheses () not balanced" in problems[0]
    assert problems[1].startswith("rule 3 (c), transform 1 (replace), parameter 'pattern'")
    validate_rules(rules[1:2])
    assert values_of(rules[1]["transforms"], ["aab", "b"]) == ["aac", "b"]


@pytest.mark.django_db
def test_literals_are_quoted_not_injected():
    """Values, keys, separators and patterns holding quotes, backslashes, %, $$ or SQL stay
    values, both in preview (a parameterised statement) and in the compiled SQL run as a plain
    multi-statement-capable string (where an injection would execute)."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE transforms_canary (id int)")
    crosswalk = {text: f"<{text}>" for text in NASTY}
    rules = [
        {"target": "cw", "source": "v", "transforms": [{"op": "crosswalk", "values": crosswalk}]},
        {"target": "const", "source": None, "transforms": [
            {"op": "constant", "value": NASTY[4]},
        ]},
        {"target": "dflt", "source": "missing", "transforms": [
            {"op": "default", "value": NASTY[1]},
        ]},
        {"target": "joined", "source": ["v", "v"], "transforms": [
            {"op": "concatenate", "separator": "'%$$\\"},
        ]},
        {"target": "lit", "source": "v", "transforms": [
            {"op": "replace", "pattern": "'|%|\\$\\$|\\\\", "replacement": "[\\&]"},
        ]},
        {"target": "err", "source": "v", "transforms": [
            {"op": "parse_date", "format": "%Y'%m%%%d"},
        ]},
    ]  # fmt: skip
    rows = [{"v": text} for text in NASTY]
    expected = [
        {
            "cw": f"<{text}>",
            "const": NASTY[4],
            "dflt": NASTY[1],
            "joined": f"{text}'%$$\\{text}",
            "lit": text.replace("'", "[']")
            .replace("%", "[%]")
            .replace("$$", "[$$]")
            .replace("\\", "[\\]"),
        }
        for text in NASTY
    ]
    result = preview(rules, rows)
    assert [{k: v["value"] for k, v in r.items() if k != "err"} for r in result] == expected
    assert result[0]["err"] == {
        "value": None,
        "error": "err: 'O'Brien' from v is not a date in format %Y'%m%%%d",
    }

    # The same rules compiled for a staged table and run as one plain string.
    compiled = compile_rules(rules, column=lambda f: "NULL::text" if f == "missing" else "s.v")
    select = ", ".join(f"{c.value_sql}, {c.error_sql or 'NULL'}" for c in compiled)
    values = ", ".join(sql.Literal(text).as_string(None) for text in NASTY)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {select} FROM unnest(ARRAY[{values}]) WITH ORDINALITY AS s(v, n)")
        rows_out = cursor.fetchall()
        cursor.execute("SELECT count(*) FROM transforms_canary")  # still there
        assert cursor.fetchone() == (0,)
    assert [list(r[0:10:2]) for r in rows_out] == [list(e.values()) for e in expected]


@pytest.mark.django_db
def test_preview_is_one_query_and_keeps_row_order():
    rules = [
        {"target": "first", "source": "givenName", "transforms": [{"op": "trim"}]},
        {"target": "dob", "source": "birthDate", "transforms": [
            {"op": "parse_date", "format": "%m/%d/%Y"},
        ]},
    ]  # fmt: skip
    rows = [{"givenName": f" n{i} ", "birthDate": f"1/{i % 28 + 1}/2010"} for i in range(50)]
    rows.append({"unrelated": "x"})  # fields the row lacks are empty
    with CaptureQueriesContext(connection) as queries:
        result = preview(rules, rows)
    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == 1, statements
    assert [r["first"]["value"] for r in result[:3]] == ["n0", "n1", "n2"]
    assert result[49]["dob"] == {"value": "2010-01-22", "error": None}
    assert result[50] == {"first": {"value": None, "error": None},
                          "dob": {"value": None, "error": None}}  # fmt: skip
    assert preview(rules, []) == []


@pytest.mark.django_db
def test_compiled_mapping_over_100k_staged_rows_is_one_statement():
    """The pipeline's shape: a staged table of text columns, one SELECT computing every field."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            CREATE TEMP TABLE stage_people AS
            SELECT g AS n, ' ' || g::text || ' ' AS "sourcedId",
                   CASE WHEN g % 1000 = 0 THEN '2/30/2001'
                        ELSE (1 + g % 12)::text || '/' || (1 + g % 28)::text || '/2001' END
                       AS "birthDate",
                   (g % 3)::text AS race, 'Given' || g AS "givenName", 'Family' AS "familyName"
            FROM generate_series(1, 100000) AS g
            """
        )
    rules = [
        {"target": "source_id", "source": "sourcedId", "transforms": [{"op": "trim"}]},
        {"target": "birth_date", "source": "birthDate", "transforms": [
            {"op": "trim"}, {"op": "parse_date", "format": "%m/%d/%Y"},
        ]},
        {"target": "race", "source": "race", "transforms": [
            {"op": "crosswalk", "values": {"0": "W", "1": "B"}},
        ]},
        {"target": "name", "source": ["givenName", "familyName"]},
        {"target": "grade", "source": "gradeLevel", "transforms": [
            {"op": "default", "value": "KG"},
        ]},
    ]  # fmt: skip
    staged = {"sourcedId", "birthDate", "race", "givenName", "familyName"}
    compiled = compile_rules(
        rules,
        column=lambda f: sql.Identifier("s", f).as_string(None) if f in staged else "NULL::text",
    )
    columns = ", ".join(
        f"{c.value_sql} AS {c.target}, {c.error_sql or 'NULL::text'} AS {c.target}_error"
        for c in compiled
    )
    statement = f"""
        SELECT count(*), count(birth_date), count(birth_date_error), count(race_error),
               count(*) FILTER (WHERE name = 'Given' || m.n || ' Family' AND grade = 'KG'),
               min(birth_date), max(birth_date_error)
        FROM (SELECT s.n, {columns} FROM stage_people AS s) AS m
    """
    with CaptureQueriesContext(connection) as queries, connection.cursor() as cursor:
        cursor.execute(statement)
        counts = cursor.fetchone()
    assert len(queries.captured_queries) == 1
    assert counts[:5] == (100000, 99900, 100, 33333, 100000)
    assert counts[5] == "2001-01-01"
    assert counts[6] == "birth_date: '2/30/2001' from birthDate is not a date in format %m/%d/%Y"
