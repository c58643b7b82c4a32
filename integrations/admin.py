"""The district admin's face of the integration engine: integrations and their mappings,
crosswalks, sync definitions, runs (live progress, diff, errors, approve, roll back), record
errors and identity reviews.

Thin over ``integrations.services``: every write is a service call with the signed-in user as
the actor, and every queryset passes the gate (``restrict``), so another district's
integration, run or review is a 404. Connector secrets are password inputs that are never
filled in; an inbound secret is shown once, in the response that created it.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import flatten_fieldsets, quote, unquote
from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import OuterRef, Subquery
from django.http import (
    Http404,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import mark_safe
from django.utils.text import Truncator, capfirst

from bxos.common import access
from bxos.common.admin import GateMixin, TenantAdmin
from bxos.common.permissions import CHANGE, VIEW, can, restrict
from bxos.common.services import model_delete, model_save
from integrations import admin_services, push, selectors, services
from integrations import entities as ent
from integrations.choices import (
    ACTIVE,
    CircuitState,
    ErrorStatus,
    ReviewStatus,
    RunStatus,
    RunTrigger,
    ScheduleKind,
)
from integrations.connectors import registry
from integrations.forms import (
    CrosswalkForm,
    MappingForm,
    RunNowForm,
    definition_form,
    integration_form,
    param_field_name,
)
from integrations.models import (
    ConflictStatus,
    Crosswalk,
    IdentityReview,
    Integration,
    Mapping,
    MappingVersion,
    PushedAction,
    RecordError,
    RunChange,
    SyncConflict,
    SyncDefinition,
    SyncRun,
)

#: Record errors shown per page on a run's page (all of them are in the CSV).
ERRORS_PER_PAGE = 50

STATUS_CSS = {
    RunStatus.QUEUED: "integration-muted",
    RunStatus.RUNNING: "integration-info",
    RunStatus.HELD: "integration-warn",
    RunStatus.SUCCEEDED: "integration-ok",
    RunStatus.PARTIAL: "integration-warn",
    RunStatus.FAILED: "integration-bad",
    RunStatus.DISCARDED: "integration-muted",
    RunStatus.ROLLING_BACK: "integration-info",
    RunStatus.ROLLED_BACK: "integration-muted",
}
CIRCUIT_CSS = {
    CircuitState.CLOSED: "integration-ok",
    CircuitState.HALF_OPEN: "integration-warn",
    CircuitState.OPEN: "integration-bad",
}
CIRCUIT_SHORT = {
    CircuitState.CLOSED: "Closed",
    CircuitState.HALF_OPEN: "Half-open",
    CircuitState.OPEN: "Open",
}
REVIEW_CSS = {
    ReviewStatus.OPEN: "integration-warn",
    ReviewStatus.MERGED: "integration-ok",
    ReviewStatus.DISTINCT: "integration-info",
    ReviewStatus.UNMERGED: "integration-muted",
}
CONFLICT_CSS = {
    ConflictStatus.OPEN: "integration-warn",
    ConflictStatus.RESOLVED_HUB: "integration-ok",
    ConflictStatus.RESOLVED_SOURCE: "integration-ok",
    ConflictStatus.DISMISSED: "integration-muted",
}
TRIGGER_SHORT = {
    RunTrigger.MANUAL: "started by a person",
    RunTrigger.SCHEDULE: "on schedule",
    RunTrigger.EVENT: "on an inbound event",
    RunTrigger.RETRY: "re-run of failed records",
}
CSS = {"all": ["integrations/admin.css"]}


def _admin_url(obj, view: str = "change", *args) -> str:
    opts = obj._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_{view}", args=[quote(obj.pk), *args])


def _when(value) -> str:
    if value is None:
        return "—"
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M %Z")


def _badge(text: str, css: str, **data: Any):
    attrs = format_html_join(
        "", ' data-{}="{}"', ((k.replace("_", "-"), v) for k, v in data.items())
    )
    return format_html('<span class="integration-badge {}"{}>{}</span>', css, attrs, text)


def run_badge(run: SyncRun):
    short = {RunStatus.HELD: "Held", RunStatus.PARTIAL: "Partial"}.get(run.status)
    return _badge(
        short or run.get_status_display(), STATUS_CSS.get(run.status, ""), run_status=run.pk
    )


def circuit_badge(integration: Integration):
    return _badge(
        CIRCUIT_SHORT.get(integration.circuit_state, integration.circuit_state),
        CIRCUIT_CSS.get(integration.circuit_state, ""),
    )


def duration_text(delta: timedelta | None) -> str:
    if delta is None:
        return "—"
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def progress_bar(run: SyncRun, *, reload_when_done: bool = False):
    """The live bar of a queued or running run (progress.js polls its JSON view)."""
    line = (
        f"{run.processed:,} of {run.total:,} · {run.percent}%"
        if run.total
        else (
            "Waiting for a worker"
            if run.status in (RunStatus.QUEUED, RunStatus.ROLLING_BACK)
            else "Counting records…"
        )
    )
    if run.phase:
        line += f" · {run.phase}"
    return format_html(
        '<div class="integration-progress" role="progressbar" aria-valuemin="0" '
        'aria-valuemax="100" aria-valuenow="{}" data-progress-url="{}"{}>'
        '<div class="integration-progress-track"><div class="integration-progress-fill" '
        'style="width: {}%"></div></div><div class="integration-progress-text">{}</div></div>',
        run.percent,
        _admin_url(run, "progress"),
        mark_safe(" data-reload-when-done") if reload_when_done else "",
        run.percent,
        line,
    )


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text.endswith((".", "!", "?")) else text + "."


def _errors_to_form(form, exc: ValidationError, aliases: dict[str, str] | None = None) -> None:
    """Put a service's ValidationError on the form's fields (unknown keys: the whole form)."""
    aliases = aliases or {}
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for key, errors in exc.error_dict.items():
        field = aliases.get(key, key)
        if field not in form.fields or field == NON_FIELD_ERRORS:
            field = None
        for error in errors:
            form.add_error(field, error)


class _Pages:
    """Custom pages of an integrations admin: the admin's chrome, the gate, the breadcrumbs."""

    def _page(self, request, template: str, title: str, obj=None, **context):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": title,
            "original": obj,
            "object_url": _admin_url(obj) if obj is not None else None,
            **context,
        }
        return TemplateResponse(request, f"admin/integrations/{template}", context)

    def _get_for(self, request, object_id, action: str = VIEW):
        """The object if the user may ``action`` it; another district's is a 404."""
        obj = self.get_object(request, unquote(str(object_id)))
        if obj is None:
            raise Http404(f"No {self.model._meta.verbose_name} with id {object_id!r} here.")
        if action == CHANGE and not self.may_act(request, obj):
            raise PermissionDenied
        return obj

    def may_act(self, request, obj=None) -> bool:
        """The model's change permission and the gate's CHANGE on the object: what the pages
        that call services (test, run, approve, merge...) need."""
        opts = self.model._meta
        if not request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}"):
            return False
        return obj is None or can(request.user, obj, CHANGE)

    def _urls(self, *views) -> list:
        opts = self.model._meta
        return [
            path(route, self.admin_site.admin_view(view), name=f"{opts.app_label}_{name}")
            for route, view, name in views
        ]


#: Rows that belong to an integration or definition and go with it (its trail): deleting the
#: parent needs no delete permission on them, and the mapping-version link does not block it.
TRAIL = (
    Mapping,
    MappingVersion,
    SyncRun,
    RecordError,
    RunChange,
    IdentityReview,
    SyncConflict,
)


class _DeletesTrail:
    """Delete pages of integrations and definitions: their trail goes with them."""

    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        trail = {str(m._meta.verbose_name) for m in TRAIL}
        perms_needed = {name for name in perms_needed if name not in trail}
        # Mappings "protect" their current version; the delete service unlinks them first.
        mapping = f"{capfirst(Mapping._meta.verbose_name)}: "
        protected = [p for p in protected if not str(p).startswith(mapping)]
        return deleted, counts, perms_needed, protected


