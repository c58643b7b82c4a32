"""Admin of the school-data core. Thin: the base classes apply the gate and the services."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import OuterRef, Subquery
from django.urls import reverse
from django.utils.html import format_html

from bxos.common.admin import TenantAdmin, TenantInline
from bxos.common.permissions import VIEW, restrict
from bxos.schools import models as m
from bxos.schools import services


class SchoolFilter(admin.SimpleListFilter):
    """Students by the school they are (or were) enrolled at; choices pass the gate."""

    title = "school"
    parameter_name = "school"

    def lookups(self, request, model_admin):
        schools = restrict(m.School.objects.all(), request.user, VIEW)
        return [(s.pk, s.name) for s in schools]

    def queryset(self, request, queryset):
        if self.value():
            try:
                school_id = int(self.value())
            except ValueError:
                return queryset.none()
            return queryset.filter(
                pk__in=m.Enrollment.objects.filter(school_id=school_id).values("student_id")
            )
        return queryset


@admin.register(m.District)
class DistrictAdmin(TenantAdmin):
    list_display = ["name", "code", "state_code", "nces_id", "time_zone"]
    search_fields = ["name", "code", "nces_id"]


@admin.register(m.School)
class SchoolAdmin(TenantAdmin):
    list_display = ["name", "code", "school_type", "grade_low", "grade_high", "nces_id"]
    list_filter = ["school_type"]
    search_fields = ["name", "code", "nces_id"]


@admin.register(m.AcademicSession)
class AcademicSessionAdmin(TenantAdmin):
    list_display = ["name", "session_type", "school_year", "start_date", "end_date", "parent"]
    list_filter = ["session_type", "school_year"]
    search_fields = ["name"]
    list_select_related = ["parent"]
    autocomplete_fields = ["parent"]


class StudentGuardianInline(TenantInline):
    model = m.StudentGuardian
    fk_name = "student"
    autocomplete_fields = ["guardian"]
    fields = [
        "guardian",
        "relationship",
        "is_primary_contact",
        "lives_with",
        "has_custody",
        "receives_notifications",
    ]


class DemographicInline(TenantInline):
    model = m.StudentDemographic
    fields = [
        "valid_from",
        "valid_to",
        "race_ethnicity",
        "sex",
        "idea_disability",
        "section_504",
        "english_learner",
        "economically_disadvantaged",
    ]


class EnrollmentInline(TenantInline):
    model = m.Enrollment
    fields = [
        "school",
        "school_year",
        "grade_level",
        "entry_date",
        "exit_date",
        "exit_reason",
        "is_primary",
    ]


@admin.register(m.Student)
class StudentAdmin(TenantAdmin):
    list_display = [
        "last_name",
        "first_name",
        "student_number",
        "grade_level",
        "current_school",
        "is_active",
    ]
    list_display_links = ["last_name", "first_name"]
    list_filter = [SchoolFilter, "grade_level", "is_active"]
    # Numbers match exactly (case-sensitive, so an index serves them); names by substring.
    search_fields = [
        "last_name",
        "first_name",
        "preferred_name",
        "student_number__exact",
        "state_id__exact",
    ]
    inlines = [EnrollmentInline, StudentGuardianInline, DemographicInline]
    readonly_fields = ["records_links"]

    def get_queryset(self, request):
        # The current school as a subquery: one query per page, whatever the page size.
        current = m.Enrollment.objects.filter(
            student_id=OuterRef("pk"), exit_date__isnull=True
        ).order_by("-is_primary", "-entry_date")
        return (
            super()
            .get_queryset(request)
            .annotate(current_school_name=Subquery(current.values("school__name")[:1]))
        )

    @admin.display(description="current school", ordering="current_school_name")
    def current_school(self, obj):
        return obj.current_school_name or "—"

    @admin.display(description="records")
    def records_links(self, obj):
        if obj.pk is None:
            return "—"
        links = [
            ("behavior incidents", "admin:behavior_incident_changelist", "student__id__exact"),
            (
                "support requests",
                "admin:behavior_behaviorsupportrequest_changelist",
                "student__id__exact",
            ),
            ("interventions", "admin:behavior_intervention_changelist", "student__id__exact"),
            ("daily attendance", "admin:schools_dailyattendance_changelist", "student__id__exact"),
            ("grades", "admin:schools_grade_changelist", "student__id__exact"),
            ("access log", "admin:common_accesslogentry_changelist", "student_id"),
            (
                "who received this student's data",
                "admin:api_disclosurelogentry_changelist",
                "student",
            ),
        ]
        return format_html(
            " · ".join(['<a href="{}?{}={}">{}</a>'] * len(links)),
            *[part for label, url, param in links for part in (reverse(url), param, obj.pk, label)],
        )


@admin.register(m.Guardian)
class GuardianAdmin(TenantAdmin):
    list_display = ["last_name", "first_name", "email", "phone", "preferred_language"]
    search_fields = ["last_name", "first_name", "email", "phone"]
    exclude = ["students"]
    raw_id_fields = ["user"]


@admin.register(m.StudentGuardian)
class StudentGuardianAdmin(TenantAdmin):
    list_display = ["student", "guardian", "relationship", "is_primary_contact", "has_custody"]
    list_filter = ["relationship", "is_primary_contact"]
    search_fields = ["student__last_name", "guardian__last_name"]
    autocomplete_fields = ["student", "guardian"]
    list_select_related = ["student", "guardian"]


@admin.register(m.StudentDemographic)
class StudentDemographicAdmin(TenantAdmin):
    list_display = [
        "student",
        "valid_from",
        "valid_to",
        "race_ethnicity",
        "sex",
        "idea_disability",
        "section_504",
        "english_learner",
    ]
    list_filter = ["race_ethnicity", "sex", "idea_disability", "section_504", "english_learner"]
    search_fields = ["student__last_name", "=student__student_number"]
    autocomplete_fields = ["student"]
    list_select_related = ["student"]


@admin.register(m.Staff)
class StaffAdmin(TenantAdmin):
    list_display = ["last_name", "first_name", "staff_number", "position", "login", "is_active"]
    list_filter = ["position", "is_active"]
    search_fields = ["last_name", "first_name", "=staff_number", "email"]
    filter_horizontal = ["schools"]
    raw_id_fields = ["user"]
    list_select_related = ["user"]
    actions = ["create_logins"]

    @admin.display(description="login")
    def login(self, obj):
        return obj.user.username if obj.user_id else "—"

    def save_related(self, request, form, formsets, change):
        # Schools go through the service so school admins and counselors get (or lose) access.
        schools = list(form.cleaned_data.get("schools", []))
        form.save_m2m = lambda: None
        super().save_related(request, form, formsets, change)
        # Also moves the login to the role of a changed position, and deactivates it with the
        # staff member.
        services.staff_set_schools(actor=request.user, staff=form.instance, schools=schools)

    @admin.action(description="Create logins (no password yet) for the selected staff")
    def create_logins(self, request, queryset):
        created = 0
        for staff in queryset.filter(user__isnull=True):
            username = (staff.email.split("@")[0] if staff.email else staff.staff_number).lower()
            try:
                services.staff_login_create(
                    actor=request.user, staff=staff, username=username, password=None
                )
                created += 1
            except Exception as exc:  # report each failure by name, keep going
                messages.error(request, f"{staff}: {exc}")
        messages.success(request, f"Created {created} login(s). Set passwords by reset link.")


@admin.register(m.Enrollment)
class EnrollmentAdmin(TenantAdmin):
    list_display = [
        "student",
        "school",
        "school_year",
        "grade_level",
        "entry_date",
        "exit_date",
        "exit_reason",
    ]
    list_filter = ["school", "school_year", "grade_level", "exit_reason"]
    search_fields = ["student__last_name", "student__first_name", "=student__student_number"]
    autocomplete_fields = ["student", "school", "school_year"]
    list_select_related = ["student", "school", "school_year"]
    date_hierarchy = "entry_date"


class SectionEnrollmentInline(TenantInline):
    model = m.SectionEnrollment
    autocomplete_fields = ["student"]
    fields = ["student", "begin_date", "end_date"]


@admin.register(m.Section)
class SectionAdmin(TenantAdmin):
    list_display = ["course_title", "section_code", "school", "session", "period", "teacher"]
    list_filter = ["school", "session"]
    search_fields = ["course_title", "course_code", "section_code"]
    autocomplete_fields = ["school", "session", "teacher"]
    list_select_related = ["school", "session", "teacher"]
    inlines = [SectionEnrollmentInline]

    def save_model(self, request, obj, form, change):
        teacher_changed = "teacher" in form.changed_data
        teacher = obj.teacher
        super().save_model(request, obj, form, change)
        if teacher_changed or not change:
            services.section_set_teacher(actor=request.user, section=obj, teacher=teacher)


@admin.register(m.SectionEnrollment)
class SectionEnrollmentAdmin(TenantAdmin):
    list_display = ["student", "section", "begin_date", "end_date"]
    list_filter = ["section__school"]
    search_fields = ["student__last_name", "=student__student_number", "section__course_title"]
    autocomplete_fields = ["student", "section"]
    list_select_related = ["student", "section"]


@admin.register(m.DailyAttendance)
class DailyAttendanceAdmin(TenantAdmin):
    list_display = ["date", "student", "school", "status", "minutes_absent"]
    list_filter = ["status", "school"]
    search_fields = ["student__last_name", "=student__student_number"]
    autocomplete_fields = ["student", "school"]
    list_select_related = ["student", "school"]
    date_hierarchy = "date"


@admin.register(m.PeriodAttendance)
class PeriodAttendanceAdmin(TenantAdmin):
    list_display = ["date", "student", "section", "status"]
    list_filter = ["status"]
    search_fields = ["student__last_name", "=student__student_number"]
    autocomplete_fields = ["student", "section"]
    list_select_related = ["student", "section"]
    date_hierarchy = "date"


@admin.register(m.Grade)
class GradeAdmin(TenantAdmin):
    list_display = ["student", "section", "grading_period", "letter_grade", "numeric_grade"]
    list_filter = ["grading_period", "letter_grade"]
    search_fields = ["student__last_name", "=student__student_number", "section__course_title"]
    autocomplete_fields = ["student", "section", "grading_period"]
    list_select_related = ["student", "section", "grading_period"]
