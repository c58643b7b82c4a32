"""API clients (vendors as FERPA school officials), field profiles and the disclosure log."""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import BrinIndex, GinIndex
from django.db import models
from django.db.models import Q
from django.utils import timezone

from bxos.api import scopes
from bxos.api.choices import ACTIVE_STATUSES, ClientStatus, ClientType, GrantType
from bxos.common.constraints import FieldConstraintErrors, in_range, on_field, valid_code
from bxos.common.permissions import VIEW, Gate, restrict, restrict_for_client


class FieldProfile(FieldConstraintErrors, models.Model):
    """Which fields of each resource a client receives (data minimisation).

    ``fields`` maps a resource name to the list of fields it may receive; a resource missing
    from the map is sent whole. ``id`` and ``changeVersion`` are always sent.
    """

    district = models.ForeignKey("schools.District", on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    fields = models.JSONField(
        default=dict,
        blank=True,
        help_text='For example {"students": ["studentNumber", "firstName", "lastName", '
        '"gradeLevel"]}.',
    )

    gate = Gate()
    event_prefix = "field_profile"

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["district", "name"],
                name="field_profile_unique_name",
                violation_error_message="This district has a profile with this name.",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class ApiClient(FieldConstraintErrors, models.Model):
    """A vendor's access to one district: a school official only while under contract.

    The OAuth2 credentials live in django-oauth-toolkit's Application (secret stored hashed).
    A client is also an actor for the permission gate: it sees its district, its allowed
    schools (all when none are listed) and what its scopes cover. A client with the
    authorization-code grant acts for a signed-in staff member: its requests then see only
    what both the client and that person may see (``acting_for``, set per request).
    """

    district = models.ForeignKey("schools.District", on_delete=models.PROTECT, related_name="+")
    application = models.OneToOneField(
        "oauth2_provider.Application",
        on_delete=models.PROTECT,
        related_name="api_client",
        editable=False,
    )
    name = models.CharField("vendor name", max_length=150)
    contact_name = models.CharField(max_length=150)
    contact_email = models.EmailField()
    purpose = models.TextField(
        help_text="The legitimate educational interest in the contract; cited in every "
        "disclosure record."
    )
    contract_end_date = models.DateField(help_text="Access stops at the end of this day.")
    status = models.CharField(
        max_length=12, choices=ClientStatus.choices, default=ClientStatus.DEVELOPMENT
    )
    allowed_schools = models.ManyToManyField(
        "schools.School",
        blank=True,
        related_name="+",
        help_text="Empty: every school of the district.",
    )
    scopes = ArrayField(
        models.CharField(max_length=40, choices=scopes.scope_choices()), default=list, blank=True
    )
    grant_type = models.CharField(
        max_length=20, choices=GrantType.choices, default=GrantType.CLIENT_CREDENTIALS
    )
    client_type = models.CharField(
        max_length=12, choices=ClientType.choices, default=ClientType.CONFIDENTIAL
    )
    redirect_uris = models.TextField(
        blank=True,
        help_text="Authorization code clients: the exact URIs the sign-in may return to, one "
        "per line (https, or http on 127.0.0.1 for native apps).",
    )
    field_profile = models.ForeignKey(
        FieldProfile, null=True, blank=True, on_delete=models.SET_NULL, related_name="clients"
    )
    rate_per_minute = models.PositiveIntegerField(default=600)
    rate_per_hour = models.PositiveIntegerField(default=20000)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    service_user = models.OneToOneField(
        "common.User",
        null=True,
        blank=True,
        editable=False,
        on_delete=models.PROTECT,
        related_name="api_client",
        help_text="The named system actor that the audit log records for this client's writes.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    gate = Gate()
    event_prefix = "api_client"
    # A client is the authenticated principal of an API request (request.user in DRF).
    is_authenticated = True
    is_active = True
    # The staff member an authorization-code token acts for; set per request, never saved.
    acting_for = None

    class Meta:
        ordering = ["name"]
        verbose_name = "API client"
        constraints = [
            valid_code("status", ClientStatus, name="api_client_status_valid"),
            in_range(
                "rate_per_minute", 1, 1_000_000, name="api_client_rate_minute_range", nullable=False
            ),
            in_range(
                "rate_per_hour", 1, 100_000_000, name="api_client_rate_hour_range", nullable=False
            ),
            valid_code("grant_type", GrantType, name="api_client_grant_type_valid"),
            valid_code("client_type", ClientType, name="api_client_client_type_valid"),
            on_field(
                "client_type",
                models.CheckConstraint(
                    condition=Q(client_type=ClientType.CONFIDENTIAL)
                    | Q(grant_type=GrantType.AUTHORIZATION_CODE),
                    name="api_client_public_needs_code_grant",
                    violation_error_message="A public client cannot keep a secret, so it can "
                    "only use the authorization code grant.",
                ),
            ),
            on_field(
                "redirect_uris",
                models.CheckConstraint(
                    condition=~Q(grant_type=GrantType.AUTHORIZATION_CODE) | ~Q(redirect_uris=""),
                    name="api_client_code_grant_needs_redirect",
                    violation_error_message="An authorization code client needs at least one "
                    "redirect URI.",
                ),
            ),
            on_field(
                "scopes",
                models.CheckConstraint(
                    condition=Q(scopes__contained_by=list(scopes.SCOPES)),
                    name="api_client_scopes_known",
                    violation_error_message="Unknown scope; choose from: "
                    + ", ".join(scopes.SCOPES)
                    + ".",
                ),
            ),
        ]

    def __str__(self) -> str:
        return self.name

    # --- access ---------------------------------------------------------------------------

    def access_problem(self, today=None) -> str | None:
        """Why this client's tokens do not work now, or None when they do."""
        today = today or timezone.localdate()
        if self.revoked_at is not None:
            return "the client's credentials were revoked"
        if self.status not in ACTIVE_STATUSES:
            return f"the client is {self.get_status_display().lower()}"
        if self.contract_end_date < today:
            return f"the contract ended on {self.contract_end_date}"
        return None

    def allowed_school_ids(self) -> list[int]:
        if not hasattr(self, "_allowed_school_ids"):
            self._allowed_school_ids = list(self.allowed_schools.values_list("pk", flat=True))
        return self._allowed_school_ids

    def restrict_queryset(self, queryset, action: str = VIEW):
        """The permission gate for a client actor (see bxos.common.permissions).

        Acting for a staff member, the rows are those both may see: the client's district,
        schools and write scope, and the person's role, schools, sections and caseload.
        """
        queryset = restrict_for_client(
            queryset,
            district_id=self.district_id,
            school_ids=self.allowed_school_ids(),
            action=action,
            can_write=bool(set(self.scopes) & scopes.WRITE_SCOPES),
        )
        if self.acting_for is not None:
            queryset = restrict(queryset, self.acting_for, action)
        return queryset

    @property
    def audit_actor(self):
        """Who the audit log names for this request's writes: the staff member the client
        acts for, else the client's own named system actor."""
        if self.acting_for is not None:
            return self.acting_for
        from bxos.api.services import api_client_service_user

        return api_client_service_user(client=self)


class DisclosureLogEntry(models.Model):
    """One response that carried students' data to an external client (34 CFR 99.32).

    Written in the same request, one row per response; ``student_ids`` answers "who received
    this student's data" through a GIN index.
    """

    at = models.DateTimeField(default=timezone.now)
    # Indexed by disclosure_client_at (client first): a second index on the client alone would
    # only cost every page a vendor reads another index insert.
    client = models.ForeignKey(
        ApiClient, on_delete=models.PROTECT, related_name="disclosures", db_index=False
    )
    district_id = models.BigIntegerField()
    purpose = models.TextField()
    endpoint = models.CharField(max_length=200)
    method = models.CharField(max_length=8, default="GET")
    query = models.CharField(max_length=2000, blank=True)
    student_ids = ArrayField(models.BigIntegerField(), default=list)
    count = models.PositiveIntegerField()
    acting_user = models.ForeignKey(
        "common.User",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The signed-in staff member the client acted for (authorization code).",
        db_index=False,  # disclosure_acting_user: only the rows that have one
    )
    request_id = models.CharField(max_length=64)

    gate = Gate(district="district_id")

    class Meta:
        ordering = ["-at"]
        verbose_name = "disclosure"
        verbose_name_plural = "disclosure log"
        indexes = [
            BrinIndex(fields=["at"], name="disclosure_at_brin"),
            GinIndex(fields=["student_ids"], name="disclosure_students_gin"),
            models.Index(fields=["client", "at"], name="disclosure_client_at"),
            # Most rows are a client's own reads (no staff member): they need no entry.
            models.Index(
                fields=["acting_user"],
                condition=models.Q(acting_user__isnull=False),
                name="disclosure_acting_user",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.client} {self.endpoint} ({self.count} students) at {self.at:%Y-%m-%d %H:%M}"


class ThrottleRule(FieldConstraintErrors, models.Model):
    """A rate limit, edited by district admins: for one client, a scope, an endpoint group, or
    (all empty) every client of the district. The strictest matching rule applies."""

    district = models.ForeignKey("schools.District", on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=100)
    client = models.ForeignKey(
        ApiClient, null=True, blank=True, on_delete=models.CASCADE, related_name="throttle_rules"
    )
    scope = models.CharField(max_length=40, blank=True, choices=scopes.scope_choices())
    endpoint_group = models.CharField(
        max_length=60,
        blank=True,
        help_text="A resource name (students, incidents, ...) or 'writes'; empty: every endpoint.",
    )
    rate_per_minute = models.PositiveIntegerField()
    rate_per_hour = models.PositiveIntegerField()
    burst = models.PositiveIntegerField(
        default=0, help_text="Extra requests allowed above the per-minute rate in a burst."
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    gate = Gate()
    event_prefix = "throttle_rule"

    class Meta:
        ordering = ["name"]
        constraints = [
            in_range(
                "rate_per_minute", 1, 1_000_000, name="throttle_rule_minute_range", nullable=False
            ),
            in_range(
                "rate_per_hour", 1, 100_000_000, name="throttle_rule_hour_range", nullable=False
            ),
        ]

    def __str__(self) -> str:
        return self.name


class ThrottleException(FieldConstraintErrors, models.Model):
    """A temporary override of a client's limits (a roster rebuild, a migration weekend)."""

    district = models.ForeignKey("schools.District", on_delete=models.CASCADE, related_name="+")
    client = models.ForeignKey(
        ApiClient, on_delete=models.CASCADE, related_name="throttle_exceptions"
    )
    reason = models.TextField()
    rate_per_minute = models.PositiveIntegerField()
    rate_per_hour = models.PositiveIntegerField()
    starts_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    gate = Gate()
    event_prefix = "throttle_exception"

    class Meta:
        ordering = ["-starts_at"]
        constraints = [
            on_field(
                "expires_at",
                models.CheckConstraint(
                    condition=Q(expires_at__gt=models.F("starts_at")),
                    name="throttle_exception_expires_after_start",
                    violation_error_message="An exception must expire after it starts.",
                ),
            ),
            in_range(
                "rate_per_minute",
                1,
                1_000_000,
                name="throttle_exception_minute_range",
                nullable=False,
            ),
            in_range(
                "rate_per_hour",
                1,
                100_000_000,
                name="throttle_exception_hour_range",
                nullable=False,
            ),
        ]

    def __str__(self) -> str:
        return f"{self.client}: {self.rate_per_minute}/min until {self.expires_at:%Y-%m-%d %H:%M}"


class IdempotencyRecord(models.Model):
    """The first response to a write with an Idempotency-Key, replayed for retries.

    A retry with the same key and body gets the stored response; the same key with another
    body is a 409. Records older than a day are purged.
    """

    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=300)
    body_hash = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField()
    response_body = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["client", "key"], name="idempotency_key_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.client} {self.key}"


# Upper bounds (ms) of the latency histogram buckets; the last bucket is open-ended.
LATENCY_BUCKETS_MS = (5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000)


class ApiRequestStat(models.Model):
    """Requests per minute per client and endpoint: count, errors and a latency histogram.

    One upsert per request (bxos.api.monitoring); percentiles come from the histogram, so
    rows add up across minutes and processes. The monitoring app reads this table.
    """

    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="request_stats")
    district_id = models.BigIntegerField()
    endpoint = models.CharField(max_length=100)
    minute = models.DateTimeField()
    count = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0, help_text="Responses with status >= 400.")
    server_errors = models.PositiveIntegerField(default=0, help_text="Status >= 500.")
    total_ms = models.FloatField(default=0)
    buckets = ArrayField(models.PositiveIntegerField(), size=len(LATENCY_BUCKETS_MS) + 1)

    gate = Gate(district="district_id")

    class Meta:
        ordering = ["-minute"]
        constraints = [
            models.UniqueConstraint(
                fields=["client", "endpoint", "minute"], name="api_request_stat_unique_minute"
            ),
        ]
        indexes = [BrinIndex(fields=["minute"], name="api_request_stat_minute_brin")]

    def __str__(self) -> str:
        return f"{self.client} {self.endpoint} {self.minute:%Y-%m-%d %H:%M}: {self.count}"


class ApiEndpoint(models.Model):
    """One endpoint of the API catalogue, derived from the code (bxos.api.catalogue).

    Rebuilt after every `migrate`; never typed by hand. The version's status comes from
    settings.API["VERSIONS"].
    """

    version = models.CharField(max_length=10)
    path = models.CharField(max_length=200)
    methods = ArrayField(models.CharField(max_length=8))
    name = models.CharField(max_length=100)
    resource = models.CharField(max_length=60, blank=True)
    scope = models.CharField(max_length=40, blank=True)
    write_scope = models.CharField(max_length=40, blank=True)
    status = models.CharField(max_length=12)
    sunset_at = models.DateField(null=True, blank=True)

    class Meta:
        ordering = ["version", "path"]
        verbose_name = "API endpoint"
        verbose_name_plural = "API catalogue"
        constraints = [
            models.UniqueConstraint(fields=["version", "path"], name="api_endpoint_unique"),
        ]

    def __str__(self) -> str:
        return f"{' '.join(self.methods)} {self.path}"
