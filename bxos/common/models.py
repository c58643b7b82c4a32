"""Foundation models: the user, the tenant base model, tombstones and the access log.

Every row that holds student data inherits :class:`TenantModel`: it carries its district (the
tenant), timestamps, a ``change_version`` stamped by a database trigger from one sequence, and
lineage fields. Deleting such a row leaves a :class:`Tombstone`, written set-wise by a
statement-level trigger (see ``bxos.common.db``), so bulk deletes are covered too.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.contrib.postgres.indexes import BrinIndex
from django.core.exceptions import ValidationError
from django.db import models

from bxos.common.constraints import FieldConstraintErrors
from bxos.common.permissions import Gate


class User(AbstractUser):
    """A person who signs in (staff, admins) or a named system actor for jobs.

    The person's district and role come from their staff record and groups; the user row itself
    is tenant-neutral so that platform operators and the system actor can exist outside any
    district.
    """

    is_system_actor = models.BooleanField(
        default=False,
        help_text="A named non-human actor (jobs, commands) recorded in the audit log.",
    )

    class Meta:
        ordering = ["username"]
        constraints = [
            # A system actor can never sign in interactively.
            models.CheckConstraint(
                condition=~models.Q(is_system_actor=True, is_active=True),
                name="common_user_system_actor_inactive",
                violation_error_message="A system actor cannot be an active login.",
            ),
        ]


class ChangeVersionField(models.BigIntegerField):
    """Stamped by the database trigger on every insert and update; returned after INSERT."""

    db_returning = True

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("editable", False)
        kwargs.setdefault("default", 0)
        kwargs.setdefault("db_index", True)
        kwargs.setdefault("help_text", "Global change version, stamped by the database.")
        super().__init__(*args, **kwargs)


class TenantModel(FieldConstraintErrors, models.Model):
    """Base for every row holding student data: district, timestamps, change version, lineage.

    ``clean()`` refuses a foreign key to another district's row, so no path (admin, API, sync)
    can link data across tenants.
    """

    district = models.ForeignKey("schools.District", on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    change_version = ChangeVersionField()
    source_system = models.CharField(
        max_length=64, blank=True, help_text="System this row was synced or imported from."
    )
    source_id = models.CharField(
        max_length=255, blank=True, help_text="Identifier of this row in its source system."
    )
    last_run_id = models.BigIntegerField(
        null=True, blank=True, editable=False, help_text="Sync or import run that last wrote it."
    )

    # Paths used by the permission gate, overridden per model (see bxos.common.permissions).
    gate = None

    class Meta:
        abstract = True

    def clean(self) -> None:
        super().clean()
        errors = {}
        for field in self._meta.concrete_fields:
            if not field.is_relation or field.name == "district" or not field.many_to_one:
                continue
            related_model = field.related_model
            if not issubclass(related_model, TenantModel):
                continue
            related_id = getattr(self, field.attname)
            if related_id is None or self.district_id is None:
                continue
            related_district = (
                related_model._base_manager.filter(pk=related_id)
                .values_list("district_id", flat=True)
                .first()
            )
            if related_district is not None and related_district != self.district_id:
                errors[field.name] = "This record belongs to another district."
        if errors:
            raise ValidationError(errors)


class Tombstone(models.Model):
    """What is left of a deleted student-data row: enough for change feeds and syncs.

    Written by a statement-level AFTER DELETE trigger on every TenantModel table.
    """

    table_name = models.CharField(max_length=128)
    object_id = models.BigIntegerField()
    district_id = models.BigIntegerField(db_index=True)
    source_system = models.CharField(max_length=64, blank=True)
    source_id = models.CharField(max_length=255, blank=True)
    change_version = models.BigIntegerField()
    deleted_at = models.DateTimeField()

    class Meta:
        ordering = ["change_version"]
        indexes = [
            models.Index(fields=["table_name", "change_version"], name="tombstone_table_cv_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.table_name} #{self.object_id} deleted at version {self.change_version}"


class AccessLogEntry(models.Model):
    """One read of a student's record by a person (admin, pages): FERPA's access record.

    Reads by external parties go to the disclosure log (vendor API issue) instead.
    """

    at = models.DateTimeField(auto_now_add=True)
    actor = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    actor_label = models.CharField(max_length=150, help_text="Username at the time of access.")
    district_id = models.BigIntegerField(null=True)
    student_id = models.BigIntegerField(null=True, db_index=True)
    object_table = models.CharField(max_length=128)
    object_id = models.BigIntegerField()
    action = models.CharField(max_length=16, default="view")
    path = models.CharField(max_length=512, blank=True)

    gate = Gate(district="district_id", student="student_id")

    class Meta:
        ordering = ["-at"]
        verbose_name = "access log entry"
        verbose_name_plural = "access log"
        indexes = [
            # A BRIN index keeps time-range scans cheap on an append-only table of this size.
            BrinIndex(fields=["at"], name="accesslog_at_brin"),
            models.Index(fields=["district_id", "student_id"], name="accesslog_district_student"),
        ]

    def __str__(self) -> str:
        return f"{self.actor_label} {self.action} {self.object_table} #{self.object_id}"