class _ServiceForm:
    """Add and change pages saved by one service call (``service_save``).

    A ValidationError from the service goes back on the form's fields and the page is shown
    again with what was typed, as a model form's own errors are: services are where the rules
    live, so the form does not repeat them.
    """

    save_as = False

    def get_error_aliases(self, request, obj) -> dict[str, str]:
        """Error keys of the service that are named differently on the form."""
        return {}

    def service_save(self, request, form, obj):
        raise NotImplementedError

    def service_saved(self, request, obj, add: bool):
        return self.response_add(request, obj) if add else self.response_change(request, obj)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        if request.method != "POST":
            return super().changeform_view(request, object_id, form_url, extra_context)
        add = object_id is None
        if add:
            if not self.has_add_permission(request):
                raise PermissionDenied
            obj = None
        else:
            obj = self.get_object(request, unquote(object_id))
            if obj is None:
                return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
            if not self.has_change_permission(request, obj):
                raise PermissionDenied
        fieldsets = self.get_fieldsets(request, obj)
        form_class = self.get_form(
            request, obj, change=not add, fields=flatten_fieldsets(fieldsets)
        )
        form = form_class(request.POST, request.FILES, instance=obj)
        if form.is_valid():
            try:
                saved = self.service_save(request, form, obj)
            except ValidationError as exc:
                _errors_to_form(form, exc, self.get_error_aliases(request, obj))
            else:
                message = self.construct_change_message(request, form, [], add)
                if add:
                    self.log_addition(request, saved, message)
                else:
                    self.log_change(request, saved, message)
                return self.service_saved(request, saved, add)
        admin_form = helpers.AdminForm(
            form,
            list(fieldsets),
            self.get_prepopulated_fields(request, obj),
            self.get_readonly_fields(request, obj),
            model_admin=self,
        )
        title = "Add %s" if add else "Change %s"
        context = {
            **self.admin_site.each_context(request),
            "title": title % self.opts.verbose_name,
            "subtitle": str(obj) if obj else None,
            "adminform": admin_form,
            "object_id": object_id,
            "original": obj,
            "is_popup": False,
            "to_field": None,
            "media": self.media + admin_form.media,
            "inline_admin_formsets": [],
            "errors": helpers.AdminErrorList(form, []),
            "preserved_filters": self.get_preserved_filters(request),
            **(extra_context or {}),
        }
        return self.render_change_form(
            request, context, add=add, change=not add, obj=obj, form_url=form_url
        )


# --- integrations -------------------------------------------------------------------------------


class ConnectorFilter(admin.SimpleListFilter):
    """By connector type, named as the registry names them."""

    title = "connector"
    parameter_name = "connector"

    def lookups(self, request, model_admin):
        return [(c.type_name, c.label) for c in registry.all_types()]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(connector_type=self.value())
        return queryset


def _connector_or_none(type_name: str):
    try:
        return registry.get(type_name)
    except LookupError:
        return None


def connector_label(integration: Integration) -> str:
    connector_cls = _connector_or_none(integration.connector_type)
    return connector_cls.label if connector_cls else f"{integration.connector_type} (not installed)"


