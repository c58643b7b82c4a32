"""Admin of the behavior domain: referrals, the BSR queue and workflow, interventions."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html

from bxos.behavior import choices, services
from bxos.behavior import models as m
from bxos.common.admin import TenantAdmin, TenantInline
from bxos.common.permissions import VIEW, restrict
from bxos.common.services import model_save
from bxos.schools.models import Staff


@admin.register(m.Descriptor)
class DescriptorAdmin(TenantAdmin):
    list_display = ["label", "category", "code", "scope", "sort_order", "is_active"]
    list_filter = ["category", "is_active"]
    search_fields = ["label", "code"]

    @admin.display(description="scope")
    def scope(self, obj):
        return "shipped default" if obj.district_id is None else "district"


class IncidentActionInline(TenantInline):
    model = m.IncidentAction
    fields = ["action", "duration_days", "start_date", "end_date"]


class IncidentParticipantInline(TenantInline):
    model = m.IncidentParticipant
    autocomplete_fields = ["student"]
    fields = ["student", "role"]


@admin.register(m.Incident)
class IncidentAdmin(TenantAdmin):
    list_display = [
        "occurred_on",
        "occurred_at",
        "student",
        "school",
        "level",
        "problem_behavior",
        "location",
        "reported_by",
    ]
    list_filter = [
        "level",
        "school",
        "problem_behavior",
        "location",
        "restraint_seclusion",
        "law_enforcement_referral",
        "idea_removal",
    ]
    search_fields = ["student__last_name", "student__first_name", "=student__student_number"]
    autocomplete_fields = ["student", "school", "reported_by"]
    list_select_related = ["student", "school", "problem_behavior", "location", "reported_by"]
    date_hierarchy = "occurred_on"
    inlines = [IncidentActionInline, IncidentParticipantInline]
    fieldsets = [
        (
            "Referral",
            {"fields": ["student", "school", "reported_by", "occurred_on", "occurred_at"]},
        ),
        (
            "Behavior",
            {
                "fields": [
                    "level",
                    "problem_behavior",
                    "subtype",
                    "location",
                    "motivation",
                    "others_involved",
                ]
            },
        ),
        (
            "Federal reporting",
            {
                "fields": [
                    "restraint_seclusion",
                    "law_enforcement_referral",
                    "school_related_arrest",
                    "zero_tolerance_expulsion",
                    "idea_removal",
                    "services_after_removal",
                ]
            },
        ),
        (
            "Narrative",
            {
                "fields": ["narrative"],
                "description": "Do not name other students. The narrative is never "
                "sent in notifications.",
            },
        ),
        (
            "Lineage",
            {
                "fields": [
                    "change_version",
                    "source_system",
                    "source_id",
                    "created_at",
                    "updated_at",
                ],
                "classes": ["collapse"],
            },
        ),
    ]


class QueueFilter(admin.SimpleListFilter):
    """The queue shows open requests by default; closed ones are one click away."""

    title = "queue"
    parameter_name = "queue"

    def lookups(self, request, model_admin):
        return [
            ("open", "Open"),
            ("overdue", "Open and overdue"),
            ("closed", "Closed"),
            ("all", "All"),
        ]

    def choices(self, changelist):
        value = self.value() or "open"
        for lookup, title in self.lookup_choices:
            yield {
                "selected": value == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request, queryset):
        value = self.value() or "open"
        if value == "open":
            return queryset.filter(state__in=choices.OPEN_BSR_STATES)
        if value == "overdue":
            return queryset.filter(state__in=choices.OPEN_BSR_STATES, due_at__lt=timezone.now())
        if value == "closed":
            return queryset.exclude(state__in=choices.OPEN_BSR_STATES)
        return queryset


class BsrForm(forms.ModelForm):
    """The request itself plus one workflow move, made through the bsr_transition service."""

    move_to = forms.ChoiceField(required=False, label="Move to")
    move_note = forms.CharField(
        required=False, label="Note", widget=forms.Textarea(attrs={"rows": 2})
    )

    class Meta:
        model = m.BehaviorSupportRequest
        fields = ["student", "school", "requested_by", "concern", "priority", "assignee"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        state = self.instance.state if self.instance.pk else None
        allowed = choices.BSR_TRANSITIONS.get(state, ()) if state else ()
        self.fields["move_to"].choices = [
            (
                "",
                "— stay "
                + (self.instance.get_state_display().lower() if state else "submitted")
                + " —",
            )
        ] + [(s, choices.BsrState(s).label) for s in allowed]

    def clean(self):
        data = super().clean()
        move_to = data.get("move_to")
        if move_to == choices.BsrState.TRIAGED and not data.get("priority"):
            self.add_error("priority", "Triage needs a priority from 1 to 4.")
        if self.instance.pk is None:
            self.instance.submitted_at = timezone.now()
        return data


@admin.register(m.BehaviorSupportRequest)
class BehaviorSupportRequestAdmin(TenantAdmin):
    """Each school's queue: open requests by priority, then age; overdue ones flagged."""

    form = BsrForm
    list_display = [
        "id",
        "student",
        "school",
        "state",
        "priority",
        "assignee",
        "submitted_at",
        "due_at",
        "overdue",
    ]
    list_display_links = ["id", "student"]
    list_filter = [QueueFilter, "school", "state", "priority"]
    search_fields = ["student__last_name", "=student__student_number", "concern"]
    autocomplete_fields = ["student", "school", "requested_by", "assignee"]
    list_select_related = ["student", "school", "assignee"]
    ordering = ["school", "priority", "submitted_at"]
    readonly_fields = ["state", "submitted_at", "due_at", "closed_at", "resolution"]

    def get_fieldsets(self, request, obj=None):
        sets = [
            ("Request", {"fields": ["student", "school", "requested_by", "concern"]}),
            (
                "Workflow",
                {
                    "fields": [
                        "state",
                        "priority",
                        "assignee",
                        "move_to",
                        "move_note",
                        "submitted_at",
                        "due_at",
                        "closed_at",
                        "resolution",
                    ]
                },
            ),
        ]
        if obj is not None:
            sets.append(("Lineage", {"fields": list(self.lineage_fields), "classes": ["collapse"]}))
        return sets

    @admin.display(description="overdue", boolean=True)
    def overdue(self, obj):
        return bool(obj.is_open and obj.due_at and obj.due_at < timezone.now())

    # Fields a save may change directly; the state only moves through bsr_transition.
    plain_fields = ("concern", "student", "school", "requested_by", "assignee", "priority")

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        move_to = data.get("move_to")
        if not change:
            bsr = services.bsr_submit(
                actor=request.user,
                student=obj.student,
                school=obj.school,
                requested_by=obj.requested_by,
                concern=obj.concern,
            )
            # The admin redirects and logs with this instance: give it the new row.
            obj.pk = bsr.pk
            obj.refresh_from_db()
        else:
            # With a move, priority and assignee are the transition's to set (due time, history).
            moved_by_transition = {"priority", "assignee"} if move_to else set()
            plain = [
                f
                for f in form.changed_data
                if f in self.plain_fields and f not in moved_by_transition
            ]
            if plain:
                model_save(instance=obj, actor=request.user, fields=plain)
        if move_to:
            services.bsr_transition(
                actor=request.user,
                bsr=obj,
                to_state=move_to,
                note=data.get("move_note", ""),
                priority=data.get("priority"),
                assignee=data.get("assignee"),
            )

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name in ("requested_by", "assignee"):
            kwargs["queryset"] = restrict(Staff.objects.filter(is_active=True), request.user, VIEW)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class BsrTransitionInline(TenantInline):
    model = m.BsrTransition
    fields = ["at", "from_state", "to_state", "actor", "note"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


BehaviorSupportRequestAdmin.inlines = [BsrTransitionInline]


@admin.register(m.Intervention)
class InterventionAdmin(TenantAdmin):
    list_display = [
        "student",
        "intervention_type",
        "tier",
        "school",
        "staff",
        "start_date",
        "planned_end_date",
        "fidelity",
        "outcome",
    ]
    list_filter = ["tier", "intervention_type", "outcome", "school"]
    search_fields = ["student__last_name", "=student__student_number"]
    autocomplete_fields = ["student", "school", "staff"]
    list_select_related = ["student", "intervention_type", "school", "staff"]
    date_hierarchy = "start_date"

    @admin.display(description="fidelity")
    def fidelity(self, obj):
        return "—" if obj.fidelity_pct is None else format_html("{}%", obj.fidelity_pct)
