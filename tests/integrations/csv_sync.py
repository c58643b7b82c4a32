"""Shared set-up of the OneRoster CSV sync tests: an uploaded-zip integration, a definition over
some entities, and a run of one zip executed as the worker would."""

from __future__ import annotations

from pathlib import Path

from django.core.files import File

from bxos.schools.models import Enrollment, SectionEnrollment, Student, StudentDemographic
from integrations import services
from integrations.models import SyncDefinition, SyncRun

SOURCE = "sis"


def csv_integration(world, actor, *, source: str = SOURCE, name: str = "North SIS (CSV)"):
    return services.integration_create(
        district=world.district,
        name=name,
        connector_type="oneroster_csv",
        source_system=source,
        params={"source": "upload", "encoding": "auto"},
        actor=actor,
    )


def csv_definition(
    world, actor, *, entities: list[str], source: str = SOURCE, name: str = "Nightly", **fields
) -> SyncDefinition:
    """A definition of a new uploaded-zip integration of ``world``'s district."""
    integration = csv_integration(world, actor, source=source, name=f"SIS {source} (CSV)")
    definition = SyncDefinition(integration=integration, name=name, entities=entities, **fields)
    return services.definition_save(definition=definition, actor=actor)


def run_zip(definition, actor, path: Path) -> SyncRun:
    """Start a run with ``path`` uploaded and execute it here."""
    with open(path, "rb") as fh:
        run = services.run_start(definition=definition, actor=actor, upload=File(fh, path.name))
    return services.run_execute(run=run, actor=actor)


def changed_roster(roster):
    """The next night's file: a renamed student, a new one, a student's enrollments gone."""
    roster.find("users", "s2")["givenName"] = "Changed"
    roster.files["enrollments"] = [
        e for e in roster.rows("enrollments") if e["userSourcedId"] != "s5"
    ]
    roster.add_user(
        "s999",
        "student",
        "sch1",
        givenName="Nova",
        familyName="Newcomer",
        identifier="999999",
        grades="10",
    )
    roster.rows("demographics").append({**roster.find("demographics", "s1"), "sourcedId": "s999"})
    return roster


def snapshot(district, source: str | None = SOURCE) -> dict[str, list]:
    """The synced rows of one source (None: of every source), every column but the change
    stamps."""
    rows = {}
    for model in (Student, Enrollment, SectionEnrollment, StudentDemographic):
        fields = [
            f.attname
            for f in model._meta.concrete_fields
            if f.attname not in ("change_version", "updated_at")
        ]
        found = model.objects.filter(district=district)
        if source is not None:
            found = found.filter(source_system=source)
        rows[model.__name__] = sorted(found.values_list(*fields))
    return rows
