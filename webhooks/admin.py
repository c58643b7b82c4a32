"""The district admin's face of webhooks: endpoints, deliveries and their attempts, events, and
the event catalogue.

Thin over ``webhooks.services``: every write is a service call with the signed-in user as the
actor (audited), and every queryset passes the gate, so another district's endpoint, event or
delivery is a 404. A secret is shown at most once in the admin: on creation, on rotation, or by
one "Reveal secret"; after that the answer is to rotate.
"""

from __future__ import annotations

import json
from datetime import timedelta

from django.apps import apps
from django.contrib import admin, messages
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import mark_safe
from django.utils.text import Truncator

from bxos.common import outbound, roles
from bxos.common.admin import GateMixin, ReadOnlyAdmin, RestrictedRelatedFilter, TenantAdmin
from bxos.common.models import AccessLogEntry
from bxos.common.outbound import body_preview
from bxos.common.permissions import CHANGE, DELETE, VIEW, restrict
from webhooks import catalogue, selectors, services
from webhooks.choices import OPEN_STATUSES, DeliveryStatus
from webhooks.forms import (
    EventReplayForm,
    RecoverForm,
    RotateSecretForm,
    WebhookEndpointForm,
)
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent

# Attempt bodies are kept up to 16 KB; the admin shows all that was kept.
BODY_PREVIEW_CHARS = 16 * 1024
# A replay of a selection or a recovery queues at most this many deliveries per click.
REPLAY_LIMIT = 1000


def _admin_url(obj, view: str = "change") -> str:
    opts = obj._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_{view}", args=[quote(obj.pk)])


def _when(value) -> str:
    if value is None:
        return "—"
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M %Z")


def _record_payload_view(request, event: WebhookEvent) -> None:
    """A payload shown is the student's record as sent: log it like opening the record (FERPA).

    The entry names the record (its table and id), as ``access.record_view`` would; the path
    names the event page it was read on."""
    if event.student_id is None:
        return
    model = apps.get_model(event.model) if event.model else None
    if model is None or event.object_id is None:
        model, object_id = apps.get_model("schools", "Student"), event.student_id
    else:
        object_id = event.object_id
    AccessLogEntry.objects.create(
        actor=request.user,
        actor_label=request.user.get_username()[:150],
        district_id=event.district_id,
        student_id=event.student_id,
        object_table=model._meta.db_table,
        object_id=object_id,
        action="view",
        path=request.get_full_path()[:512],
    )


def _pre(text: str, css: str = "webhook-body"):
    return format_html('<pre class="{}">{}</pre>', css, text)


class EventTypeFilter(admin.SimpleListFilter):
    """By event type; the choices are the types the district's endpoints subscribe to (one
    small query on endpoints, through the gate), not a scan of the deliveries."""

    title = "event type"
    parameter_name = "type"
    field_path = "event__type"

    def lookups(self, request, model_admin):
        endpoints = restrict(WebhookEndpoint.objects.all(), request.user, VIEW)
        types = {t for types in endpoints.values_list("event_types", flat=True) for t in types}
        if self.value():
            types.add(self.value())
        return [(name, name) for name in sorted(types)]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(**{self.field_path: self.value()})
        return queryset


class EventOwnTypeFilter(EventTypeFilter):
    field_path = "type"


class EndpointFilter(RestrictedRelatedFilter):
    """By endpoint (choices through the gate); the empty choice is the deleted endpoints'."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.empty_value_display = "(deleted endpoints)"


class VendorFilter(RestrictedRelatedFilter):
    """By the vendor that owns the endpoint; empty: the district's own."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.title = "owner"
        self.empty_value_display = "The district"


class _WebhookAdminPages:
    """Custom pages of a webhooks admin: the admin's chrome, the gate, the breadcrumbs."""

    def _page(self, request, template: str, title: str, obj=None, **context):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": title,
            "original": obj,
            "object_url": _admin_url(obj) if obj is not None else None,
            **context,
        }
        return TemplateResponse(request, f"admin/webhooks/{template}", context)

    def _get_for(self, request, object_id, action: str):
        """The object if the user may ``action`` it; another district's is a 404."""
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(f"No {self.model._meta.verbose_name} with id {object_id!r} here.")
        if action == CHANGE and not self.has_change_permission(request, obj):
            raise PermissionDenied
        return obj

    def _urls(self, *views) -> list:
        opts = self.model._meta
        return [
            path(route, self.admin_site.admin_view(view), name=f"{opts.app_label}_{name}")
            for route, view, name in views
        ]


