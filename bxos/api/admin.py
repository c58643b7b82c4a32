"""Admin of API clients, field profiles and the disclosure log."""

from __future__ import annotations

import csv

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import StreamingHttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from bxos.api import scopes, services
from bxos.api.models import (
    ApiClient,
    ApiEndpoint,
    DisclosureLogEntry,
    FieldProfile,
    ThrottleException,
    ThrottleRule,
)
from bxos.api.resources import RESOURCES
from bxos.api.throttling import META_GROUP, WRITES_GROUP, describe_limits
from bxos.common.admin import GateMixin, ReadOnlyAdmin, TenantAdmin


class ApiClientForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=scopes.scope_choices(), required=False, widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = ApiClient
        fields = [
            "name",
            "contact_name",
            "contact_email",
            "purpose",
            "contract_end_date",
            "status",
            "allowed_schools",
            "scopes",
            "field_profile",
            "rate_per_minute",
            "rate_per_hour",
            "grant_type",
            "client_type",
            "redirect_uris",
        ]

    def _post_clean(self):
        super()._post_clean()
        if self.errors:
            return
        try:
            services.api_client_check_oauth(client=self.instance)
        except ValidationError as exc:
            self._update_errors(exc)


@admin.register(ApiClient)
class ApiClientAdmin(TenantAdmin):
    form = ApiClientForm
    list_display = ["name", "status", "contract_end_date", "scope_list", "client_id", "revoked"]
    list_filter = ["status"]
    search_fields = ["name", "contact_name", "contact_email", "application__client_id"]
    filter_horizontal = ["allowed_schools"]
    readonly_fields = ["client_id", "revoked_at", "disclosures_link", "last_day", "rate_limits"]
    actions = ["rotate_secret", "revoke"]
    fieldsets = [
        (None, {"fields": ["name", "contact_name", "contact_email", "status"]}),
        ("Contract", {"fields": ["purpose", "contract_end_date"]}),
        (
            "What it may read and write",
            {"fields": ["allowed_schools", "scopes", "field_profile"]},
        ),
        (
            "Sign-in",
            {
                "fields": ["client_id", "grant_type", "client_type", "redirect_uris", "revoked_at"],
                "description": "Server-to-server clients use client credentials. Apps that "
                "act for a signed-in staff member use the authorization code grant with PKCE, "
                "and see only what both the app and that person may see.",
            },
        ),
        ("Rate limits", {"fields": ["rate_per_minute", "rate_per_hour", "rate_limits"]}),
        ("Activity", {"fields": ["disclosures_link", "last_day"]}),
    ]

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if request.user.is_superuser:
            # Only a superuser chooses the district; a district's people work in their own.
            first = fieldsets[0][1]
            fieldsets = [(None, {**first, "fields": ["district", *first["fields"]]})]
            fieldsets += list(super().get_fieldsets(request, obj)[1:])
        return fieldsets

    @admin.display(description="client id")
    def client_id(self, obj):
        return obj.application.client_id if obj.application_id else "—"

    @admin.display(description="scopes")
    def scope_list(self, obj):
        return ", ".join(obj.scopes) or "—"

    @admin.display(description="revoked", boolean=True)
    def revoked(self, obj):
        return obj.revoked_at is not None

    @admin.display(description="disclosures")
    def disclosures_link(self, obj):
        if not obj.pk:
            return "—"
        url = reverse("admin:api_disclosurelogentry_changelist") + f"?client__id__exact={obj.pk}"
        return format_html('<a href="{}">Every disclosure to this client</a>', url)

    @admin.display(description="rate limits now")
    def rate_limits(self, obj):
        if not obj.pk:
            return "—"
        return format_html_join(mark_safe("<br>"), "{}", ((line,) for line in describe_limits(obj)))

    @admin.display(description="requests, last 24 hours")
    def last_day(self, obj):
        from django.utils.html import format_html_join

        from bxos.api.monitoring import stats_summary

        if not obj.pk:
            return "—"
        rows = stats_summary(client=obj)
        if not rows:
            return "No requests in the last 24 hours."

        def ms(value: float) -> str:
            return "over 5 s" if value == float("inf") else f"≤ {int(value)} ms"

        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((r.endpoint, r.count, r.errors, ms(r.p50_ms), ms(r.p95_ms)) for r in rows),
        )
        return format_html(
            "<table><thead><tr><th>endpoint</th><th>requests</th><th>errors</th><th>p50</th>"
            "<th>p95</th></tr></thead><tbody>{}</tbody></table>",
            body,
        )

    def save_model(self, request, obj, form, change):
        secret = None
        if not change:
            secret = services.api_client_attach_credentials(actor=request.user, client=obj)
        super().save_model(request, obj, form, change)
        if change:
            services.api_client_sync_application(actor=request.user, client=obj)
        else:
            services.api_client_service_user(client=obj)
        if not change and not secret:
            messages.info(
                request,
                f"Client id {obj.application.client_id}; a public client has no secret: it "
                "signs staff in with the authorization code grant and PKCE.",
            )
        if secret:
            messages.warning(
                request,
                f"Client id {obj.application.client_id}; client secret {secret} — copy it now: "
                "it is stored hashed and will not be shown again.",
            )

    @admin.action(description="Rotate the secret (old secret and tokens stop at once)")
    def rotate_secret(self, request, queryset):
        for client in queryset:
            secret = services.api_client_rotate_secret(actor=request.user, client=client)
            messages.warning(request, f"{client}: new client secret {secret} — copy it now.")

    @admin.action(description="Revoke (every token stops at once)")
    def revoke(self, request, queryset):
        for client in queryset:
            services.api_client_revoke(actor=request.user, client=client)
        messages.success(request, f"Revoked {queryset.count()} client(s).")


