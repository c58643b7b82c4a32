"""WSGI entry point (gunicorn bxos.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bxos.settings")
application = get_wsgi_application()