@admin.register(Integration)
class IntegrationAdmin(_DeletesTrail, _ServiceForm, _Pages, TenantAdmin):
    """Connections to the district's source systems: parameters, health, test, mappings."""

    list_display = ["name", "connector", "source_system", "circuit", "last_success", "last_run"]
    # ``source_system`` here is the integration's own setting, not a synced row's lineage.
    lineage_fields = ("created_at", "updated_at")
    list_filter = [ConnectorFilter, "circuit_state", "is_active"]
    search_fields = ["name", "source_system"]
    health_fields = [
        "circuit",
        "last_success",
        "consecutive_failures",
        "success_rate",
        "last_run",
        "last_error_text",
        "last_test",
    ]

    class Media:
        css = CSS

    # --- reads ---------------------------------------------------------------------------------

    def get_queryset(self, request):
        return selectors.integrations_with_last_run(super().get_queryset(request))

    def _connector_cls(self, request, obj=None):
        type_name = obj.connector_type if obj is not None else request.GET.get("type", "")
        return _connector_or_none(type_name)

    def get_fieldsets(self, request, obj=None):
        connector_cls = self._connector_cls(request, obj)
        params = [param_field_name(p.name) for p in connector_cls.params] if connector_cls else []
        connection = (
            f"Connection: {connector_cls.label}" if connector_cls else "Connection",
            {"fields": params, "description": connector_cls.description if connector_cls else ""},
        )
        if obj is None:
            first = ["name", "source_system"]
            if request.user.is_superuser:
                first.insert(0, "district")
            return [(None, {"fields": first}), connection]
        return [
            (None, {"fields": ["name", "connector", "source_system", "is_active"]}),
            ("Health", {"fields": self.health_fields}),
            connection,
        ]

    def get_readonly_fields(self, request, obj=None):
        readonly = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            # The source system name is the lineage stamped on every synced row: renaming it
            # would orphan them.
            readonly += ["connector", "source_system", "district", *self.health_fields]
        return readonly

    def get_form(self, request, obj=None, change=False, **kwargs):
        connector_cls = self._connector_cls(request, obj)
        if connector_cls is not None:
            stored = (
                frozenset(services.integration_secrets(obj)) if obj is not None else frozenset()
            )
            kwargs["form"] = integration_form(connector_cls, stored_secrets=stored)
        return super().get_form(request, obj, change, **kwargs)

    @admin.display(description="connector", ordering="connector_type")
    def connector(self, obj):
        return connector_label(obj)

    @admin.display(description="circuit", ordering="circuit_state")
    def circuit(self, obj):
        badge = circuit_badge(obj)
        if obj.circuit_state == CircuitState.OPEN and obj.circuit_opened_at:
            return format_html(
                '{} <span class="integration-quiet">since {}: runs are refused until a trial '
                "run is allowed</span>",
                badge,
                _when(obj.circuit_opened_at),
            )
        return badge

    @admin.display(description="last success", ordering="last_success_at")
    def last_success(self, obj):
        return _when(obj.last_success_at)

    @admin.display(description="last run", ordering="last_run_status")
    def last_run(self, obj):
        status = getattr(obj, "last_run_status", None)
        if not status:
            return "—"
        run = SyncRun(pk=obj.last_run_id, status=status)
        return format_html('<a href="{}">{}</a>', _admin_url(run), run_badge(run))

    def _health(self, obj) -> selectors.IntegrationHealth:
        if not hasattr(obj, "_health"):
            obj._health = selectors.integration_health(integration=obj)
        return obj._health

    @admin.display(description="success rate")
    def success_rate(self, obj):
        health = self._health(obj)
        if not health.finished:
            return "No finished runs yet."
        return f"{100 * health.success_rate:.0f}% of the last {health.finished} runs " + (
            f"({health.succeeded} succeeded)"
        )

    @admin.display(description="last error")
    def last_error_text(self, obj):
        if not obj.last_error:
            return "—"
        return format_html(
            '<pre class="integration-pre">{}</pre><span class="integration-quiet">{}</span>',
            obj.last_error,
            _when(obj.last_failure_at),
        )

    @admin.display(description="last connection test")
    def last_test(self, obj):
        if not obj.last_test_at:
            return "Not tested yet."
        css = "integration-ok" if obj.last_test_message.startswith("OK") else "integration-bad"
        return format_html(
            '<span class="integration-badge {}">{}</span> {} <span class="integration-quiet">'
            "({})</span>",
            css,
            "OK" if css == "integration-ok" else "Failed",
            obj.last_test_message.removeprefix("OK: ").removeprefix("Failed: "),
            _when(obj.last_test_at),
        )

    # --- pages ---------------------------------------------------------------------------------

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        if self._connector_cls(request) is None:
            choices = [
                {
                    "url": "?" + urlencode({"type": c.type_name}),
                    "label": c.label,
                    "description": c.description,
                    "id": f"connector-{c.type_name}",
                }
                for c in registry.all_types()
            ]
            return self._page(
                request,
                "choose.html",
                "Add integration: choose a connector type",
                intro="An integration connects one source system of the district. Its type "
                "decides the protocol and the parameters asked next.",
                choices=choices,
            )
        return super().add_view(request, form_url, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, unquote(object_id))
        extra = dict(extra_context or {})
        if obj is not None:
            mappings = selectors.mappings_of(actor=request.user, integration=obj)
            extra["mapping_rows"] = [
                {
                    "entity": name,
                    "label": ent.BY_NAME[name].label if name in ent.BY_NAME else name,
                    "version": mappings[name].current if name in mappings else None,
                    "url": _admin_url(obj, "mapping", name),
                }
                for name in ent.in_merge_order(
                    e for e in selectors.connector_entities(obj) if e in ent.BY_NAME
                )
            ]
            extra["definitions"] = [
                (d, _admin_url(d))
                for d in selectors.definitions_of(actor=request.user, integration=obj)
            ]
            extra["add_definition_url"] = (
                reverse("admin:integrations_syncdefinition_add")
                + "?"
                + urlencode({"integration": obj.pk})
            )
            extra["can_act"] = self.may_act(request, obj)
        return super().change_view(request, object_id, form_url, extra)

    def response_add(self, request, obj, post_url_continue=None):
        if "_addanother" in request.POST:
            return super().response_add(request, obj, post_url_continue)
        # Straight to the new integration, where "Test connection" and the mappings are.
        messages.success(
            request,
            f"The integration “{obj}” was added, with the connector's default mappings. "
            "Test the connection, then add a sync definition.",
        )
        return HttpResponseRedirect(_admin_url(obj))

    # --- writes --------------------------------------------------------------------------------

    def service_save(self, request, form, obj):
        params = form.param_values()
        if obj is None:
            return services.integration_create(
                district=form.instance.district,
                name=form.cleaned_data["name"],
                connector_type=form.connector_cls.type_name,
                source_system=form.cleaned_data["source_system"],
                params=params,
                actor=request.user,
            )
        current = Integration.objects.get(pk=obj.pk)
        data = {
            name: form.cleaned_data[name]
            for name in ("name", "is_active")
            if name in form.cleaned_data
        }
        return services.integration_update(
            integration=current, actor=request.user, data=data, params=params
        )

    def get_error_aliases(self, request, obj) -> dict[str, str]:
        # Service errors name parameters; the form's fields are param_<name>.
        connector_cls = self._connector_cls(request, obj)
        if connector_cls is None:
            return {}
        return {p.name: param_field_name(p.name) for p in connector_cls.params}

    def delete_model(self, request, obj):
        admin_services.integration_delete(integration=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for obj in restrict(queryset, request.user, "delete"):
            admin_services.integration_delete(integration=obj, actor=request.user)

    def get_urls(self):
        return [
            *self._urls(
                ("<path:object_id>/test/", self.test_view, "integration_test"),
                (
                    "<path:object_id>/mappings/<str:entity>/restore/<int:version_id>/",
                    self.mapping_restore_view,
                    "integration_mapping_restore",
                ),
                (
                    "<path:object_id>/mappings/<str:entity>/",
                    self.mapping_view,
                    "integration_mapping",
                ),
            ),
            *super().get_urls(),
        ]

    def test_view(self, request, object_id):
        integration = self._get_for(request, object_id, CHANGE)
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        ok, message = services.integration_test(integration=integration, actor=request.user)
        if ok:
            messages.success(request, f"Connection test succeeded: {message}")
        else:
            messages.error(request, f"Connection test failed: {message}")
        return HttpResponseRedirect(_admin_url(integration))

    # --- mappings ------------------------------------------------------------------------------

    def _mapping_context(self, request, object_id, entity: str):
        integration = self._get_for(request, object_id, VIEW)
        if entity not in selectors.connector_entities(integration) or entity not in ent.BY_NAME:
            raise Http404(f"{integration} does not read {entity!r}.")
        if not request.user.has_perm("integrations.view_mapping"):
            raise PermissionDenied
        mapping = selectors.mappings_of(actor=request.user, integration=integration).get(entity)
        return integration, mapping

    def _may_edit_mapping(self, request, integration) -> bool:
        return (
            request.user.has_perm("integrations.add_mapping")
            and request.user.has_perm("integrations.change_mapping")
            and self.may_act(request, integration)
        )

    def mapping_view(self, request, object_id, entity):
        integration, mapping = self._mapping_context(request, object_id, entity)
        can_edit = self._may_edit_mapping(request, integration)
        if mapping is not None and mapping.current is not None:
            rules = mapping.current.rules
        else:
            try:
                rules = services.current_rules(integration, entity)[0]
            except ValidationError:
                rules = []  # no saved mapping and no connector default: start from nothing
        form = MappingForm(
            request.POST if request.method == "POST" else None,
            initial={"rules": json.dumps(rules, indent=2, ensure_ascii=False)},
        )
        problems: list[str] = []
        preview = None
        if request.method == "POST":
            if not can_edit:
                raise PermissionDenied
            if form.is_valid():
                rules = form.cleaned_data["rules"]
                if "_preview" in request.POST:
                    preview, problems = self._preview(request, form, integration, entity, rules)
                else:
                    try:
                        version = services.mapping_save(
                            integration=integration,
                            entity=entity,
                            rules=rules,
                            actor=request.user,
                            note=form.cleaned_data["note"],
                        )
                    except ValidationError as exc:
                        problems = exc.messages
                    else:
                        if mapping is not None and mapping.current_id == version.pk:
                            messages.info(request, "The rules are unchanged: no new version.")
                        else:
                            messages.success(
                                request, f"Saved as version {version.number} of the mapping."
                            )
                        return HttpResponseRedirect(_admin_url(integration, "mapping", entity))
        versions = (
            list(selectors.mapping_versions(actor=request.user, mapping=mapping))
            if mapping is not None
            else []
        )
        spec = ent.spec(entity)
        return self._page(
            request,
            "mapping.html",
            f"Mapping: {spec.label}",
            integration,
            form=form,
            entity=entity,
            spec=spec,
            targets=[
                {
                    "name": t.name,
                    "kind": t.kind + (f" → {t.ref}" if t.ref else ""),
                    "required": t.required and not t.default_sql,
                    "codes": ", ".join(t.codes[:14]) + (" …" if len(t.codes) > 14 else ""),
                    "defaulted": bool(t.default_sql),
                }
                for t in spec.targets
            ],
            mapping=mapping,
            versions=versions,
            problems=problems,
            preview=preview,
            can_edit=can_edit,
            using_default=mapping is None or mapping.current is None,
        )

    def _preview(self, request, form, integration, entity, rules):
        rows = selectors.parse_sample_csv(form.cleaned_data["sample"])
        if not rows:
            form.add_error("sample", "Paste a header line with field names and at least one row.")
            return None, []
        try:
            results = services.mapping_preview(
                integration=integration, entity=entity, rules=rules, rows=rows
            )
        except ValidationError as exc:
            return None, exc.messages
        targets = [r.get("target") for r in rules if isinstance(r, dict)]
        targets = [t for t in targets if any(t in result for result in results)]
        return {
            "columns": [f"Row {n}" for n in range(1, len(rows) + 1)],
            "rows": [
                {"target": t, "cells": [result.get(t, {}) for result in results]} for t in targets
            ],
            "errors": sum(1 for result in results for cell in result.values() if cell.get("error")),
        }, []

    def mapping_restore_view(self, request, object_id, entity, version_id):
        integration, mapping = self._mapping_context(request, object_id, entity)
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if mapping is None or not self._may_edit_mapping(request, integration):
            raise PermissionDenied
        version = (
            selectors.mapping_versions(actor=request.user, mapping=mapping)
            .filter(pk=version_id)
            .first()
        )
        if version is None:
            raise Http404("No such version of this mapping.")
        try:
            restored = services.mapping_restore(version=version, actor=request.user)
        except ValidationError as exc:
            messages.error(request, "Not restored: " + " ".join(exc.messages))
        else:
            messages.success(
                request, f"Version {version.number} restored as version {restored.number}."
            )
        return HttpResponseRedirect(_admin_url(integration, "mapping", entity))


# --- crosswalks ---------------------------------------------------------------------------------


@admin.register(Crosswalk)
class CrosswalkAdmin(TenantAdmin):
    """Value tables for mappings (SIS codes to hub codes)."""

    form = CrosswalkForm
    list_display = ["name", "description", "entries"]
    search_fields = ["name", "description"]

    class Media:
        css = CSS

    @admin.display(description="entries")
    def entries(self, obj):
        return len(obj.values or {})

    # A crosswalk is configuration: audited, but no domain event (no subscriber wants one).
    def save_model(self, request, obj, form, change):
        fields = None
        if change:
            concrete = {f.name for f in obj._meta.concrete_fields}
            fields = [name for name in form.changed_data if name in concrete]
        model_save(instance=obj, actor=request.user, fields=fields, emit=False)

    def delete_model(self, request, obj):
        model_delete(instance=obj, actor=request.user, emit=False)

    def delete_queryset(self, request, queryset):
        for obj in restrict(queryset, request.user, "delete"):
            model_delete(instance=obj, actor=request.user, emit=False)


# --- sync definitions ---------------------------------------------------------------------------


@admin.register(SyncDefinition)
class SyncDefinitionAdmin(_DeletesTrail, _ServiceForm, _Pages, TenantAdmin):
    """What to sync, how and when; "Run now"."""

    list_display = [
        "name",
        "integration",
        "entity_list",
        "mode",
        "schedule",
        "last_run",
        "is_active",
    ]
    list_filter = ["integration", "mode", "schedule_kind", "is_active"]
    search_fields = ["name", "integration__name"]
    list_select_related = ["integration"]

    class Media:
        css = CSS

    def get_queryset(self, request):
        latest = SyncRun.objects.filter(definition=OuterRef("pk")).order_by("-id")
        return (
            super()
            .get_queryset(request)
            .annotate(
                last_run_status=Subquery(latest.values("status")[:1]),
                last_run_id=Subquery(latest.values("id")[:1]),
            )
        )

    def _integration(self, request, obj=None) -> Integration | None:
        if obj is not None:
            return obj.integration
        pk = request.GET.get("integration", "")
        if not pk.isdigit():
            return None
        return selectors.integrations_for(actor=request.user, action=CHANGE).filter(pk=pk).first()

    def get_fieldsets(self, request, obj=None):
        when = ["schedule_kind", "interval_minutes", "crontab"]
        if obj is not None:
            when += ["periodic_task_link", "inbound_url"]
        sets = [
            (None, {"fields": ["integration_link", "name", "entities", "is_active"]}),
            ("How", {"fields": ["mode", "direction", "conflict_policy"]}),
            ("When", {"fields": when}),
            (
                "Hold for approval",
                {
                    "fields": ["hold_removal_pct", "hold_change_pct", "hold_min_rows"],
                    "description": "A run that would change more than this waits, with a "
                    "preview of its changes, until someone approves or discards it.",
                },
            ),
        ]
        if obj is not None:
            sets.append(("Cursor", {"fields": ["cursor"], "classes": ["collapse"]}))
        return sets

    def get_readonly_fields(self, request, obj=None):
        return [
            *super().get_readonly_fields(request, obj),
            "integration_link",
            "periodic_task_link",
            "inbound_url",
            "cursor",
        ]

    def get_form(self, request, obj=None, change=False, **kwargs):
        integration = self._integration(request, obj)
        if integration is not None:
            kwargs["form"] = definition_form(integration)
        return super().get_form(request, obj, change, **kwargs)

    @admin.display(description="entities")
    def entity_list(self, obj):
        labels = [ent.BY_NAME[e].label if e in ent.BY_NAME else e for e in obj.entities]
        return Truncator(", ".join(labels)).chars(70)

    @admin.display(description="schedule", ordering="schedule_kind")
    def schedule(self, obj):
        if obj.schedule_kind == ScheduleKind.INTERVAL:
            return f"Every {obj.interval_minutes} min"
        if obj.schedule_kind == ScheduleKind.CRONTAB:
            return format_html("Crontab <code>{}</code>", obj.crontab)
        if obj.schedule_kind == ScheduleKind.EVENT:
            return "Event-driven"
        return "Manual"

    @admin.display(description="last run", ordering="last_run_status")
    def last_run(self, obj):
        status = getattr(obj, "last_run_status", None)
        if not status:
            return "—"
        run = SyncRun(pk=obj.last_run_id, status=status)
        return format_html('<a href="{}">#{} {}</a>', _admin_url(run), run.pk, run_badge(run))

    @admin.display(description="integration")
    def integration_link(self, obj):
        if obj.integration_id is None:
            return "—"
        return format_html(
            '<a href="{}">{}</a> <span class="integration-quiet">({})</span>',
            _admin_url(obj.integration),
            obj.integration,
            connector_label(obj.integration),
        )

    @admin.display(description="beat task")
    def periodic_task_link(self, obj):
        task = obj.periodic_task
        if task is None:
            return "None: this definition runs " + (
                "on signed events." if obj.schedule_kind == ScheduleKind.EVENT else "when started."
            )
        schedule = task.interval or task.crontab
        # Named, not linked: beat's own admin is the platform operators'.
        return format_html(
            "{} <span class='integration-quiet'>({}; {})</span>",
            task.name,
            schedule,
            "enabled" if task.enabled else "disabled",
        )

    @admin.display(description="inbound URL")
    def inbound_url(self, obj):
        if obj.schedule_kind != ScheduleKind.EVENT:
            return "Only for event-driven syncs."
        url = reverse("integrations:inbound", args=[obj.pk])
        return format_html(
            "<code>POST {}</code><br><span class='integration-quiet'>Signed with Standard "
            "Webhooks headers (webhook-id, webhook-timestamp, webhook-signature). The secret "
            "was shown once, when the schedule became event-driven.</span>",
            url,
        )

    # --- pages ---------------------------------------------------------------------------------

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        if "integration" in request.GET and self._integration(request) is None:
            raise Http404("No such integration here.")
        if self._integration(request) is None:
            integrations = selectors.integrations_for(actor=request.user, action=CHANGE)
            choices = [
                {
                    "url": "?" + urlencode({"integration": i.pk}),
                    "label": i.name,
                    "description": connector_label(i),
                    "id": f"integration-{i.pk}",
                }
                for i in integrations
            ]
            return self._page(
                request,
                "choose.html",
                "Add sync definition: choose the integration",
                intro="A sync definition reads entities from one integration.",
                choices=choices,
                empty=format_html(
                    'No integration yet: <a href="{}">add one first</a>.',
                    reverse("admin:integrations_integration_add"),
                ),
            )
        return super().add_view(request, form_url, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, unquote(object_id))
        extra = dict(extra_context or {})
        if obj is not None:
            extra["recent_runs"] = [
                (run, _admin_url(run), run_badge(run), duration_text(run.duration))
                for run in selectors.recent_runs(actor=request.user, definition=obj)
            ]
            extra["can_run"] = request.user.has_perm("integrations.add_syncrun") and can(
                request.user, obj, VIEW
            )
        return super().change_view(request, object_id, form_url, extra)

    def response_add(self, request, obj, post_url_continue=None):
        if "_addanother" in request.POST:
            return super().response_add(request, obj, post_url_continue)
        # Straight to the new definition, where "Run now" is.
        messages.success(request, f"The sync definition “{obj}” was added.")
        return HttpResponseRedirect(_admin_url(obj))

    def service_save(self, request, form, obj):
        definition = form.instance
        had_secret = bool(definition.inbound_secret)
        saved = services.definition_save(definition=definition, actor=request.user)
        if saved.inbound_secret and not had_secret:
            request._new_inbound_secret = saved.inbound_secret
        return saved

    def service_saved(self, request, obj, add: bool):
        secret = getattr(request, "_new_inbound_secret", None)
        if secret:
            # Its one showing: in this response, never stored in a message or the session.
            return self._page(
                request,
                "secret.html",
                "Inbound signing secret",
                obj,
                secret=secret,
                inbound_url=request.build_absolute_uri(
                    reverse("integrations:inbound", args=[obj.pk])
                ),
            )
        return super().service_saved(request, obj, add)

    def delete_model(self, request, obj):
        admin_services.definition_delete(definition=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for obj in restrict(queryset, request.user, "delete"):
            admin_services.definition_delete(definition=obj, actor=request.user)

    def get_urls(self):
        return [
            *self._urls(("<path:object_id>/run/", self.run_now_view, "syncdefinition_run")),
            *super().get_urls(),
        ]

    def run_now_view(self, request, object_id):
        definition = self._get_for(request, object_id, VIEW)
        if not request.user.has_perm("integrations.add_syncrun"):
            raise PermissionDenied
        needs_upload = selectors.definition_needs_upload(definition)
        posted = request.method == "POST"
        form = RunNowForm(
            request.POST if posted else None,
            request.FILES if posted else None,
            needs_upload=needs_upload,
        )
        error = None
        if request.method == "POST" and form.is_valid():
            try:
                run = services.run_start(
                    definition=definition,
                    actor=request.user,
                    upload=form.cleaned_data.get("upload"),
                )
            except ValidationError as exc:
                error = " ".join(exc.messages)
            else:
                messages.success(
                    request, f"Run #{run.pk} is queued; it starts when a worker is free."
                )
                return HttpResponseRedirect(_admin_url(run))
        entities = ", ".join(ent.BY_NAME[e].label for e in definition.entities if e in ent.BY_NAME)
        return self._page(
            request,
            "action.html",
            "Run now",
            definition,
            form=form,
            error=error,
            intro=f"Start a {definition.get_mode_display().split(' (')[0].lower()} run of "
            f"{definition} now: {entities}."
            + (" Choose the OneRoster zip to sync." if needs_upload else ""),
            submit="Start the run",
        )


# --- sync runs ----------------------------------------------------------------------------------


class _ReadOnlyGated(_Pages, GateMixin, admin.ModelAdmin):
    """Rows written only by the engine: a view-only page; decisions are the pages' buttons."""

    list_per_page = 50
    show_full_result_count = False

    class Media:
        css = CSS

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_exclude(self, request, obj=None):
        return []


class RunDefinitionFilter(admin.SimpleListFilter):
    """By sync definition; the choices are the district's definitions, through the gate."""

    title = "sync definition"
    parameter_name = "definition"

    def lookups(self, request, model_admin):
        definitions = restrict(SyncDefinition.objects.all(), request.user, VIEW)
        return [(d.pk, str(d)) for d in definitions.only("name")]

    def queryset(self, request, queryset):
        if self.value() and self.value().isdigit():
            return queryset.filter(definition_id=self.value())
        return queryset


@admin.register(SyncRun)
class SyncRunAdmin(_ReadOnlyGated):
    """Every run: live progress, counts, diff, errors; approve, discard, roll back, re-run."""

    list_display = [
        "run_id",
        "definition_link",
        "status_column",
        "started",
        "duration_text",
        "counts_column",
    ]
    list_display_links = ["run_id"]
    list_filter = ["status", "trigger", RunDefinitionFilter]
    list_select_related = ["definition"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    ("definition_link", "status_badge"),
                    ("trigger", "requested_by"),
                    ("queued_at", "started_at", "finished_at", "duration_text"),
                    "progress_detail",
                    "counts_table",
                    "message",
                ]
            },
        ),
        (
            "Details",
            {
                "fields": [
                    "warnings_list",
                    "mapping_versions_list",
                    ("cursor_before", "cursor_after"),
                    "decision",
                ]
            },
        ),
    ]
    readonly_fields = [
        "definition_link",
        "status_badge",
        "trigger",
        "requested_by",
        "queued_at",
        "started_at",
        "finished_at",
        "duration_text",
        "progress_detail",
        "message",
        "counts_table",
        "warnings_list",
        "mapping_versions_list",
        "cursor_before",
        "cursor_after",
        "decision",
    ]

    class Media:
        css = CSS
        js = ["integrations/progress.js"]

    def get_queryset(self, request):
        # The list needs none of the long columns; a run's page reads them when it shows them.
        return super().get_queryset(request).defer("log", "staging", "diff")

    @admin.display(description="run", ordering="id")
    def run_id(self, obj):
        return f"#{obj.pk}"

    @admin.display(description="definition", ordering="definition__name")
    def definition_link(self, obj):
        return format_html('<a href="{}">{}</a>', _admin_url(obj.definition), obj.definition)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return run_badge(obj)

    @admin.display(description="started", ordering="started_at")
    def started(self, obj):
        when = timezone.localtime(obj.started_at or obj.queued_at)
        return format_html(
            '{}<br><span class="integration-quiet">{}</span>',
            when.strftime("%Y-%m-%d %H:%M"),
            TRIGGER_SHORT.get(obj.trigger, obj.trigger),
        )

    @admin.display(description="duration")
    def duration_text(self, obj):
        if obj.started_at and not obj.finished_at and obj.status in ACTIVE:
            return duration_text(timezone.now() - obj.started_at) + " so far"
        return duration_text(obj.duration)

    @admin.display(description="status", ordering="status")
    def status_column(self, obj):
        # The list is narrow: the live bar (or the way to a held run's decision) goes under
        # the status rather than in a column of its own.
        if obj.status in ACTIVE:
            return format_html("{}{}", run_badge(obj), progress_bar(obj))
        if obj.status == RunStatus.HELD:
            return format_html(
                '{}<br><a href="{}">Review and approve</a>',
                run_badge(obj),
                _admin_url(obj, "approve"),
            )
        return run_badge(obj)

    @admin.display(description="counts")
    def counts_column(self, obj):
        # Count and name pairs that wrap to the column's width (seven columns would not fit).
        return format_html_join(
            " ",
            '<span class="integration-count{}"><b data-run-count="{}:{}">{}</b> {}</span>',
            (
                (
                    "" if getattr(obj, f"{n}_count") else " integration-zero",
                    obj.pk,
                    n,
                    f"{getattr(obj, f'{n}_count'):,}",
                    n,
                )
                for n in selectors.COUNT_NAMES
            ),
        )

    @admin.display(description="progress")
    def progress_detail(self, obj):
        if obj.status in ACTIVE:
            return progress_bar(obj, reload_when_done=True)
        if obj.phase:
            return obj.phase
        return f"{obj.processed:,} of {obj.total:,} processed" if obj.total else "—"

    @admin.display(description="counts")
    def counts_table(self, obj):
        head = format_html_join(
            "", '<th class="num">{}</th>', ((n,) for n in selectors.COUNT_NAMES)
        )
        cells = format_html_join(
            "",
            '<td class="num" data-run-count="{}:{}">{}</td>',
            ((obj.pk, n, f"{getattr(obj, f'{n}_count'):,}") for n in selectors.COUNT_NAMES),
        )
        return format_html(
            '<table class="integration-table"><thead><tr>{}</tr></thead><tbody><tr>{}</tr>'
            "</tbody></table>",
            head,
            cells,
        )

    @admin.display(description="warnings")
    def warnings_list(self, obj):
        if not obj.warnings:
            return "None."
        return format_html(
            "<ul>{}</ul>", format_html_join("", "<li>{}</li>", ((w,) for w in obj.warnings))
        )

    @admin.display(description="mapping versions")
    def mapping_versions_list(self, obj):
        if not obj.mapping_versions:
            return "—"
        ids = [v for v in obj.mapping_versions.values() if v]
        numbers = dict(MappingVersion.objects.filter(pk__in=ids).values_list("pk", "number"))
        items = []
        for entity, version_id in obj.mapping_versions.items():
            label = ent.BY_NAME[entity].label if entity in ent.BY_NAME else entity
            if version_id and version_id in numbers:
                url = _admin_url(obj.definition.integration, "mapping", entity)
                items.append(
                    format_html('{}: <a href="{}">v{}</a>', label, url, numbers[version_id])
                )
            else:
                items.append(format_html("{}: connector default", label))
        return format_html_join(mark_safe("<br>"), "{}", ((i,) for i in items))

    @admin.display(description="decided")
    def decision(self, obj):
        if not obj.decided_at and not obj.rollback_requested_at:
            return "—"
        parts = []
        if obj.decided_at:
            parts.append(
                f"by {obj.decided_by or 'someone since removed'} on {_when(obj.decided_at)}"
            )
        if obj.rollback_requested_at:
            parts.append(
                f"rollback requested by {obj.rollback_requested_by or 'someone since removed'} "
                f"on {_when(obj.rollback_requested_at)}"
            )
        if obj.rolled_back_at:
            parts.append(f"rolled back on {_when(obj.rolled_back_at)}")
        return "; ".join(parts)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        run = self.get_object(request, unquote(object_id))
        extra = dict(extra_context or {})
        if run is not None:
            errors = selectors.run_errors(actor=request.user, run=run)
            page = Paginator(errors, ERRORS_PER_PAGE).get_page(request.GET.get("errors_page"))
            open_errors = errors.filter(status=ErrorStatus.OPEN).exists()
            may_act = self.may_act(request, run)
            extra.update(
                {
                    "title": f"Sync run #{run.pk}",
                    "diff": selectors.diff_tables(run.diff),
                    "errors_page": page,
                    "errors_count": page.paginator.count,
                    "errors_list_url": reverse("admin:integrations_recorderror_changelist")
                    + "?"
                    + urlencode({"run": run.pk}),
                    "log": run.log,
                    "can_approve": may_act and run.status == RunStatus.HELD,
                    "can_rollback": may_act
                    and run.status in (RunStatus.SUCCEEDED, RunStatus.PARTIAL),
                    "can_rerun": may_act
                    and open_errors
                    and run.status in (RunStatus.SUCCEEDED, RunStatus.PARTIAL)
                    and request.user.has_perm("integrations.add_syncrun"),
                }
            )
        return super().change_view(request, object_id, form_url, extra)

    def get_urls(self):
        return [
            *self._urls(
                ("<path:object_id>/progress/", self.progress_view, "syncrun_progress"),
                ("<path:object_id>/errors.csv", self.errors_csv_view, "syncrun_errors_csv"),
                ("<path:object_id>/approve/", self.approve_view, "syncrun_approve"),
                ("<path:object_id>/discard/", self.discard_view, "syncrun_discard"),
                ("<path:object_id>/rollback/", self.rollback_view, "syncrun_rollback"),
                ("<path:object_id>/rerun/", self.rerun_view, "syncrun_rerun"),
            ),
            *super().get_urls(),
        ]

    def progress_view(self, request, object_id):
        run = self._get_for(request, object_id, VIEW)
        response = JsonResponse(selectors.run_progress(run))
        response["Cache-Control"] = "no-store"
        return response

    def errors_csv_view(self, request, object_id):
        run = self._get_for(request, object_id, VIEW)
        response = StreamingHttpResponse(
            selectors.run_errors_csv(actor=request.user, run=run),
            content_type="text/csv; charset=utf-8",
        )
        response["Content-Disposition"] = f'attachment; filename="sync-run-{run.pk}-errors.csv"'
        return response

    def _decide(self, request, object_id, *, allowed, action, title, intro, submit, done, diff):
        run = self._get_for(request, object_id, CHANGE)
        error = None
        if run.status not in allowed:
            error = (
                f"This run is {run.get_status_display().lower()}; {title.lower()} is not possible."
            )
        elif request.method == "POST":
            try:
                result = action(run=run, actor=request.user)
            except ValidationError as exc:
                error = " ".join(exc.messages)
            else:
                messages.success(request, done(result))
                return HttpResponseRedirect(_admin_url(result))
        return self._page(
            request,
            "action.html",
            title,
            run,
            intro=intro(run),
            error=error,
            submit=submit,
            diff=selectors.diff_tables(run.diff) if diff else None,
        )

    def approve_view(self, request, object_id):
        return self._decide(
            request,
            object_id,
            allowed=(RunStatus.HELD,),
            action=services.run_approve,
            title="Approve the held run",
            intro=lambda run: (
                f"{_sentence(run.message)} Approving applies exactly the changes below "
                "(staged when the run was held)."
            ),
            submit="Approve and apply",
            done=lambda run: (
                f"Run #{run.pk} was approved: a worker is applying it; its progress is below."
            ),
            diff=True,
        )

    def discard_view(self, request, object_id):
        return self._decide(
            request,
            object_id,
            allowed=(RunStatus.HELD,),
            action=services.run_discard,
            title="Discard the held run",
            intro=lambda run: (
                f"{_sentence(run.message)} Discarding changes nothing in the hub; the next run "
                "reads the source again from the same point."
            ),
            submit="Discard",
            done=lambda run: f"Run #{run.pk} was discarded; nothing changed.",
            diff=True,
        )

    def rollback_view(self, request, object_id):
        return self._decide(
            request,
            object_id,
            allowed=(RunStatus.SUCCEEDED, RunStatus.PARTIAL),
            action=services.run_rollback,
            title="Roll back the run",
            intro=lambda run: (
                f"Undo run #{run.pk} exactly: the {run.created_count:,} rows it "
                f"created are deleted, the {run.updated_count:,} it changed get their values back, "
                f"and the {run.deleted_count:,} it removed return. The definition's cursor goes "
                "back to where it was. Only the latest run of a definition can be rolled back. "
                "A worker does it, in your name; the run's page shows its progress."
            ),
            submit="Roll back",
            done=lambda run: (
                f"Run #{run.pk}: rollback requested. A worker is undoing it in your name; its "
                "progress is below."
            ),
            diff=True,
        )

    def rerun_view(self, request, object_id):
        if not request.user.has_perm("integrations.add_syncrun"):
            raise PermissionDenied
        return self._decide(
            request,
            object_id,
            allowed=(RunStatus.SUCCEEDED, RunStatus.PARTIAL),
            action=services.run_rerun_failed,
            title="Re-run failed records",
            intro=lambda run: (
                f"A new run retries the records that failed in run #{run.pk} and the "
                "definition's other open errors (dismissed ones are not retried). A file "
                "source reads no new file, so nothing else changes; an API source also reads "
                "what changed since its last run."
            ),
            submit="Start the re-run",
            done=lambda run: f"Run #{run.pk} is queued to retry the failed records.",
            diff=False,
        )