# --- endpoints ------------------------------------------------------------------------------


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(_WebhookAdminPages, TenantAdmin):
    """Endpoints of the district (and its vendors'): settings, secret, test, health."""

    form = WebhookEndpointForm
    list_display = [
        "name",
        "owner",
        "url",
        "state",
        "event_type_count",
        "open_count",
        "held_count",
        "failed_count",
        "last_success",
    ]
    list_filter = ["active", ("client", VendorFilter), "payload_style", "body_format"]
    search_fields = ["name", "url", "client__name"]
    list_select_related = ["client"]
    filter_horizontal = ["schools"]
    actions = ["enable_endpoints", "disable_endpoints"]

    class Media:
        css = {"all": ["webhooks/admin.css"]}

    vendor_note = (
        "This endpoint belongs to a vendor, who manages it through the API. The district can "
        "disable it (its events are then held, not dropped) and enable it again."
    )

    # --- reads ---------------------------------------------------------------------------------

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if isinstance(db_field, models.URLField):
            kwargs.setdefault("assume_scheme", "https")  # Django 6's default, chosen now
        formfield = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "schools" and formfield is not None:
            formfield.widget.can_add_related = False  # schools are added on their own page
        return formfield

    def get_queryset(self, request):
        return selectors.webhook_endpoints_with_counts(super().get_queryset(request))

    def get_fieldsets(self, request, obj=None):
        first = ["name", "owner", "url", "method", "body_format", "active"]
        if request.user.is_superuser:
            first.insert(0, "district")
        if obj is None:
            first.remove("owner")
        sets = [
            (None, {"fields": first}),
            (
                "What it receives",
                {
                    "fields": ["event_types", "schools", "payload_style", "ordered"],
                    "description": format_html(
                        'Every event type, its JSON Schema and an example: <a href="{}">the '
                        "event catalogue</a>. Hover over a box for what it means.",
                        reverse("admin:webhooks_catalogue"),
                    ),
                },
            ),
            (
                "Retries and limits",
                {"fields": ["retry_schedule", "max_in_flight", "rate_per_second", "owner_email"]},
            ),
        ]
        if obj is not None:
            if obj.client_id:
                sets[0][1]["description"] = self.vendor_note
            health = [
                "health_state",
                "failing_since",
                "last_success_at",
                "deliveries_summary",
                "last_day",
            ]
            # How it is doing comes first on an existing endpoint's page.
            sets.insert(1, ("Health", {"fields": health}))
            sets += [
                ("Signing secret", {"fields": ["secret_status"]}),
                ("Record", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
            ]
        return sets

    def get_readonly_fields(self, request, obj=None):
        readonly = [
            *super().get_readonly_fields(request, obj),
            "owner",
            "secret_status",
            "health_state",
            "failing_since",
            "last_success_at",
            "deliveries_summary",
            "last_day",
        ]
        if obj is not None:
            readonly.append("district")
            if obj.client_id:
                # A vendor's endpoint: the district may only switch it off and on.
                readonly += [*services.ENDPOINT_FIELDS, "schools"]
        return readonly

    def changelist_view(self, request, extra_context=None):
        extra = {"catalogue_url": reverse("admin:webhooks_catalogue"), **(extra_context or {})}
        return super().changelist_view(request, extra)

    @admin.display(description="owner", ordering="client__name")
    def owner(self, obj):
        if obj.client_id:
            return format_html("Vendor: {}", obj.client.name)
        return "The district"

    @admin.display(description="state", ordering="active")
    def state(self, obj):
        if obj.active:
            if obj.failing_since:
                return format_html(
                    '<span class="webhook-warn">Failing since {}</span>', _when(obj.failing_since)
                )
            return mark_safe('<span class="webhook-ok">Active</span>')
        return format_html(
            '<span class="webhook-bad" title="{}">Disabled</span>', obj.disabled_reason
        )

    @admin.display(description="types")
    def event_type_count(self, obj):
        return len(obj.event_types)

    @admin.display(description="last success", ordering="last_success_at")
    def last_success(self, obj):
        return _when(obj.last_success_at)

    def _deliveries_url(self, obj, **params) -> str:
        query = {"endpoint__id__exact": obj.pk, **params}
        return reverse("admin:webhooks_webhookdelivery_changelist") + "?" + urlencode(query)

    def _count_link(self, obj, count: int, status: str):
        if not count:
            return "0"
        return format_html(
            '<a href="{}">{}</a>', self._deliveries_url(obj, status__exact=status), count
        )

    @admin.display(description="open", ordering="open_count")
    def open_count(self, obj):
        return self._count_link(obj, obj.open_count, DeliveryStatus.PENDING)

    @admin.display(description="held", ordering="held_count")
    def held_count(self, obj):
        return self._count_link(obj, obj.held_count, DeliveryStatus.HELD)

    @admin.display(description="failed", ordering="failed_count")
    def failed_count(self, obj):
        return self._count_link(obj, obj.failed_count, DeliveryStatus.FAILED)

    @admin.display(description="state")
    def health_state(self, obj):
        if obj.active:
            return "Active: events are sent as they happen."
        return format_html(
            '<span class="webhook-bad">Disabled</span> on {}: {} New events are held, not '
            "dropped; they are sent in order when it is enabled again.",
            _when(obj.disabled_at),
            obj.disabled_reason,
        )

    def _health(self, obj) -> selectors.EndpointHealth:
        if not hasattr(obj, "_health"):
            obj._health = selectors.webhook_endpoint_health(endpoint=obj)
        return obj._health

    @admin.display(description="deliveries")
    def deliveries_summary(self, obj):
        health = self._health(obj)
        parts = [
            ("open (pending or being sent)", health.open, DeliveryStatus.PENDING),
            ("held (endpoint disabled)", health.held, DeliveryStatus.HELD),
            ("failed for good (replayable)", health.failed, DeliveryStatus.FAILED),
        ]
        return format_html(
            '{} · <a href="{}">all deliveries</a>',
            format_html_join(
                " · ",
                '<a href="{}">{} {}</a>',
                ((self._deliveries_url(obj, status__exact=s), n, label) for label, n, s in parts),
            ),
            self._deliveries_url(obj),
        )

    @admin.display(description="last 24 hours")
    def last_day(self, obj):
        health = self._health(obj)
        if not health.attempts:
            return "No attempts in the last 24 hours."
        return format_html(
            "{} attempts, {}% succeeded; p95 duration {} ms",
            health.attempts,
            f"{100 * health.success_rate:.1f}",
            f"{health.p95_ms:.0f}",
        )

    @admin.display(description="secret")
    def secret_status(self, obj):
        if obj.client_id:
            return "The vendor's: it is shown to the vendor, and rotated through the API."
        now = timezone.now()
        live = [s for s in obj.secrets.all() if s.expires_at is None or s.expires_at > now]
        current = next((s for s in live if s.expires_at is None), None)
        lines = []
        if current is None:
            lines.append(("No current secret: rotate to create one.",))
        else:
            shown = (
                f"shown on {_when(current.revealed_at)}; rotate to get a new one"
                if current.revealed_at
                else "not shown yet: Reveal secret shows it once"
            )
            lines.append((f"Current secret from {_when(current.created_at)}, {shown}.",))
        for old in live:
            if old.expires_at is not None:
                lines.append(
                    (
                        f"An older secret from {_when(old.created_at)} still signs until "
                        f"{_when(old.expires_at)}.",
                    )
                )
        return format_html_join(mark_safe("<br>"), "{}", lines)

    # --- writes --------------------------------------------------------------------------------

    def save_model(self, request, obj, form, change):
        data = {
            name: form.cleaned_data[name]
            for name in services.ENDPOINT_FIELDS
            if name in form.cleaned_data
        }
        if not change:
            endpoint, secret = services.webhook_endpoint_create(
                actor=request.user,
                district=obj.district,
                schools=form.cleaned_data.get("schools") or (),
                active=form.cleaned_data.get("active", True),
                **data,
            )
            # Shown now, in the message below: this is its one showing.
            services.webhook_secret_reveal(actor=request.user, endpoint=endpoint)
            obj.__dict__.update(endpoint.__dict__)
            messages.warning(
                request,
                f"Signing secret of {endpoint.name}: {secret} — copy it now into the receiver; "
                "it will not be shown again (rotate to get a new one).",
            )
            return
        changed = {name: data[name] for name in form.changed_data if name in data}
        if "active" in form.changed_data:
            changed["active"] = form.cleaned_data["active"]
        schools = form.cleaned_data["schools"] if "schools" in form.changed_data else None
        # The form has already set its values on ``obj``: the service compares with the row.
        current = WebhookEndpoint.objects.select_related("client").get(pk=obj.pk)
        services.webhook_endpoint_update(
            actor=request.user, endpoint=current, data=changed, schools=schools
        )

    def save_related(self, request, form, formsets, change):
        pass  # the schools were set by the service

    def response_add(self, request, obj, post_url_continue=None):
        response = super().response_add(request, obj, post_url_continue)
        if "_addanother" in request.POST or IS_POPUP_VAR in request.POST:
            return response
        # Straight to the new endpoint, where "Send test event" is.
        return HttpResponseRedirect(_admin_url(obj))

    def delete_view(self, request, object_id, extra_context=None):
        obj = self.get_object(request, unquote(object_id))
        extra = dict(extra_context or {})
        if obj is not None:
            extra["open_deliveries"] = obj.deliveries.filter(status__in=OPEN_STATUSES).count()
        return super().delete_view(request, object_id, extra)

    def _tell_cancelled(self, request, cancelled: int, what: str) -> None:
        if cancelled:
            messages.warning(
                request,
                f"{cancelled} open deliver{'y' if cancelled == 1 else 'ies'} of {what} "
                f"{'was' if cancelled == 1 else 'were'} closed as cancelled; "
                f"{'it is' if cancelled == 1 else 'they are'} kept in the delivery list.",
            )
        else:
            messages.info(request, f"{what} had no open deliveries.")

    def delete_model(self, request, obj):
        cancelled = services.webhook_endpoint_delete(actor=request.user, endpoint=obj)
        self._tell_cancelled(request, cancelled, str(obj))

    def delete_queryset(self, request, queryset):
        cancelled = 0
        for endpoint in restrict(queryset, request.user, DELETE):
            cancelled += services.webhook_endpoint_delete(actor=request.user, endpoint=endpoint)
        self._tell_cancelled(request, cancelled, "the deleted endpoints")

    @admin.action(
        description="Enable (held deliveries are sent, oldest first)", permissions=["change"]
    )
    def enable_endpoints(self, request, queryset):
        released = enabled = 0
        for endpoint in restrict(queryset, request.user, CHANGE).filter(active=False):
            released += services.webhook_endpoint_enable(actor=request.user, endpoint=endpoint)
            enabled += 1
        messages.success(
            request, f"Enabled {enabled} endpoint(s); {released} held deliveries are being sent."
        )

    @admin.action(description="Disable (new events are held, not dropped)", permissions=["change"])
    def disable_endpoints(self, request, queryset):
        disabled = 0
        for endpoint in restrict(queryset, request.user, CHANGE).filter(active=True):
            services.webhook_endpoint_disable(
                actor=request.user, endpoint=endpoint, reason=_disabled_by(request)
            )
            disabled += 1
        messages.success(request, f"Disabled {disabled} endpoint(s); their events are held.")

    # --- pages: secret, test event, enable/disable, catalogue ----------------------------------

    def get_urls(self):
        return [
            *self._urls(
                ("catalogue/", self.catalogue_view, "catalogue"),
                ("<path:object_id>/reveal-secret/", self.reveal_view, "webhookendpoint_reveal"),
                ("<path:object_id>/rotate-secret/", self.rotate_view, "webhookendpoint_rotate"),
                ("<path:object_id>/send-test/", self.send_test_view, "webhookendpoint_send_test"),
                ("<path:object_id>/enable/", self.enable_view, "webhookendpoint_enable"),
                ("<path:object_id>/disable/", self.disable_view, "webhookendpoint_disable"),
            ),
            *super().get_urls(),
        ]

    def _own_secret(self, request, endpoint) -> bool:
        if endpoint.client_id:
            messages.error(request, self.vendor_note + " Its secret is the vendor's.")
            return False
        return True

    def reveal_view(self, request, object_id):
        endpoint = self._get_for(request, object_id, CHANGE)
        if not self._own_secret(request, endpoint):
            return HttpResponseRedirect(_admin_url(endpoint))
        error = None
        current = endpoint.secrets.filter(expires_at__isnull=True).first()
        if request.method == "GET" and current is not None and current.revealed_at is not None:
            # Said before the click; the service refuses a second showing either way.
            error = (
                f"The secret was already shown on {_when(current.revealed_at)}; rotate it to "
                "get a new one."
            )
        if request.method == "POST":
            try:
                secret = services.webhook_secret_reveal(actor=request.user, endpoint=endpoint)
            except ValidationError as exc:
                error = " ".join(exc.messages)
            else:
                return self._page(request, "secret.html", "Signing secret", endpoint, secret=secret)
        return self._page(
            request,
            "action.html",
            "Reveal the signing secret",
            endpoint,
            error=error,
            intro="The current signing secret can be shown once. Copy it into the receiver "
            "when it is shown; after that, rotate the secret to get a new one.",
            submit="Reveal secret",
            alternative=(_admin_url(endpoint, "rotate"), "Rotate the secret instead")
            if error
            else None,
        )

    def rotate_view(self, request, object_id):
        endpoint = self._get_for(request, object_id, CHANGE)
        if not self._own_secret(request, endpoint):
            return HttpResponseRedirect(_admin_url(endpoint))
        form = RotateSecretForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            grace = timedelta(hours=form.cleaned_data["grace_hours"])
            secret = services.webhook_secret_rotate(
                actor=request.user, endpoint=endpoint, grace=grace
            )
            # Shown on the next page: this is its one showing.
            services.webhook_secret_reveal(actor=request.user, endpoint=endpoint)
            return self._page(
                request,
                "secret.html",
                "New signing secret",
                endpoint,
                secret=secret,
                grace_until=timezone.now() + grace if grace else None,
            )
        return self._page(
            request,
            "action.html",
            "Rotate the signing secret",
            endpoint,
            form=form,
            intro="A new secret signs every request from now on. The current one keeps "
            "signing beside it for the grace period, so requests verify with either while the "
            "receiver switches over.",
            submit="Rotate secret",
        )

    def send_test_view(self, request, object_id):
        endpoint = self._get_for(request, object_id, CHANGE)
        result = None
        if request.method == "POST":
            result = services.webhook_endpoint_send_test(actor=request.user, endpoint=endpoint)
        return self._page(
            request,
            "send_test.html",
            "Send a test event",
            endpoint,
            result=result,
            preview=result.preview(limit=BODY_PREVIEW_CHARS) if result else "",
        )

    def enable_view(self, request, object_id):
        endpoint = self._get_for(request, object_id, CHANGE)
        if endpoint.active:
            messages.info(request, f"{endpoint} is already enabled.")
            return HttpResponseRedirect(_admin_url(endpoint))
        if request.method == "POST":
            released = services.webhook_endpoint_enable(actor=request.user, endpoint=endpoint)
            messages.success(
                request, f"{endpoint} is enabled; {released} held deliveries are being sent."
            )
            return HttpResponseRedirect(_admin_url(endpoint))
        held = endpoint.deliveries.filter(status=DeliveryStatus.HELD).count()
        return self._page(
            request,
            "action.html",
            "Enable the endpoint",
            endpoint,
            intro=f"Events are sent to {endpoint.url} again. The {held} held deliveries go "
            "first, in the order their events happened.",
            submit="Enable",
        )

    def disable_view(self, request, object_id):
        endpoint = self._get_for(request, object_id, CHANGE)
        if not endpoint.active:
            messages.info(request, f"{endpoint} is already disabled.")
            return HttpResponseRedirect(_admin_url(endpoint))
        if request.method == "POST":
            services.webhook_endpoint_disable(
                actor=request.user, endpoint=endpoint, reason=_disabled_by(request)
            )
            messages.success(request, f"{endpoint} is disabled; its events are held.")
            return HttpResponseRedirect(_admin_url(endpoint))
        return self._page(
            request,
            "action.html",
            "Disable the endpoint",
            endpoint,
            intro="Nothing is sent to this endpoint until it is enabled again. Its events are "
            "held, not dropped, and sent in order on enable.",
            submit="Disable",
        )

    def catalogue_view(self, request):
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        groups = [
            (
                group,
                [
                    {
                        "type": entry.type,
                        "description": entry.description,
                        "scope": entry.resource.scope if entry.resource else "",
                        "resource": entry.resource.name if entry.resource else "",
                        "schema": json.dumps(catalogue.schema(entry), indent=2),
                        "example": json.dumps(catalogue.example(entry), indent=2),
                    }
                    for entry in entries
                ],
            )
            for group, entries in selectors.webhook_event_type_groups()
        ]
        return self._page(request, "catalogue.html", "Webhook event catalogue", groups=groups)


def _disabled_by(request) -> str:
    return f"Disabled by {request.user.get_username()} in the admin."


# --- deliveries and attempts ----------------------------------------------------------------


class WebhookAttemptInline(GateMixin, admin.TabularInline):
    """A delivery's attempts, newest last; read-only."""

    model = WebhookAttempt
    extra = 0
    can_delete = False
    ordering = ["number"]
    fields = ["number", "started_at", "duration", "status_code", "outcome", "response"]
    readonly_fields = fields
    verbose_name_plural = "attempts"

    def get_queryset(self, request):
        return super().get_queryset(request).order_by("number")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="duration")
    def duration(self, obj):
        return f"{obj.duration_ms} ms"

    @admin.display(description="outcome")
    def outcome(self, obj):
        if obj.succeeded:
            return mark_safe('<span class="webhook-ok">Succeeded</span>')
        if obj.error_class:
            return format_html(
                '<span class="webhook-bad">{}</span><br>{}', obj.error_class, obj.error
            )
        return mark_safe('<span class="webhook-bad">Failed</span>')

    @admin.display(description="response body")
    def response(self, obj):
        return _response_preview(obj)


