"""Writes of the API app: clients and their credentials."""

from __future__ import annotations

from datetime import date

from django.core.exceptions import ValidationError
from django.utils import timezone
from oauth2_provider.generators import generate_client_secret
from oauth2_provider.models import AccessToken, Application, RefreshToken

from bxos.api.choices import ClientType, GrantType
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
    grant_type: str = GrantType.CLIENT_CREDENTIALS,
    client_type: str = ClientType.CONFIDENTIAL,
    redirect_uris: str = "",
) -> tuple[ApiClient, str]:
    """Create a client and its OAuth2 credentials. Returns the client and the plain secret,
    which is stored only hashed: show it once (empty for a public client, which has none)."""
    with write_as(actor):
        client = ApiClient(
            district=district,
            grant_type=grant_type,
            client_type=client_type,
            redirect_uris=redirect_uris,
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
        secret = api_client_attach_credentials(actor=actor, client=client)
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


def _apply_oauth_settings(application: Application, client: ApiClient) -> None:
    """Copy what the district admin chose on the client onto its OAuth2 application."""
    district_code = client.district.code if client.district_id else "?"
    application.name = f"{district_code}: {client.name}"[:255]
    application.authorization_grant_type = (
        Application.GRANT_AUTHORIZATION_CODE
        if client.grant_type == GrantType.AUTHORIZATION_CODE
        else Application.GRANT_CLIENT_CREDENTIALS
    )
    application.client_type = (
        Application.CLIENT_PUBLIC
        if client.client_type == ClientType.PUBLIC
        else Application.CLIENT_CONFIDENTIAL
    )
    application.redirect_uris = " ".join(client.redirect_uris.split())
    # Staff always see the consent page: it names the vendor, the purpose and the scopes.
    application.skip_authorization = False
    application.algorithm = Application.NO_ALGORITHM


def api_client_check_oauth(*, client: ApiClient) -> None:
    """Raise ValidationError, keyed by the client's fields, when django-oauth-toolkit would
    refuse the client's grant, type or redirect URIs (forms call this before saving)."""
    application = Application(client_secret="", hash_client_secret=True)
    _apply_oauth_settings(application, client)
    _clean_application(application)


def _clean_application(application: Application) -> None:
    """django-oauth-toolkit's own checks (redirect URI schemes, grant needs), named by the
    client's field so the admin form shows them there."""
    try:
        application.full_clean(exclude=["user", "client_secret", "client_id"])
    except ValidationError as exc:
        errors = exc.message_dict
        raise ValidationError(
            {
                "redirect_uris" if field in ("redirect_uris", "__all__") else field: messages
                for field, messages in errors.items()
            }
        ) from None


def api_client_attach_credentials(*, actor, client: ApiClient) -> str:
    """Create the OAuth2 application of a new client; returns the secret (empty for a public
    client) to show once."""
    with write_as(actor):
        secret = "" if client.client_type == ClientType.PUBLIC else generate_client_secret()
        application = Application(client_secret=secret, hash_client_secret=True)
        _apply_oauth_settings(application, client)
        _clean_application(application)
        application.save()
        client.application = application
    return secret


def api_client_sync_application(*, actor, client: ApiClient) -> None:
    """After an edit of the client: its grant, type and redirect URIs on the application.

    Changing the grant or the client type drops the tokens issued under the old settings.
    """
    with write_as(actor):
        application = client.application
        before = (application.authorization_grant_type, application.client_type)
        _apply_oauth_settings(application, client)
        _clean_application(application)
        application.save()
        if before != (application.authorization_grant_type, application.client_type):
            _drop_tokens(application)


def api_client_rotate_secret(*, actor, client: ApiClient) -> str:
    """A new secret; the old one stops working at once, and so do tokens issued with it."""
    with write_as(actor):
        if client.revoked_at:
            raise ValidationError("A revoked client cannot get a new secret.")
        if client.client_type == ClientType.PUBLIC:
            raise ValidationError("A public client has no secret to rotate.")
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
