"""The access log: who opened which student's record, when, from where (FERPA).

Reads by people in pages and the admin are recorded here; reads by external parties go to the
disclosure log that the vendor API adds.
"""

from __future__ import annotations

from bxos.common.models import AccessLogEntry


def student_id_of(obj) -> int | None:
    """The student a record is about, if any: the student itself, or its ``student`` link."""
    if obj._meta.label == "schools.Student":
        return obj.pk
    return getattr(obj, "student_id", None)


def record_view(*, actor, obj, path: str = "") -> AccessLogEntry | None:
    """Record that ``actor`` viewed ``obj``; records not about a student are not logged."""
    student_id = student_id_of(obj)
    if student_id is None:
        return None
    return AccessLogEntry.objects.create(
        actor=actor if getattr(actor, "pk", None) else None,
        actor_label=getattr(actor, "username", str(actor))[:150],
        district_id=getattr(obj, "district_id", None),
        student_id=student_id,
        object_table=obj._meta.db_table,
        object_id=obj.pk,
        action="view",
        path=path[:512],
    )