def _response_preview(attempt: WebhookAttempt):
    body = bytes(attempt.response_body or b"")
    if not body:
        return "(empty)"
    text = body_preview(body, limit=BODY_PREVIEW_CHARS, truncated=attempt.response_truncated)
    note = " (the receiver sent more; 16 KB kept)" if attempt.response_truncated else ""
    return format_html("{}{}", _pre(text, "webhook-response"), note)


class _DeliveryBase(_WebhookAdminPages, GateMixin, admin.ModelAdmin):
    list_per_page = 50
    show_full_result_count = False

    class Media:
        css = {"all": ["webhooks/admin.css"]}

    def get_list_filter(self, request):
        filters = list(super().get_list_filter(request))
        if request.user.is_superuser:
            filters.insert(0, ("district", admin.RelatedOnlyFieldListFilter))
        return filters

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(_DeliveryBase):
    """Every event to every endpoint: state, attempts, replay and recovery."""

    list_display = [
        "created",
        "event_type",
        "endpoint_label",
        "status_summary",
        "attempts_summary",
        "last_error_short",
    ]
    list_display_links = ["created"]
    list_filter = [("endpoint", EndpointFilter), EventTypeFilter, "status"]
    search_fields = ["=event__id", "endpoint_name"]
    search_help_text = "An event id (the webhook-id header) or an endpoint name."
    date_hierarchy = "created_at"
    actions = ["replay"]
    inlines = [WebhookAttemptInline]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    ("event_link", "event_type"),
                    ("endpoint_label", "status_label"),
                    ("attempts", "last_status_code", "next_attempt"),
                    "last_error",
                    ("created_at", "finished_at"),
                    ("lease", "ordering_key"),
                ]
            },
        ),
        ("Payload sent", {"fields": ["payload"]}),
    ]
    readonly_fields = [
        "event_link",
        "event_type",
        "endpoint_label",
        "status_label",
        "attempts",
        "last_status_code",
        "next_attempt",
        "last_error",
        "created_at",
        "finished_at",
        "lease",
        "ordering_key",
        "payload",
    ]

    def get_queryset(self, request):
        # Bodies stay in the database until a detail page asks for them.
        return (
            super()
            .get_queryset(request)
            .select_related("event", "endpoint")
            .defer("body", "event__payload")
        )

    @admin.display(description="created", ordering="created_at")
    def created(self, obj):
        return _when(obj.created_at)

    @admin.display(description="event type", ordering="event__type")
    def event_type(self, obj):
        return obj.event.type

    @admin.display(description="next attempt", ordering="next_attempt_at")
    def next_attempt(self, obj):
        if obj.status not in (DeliveryStatus.PENDING, DeliveryStatus.LEASED):
            return "—"
        return _when(obj.next_attempt_at)

    @admin.display(description="event")
    def event_link(self, obj):
        return format_html(
            '<a href="{}">{}</a> (occurred {})',
            _admin_url(obj.event),
            obj.event_id,
            _when(obj.event.occurred_at),
        )

    @admin.display(description="endpoint", ordering="endpoint_name")
    def endpoint_label(self, obj):
        if obj.endpoint_id is None:
            return format_html("{} <em>(deleted)</em>", obj.endpoint_name)
        return format_html('<a href="{}">{}</a>', _admin_url(obj.endpoint), obj.endpoint_name)

    @admin.display(description="status", ordering="status")
    def status_label(self, obj):
        css = {
            DeliveryStatus.SUCCEEDED: "webhook-ok",
            DeliveryStatus.FAILED: "webhook-bad",
            DeliveryStatus.HELD: "webhook-warn",
            DeliveryStatus.CANCELLED: "webhook-muted",
        }.get(obj.status, "")
        return format_html('<span class="{}">{}</span>', css, obj.get_status_display())

    @admin.display(description="status", ordering="status")
    def status_summary(self, obj):
        if obj.status in (DeliveryStatus.PENDING, DeliveryStatus.LEASED) and obj.next_attempt_at:
            return format_html(
                '{}<br><span class="webhook-muted">next {}</span>',
                self.status_label(obj),
                _when(obj.next_attempt_at),
            )
        return self.status_label(obj)

    @admin.display(description="attempts", ordering="attempts")
    def attempts_summary(self, obj):
        if obj.last_status_code:
            return format_html(
                '{} <span class="webhook-muted">(last {})</span>',
                obj.attempts,
                obj.last_status_code,
            )
        return obj.attempts

    @admin.display(description="last error")
    def last_error_short(self, obj):
        return Truncator(obj.last_error).chars(60)

    @admin.display(description="lease")
    def lease(self, obj):
        if obj.status != DeliveryStatus.LEASED:
            return "—"
        return f"{obj.leased_by} until {_when(obj.lease_expires_at)}"

    @admin.display(description="body")
    def payload(self, obj):
        body, body_format = selectors.delivery_body(obj)
        return _pre(selectors.readable_body(body, body_format))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, unquote(object_id))
        if request.method == "GET" and obj is not None and self.has_view_permission(request, obj):
            # The payload shown is the student's record: an access like opening it.
            _record_payload_view(request, obj.event)
        extra = {
            "title": "Webhook delivery",
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
            "can_replay": obj is not None
            and obj.endpoint_id is not None
            and self.has_change_permission(request, obj),
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, extra)

    def changelist_view(self, request, extra_context=None):
        extra = {
            "recover_url": reverse("admin:webhooks_webhookdelivery_recover")
            if self.has_change_permission(request)
            else None,
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra)

    # --- replay ----------------------------------------------------------------------------

    def _replay(self, request, deliveries) -> None:
        queued = open_ = orphaned = 0
        for delivery in deliveries:
            if delivery.endpoint_id is None:
                orphaned += 1
                continue
            if delivery.status in (DeliveryStatus.PENDING, DeliveryStatus.LEASED):
                open_ += 1
                continue
            services.webhook_delivery_replay(actor=request.user, delivery=delivery)
            queued += 1
        parts = [f"Queued {queued} deliver{'y' if queued == 1 else 'ies'} to be sent again"]
        if open_:
            parts.append(f"{open_} already waiting to be sent")
        if orphaned:
            parts.append(f"{orphaned} whose endpoint was deleted (they cannot be sent)")
        messages.success(request, "; ".join(parts) + ".")

    @admin.action(description="Replay the selected deliveries", permissions=["change"])
    def replay(self, request, queryset):
        queryset = restrict(queryset, request.user, CHANGE).order_by("id")
        deliveries = list(queryset[: REPLAY_LIMIT + 1])
        if len(deliveries) > REPLAY_LIMIT:
            messages.error(
                request,
                f"Select at most {REPLAY_LIMIT} deliveries, or use “Recover failed since…”.",
            )
            return None
        self._replay(request, deliveries)
        return None

    def get_urls(self):
        return [
            *self._urls(
                ("recover/", self.recover_view, "webhookdelivery_recover"),
                ("<path:object_id>/replay/", self.replay_view, "webhookdelivery_replay"),
            ),
            *super().get_urls(),
        ]

    def replay_view(self, request, object_id):
        delivery = self._get_for(request, object_id, CHANGE)
        if request.method == "POST":
            self._replay(request, [delivery])
            return HttpResponseRedirect(_admin_url(delivery))
        return self._page(
            request,
            "action.html",
            "Replay the delivery",
            delivery,
            intro=f"The event {delivery.event_id} is sent to {delivery.endpoint_name} again, "
            "from a first attempt, with the same webhook-id (a receiver that already processed "
            "it can tell).",
            submit="Replay",
        )

    def recover_view(self, request):
        if not self.has_change_permission(request):
            raise PermissionDenied
        endpoints = restrict(WebhookEndpoint.objects.all(), request.user, CHANGE)
        form = RecoverForm(request.POST or None, endpoints=endpoints)
        if request.method == "POST" and form.is_valid():
            district = None if request.user.is_superuser else roles.district_id_of(request.user)
            count = services.webhook_deliveries_recover(
                actor=request.user,
                since=form.cleaned_data["since"],
                endpoint=form.cleaned_data["endpoint"],
                district=district,
                limit=REPLAY_LIMIT,
            )
            if not count:
                messages.info(
                    request,
                    f"No delivery failed for good since {_when(form.cleaned_data['since'])}; "
                    "nothing to recover.",
                )
                return HttpResponseRedirect(reverse("admin:webhooks_webhookdelivery_changelist"))
            text = f"Queued {count} failed deliver{'y' if count == 1 else 'ies'} to be sent again."
            if count == REPLAY_LIMIT:
                text += f" At most {REPLAY_LIMIT} go at a time: recover again for the rest."
            messages.success(request, text)
            return HttpResponseRedirect(
                reverse("admin:webhooks_webhookdelivery_changelist")
                + "?"
                + urlencode({"status__exact": DeliveryStatus.PENDING})
            )
        return self._page(
            request,
            "action.html",
            "Recover failed deliveries",
            form=form,
            intro="Deliveries that failed for good (every retry used) are kept. Once the "
            f"receiver works again, send them again; at most {REPLAY_LIMIT} per click, oldest "
            "first.",
            submit="Recover",
        )