# --- record errors ------------------------------------------------------------------------------


class RunFilter(admin.SimpleListFilter):
    """The errors of one run (linked from the run's page); no choices listed."""

    title = "run"
    parameter_name = "run"

    def lookups(self, request, model_admin):
        if self.value() and self.value().isdigit():
            return [(self.value(), f"Run #{self.value()}")]
        return []

    def queryset(self, request, queryset):
        if self.value() and self.value().isdigit():
            return queryset.filter(run_id=self.value())
        return queryset


@admin.register(RecordError)
class RecordErrorAdmin(_ReadOnlyGated):
    """Records that could not be synced; open ones are retried by the next run."""

    list_display = ["run_link", "entity", "where", "field", "reason_short", "source_id", "status"]
    list_filter = ["status", "entity", RunFilter]
    search_fields = ["source_id", "reason"]
    list_select_related = ["run"]
    actions = ["dismiss"]
    fields = [
        "run_link",
        "entity",
        "file",
        "line",
        "field",
        "reason",
        "source_id",
        "status",
        "raw_pretty",
        "created_at",
    ]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).defer("raw")

    def has_dismiss_permission(self, request):
        return self.may_act(request)

    @admin.display(description="run", ordering="run_id")
    def run_link(self, obj):
        return format_html('<a href="{}">#{}</a>', _admin_url(obj.run), obj.run_id)

    @admin.display(description="where", ordering="line")
    def where(self, obj):
        if obj.line:
            return f"{obj.file}:{obj.line}" if obj.file else f"line {obj.line}"
        return obj.file or "—"

    @admin.display(description="reason")
    def reason_short(self, obj):
        return Truncator(obj.reason).chars(90)

    @admin.display(description="source record")
    def raw_pretty(self, obj):
        if obj.raw is None:
            return "—"
        return format_html(
            '<pre class="integration-pre">{}</pre>',
            json.dumps(obj.raw, indent=2, ensure_ascii=False),
        )

    @admin.action(description="Dismiss (they will not be retried)", permissions=["dismiss"])
    def dismiss(self, request, queryset):
        count = services.record_errors_dismiss(
            errors=restrict(queryset, request.user, CHANGE), actor=request.user
        )
        messages.success(
            request,
            f"Dismissed {count} open error{'s' if count != 1 else ''}; "
            "the next runs will not retry them.",
        )


