"""Code lists of the API app."""

from django.db import models


class ClientStatus(models.TextChoices):
    DEVELOPMENT = "development", "Development"
    TESTING = "testing", "Testing"
    PRODUCTION = "production", "Production"
    SUSPENDED = "suspended", "Suspended"
    DEPRECATED = "deprecated", "Deprecated"


# Statuses in which a client's tokens work.
ACTIVE_STATUSES = (
    ClientStatus.DEVELOPMENT,
    ClientStatus.TESTING,
    ClientStatus.PRODUCTION,
    ClientStatus.DEPRECATED,
)