class AttemptOutcomeFilter(admin.SimpleListFilter):
    """Fixed choices: a DISTINCT over millions of attempts per page view would not be."""

    title = "outcome"
    parameter_name = "outcome"

    def lookups(self, request, model_admin):
        return [
            ("succeeded", "Succeeded (2xx)"),
            ("http_error", "Answered with an error"),
            ("no_answer", "No answer (timeout, refused, TLS…)"),
        ]

    def queryset(self, request, queryset):
        if self.value() == "succeeded":
            return queryset.filter(succeeded=True)
        if self.value() == "http_error":
            return queryset.filter(succeeded=False, status_code__isnull=False)
        if self.value() == "no_answer":
            return queryset.filter(status_code__isnull=True)
        return queryset


class ErrorClassFilter(admin.SimpleListFilter):
    """The outbound client's stable error codes (bxos.common.outbound)."""

    title = "error class"
    parameter_name = "error_class"

    def lookups(self, request, model_admin):
        codes = [
            outbound.TIMEOUT,
            outbound.CONNECT_ERROR,
            outbound.CONNECTION_RESET,
            outbound.REFUSED_ADDRESS,
            outbound.UNRESOLVABLE_HOST,
            outbound.TLS_ERROR,
            outbound.PROTOCOL_ERROR,
            outbound.TOO_MANY_REDIRECTS,
            outbound.INVALID_URL,
            outbound.NETWORK_ERROR,
        ]
        return [(code, code) for code in codes]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(error_class=self.value())
        return queryset


