"""Writes the integrations admin needs that ``integrations.services`` does not have yet.

Same style as the services: keyword-only arguments, the acting user, audited writes in one
transaction. Deleting a sync definition must also delete its django-celery-beat task (the
definition's link to it is ``SET_NULL``), or beat keeps firing a schedule for a definition that
no longer exists.
"""

from __future__ import annotations

from bxos.common.services import model_delete, write_as
from integrations.models import Integration, Mapping, SyncDefinition


def definition_delete(*, definition: SyncDefinition, actor) -> None:
    """Delete a sync definition (its runs and their trail go with it) and its beat task."""
    with write_as(actor):
        task = definition.periodic_task
        model_delete(instance=definition, actor=actor, emit=False)
        if task is not None:
            task.delete()


def integration_delete(*, integration: Integration, actor) -> None:
    """Delete an integration with its mappings, definitions (and their beat tasks) and runs.

    The rows it synced stay: they are the district's data, with their lineage.
    """
    with write_as(actor):
        tasks = [d.periodic_task for d in integration.definitions.select_related("periodic_task")]
        # A mapping's link to its current version is PROTECT (a version in use must not be
        # deleted alone); here the mapping goes too, so unlink first or the delete is refused.
        Mapping.objects.filter(integration=integration).update(current=None)
        model_delete(instance=integration, actor=actor, emit=False)
        for task in tasks:
            if task is not None:
                task.delete()
