"""Code lists of the webhooks app."""

from django.db import models


class Method(models.TextChoices):
    POST = "POST", "POST"
    PUT = "PUT", "PUT"


class BodyFormat(models.TextChoices):
    JSON = "json", "JSON (application/json)"
    XML = "xml", "XML (application/xml)"
    FORM = "form", "Form data (application/x-www-form-urlencoded)"


class PayloadStyle(models.TextChoices):
    FULL = "full", "Full: the record as the API returns it"
    THIN = "thin", "Thin: ids and a URL to fetch the record (for privacy)"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    LEASED = "leased", "Being sent"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed (retries exhausted)"
    HELD = "held", "Held (endpoint disabled)"
    CANCELLED = "cancelled", "Cancelled"


# Statuses a delivery can still leave on its own.
OPEN_STATUSES = (DeliveryStatus.PENDING, DeliveryStatus.LEASED, DeliveryStatus.HELD)

# Seconds to wait before each retry after the first attempt (Standard Webhooks' schedule:
# 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h; the last attempt about 75.5 h in).
STANDARD_SCHEDULE = [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]
