"""Template context shared by the admin and pages."""

from django.conf import settings


def environment(request):
    return {"bxos_environment": settings.BXOS_ENV}
