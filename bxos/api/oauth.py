"""django-oauth-toolkit glue: a token carries only scopes its client has been granted."""

from __future__ import annotations

from oauth2_provider.scopes import BaseScopes

from bxos.api.scopes import SCOPES


class ClientScopes(BaseScopes):
    """Scopes come from the ApiClient row, which district admins edit in the admin."""

    def get_all_scopes(self):
        return dict(SCOPES)

    def get_available_scopes(self, application=None, request=None, *args, **kwargs):
        client = getattr(application, "api_client", None) if application else None
        return list(client.scopes) if client else []

    def get_default_scopes(self, application=None, request=None, *args, **kwargs):
        return self.get_available_scopes(application, request)