@admin.register(WebhookAttempt)
class WebhookAttemptAdmin(GateMixin, ReadOnlyAdmin):
    """Every HTTP request sent, and what came back."""

    list_display = [
        "started_at",
        "delivery_link",
        "number",
        "status_code",
        "duration_ms",
        "error_class",
        "succeeded",
    ]
    list_filter = [AttemptOutcomeFilter, ErrorClassFilter]
    date_hierarchy = "started_at"
    show_full_result_count = False
    fields = [
        "delivery_link",
        "number",
        "started_at",
        "duration_ms",
        "status_code",
        "succeeded",
        "error_class",
        "error",
        "response",
    ]
    readonly_fields = fields

    class Media:
        css = {"all": ["webhooks/admin.css"]}

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("delivery").defer("response_body")

    @admin.display(description="delivery")
    def delivery_link(self, obj):
        return format_html(
            '<a href="{}">{} to {}</a>',
            _admin_url(obj.delivery),
            obj.delivery.event_id,
            obj.delivery.endpoint_name,
        )

    @admin.display(description="response body")
    def response(self, obj):
        return _response_preview(obj)


# --- events ---------------------------------------------------------------------------------


class EventDeliveryInline(GateMixin, admin.TabularInline):
    """An event's deliveries, one per endpoint; read-only, each links to its page."""

    model = WebhookDelivery
    extra = 0
    can_delete = False
    fields = ["delivery", "status", "attempts", "last_status_code", "last_error"]
    readonly_fields = fields
    verbose_name_plural = "deliveries"

    @admin.display(description="to endpoint")
    def delivery(self, obj):
        suffix = " (deleted)" if obj.endpoint_id is None else ""
        return format_html('<a href="{}">{}{}</a>', _admin_url(obj), obj.endpoint_name, suffix)

    def get_queryset(self, request):
        return super().get_queryset(request).defer("body")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(WebhookEvent)