@admin.register(FieldProfile)
class FieldProfileAdmin(TenantAdmin):
    list_display = ["name", "description"]
    search_fields = ["name"]


class Echo:
    def write(self, value):
        return value


@admin.register(DisclosureLogEntry)
class DisclosureLogEntryAdmin(GateMixin, ReadOnlyAdmin):
    """Who received which students' data, when and why; exportable as CSV."""

    list_display = [
        "at",
        "client",
        "acting_user",
        "endpoint",
        "count",
        "purpose_short",
        "request_id",
    ]
    list_filter = ["client"]
    date_hierarchy = "at"
    show_full_result_count = False
    actions = ["export_csv"]

    @admin.display(description="purpose")
    def purpose_short(self, obj):
        return obj.purpose[:80]

    def get_queryset(self, request):
        queryset = super().get_queryset(request).select_related("client", "acting_user")
        student = request.GET.get("student")
        if student and student.isdigit():
            queryset = queryset.filter(student_ids__contains=[int(student)])
        return queryset

    def lookup_allowed(self, lookup, value, request=None):
        return lookup == "student" or super().lookup_allowed(lookup, value, request)

    def get_changelist(self, request, **kwargs):
        # "student" is handled in get_queryset, not as a field lookup of the changelist.
        from django.contrib.admin.views.main import ChangeList

        class StudentAwareChangeList(ChangeList):
            def get_filters_params(self, params=None):
                params = super().get_filters_params(params)
                params.pop("student", None)
                return params

        return StudentAwareChangeList

    @admin.action(description="Export the selected disclosures as CSV")
    def export_csv(self, request, queryset):
        writer = csv.writer(Echo())
        header = [
            "time",
            "client",
            "acting for",
            "purpose",
            "endpoint",
            "query",
            "student ids",
            "count",
            "request id",
        ]
        rows = (
            [
                d.at.isoformat(),
                d.client.name,
                d.acting_user.get_username() if d.acting_user_id else "",
                d.purpose,
                d.endpoint,
                d.query,
                " ".join(map(str, d.student_ids)),
                d.count,
                d.request_id,
            ]
            for d in queryset.iterator()
        )
        response = StreamingHttpResponse(
            (writer.writerow(r) for r in [header, *rows]), content_type="text/csv"
        )
        response["Content-Disposition"] = 'attachment; filename="disclosures.csv"'
        return response


