"""URLs of /api/v1/."""

from django.urls import path, re_path
from rest_framework.routers import SimpleRouter

from bxos.api import schema  # noqa: F401  (documents the viewsets; before they are registered)
from bxos.api.views import VIEWSETS, ChangesAvailableView, api_not_found

router = SimpleRouter(trailing_slash=False)
for name, viewset in VIEWSETS.items():
    router.register(name, viewset, basename=name)

urlpatterns = [
    path("changes/available", ChangesAvailableView.as_view(), name="changes-available"),
    *router.urls,
    # Last: anything else under /api/v1/ is a problem+json 404, not Django's HTML page.
    re_path(r"^.*$", api_not_found, name="not-found"),
]
