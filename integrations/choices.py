"""Code lists of the integration engine."""

from django.db import models


class SyncMode(models.TextChoices):
    FULL = "full", "Full (the source holds everything; missing rows are removals)"
    INCREMENTAL = "incremental", "Incremental (changes since the last committed run)"
    DELTA = "delta", "Delta (the source sends changed and deleted rows only)"


class Direction(models.TextChoices):
    ONE_WAY = "one_way", "One-way: source to hub"
    BIDIRECTIONAL = "bidirectional", "Bidirectional"


class ConflictPolicy(models.TextChoices):
    SOURCE_WINS = "source_wins", "Source wins"
    HUB_WINS = "hub_wins", "Hub wins"
    NEWEST_WINS = "newest_wins", "Newest wins"
    MANUAL = "manual", "Manual review"


class ScheduleKind(models.TextChoices):
    MANUAL = "manual", "Manual only"
    INTERVAL = "interval", "Every N minutes"
    CRONTAB = "crontab", "Crontab"
    EVENT = "event", "Event-driven (signed inbound endpoint)"


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    HELD = "held", "Held for approval"
    SUCCEEDED = "succeeded", "Succeeded"
    PARTIAL = "partial", "Partial (some records failed)"
    FAILED = "failed", "Failed"
    DISCARDED = "discarded", "Discarded"
    ROLLING_BACK = "rolling_back", "Rolling back"
    ROLLED_BACK = "rolled_back", "Rolled back"


#: Runs a worker still has to finish (or is finishing): a definition starts nothing new meanwhile.
ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.ROLLING_BACK)

FINISHED = {
    RunStatus.SUCCEEDED,
    RunStatus.PARTIAL,
    RunStatus.FAILED,
    RunStatus.DISCARDED,
    RunStatus.ROLLED_BACK,
}


class RunTrigger(models.TextChoices):
    MANUAL = "manual", "Started by a person"
    SCHEDULE = "schedule", "Schedule"
    EVENT = "event", "Inbound event"
    RETRY = "retry", "Re-run of failed records"


class CircuitState(models.TextChoices):
    CLOSED = "closed", "Closed (healthy)"
    OPEN = "open", "Open (runs refused)"
    HALF_OPEN = "half_open", "Half-open (one trial run)"


class ErrorStatus(models.TextChoices):
    OPEN = "open", "Open (retried next run)"
    RETRIED = "retried", "Retried"
    DISMISSED = "dismissed", "Dismissed"


class ChangeOp(models.TextChoices):
    INSERT = "insert", "Inserted"
    UPDATE = "update", "Updated"
    DELETE = "delete", "Deleted"


class ReviewStatus(models.TextChoices):
    OPEN = "open", "Waiting for review"
    MERGED = "merged", "Merged into the existing person"
    DISTINCT = "distinct", "A different person"
    UNMERGED = "unmerged", "Merge reversed"
