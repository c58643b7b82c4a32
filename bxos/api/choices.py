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


class GrantType(models.TextChoices):
    """How a client gets tokens. One per client; a vendor needing both registers two."""

    CLIENT_CREDENTIALS = "client-credentials", "Server to server (client credentials)"
    AUTHORIZATION_CODE = (
        "authorization-code",
        "Acts for a signed-in staff member (authorization code with PKCE)",
    )


class ClientType(models.TextChoices):
    """Whether the client can keep a secret (a server) or not (a browser or mobile app)."""

    CONFIDENTIAL = "confidential", "Confidential (a server that keeps the secret)"
    PUBLIC = "public", "Public (browser or mobile app: no secret, PKCE only)"
