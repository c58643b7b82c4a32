"""Bearer tokens of API clients: valid token, live client, contract not ended."""

from __future__ import annotations

from oauth2_provider.contrib.rest_framework import OAuth2Authentication
from oauth2_provider.oauth2_backends import get_oauthlib_core
from oauthlib.common import Request as OauthlibRequest
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed

from bxos.api.models import ApiClient
from bxos.common import roles


def staff_access_problem(client: ApiClient, user) -> str | None:
    """Why ``client`` may not act for ``user`` now, or None when it may: the person must be
    an active staff login of the client's district, holding a role there."""
    if not user.is_active:
        return "the staff member's login is disabled"
    if getattr(user, "is_system_actor", False) or user.is_superuser:
        return "apps act only for staff members of the district"
    if roles.district_id_of(user) != client.district_id or not roles.roles_of(user):
        return "the staff member has no role in the client's district"
    return None


class ClientTokenAuthentication(OAuth2Authentication):
    """OAuth2 bearer token -> the ApiClient it was issued to (the request's actor).

    Checked on every request, not at token issue: revoking a client, suspending it or
    reaching its contract end date stops every token it holds at once. A token issued through
    the authorization code grant also carries the staff member who signed in; the client then
    acts for that person (``acting_for``), who must still hold a role in the district.
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
        if token.user_id is not None:
            problem = staff_access_problem(client, token.user)
            if problem:
                raise AuthenticationFailed(f"Access has stopped: {problem}.")
            client.acting_for = token.user
        return client, token


class ClientSecretAuthentication(BaseAuthentication):
    """HTTP Basic (or form) client id and secret -> the ApiClient: how a resource server
    authenticates to the introspection endpoint (RFC 7662 section 2.1)."""

    def authenticate(self, request):
        core = get_oauthlib_core()
        uri, method, body, headers = core._extract_params(request._request)
        oauth_request = OauthlibRequest(uri, method, body, headers)
        if not (headers.get("HTTP_AUTHORIZATION", "").startswith("Basic ") or "client_id" in body):
            return None
        if not core.server.request_validator.authenticate_client(oauth_request):
            raise AuthenticationFailed("The client id or secret is wrong.")
        client = ApiClient.objects.filter(application=oauth_request.client).first()
        if client is None:
            raise AuthenticationFailed("These credentials do not belong to an API client.")
        problem = client.access_problem()
        if problem:
            raise AuthenticationFailed(f"Access has stopped: {problem}.")
        return client, None

    def authenticate_header(self, request):
        return 'Basic realm="api"'
