"""Top-level URLs: the admin, OAuth2 endpoints, the API and its docs, and a health check."""

from django.contrib import admin
from django.urls import include, path

from bxos.api.graphql.view import GraphQLView
from bxos.api.oauth_views import urlpatterns as oauth_urls
from bxos.api.schema import RedocView, SchemaView, SwaggerView
from bxos.common.views import healthz

admin.site.site_header = "BX-OS Integration Hub"
admin.site.site_title = "BX-OS Integration Hub"
admin.site.index_title = "District administration"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("o/", include((oauth_urls, "oauth2_provider"), namespace="oauth2_provider")),
    path("api/v1/", include(("bxos.api.urls", "api"), namespace="v1")),
    path("api/graphql/", GraphQLView.as_view(), name="graphql"),
    # OpenAPI 3 schema and its docs; public (no token): the schema holds no data.
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", SwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", RedocView.as_view(url_name="schema"), name="api-redoc"),
    path("integrations/", include("integrations.urls")),
    path("healthz", healthz, name="healthz"),
]
