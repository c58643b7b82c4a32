"""Writes of the API app: clients and their credentials."""

from __future__ import annotations

from datetime import date

from django.core.exceptions import ValidationError
from django.utils import timezone
from oauth2_provider.generators import generate_client_secret
from oauth2_provider.models import AccessToken, Application, RefreshToken

from bxos.api.models import ApiClient
from bxos.common.services import model_save, write_as


def api_client_create(
    *,
    actor,
    district,
    name: str,
    contact_name: str,
    contact_email: str,
    purpose: str,
    contract_end_date: date,
    scopes: list[str],
    status: str = "development",
    allowed_schools=(),
    field_profile=None,
    rate_per_minute: int = 600,
    rate_per_hour: int = 20000,
) -> tuple[ApiClient, str]:
    """Create a client and its OAuth2 credentials. Returns the client and the plain secret,
    which is stored only hashed: show it once."""
    with write_as(actor):
        secret = generate_client_secret()
        application = Application(
            name=f"{district.code}: {name}"[:255],
            client_type=Application.CLIENT_CONFIDENTIAL,
            authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
            client_secret=secret,
            hash_client_secret=True,
        )
        application.full_clean(exclude=["user"])
        application.save()
        client = ApiClient(
            district=district,
            application=application,
            name=name,
            contact_name=contact_name,
            contact_email=contact_email,
            purpose=purpose,
            contract_end_date=contract_end_date,
            status=status,
            scopes=list(scopes),
            field_profile=field_profile,
            rate_per_minute=rate_per_minute,
            rate_per_hour=rate_per_hour,
        )
        model_save(instance=client, actor=actor, emit=False)
        client.allowed_schools.set(allowed_schools)
        api_client_service_user(client=client)
    return client, secret


def api_client_service_user(*, client: ApiClient):
    """The audit actor of a client's writes: a named system actor that can never sign in."""
    from bxos.common.models import User

    if client.service_user_id:
        return client.service_user
    user, _ = User.objects.get_or_create(
        username=f"api-client-{client.application.client_id}"[:150],
        defaults={
            "is_system_actor": True,
            "is_active": False,
            "first_name": client.name[:150],
            "last_name": "(API client)",
        },
    )
    client.service_user = user
    client.save(update_fields=["service_user"])
    return user


def api_client_attach_credentials(*, actor, client: ApiClient) -> str:
    """Create the OAuth2 application of a client built in the admin; returns the secret."""
    with write_as(actor):
        secret = generate_client_secret()
        application = Application.objects.create(
            name=f"{client.district.code}: {client.name}"[:255],
            client_type=Application.CLIENT_CONFIDENTIAL,
            authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
            client_secret=secret,
            hash_client_secret=True,
        )
        client.application = application
    return secret


def api_client_rotate_secret(*, actor, client: ApiClient) -> str:
    """A new secret; the old one stops working at once, and so do tokens issued with it."""
    with write_as(actor):
        if client.revoked_at:
            raise ValidationError("A revoked client cannot get a new secret.")
        secret = generate_client_secret()
        application = client.application
        application.client_secret = secret
        application.save(update_fields=["client_secret"])
        _drop_tokens(application)
        model_save(instance=client, actor=actor, fields=[], emit=False)
    return secret


def api_client_revoke(*, actor, client: ApiClient) -> ApiClient:
    """Stop a client for good: every token fails from the next request."""
    with write_as(actor):
        client.revoked_at = timezone.now()
        client.status = "suspended"
        model_save(instance=client, actor=actor, fields=["revoked_at", "status"], emit=False)
        _drop_tokens(client.application)
    return client


def _drop_tokens(application: Application) -> None:
    RefreshToken.objects.filter(application=application).delete()
    AccessToken.objects.filter(application=application).delete()
