"""URLs of the integration engine outside the admin: the signed inbound endpoint."""

from django.urls import path

from integrations import views

app_name = "integrations"

urlpatterns = [
    path("inbound/<int:definition_id>/", views.inbound, name="inbound"),
]