# --- identity reviews ---------------------------------------------------------------------------


class ReviewStatusFilter(admin.SimpleListFilter):
    """Open reviews first: the queue is what waits for someone."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [*ReviewStatus.choices, ("all", "All")]

    def choices(self, changelist):
        value = self.value() or ReviewStatus.OPEN
        for lookup, title in self.lookup_choices:
            yield {
                "selected": value == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request, queryset):
        value = self.value() or ReviewStatus.OPEN
        if value == "all":
            return queryset
        return queryset.filter(status=value)


class _DecisionColumns:
    """Columns of a decision queue (identity reviews, sync conflicts): the run that found the
    item and who decided it when."""

    @admin.display(description="found in")
    def run_link(self, obj):
        if obj.run_id is None:
            return "—"
        return format_html(
            '<a href="{}">Run #{}</a>',
            reverse("admin:integrations_syncrun_change", args=[obj.run_id]),
            obj.run_id,
        )

    @admin.display(description="decided")
    def decided(self, obj):
        if not obj.decided_at:
            return "—"
        return f"by {obj.decided_by or 'someone since removed'} on {_when(obj.decided_at)}"


@admin.register(IdentityReview)
class IdentityReviewAdmin(_DecisionColumns, _ReadOnlyGated):
    """Incoming people who may be someone the hub has: merge, or keep apart; merges reverse."""

    list_display = ["review", "compare", "reason"]
    list_display_links = ["review"]
    list_filter = [ReviewStatusFilter, "integration"]
    search_fields = ["source_id", "reason"]
    list_select_related = ["integration"]
    actions = ["merge_selected", "distinct_selected"]
    fields = [
        "integration",
        "entity",
        "source_id",
        "reason",
        "status_badge",
        "run_link",
        "compare",
        "decided",
        "created_at",
    ]
    readonly_fields = fields

    def get_queryset(self, request):
        return selectors.reviews_with_candidates(super().get_queryset(request))

    def has_decide_permission(self, request):
        return self.may_act(request)

    @admin.display(description="review", ordering="created_at")
    def review(self, obj):
        # The decision buttons sit under the status: the list has no room for their own column.
        return format_html(
            '{}<br><span class="integration-quiet">{}</span><br>{}{}',
            timezone.localtime(obj.created_at).strftime("%Y-%m-%d %H:%M"),
            obj.integration,
            self.status_badge(obj),
            self.decide(obj),
        )

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return _badge(obj.get_status_display(), REVIEW_CSS.get(obj.status, ""))

    @admin.display(description="incoming · existing")
    def compare(self, obj):
        candidate = getattr(obj, "candidate", None)
        rows = selectors.review_rows(obj, candidate)
        body = format_html_join(
            "",
            '<tr{}><th scope="row">{}</th><td>{}</td><td>{}</td></tr>',
            (
                (
                    mark_safe(' class="integration-differs"') if r["differs"] else "",
                    r["label"],
                    r["incoming"] or "—",
                    r["existing"] or "—",
                )
                for r in rows
            ),
        )
        existing = "Existing"
        if candidate:
            existing = format_html(
                '<a href="{}">Existing #{}</a>',
                reverse("admin:schools_student_change", args=[candidate["id"]]),
                candidate["id"],
            )
        return format_html(
            '<table class="integration-compare"><thead><tr><th></th><th>Incoming <code>{}</code>'
            "</th><th>{}</th></tr></thead><tbody>{}</tbody></table>",
            obj.source_id,
            existing,
            body,
        )

    @admin.display(description="decide")
    def decide(self, obj):
        # Buttons of the changelist's own form (it carries the CSRF token), posting elsewhere.
        buttons = []
        if obj.status == ReviewStatus.OPEN:
            buttons = [
                (_admin_url(obj, "merge") + "?from=list", "Merge"),
                (_admin_url(obj, "distinct") + "?from=list", "Different person"),
            ]
        elif obj.status == ReviewStatus.MERGED:
            buttons = [(_admin_url(obj, "unmerge") + "?from=list", "Undo merge")]
        return format_html(
            '<div class="integration-decide">{}</div>',
            format_html_join(
                "",
                '<button type="submit" class="button" formaction="{}" formnovalidate>{}</button>',
                buttons,
            ),
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        review = self.get_object(request, unquote(object_id))
        if request.method == "GET" and review is not None and review.candidate:
            # The candidate's identifiers shown are the student's record: log the access.
            from bxos.schools.models import Student

            student = Student(pk=review.candidate["id"], district_id=review.district_id)
            access.record_view(actor=request.user, obj=student, path=request.get_full_path())
        extra = {
            "can_decide": review is not None and self.may_act(request, review),
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, extra)

    def get_urls(self):
        return [
            *self._urls(
                ("<path:object_id>/merge/", self.merge_view, "identityreview_merge"),
                ("<path:object_id>/distinct/", self.distinct_view, "identityreview_distinct"),
                ("<path:object_id>/unmerge/", self.unmerge_view, "identityreview_unmerge"),
            ),
            *super().get_urls(),
        ]

    def _decide(self, request, object_id, action, done: str):
        review = self._get_for(request, object_id, CHANGE)
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        try:
            action(review=review, actor=request.user)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            messages.success(request, done.format(review=review))
        if request.GET.get("from") == "list":
            return HttpResponseRedirect(reverse("admin:integrations_identityreview_changelist"))
        return HttpResponseRedirect(_admin_url(review))

    def merge_view(self, request, object_id):
        return self._decide(
            request,
            object_id,
            services.identity_merge,
            "The incoming record {review.source_id} is now linked to the existing student; "
            "Undo merge reverses it.",
        )

    def distinct_view(self, request, object_id):
        return self._decide(
            request,
            object_id,
            services.identity_distinct,
            "The incoming record {review.source_id} is a different person: the next run "
            "creates them.",
        )

    def unmerge_view(self, request, object_id):
        return self._decide(
            request,
            object_id,
            services.identity_unmerge,
            "The merge of the incoming record {review.source_id} was reversed.",
        )

    def _decide_many(self, request, queryset, action, verb: str) -> None:
        done, refused = 0, []
        for review in restrict(queryset, request.user, CHANGE).filter(status=ReviewStatus.OPEN):
            try:
                action(review=review, actor=request.user)
            except ValidationError as exc:
                refused.append(f"{review.source_id}: {' '.join(exc.messages)}")
            else:
                done += 1
        messages.success(request, f"{verb} {done} review{'s' if done != 1 else ''}.")
        if refused:
            messages.error(request, "Not decided: " + "; ".join(refused))

    @admin.action(description="Merge into the existing students", permissions=["decide"])
    def merge_selected(self, request, queryset):
        self._decide_many(request, queryset, services.identity_merge, "Merged")

    @admin.action(description="Different people (create them)", permissions=["decide"])
    def distinct_selected(self, request, queryset):
        self._decide_many(request, queryset, services.identity_distinct, "Kept apart")


# --- sync conflicts -----------------------------------------------------------------------------


class ConflictStatusFilter(ReviewStatusFilter):
    """Open conflicts first: they hold their record back from every push until decided."""

    def lookups(self, request, model_admin):
        return [*ConflictStatus.choices, ("all", "All")]

    def queryset(self, request, queryset):
        value = self.value() or ConflictStatus.OPEN
        if value == "all":
            return queryset
        return queryset.filter(status=value)


class ConflictIntegrationFilter(admin.SimpleListFilter):
    """By integration; the choices are the district's integrations, through the gate."""

    title = "integration"
    parameter_name = "integration"

    def lookups(self, request, model_admin):
        integrations = selectors.integrations_for(actor=request.user).only("name")
        return [(i.pk, str(i)) for i in integrations]

    def queryset(self, request, queryset):
        if self.value() and self.value().isdigit():
            return queryset.filter(definition__integration_id=self.value())
        return queryset


