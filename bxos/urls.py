"""Top-level URLs: the admin, OAuth2 endpoints and a health check."""

from django.contrib import admin
from django.urls import include, path

from bxos.common.views import healthz

admin.site.site_header = "BX-OS Integration Hub"
admin.site.site_title = "BX-OS Integration Hub"
admin.site.index_title = "District administration"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("api/v1/", include(("bxos.api.urls", "api"), namespace="v1")),
    path("healthz", healthz, name="healthz"),
]
