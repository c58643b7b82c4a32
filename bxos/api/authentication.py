"""Bearer tokens of API clients: valid token, live client, contract not ended."""

from __future__ import annotations

from oauth2_provider.contrib.rest_framework import OAuth2Authentication
from rest_framework.exceptions import AuthenticationFailed

from bxos.api.models import ApiClient


class ClientTokenAuthentication(OAuth2Authentication):
    """OAuth2 bearer token -> the ApiClient it was issued to (the request's actor).

    Checked on every request, not at token issue: revoking a client, suspending it or
    reaching its contract end date stops every token it holds at once.
    """

    def authenticate(self, request):
        result = super().authenticate(request)
        if result is None:
            return None
        _user, token = result
        client = (
            ApiClient.objects.select_related("field_profile")
            .filter(application_id=token.application_id)
            .first()
        )
        if client is None:
            raise AuthenticationFailed("This token does not belong to an API client.")
        problem = client.access_problem()
        if problem:
            raise AuthenticationFailed(f"Access has stopped: {problem}.")
        return client, token
