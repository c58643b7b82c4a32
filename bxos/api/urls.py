"""URLs of /api/v1/."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from bxos.api.views import VIEWSETS, ChangesAvailableView

router = SimpleRouter(trailing_slash=False)
for name, viewset in VIEWSETS.items():
    router.register(name, viewset, basename=name)

urlpatterns = [
    path("changes/available", ChangesAvailableView.as_view(), name="changes-available"),
    *router.urls,
]
