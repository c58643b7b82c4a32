"""Scope checks: a view names the scope it needs; the client must hold it now."""

from __future__ import annotations

from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import SAFE_METHODS, BasePermission

from bxos.api.models import ApiClient


def holds_scope(client: ApiClient, token, scope: str) -> bool:
    """Whether the request may use ``scope``: its token carries it and the client still holds
    it (an admin's removal of a scope takes effect before the token expires)."""
    return scope in client.scopes and token.allow_scopes([scope])


class HasClientScope(BasePermission):
    """403 naming the missing scope. The token must carry it and the client still hold it
    (an admin's removal of a scope takes effect before the token expires)."""

    def has_permission(self, request, view):
        client = request.user
        if not isinstance(client, ApiClient):
            return False
        required = view.required_scope(request)
        if required is None:
            return True
        if not holds_scope(client, request.auth, required):
            verb = "read" if request.method in SAFE_METHODS else "change"
            raise PermissionDenied(f"The scope {required} is needed to {verb} this resource.")
        return True
