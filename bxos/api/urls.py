"""URLs of /api/v1/."""

from django.urls import URLPattern, path, re_path
from rest_framework.routers import SimpleRouter

from bxos.api import schema  # noqa: F401  (documents the viewsets; before they are registered)
from bxos.api.lean import lean_list
from bxos.api.views import VIEWSETS, ChangesAvailableView, ResourceViewSet, api_not_found
from webhooks import api as webhooks_api

router = SimpleRouter(trailing_slash=False)
for name, viewset in VIEWSETS.items():
    router.register(name, viewset, basename=name)
router.register("webhooks/endpoints", webhooks_api.EndpointViewSet, basename="webhook-endpoints")
router.register("webhooks/deliveries", webhooks_api.DeliveryViewSet, basename="webhook-deliveries")


def _lean_lists(patterns: list[URLPattern]) -> list[URLPattern]:
    """The router's routes, each resource's list answered by bxos.api.lean first."""
    routes = []
    for route in patterns:
        view = route.callback
        cls = getattr(view, "cls", None)
        if (
            cls is not None
            and issubclass(cls, ResourceViewSet)
            and view.actions.get("get") == "list"
        ):
            view = lean_list(cls.resource, view)
            route = URLPattern(route.pattern, view, route.default_args, route.name)
        routes.append(route)
    return routes


urlpatterns = [
    path("changes/available", ChangesAvailableView.as_view(), name="changes-available"),
    path("webhooks/event-types", webhooks_api.EventTypesView.as_view(), name="webhook-event-types"),
    path("events", webhooks_api.EventsView.as_view(), name="events"),
    *_lean_lists(router.urls),
    # Last: anything else under /api/v1/ is a problem+json 404, not Django's HTML page.
    re_path(r"^.*$", api_not_found, name="not-found"),
]