def endpoint_group_choices() -> list[tuple[str, str]]:
    """The endpoint groups a rule can name; a free-text typo would silently match nothing."""
    return [
        ("", "Every endpoint"),
        (WRITES_GROUP, "Writes (every method but GET)"),
        (META_GROUP, "Meta (changes/available)"),
        *[(resource.name, resource.name) for resource in RESOURCES],
    ]


class SameDistrictClientForm(forms.ModelForm):
    """The client of a rule or exception must belong to its district (a superuser chooses
    both; a district's people are only offered their own clients)."""

    def clean(self):
        cleaned = super().clean()
        client = cleaned.get("client")
        if "district" in self.fields:
            district = cleaned.get("district")
            district_id = district.pk if district is not None else None
        else:
            district_id = self.instance.district_id
        if client is not None and district_id is not None and client.district_id != district_id:
            self.add_error("client", "This client belongs to another district.")
        return cleaned


class ThrottleRuleForm(SameDistrictClientForm):
    endpoint_group = forms.ChoiceField(
        choices=endpoint_group_choices,
        required=False,
        help_text="A resource, every write, or empty for every endpoint.",
    )

    class Meta:
        model = ThrottleRule
        fields = [
            "district",
            "name",
            "client",
            "scope",
            "endpoint_group",
            "rate_per_minute",
            "burst",
            "rate_per_hour",
            "is_active",
        ]


@admin.register(ThrottleRule)
class ThrottleRuleAdmin(TenantAdmin):
    """Rate limits for every client of the district, one client, a scope or endpoint group;
    the strictest matching rule applies, within seconds of a save."""

    form = ThrottleRuleForm
    list_display = [
        "name",
        "client_label",
        "scope",
        "endpoint_group",
        "rate_per_minute",
        "burst",
        "rate_per_hour",
        "is_active",
    ]
    list_filter = ["is_active", "scope", "client"]
    search_fields = ["name", "client__name", "endpoint_group"]
    autocomplete_fields = ["client"]

    @admin.display(description="client", ordering="client__name")
    def client_label(self, obj):
        return obj.client or "Every client"


class ThrottleExceptionForm(SameDistrictClientForm):
    class Meta:
        model = ThrottleException
        fields = [
            "district",
            "client",
            "reason",
            "rate_per_minute",
            "rate_per_hour",
            "starts_at",
            "expires_at",
        ]


@admin.register(ThrottleException)
class ThrottleExceptionAdmin(TenantAdmin):
    """Temporary limits of one client that replace every other limit until they expire."""

    form = ThrottleExceptionForm
    list_display = [
        "client",
        "rate_per_minute",
        "rate_per_hour",
        "starts_at",
        "expires_at",
        "is_live",
        "reason_short",
    ]
    list_filter = ["client"]
    search_fields = ["client__name", "reason"]
    autocomplete_fields = ["client"]
    date_hierarchy = "starts_at"

    @admin.display(description="live now", boolean=True)
    def is_live(self, obj):
        return obj.starts_at <= timezone.now() < obj.expires_at

    @admin.display(description="reason")
    def reason_short(self, obj):
        return obj.reason[:80]


@admin.register(ApiEndpoint)
class ApiEndpointAdmin(ReadOnlyAdmin):
    """The API catalogue, derived from the code after every migrate (never edited by hand)."""

    list_display = ["path", "method_list", "version", "status", "sunset_at", "scope", "write_scope"]
    list_filter = ["version", "status", "resource"]
    search_fields = ["path", "name", "resource"]

    @admin.display(description="methods")
    def method_list(self, obj):
        return ", ".join(obj.methods)

    def has_view_permission(self, request, obj=None):
        return request.user.is_staff

    def has_module_permission(self, request):
        return request.user.is_staff