#: What each decision is called on buttons and in messages, and what it does.
CONFLICT_DECISIONS = {
    "hub": {
        "button": "Keep the hub's version",
        "done": "the hub's version was kept and sent to {integration}",
        "deleted_done": "the record was deleted in {integration} too",
    },
    "source": {
        "button": "Keep the source's version",
        "done": "the hub took {integration}'s version",
        "deleted_done": "the record stays in {integration}; the hub keeps it deleted",
    },
    "dismiss": {
        "button": "Dismiss",
        "done": "dismissed; both sides were left as they are",
        "deleted_done": "dismissed; both sides were left as they are",
    },
}


@admin.register(SyncConflict)
class SyncConflictAdmin(_DecisionColumns, _ReadOnlyGated):
    """Records a bidirectional sync found changed on both sides under the manual-review policy:
    the hub's and the source's values side by side, and the three decisions (keep the hub's,
    keep the source's, dismiss), one at a time or in bulk. Everything else is read-only."""

    list_display = ["conflict", "record", "differences", "decide"]
    list_display_links = ["conflict"]
    list_filter = [
        ConflictStatusFilter,
        ConflictIntegrationFilter,
        "entity",
        ("created_at", admin.DateFieldListFilter),
    ]
    search_fields = ["source_id"]
    list_select_related = ["definition__integration"]
    actions = ["keep_hub_selected", "keep_source_selected", "dismiss_selected"]
    fields = [
        "definition_link",
        "entity",
        "record",
        "status_badge",
        "run_link",
        "compare",
        "decided",
        "created_at",
        "updated_at",
        "source_record",
    ]
    readonly_fields = fields

    def has_decide_permission(self, request):
        return self.may_act(request)

    # --- columns and fields --------------------------------------------------------------------

    @admin.display(description="conflict", ordering="created_at")
    def conflict(self, obj):
        return format_html(
            '#{} · {}<br><span class="integration-quiet">{} · {}</span><br>{}',
            obj.pk,
            timezone.localtime(obj.created_at).strftime("%Y-%m-%d %H:%M"),
            obj.definition.integration,
            obj.definition,
            self.status_badge(obj),
        )

    @admin.display(description="sync definition", ordering="definition__name")
    def definition_link(self, obj):
        return format_html(
            '<a href="{}">{}</a> <span class="integration-quiet">({})</span>',
            _admin_url(obj.definition),
            obj.definition,
            obj.definition.integration,
        )

    @admin.display(description="record", ordering="source_id")
    def record(self, obj):
        hub = obj.hub or {}
        if hub.get("deleted"):
            where = format_html("hub {} #{} (deleted)", obj.entity, obj.object_id)
        elif obj.entity == "incident":
            where = format_html(
                '<a href="{}">hub incident #{}</a>',
                reverse("admin:behavior_incident_change", args=[obj.object_id]),
                obj.object_id,
            )
        else:
            where = format_html("hub {} #{}", obj.entity, obj.object_id)
        return format_html("<code>{}</code><br>{}", obj.source_id, where)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return _badge(obj.get_status_display(), CONFLICT_CSS.get(obj.status, ""))

    @admin.display(description="differences")
    def differences(self, obj):
        rows = selectors.conflict_rows(obj)
        differing = [r.label for r in rows if r.differs]
        return format_html(
            "{}{}",
            self._compare_table(obj, rows, compact=True),
            format_html('<span class="integration-quiet">Differ: {}</span>', ", ".join(differing))
            if differing
            else "",
        )

    @admin.display(description="hub · source")
    def compare(self, obj):
        return self._compare_table(obj, selectors.conflict_rows(obj), compact=False)

    def _compare_table(self, obj, rows, *, compact: bool):
        shown = [r for r in rows if r.compared or not compact]
        body = format_html_join(
            "",
            '<tr class="{}" data-field="{}"><th scope="row">{}</th><td class="conflict-hub">{}'
            '</td><td class="conflict-source">{}</td></tr>',
            (
                (
                    "integration-differs" if r.differs else "",
                    r.name,
                    r.label,
                    r.hub or "—",
                    r.source or "—",
                )
                for r in shown
            ),
        )
        return format_html(
            '<table class="integration-compare" id="{}"><thead><tr><th></th><th>Hub</th>'
            "<th>Source: {}</th></tr></thead><tbody>{}</tbody></table>",
            f"conflict-compare-{obj.pk}" if compact else "conflict-compare",
            obj.definition.integration,
            body,
        )

    @admin.display(description="source record as read")
    def source_record(self, obj):
        return format_html(
            '<details><summary>Show the record</summary><pre class="integration-pre">{}</pre>'
            "</details>",
            json.dumps(obj.source or {}, indent=2, ensure_ascii=False, sort_keys=True),
        )

    @admin.display(description="decide")
    def decide(self, obj):
        # Buttons of the changelist's own form (it carries the CSRF token), posting elsewhere.
        if obj.status != ConflictStatus.OPEN:
            return ""
        buttons = [
            (_admin_url(obj, view) + "?from=list", CONFLICT_DECISIONS[key]["button"])
            for key, view in (
                ("hub", "keep_hub"),
                ("source", "keep_source"),
                ("dismiss", "dismiss"),
            )
        ]
        return format_html(
            '<div class="integration-decide">{}</div>',
            format_html_join(
                "",
                '<button type="submit" class="button" formaction="{}" formnovalidate>{}</button>',
                buttons,
            ),
        )

    # --- pages ---------------------------------------------------------------------------------

    def change_view(self, request, object_id, form_url="", extra_context=None):
        conflict = self.get_object(request, unquote(object_id))
        incident_id = None
        if conflict is not None and conflict.entity == "incident":
            incident_id = conflict.object_id
        elif conflict is not None and conflict.entity == PushedAction.CONFLICT_ENTITY:
            incident_id = (conflict.hub or {}).get("incident_id")  # the action's incident
        if request.method == "GET" and incident_id is not None:
            # The page shows a student's incident (its date, behavior, ids): log the access.
            from bxos.behavior.models import Incident

            incident = Incident.objects.filter(
                pk=incident_id, district_id=conflict.district_id
            ).first()
            if incident is not None:
                access.record_view(actor=request.user, obj=incident, path=request.get_full_path())
        extra = {
            "can_decide": conflict is not None
            and conflict.status == ConflictStatus.OPEN
            and self.may_act(request, conflict),
            "decisions": CONFLICT_DECISIONS,
            "title": f"Sync conflict #{conflict.pk}" if conflict is not None else None,
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, extra)

    def get_urls(self):
        return [
            *self._urls(
                ("<path:object_id>/keep-hub/", self.keep_hub_view, "syncconflict_keep_hub"),
                (
                    "<path:object_id>/keep-source/",
                    self.keep_source_view,
                    "syncconflict_keep_source",
                ),
                ("<path:object_id>/dismiss/", self.dismiss_view, "syncconflict_dismiss"),
            ),
            *super().get_urls(),
        ]

    def _apply(self, conflict, decision: str, actor):
        if decision == "dismiss":
            return push.conflict_dismiss(conflict=conflict, actor=actor)
        return push.conflict_resolve(conflict=conflict, keep=decision, actor=actor)

    @staticmethod
    def _done(conflict, decision: str) -> str:
        texts = CONFLICT_DECISIONS[decision]
        deleted = bool((conflict.hub or {}).get("deleted"))
        what = texts["deleted_done" if deleted else "done"].format(
            integration=conflict.definition.integration
        )
        return f"Conflict #{conflict.pk} ({conflict.source_id}): {what}."

    def _decide(self, request, object_id, decision: str):
        conflict = self._get_for(request, object_id, CHANGE)
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        try:
            self._apply(conflict, decision, request.user)
        except ValidationError as exc:
            messages.error(request, f"Conflict #{conflict.pk} stays open: {' '.join(exc.messages)}")
        else:
            messages.success(request, self._done(conflict, decision))
        if request.GET.get("from") == "list":
            return HttpResponseRedirect(reverse("admin:integrations_syncconflict_changelist"))
        return HttpResponseRedirect(_admin_url(conflict))

    def keep_hub_view(self, request, object_id):
        return self._decide(request, object_id, "hub")

    def keep_source_view(self, request, object_id):
        return self._decide(request, object_id, "source")

    def dismiss_view(self, request, object_id):
        return self._decide(request, object_id, "dismiss")

    def _decide_many(self, request, queryset, decision: str) -> None:
        done, refused = 0, []
        chosen = restrict(queryset, request.user, CHANGE).filter(status=ConflictStatus.OPEN)
        for conflict in chosen.select_related("definition__integration").order_by("pk"):
            try:
                self._apply(conflict, decision, request.user)
            except ValidationError as exc:
                refused.append(f"#{conflict.pk} ({conflict.source_id}): {' '.join(exc.messages)}")
            else:
                done += 1
        verb = {"hub": "Kept the hub's version of", "source": "Took the source's version of"}
        messages.success(
            request,
            f"{verb.get(decision, 'Dismissed')} {done} conflict{'s' if done != 1 else ''}.",
        )
        if refused:
            messages.error(request, "Still open: " + "; ".join(refused))

    @admin.action(
        description="Keep the hub's version (send it to the source)", permissions=["decide"]
    )
    def keep_hub_selected(self, request, queryset):
        self._decide_many(request, queryset, "hub")

    @admin.action(
        description="Keep the source's version (take it into the hub)", permissions=["decide"]
    )
    def keep_source_selected(self, request, queryset):
        self._decide_many(request, queryset, "source")

    @admin.action(description="Dismiss (leave both sides as they are)", permissions=["decide"])
    def dismiss_selected(self, request, queryset):
        self._decide_many(request, queryset, "dismiss")
