"""Admin base classes: every admin of student data is thin and passes the one gate.

``TenantAdmin`` (and ``TenantInline``) make the admin a face like any other:

- reads: the changelist, the change form, autocomplete, list-filter choices, form choices and
  counts all come from ``restrict(queryset, request.user, action)``; another district's object
  is a 404, never a redirect or a 403;
- writes: ``save_model``, ``delete_model``, inline formsets and bulk deletes call the service
  helpers with the signed-in user as the actor (audited, evented, validated);
- history: the History button shows the django-auditlog trail of the object, which includes
  writes from every face (API, sync, tasks), not just admin edits;
- access log: opening a student's record writes an AccessLogEntry (FERPA).
"""

from __future__ import annotations

from auditlog.mixins import AuditlogHistoryAdminMixin
from django.contrib import admin, messages
from django.contrib.admin.utils import NotRelationField, get_fields_from_path, unquote
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.http import Http404, HttpResponseRedirect

from bxos.common import access, roles
from bxos.common.models import AccessLogEntry, Tombstone, User
from bxos.common.permissions import CHANGE, DELETE, VIEW, can, restrict
from bxos.common.services import model_delete, model_save


def _gated(model) -> bool:
    return getattr(model, "gate", None) is not None


class RestrictedRelatedFilter(admin.RelatedFieldListFilter):
    """A foreign-key list filter whose choices pass the gate (no other district's names)."""

    def field_choices(self, field, request, model_admin):
        related = field.related_model
        queryset = related._default_manager.all()
        if _gated(related):
            queryset = restrict(queryset, request.user, VIEW)
        ordering = self.field_admin_ordering(field, request, model_admin)
        if ordering:
            queryset = queryset.order_by(*ordering)
        limit = field.get_limit_choices_to()
        if limit:
            queryset = queryset.complex_filter(limit)
        return [(obj.pk, str(obj)) for obj in queryset]


class GateMixin:
    """Shared by model admins and inlines: restricted querysets and form choices."""

    def get_queryset(self, request):
        return restrict(super().get_queryset(request), request.user, VIEW)

    def _restricted_choices(self, db_field, request, kwargs):
        related = db_field.related_model
        if "queryset" not in kwargs and _gated(related):
            kwargs["queryset"] = restrict(related._default_manager.all(), request.user, VIEW)
        return kwargs

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        kwargs = self._restricted_choices(db_field, request, kwargs)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        kwargs = self._restricted_choices(db_field, request, kwargs)
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def _obj_allowed(self, request, obj, action) -> bool:
        return obj is None or can(request.user, obj, action)

    def has_view_permission(self, request, obj=None):
        return super().has_view_permission(request, obj) and self._obj_allowed(request, obj, VIEW)

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and self._obj_allowed(
            request, obj, CHANGE
        )

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and self._obj_allowed(
            request, obj, DELETE
        )

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        # Another district's object, or one the user may not see, is simply not there.
        raise Http404(f"No {opts.verbose_name} with id {object_id!r} here.")

    def get_exclude(self, request, obj=None):
        exclude = list(super().get_exclude(request, obj) or [])
        # A district's own people never choose the district: it is theirs, set on save.
        if _has_district_field(self.model) and not request.user.is_superuser:
            exclude.append("district")
        return exclude


def _has_district_field(model) -> bool:
    return any(f.name == "district" for f in model._meta.concrete_fields)