class WebhookEventAdmin(_WebhookAdminPages, GateMixin, ReadOnlyAdmin):
    """Events as sent, kept for replay; each with its deliveries."""

    list_display = ["id", "type", "occurred_at", "record", "delivery_count"]
    list_filter = [EventOwnTypeFilter]
    search_fields = ["=id", "=object_id"]
    search_help_text = "An event id (the webhook-id header) or a record id."
    date_hierarchy = "created_at"
    show_full_result_count = False
    inlines = [EventDeliveryInline]
    fields = [
        "id",
        "type",
        "occurred_at",
        "created_at",
        "record",
        "change_version",
        "payload_pretty",
    ]
    readonly_fields = fields

    class Media:
        css = {"all": ["webhooks/admin.css"]}

    def get_queryset(self, request):
        counted = Coalesce(
            Subquery(
                WebhookDelivery.objects.filter(event=OuterRef("pk"))
                .order_by()
                .values("event")
                .annotate(n=Count("id"))
                .values("n")
            ),
            0,
        )
        return super().get_queryset(request).defer("payload").annotate(delivery_count=counted)

    def get_list_filter(self, request):
        filters = list(super().get_list_filter(request))
        if request.user.is_superuser:
            filters.insert(0, ("district", admin.RelatedOnlyFieldListFilter))
        return filters

    @admin.display(description="record")
    def record(self, obj):
        if obj.object_id is None:
            return obj.model or "—"
        resource = catalogue.resource_for(obj.model) if obj.model else None
        return f"{resource.name if resource else obj.model} {obj.object_id}"

    @admin.display(description="deliveries", ordering="delivery_count")
    def delivery_count(self, obj):
        return obj.delivery_count

    @admin.display(description="payload")
    def payload_pretty(self, obj):
        return _pre(selectors.readable_body(bytes(obj.payload), "json"))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, unquote(object_id))
        if request.method == "GET" and obj is not None and self.has_view_permission(request, obj):
            _record_payload_view(request, obj)
        extra = {"can_send": obj is not None and self._can_send(request), **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra)

    def _can_send(self, request) -> bool:
        return self.admin_site._registry[WebhookDelivery].has_change_permission(request)

    def get_urls(self):
        return [
            *self._urls(("<path:object_id>/send/", self.send_view, "webhookevent_send")),
            *super().get_urls(),
        ]

    def send_view(self, request, object_id):
        event = self._get_for(request, object_id, VIEW)
        if not self._can_send(request):
            raise PermissionDenied
        endpoints = restrict(
            WebhookEndpoint.objects.filter(
                district_id=event.district_id, event_types__contains=[event.type]
            ),
            request.user,
            CHANGE,
        )
        form = EventReplayForm(request.POST or None, endpoints=endpoints)
        if request.method == "POST" and form.is_valid():
            endpoint = form.cleaned_data["endpoint"]
            try:
                delivery = services.webhook_event_replay(
                    actor=request.user, event=event, endpoint=endpoint
                )
            except ValidationError as exc:
                messages.error(request, " ".join(exc.messages))
                return HttpResponseRedirect(_admin_url(event))
            if delivery is None:
                messages.error(
                    request,
                    f"{endpoint} may not receive this event now (its schools, or the vendor's "
                    "scopes and allowed schools).",
                )
                return HttpResponseRedirect(_admin_url(event))
            messages.success(
                request, f"The event is queued for {endpoint} ({delivery.get_status_display()})."
            )
            return HttpResponseRedirect(_admin_url(delivery))
        return self._page(
            request,
            "action.html",
            "Send the event to an endpoint",
            event,
            form=form,
            intro="Send this event again to one endpoint subscribed to its type (or for the "
            "first time, say if the endpoint subscribed later), with the same webhook-id.",
            submit="Send",
        )
