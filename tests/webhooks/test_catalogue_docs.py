"""docs/webhooks/events.md is generated from the catalogue and must be current; every example
is valid against its own schema."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
from django.core.management import CommandError, call_command

from webhooks import catalogue

PAGE = Path(__file__).resolve().parents[2] / "docs" / "webhooks" / "events.md"


def test_the_checked_in_catalogue_page_is_current():
    # On failure: manage.py webhook_catalogue --write docs/webhooks/events.md
    call_command("webhook_catalogue", check=str(PAGE))


def test_the_page_lists_every_type_with_its_schema_and_example():
    text = PAGE.read_text(encoding="utf-8")
    for name, entry in catalogue.entries().items():
        assert f"### `{name}`" in text and entry.description in text
        assert f'"title": "{name}"' in text and f'"type": "{name}"' in text


def test_a_stale_page_is_reported(tmp_path):
    stale = tmp_path / "events.md"
    stale.write_text("# old\n")
    with pytest.raises(CommandError, match="not current"):
        call_command("webhook_catalogue", check=str(stale))
    call_command("webhook_catalogue", write=str(stale))
    call_command("webhook_catalogue", check=str(stale))


@pytest.mark.parametrize("name", list(catalogue.entries()))
def test_every_example_is_valid_against_its_schema(name):
    entry = catalogue.entries()[name]
    validator = jsonschema.Draft202012Validator(
        catalogue.schema(entry), format_checker=jsonschema.FormatChecker()
    )
    validator.validate(catalogue.example(entry))