def _with_district(form_class, district_id):
    """A form class whose new instances belong to ``district_id`` before validation runs."""

    class TenantForm(form_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if self.instance.district_id is None:
                self.instance.district_id = district_id

    TenantForm.__name__ = form_class.__name__
    return TenantForm


class TenantAdmin(GateMixin, AuditlogHistoryAdminMixin, admin.ModelAdmin):
    """Base admin for every model holding student data (see module docstring)."""

    list_per_page = 50
    # The "N total" beside a filtered count is a second COUNT over the whole gated table:
    # at a million students that doubles the page's cost for a number few people read.
    show_full_result_count = False
    # Read-only facts that every TenantModel carries, shown in their own fieldset.
    lineage_fields = ("change_version", "source_system", "source_id", "created_at", "updated_at")

    # --- reads -------------------------------------------------------------------------------

    def get_list_filter(self, request):
        filters = []
        for item in super().get_list_filter(request):
            if isinstance(item, str):
                try:
                    field = get_fields_from_path(self.model, item)[-1]
                except (FieldDoesNotExist, NotRelationField):
                    field = None
                if field is not None and field.many_to_one:
                    item = (item, RestrictedRelatedFilter)
            filters.append(item)
        if request.user.is_superuser and _has_district_field(self.model):
            filters.insert(0, ("district", admin.RelatedOnlyFieldListFilter))
        return filters

    def get_readonly_fields(self, request, obj=None):
        readonly = list(super().get_readonly_fields(request, obj))
        for name in self.lineage_fields:
            if name not in readonly and any(f.name == name for f in self.model._meta.fields):
                readonly.append(name)
        return readonly

    def get_fieldsets(self, request, obj=None):
        if self.fieldsets:
            return super().get_fieldsets(request, obj)
        fields = [f for f in self.get_fields(request, obj) if f not in self.lineage_fields]
        lineage = [
            f for f in self.lineage_fields if any(x.name == f for x in self.model._meta.fields)
        ]
        sets = [(None, {"fields": fields})]
        if obj is not None and lineage:
            sets.append(("Lineage", {"fields": lineage, "classes": ["collapse"]}))
        return sets

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method == "GET":
            obj = self.get_object(request, unquote(object_id))
            if obj is not None:
                access.record_view(actor=request.user, obj=obj, path=request.get_full_path())
        return super().change_view(request, object_id, form_url, extra_context)

    def history_view(self, request, object_id, extra_context=None):
        # The audit trail covers every face (API, sync, tasks), not only admin edits.
        if self.get_object(request, unquote(object_id)) is None:
            raise Http404
        return self.auditlog_history_view(request, object_id, extra_context)

    # --- writes ------------------------------------------------------------------------------

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        district_id = roles.district_id_of(request.user) if not request.user.is_superuser else None
        if obj is None and district_id and _has_district_field(self.model):
            form = _with_district(form, district_id)
        return form

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ValidationError as exc:
            # A rule the database enforced after the form passed (two people editing at once).
            messages.error(request, "Nothing was saved: " + "; ".join(exc.messages))
            return HttpResponseRedirect(request.get_full_path())

    def save_model(self, request, obj, form, change):
        fields = None
        if change:
            concrete = {f.name for f in obj._meta.concrete_fields}
            fields = [name for name in form.changed_data if name in concrete]
        model_save(instance=obj, actor=request.user, fields=fields)

    def delete_model(self, request, obj):
        model_delete(instance=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for obj in restrict(queryset, request.user, DELETE):
            model_delete(instance=obj, actor=request.user)

    def save_formset(self, request, form, formset, change):
        instances = formset.save(commit=False)
        for obj in formset.deleted_objects:
            model_delete(instance=obj, actor=request.user)
        for obj in instances:
            if _has_district_field(type(obj)) and obj.district_id is None:
                obj.district_id = form.instance.district_id
            model_save(instance=obj, actor=request.user)
        formset.save_m2m()


class TenantInline(GateMixin, admin.TabularInline):
    """Inline of a TenantModel: restricted rows and choices; the parent admin saves via services."""

    extra = 0
    show_change_link = True

    def get_exclude(self, request, obj=None):
        # Inline rows always take the parent's district (set in TenantAdmin.save_formset).
        return [*list(super().get_exclude(request, obj) or []), "district"]

    def has_add_permission(self, request, obj=None):
        return super().has_add_permission(request, obj) and (
            obj is None or can(request.user, obj, CHANGE)
        )

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        parent_district = getattr(obj, "district_id", None)
        if parent_district is None:
            return formset
        form = _with_district(formset.form, parent_district)
        formset.form = form
        return formset


# --- registrations of the platform's own models ------------------------------------------------


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    """Logins. Platform operators only; districts give logins to staff from the staff page."""

    list_display = [
        "username",
        "first_name",
        "last_name",
        "email",
        "is_staff",
        "is_system_actor",
        "is_active",
    ]
    list_filter = ["is_staff", "is_superuser", "is_active", "is_system_actor", "groups"]
    fieldsets = [*DjangoUserAdmin.fieldsets, ("System", {"fields": ["is_system_actor"]})]


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AccessLogEntry)
class AccessLogEntryAdmin(GateMixin, ReadOnlyAdmin):
    """Who opened which student's record (FERPA). Filter by student from the student page."""

    list_display = ["at", "actor_label", "object_table", "object_id", "student_id", "path"]
    list_filter = ["object_table"]
    search_fields = ["actor_label", "=student_id"]
    date_hierarchy = "at"
    show_full_result_count = False

    def lookup_allowed(self, lookup, value, request=None):
        return lookup == "student_id" or super().lookup_allowed(lookup, value, request)

    def get_exclude(self, request, obj=None):
        return []


@admin.register(Tombstone)
class TombstoneAdmin(ReadOnlyAdmin):
    """Deleted rows as the change feed sees them. Platform operators only."""

    list_display = [
        "change_version",
        "table_name",
        "object_id",
        "district_id",
        "source_id",
        "deleted_at",
    ]
    list_filter = ["table_name"]
    search_fields = ["=object_id", "source_id"]

    def has_view_permission(self, request, obj=None):
        return request.user.is_superuser

    def has_module_permission(self, request):
        return request.user.is_superuser
