"""The OAuth2 endpoints this hub serves (django-oauth-toolkit underneath).

Only the endpoints vendors need are routed: token, revoke, authorize (for apps acting for a
signed-in staff member) and introspection (for resource servers). The toolkit's application
management pages are deliberately not routed: clients are created by district admins in the
admin, where each is tied to a district, a contract and a purpose.
"""

from __future__ import annotations

import calendar
import hashlib

from django.contrib import admin
from django.urls import path
from drf_spectacular.utils import extend_schema
from oauth2_provider import views as dot_views
from oauth2_provider.models import AccessToken
from rest_framework.exceptions import PermissionDenied
from rest_framework.parsers import FormParser
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from bxos.api import scopes
from bxos.api.authentication import (
    ClientSecretAuthentication,
    ClientTokenAuthentication,
    staff_access_problem,
)
from bxos.api.choices import GrantType
from bxos.api.models import ApiClient


class StaffAuthorizationView(dot_views.AuthorizationView):
    """The consent page of the authorization code grant (PKCE required, see settings).

    Before the toolkit's checks, ours: the client exists, is live, uses this grant, and the
    signed-in person is staff of the client's district. The page names the vendor, the
    contract purpose and each scope, so the person knows what they share.
    """

    template_name = "oauth2_provider/authorize.html"

    def _api_client(self, request) -> ApiClient | None:
        client_id = request.GET.get("client_id") or request.POST.get("client_id")
        if not client_id:
            return None
        return (
            ApiClient.objects.select_related("district", "application")
            .filter(application__client_id=client_id)
            .first()
        )

    def _refusal(self, request) -> str | None:
        client = self._api_client(request)
        if client is None:
            return None  # the toolkit answers an unknown client_id itself
        if client.grant_type != GrantType.AUTHORIZATION_CODE:
            return "This app is a server-to-server client; it cannot sign staff in."
        problem = client.access_problem() or staff_access_problem(client, request.user)
        if problem:
            return f"You cannot authorize {client.name}: {problem}."
        self.api_client = client
        return None

    def dispatch(self, request, *args, **kwargs):
        if request.user.is_authenticated:
            refusal = self._refusal(request)
            if refusal:
                context = {
                    **admin.site.each_context(request),
                    "error": {"error": "access_denied", "description": refusal},
                }
                return self.render_to_response(context, status=403)
        return super().dispatch(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        context = {**admin.site.each_context(self.request), **super().get_context_data(**kwargs)}
        client = getattr(self, "api_client", None)
        context["api_client"] = client
        context["scope_rows"] = [
            (name, scopes.SCOPES.get(name, name)) for name in kwargs.get("scopes", [])
        ]
        return context


class HoldsIntrospectionScope(BasePermission):
    def has_permission(self, request, view):
        client = request.user
        if not isinstance(client, ApiClient):
            return False
        token = request.auth
        if scopes.INTROSPECTION not in client.scopes or (
            token is not None and not token.allow_scopes([scopes.INTROSPECTION])
        ):
            raise PermissionDenied(f"The scope {scopes.INTROSPECTION} is needed to introspect.")
        return True


@extend_schema(exclude=True)  # OAuth2 infrastructure for resource servers, not the data API
class IntrospectView(APIView):
    """RFC 7662 token introspection for resource servers of the district.

    The caller authenticates with its client id and secret (Basic) or a bearer token, and must
    hold the ``introspection`` scope. A token is active only if the toolkit says so *and* our
    own rules do (client live, contract running, staff member still in the district); tokens
    of another district are reported inactive, so a caller learns nothing about them.
    """

    authentication_classes = [ClientSecretAuthentication, ClientTokenAuthentication]
    permission_classes = [HoldsIntrospectionScope]
    parser_classes = [FormParser]
    throttle_classes = []

    def post(self, request, *args, **kwargs):
        value = request._request.POST.get("token") or request.data.get("token")
        if not value:
            from bxos.api.errors import BadParameter

            raise BadParameter("token", "is required (the access token to introspect)")
        return Response(self._describe(request.user, value))

    def _describe(self, caller: ApiClient, value: str) -> dict:
        checksum = hashlib.sha256(value.encode("utf-8")).hexdigest()
        token = (
            AccessToken.objects.select_related("user", "application")
            .filter(token_checksum=checksum)
            .first()
        )
        if token is None or not token.is_valid():
            return {"active": False}
        owner = ApiClient.objects.filter(application_id=token.application_id).first()
        if owner is None or owner.district_id != caller.district_id or owner.access_problem():
            return {"active": False}
        if token.user_id is not None and staff_access_problem(owner, token.user):
            return {"active": False}
        data = {
            "active": True,
            "scope": token.scope,
            "client_id": token.application.client_id,
            "token_type": "Bearer",
            "exp": int(calendar.timegm(token.expires.timetuple())),
            "iat": int(calendar.timegm(token.created.timetuple())),
            "district": owner.district_id,
        }
        if token.user_id is not None:
            data["username"] = token.user.get_username()
            data["sub"] = str(token.user_id)
        return data


urlpatterns = [
    path("authorize/", StaffAuthorizationView.as_view(), name="authorize"),
    path("token/", dot_views.TokenView.as_view(), name="token"),
    path("revoke_token/", dot_views.RevokeTokenView.as_view(), name="revoke-token"),
    path("introspect/", IntrospectView.as_view(), name="introspect"),
]
